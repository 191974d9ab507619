"""Layout: what a stream of bytes means. Each checkpoint records the one it was trained on."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .common import AdapterError

MODALITIES = ("text", "image", "audio", "bytes")
IMAGE_ORDERS = ("raster", "patch")
SAMPLE_RATES = (8000, 16000)
MIN_IMAGE_SIZE = 32


@dataclass(frozen=True)
class Layout:
    """How media become bytes.

    image_size: side of the square RGB image (3 bytes per pixel).
    image_order: "raster" (rows top to bottom) or "patch" (the paper's patch scan:
        square blocks of block_side pixels, see adapters.image.encode).
    patch_size: the model's patch size P; the "patch" order needs it.
    sample_rate: samples per second of 8-bit µ-law mono audio.
    """

    modality: str
    image_size: int | None = None
    image_order: str = "raster"
    patch_size: int | None = None
    sample_rate: int | None = None

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise AdapterError(f"Unknown modality {self.modality!r}; expected one of {', '.join(MODALITIES)}.")
        for name in ("image_size", "patch_size", "sample_rate"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise AdapterError(f"{name} must be a positive integer, not {value!r}.")
        is_image, is_audio = self.modality == "image", self.modality == "audio"
        if not is_image and (self.image_size is not None or self.image_order != "raster"):
            raise AdapterError(f"image_size and image_order apply to images, not {self.modality}.")
        if not is_audio and self.sample_rate is not None:
            raise AdapterError(f"sample_rate applies to audio, not {self.modality}.")
        if is_audio and self.sample_rate not in SAMPLE_RATES:
            raise AdapterError(f"Audio needs a sample_rate of 8000 or 16000, not {self.sample_rate!r}.")
        if is_image:
            self._check_image()

    def _check_image(self):
        if self.image_size is None or self.image_size < MIN_IMAGE_SIZE:
            raise AdapterError(f"Images need an image_size of at least {MIN_IMAGE_SIZE}, not {self.image_size!r}.")
        if self.image_order not in IMAGE_ORDERS:
            raise AdapterError(f"image_order must be 'raster' or 'patch', not {self.image_order!r}.")
        if self.image_order == "patch" and self.patch_size is None:
            raise AdapterError("The patch image order needs the model's patch_size.")
        if self.image_size % self.block_side:
            raise AdapterError(
                f"image_size={self.image_size} is not a multiple of the patch-scan block side {self.block_side}."
            )

    @property
    def block_side(self) -> int:
        """Side of the square pixel blocks that the image order scans one after another.

        "patch": the smallest block whose 3*side*side bytes are a whole number of model
        patches (P=8 or 16 → 4, P=12 → 2, P=192 → 8 as in the paper). "raster" is the
        same scan with 1-pixel blocks.
        """
        if self.image_order == "raster":
            return 1
        side = 1
        while (3 * side * side) % self.patch_size:
            side += 1
        return side

    @property
    def bytes_per_image(self) -> int:
        if self.image_size is None:
            raise AdapterError(f"A {self.modality} layout has no image size.")
        return self.image_size * self.image_size * 3

    def to_dict(self) -> dict:
        """JSON-able; None fields are left out, and image_order appears for images only."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        if self.modality != "image":
            del d["image_order"]
        return d

    @classmethod
    def from_dict(cls, d) -> Layout:
        if not isinstance(d, dict) or "modality" not in d:
            raise AdapterError("A layout must be a dictionary with a 'modality' field.")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise AdapterError(f"Unknown layout field {sorted(unknown)[0]!r}.")
        return cls(**d)
