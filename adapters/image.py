"""Images ⇄ bytes: square RGB, 3 bytes per pixel, in the layout's scan order."""

import functools
import io

import numpy as np
from PIL import Image, ImageOps

from .common import AdapterError, read_source
from .layout import Layout

# Completing emoji from the whole distribution (top-p 1) draws a wrong colour now and then, and
# the row runs on in streaks of it; keeping the top 90% of the probability held flat colours
# and the frames of boxes on held-out (validation) emoji, where temperature 0.8 gave up to white.
DEFAULT_TOP_P = 0.9


def load(source, layout: Layout) -> Image.Image:
    """An RGB image of layout.image_size square from a path, bytes, a binary file object,
    a PIL image or a numpy array (HxW or HxWx3/4). Transparency is composited on white;
    the largest centred square is kept and resized."""
    _require_image(layout)
    size = layout.image_size
    return ImageOps.fit(open_rgb(source), (size, size), method=Image.Resampling.LANCZOS)


def open_rgb(source) -> Image.Image:
    """The whole image as RGB, at its own size: EXIF rotation applied, transparency on white."""
    if isinstance(source, Image.Image):
        img = source
    elif isinstance(source, np.ndarray):
        img = _from_array(source)
    else:
        img = _open(read_source(source))
    return _to_rgb(ImageOps.exif_transpose(img))  # phone photos store their rotation in EXIF


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


def _open(data: bytes) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # Pillow opens lazily; decoding now surfaces truncation here
    except Image.UnidentifiedImageError:
        raise AdapterError("This is not an image Pillow can read (cannot identify image file).") from None
    except Image.DecompressionBombError:
        raise AdapterError("The image has too many pixels to open safely.") from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise AdapterError("The image file is truncated or corrupt.") from None
    return img


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
