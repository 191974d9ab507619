"""Emoji recipe: 32x32 RGB emoji on white, 3072 bytes per example.

Twemoji and Noto emoji come from the npm packages of emoji-datasource (64x64 PNGs,
``npm pack``, never installed); one image of each set of skin-tone variants is kept
(the one without a modifier). The split is by emoji, not by file: an emoji and its
other style fall in the same split, so validation and test hold emoji that training
never saw in any style. Training images also appear mirrored (augmentation).

``outside.bin`` holds emoji of a style training never sees (OpenMoji, SVG rendered
with resvg): it measures how the model holds up on a user's own emoji.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Sequence

from PIL import Image

from adapters import Layout
from adapters import image as image_adapter

from .common import DEFAULT_DOWNLOADS, HELD_OUT, CacheWriter, DataError, hashed_split, npm_unpack, seeded_shuffle

LAYOUT = Layout(modality="image", image_size=32, image_order="raster")
SKIN_TONES = ("1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff")
OUTSIDE_IMAGES = 400
TINY_PER_SOURCE = 60

SOURCES = {
    "twemoji": {"spec": "emoji-datasource-twitter@16.0.0", "folder": "img/twitter/64",
                "licence": "CC-BY-4.0 (images, Twitter/X), MIT (package)"},
    "noto": {"spec": "emoji-datasource-google@16.0.0", "folder": "img/google/64",
             "licence": "Apache-2.0 (Noto Emoji, Google)"},
}
OUTSIDE = {"name": "openmoji", "spec": "openmoji@17.0.0", "folder": "color/svg",
           "licence": "CC-BY-SA-4.0 (OpenMoji)"}


def has_skin_tone(path: Path) -> bool:
    return any(tone in path.stem.lower().split("-") for tone in SKIN_TONES)


def emoji_bytes(source, flip: bool = False) -> bytes:
    img = image_adapter.load(source, LAYOUT)
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image_adapter.encode(img, LAYOUT)


def render_svg(path: Path) -> Image.Image:
    import resvg_py

    png = resvg_py.svg_to_bytes(svg_path=str(path), width=64, height=64, background="#ffffff")
    return Image.open(io.BytesIO(bytes(png)))


def build_emoji(out: Path | str = "data/emoji", *, tiny: bool = False, seed: int = 0,
                sources: Sequence[str] | None = None, downloads: Path | str = DEFAULT_DOWNLOADS,
                progress: bool = True) -> dict:
    """Pack the emoji sets from npm, split them by emoji and write the cache to ``out``."""
    from tqdm import tqdm

    t0 = time.time()
    names = list(sources or SOURCES)
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise DataError(f"Unknown emoji source {unknown[0]!r}; choose from {', '.join(SOURCES)}.")
    files: list[tuple[str, Path]] = []
    for name in names:
        src = SOURCES[name]
        root = npm_unpack(src["spec"], Path(downloads), members=(f"package/{src['folder']}/",))
        pngs = [p for p in sorted((root / src["folder"]).glob("*.png")) if not has_skin_tone(p)]
        if not pngs:
            raise DataError(f"The npm package {src['spec']} has no PNGs in {src['folder']}.")
        files += [(name, p) for p in (pngs[:TINY_PER_SOURCE] if tiny else pngs)]
    outside_root = npm_unpack(OUTSIDE["spec"], Path(downloads), members=(f"package/{OUTSIDE['folder']}/",))
    svgs = [p for p in sorted((outside_root / OUTSIDE["folder"]).glob("*.svg")) if not has_skin_tone(p)]
    svgs = seeded_shuffle(svgs, seed, "emoji:outside")[: TINY_PER_SOURCE // 4 if tiny else OUTSIDE_IMAGES]

    bar = tqdm(total=len(files) + len(svgs), desc="emoji: rendering", unit="image", disable=not progress)
    examples = {"train": [], "val": [], "test": [], "outside": []}
    table = {split: [] for split in examples}
    for name, path in files:
        split = hashed_split(path.stem.lower(), seed)
        examples[split].append(emoji_bytes(path))
        if split == "train":
            examples[split].append(emoji_bytes(path, flip=True))
        table[split].append(f"{name}/{path.name}")
        bar.update()
    for path in svgs:
        examples["outside"].append(emoji_bytes(render_svg(path)))
        table["outside"].append(f"{OUTSIDE['name']}/{path.name}")
        bar.update()
    bar.close()
    examples["train"] = seeded_shuffle(examples["train"], seed, "emoji:train")

    with CacheWriter(Path(out), list(examples)) as writer:
        for split, items in examples.items():
            writer.add(split, b"".join(items))
        per_source = lambda s, split: sum(f.startswith(f"{s}/") for f in table[split])  # noqa: E731
        manifest = {
            "modality": "image",
            "format": "raw uint8; examples of exactly 3072 bytes back to back, in raster order (see layout)",
            "layout": {**LAYOUT.to_dict(), "bytes_per_example": 3072, "channels": "RGB"},
            "encoder": "adapters.image.load (transparency on white, Lanczos to 32x32) + adapters.image.encode",
            "command": "python -m training.data emoji" + (" --tiny" if tiny else ""),
            "seed": seed,
            "tiny": tiny,
            "split": "by emoji (code point sequence), seeded: "
                     f"{HELD_OUT['val']:.0%} validation, {HELD_OUT['test']:.0%} test; both styles of an "
                     "emoji share a split; one of each set of skin-tone variants (no modifier)",
            "augmentation": "every training image also appears mirrored left to right",
            "splits": {split: {"bytes": writer.sizes[split], "examples": len(items),
                               "files": len(table[split])} for split, items in examples.items()},
            "sources": [
                {"name": n, "package": f"{SOURCES[n]['spec']} (npm, packed, not installed)",
                 "how": f"npm pack {SOURCES[n]['spec']}; {SOURCES[n]['folder']}/*.png",
                 "licence": SOURCES[n]["licence"],
                 "files": {s: per_source(n, s) for s in ("train", "val", "test")},
                 "bytes": {s: 3072 * per_source(n, s) * (2 if s == "train" else 1) for s in ("train", "val", "test")}}
                for n in names
            ] + [{"name": OUTSIDE["name"], "package": f"{OUTSIDE['spec']} (npm, packed, not installed)",
                  "how": f"npm pack {OUTSIDE['spec']}; {OUTSIDE['folder']}/*.svg rendered by resvg at 64x64 on white",
                  "licence": OUTSIDE["licence"],
                  "files": {"train": 0, "val": 0, "outside": len(svgs)},
                  "bytes": {"train": 0, "val": 0, "outside": 3072 * len(svgs)}}],
            "files": table,
            "seconds": round(time.time() - t0, 1),
        }
        writer.commit(manifest)
    return manifest
