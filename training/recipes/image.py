"""Image recipe: 32x32 RGB crops of real photographs, 3072 bytes per example.

Photos: scikit-image's sample photographs (from its wheel, downloaded, not
installed), the MATE nature wallpapers and eleven KDE Plasma wallpaper photos
(Debian packages, unpacked with ``apt-get download`` + ``dpkg-deb -x`` unless
installed). Each photo gives many random square crops at several scales,
resized to 32x32 with Pillow (Lanczos) and mirrored at random.

Validation is crops of whole photos that training never sees: the demo
photos that ship with the app (scikit-image's astronaut, coffee, chelsea,
camera, rocket) and a seeded few wallpapers.

Each example is exactly 32*32*3 = 3072 bytes, in the adapter's stream order:
raster (rows top to bottom, pixels left to right, R, G, B) by default, or the
patch scan with ``--order patch``; examples are written back to back, so an
example lines up with a model window of 3072 bytes.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from adapters import AdapterError, Layout
from adapters import image as image_adapter

from .common import (DEFAULT_DOWNLOADS, CacheWriter, DataError, apt_data_dir,
                     choose_validation, pip_download, unpack_archive)

IMAGE_SIZE = 32
DEFAULT_CROPS = 60_000
TINY_CROPS = 600
MIN_CROP = 48
MAX_CROP = 256                 # grows to a third of the short side on large photos
VAL_FRACTION = 0.05            # validation crops, relative to training crops
MIN_VAL_CROPS_PER_PHOTO = 100
SKIMAGE_VERSION = "0.26.0"

# real photographs among scikit-image's sample data (drawings, renders,
# checkerboards, the horse silhouette and the tiny microaneurysms crop are left out)
SKIMAGE_TRAIN = ["brick.png", "cell.png", "coins.png", "grass.png", "gravel.png",
                 "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png",
                 "page.png", "retina.jpg", "text.png"]
# shipped as demo assets: never trained on, used for validation
SKIMAGE_DEMOS = ["astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg"]
KDE_PHOTOS = ["BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow",
              "FallenLeaf", "Grey", "Kite", "OneStandsOut", "Path", "summer_1am"]
TINY_TRAIN = ["brick.png", "grass.png", "hubble_deep_field.jpg"]
TINY_VAL = ["coffee.png"]


@dataclass
class Photo:
    source: str
    name: str          # stable identifier, e.g. "skimage/coffee.png"
    path: Path
    licence: str
    forced_val: bool = False


@dataclass
class ImageSource:
    name: str
    package: str
    how: str
    paths: list[str]
    licence: str
    photos: list[Photo]


# --------------------------------------------------------------------------- #
# sources
# --------------------------------------------------------------------------- #

def skimage_source(downloads: Path, tiny: bool = False) -> ImageSource:
    archive = pip_download(f"scikit-image=={SKIMAGE_VERSION}", downloads,
                           pattern=f"scikit_image-{SKIMAGE_VERSION}-*.whl")
    root = unpack_archive(archive, Path(downloads) / f"scikit-image-{SKIMAGE_VERSION}",
                          members=("skimage/data/",)) / "skimage" / "data"
    train = TINY_TRAIN if tiny else SKIMAGE_TRAIN
    demos = TINY_VAL if tiny else SKIMAGE_DEMOS
    photos = []
    for fn in sorted(train + demos):
        path = root / fn
        if not path.is_file():
            raise DataError(f"The scikit-image {SKIMAGE_VERSION} wheel has no skimage/data/{fn}.")
        photos.append(Photo("skimage", f"skimage/{fn}", path,
                            "CC0 / public domain (see the skimage.data docstrings)",
                            forced_val=fn in demos))
    return ImageSource("skimage", f"scikit-image=={SKIMAGE_VERSION} (PyPI wheel, downloaded, not installed)",
                       f"pip download --no-deps scikit-image=={SKIMAGE_VERSION}; unzip skimage/data/*",
                       [f"skimage/data/{fn}" for fn in sorted(train + demos)],
                       "CC0 / public domain", photos)


def mate_source(downloads: Path, tiny: bool = False) -> ImageSource:
    system = "/usr/share/backgrounds/mate/nature"
    root = apt_data_dir("mate-backgrounds", system, downloads)
    files = sorted(root.glob("*.jpg"))
    if not files:
        raise DataError(f"The mate-backgrounds package has no photos in {system}.")
    photos = [Photo("mate", f"mate/{f.name}", f, "GPL-2+") for f in files]
    return ImageSource("mate", "mate-backgrounds (Debian)",
                       "apt-get download mate-backgrounds; dpkg-deb -x (or the installed package)",
                       [f"{system}/*.jpg"], "GPL-2+", photos)


def kde_source(downloads: Path, tiny: bool = False) -> ImageSource:
    system = "/usr/share/wallpapers"
    root = apt_data_dir("plasma-workspace-wallpapers", system, downloads)
    photos = []
    for name in KDE_PHOTOS:
        folder = root / name / "contents" / "images"
        files = sorted(folder.glob("*")) if folder.is_dir() else []
        # most sizes are symlinks to the one real file: take real files only
        files = [f for f in files if f.is_file() and not f.is_symlink()] or \
            sorted({f.resolve() for f in files if f.is_file()})
        if not files:
            raise DataError(f"The plasma-workspace-wallpapers package has no images for {name}.")
        largest = max(files, key=lambda f: (f.stat().st_size, f.name))
        photos.append(Photo("kde", f"kde/{name}/{largest.name}", largest, "LGPL-3"))
    return ImageSource("kde", "plasma-workspace-wallpapers (Debian)",
                       "apt-get download plasma-workspace-wallpapers; dpkg-deb -x (or the installed package)",
                       [f"{system}/<name>/contents/images/<largest file> for <name> in {KDE_PHOTOS}"],
                       "LGPL-3", photos)


IMAGE_SOURCES = {"skimage": skimage_source, "mate": mate_source, "kde": kde_source}
TINY_SOURCES = ["skimage"]


# --------------------------------------------------------------------------- #
# crops and encoding
# --------------------------------------------------------------------------- #

def open_photo(path: Path) -> Image.Image:
    """An RGB Pillow image of a photo file (EXIF rotation applied, alpha on white)."""
    try:
        return image_adapter.open_rgb(path)
    except AdapterError as exc:
        raise DataError(f"Cannot read the photo {path}: {exc}") from None


def crop_sizes(width: int, height: int) -> tuple[int, int]:
    short = min(width, height)
    lo = min(MIN_CROP, short)
    hi = min(short, max(MAX_CROP, short // 3))
    return lo, hi


def random_crops(img: Image.Image, n: int, rng: np.random.Generator) -> list[Image.Image]:
    """``n`` random square crops of side s (log-uniform between the crop
    limits), each resized to 32x32 and mirrored with probability 1/2."""
    w, h = img.size
    lo, hi = crop_sizes(w, h)
    out = []
    for _ in range(n):
        s = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi))))) if hi > lo else lo
        x = int(rng.integers(0, w - s + 1))
        y = int(rng.integers(0, h - s + 1))
        crop = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS,
                          box=(x, y, x + s, y + s))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(crop)
    return out


def make_encoder(order: str, patch_size: int):
    """(encode function, layout dict, encoder name) for the byte order."""
    try:
        layout = Layout(modality="image", image_size=IMAGE_SIZE, image_order=order,
                        patch_size=patch_size if order == "patch" else None)
    except AdapterError as exc:  # a nonsense patch size
        raise DataError(f"Bad image layout: {exc}") from None

    def encode(img: Image.Image) -> bytes:
        return image_adapter.encode(img, layout)

    return encode, layout.to_dict(), "adapters.image.encode"


def _photo_rng(seed: int, name: str, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(f"{split}:{name}".encode())])


def _allocate(total: int, weights: Sequence[float], minimum: int = 1) -> list[int]:
    """Split ``total`` into integer parts proportional to ``weights``."""
    wsum = float(sum(weights))
    raw = [total * w / wsum for w in weights]
    parts = [max(minimum, int(r)) for r in raw]
    # hand out the remainder to the largest fractional parts (deterministic)
    rest = total - sum(parts)
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - int(raw[i])), i))
    for i in order[:max(0, rest)]:
        parts[i] += 1
    return parts


# --------------------------------------------------------------------------- #
# the recipe
# --------------------------------------------------------------------------- #

def build_image(out: Path | str = "data/image", *, tiny: bool = False, seed: int = 0,
                order: str = "raster", patch_size: int = 16, crops: int | None = None,
                sources: Sequence[str] | None = None,
                downloads: Path | str = DEFAULT_DOWNLOADS, progress: bool = True) -> dict:
    """Install the photo sources, crop them and write the image cache to ``out``."""
    from tqdm import tqdm

    t0 = time.time()
    if order not in ("raster", "patch"):
        raise DataError(f"The image order must be 'raster' or 'patch', not {order!r}.")
    names = list(sources or (TINY_SOURCES if tiny else IMAGE_SOURCES))
    unknown = [n for n in names if n not in IMAGE_SOURCES]
    if unknown:
        raise DataError(f"Unknown image source {unknown[0]!r}; choose from {', '.join(IMAGE_SOURCES)}.")
    n_train = crops if crops is not None else (TINY_CROPS if tiny else DEFAULT_CROPS)
    if n_train <= 0:
        raise DataError(f"The number of crops must be positive, not {n_train}.")
    encode, layout, encoder = make_encoder(order, patch_size)
    downloads = Path(downloads)

    srcs = [IMAGE_SOURCES[n](downloads, tiny=tiny) for n in names]

    # whole photos to hold out: the demo photos, plus a seeded few wallpapers
    train_photos: list[Photo] = []
    val_photos: list[Photo] = []
    for src in srcs:
        forced = [p.name for p in src.photos if p.forced_val]
        if src.name == "skimage":
            val = set(forced)          # the demos are already several whole photos
        else:
            val = choose_validation([p.name for p in src.photos], seed=seed, source=f"image:{src.name}",
                                    min_files=1, fraction=0.1, forced=forced)
        train_photos += [p for p in src.photos if p.name not in val]
        val_photos += [p for p in src.photos if p.name in val]
    if not train_photos or not val_photos:
        raise DataError("The image sources gave too few photos for both a training and a validation split.")

    sizes = {}
    for p in train_photos + val_photos:
        with Image.open(p.path) as im:
            sizes[p.name] = im.size
    weight = {n: math.sqrt(w * h) for n, (w, h) in sizes.items()}
    n_val = max(len(val_photos) * MIN_VAL_CROPS_PER_PHOTO, int(round(VAL_FRACTION * n_train)))
    if tiny:
        n_val = max(len(val_photos) * 10, int(round(0.2 * n_train)))
    train_counts = _allocate(n_train, [weight[p.name] for p in train_photos])
    val_counts = _allocate(n_val, [weight[p.name] for p in val_photos],
                           minimum=10 if tiny else MIN_VAL_CROPS_PER_PHOTO)

    example = IMAGE_SIZE * IMAGE_SIZE * 3
    bar = tqdm(total=sum(train_counts) + sum(val_counts), desc="image: cropping", unit="crop",
               disable=not progress)

    def crops_of(photos, counts, split):
        arrays, table = [], []
        for p, n in zip(photos, counts):
            img = open_photo(p.path)
            rng = _photo_rng(seed, p.name, split)
            buf = bytearray()
            for c in random_crops(img, n, rng):
                data = encode(c)
                if len(data) != example:
                    raise DataError(f"The image encoder gave {len(data)} bytes for a crop, not {example}.")
                buf += data
            bar.update(n)
            arrays.append(np.frombuffer(bytes(buf), dtype=np.uint8).reshape(n, example))
            table.append({"source": p.source, "path": p.name, "file": str(p.path),
                          "size": list(sizes[p.name]), "crops": n, "licence": p.licence})
        return arrays, table

    train_arrays, train_table = crops_of(train_photos, train_counts, "train")
    val_arrays, val_table = crops_of(val_photos, val_counts, "val")
    bar.close()

    train = np.concatenate(train_arrays)
    perm = np.random.default_rng([seed, 1234]).permutation(len(train))   # mix photos
    val = np.concatenate(val_arrays)

    with CacheWriter(Path(out), ["train", "val"]) as writer:
        step = 4096
        for i in range(0, len(perm), step):
            writer.add("train", train[perm[i:i + step]].tobytes())
        start = 0
        for row, arr in zip(val_table, val_arrays):
            row["first_example"] = start
            writer.add("val", arr.tobytes())
            start += len(arr)
        manifest = {
            "modality": "image",
            "format": f"raw uint8; examples of exactly {example} bytes back to back, "
                      f"in {order} order (see layout)",
            "layout": {**layout, "bytes_per_example": example, "channels": "RGB"},
            "encoder": encoder,
            "command": "python -m training.data image" + (f" --order {order}" if order != "raster" else "")
                       + (" --tiny" if tiny else ""),
            "seed": seed,
            "tiny": tiny,
            "crops": {"side_px": f"log-uniform in [{MIN_CROP}, max({MAX_CROP}, short side / 3)], "
                                 "capped at the short side",
                      "resize": "Pillow LANCZOS to 32x32", "flip": "horizontal, probability 0.5",
                      "train_order": "shuffled across photos (seeded)",
                      "val_order": "photo by photo, as listed in files.val"},
            "splits": {"train": {"bytes": writer.sizes["train"], "examples": len(train),
                                 "files": len(train_photos)},
                       "val": {"bytes": writer.sizes["val"], "examples": len(val),
                               "files": len(val_photos)}},
            "sources": [
                {"name": s.name, "package": s.package, "how": s.how, "paths": s.paths,
                 "licence": s.licence,
                 "files": {"train": sum(p.source == s.name for p in train_photos),
                           "val": sum(p.source == s.name for p in val_photos)},
                 "bytes": {"train": example * sum(r["crops"] for r in train_table if r["source"] == s.name),
                           "val": example * sum(r["crops"] for r in val_table if r["source"] == s.name)},
                 "validation_files": [p.name for p in val_photos if p.source == s.name]}
                for s in srcs
            ],
            "excluded_from_training": {
                "demo assets (in validation)": [p.name for p in val_photos if p.forced_val]},
            "files": {"train": train_table, "val": val_table},
            "seconds": round(time.time() - t0, 1),
        }
        writer.commit(manifest)
    return manifest
