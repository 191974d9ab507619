"""Cached sampling: prefill the prompt once, then one cheap step per patch.

For MegaByte the global model runs once per patch and the local model once per
byte; neither recomputes the past. Works for any model with `prefill`, `decode_one`,
`patch_step`, `context` and `patch_size` (see model.megabyte). The request's state
lives here, in local variables, so one model serves many generations at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from .sampling import Sampling, sample


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
