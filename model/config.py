"""Model configs: plain dataclasses that round-trip through config.json.

Every mistake a user can make in a config raises ConfigError with one sentence.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


class ConfigError(ValueError):
    """A config that cannot describe a model; the message is one sentence."""


def _check_positive(cfg, names):
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, not {value!r}.")


def _check_heads(width_name, width, heads_name, heads):
    if width % heads:
        raise ConfigError(f"{heads_name}={heads} does not divide {width_name}={width}.")


POSITIONS = ("learned", "rotary")


@dataclass(frozen=True)
class MegaByteConfig:
    """MegaByte (Yu et al. 2023).

    Each byte is embedded at width `byte_dim` (the paper's D_G); the embeddings of
    the `patch_size` bytes of a patch are concatenated, so the global model's width
    is patch_size * byte_dim. The local model has width `local_dim` (D_L).

    `positions`: "learned" is the paper's table of one vector per byte of the context
    (max_bytes * byte_dim parameters, 4M at 128 KB); "rotary" learns one vector per
    place inside a patch and gives the global model rotary positions over patches, so
    its size does not grow with the context.

    `recall`: the orders of model.recall's match model, mixed into every prediction (scoring,
    coding, generation), or () for none; it has no weights, so it can be turned on for a
    trained checkpoint in its config.json.
    """

    kind = "megabyte"
    patch_size: int = 8
    byte_dim: int = 32
    global_layers: int = 4
    global_heads: int = 4
    local_dim: int = 128
    local_layers: int = 2
    local_heads: int = 4
    max_bytes: int = 8192
    mlp_ratio: int = 4
    positions: str = "learned"
    recall: tuple[int, ...] = ()

    @property
    def global_dim(self) -> int:
        return self.patch_size * self.byte_dim

    def __post_init__(self):
        _check_positive(self, [f.name for f in dataclasses.fields(self) if f.name not in ("positions", "recall")])
        if not isinstance(self.recall, (list, tuple)) or not all(
                isinstance(k, int) and not isinstance(k, bool) and 0 < k < self.max_bytes for k in self.recall):
            raise ConfigError(f"recall must be a list of orders between 1 and max_bytes, not {self.recall!r}.")
        if list(self.recall) != sorted(set(self.recall)):
            raise ConfigError(f"recall's orders must be increasing, not {list(self.recall)!r}.")
        object.__setattr__(self, "recall", tuple(self.recall))  # config.json has a list
        if self.positions not in POSITIONS:
            raise ConfigError(f"positions must be one of {', '.join(POSITIONS)}, not {self.positions!r}.")
        if self.positions == "rotary" and (self.global_dim // self.global_heads) % 2:
            raise ConfigError("rotary positions need an even width per global head.")
        if self.max_bytes % self.patch_size:
            raise ConfigError(
                f"max_bytes={self.max_bytes} is not a multiple of patch_size={self.patch_size}."
            )
        _check_heads("the global width (patch_size*byte_dim)", self.global_dim,
                     "global_heads", self.global_heads)
        _check_heads("local_dim", self.local_dim, "local_heads", self.local_heads)

    def to_dict(self) -> dict:
        d = {"kind": self.kind, **dataclasses.asdict(self), "recall": list(self.recall)}
        if not self.recall:  # the configs written before recall existed stay byte for byte as they were
            del d["recall"]
        return d


@dataclass(frozen=True)
class FlatConfig:
    """The flat byte-level decoder that the paper compares against."""

    kind = "flat"
    dim: int = 256
    layers: int = 6
    heads: int = 4
    max_bytes: int = 2048
    mlp_ratio: int = 4

    def __post_init__(self):
        _check_positive(self, [f.name for f in dataclasses.fields(self)])
        _check_heads("dim", self.dim, "heads", self.heads)

    def to_dict(self) -> dict:
        return {"kind": self.kind, **dataclasses.asdict(self)}


CONFIG_KINDS = {c.kind: c for c in (MegaByteConfig, FlatConfig)}


def config_from_dict(d: dict) -> MegaByteConfig | FlatConfig:
    """Builds a config from its dict form (as written by to_dict)."""
    if not isinstance(d, dict):
        raise ConfigError("the model config must be a JSON object.")
    d = dict(d)
    kind = d.pop("kind", "megabyte")
    if kind not in CONFIG_KINDS:
        raise ConfigError(f"unknown model kind {kind!r}; expected one of {sorted(CONFIG_KINDS)}.")
    cls = CONFIG_KINDS[kind]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown {kind} config field(s): {', '.join(unknown)}.")
    return cls(**d)
