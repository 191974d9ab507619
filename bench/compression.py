"""Held-out bits per byte of each checkpoint next to classical compressors on the same bytes.

`python -m bench.compression` writes bench/results/compression.md: for English prose, prose
mixed with code, 32x32 crops of photos, music and speech, the bits per byte of the matching
checkpoint beside gzip -9, bzip2 -9, xz -9e, zstd -19, PNG and lossless WebP (per tile) and
FLAC (per file), the best of those yardsticks, and whether the model meets its target.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import json
import lzma
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import zstandard
from PIL import Image
from tqdm import tqdm

from adapters import AdapterError, Layout, audio, image
from adapters.checkpoints import load_for
from model import CheckpointError
from model import score
from model.hardware import machine_description

GENERAL = {
    "gzip -9": lambda data: gzip.compress(data, compresslevel=9, mtime=0),
    "bzip2 -9": lambda data: bz2.compress(data, compresslevel=9),
    "xz -9e": lambda data: lzma.compress(data, preset=9 | lzma.PRESET_EXTREME),
    "zstd -19": lambda data: zstandard.ZstdCompressor(level=19).compress(data),
}
COLUMNS = [*GENERAL, "PNG", "WebP lossless", "FLAC"]
# checkpoint name: (modality, data folder, [(split, row label, target)]); a target bounds the model's
# bits per byte as a fraction of the best yardstick's
BENCHES = {
    "text": ("text", "text", [("val_prose", "text: English prose", 0.65), ("val", "text: prose and code", None)]),
    "image": ("image", "image", [("val", "images: 32x32 photo crops", 0.85)]),
    "emoji": ("image", "emoji", [("test", "emoji: Twemoji and Noto, test split", 0.6),
                                 ("outside", "emoji: OpenMoji, a style never trained on", 0.6)]),
    "audio": ("audio", "audio", [("val_music", "audio: music", 0.85), ("val_speech", "audio: speech", 0.85)]),
    "melody": ("audio", "melody", [("test", "melody: test tunes, eight instruments", 0.6)]),
}
STRETCHES = 8  # a text or audio split longer than asked for is sampled as this many evenly spaced stretches
SEED = 0  # picks the subset of held-out images


class BenchError(Exception):
    """A missing or mismatched input; the message is one sentence."""


@dataclass
class HeldOut:
    """One row's bytes. The model scores each window on its own; each media codec stores each
    piece as its own file; the general compressors get all the pieces as one stream."""

    label: str
    used: str
    windows: list[bytes]
    pieces: list[bytes]
    codecs: dict[str, Callable[[bytes], bytes]]
    target: float | None


@dataclass
class Measured:
    """A row of the table: the model's and each yardstick's bits per byte."""

    held_out: HeldOut
    model: float
    yardsticks: dict[str, float]

    @property
    def best(self) -> str:
        return min(self.yardsticks, key=self.yardsticks.get)

    @property
    def ratio(self) -> float:
        return self.model / self.yardsticks[self.best]


def bits_per_byte(compress: Callable[[bytes], bytes], pieces: list[bytes]) -> float:
    """8 × compressed size / original size, each piece compressed on its own, headers included."""
    return 8 * sum(len(compress(piece)) for piece in pieces) / sum(len(piece) for piece in pieces)


def image_file(tile: bytes, side: int, **save_options) -> bytes:
    """A raster RGB tile saved as an image file (Pillow's format and options)."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), tile).save(buffer, **save_options)
    return buffer.getvalue()


def flac_file(mu_law: bytes, layout: Layout) -> bytes:
    """µ-law bytes decoded to 16-bit PCM and saved as FLAC at the layout's rate, level 8."""
    buffer = io.BytesIO()
    sf.write(buffer, audio.decode(mu_law, layout), layout.sample_rate, format="FLAC",
             subtype="PCM_16", compression_level=1.0)
    return buffer.getvalue()


def read_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    if not path.is_file():
        raise BenchError(f"{path} is missing: make the cache with `python -m training.data {folder.name}`.")
    return json.loads(path.read_text())


def read_split(folder: Path, split: str) -> bytes:
    path = folder / f"{split}.bin"
    if not path.is_file() or not path.stat().st_size:
        raise BenchError(f"{path} is missing or empty: make it with `python -m training.data {folder.name}`.")
    return path.read_bytes()


def evenly_spaced(data: bytes, file_starts: list[int], limit: int) -> tuple[list[bytes], list[bytes]]:
    """All of data if it fits in limit, else STRETCHES stretches of limit/STRETCHES bytes spread
    evenly from its start to its end; returned as windows, and as pieces cut where files start."""
    n = len(data)
    length = n if n <= limit else max(1, limit // STRETCHES)
    count = 1 if n <= limit else STRETCHES
    starts = [i * (n - length) // max(count - 1, 1) for i in range(count)]
    windows, pieces = [], []
    for start in starts:
        end = start + length
        cuts = [start, *(s for s in file_starts if start < s < end), end]
        windows.append(data[start:end])
        pieces += [data[a:b] for a, b in zip(cuts, cuts[1:])]
    return windows, pieces


def stream_rows(kind: str, folder: Path, splits, layout: Layout, limit: int) -> list[HeldOut]:
    """Text or audio rows: each split whole, or evenly spaced stretches of it."""
    manifest = read_manifest(folder)
    codecs = {}
    if kind == "audio":
        rate = manifest["layout"]["sample_rate"]
        if layout.sample_rate != rate:
            raise BenchError(f"The audio checkpoint works at {layout.sample_rate} Hz "
                             f"but {folder} holds {rate} Hz audio.")
        codecs["FLAC"] = partial(flac_file, layout=layout)
    rows = []
    for split, label, target in splits:
        data = read_split(folder, split)
        windows, pieces = evenly_spaced(data, [f["offset"] for f in manifest["files"][split]], limit)
        files = len(manifest["files"][split])
        if len(windows) == 1:
            used = f"all of {folder / split}.bin ({len(data):,} bytes, {files} files)"
        else:
            used = (f"{len(windows)} evenly spaced stretches of {len(windows[0]):,} bytes from {folder / split}.bin "
                    f"({len(data):,} bytes, {files} files)")
        if kind == "audio":
            used += f"; FLAC stores {len(pieces)} file segments"
        rows.append(HeldOut(label, used, windows, pieces, codecs, target))
    return rows


def image_rows(folder: Path, splits, layout: Layout, count: int) -> list[HeldOut]:
    """A row per split: a seeded random subset of its images."""
    manifest = read_manifest(folder)
    side, order = manifest["layout"]["image_size"], manifest["layout"]["image_order"]
    if order != "raster":
        raise BenchError(f"{folder} holds images in {order} order; the benchmark reads the raster-order cache.")
    if layout.image_size != side:
        raise BenchError(f"The image checkpoint works on {layout.image_size}x{layout.image_size} images "
                         f"but {folder} holds {side}x{side} crops.")
    size = 3 * side * side
    codecs = {
        "PNG": partial(image_file, side=side, format="PNG", optimize=True),
        "WebP lossless": partial(image_file, side=side, format="WEBP", lossless=True, quality=100, method=6),
    }
    rows = []
    for split, label, target in splits:
        data = read_split(folder, split)
        total = len(data) // size
        chosen = sorted(np.random.default_rng(SEED).choice(total, size=min(count, total), replace=False))
        tiles = [data[i * size : (i + 1) * size] for i in chosen]
        windows = [image.encode(Image.frombytes("RGB", (side, side), tile), layout) for tile in tiles]
        used = (f"{len(tiles)} of the {total:,} {side}x{side} images in {folder}/{split}.bin (seed {SEED}, "
                f"{len(tiles) * size:,} bytes); the model reads them in {layout.image_order} order")
        rows.append(HeldOut(label, used, windows, tiles, codecs, target))
    return rows


def model_bits_per_byte(model, windows: list[bytes], label: str) -> float:
    total = sum(len(w) for w in windows)
    bits = 0.0
    with tqdm(total=total, desc=f"{label}: model", unit="B", unit_scale=True) as bar:
        for window in windows:
            start = bar.n
            scores = score(model, window, progress=lambda done, _: bar.update(start + done - bar.n))
            bits += float(scores.surprisal.sum(dtype=np.float64))
    return bits / total


def measure(model, held_out: HeldOut) -> Measured:
    whole = [b"".join(held_out.pieces)]
    compressors = {**{name: (c, whole) for name, c in GENERAL.items()},
                   **{name: (c, held_out.pieces) for name, c in held_out.codecs.items()}}
    yardsticks = {name: bits_per_byte(c, pieces)
                  for name, (c, pieces) in tqdm(compressors.items(), desc=f"{held_out.label}: compressors")}
    return Measured(held_out, model_bits_per_byte(model, held_out.windows, held_out.label), yardsticks)


def describe(folder: Path, model) -> str:
    parameters = sum(p.numel() for p in model.parameters())
    return f"`{folder}`: {parameters / 1e6:.2f} M parameters, patch {model.patch_size}, context {model.context} bytes"


def table(rows: list[Measured]) -> str:
    header = ["held-out data", "bytes", "model", *COLUMNS, "best yardstick", "model / best", "target", "met"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        target = row.held_out.target
        cells = [row.held_out.label, f"{sum(map(len, row.held_out.pieces)):,}", f"**{row.model:.3f}**",
                 *(f"{row.yardsticks[c]:.3f}" if c in row.yardsticks else "–" for c in COLUMNS),
                 f"{row.yardsticks[row.best]:.3f} ({row.best})", f"{row.ratio:.2f}×",
                 f"≤ {target:.2f}×" if target else "–",
                 ("yes" if row.ratio <= target else "no") if target else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(rows: list[Measured], checkpoints: list[str], missing: list[str], command: str,
           started: datetime, seconds: float, device: torch.device) -> str:
    minutes, rest = divmod(round(seconds), 60)
    lines = [
        "# Held-out bits per byte: the checkpoints and classical compressors",
        "",
        f"Measured {started:%Y-%m-%d %H:%M} UTC in {minutes} min {rest} s by `{command}`",
        f"on {machine_description(device)}; {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}.",
        "",
        "Bits per byte (lower is better) on data that training never saw. The model's figure is its "
        "mean surprisal, -log2 p(byte | the bytes before it): what an arithmetic coder driven by the model "
        "would need, headers aside. *Best yardstick* is the smallest of the classical figures in the row; "
        "*model / best* is the model's figure divided by it, and the targets bound that ratio.",
        "",
        table(rows),
        "",
        "## What was measured",
        "",
        *(f"- Checkpoint {c}." for c in checkpoints),
        *(f"- No checkpoint at `{m}`: its rows are missing." for m in missing),
        *(f"- {row.held_out.label}: {row.held_out.used}." for row in rows),
        "- The model: `model.score`, each window above on its own (each image alone, as it was trained); "
        "inputs longer than the model's context are scored in windows that overlap by half, so every byte "
        "after the first window is predicted from at least half a context.",
        "- gzip -9, bzip2 -9, xz -9e and zstd -19 (Python's gzip, bz2 and lzma, the zstandard package) "
        "compress all of a row's bytes as one stream: for images, the raw pixels of every tile concatenated "
        "in raster order, an advantage over storing each tile on its own; for audio, the µ-law bytes.",
        "- PNG (Pillow, optimize) and lossless WebP (Pillow, quality 100, method 6) store each tile as its "
        "own file, headers included, as the images are stored.",
        "- FLAC (libsndfile, compression level 8) stores each file segment as its own file at the same "
        "rate, with the µ-law bytes decoded to 16-bit PCM; its bits are counted per µ-law byte (per sample).",
        "- Targets: text ≤ 0.65 × the best yardstick on English prose; images ≤ 0.85 × the best of PNG, WebP "
        "and the general compressors on the raw pixels; audio ≤ 0.85 × the best of FLAC and the general "
        "compressors on the µ-law bytes; emoji (32x32 on white) and melodies ≤ 0.6 × their best yardstick. "
        "Prose mixed with code has no target.",
        "- Emoji and melodies are each checkpoint's test split, which nothing was tuned on; the OpenMoji row "
        "is a style of emoji that training never saw.",
    ]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compression",
        description="Held-out bits per byte of the text, image and audio checkpoints next to gzip, bzip2, xz, "
                    "zstd, PNG, WebP and FLAC on the same bytes, written as a Markdown table.")
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"),
                        help="folder with text/, image/ and audio/ checkpoints (default: checkpoints)")
    parser.add_argument("--data", type=Path, default=Path("data"),
                        help="data root made by `python -m training.data` (default: data)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/compression.md"),
                        help="the Markdown file to write (default: bench/results/compression.md)")
    parser.add_argument("--text-bytes", type=int, default=1_500_000,
                        help="bytes of each text split to use; all of a smaller split (default: 1500000)")
    parser.add_argument("--images", type=int, default=400, help="held-out images to use (default: 400)")
    parser.add_argument("--audio-bytes", type=int, default=800_000,
                        help="bytes (samples) of each audio split to use (default: 800000)")
    parser.add_argument("--limit-bytes", type=int, default=None,
                        help="cap every held-out set at this many bytes, for a quick run")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="CPU threads for the model (default: all cores; 1 is faster while other jobs "
                             "share the cores)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    limit = args.limit_bytes or sys.maxsize  # an int: float("inf") // n is nan
    if min(args.text_bytes, args.images, args.audio_bytes, limit, args.threads) <= 0:
        sys.exit("bench.compression: the sizes of the held-out sets and --threads must be positive.")
    torch.set_num_threads(args.threads)
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows, checkpoints, missing = [], [], []
    try:
        for name, (kind, data_name, splits) in BENCHES.items():
            folder = args.checkpoints / name
            if not folder.is_dir():
                print(f"No checkpoint at {folder}: skipping {name}.", file=sys.stderr)
                missing.append(str(folder))
                continue
            model, layout = load_for(kind, folder)
            checkpoints.append(describe(folder, model))
            if kind == "image":
                count = min(args.images, max(1, limit // layout.bytes_per_image))
                held_out = image_rows(args.data / data_name, splits, layout, count)
            else:
                size = args.text_bytes if kind == "text" else args.audio_bytes
                held_out = stream_rows(kind, args.data / data_name, splits, layout, min(size, limit))
            for row in held_out:
                print(f"{row.label}: {row.used}", file=sys.stderr)
                rows.append(measure(model, row))
    except (BenchError, CheckpointError, AdapterError) as e:
        sys.exit(f"bench.compression: {e}")
    if not rows:
        sys.exit(f"bench.compression: there is no text, image or audio checkpoint in {args.checkpoints}.")
    command = " ".join(["python -m bench.compression", *(argv if argv is not None else sys.argv[1:])])
    text = report(rows, checkpoints, missing, command, started, time.perf_counter() - clock, device)
    write_atomically(args.out, text)
    print(table(rows))
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
