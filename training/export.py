"""Turns a training run's checkpoint into a shippable one (bf16 weights, no optimizer state).

    python -m training.export runs/emoji/checkpoint checkpoints/emoji --check "assets/emoji/*.png"

`--check` scores held-out files that ship in the repository with the exported weights and
writes the figure into the card; tests/test_checkpoints.py holds the checkpoint to it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from adapters import AdapterError, Layout, checkpoints
from model import CheckpointError, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def export(source, destination, dtype=torch.bfloat16, check: str | None = None) -> Path:
    model, layout = load_checkpoint(source)
    card = (Path(source) / "card.md").read_text() if (Path(source) / "card.md").is_file() else ""
    folder = save_checkpoint(destination, model, layout, card, dtype=dtype)
    if check:
        write_check(folder, check)
    return folder


def write_check(folder, pattern: str) -> str:
    """Scores the files matching pattern with the checkpoint as shipped and puts the figure
    in its card, replacing an older check line."""
    model, layout = load_checkpoint(folder)
    layout = Layout.from_dict(layout)
    line = checkpoints.CHECK_LINE.format(**checkpoints.measure_check(model, layout, pattern, ROOT))
    card = Path(folder) / "card.md"
    lines = [x for x in card.read_text().splitlines() if not checkpoints.CHECK_PATTERN.match(x)]
    at = next((i + 1 for i, x in enumerate(lines) if x.startswith("- Validation")), min(len(lines), 2))
    card.write_text("\n".join(lines[:at] + [line] + lines[at:]) + "\n")
    return line


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a run's checkpoint folder, e.g. runs/text/checkpoint")
    parser.add_argument("destination", help="where the shippable checkpoint goes, e.g. checkpoints/text")
    parser.add_argument("--fp32", action="store_true", help="keep fp32 weights (twice the size)")
    parser.add_argument("--check", metavar="PATTERN", default=None,
                        help="held-out files in the repository to score and state in the card, e.g. 'assets/emoji/*.png'")
    args = parser.parse_args(argv)
    try:
        folder = export(args.source, args.destination, torch.float32 if args.fp32 else torch.bfloat16, args.check)
    except (CheckpointError, AdapterError) as e:
        sys.exit(f"error: {e}")
    size = (folder / "model.safetensors").stat().st_size
    print(f"wrote {folder} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
