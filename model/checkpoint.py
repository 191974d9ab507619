"""Checkpoints as folders: config.json (model config + adapter layout), model.safetensors, card.md.

Writes go to a temporary folder that is renamed into place, so a crash never
leaves half a checkpoint. Loading unpickles nothing and checks every key and shape.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ConfigError, config_from_dict
from .megabyte import build_model


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message is one sentence."""


def save_checkpoint(folder, model, layout: dict | None = None, card: str = "",
                    dtype: torch.dtype | None = None, extra: dict | None = None) -> Path:
    """Writes the model (weights cast to `dtype` if given) atomically to `folder`.

    `extra` holds more files to write beside the model, as {name: bytes}.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a checkpoint is meant to be shared
    try:
        state = {k: (v.to(dtype) if dtype else v).detach().cpu().contiguous()
                 for k, v in model.state_dict().items()}
        save_file(state, tmp / "model.safetensors")
        config = {"model": model.config.to_dict(), "layout": layout or {"modality": "bytes"}}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "card.md").write_text(card)
        for name, content in (extra or {}).items():
            (tmp / name).write_bytes(content)
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_config(folder) -> dict:
    """The parsed config.json of a checkpoint folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a checkpoint folder (no such directory).")
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a checkpoint folder: config.json is missing.")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}).") from None
    if not isinstance(config, dict) or "model" not in config:
        raise CheckpointError(f"{path} has no \"model\" section.")
    return config


def load_checkpoint(folder, device: str | torch.device = "cpu"):
    """Returns (model in eval mode, layout dict) from a checkpoint folder."""
    folder = Path(folder)
    config = read_config(folder)
    try:
        model = build_model(config_from_dict(config["model"]))
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{folder / 'config.json'} describes no valid model: {e}") from None
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{folder} has no model.safetensors.")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is corrupt or truncated ({e}).") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise CheckpointError(f"{weights} lacks {len(missing)} weight(s) the config needs, e.g. {missing[0]}.")
    if unexpected:
        raise CheckpointError(f"{weights} has {len(unexpected)} weight(s) the config does not know, e.g. {unexpected[0]}.")
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            raise CheckpointError(
                f"{weights}: {name} has shape {tuple(state[name].shape)}, the config needs {tuple(tensor.shape)}."
            )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model.to(device).eval(), config.get("layout", {"modality": "bytes"})
