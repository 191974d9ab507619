"""How the next byte is drawn from a distribution: temperature, top-k, top-p, Gumbel-max."""

from __future__ import annotations

from dataclasses import dataclass

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

    def knobs(self, device) -> torch.Tensor:
        """The settings as a tensor [temperature, top_k, top_p], so a compiled decoding step
        takes new settings without recompiling."""
        return torch.tensor([self.temperature, self.top_k or 256, self.top_p], device=device)


def sample(logits: torch.Tensor, knobs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Draws one byte per row of logits (B, 256) with the Gumbel-max trick on the kept bytes.

    `knobs` is `Sampling.knobs`; `uniform` (B, 256) holds the randomness, so the same
    noise gives the same bytes. No Python branches on values: one graph for every setting.
    """
    temperature, top_k, top_p = knobs[0], knobs[1], knobs[2]
    # stable, so that among equal logits the lowest byte comes first, as argmax picks it
    ranked, order = logits.float().sort(dim=-1, descending=True, stable=True)
    ranked = ranked / temperature.clamp_min(1e-4)
    probs = ranked.softmax(-1)
    rank = torch.arange(ranked.shape[-1], device=logits.device)
    keep = ((probs.cumsum(-1) - probs) < top_p) & (rank < top_k)  # the top byte is always kept
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1 - 1e-7)))
    choice = (ranked.masked_fill(~keep, float("-inf")) + gumbel).argmax(-1)
    choice = torch.where(temperature > 0, choice, torch.zeros_like(choice))  # greedy: rank 0
    return order.gather(-1, choice[:, None])[:, 0]
