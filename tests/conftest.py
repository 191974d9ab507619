"""Fixtures for the app tests: tiny random checkpoints, and the app serving them on a free port."""

import os
import socket
import time

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


def save_tiny(folder, name: str, layout: dict, max_bytes: int, **config):
    """A checkpoint with random weights, its card's first line saying which it is, as a real card says what it knows."""
    config = MegaByteConfig(**{"patch_size": 4, "byte_dim": 8, "global_layers": 1, "global_heads": 1, "local_dim": 16,
                               "local_layers": 1, "local_heads": 1, "max_bytes": max_bytes, **config})
    save_checkpoint(folder / name, build_model(config), layout, card=f"# tiny random {name} model\n")


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """text/, image/, emoji/ and audio/ checkpoints with random weights: fast, and no training needed."""
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    for name, (layout, max_bytes) in TINY_LAYOUTS.items():
        save_tiny(folder, name, layout, max_bytes)
    return folder


@pytest.fixture(scope="session")
def served_checkpoints(tiny_checkpoints, tmp_path_factory):
    """What the app serves: the tiny checkpoints, and audio_long, whose context holds 8 s of 8 kHz
    audio (65,536 bytes, patches of 16 and rotary positions, as the long melody model's). It stays
    out of tiny_checkpoints, whose every checkpoint other tests compile or benchmark."""
    folder = tmp_path_factory.mktemp("served")
    for checkpoint in tiny_checkpoints.iterdir():
        (folder / checkpoint.name).symlink_to(checkpoint)
    torch.manual_seed(0)
    save_tiny(folder, "audio_long", {"modality": "audio", "sample_rate": 8000}, 65_536, patch_size=16,
              positions="rotary")
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
def wait_until():
    """A function that polls a condition until it holds, and fails the test, naming what it
    waited for, when it still does not after `seconds`."""
    def wait(condition, what: str, seconds: float = 120):
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, f"Gave up after {seconds:g} s waiting for {what}."
            time.sleep(0.05)
    return wait


@pytest.fixture(scope="session")
def app_url(served_checkpoints, free_port, tmp_path_factory):
    """The web app, served in this process for the whole session, on the tiny checkpoints or on
    the folder APP_CHECKPOINTS names (APP_CHECKPOINTS=checkpoints takes the README's screenshots).
    Gradio's cache is a folder of the session's own, not the machine's /tmp/gradio."""
    from app import service, ui

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        # In development the tests share the CPU with training runs and browsers of a higher priority:
        # time budgets measured for a server's own CPU would stop the test app's honest requests.
        patch.setattr(service, "BUDGET_FACTOR", 100 * service.BUDGET_FACTOR)
        demo = ui.build(os.environ.get("APP_CHECKPOINTS") or served_checkpoints)
        yield ui.launch(demo, port=free_port())
        demo.close()
