"""Per-byte surprisal and predictive entropy for inputs of any length."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from . import recall as recall_model


@dataclass
class Scores:
    """surprisal[t] = -log2 p(x_t | past) and entropy[t] of that prediction, both in bits.
    With `top` asked for, top_bytes/top_probs hold the model's most likely bytes at each t."""

    surprisal: np.ndarray
    entropy: np.ndarray
    top_bytes: np.ndarray | None = None
    top_probs: np.ndarray | None = None

    @property
    def bits_per_byte(self) -> float:
        return float(self.surprisal.mean()) if len(self.surprisal) else 0.0


def window_plan(n: int, window: int) -> list[tuple[int, int, int]]:
    """(start, first_scored, end_scored) for each window over n bytes.

    One window while the input fits. Beyond that, windows advance by half a window,
    and each scores only its second half, so every byte after the first window is
    predicted from at least half a window of context.
    """
    if n <= window:
        return [(0, 0, n)]
    half = window // 2
    plan = [(0, 0, window)]
    start = half
    while plan[-1][2] < n:
        plan.append((start, start + half, min(start + window, n)))
        start += half
    return plan


def compile_scoring(model, dtype: torch.dtype = torch.float32) -> Callable:
    """`model` with its weights in `dtype`, compiled for score(..., compiled=...), which gives
    it only full batches of whole windows (one shape, so one graph per predict_from) and runs
    the rest eagerly. Inductor fuses what eager runs as separate passes (GELU, norms,
    attention's softmax); bf16 weights save autocast's casts where bf16 is faster."""
    return torch.compile(model if dtype == torch.float32 else copy.deepcopy(model).to(dtype), dynamic=False)


@torch.no_grad()
def score(
    model,
    data: bytes,
    window: int | None = None,
    batch: int = 4,
    top: int = 0,
    bf16: bool = False,
    progress: Callable[[int, int], None] | None = None,
    compiled: Callable | None = None,
    recall: bool = True,
) -> Scores:
    """Scores every byte of `data`; memory grows with batch·window, not with the input.
    `compiled` (from compile_scoring(model)) runs the batches of `batch` whole windows.
    A model whose config has recall orders (model.recall) predicts with recall mixed in (it looks
    back over the whole input, up to recall.LOOKBACK); `recall=False`: the neural model alone."""
    p = model.patch_size
    window = window or model.context
    if window % (2 * p) or window > model.context:
        raise ValueError(f"the scoring window must be a multiple of {2 * p} and at most {model.context}.")
    n = len(data)
    device = next(model.parameters()).device
    x = torch.tensor(np.frombuffer(data, np.uint8))
    surprisal = np.zeros(n, np.float32)
    entropy = np.zeros(n, np.float32)
    top_bytes = np.zeros((n, top), np.uint8) if top else None
    top_probs = np.zeros((n, top), np.float32) if top else None
    if n == 0:
        return Scores(surprisal, entropy, top_bytes, top_probs)
    plan = window_plan(n, window)
    length = math.ceil(min(n, window) / p) * p
    orders = getattr(model.config, "recall", ()) if recall else ()
    if orders:  # from the bytes alone, so the whole input at once
        predicted, weight = (torch.from_numpy(a) for a in recall_model.plan(data, orders))
    done = 0
    for i in range(0, len(plan), batch):
        group = plan[i : i + batch]
        rows = torch.zeros(len(group), length, dtype=torch.long)
        for r, (start, _, end) in enumerate(group):
            rows[r, : end - start] = x[start:end]
        rows = rows.to(device)
        # the bytes before the first scored one are context only: no predictions for them
        skip = min(first - start for start, first, _ in group)
        forward = compiled if compiled is not None and rows.shape == (batch, window) else model
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(rows, predict_from=skip)
        logp = logits.float().log_softmax(-1)
        if orders:
            logp = recalled(logp, predicted, weight, group, skip)
        bits = (-logp.gather(-1, rows[:, skip:, None])[..., 0] / math.log(2)).cpu().numpy()
        ent = (-(logp.exp() * logp).sum(-1) / math.log(2)).cpu().numpy()
        if top:
            probs, idx = logp.exp().topk(top, dim=-1)
            probs, idx = probs.cpu().numpy(), idx.cpu().numpy()
        for r, (start, first, end) in enumerate(group):
            a, b = first - start - skip, end - start - skip
            surprisal[first:end] = bits[r, a:b]
            entropy[first:end] = ent[r, a:b]
            if top:
                top_bytes[first:end] = idx[r, a:b]
                top_probs[first:end] = probs[r, a:b]
            done += end - first
        if progress:
            progress(done, n)
    return Scores(surprisal, entropy, top_bytes, top_probs)


def recalled(logp: torch.Tensor, predicted: torch.Tensor, weight: torch.Tensor, group, skip: int) -> torch.Tensor:
    """The windows' log-probabilities (W, L, 256), predicting bytes start + skip.. of each
    window in `group`, with recall's predictions for the whole input mixed in."""
    where = torch.stack([torch.arange(start + skip, start + skip + logp.shape[1]) for start, _, _ in group])
    inside = where < len(predicted)
    where = where.clamp(max=len(predicted) - 1)
    return recall_model.mix(logp.exp(), torch.where(inside, predicted[where], -1),
                      torch.where(inside, weight[where], 0.0)).log()


def strided_score(model, data: bytes, **options) -> Scores:
    """The paper's strided inference: score() twice, the second time with the patch
    boundaries moved by P/2, and each byte takes the prediction in which it sits in the
    second half of its patch, where the local model has already read part of the patch.
    Twice the cost of score(); `options` are score()'s."""
    half = model.patch_size // 2
    plain, shifted = score(model, data, **options), score(model, data[half:], **options)
    if half == 0 or len(data) <= half:
        return plain
    position = np.arange(len(data)) % model.patch_size
    take = np.flatnonzero((position < half) & (np.arange(len(data)) >= half))
    for name in ("surprisal", "entropy", "top_bytes", "top_probs"):
        values = getattr(plain, name)
        if values is not None:
            values[take] = getattr(shifted, name)[take - half]
    return plain
