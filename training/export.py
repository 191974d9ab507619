"""Turns a training run's checkpoint into a shippable one (bf16 weights, no optimizer state).

    python -m training.export runs/text/checkpoint checkpoints/text
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from model import CheckpointError, load_checkpoint, save_checkpoint


def export(source, destination, dtype=torch.bfloat16) -> Path:
    model, layout = load_checkpoint(source)
    card = (Path(source) / "card.md").read_text() if (Path(source) / "card.md").is_file() else ""
    return save_checkpoint(destination, model, layout, card, dtype=dtype)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a run's checkpoint folder, e.g. runs/text/checkpoint")
    parser.add_argument("destination", help="where the shippable checkpoint goes, e.g. checkpoints/text")
    parser.add_argument("--fp32", action="store_true", help="keep fp32 weights (twice the size)")
    args = parser.parse_args(argv)
    try:
        folder = export(args.source, args.destination, torch.float32 if args.fp32 else torch.bfloat16)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    size = (folder / "model.safetensors").stat().st_size
    print(f"wrote {folder} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
