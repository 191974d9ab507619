"""What the web app and the command line both do: load checkpoints, score, generate.

Every error a user can cause comes out as UserError with one sentence.
"""

from __future__ import annotations

import gzip
import lzma
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

import adapters
from adapters import AdapterError, Layout
from model import CheckpointError, Sampling, Scores, generate_stream, load_checkpoint, score

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = ROOT / "checkpoints"
MODALITIES = ("text", "image", "audio", "bytes")


class UserError(ValueError):
    """Something the user asked for that cannot be done; the message is one sentence."""


def default_checkpoint(modality: str) -> Path:
    """The shipped checkpoint for a modality (raw bytes are scored by the text model)."""
    if modality not in MODALITIES:
        raise UserError(f"Unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}.")
    return CHECKPOINTS / ("text" if modality == "bytes" else modality)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@lru_cache(maxsize=8)
def _load(folder: str):
    model, layout = load_checkpoint(folder, device())
    return model, Layout.from_dict(layout)


def sampling(temperature: float, top_k: int, top_p: float = 1.0) -> Sampling:
    try:
        return Sampling(float(temperature), int(top_k), float(top_p))
    except (ValueError, TypeError) as e:
        raise UserError(str(e)[:1].upper() + str(e)[1:]) from None


@dataclass
class ScoreResult:
    data: bytes
    scores: Scores
    seconds: float

    @property
    def bits_per_byte(self) -> float:
        return self.scores.bits_per_byte

    def compressor_bits_per_byte(self) -> dict[str, float]:
        """What gzip -9 and xz -9e need for the same bytes, in bits per byte."""
        n = max(1, len(self.data))
        return {
            "gzip -9": 8 * len(gzip.compress(self.data, 9)) / n,
            "xz -9e": 8 * len(lzma.compress(self.data, preset=9 | lzma.PRESET_EXTREME)) / n,
        }


def score_bytes(model, data: bytes, progress=None) -> ScoreResult:
    if not data:
        raise UserError("There is nothing to score: the input is empty.")
    start = time.perf_counter()
    scores = score(model, data, top=5, progress=progress)
    return ScoreResult(data, scores, time.perf_counter() - start)


def encode_file(source, layout: Layout, max_audio_seconds: float | None = None) -> bytes:
    """A media file (path, bytes or file object) as the bytes the layout describes."""
    try:
        if layout.modality == "image":
            return adapters.image.encode(adapters.image.load(source, layout), layout)
        if layout.modality == "audio":
            return adapters.audio.encode(adapters.audio.load(source, layout, max_audio_seconds), layout)
        data = adapters.text.read(source) if isinstance(source, (str, Path)) else bytes(source)
        if not data:
            raise UserError("The file is empty.")
        return data
    except AdapterError as e:
        raise UserError(str(e)) from None


def continue_bytes(model, prompt: bytes, new_bytes: int, samples: int, how: Sampling, seed: int = 0):
    """Yields the new bytes (samples, m) as they are made."""
    if new_bytes < 1:
        raise UserError("Ask for at least one new byte.")
    if not 1 <= samples <= 8:
        raise UserError("The number of samples must be between 1 and 8.")
    yield from generate_stream(model, prompt, new_bytes, samples, how, seed)


def collect(stream) -> list[bytes]:
    parts = list(stream)
    return [row.tobytes() for row in np.concatenate(parts, axis=1)] if parts else []


def load(checkpoint: str | Path) -> tuple[torch.nn.Module, Layout]:
    """A checkpoint's model and layout, loaded once per process."""
    try:
        return _load(str(Path(checkpoint).resolve()))
    except (CheckpointError, AdapterError) as e:
        raise UserError(str(e)) from None


def load_for(modality: str, checkpoint: str | Path) -> tuple[torch.nn.Module, Layout]:
    """A checkpoint's model and layout, refused unless it was trained on `modality`'s bytes."""
    model, layout = load(checkpoint)
    try:
        adapters.checkpoints.check_fits(layout, modality, checkpoint)
    except AdapterError as e:
        raise UserError(str(e)) from None
    return model, layout
