"""Fixtures for the app tests: tiny random checkpoints, and the app serving them on a free port."""

import os
import socket

import pytest
import torch

from model import MegaByteConfig, build_model, save_checkpoint

TINY_LAYOUTS = {
    "text": ({"modality": "text"}, 512),
    "image": ({"modality": "image", "image_size": 32, "image_order": "raster", "patch_size": 4}, 3072),
    # a second image checkpoint, in patch-scan order: the app opens the image view on "emoji"
    "emoji": ({"modality": "image", "image_size": 32, "image_order": "patch", "patch_size": 4}, 3072),
    "audio": ({"modality": "audio", "sample_rate": 8000}, 1024),
}


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """text/, image/, emoji/ and audio/ checkpoints with random weights: fast, and no training needed.
    Each card's first line says which it is, as a real card says what it knows."""
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    for name, (layout, max_bytes) in TINY_LAYOUTS.items():
        config = MegaByteConfig(patch_size=4, byte_dim=8, global_layers=1, global_heads=1,
                                local_dim=16, local_layers=1, local_heads=1, max_bytes=max_bytes)
        save_checkpoint(folder / name, build_model(config), layout, card=f"# tiny random {name} model\n")
    return folder


@pytest.fixture(scope="session")
def free_port():
    """A function that returns a port nothing listens on now."""
    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    return pick


@pytest.fixture(scope="session")
def app_url(tiny_checkpoints, free_port):
    """The web app, served in this process for the whole session, on the tiny checkpoints or on
    the folder APP_CHECKPOINTS names (APP_CHECKPOINTS=checkpoints takes the README's screenshots)."""
    from app import ui

    demo = ui.build(os.environ.get("APP_CHECKPOINTS") or tiny_checkpoints)
    yield ui.launch(demo, port=free_port())
    demo.close()
