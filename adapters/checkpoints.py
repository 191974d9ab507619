"""Checkpoints by modality: which folders hold one, what each card says it knows, loading one
for a modality. Shared by the app, the command line and the benchmarks."""

from __future__ import annotations

from pathlib import Path

from model import CheckpointError, load_checkpoint, read_config

from .common import AdapterError
from .layout import Layout

# text and raw bytes share checkpoints
READABLE = {"text": {"text", "bytes"}, "bytes": {"text", "bytes"}, "image": {"image"}, "audio": {"audio"}}


def description(folder) -> str:
    """The first line of the checkpoint's card, in a few words (e.g. "emoji and icons, 32×32")."""
    card = Path(folder) / "card.md"
    lines = card.read_text().splitlines() if card.is_file() else []
    first = next((line for line in lines if line.strip()), "")
    return first.lstrip("#").strip() or Path(folder).name


def catalog(root, modality: str) -> list[Path]:
    """The checkpoint folders under root whose layout fits `modality`, sorted by name."""
    found = []
    for folder in sorted(Path(root).iterdir()) if Path(root).is_dir() else []:
        try:
            kind = read_config(folder).get("layout", {}).get("modality", "bytes")
        except CheckpointError:
            continue
        if kind in READABLE.get(modality, {modality}):
            found.append(folder)
    return found


def check_fits(layout: Layout, modality: str, folder) -> None:
    """Refuses, in one sentence, a checkpoint that was not trained on `modality`'s bytes."""
    if layout.modality not in READABLE.get(modality, {modality}):
        raise AdapterError(f"The checkpoint {folder} was trained on {layout.modality}, not {modality}.")


def load_for(modality: str, folder, device="cpu") -> tuple[object, Layout]:
    """A checkpoint's model (eval mode) and layout, if it was trained on `modality`'s bytes."""
    model, layout = load_checkpoint(folder, device)
    layout = Layout.from_dict(layout)
    check_fits(layout, modality, folder)
    return model, layout
