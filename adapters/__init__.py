"""Modality adapters: media ⇄ bytes. They know media and layouts, never the network."""

from . import audio, checkpoints, image, text
from .common import AdapterError
from .layout import Layout

__all__ = ["AdapterError", "Layout", "audio", "checkpoints", "image", "text"]
