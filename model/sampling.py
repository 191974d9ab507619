"""How the next byte is drawn from a distribution: temperature, truncation rules, one uniform
number per byte through the inverse of the kept bytes' cumulative distribution."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class Sampling:
    """How the next byte is drawn. Every rule's default leaves the distribution as it is.

    - temperature: divides the logits; 0 is greedy.
    - top_k: keep the k likeliest bytes (0: all).
    - top_p: keep the likeliest bytes that make up probability top_p (nucleus sampling).
    - min_p: keep bytes with p >= min_p · p_max.
    - eta: η-sampling (Hewitt et al. 2022): keep bytes with p >= min(η, √η · exp(−H)), H in nats.
    - floor: LPCNet's first trick (Valin & Skoglund 2019): subtract this probability from
      every byte, drop those left at zero or below, renormalise.
    - sharpen: LPCNet's second trick, sampling colder where the distribution is peaked. LPCNet
      multiplies the logits by 1 + max(0, 1.5·g − 0.5) with g the pitch correlation; with no
      pitch here, g is the peakedness 1 − H/8 (H the entropy in bits, 8 for a flat
      distribution): logits × (1 + sharpen · max(0, 1.5·(1 − H/8) − 0.5)). Sharpen 1 is LPCNet's rule.

    The top byte is always kept."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    eta: float = 0.0
    floor: float = 0.0
    sharpen: float = 0.0

    def __post_init__(self):
        if not 0 <= self.temperature <= 10:
            raise ValueError(f"temperature must be between 0 and 10, not {self.temperature}.")
        if not 0 <= self.top_k <= 256:
            raise ValueError(f"top_k must be between 0 and 256, not {self.top_k}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}.")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be between 0 and 1, not {self.min_p}.")
        if not 0 <= self.eta < 1:
            raise ValueError(f"eta must be in [0, 1), not {self.eta}.")
        if not 0 <= self.floor < 1 / 256:  # a floor of 1/256 would empty a flat distribution
            raise ValueError(f"floor must be in [0, 1/256), not {self.floor}.")
        if not 0 <= self.sharpen <= 10:
            raise ValueError(f"sharpen must be between 0 and 10, not {self.sharpen}.")

    def describe(self) -> str:
        """The settings that differ from the defaults, in words: "top_p 0.9, floor 0.002"."""
        changed = [f"{f.name} {getattr(self, f.name):g}" for f in fields(self) if getattr(self, f.name) != f.default]
        return ", ".join(changed) or "every byte, temperature 1"

    def knobs(self, device) -> torch.Tensor:
        """The settings as one tensor, in the order sample() reads them, so a compiled decoding
        step takes new settings without recompiling."""
        return torch.tensor([self.temperature, self.top_k or 256, self.top_p, self.min_p, self.eta, self.floor,
                             self.sharpen], device=device)


@dataclass(frozen=True)
class PerSample:
    """A Sampling for each sample of a batch, in order: generate(..., samples=len(rules),
    sampling=PerSample(rules)) draws each sample by its own rule, so rules compare in one batch."""

    rules: tuple[Sampling, ...]

    def knobs(self, device) -> torch.Tensor:
        return torch.stack([rule.knobs(device) for rule in self.rules])


# The rules that the fused C++ step also draws by (model.fused_step.sample); the others are drawn in torch.
CXX_RULES = ("temperature", "top_k", "top_p", "min_p")


def rules_outside_cxx(sampling: Sampling | PerSample) -> list[str]:
    """The rules set in `sampling` that the C++ sampler does not implement: [] where it draws the bytes."""
    rules = sampling.rules if isinstance(sampling, PerSample) else (sampling,)
    return sorted({f.name for rule in rules for f in fields(rule)
                   if f.name not in CXX_RULES and getattr(rule, f.name) != f.default})


def ranked_cdf(logits: torch.Tensor, knobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bytes of each row of logits (B, 256) ranked likeliest first (B, 256), the cumulative
    probability of the kept ones in that order (B, 256; flat past the last one), and how many
    are kept (B, 1): every rule keeps the likeliest bytes down to some rank, greedy (temperature 0)
    the first alone, so the kept bytes come first. `knobs`: as sample's. No Python branches on
    values: one graph for every setting."""
    # each knob as a column (1 or B, 1), so that it broadcasts over the rows' 256 bytes
    temperature, top_k, top_p, min_p, eta, floor, sharpen = knobs.reshape(-1, knobs.shape[-1]).T[..., None]
    # stable, so that among equal logits the lowest byte comes first, as argmax picks it
    ranked, order = logits.float().sort(dim=-1, descending=True, stable=True)
    ranked = ranked / temperature.clamp_min(1e-4)
    bits = _entropy(ranked.softmax(-1)) / math.log(2)
    ranked = ranked * (1 + sharpen * (1.5 * (1 - bits / 8) - 0.5).clamp_min(0))  # × exactly 1 when sharpen is 0
    probs = ranked.softmax(-1)
    nats = _entropy(probs)
    rank = torch.arange(ranked.shape[-1], device=logits.device)
    keep = (((probs.cumsum(-1) - probs) < top_p) & (rank < top_k)
            & (probs >= min_p * probs[:, :1])
            & (probs >= torch.minimum(eta, eta.sqrt() * torch.exp(-nats)))
            & (probs >= floor) & (temperature > 0)) | (rank == 0)
    weights = torch.where(keep, (probs - floor).clamp_min(0), 0)  # the floor subtracts nothing where it is 0
    return order, weights.cumsum(-1), keep.sum(-1, keepdim=True)


def sample(logits: torch.Tensor, knobs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Draws one byte per row of logits (B, 256) by the inverse of the kept bytes' cumulative
    distribution (ranked_cdf): the byte whose share of it holds `uniform` (B,), in [0, 1), times
    the kept probability. One uniform a byte, so that the C++ sampler (model.fused_step.sample)
    draws the same bytes from the same uniforms, but where a uniform falls within rounding of
    a boundary between two bytes.

    `knobs` is `Sampling.knobs` (one rule for every row) or `PerSample.knobs` (a rule per row).
    """
    order, cdf, kept = ranked_cdf(logits, knobs)
    target = uniform[:, None].float() * cdf[:, -1:]
    # past the last kept byte only where u · total rounds up to the total: that byte, then
    choice = (cdf <= target).sum(-1, keepdim=True).minimum(kept - 1)
    return order.gather(-1, choice)[:, 0]


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    """The entropy in nats of each row of probs, as (B, 1); bytes of probability 0 add 0."""
    return torch.special.entr(probs).sum(-1, keepdim=True)
