"""Cached sampling: prefill the prompt once, then one cheap step per patch.

For MegaByte the global model runs once per patch and the local model once per
byte; neither recomputes the past. Works for any model with `prefill`, `decode_one`,
`patch_step`, `context` and `patch_size` (see model.megabyte). The request's state
lives here, in local variables, so one model serves many generations at once.

Batched, compiled decoding: `compile_for_buckets` compiles a model's patch step for a few
batch sizes and registers it; `stream_bytes` pads the samples to their bucket and takes the
registered step when there is one, eagerly until then.
"""

from __future__ import annotations

import copy
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from . import fused_step, hardware
from .megabyte import compile_decoding
from .sampling import Sampling, sample

# Generation runs at one of these batch sizes, the samples padded up to it, so that a few
# compiled steps serve every request (and the same seed gives the same bytes either way).
BATCH_BUCKETS = (1, 2, 4, 8)


def slide_window(model) -> int:
    """How many bytes generation keeps when the sequence reaches the model's context:
    the most recent half of the context, rounded down to whole patches."""
    return model.context // 2 // model.patch_size * model.patch_size


@torch.no_grad()
def generate_stream(
    model,
    prompt: bytes,
    max_new_bytes: int,
    samples: int = 1,
    sampling: Sampling = Sampling(),
    seed: int = 0,
    patch_step: Callable | None = None,
) -> Iterator[np.ndarray]:
    """Yields uint8 arrays (samples, m) of new bytes, a patch at a time (single bytes
    until the first patch boundary).

    All samples continue the same prompt in one batch. The same seed gives the same bytes.
    Whole patches go through `patch_step` (`model.patch_step`, or the compiled one from
    `compile_decoding`, which gives the same bytes); the bytes that finish a
    partial patch, the last ones asked for and the last patch before the context is full
    go byte by byte. When the sequence reaches the model's context, the window slides: the
    last `slide_window(model)` bytes (half the context, whole patches) are prefilled again
    and generation goes on from them; anything earlier is no longer seen.
    """
    if max_new_bytes < 0:
        raise ValueError("the number of bytes to generate cannot be negative.")
    if samples < 1:
        raise ValueError("at least one sample must be asked for.")
    device = next(model.parameters()).device
    p = model.patch_size
    generator = torch.Generator(device=device).manual_seed(seed)
    knobs = sampling.knobs(device)
    history = torch.tensor(list(prompt), dtype=torch.long, device=device)[None].expand(samples, -1)
    if history.shape[1] >= model.context:
        history = history[:, -slide_window(model) :]
    patch_step = patch_step or model.patch_step
    logits, state = model.prefill(history)
    length, made, recent = history.shape[1], 0, []
    while made < max_new_bytes:
        whole_patch = length % p == 0 and length + p < model.context and made + p <= max_new_bytes
        uniform = torch.rand(samples, p if whole_patch else 1, 256, generator=generator, device=device)
        if whole_patch:
            new, logits, state = patch_step(logits, state, uniform, knobs)
        else:
            new = sample(logits, knobs, uniform[:, 0])[:, None]
        made += new.shape[1]
        recent.append(new)
        yield new.to("cpu", torch.uint8).numpy()
        if made == max_new_bytes:
            break
        if whole_patch:
            length += p
        elif length + 1 >= model.context:
            history = torch.cat([history, *recent], 1)[:, -slide_window(model) :]
            recent = []
            logits, state = model.prefill(history)
            length = history.shape[1]
        else:
            logits, state = model.decode_one(new[:, 0], state)
            length += 1


def generate(model, prompt: bytes, max_new_bytes: int, samples: int = 1,
             sampling: Sampling = Sampling(), seed: int = 0,
             progress: Callable[[int], None] | None = None, patch_step: Callable | None = None) -> list[bytes]:
    """The prompt's continuations, one `bytes` of max_new_bytes per sample."""
    parts = []
    for part in generate_stream(model, prompt, max_new_bytes, samples, sampling, seed, patch_step):
        parts.append(part)
        if progress:
            progress(sum(p.shape[1] for p in parts))
    if not parts:
        return [b""] * samples
    out = np.concatenate(parts, axis=1)
    return [row.tobytes() for row in out]


@dataclass
class GenerationStatus:
    """How a generation is running: on the "compiled" step or "eager", and the new bytes
    per second so far, all samples counted."""

    path: str = "eager"
    bytes_per_second: float = 0.0


# model -> {batch bucket: (the model in its decoding dtype, its compiled step)}, filled by compile_for_buckets
_compiled_steps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def bucket_for(samples: int) -> int:
    """The smallest batch bucket that holds `samples`."""
    if samples > BATCH_BUCKETS[-1]:
        raise ValueError(f"at most {BATCH_BUCKETS[-1]} samples can be generated at once.")
    return next(bucket for bucket in BATCH_BUCKETS if bucket >= samples)


def compile_for_buckets(model, buckets=BATCH_BUCKETS):
    """Compiles `model`'s decoding step for each batch bucket, in the dtype that decodes
    faster at that batch (model.hardware.decoding_dtype: bf16 weights and caches where they
    win), runs it once so that it is compiled, and registers it: stream_bytes uses each as
    soon as it is ready. Buckets that share a dtype share one copy of the model."""
    fused_step.build()  # before decoding_dtype times fp32, which the fused step speeds up
    # every (model, dtype, bucket) is one compiled graph of the same function
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    ready = _compiled_steps.setdefault(model, {})
    for bucket in buckets:
        dtype = hardware.decoding_dtype(model, bucket)  # looked up in the module: tests pin it there
        decoders = [decoder for decoder, _ in ready.values() if next(decoder.parameters()).dtype == dtype]
        decoder = model if dtype == torch.float32 else (decoders or [copy.deepcopy(model).to(dtype)])[0]
        step = compile_decoding(decoder)
        # a prompt of one whole patch: the first call of the step compiles it
        generate(decoder, bytes(decoder.patch_size), decoder.patch_size, bucket, patch_step=step)
        ready[bucket] = decoder, step


def stream_bytes(model, prompt: bytes, new_bytes: int, samples: int, sampling: Sampling = Sampling(),
                 seed: int = 0, status: GenerationStatus | None = None) -> Iterator[np.ndarray]:
    """Yields the new bytes (samples, m) as they are made, the samples padded to their batch
    bucket: on the step compile_for_buckets registered for that bucket when there is one,
    eagerly until then; `status` follows which, and how fast. Holds no lock: the decoding
    state is this request's own."""
    status = status or GenerationStatus()
    bucket = bucket_for(samples)
    decoder, step = _compiled_steps.get(model, {}).get(bucket, (model, None))
    status.path = "compiled" if step else "eager"
    start, made = time.perf_counter(), 0
    for part in generate_stream(decoder, prompt, new_bytes, bucket, sampling, seed, patch_step=step):
        made += part.shape[1]
        status.bytes_per_second = samples * made / (time.perf_counter() - start)
        yield part[:samples]
