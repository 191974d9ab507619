"""Bits per byte by position in the context: `python -m bench.context`.

Is the long context used? Each held-out document is scored whole, by the short checkpoint
(checkpoints/melody, 4,096 bytes of context; checkpoints/text, 2,048) and by the long one
(checkpoints/melody_long, 131,072 bytes; checkpoints/text_long, 65,536), each with its whole
context (`model.score` slides by half of it beyond that). A byte's position is the number of
bytes before it in its document; positions are binned by powers of 2 from 1 up to the long
context, with a last bin for the positions beyond it. Beside the models, xz given the same
history: the bits for the chunk [a, b) of a document are 8 × (size of xz(doc[:b]) − size of
xz(doc[:a])). Data: the melody test tunes (data/melody) and held-out whole documents of long
text (data/text_long). Writes bench/results/context.md, with the issue's target ratios, and the
figure context.png beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure  # without pyplot: no GUI backend, PNGs are drawn by Agg
from tqdm import tqdm

from adapters import AdapterError
from adapters.checkpoints import load_for
from bench.compression import BenchError, markdown_table, write_atomically
from bench.mbz import xz
from bench.provenance import measured_line
from model import CheckpointError, score
from model.hardware import bf16_faster
from model.recall import mixed_surprisal

TEXT_SOURCES = "bible,shakespeare,milton,debian-reference,debian-policy,developers-reference,gnu-standards"


@dataclass(frozen=True)
class Dataset:
    folder: str  # under --data
    split: str
    what: str
    modality: str
    short: str  # the short checkpoint, under --checkpoints
    long: str  # the long checkpoint's default, under --checkpoints
    make: str  # the command that makes the data


DATASETS = {
    "melody": Dataset("melody", "test", "melody test tunes", "audio", "melody", "melody_long",
                      "python -m training.data melody"),
    "text": Dataset("text_long", "val", "held-out long documents", "text", "text", "text_long",
                    f"python -m training.data text --out data/text_long --sources {TEXT_SOURCES}"),
}
MODELS = ("short", "long")
RECALLED = " + recall"  # a model's column with its recall (model.recall) mixed in, where its config has it
XZ_DRAWN_FROM = 64  # xz's output is whole bytes after a fixed overhead: the figure draws it from here on
QUICK_DOCUMENTS = 3  # --quick: the longest few documents of each dataset,
QUICK_BYTES = 1 << 17  # each cut to its first 128 KiB: the long melody context, twice the long text one


@dataclass
class Measured:
    """One dataset's documents, measured: the bits each column spends in each position bin,
    and each model's bits for every byte (for the target ratios)."""

    name: str
    used: str  # which documents, in words
    contexts: dict[str, int]  # "short"/"long" -> the checkpoint's context in bytes
    edges: list[int]  # bin i holds positions edges[i] .. edges[i + 1] - 1
    counts: np.ndarray  # bytes in each bin, over all documents
    bits: dict[str, np.ndarray]  # column -> bits in each bin, over all documents
    surprisal: dict[str, list[np.ndarray]]  # "short"/"long" (+ RECALLED) -> each document's per-byte bits
    xz_whole: float  # bits of xz on each whole document on its own, headers included, summed

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def columns(self) -> list[str]:
        return [*self.surprisal, "xz -9e"]

    def shipped(self, model: str) -> str:
        """The column of a checkpoint as it predicts in the app: with its recall, where it has one."""
        return model + RECALLED if model + RECALLED in self.surprisal else model

    def label(self, column: str) -> str:
        model = column.removesuffix(RECALLED)
        return f"{model} ({self.contexts[model]:,}){column[len(model):]}" if model in self.contexts else column


def bin_edges(context: int, longest: int) -> list[int]:
    """0, 1, 2, 4, ... up to the context (or up to the longest document where that is shorter),
    then the longest document's end where it goes beyond the context."""
    top = min(context, longest)
    edges = [0, *(1 << k for k in range(top.bit_length()) if 1 << k < top), top]
    return edges + [longest] if longest > context else edges


def clipped(edges: list[int], length: int) -> np.ndarray:
    return np.minimum(edges, length)


def model_bits_before(surprisal: np.ndarray, edges: list[int]) -> np.ndarray:
    """The model's bits for the document's bytes before each edge."""
    before = np.concatenate([[0.0], np.cumsum(surprisal, dtype=np.float64)])
    return before[clipped(edges, len(surprisal))]


def xz_bits_before(document: bytes, edges: list[int]) -> np.ndarray:
    """8 × the size of xz of the document's bytes before each edge: the difference between two
    edges is what xz spends on that chunk given all the bytes before it."""
    ends = clipped(edges, len(document))
    sizes = {end: 8 * len(xz(document[:end])) for end in set(ends.tolist())}  # edges past the end repeat
    return np.array([sizes[end] for end in ends], np.float64)


def bits_per_byte_between(surprisal: list[np.ndarray], start: int, end: int | None = None) -> float:
    """Mean bits of the bytes at positions start .. end - 1 of every document (nan if none)."""
    chunks = [s[start:end] for s in surprisal]
    count = sum(map(len, chunks))
    return sum(float(c.sum(dtype=np.float64)) for c in chunks) / count if count else float("nan")


def read_documents(data: Path, dataset: Dataset, count: int | None, limit: int | None) -> tuple[list[bytes], str]:
    """The split's documents (the `count` longest, each cut to its first `limit` bytes, where
    asked), and which they are in words."""
    folder = data / dataset.folder
    manifest, path = folder / "manifest.json", folder / f"{dataset.split}.bin"
    if not manifest.is_file() or not path.is_file():
        raise BenchError(f"{path} or its manifest is missing: make them with `{dataset.make}`.")
    rows = json.loads(manifest.read_text())["files"][dataset.split]
    chosen = sorted(rows, key=lambda row: -row["bytes"])[:count] if count else rows
    data = path.read_bytes()
    documents = [data[row["offset"] : row["offset"] + row["bytes"]][:limit] for row in chosen]
    used = f"{len(documents)} {'longest ' if count else ''}of the {len(rows)} {dataset.what} in `{path}`"
    if limit:
        used += f", each cut to its first {limit:,} bytes"
    return documents, f"{used} ({sum(map(len, documents)):,} bytes)"


def scored(model, documents: list[bytes], label: str, bf16: bool) -> list[np.ndarray]:
    """score() of each document whole by the neural model alone, with the checkpoint's whole
    context, a window at a time: a 131,072-byte window's logits alone take 0.5 GB, and on a CPU
    four at a time were slower, not faster."""
    surprisal = []
    with tqdm(total=sum(map(len, documents)), desc=label, unit="B", unit_scale=True) as bar:
        for document in documents:
            start = bar.n
            surprisal.append(score(model, document, batch=1, bf16=bf16, recall=False,
                                   progress=lambda done, _: bar.update(start + done - bar.n)).surprisal)
    return surprisal


def measure(name: str, used: str, documents: list[bytes], models: dict, bf16: bool = False) -> Measured:
    """Every column's bits in each position bin of the long model's context, over `documents`;
    models: "short"/"long" -> model."""
    edges = bin_edges(models["long"].context, max(map(len, documents)))
    surprisal = {}
    for key, model in models.items():
        surprisal[key] = scored(model, documents, f"{name}: {key} model", bf16)
        if orders := model.config.recall:  # the same scores with recall mixed in, as the app predicts
            surprisal[key + RECALLED] = [mixed_surprisal(s, d, orders)
                                         for s, d in zip(surprisal[key], documents)]
    before = {key: [model_bits_before(s, edges) for s in per_document] for key, per_document in surprisal.items()}
    before["xz -9e"] = [xz_bits_before(d, edges) for d in tqdm(documents, desc=f"{name}: xz with history")]
    counts = sum(np.diff(clipped(edges, len(d))) for d in documents)
    bits = {column: sum(np.diff(b) for b in per_document) for column, per_document in before.items()}
    xz_whole = sum(float(b[-1]) for b in before["xz -9e"])  # the last edge is each document's end
    return Measured(name, used, {key: model.context for key, model in models.items()}, edges, counts, bits,
                    surprisal, xz_whole)


def bin_label(start: int, end: int) -> str:
    return f"{start:,}" if end - start == 1 else f"{start:,}–{end - 1:,}"


def table(measured: Measured) -> str:
    """Rows: the position bins, then all positions; columns: bits per byte of each model and xz."""
    header = ["position (bytes before)", "bytes", *map(measured.label, measured.columns)]
    cells = []
    for i, (start, end) in enumerate(zip(measured.edges, measured.edges[1:])):
        label = bin_label(start, end) + (" (beyond the long context)" if start >= measured.contexts["long"] else "")
        cells.append([label, f"{measured.counts[i]:,}",
                      *(f"{measured.bits[c][i] / measured.counts[i]:.3f}" for c in measured.columns)])
    cells.append(["all", f"{measured.total:,}",
                  *(f"**{measured.bits[c].sum() / measured.total:.3f}**" for c in measured.columns)])
    return markdown_table(header, cells)


def target_row(what: str, measured: float, against: float, target: float, stretch: float | None = None) -> list[str]:
    ratio = measured / against
    goal = f"≤ {target:.2f}×" + (f" (stretch {stretch:.2f}×)" if stretch else "")
    if np.isnan(ratio):
        return [what, "– (no bytes there)", goal, "–"]
    return [what, f"{ratio:.3f}× ({measured:.3f} / {against:.3f} bits per byte)", goal,
            "yes" if ratio <= target else "no"]


def targets_table(results: dict[str, Measured]) -> str:
    """The issue's targets that this benchmark measures, each beside its measured ratio: for the
    long checkpoint as the app predicts (with recall where it has it), then for its neural model
    alone where that differs."""
    rows = []
    if melody := results.get("melody"):
        for key in dict.fromkeys([melody.shipped("long"), "long"]):
            short_key = melody.shipped("short") if key.endswith(RECALLED) else "short"
            long, short = melody.surprisal[key], melody.surprisal[short_key]
            named = melody.label(key)
            rows += [
                target_row(f"melody test tunes scored whole: {named} / xz on each whole tune",
                           bits_per_byte_between(long, 0), melody.xz_whole / melody.total, 1.0, 0.6),
                target_row(f"melody: {named} / {melody.label(short_key)} on the same whole tunes",
                           bits_per_byte_between(long, 0), bits_per_byte_between(short, 0), 0.75),
                target_row(f"melody, {named}: bits per byte after position 8,192 / before 4,096",
                           bits_per_byte_between(long, 8192), bits_per_byte_between(long, 0, 4096), 0.8),
            ]
    if text := results.get("text"):
        for key in dict.fromkeys([text.shipped("long"), "long"]):
            long = text.surprisal[key]
            rows.append(target_row(f"long text, {text.label(key)}: bits per byte after position 8,192 / before 2,048",
                                   bits_per_byte_between(long, 8192), bits_per_byte_between(long, 0, 2048), 0.95))
    return markdown_table(["what", "measured", "target", "met"], rows)


def chart(results: dict[str, Measured], out: Path):
    """Bits per byte against position in the context, one panel per dataset, as in the paper."""
    fig = Figure(figsize=(max(7.0, 6.5 * len(results)), 5))
    for ax, measured in zip(fig.subplots(1, len(results), squeeze=False)[0], results.values()):
        middles = np.array([(start + end) / 2 for start, end in zip(measured.edges, measured.edges[1:])])
        per_byte = {column: measured.bits[column] / measured.counts for column in measured.columns}
        models = measured.columns[:-1]
        for key, style in zip(models, ("o-", "s-", "o--", "s--")):
            ax.plot(middles, per_byte[key], style, label=measured.label(key).replace(")", "-byte context)"))
        drawn = np.array(measured.edges[:-1]) >= XZ_DRAWN_FROM
        ax.plot(middles[drawn], per_byte["xz -9e"][drawn], "^--", label=f"xz -9e, same history (from {XZ_DRAWN_FROM})")
        for key in MODELS:
            ax.axvline(measured.contexts[key], color="grey", linestyle=":", linewidth=1)
            ax.annotate(f"{key} context", (measured.contexts[key], 0.02), xycoords=("data", "axes fraction"),
                        rotation=90, ha="right", va="bottom", fontsize=8, color="grey")
        top = max(*(per_byte[key].max() for key in models), per_byte["xz -9e"][drawn].max(initial=0))
        ax.set_ylim(0, max(9.0, 1.05 * top))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("position in the document (bytes before the byte), log scale")
        ax.set_ylabel("bits per byte")
        ax.set_title(f"{measured.name}: {DATASETS[measured.name].what}", fontsize=11)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle("Held-out bits per byte by position in the context")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def report(results: dict[str, Measured], checkpoints: list[str], missing: list[str], machine: str,
           figure: str, bf16: bool) -> str:
    lines = [
        "# Bits per byte by position in the context: short and long checkpoints, and xz",
        "",
        machine,
        "",
        "Each held-out document is scored whole by the short checkpoint and by the long one, each with its whole "
        "context; beyond it, `model.score` slides by half a context, so a byte there is predicted from at least "
        "half a context. A byte's position is the number of bytes before it in its document. *xz -9e* is xz "
        "given the same history: the bits for the bytes [a, b) of a document are 8 × (size of xz(doc[:b]) − "
        "size of xz(doc[:a])), lzma preset 9 | PRESET_EXTREME. Its first bin is far above 8 bits (an xz stream "
        f"of one byte is {len(xz(b'x')) - len(xz(b''))} bytes longer than an empty one) and the next few are "
        f"whole bytes (0 or 8 bits), so the figure draws xz from position {XZ_DRAWN_FROM} on. "
        "Bits per byte, lower is better. *+ recall*: the same scores with the checkpoint's recall "
        "(`model.recall`, a match model over its context) mixed in, as the app and `.mbz` predict.",
        "",
        f"![bits per byte by position in the context]({figure})",
        "",
        "## Targets",
        "",
        "Ratios of bits per byte. *xz on each whole tune* compresses each tune as its own file, headers "
        "included.",
        "",
        targets_table(results),
        "",
    ]
    for measured in results.values():
        lines += [f"## {measured.name}: {DATASETS[measured.name].what}", "", table(measured), ""]
    lines += [
        "## What was measured",
        "",
        *(f"- Checkpoint {c}." for c in checkpoints),
        *(f"- {m}." for m in missing),
        *(f"- {measured.name}: {measured.used}." for measured in results.values()),
        f"- The models score in {'bf16 autocast, as the app does where bf16 is faster' if bf16 else 'fp32'}.",
    ]
    return "\n".join(lines) + "\n"


def describe(folder: Path, model) -> str:
    described = f"`{folder}`: patch {model.patch_size}, context {model.context:,} bytes"
    trainer = folder / "trainer.json"  # a training run's checkpoint, still learning: say how far it got
    if trainer.is_file():
        described += f", a training run's checkpoint at step {json.loads(trainer.read_text())['step']}"
    return described


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.context", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"),
                        help="folder with the short melody/ and text/ checkpoints (default: checkpoints)")
    parser.add_argument("--melody-long", type=Path, default=None,
                        help="the long melody checkpoint (default: CHECKPOINTS/melody_long)")
    parser.add_argument("--text-long", type=Path, default=None,
                        help="the long text checkpoint (default: CHECKPOINTS/text_long)")
    parser.add_argument("--data", type=Path, default=Path("data"), help="data root (default: data)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/context.md"),
                        help="the Markdown file to write; the figure context.png goes beside it "
                             "(default: bench/results/context.md)")
    parser.add_argument("--quick", action="store_true",
                        help=f"the {QUICK_DOCUMENTS} longest documents of each dataset, each cut to its first "
                             f"{QUICK_BYTES:,} bytes")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="CPU threads for the models (default: all cores)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.threads < 1:
        sys.exit("bench.context: --threads must be at least 1.")
    torch.set_num_threads(args.threads)
    long_folders = {"melody": args.melody_long, "text": args.text_long}
    count, limit = (QUICK_DOCUMENTS, QUICK_BYTES) if args.quick else (None, None)
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = bf16_faster(device)
    results, checkpoints, missing = {}, [], []
    try:
        for name, dataset in DATASETS.items():
            folders = {"short": args.checkpoints / dataset.short,
                       "long": long_folders[name] or args.checkpoints / dataset.long}
            absent = [str(folder) for folder in folders.values() if not folder.is_dir()]
            if absent:
                print(f"No checkpoint at {', '.join(absent)}: skipping {name}.", file=sys.stderr)
                missing.append(f"No checkpoint at `{'`, `'.join(absent)}`: the {name} rows are missing")
                continue
            documents, used = read_documents(args.data, dataset, count, limit)
            print(f"{name}: {used}", file=sys.stderr)
            models = {key: load_for(dataset.modality, folder, device)[0] for key, folder in folders.items()}
            checkpoints += [describe(folder, models[key]) for key, folder in folders.items()]
            results[name] = measure(name, used, documents, models, bf16)
    except (BenchError, CheckpointError, AdapterError) as e:
        sys.exit(f"bench.context: {e}")
    if not results:
        sys.exit(f"bench.context: no dataset has both of its checkpoints ({'; '.join(missing)}).")
    machine = measured_line("bench.context", started, time.perf_counter() - clock, argv, device)
    figure = args.out.with_name("context.png")
    figure.parent.mkdir(parents=True, exist_ok=True)
    chart(results, figure)
    write_atomically(args.out, report(results, checkpoints, missing, machine, figure.name, bf16))
    print(machine, targets_table(results), *(table(measured) for measured in results.values()), sep="\n\n")
    print(f"Wrote {args.out} and {figure}")


if __name__ == "__main__":
    main()
