"""A transformer's step for one new position, fused into one CPU call: `csrc/transformer_step.cpp`.

Decoding at small batches is bound by what each torch kernel costs, not by arithmetic:
MegaByte's local model is ~30 small matrix-vector products per byte, each its own kernel
(inductor emits the same calls), and torch's matrix-vector product reads a matrix that is
not in cache far below the memory's speed. The C++ step runs a whole `layers.Transformer`
over one position with its KV cache (norms, attention, MLP) in one operator,
`torch.ops.megabyte.transformer_step`, which torch.compile places in the decoding graph as is.

Built on first use (`build()`, ~1 minute) with the system's C++ compiler for this very CPU
(-march=native), under a name that carries the CPU's flags, so a build made on another
machine is never loaded. Until it is built, or where it cannot be (no compiler), the same
layers run in torch.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "transformer_step.cpp"
_built: bool | None = None  # None: not tried yet


def cpu_signature() -> str:
    """A short hash of the CPU's model and feature flags: what -march=native compiles for."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else [platform.processor()]
    wanted = [line for line in lines if line.startswith(("model name", "flags"))][:2]
    return hashlib.sha1("\n".join(wanted).encode()).hexdigest()[:12]


def library_path() -> Path:
    """Where this CPU's build of this source is kept: torch's extension folder, under a name
    that carries the CPU's signature and the source's hash."""
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    source_hash = hashlib.sha1(SOURCE.read_bytes()).hexdigest()[:12]
    return root / "megabyte" / f"transformer_step_{cpu_signature()}_{source_hash}.so"


def build() -> bool:
    """Loads the fused step once per process, building it first if this CPU has no build of
    this source yet; whether it is there. Each build goes to a folder of its own and is then
    moved into place whole, so a process killed while building (the app stopped during its
    first minute) leaves nothing half-made, and no lock, behind."""
    global _built
    if _built is None:
        try:
            library = library_path()
            if not library.exists():
                from torch.utils.cpp_extension import load
                with tempfile.TemporaryDirectory() as folder:
                    load(name=library.stem, sources=[str(SOURCE)], build_directory=folder, is_python_module=False,
                         extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp-simd"])
                    library.parent.mkdir(parents=True, exist_ok=True)
                    staged = library.with_suffix(f".{os.getpid()}.tmp")
                    shutil.copyfile(Path(folder) / f"{library.stem}.so", staged)
                    os.replace(staged, library)
            else:
                torch.ops.load_library(str(library))
            torch.library.register_fake("megabyte::transformer_step")(_output_like)
            _built = True
        except Exception as error:  # no compiler or no ninja: torch's layers do the same work
            warnings.warn(f"The fused decoding step could not be built ({error}); decoding uses torch's layers.")
            _built = False
    return _built


@contextmanager
def switched_off():
    """Inside the block, decoding runs torch's layers even where the fused step is built:
    for comparisons (bench.speed). A step compiled inside keeps to torch's layers."""
    global _built
    before, _built = _built, False
    try:
        yield
    finally:
        _built = before


def _output_like(x, position, weights, cache, heads):
    """The operator's output for torch.compile's tracing: (B, D), or (B, V) with a head."""
    return x.new_empty(x.shape[0], weights[-1].shape[0])


def fits(x: torch.Tensor, cache) -> bool:
    """Whether the fused step runs this call: built, one new position with a cache, fp32 or
    bf16 on the CPU, no gradients."""
    return (bool(_built) and cache is not None and x.shape[1] == 1 and x.dtype in (torch.float32, torch.bfloat16)
            and x.device.type == "cpu" and not torch.is_grad_enabled())


def transformer_step(transformer, x: torch.Tensor, positions: torch.Tensor, cache, head=None) -> torch.Tensor:
    """`transformer(x, cache, positions)` for x (B, 1, D) at one position, fused -> (B, 1, D);
    with a `head` (a Linear), `head(...)` of it, in the same call -> (B, 1, V)."""
    weights = []
    for block in transformer.blocks:
        for layer in (block.norm1, block.attn.qkv, block.attn.proj, block.norm2, block.mlp.up, block.mlp.down):
            weights += [layer.weight, layer.bias]
    weights += [transformer.norm.weight, transformer.norm.bias] + ([head.weight, head.bias] if head else [])
    flat_cache = [tensor for pair in cache for tensor in pair]
    return torch.ops.megabyte.transformer_step(x[:, 0], positions, weights, flat_cache, transformer.heads)[:, None]
