"""Cached sampling: prefill the prompt once, then one cheap step per byte.

For MegaByte the global model runs once per patch and the local model once per
byte; neither recomputes the past. Works for any model with `prefill`,
`decode_one`, `setup_cache`, `clear_cache`, `context` and `patch_size`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Sampling:
    """How the next byte is drawn: temperature 0 is greedy; top_k 0 and top_p 1 keep every byte."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if not 0 <= self.temperature <= 10:
            raise ValueError(f"temperature must be between 0 and 10, not {self.temperature}.")
        if not 0 <= self.top_k <= 256:
            raise ValueError(f"top_k must be between 0 and 256, not {self.top_k}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}.")


def sample(logits: torch.Tensor, sampling: Sampling, uniform: torch.Tensor) -> torch.Tensor:
    """Draws one byte per row of logits (B, 256) with the Gumbel-max trick on the kept bytes.

    `uniform` (B, 256) holds the randomness, so the same noise gives the same bytes.
    """
    if sampling.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / sampling.temperature
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1 - 1e-7)))
    if sampling.top_k == 0 and sampling.top_p == 1:  # nothing to cut: skip the sort
        return (logits + gumbel).argmax(-1)
    sorted_logits, order = logits.sort(-1, descending=True)
    probs = sorted_logits.softmax(-1)
    keep = (probs.cumsum(-1) - probs) < sampling.top_p  # the most likely byte is always kept
    if sampling.top_k:
        keep[:, sampling.top_k :] = False
    choice = (sorted_logits.masked_fill(~keep, float("-inf")) + gumbel).argmax(-1)
    return order.gather(-1, choice[:, None])[:, 0]


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
    chunk: int | None = None,
) -> Iterator[np.ndarray]:
    """Yields uint8 arrays (samples, m) of new bytes, a patch (or `chunk` bytes) at a time.

    All samples continue the same prompt in one batch. The same seed gives the same bytes.
    When the sequence reaches the model's context, the window slides: the last
    `slide_window(model)` bytes (half the context, whole patches) are prefilled again
    and generation goes on from them; anything earlier is no longer seen.
    """
    if max_new_bytes < 0:
        raise ValueError("the number of bytes to generate cannot be negative.")
    if samples < 1:
        raise ValueError("at least one sample must be asked for.")
    device = next(model.parameters()).device
    chunk = chunk or model.patch_size
    generator = torch.Generator(device=device).manual_seed(seed)
    history = torch.tensor(list(prompt), dtype=torch.long, device=device)[None].expand(samples, -1)
    if history.shape[1] >= model.context:
        history = history[:, -slide_window(model) :]
    model.setup_cache(samples)
    try:
        logits = model.prefill(history)
        length = history.shape[1]
        recent, pending = [], []
        for i in range(max_new_bytes):
            uniform = torch.rand(samples, 256, generator=generator, device=device)
            byte = sample(logits, sampling, uniform)
            recent.append(byte)
            pending.append(byte)
            last = i == max_new_bytes - 1
            if len(pending) == chunk or last:
                yield torch.stack(pending, 1).to("cpu", torch.uint8).numpy()
                pending = []
            if last:
                break
            if length + 1 >= model.context:
                history = torch.cat([history, torch.stack(recent, 1)], 1)[:, -slide_window(model) :]
                recent = []
                logits = model.prefill(history)
                length = history.shape[1]
            else:
                logits = model.decode_one(byte)
                length += 1
    finally:
        model.clear_cache()


def generate(model, prompt: bytes, max_new_bytes: int, samples: int = 1,
             sampling: Sampling = Sampling(), seed: int = 0,
             progress: Callable[[int], None] | None = None) -> list[bytes]:
    """The prompt's continuations, one `bytes` of max_new_bytes per sample."""
    parts = []
    for part in generate_stream(model, prompt, max_new_bytes, samples, sampling, seed):
        parts.append(part)
        if progress:
            progress(sum(p.shape[1] for p in parts))
    if not parts:
        return [b""] * samples
    out = np.concatenate(parts, axis=1)
    return [row.tobytes() for row in out]
