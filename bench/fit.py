"""Does "auto" pick the right checkpoint? `python -m bench.fit` writes bench/results/fit.md.

The app's "auto" scores an upload under every checkpoint of its medium and uses the least
surprised (adapters.checkpoints.rank). Here it meets held-out inputs whose right checkpoint
is known: photo crops (the photo checkpoint), emoji (emoji), music and speech clips (the
general audio checkpoint), folk tunes (either melody checkpoint). Each image is one example;
each audio input a window of adapters.checkpoints.AUTO_BYTES (2 s) cut evenly from the split.
Reports, per set, how often auto was right and what choosing cost in seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from adapters import Layout, image
from adapters.checkpoints import AUTO_BYTES, catalog, load_for, rank
from model.hardware import machine_description

# set: (data folder, split, medium, the checkpoint names that are right for it)
SETS = {
    "photos": ("image", "val", "image", {"image"}),
    "emoji": ("emoji", "val", "image", {"emoji"}),
    "emoji (test)": ("emoji", "test", "image", {"emoji"}),
    "music": ("audio", "val_music", "audio", {"audio"}),
    "speech": ("audio", "val_speech", "audio", {"audio"}),
    "tunes": ("melody", "val", "audio", {"melody", "melody_long"}),
    "tunes (test)": ("melody", "test", "audio", {"melody", "melody_long"}),
}
IMAGE_BYTES = 3072  # the image recipes' 32×32 RGB examples, raster order
STORED = Layout.from_dict({"modality": "image", "image_size": 32, "image_order": "raster"})


def inputs(path: Path, medium: str, count: int) -> list[bytes]:
    """`count` inputs spread evenly over a split: whole examples, or audio windows."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    size = IMAGE_BYTES if medium == "image" else AUTO_BYTES
    starts = np.linspace(0, (len(data) // size - 1) * size, count).astype(np.int64) // size * size
    return [bytes(data[start : start + size]) for start in starts]


def encoder(raw: bytes, medium: str):
    """encode(layout) for rank: an image re-encoded in each checkpoint's byte order; audio
    is 8 kHz µ-law for every audio checkpoint."""
    if medium == "audio":
        return lambda layout: raw
    picture = image.decode(raw, STORED)
    return lambda layout: image.encode(picture, layout)


def measure(checkpoints: Path, data: Path, count: int) -> tuple[list[str], dict]:
    rows, summary = [], {}
    candidates = {medium: [(folder, *load_for(medium, folder)) for folder in catalog(checkpoints, medium)]
                  for medium in ("image", "audio")}
    for name, (folder, split, medium, right) in SETS.items():
        path = data / folder / f"{split}.bin"
        if not path.is_file():
            rows.append(f"| {name} | – | not measured: {path} is missing (`python -m training.data {folder}`) | | |")
            continue
        picks, seconds = {}, []
        for raw in inputs(path, medium, count):
            start = time.perf_counter()
            best = rank(candidates[medium], encoder(raw, medium))[0].folder.name
            seconds.append(time.perf_counter() - start)
            picks[best] = picks.get(best, 0) + 1
        hits = sum(n for pick, n in picks.items() if pick in right)
        total = sum(picks.values())
        summary[name] = hits / total
        chosen = ", ".join(f"{pick} {n}" for pick, n in sorted(picks.items(), key=lambda kv: -kv[1]))
        rows.append(f"| {name} | {total} | {hits / total:.0%} | {chosen} | {np.median(seconds):.2f} |")
        print(rows[-1], flush=True)
    return rows, summary


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.fit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/fit.md"))
    parser.add_argument("--count", type=int, default=50, help="inputs per set (default: 50)")
    parser.add_argument("--quick", action="store_true", help="8 inputs per set")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    if args.count < 1 or args.threads < 1:
        sys.exit("bench.fit: --count and --threads must be at least 1.")
    torch.set_num_threads(args.threads)
    count = 8 if args.quick else args.count
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    rows, _ = measure(args.checkpoints, args.data, count)
    command = " ".join(["python -m bench.fit", *(argv if argv is not None else sys.argv[1:])])
    lines = ["# Auto: the least surprised checkpoint", "",
             f"Measured {started:%Y-%m-%d %H:%M} UTC in {time.perf_counter() - clock:.0f} s by `{command}` on "
             f"{machine_description()}.", "",
             f"Each input is scored under every checkpoint of its medium (images whole, audio its first "
             f"{AUTO_BYTES:,} bytes, 2 s) and goes to the least surprised. Target: at least 90% right on each set.", "",
             "| held-out set | inputs | right | chosen | seconds to choose (median) |", "|---|---|---|---|---|", *rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
