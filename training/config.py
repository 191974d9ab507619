"""Training run configs, kept as TOML files in configs/ and validated with one sentence per mistake."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from model import ConfigError, config_from_dict


PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class DataConfig:
    dir: str = "data/text"        # holds train.bin and val.bin (from python -m training.data)
    align: int = 1                # windows start at multiples of this (an image's byte count)


@dataclass(frozen=True)
class TrainConfig:
    out: str = "runs/text"
    seed: int = 0
    seq_len: int = 2048
    batch_size: int = 8           # the global batch: split across processes under torchrun
    max_steps: int = 1000
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    precision: str = "auto"       # "auto": time fp32 and bf16 autocast at start, train in the faster
    compile: bool = False
    eval_every: int = 200
    eval_windows: int = 64
    log_every: int = 10
    checkpoint_minutes: float = 5.0
    checkpoint_steps: int = 0     # also checkpoint every this many steps (0: by time only)
    input_noise: float = 0.0      # share of input bytes replaced by random ones, targets kept: a model
                                  # that learns to read past wrong bytes recovers from its own bad samples


@dataclass(frozen=True)
class RunConfig:
    model: object
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    layout: dict = field(default_factory=lambda: {"modality": "bytes"})


def _section(cls, values: dict, name: str):
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown setting {key!r} in [{name}]; known: {', '.join(fields)}.")
        expected = type(fields[key].default)
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ConfigError(f"[{name}] {key} must be of type {expected.__name__}, not {value!r}.")
    return cls(**values)


def load_run_config(path) -> RunConfig:
    """Reads and checks a TOML run config."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"there is no config file {path}.") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML ({e}).") from None
    unknown = sorted(set(raw) - {"model", "data", "train", "layout"})
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}] in {path}; known: model, data, train, layout.")
    if "model" not in raw:
        raise ConfigError(f"{path} has no [model] section.")
    model = config_from_dict(raw["model"])
    data = _section(DataConfig, raw.get("data", {}), "data")
    train = _section(TrainConfig, raw.get("train", {}), "train")
    if model.kind == "megabyte" and train.seq_len % model.patch_size:
        raise ConfigError(f"seq_len={train.seq_len} is not a multiple of patch_size={model.patch_size}.")
    if train.seq_len > model.max_bytes:
        raise ConfigError(f"seq_len={train.seq_len} is longer than the model's max_bytes={model.max_bytes}.")
    for name in ("seq_len", "batch_size", "max_steps", "eval_every", "eval_windows", "log_every"):
        if getattr(train, name) <= 0:
            raise ConfigError(f"[train] {name} must be positive.")
    if train.precision not in PRECISIONS:
        raise ConfigError(f"[train] precision must be one of {', '.join(PRECISIONS)}, not {train.precision!r}.")
    if train.warmup_steps >= train.max_steps:
        raise ConfigError("[train] warmup_steps must be smaller than max_steps.")
    if not 0 < train.min_lr <= train.lr:
        raise ConfigError("[train] min_lr must be positive and at most lr.")
    if not 0 <= train.input_noise < 1:
        raise ConfigError("[train] input_noise must be at least 0 and below 1.")
    layout = raw.get("layout", {"modality": "bytes"})
    if not isinstance(layout, dict) or "modality" not in layout:
        raise ConfigError("[layout] must be a table with a modality.")
    return RunConfig(model, data, train, layout)
