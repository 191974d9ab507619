"""The README's pictures, made from the checkpoints: `python -m bench.figures`.

image_completions.png and emoji_completions.png: held-out images from assets/images and
assets/emoji, the top half given to the photo and emoji checkpoints and several bottom halves
each sampled. text_surprisal.png: how surprised the text
checkpoint is by every byte of a held-out text, with a rolling mean and the biggest surprises named.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure  # without pyplot: no GUI backend, PNGs are drawn by Agg
from tqdm import tqdm

from adapters import AdapterError, Layout, image, text
from adapters.checkpoints import load_for
from model import CheckpointError
from model import Sampling, generate, score

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SCALE = 4  # nearest-neighbour upscaling of each image for display
GIVEN_GREY = (128, 128, 128)  # the not-given half of the prompt image
ROLLING = 32  # bytes in the rolling mean of the surprisal plot
NAMED_SURPRISES = 8
SHOWN_AS = {"\n": "⏎", " ": "␣", "\t": "⇥"}


# checkpoint name: (its held-out example folder in assets/, what they are, figure file)
COMPLETIONS = {"image": ("images", "photos", "image_completions.png"),
               "emoji": ("emoji", "emoji (test split; OpenMoji: a style never trained on)", "emoji_completions.png")}


def image_completions(model, layout: Layout, paths: list[Path], what: str, out: Path, samples: int,
                      sampling: Sampling, seed: int):
    """A grid: for each held-out image, the original, the given top half and `samples` completions."""
    given = image.prefix_bytes(layout.image_size // 2, layout)
    new_bytes = layout.bytes_per_image - given
    titles = ["original", "given: top half", *(f"sample {i + 1}" for i in range(samples))]
    fig = Figure(figsize=(1.6 * len(titles), 1.7 * len(paths)))
    axes = fig.subplots(len(paths), len(titles), squeeze=False)
    with tqdm(total=len(paths) * new_bytes, desc="image completions", unit="B", unit_scale=True) as bar:
        for index, (row, path) in enumerate(zip(axes, paths)):
            original = image.load(path, layout)
            prompt = image.encode(original, layout)[:given]
            start = bar.n
            completions = generate(model, prompt, new_bytes, samples, sampling, seed=seed + index,
                                   progress=lambda done: bar.update(start + done - bar.n))
            pictures = [original, image.decode(prompt, layout, missing=GIVEN_GREY),
                        *(image.decode(prompt + c, layout) for c in completions)]
            for ax, picture in zip(row, pictures):
                ax.imshow(image.upscale(picture, SCALE))
                ax.set_xticks([])
                ax.set_yticks([])
            row[0].set_ylabel(path.stem)
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"The model completes held-out {layout.image_size}x{layout.image_size} {what}\n"
                 f"({sampling.describe()}, seed {seed})")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def spread(items: list, count: int) -> list:
    """`count` items evenly spread over the list (all of them if there are fewer)."""
    if len(items) <= count:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, count).astype(int)]


def byte_characters(data: bytes) -> list[str]:
    """For each byte, the character it belongs to (U+FFFD for an invalid byte)."""
    characters = []
    for (start, end), character in zip(text.char_spans(data), text.decode(data)):
        characters += [character] * (end - start)
    return characters


def biggest_surprises(surprisal: np.ndarray, count: int, apart: int) -> list[int]:
    """Positions of the `count` most surprising bytes, at least `apart` bytes from one another."""
    chosen = []
    for position in np.argsort(-surprisal, kind="stable"):
        if all(abs(position - c) >= apart for c in chosen):
            chosen.append(int(position))
        if len(chosen) == count:
            break
    return chosen


def text_surprisal(model, data: bytes, name: str, out: Path):
    """Per-byte surprisal over a text, its rolling mean and the biggest surprises in context."""
    surprisal = score(model, data).surprisal
    characters = [SHOWN_AS.get(c, c) for c in byte_characters(data)]
    fig = Figure(figsize=(14, 4.5))
    ax = fig.subplots()
    positions = np.arange(len(data))
    ax.bar(positions, surprisal, width=1.0, color="#9ecae1", label="surprisal of each byte")
    rolling = np.convolve(surprisal, np.ones(ROLLING) / ROLLING, mode="valid")
    ax.plot(positions[ROLLING - 1 :], rolling, color="#08519c", label=f"mean of the last {ROLLING} bytes")
    for position in biggest_surprises(surprisal, NAMED_SURPRISES, apart=len(data) // (2 * NAMED_SURPRISES)):
        before = "".join(characters[max(0, position - 8) : position])
        after = "".join(characters[position + 1 : position + 4])
        ax.annotate(f"{before}[{characters[position]}]{after}", (position, surprisal[position]),
                    xytext=(0, 4), textcoords="offset points", ha="center", fontsize=8, color="#a50f15")
    ax.set_xlim(0, len(data))
    ax.set_ylim(0, max(float(surprisal.max()) * 1.15, 1.0))
    ax.set_xlabel("byte")
    ax.set_ylabel("bits")
    ax.set_title(f"How surprised the text model is by each byte of {name} (first {len(data):,} bytes): "
                 f"{surprisal.mean():.2f} bits per byte on average\n[x] marks the biggest surprises, in context")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.figures",
        description="Draws image_completions.png and emoji_completions.png (the image checkpoints complete "
                    "held-out images) and "
                    "text_surprisal.png (the text checkpoint's surprisal over a held-out text).")
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"),
                        help="folder with text/ and image/ checkpoints (default: checkpoints)")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder to write the figures to (default: docs)")
    parser.add_argument("--images", type=int, default=4, help="held-out images to complete per checkpoint (default: 4)")
    parser.add_argument("--samples", type=int, default=4, help="completions per photo (default: 4)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    parser.add_argument("--top-p", type=float, default=None,
                        help=f"sampling top-p (default: {image.DEFAULT_SAMPLING.top_p:g}, that of the app's rule for "
                             f"images: {image.DEFAULT_SAMPLING.describe()})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image's samples (default: 0)")
    parser.add_argument("--text", type=Path, default=ASSETS / "text" / "genesis.txt",
                        help="the text to plot (default: assets/text/genesis.txt)")
    parser.add_argument("--text-bytes", type=int, default=1000, help="bytes of the text to plot (default: 1000)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default: 1; generation is thousands of tiny steps, and on a 2-core "
                             "CPU shared with other jobs one thread ran them 35 times faster than two)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if min(args.images, args.samples, args.text_bytes, args.threads) < 1:
        sys.exit("bench.figures: --images, --samples, --text-bytes and --threads must be at least 1.")
    torch.set_num_threads(args.threads)
    try:
        sampling = replace(image.DEFAULT_SAMPLING, temperature=args.temperature,
                           top_p=image.DEFAULT_SAMPLING.top_p if args.top_p is None else args.top_p)
    except ValueError as e:
        sys.exit(f"bench.figures: {e}")
    args.out.mkdir(parents=True, exist_ok=True)
    made = []
    try:
        for name, (folder, what, figure) in COMPLETIONS.items():
            if not (args.checkpoints / name).is_dir():
                continue
            model, layout = load_for("image", args.checkpoints / name)
            made.append(args.out / figure)
            paths = spread(sorted((ASSETS / folder).glob("*.png")), args.images)
            image_completions(model, layout, paths, what, made[-1], args.samples, sampling, args.seed)
        if (args.checkpoints / "text").is_dir():
            model, _ = load_for("text", args.checkpoints / "text")
            made.append(args.out / "text_surprisal.png")
            data = text.read(args.text)[: args.text_bytes]
            text_surprisal(model, data, args.text.name, made[-1])
    except (CheckpointError, AdapterError) as e:
        sys.exit(f"bench.figures: {e}")
    if not made:
        sys.exit(f"bench.figures: there is no image or text checkpoint in {args.checkpoints}.")
    for path in made:
        print(f"Wrote {path}")


if __name__ == "__main__":
    main()
