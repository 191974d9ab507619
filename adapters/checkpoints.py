"""Checkpoints by modality: which folders hold one, what each card says it knows, loading one
for a modality. Shared by the app, the command line and the benchmarks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def load(folder, device="cpu") -> tuple[object, Layout]:
    """A checkpoint's model (eval mode) and the layout of the bytes it was trained on."""
    model, layout = load_checkpoint(folder, device)
    return model, Layout.from_dict(layout)


def load_for(modality: str, folder, device="cpu") -> tuple[object, Layout]:
    """A checkpoint's model (eval mode) and layout, if it was trained on `modality`'s bytes."""
    model, layout = load(folder, device)
    check_fits(layout, modality, folder)
    return model, layout


# Bytes of an input each checkpoint scores to choose among them: 2 s of 8 kHz audio (the audio
# view's default prompt; 4 s took about 2 s per checkpoint on a busy 2-core CPU), a whole 32×32 image.
AUTO_BYTES = 16_384


@dataclass
class Fit:
    """How surprised one checkpoint is by an input."""

    folder: Path
    bits_per_byte: float


def rank(candidates, encode, limit: int = AUTO_BYTES) -> list[Fit]:
    """Each candidate (folder, model, layout) scores the input as `encode(layout)` gives it
    (its first `limit` bytes), least surprised first: the likelihood is the model's own
    measure of fit, so it chooses the checkpoint for an upload (the app's "auto")."""
    from model import score

    fits = [Fit(Path(folder), score(model, encode(layout)[:limit]).bits_per_byte)
            for folder, model, layout in candidates]
    return sorted(fits, key=lambda fit: fit.bits_per_byte)


def encode_media(source, layout: Layout, max_audio_seconds: float | None = None) -> bytes:
    """A media file (path, bytes or binary file object; an image also as a PIL image, decoded
    once for several layouts) as the bytes the layout describes: an image resized, audio µ-law
    (its first `max_audio_seconds`), text and raw bytes as they are."""
    from . import audio, image, text

    if layout.modality == "image":
        return image.encode(image.load(source, layout), layout)
    if layout.modality == "audio":
        return audio.encode(audio.load(source, layout, max_audio_seconds), layout)
    return text.read(source)


CHECK_LINE = "- Check: {bits:.4f} bits per byte on `{pattern}` ({files} held-out files, {size:,} bytes)"
CHECK_PATTERN = re.compile(r"- Check: ([0-9.]+) bits per byte on `([^`]+)`")


def check_files(pattern: str, root) -> list[Path]:
    return sorted(Path(root).glob(pattern))


def stated_check(folder) -> tuple[float, str] | None:
    """(bits per byte, file pattern) of the card's check line: what the checkpoint scores on
    held-out files that ship in the repository (tests/test_checkpoints.py holds it to that)."""
    card = Path(folder) / "card.md"
    found = CHECK_PATTERN.search(card.read_text()) if card.is_file() else None
    return (float(found.group(1)), found.group(2)) if found else None


def measure_check(model, layout: Layout, pattern: str, root) -> dict:
    """Bits per byte of the model over the files matching pattern (under root), each scored on its own."""
    from model import score

    files = check_files(pattern, root)
    if not files:
        raise AdapterError(f"No file matches {pattern} under {root}.")
    chunks = [encode_media(f, layout) for f in files]
    bits = sum(float(score(model, data).surprisal.sum(dtype=np.float64)) for data in chunks)
    size = sum(map(len, chunks))
    return {"bits": bits / size, "pattern": pattern, "files": len(files), "size": size}
