"""A transformer's step for one new position, fused into one CPU call, and the local model's
patch with its sampling as another: `csrc/transformer_step.cpp`.

Decoding at small batches is bound by what each torch kernel costs, not by arithmetic:
MegaByte's local model is ~30 small matrix-vector products per byte, each its own kernel
(inductor emits the same calls), and torch's matrix-vector product reads a matrix that is
not in cache far below the memory's speed. The C++ step runs a whole `layers.Transformer`
over one position with its KV cache (norms, attention, MLP) in one operator,
`torch.ops.megabyte.transformer_step`, which torch.compile places in the decoding graph as is.
`local_patch` goes further: per patch, it draws each byte (by the rules of model.sampling.sample
that the C++ has, `sampling.CXX_RULES`), embeds it and runs the local model over it, so that
nothing returns to torch between a patch's bytes.

With a long context the global model's step is a read of its KV cache (134 MB per patch at
melody_long's 16,384 positions in fp32): its attention runs an AVX-512 kernel near the memory's
speed, the (sample, head) pairs on torch's intra-op threads (`torch.set_num_threads`), with the
same floats on any number of them.

Built on first use (`build()`, ~1 minute) with the system's C++ compiler for this very CPU
(-march=native), under a name that carries the CPU's flags, torch's version, the compiler's
and the flags, so a build made elsewhere is never loaded. Where it cannot be built (no
compiler), a Decoder (model.generate) runs the same layers in torch.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "transformer_step.cpp"
# No -ffast-math: it lets the compiler assume no NaN or infinity, which once turned a loud
# activation into NaN. Reductions still vectorise: `omp simd reduction` allows reordering.
# -fopenmp: ATen's parallel_for (attention over a long cache) runs on torch's OpenMP threads
# only in code built with OpenMP; linked, it finds torch's own libgomp already loaded.
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp"]
NO_ROTARY = torch.empty(0)  # the operator's rotary argument for a transformer without rotary positions
_loaded: bool | None = None  # whether this process has the operator (None: not tried yet)


def compiler_version() -> str:
    """The first line of the C++ compiler's --version (torch builds with $CXX, else c++)."""
    try:
        done = subprocess.run([os.environ.get("CXX", "c++"), "--version"], capture_output=True, text=True, timeout=30)
        return done.stdout.splitlines()[0] if done.returncode == 0 and done.stdout else "no compiler"
    except (OSError, subprocess.TimeoutExpired):
        return "no compiler"


def build_key() -> str:
    """A short hash of everything a build depends on: the CPU's model and feature flags (what
    -march=native compiles for), torch's version (its ABI), the compiler, the flags, the source."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else [platform.processor()]
    cpu = [line for line in lines if line.startswith(("model name", "flags"))][:2]
    parts = [*cpu, torch.__version__, compiler_version(), " ".join(FLAGS), SOURCE.read_text()]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


def library_path() -> Path:
    """Where the build for this key is kept, in torch's extension folder."""
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    return root / "megabyte" / f"transformer_step_{build_key()}.so"


def build() -> bool:
    """Loads the operator once per process, building it first if there is no build for this
    key yet; whether it is there. Builds wait for each other on a file lock, and each goes to
    a folder of its own that is moved into place whole, so a process killed while building
    (the app stopped during its first minute) leaves nothing half-made behind."""
    global _loaded
    if _loaded is None:
        try:
            library = library_path()
            library.parent.mkdir(parents=True, exist_ok=True)
            with open(library.parent / "build.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
                if not library.exists():
                    from torch.utils.cpp_extension import load
                    with tempfile.TemporaryDirectory() as folder:
                        load(name=library.stem, sources=[str(SOURCE)], build_directory=folder,
                             is_python_module=False, extra_cflags=FLAGS, extra_ldflags=["-fopenmp"])
                        staged = library.with_suffix(f".{os.getpid()}.tmp")
                        shutil.copyfile(Path(folder) / f"{library.stem}.so", staged)
                        os.replace(staged, library)
                else:
                    torch.ops.load_library(str(library))
            torch.library.register_fake("megabyte::transformer_step")(_output_like)
            torch.library.register_fake("megabyte::sample")(_draws_like)
            torch.library.register_fake("megabyte::local_patch")(_patch_like)
            _loaded = True
        except Exception as error:  # no compiler or no ninja: torch's layers do the same work
            warnings.warn(f"The fused decoding step could not be built ({error}); decoding uses torch's layers.")
            _loaded = False
    return _loaded


def _output_like(x, position, weights, cache, heads, rotary):
    """The operator's output for torch.compile's tracing: (B, D), or (B, V) with a head."""
    return x.new_empty(x.shape[0], weights[-1].shape[0])


def _draws_like(logits, knobs, uniform):
    """sample's output for torch.compile's tracing: a byte per sample (B,)."""
    return uniform.new_empty(logits.shape[0], dtype=torch.long)


def _patch_like(logits, from_global, embed, weights, cache, heads, knobs, uniform):
    """local_patch's output for torch.compile's tracing: a patch of bytes (B, P)."""
    return uniform.new_empty(uniform.shape, dtype=torch.long)


def fits(x: torch.Tensor, cache) -> bool:
    """Whether a step the caller asked to fuse can be: one new position with a cache, fp32 or
    bf16 on the CPU, no gradients. Whether to fuse at all is the caller's (a Decoder's) choice."""
    return (cache is not None and x.shape[1] == 1 and x.dtype in (torch.float32, torch.bfloat16)
            and x.device.type == "cpu" and not torch.is_grad_enabled())


def weights(transformer, head=None) -> list[torch.Tensor]:
    """The operator's weights: each block's in order, the final norm's, and the head's if any."""
    flat = []
    for block in transformer.blocks:
        for layer in (block.norm1, block.attn.qkv, block.attn.proj, block.norm2, block.mlp.up, block.mlp.down):
            flat += [layer.weight, layer.bias]
    return flat + [transformer.norm.weight, transformer.norm.bias] + ([head.weight, head.bias] if head else [])


def transformer_step(transformer, x: torch.Tensor, positions: torch.Tensor, cache, head=None) -> torch.Tensor:
    """`transformer(x, cache, positions)` for x (B, 1, D) at one position, fused -> (B, 1, D);
    with a `head` (a Linear), `head(...)` of it, in the same call -> (B, 1, V)."""
    flat_cache = [tensor for pair in cache for tensor in pair]
    rotary = transformer.rotary_frequencies(x.device) if transformer.rotary else NO_ROTARY
    return torch.ops.megabyte.transformer_step(x[:, 0], positions, weights(transformer, head), flat_cache,
                                               transformer.heads, rotary)[:, None]


def sample(logits: torch.Tensor, knobs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """model.sampling.sample in C++, for the rules in CXX_RULES: the same bytes from the same
    uniforms (B,), but where a uniform falls within rounding of a boundary between two bytes."""
    return torch.ops.megabyte.sample(logits, knobs.float(), uniform.float())


def local_patch(model, logits: torch.Tensor, from_global: torch.Tensor, cache, uniform: torch.Tensor,
                knobs: torch.Tensor) -> torch.Tensor:
    """A MegaByte patch's bytes (B, P), in one call: byte 0 drawn from `logits` (B, 256), each
    next one from the local model (and head) run over the byte before it plus its `from_global`
    (B, P, D_L) input, writing the local `cache`; `uniform` (B, P): one per byte."""
    flat_cache = [tensor for pair in cache for tensor in pair]
    return torch.ops.megabyte.local_patch(logits, from_global.contiguous(), model.local_embed.weight,
                                          weights(model.local_model, model.head), flat_cache,
                                          model.local_model.heads, knobs.float(), uniform.float().contiguous())
