"""Held-out bits per byte of each checkpoint next to classical compressors on the same bytes.

`python -m bench.compression` writes bench/results/compression.md: for English prose, prose
mixed with code, 32x32 crops of photos, music and speech, the bits per byte of the matching
checkpoint beside gzip -9, bzip2 -9, xz -9e, zstd -19, PNG and lossless WebP (per tile) and
FLAC (per file), the best of those yardsticks, and whether the model meets its target. Then, for
each row: the real .mbz files that `model.compress` makes of the row's first bytes beside the
model's estimate and xz; the mean bits per byte at each position inside the patch (also drawn,
as positions.png next to the results); and where BLT's entropy patcher would cut.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import zstandard
from matplotlib.figure import Figure  # without pyplot: no GUI backend, PNGs are drawn by Agg
from PIL import Image
from tqdm import tqdm

from adapters import AdapterError, Layout, audio, image
from adapters.checkpoints import load_for
from bench.mbz import Coded, code_files, xz
from model import CheckpointError, Scores
from model import score
from model.score import strided_score
from model.compress import MAX_SEGMENTS, ROW_BYTES, checkpoint_sha256
from model.hardware import machine_description
from model.patches import entropy_boundaries, patch_sizes, threshold_for_mean_size

GENERAL = {
    "gzip -9": lambda data: gzip.compress(data, compresslevel=9, mtime=0),
    "bzip2 -9": lambda data: bz2.compress(data, compresslevel=9),
    "xz -9e": xz,
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
MBZ_BYTES = 1 << 18  # each row's first bytes coded as real .mbz files: compressing costs 4-10x scoring
JUMP = 2.0  # bits: BLT's relative threshold, a patch starts where the entropy rises by more


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
    """A row of the table: the model's and each yardstick's bits per byte; the model's scores of
    each window, and the .mbz files of the row's first bytes (None when none were coded)."""

    held_out: HeldOut
    model: float
    yardsticks: dict[str, float]
    patch_size: int = 1
    scores: list[Scores] = field(default_factory=list)
    coded: Coded | None = None
    strided: float | None = None  # bits per byte of the coded share with the paper's strided inference

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


def model_scores(model, windows: list[bytes], label: str) -> list[Scores]:
    """score() of each window on its own."""
    scores = []
    with tqdm(total=sum(len(w) for w in windows), desc=f"{label}: model", unit="B", unit_scale=True) as bar:
        for window in windows:
            start = bar.n
            scores.append(score(model, window, progress=lambda done, _: bar.update(start + done - bar.n)))
    return scores


def first_bytes(windows: list[bytes], limit: int) -> list[bytes]:
    """The windows in order, the last one cut, `limit` bytes in all (or all of them)."""
    share = []
    for window in windows:
        if limit <= 0:
            break
        share.append(window[:limit])
        limit -= len(share[-1])
    return share


def measure(model, held_out: HeldOut, mbz_bytes: int = 0, recorded: dict | None = None) -> Measured:
    """The row's figures; its first `mbz_bytes` bytes also coded as .mbz files with the header
    fields `recorded` (checkpoint_sha256, layout, checkpoint) that the command line writes."""
    whole = [b"".join(held_out.pieces)]
    compressors = {**{name: (c, whole) for name, c in GENERAL.items()},
                   **{name: (c, held_out.pieces) for name, c in held_out.codecs.items()}}
    yardsticks = {name: bits_per_byte(c, pieces)
                  for name, (c, pieces) in tqdm(compressors.items(), desc=f"{held_out.label}: compressors")}
    scores = model_scores(model, held_out.windows, held_out.label)
    bits = sum(float(s.surprisal.sum(dtype=np.float64)) for s in scores)
    share = first_bytes(held_out.windows, mbz_bytes)
    # a window's first bytes get the scores they get in the whole window: score() is causal
    coded = code_files(model, share, [s.surprisal[: len(w)] for s, w in zip(scores, share)], **(recorded or {}),
                       desc=f"{held_out.label}: .mbz") if share else None
    strided = (sum(float(strided_score(model, w).surprisal.sum(dtype=np.float64)) for w in share)
               / sum(map(len, share))) if share else None
    total = sum(map(len, held_out.windows))
    return Measured(held_out, bits / total, yardsticks, model.patch_size, scores, coded, strided)


def position_means(surprisal: list[np.ndarray], patch_size: int) -> np.ndarray:
    """Mean bits per byte at each position 0..P-1 inside the patch; every window starts a patch."""
    sums, counts = np.zeros(patch_size), np.zeros(patch_size)
    for bits in surprisal:
        positions = np.arange(len(bits)) % patch_size
        sums += np.bincount(positions, weights=np.asarray(bits, np.float64), minlength=patch_size)
        counts += np.bincount(positions, minlength=patch_size)
    return sums / np.maximum(counts, 1)


@dataclass
class EntropyPatches:
    """Where BLT's entropy patcher would cut a row's windows, beside MegaByte's fixed patches."""

    fixed: int  # patches of P bytes (the last of a window may be shorter)
    threshold: float  # bits: the global threshold whose patches average about P bytes
    global_sizes: np.ndarray  # patch sizes with that threshold
    jump_sizes: np.ndarray  # patch sizes with the relative threshold alone


def entropy_patches(entropy: list[np.ndarray], patch_size: int, jump: float = JUMP) -> EntropyPatches:
    """Each window cut on its own, as each is scored on its own; one global threshold for the row."""
    threshold = threshold_for_mean_size(np.concatenate(entropy), patch_size)

    def sizes(**cut) -> np.ndarray:
        return np.concatenate([patch_sizes(entropy_boundaries(e, **cut), len(e)) for e in entropy])

    return EntropyPatches(sum(-(-len(e) // patch_size) for e in entropy), threshold,
                          sizes(threshold=threshold), sizes(jump=jump))


def describe(folder: Path, model) -> str:
    parameters = sum(p.numel() for p in model.parameters())
    return f"`{folder}`: {parameters / 1e6:.2f} M parameters, patch {model.patch_size}, context {model.context} bytes"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def table(rows: list[Measured]) -> str:
    header = ["held-out data", "bytes", "model", *COLUMNS, "best yardstick", "model / best", "target", "met"]
    cells = []
    for row in rows:
        target = row.held_out.target
        cells.append([row.held_out.label, f"{sum(map(len, row.held_out.pieces)):,}", f"**{row.model:.3f}**",
                      *(f"{row.yardsticks[c]:.3f}" if c in row.yardsticks else "–" for c in COLUMNS),
                      f"{row.yardsticks[row.best]:.3f} ({row.best})", f"{row.ratio:.2f}×",
                      f"≤ {target:.2f}×" if target else "–",
                      ("yes" if row.ratio <= target else "no") if target else "–"])
    return markdown_table(header, cells)


def mbz_table(rows: list[Measured]) -> str:
    """Bytes, and in brackets bits per byte, of the coded share of each row."""
    header = ["held-out data", "coded bytes", ".mbz files", "model estimate", ".mbz", "of which headers",
              "payload − estimate", "xz -9e", ".mbz / xz"]
    cells = []
    for row in rows:
        if (coded := row.coded) is None:
            continue
        sized = [f"{size:,.0f} ({8 * size / coded.original:.3f})" for size in (coded.estimate, coded.mbz, coded.xz)]
        excess = f"{coded.mbz - coded.headers - coded.estimate:+,.0f} ({100 * coded.payload_over_estimate:+.2f}%)"
        cells.append([row.held_out.label, f"{coded.original:,}", f"{coded.files:,}", *sized[:2], f"{coded.headers:,}",
                      excess, sized[2], f"{coded.mbz / coded.xz:.2f}×"])
    return markdown_table(header, cells)


def positions_table(rows: list[Measured]) -> str:
    """Mean bits per byte at each position inside the patch, one row per held-out set."""
    width = max(row.patch_size for row in rows)
    header = ["held-out data", "P", *map(str, range(width)), "0 / the rest", "strided / plain"]
    cells = []
    for row in rows:
        means = position_means([s.surprisal for s in row.scores], row.patch_size)
        rest = float(np.mean(means[1:])) if row.patch_size > 1 else float("nan")
        plain = 8 * row.coded.estimate / row.coded.original if row.coded else 0
        strided = f"{row.strided / plain:.3f}×" if row.strided and plain else "–"
        cells.append([row.held_out.label, str(row.patch_size), *(f"{m:.2f}" for m in means),
                      *["–"] * (width - row.patch_size), f"{means[0] / rest:.2f}×", strided])
    return markdown_table(header, cells)


def positions_chart(rows: list[Measured], out: Path):
    """positions_table's figures as one line per held-out set."""
    fig = Figure(figsize=(9, 5))
    ax = fig.subplots()
    for row in rows:
        means = position_means([s.surprisal for s in row.scores], row.patch_size)
        ax.plot(range(row.patch_size), means, marker="o", label=f"{row.held_out.label} (P={row.patch_size})")
    ax.set_xlabel("position inside the patch (0: predicted from the global model alone)")
    ax.set_ylabel("mean bits per byte")
    ax.set_ylim(bottom=0)
    ax.set_title("Held-out bits per byte by position inside the patch")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, dpi=100, format="png")
    os.replace(tmp, out)


def entropy_table(rows: list[Measured], jump: float = JUMP) -> str:
    header = ["held-out data", "P", "fixed patches", "global threshold", "patches", "median size",
              "90th percentile", "largest", "1-byte patches", f"jump > {jump:g} bits: patches", "mean size"]
    cells = []
    for row in rows:
        cut = entropy_patches([s.entropy for s in row.scores], row.patch_size, jump)
        sizes, jumps = cut.global_sizes, cut.jump_sizes
        cells.append([row.held_out.label, str(row.patch_size), f"{cut.fixed:,}", f"{cut.threshold:.2f} bits",
                      f"{len(sizes):,}", f"{np.median(sizes):g}", f"{np.percentile(sizes, 90):g}", f"{sizes.max():,}",
                      f"{np.mean(sizes == 1):.0%}", f"{len(jumps):,}", f"{jumps.mean():.1f}"])
    return markdown_table(header, cells)


def report(rows: list[Measured], checkpoints: list[str], missing: list[str], command: str,
           started: datetime, seconds: float, device: torch.device, mbz_bytes: int, chart: str) -> str:
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
        "",
        *(mbz_section(rows, mbz_bytes) if any(row.coded for row in rows) else []),
        "## Bits per byte by position inside the patch",
        "",
        "The model's mean surprisal at each position 0..P-1 inside a patch, over all of each row's bytes "
        "(every window starts a patch). MegaByte predicts position 0 from the global model alone (the local "
        "model has seen no byte of the patch yet); the later positions also read the patch's earlier bytes. "
        f"*0 / the rest* divides position 0's mean by the mean of the other positions. Drawn in `{chart}`. "
        "*strided / plain*: the paper's strided inference (`model.score.strided_score`: scored twice, the "
        "second time with the patch boundaries moved by P/2, each byte taken where it sits in the second half "
        "of a patch; twice the cost) against plain scoring, on the bytes the .mbz section codes.",
        "",
        positions_table(rows),
        "",
        "## Where an entropy patcher would cut",
        "",
        "BLT (Pagnoni et al. 2024) starts a new patch where the next-byte entropy is high; here that entropy "
        "is the model's own (`score`'s per-byte entropy; `model.patches`), each window cut on its own. *Global "
        "threshold*: one per row, the entropy that one byte in P exceeds, so its patches average about P bytes "
        "and the global model would run about as often as with MegaByte's *fixed patches*; the sizes of those "
        f"patches follow. *Jump > {JUMP:g} bits*: BLT's relative rule alone, a patch starts where the entropy "
        f"rises by more than {JUMP:g} bits over the byte before.",
        "",
        entropy_table(rows),
    ]
    return "\n".join(lines) + "\n"


def mbz_section(rows: list[Measured], mbz_bytes: int) -> list[str]:
    return [
        f"## Real .mbz files: the first {mbz_bytes:,} bytes of each row",
        "",
        "Compressing costs four to ten times as much as scoring (the encoder runs the model a patch at a time, "
        f"on one thread), so each row codes only its first {mbz_bytes:,} bytes: its windows above in order (the "
        "first stretches, or the first images), the last one cut, each window as its own .mbz file, made by "
        "`model.compress.compress` with the header `python -m app.cli compress` writes (the checkpoint's "
        "sha256 and name, the layout). The decoder is not run here (`tests/test_compress.py` checks that it "
        "gives the bytes back). Bytes, and in brackets bits per byte: *model estimate* is `score`'s surprisal "
        "of the same bytes summed (the model column above, on these bytes alone); *.mbz* is the files' size; "
        "*of which headers* is the container's magic, version and JSON header; *payload − estimate* is what "
        "the range coder's payloads (.mbz less headers) spend beyond the estimate, in bytes and as a share of "
        "it. The README puts a .mbz at the estimate plus its header and the coder's 8-byte flush (in the "
        "payload: 8 bytes a file); the claim checked here is within 0.5% plus the header. .mbz codes an input of "
        f"{2 * ROW_BYTES // 1024} KiB or more in up to {MAX_SEGMENTS} segments side by side, each starting without "
        "context, where `score` has context; that costs a little. *xz -9e* compresses the same files, each "
        "on its own.",
        "",
        mbz_table(rows),
        "",
    ]


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
    parser.add_argument("--mbz-bytes", type=int, default=MBZ_BYTES,
                        help=f"bytes of each held-out set to code as real .mbz files, from its start; 0 codes none "
                             f"(default: {MBZ_BYTES}; compressing costs 4-10 times scoring)")
    parser.add_argument("--limit-bytes", type=int, default=None,
                        help="cap every held-out set, and the share coded as .mbz, at this many bytes, for a quick run")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="CPU threads for the model (default: all cores; 1 is faster while other jobs "
                             "share the cores)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    limit = args.limit_bytes or sys.maxsize  # an int: float("inf") // n is nan
    if min(args.text_bytes, args.images, args.audio_bytes, limit, args.threads) <= 0 or args.mbz_bytes < 0:
        sys.exit("bench.compression: the sizes of the held-out sets and --threads must be positive "
                 "and --mbz-bytes at least 0.")
    mbz_bytes = min(args.mbz_bytes, limit)
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
            recorded = {"checkpoint_sha256": checkpoint_sha256(folder), "layout": layout.to_dict(),
                        "checkpoint": folder.name}
            if kind == "image":
                count = min(args.images, max(1, limit // layout.bytes_per_image))
                held_out = image_rows(args.data / data_name, splits, layout, count)
            else:
                size = args.text_bytes if kind == "text" else args.audio_bytes
                held_out = stream_rows(kind, args.data / data_name, splits, layout, min(size, limit))
            for row in held_out:
                print(f"{row.label}: {row.used}", file=sys.stderr)
                rows.append(measure(model, row, mbz_bytes, recorded))
    except (BenchError, CheckpointError, AdapterError) as e:
        sys.exit(f"bench.compression: {e}")
    if not rows:
        sys.exit(f"bench.compression: there is no text, image or audio checkpoint in {args.checkpoints}.")
    command = " ".join(["python -m bench.compression", *(argv if argv is not None else sys.argv[1:])])
    chart = args.out.with_name("positions.png")
    positions_chart(rows, chart)
    text = report(rows, checkpoints, missing, command, started, time.perf_counter() - clock, device, mbz_bytes,
                  chart.name)
    write_atomically(args.out, text)
    print(table(rows), *([mbz_table(rows)] if mbz_bytes else []), positions_table(rows), entropy_table(rows),
          sep="\n\n")
    print(f"Wrote {args.out} and {chart}")


if __name__ == "__main__":
    main()
