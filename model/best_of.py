"""Best-of-N: draw N continuations in one batch and keep the one the model itself rates best, or,
chunk by chunk, the one a caller's cost rates best."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from .generate import Steer, generate, generate_stream
from .sampling import Sampling
from .score import Scores, score

RANKINGS = ("likelihood", "typical")


def continuation_scores(model, prompt: bytes, continuation: bytes) -> Scores:
    """The model's surprisal and entropy at each byte of `continuation` after `prompt`, with as
    much of the prompt before it as fits the model's context (at least half of it)."""
    seen = max(model.context // 2, model.context - len(continuation)) // model.patch_size * model.patch_size
    before = prompt[-seen:] if seen else b""
    scored = score(model, before + continuation)
    return Scores(scored.surprisal[len(before):], scored.entropy[len(before):])


def badness(scores: Scores, ranking: str) -> float:
    """Lower is better. likelihood: mean surprisal (SaShiMi's ranking); typical: how far the mean
    surprisal lies from the mean entropy of the model's own predictions (a sample as surprising
    as the model expects a sample to be)."""
    if ranking == "likelihood":
        return float(scores.surprisal.mean())
    return float(abs(scores.surprisal.mean() - scores.entropy.mean()))


def best_of(model, prompt: bytes, new_bytes: int, n: int, sampling: Sampling = Sampling(), seed: int = 0,
            ranking: str = "likelihood") -> bytes:
    """The best of n continuations of `prompt` drawn in one batch, by `ranking` (see badness)."""
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {', '.join(RANKINGS)}, not {ranking!r}.")
    candidates = generate(model, prompt, new_bytes, n, sampling, seed)
    return min(candidates, key=lambda c: badness(continuation_scores(model, prompt, c), ranking))


def chunked_best_of(model, prompt: bytes, new_bytes: int, n: int, chunk_bytes: int, cost: Callable[[bytes], float],
                    sampling: Sampling = Sampling(), seed: int = 0, patch_step: Callable | None = None,
                    fused: bool = False) -> Iterator[bytes]:
    """Yields the continuation of `prompt` a chunk at a time, new_bytes in all: n candidates drawn
    in one batch, and after every `chunk_bytes` (the last chunk may be shorter) the one `cost`
    rates lowest kept (the first among equals), all n going on from it (model.generate.Steer).
    Steering a chunk at a time corrects a drift as it starts, where one pick among whole
    continuations can only hope one of them never drifted. While a chunk is drawn, b"" each step
    (a place for the caller to stop). `patch_step`, `fused`: as generate's."""

    def choose(chunk: np.ndarray) -> np.ndarray:
        return np.full(n, min(range(n), key=lambda row: cost(chunk[row].tobytes())))

    for part in generate_stream(model, prompt, new_bytes, n, sampling, seed, patch_step, fused,
                                Steer(chunk_bytes, choose)):
        yield part[0].tobytes()
