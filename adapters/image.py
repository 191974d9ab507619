"""Images ⇄ bytes: square RGB, 3 bytes per pixel, in the layout's scan order."""

import contextlib
import functools
import io

import numpy as np
from PIL import Image, ImageOps

from model import Sampling

from .common import AdapterError, read_source
from .layout import Layout

# Completing emoji from the whole distribution (top-p 1) draws a wrong colour now and then, and
# the row runs on in streaks of it; keeping the top 90% of the probability held flat colours
# and the frames of boxes on held-out (validation) emoji, where temperature 0.8 gave up to white.
# Against min-p, η-sampling, LPCNet's floor and sharpening and best-of-4 (bench.samplers), top-p
# 0.9 still brought the completed half's colours closest to the kept half's, averaged over 40
# validation emoji and 40 validation photos (bench/results/samplers_image_40.md: colour distance
# 0.238 and 0.165; best-of-4 by likelihood tied, 0.236 and 0.167; η 0.02, first on 12 images,
# 0.231 and 0.194). No rule beat it by more than the noise between runs.
DEFAULT_SAMPLING = Sampling(top_p=0.9)
# A 144-megapixel PNG of one colour is a 420 KB file that takes gigabytes to decode, and Pillow
# only warns about it (DecompressionBombWarning, from 89 MP; it refuses from 179 MP). We refuse,
# from the header, more pixels than this: all Pillow warns about, yet more than most photos.
# Decoding peaks at about 600 MB for RGBA, 250 MB for a progressive JPEG (which holds all its
# coefficients even when decoded at 1/8 of its size). A warnings.catch_warnings filter is no
# substitute: it swaps process-wide state under the app's threads, and can leave it swapped.
MAX_PIXELS = 40_000_000
TOO_MANY_PIXELS = f"The image has more than {MAX_PIXELS // 1_000_000} million pixels, too many to read safely."
# load shrinks a large image by whole factors (a JPEG while decoding, others before resizing)
# while its shorter side keeps at least this many times the layout's side. Pixels then differ
# from the full image's resize by about one level in 255 on average (photos of 3-5k pixels),
# and images up to this size come out as they always did.
SHRINK_MARGIN = 8


def load(source, layout: Layout) -> Image.Image:
    """An RGB image of layout.image_size square from a path, bytes, a binary file object,
    a PIL image or a numpy array (HxW or HxWx3/4). Transparency is composited on white;
    the largest centred square is kept and resized."""
    _require_image(layout)
    size = layout.image_size
    img = open_rgb(source, shortest_side=SHRINK_MARGIN * size)
    side = min(img.size)
    left, top = (img.width - side) / 2, (img.height - side) / 2
    return img.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side),
                      reducing_gap=SHRINK_MARGIN)


def open_rgb(source, shortest_side: int | None = None) -> Image.Image:
    """The image as RGB, EXIF rotation applied, transparency on white; at its own size, but a
    JPEG decoded at a fraction of it where that keeps `shortest_side` pixels on its shorter side."""
    if isinstance(source, Image.Image):
        img = ImageOps.exif_transpose(source)  # phone photos store their rotation in EXIF
    elif isinstance(source, np.ndarray):
        img = _from_array(source)
    else:
        img = _open(read_source(source), shortest_side)
    return _to_rgb(img)


def encode(img: Image.Image, layout: Layout) -> bytes:
    """The image's bytes in stream order.

    The image is cut into square blocks of b = layout.block_side pixels; blocks follow
    one another in raster order (left to right, then down), and inside a block its
    pixels are in raster order, each pixel R, G, B. "raster" order is b = 1: rows top
    to bottom, pixels left to right. "patch" order is the paper's patch scan: with
    P=8, b=4, so each 48-byte block is six whole model patches.
    """
    _require_image(layout)
    size = layout.image_size
    if img.size != (size, size):
        raise AdapterError(f"The image is {img.size[0]}x{img.size[1]} but the layout needs {size}x{size}.")
    raster = np.asarray(img.convert("RGB"), dtype=np.uint8).reshape(-1)
    return raster[_stream_order(size, layout.block_side)].tobytes()


def decode(data: bytes, layout: Layout, missing=(255, 0, 255)) -> Image.Image:
    """The full-size image from a stream of any length: bytes not yet there keep the
    `missing` colour (so a half-known pixel shows its known channels); extra bytes are ignored."""
    _require_image(layout)
    size = layout.image_size
    pixels = np.empty((size, size, 3), dtype=np.uint8)
    pixels[:] = missing
    known = min(len(data), layout.bytes_per_image)
    pixels.reshape(-1)[_stream_order(size, layout.block_side)[:known]] = np.frombuffer(data, np.uint8, known)
    return Image.fromarray(pixels)


def prefix_bytes(rows: int, layout: Layout) -> int:
    """Length of the shortest stream prefix that holds the top `rows` pixel rows.

    In "patch" order blocks span block_side rows, so rows round up to whole block rows.
    """
    _require_image(layout)
    size, side = layout.image_size, layout.block_side
    if not 0 <= rows <= size:
        raise AdapterError(f"rows must be between 0 and {size}, not {rows}.")
    return -(-rows // side) * side * size * 3


def surprisal_map(per_byte: np.ndarray, layout: Layout) -> np.ndarray:
    """(size, size) per-pixel sum of its three bytes' values; NaN where any byte is missing."""
    _require_image(layout)
    size = layout.image_size
    per_byte = np.asarray(per_byte, dtype=np.float64).reshape(-1)[: layout.bytes_per_image]
    values = np.full(size * size * 3, np.nan)
    values[_stream_order(size, layout.block_side)[: len(per_byte)]] = per_byte
    return values.reshape(size, size, 3).sum(axis=2)


def upscale(img: Image.Image, factor: int) -> Image.Image:
    """Blow up a small image with sharp pixels, for display."""
    return img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)


@functools.lru_cache(maxsize=8)
def _stream_order(size: int, side: int) -> np.ndarray:
    """For each stream byte, its index among the raster bytes (row, column, channel)."""
    raster = np.arange(size * size * 3).reshape(size // side, side, size // side, side, 3)
    order = raster.transpose(0, 2, 1, 3, 4).reshape(-1)  # block row, block column, row, column, channel
    order.flags.writeable = False
    return order


def _require_image(layout):
    if layout.modality != "image":
        raise AdapterError(f"This needs an image layout, not a {layout.modality} one.")


def check(source) -> None:
    """Refuses, in load's sentence, a file load would refuse for its header or its structure (a
    PNG's chunks and their checksums), without decoding its pixels: a check for an upload that
    a later request decodes once. A truncated JPEG passes; load refuses it."""
    with _refused():
        img = _header(read_source(source))
        img.verify()


def _open(data: bytes, shortest_side: int | None) -> Image.Image:
    """The decoded image, upright, its size checked from the header first."""
    with _refused():
        img = _header(data)
        if shortest_side:
            img.draft(None, (shortest_side, shortest_side))  # JPEG only; other formats ignore it
        img.load()  # decoding now surfaces truncation here
        ImageOps.exif_transpose(img, in_place=True)  # and a corrupt EXIF here; in place: no copy of a large image
    return img


def _header(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))  # reads the header only
    if img.width * img.height > MAX_PIXELS:
        raise AdapterError(TOO_MANY_PIXELS)
    return img


@contextlib.contextmanager
def _refused():
    """Pillow's errors on a bad file as one sentence of ours."""
    try:
        yield
    except AdapterError:  # ours, which the ValueError below would catch
        raise
    except Image.UnidentifiedImageError:
        raise AdapterError("This is not an image Pillow can read (cannot identify image file).") from None
    except Image.DecompressionBombError:
        raise AdapterError(TOO_MANY_PIXELS) from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise AdapterError("The image file is truncated or corrupt.") from None


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or not array.size:
        raise AdapterError(f"An image array must be HxW, HxWx3 or HxWx4, not shape {array.shape}.")
    if array.dtype.kind == "f":  # float images are in [0, 1]
        array = array * 255
    return Image.fromarray(np.clip(np.nan_to_num(array), 0, 255).round().astype(np.uint8))


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I;16"):  # 16-bit grey: Pillow's convert would clip it to white
        img = Image.fromarray((np.asarray(img) >> 8).astype(np.uint8))
    if img.has_transparency_data:
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img.convert("RGBA"))
    return img.convert("RGB")
