"""Lossless compression with the model: round trips bit for bit, and every broken .mbz refused
in one sentence. On conftest's tiny random checkpoints (P=4, a 512-byte context for text)."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import model.compress as mbz
from adapters import Layout, image
from app import service
from model import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
SHA = "0" * 64


@pytest.fixture(scope="module")
def text_model(tiny_checkpoints):
    model, _ = load_checkpoint(tiny_checkpoints / "text")
    return model


def round_trip(model, data: bytes, adapt=None) -> bytes:
    blob = mbz.compress(model, data, SHA, {"modality": "bytes"}, adapt=adapt)
    decoded, layout = mbz.decompress(model, blob, SHA)
    assert layout == {"modality": "bytes"}
    return decoded


# Short segments, so that a few hundred bytes already go as several rows side by side.
few_segments = mock.patch.object(mbz, "SEGMENT_BYTES", 200)


@settings(max_examples=20, deadline=None)
@given(data=st.binary(max_size=700))
def test_any_bytes_come_back_exactly(text_model, data):
    with few_segments:
        assert round_trip(text_model, data) == data


@pytest.mark.parametrize("data", [
    b"",
    b"\x00",
    b"abcde",  # 5: not a multiple of P=4
    bytes(range(256)) * 3,  # every byte value, 768 bytes: longer than the 512-byte context
    (b"In the beginning God created the heaven and the earth. " * 30)[:1301],  # slides twice, odd length
])
def test_edge_cases_come_back_exactly(text_model, data):
    assert round_trip(text_model, data) == data
    with few_segments:
        assert round_trip(text_model, data) == data


def test_the_fused_decoding_step_never_codes(text_model, monkeypatch):
    """A .mbz made where the fused C++ step is built decodes where it is not, and is the same
    file: lossless coding keeps to torch's layers, whose floats every build shares."""
    from model import fused_step

    assert fused_step.build()
    data = bytes(range(256)) * 3
    with few_segments:
        made_with_it = mbz.compress(text_model, data, SHA, {"modality": "bytes"})
        monkeypatch.setattr(fused_step, "_built", False)
        assert mbz.compress(text_model, data, SHA, {"modality": "bytes"}) == made_with_it
        assert mbz.decompress(text_model, made_with_it, SHA)[0] == data


def test_adapting_model_comes_back_exactly_and_leaves_the_model_alone(text_model):
    data = (ASSETS / "text/sonnets.txt").read_bytes()[:1500]
    before = {k: v.clone() for k, v in text_model.state_dict().items()}
    with few_segments:
        assert round_trip(text_model, data, mbz.Adaptation(steps=2, lr=0.01)) == data
    assert all((v == before[k]).all() for k, v in text_model.state_dict().items())


def test_adapting_changes_the_bits(text_model):
    data = (ASSETS / "text/genesis.txt").read_bytes()[:1500]
    plain = mbz.coded_scores(text_model, data).surprisal
    adapted = mbz.coded_scores(text_model, data, mbz.Adaptation(lr=0.1)).surprisal
    assert (plain[:512] == adapted[:512]).all()  # the first window is read before any learning
    assert adapted[1024:].sum() < plain[1024:].sum()


def test_size_is_the_models_bits_plus_the_header(text_model):
    data = (ASSETS / "text/genesis.txt").read_bytes()
    blob = mbz.compress(text_model, data, SHA, {"modality": "text"})
    header_bytes = len(blob) - mbz.read_header(blob)["payload_bytes"]
    model_bytes = mbz.coded_scores(text_model, data).surprisal.sum() / 8
    assert len(blob) - header_bytes <= model_bytes * 1.005 + 8  # the coder's final flush is 8 bytes


@pytest.mark.parametrize("name", ["text/genesis.txt", "images/astronaut.png", "audio/ambi_choir.flac"])
def test_assets_come_back_as_their_adapter_coded_them(tiny_checkpoints, name):
    modality = {"text": "text", "images": "image", "audio": "audio"}[name.split("/")[0]]
    folder = tiny_checkpoints / modality
    _, layout = service.load_for(modality, folder)
    data = service.encode_file(ASSETS / name, layout, max_audio_seconds=0.25 if modality == "audio" else None)
    result = service.decompress(service.compress_bytes(data, modality, folder), folder)
    assert result.data == data
    if modality == "image":
        assert image.encode(Image.open(io.BytesIO(result.content)), layout) == data
        assert result.suffix == ".png"
    if modality == "audio":
        assert result.content[:4] == b"RIFF" and result.suffix == ".wav"


@pytest.fixture(scope="module")
def blob(text_model):
    return mbz.compress(text_model, (ASSETS / "text/genesis.txt").read_bytes()[:600], SHA, {"modality": "text"})


def refusal(model, blob, sha=SHA) -> str:
    with pytest.raises(mbz.CompressError) as caught:
        mbz.decompress(model, blob, sha)
    message = str(caught.value)
    assert message.endswith(".") and "\n" not in message
    return message


def test_a_flipped_bit_in_the_payload_is_refused(text_model, blob):
    payload_start = len(blob) - mbz.read_header(blob)["payload_bytes"]
    # (the last few bytes are the coder's flush, below the precision any symbol needs)
    for position in (payload_start, payload_start + 100, len(blob) - 60):
        broken = bytearray(blob)
        broken[position] ^= 0x10
        assert "corrupt" in refusal(text_model, bytes(broken))


def test_another_checkpoint_is_refused(text_model, blob):
    assert "another checkpoint" in refusal(text_model, blob, sha="1" * 64)


def test_a_truncated_file_is_refused(text_model, blob):
    for length in (len(blob) - 1, len(blob) // 2, 20, 6):
        assert "truncated" in refusal(text_model, blob[:length])
    assert "not a .mbz" in refusal(text_model, b"PK\x03\x04 a zip file")


def test_another_torch_version_is_refused(text_model, blob):
    header = mbz.read_header(blob)
    payload = blob[len(blob) - header["payload_bytes"] :]
    encoded = json.dumps({**header, "torch": "1.0.0"}).encode()
    other = mbz.MAGIC + bytes([mbz.FORMAT_VERSION]) + len(encoded).to_bytes(4, "little") + encoded + payload
    assert "torch 1.0.0" in refusal(text_model, other)


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cli_round_trip_gives_the_file_back(tiny_checkpoints, tmp_path):
    original = tmp_path / "sonnets.txt"
    original.write_bytes((ASSETS / "text/sonnets.txt").read_bytes())
    done = run_cli("compress", original, "--checkpoint", tiny_checkpoints / "text")
    assert done.returncode == 0, done.stderr
    packed = tmp_path / "sonnets.txt.mbz"
    assert packed.exists() and "bits per byte" in done.stdout
    again = run_cli("decompress", packed, "--checkpoint", tiny_checkpoints / "text")
    assert again.returncode == 1 and again.stderr.strip() == (
        f"error: {original} already exists; name the output with -o to replace it.")
    original.unlink()
    again = run_cli("decompress", packed, "--checkpoint", tiny_checkpoints / "text")
    assert again.returncode == 0, again.stderr
    assert original.read_bytes() == (ASSETS / "text/sonnets.txt").read_bytes()


def test_cli_refuses_another_checkpoint_in_one_line(tiny_checkpoints, tmp_path, capsys):
    from app import cli

    packed = tmp_path / "genesis.mbz"
    packed.write_bytes(service.compress_bytes(b"In the beginning", "text", tiny_checkpoints / "text"))
    with pytest.raises(SystemExit):
        cli.main(["decompress", str(packed), "--checkpoint", str(tiny_checkpoints / "audio")])
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "another checkpoint (text, sha256" in error[0]


def test_adapt_learns_audio_at_its_own_rate_and_decodes(tiny_checkpoints):
    folder = tiny_checkpoints / "audio"
    _, layout = service.load_for("audio", folder)
    data = service.encode_file(ASSETS / "audio" / "ambi_choir.flac", layout, max_audio_seconds=0.25)
    blob = service.compress_bytes(data, "audio", folder, adapt=True)
    assert service.read_mbz_header(blob)["adapt"]["lr"] == service.ADAPT_RATES["audio"] != mbz.Adaptation.lr
    assert service.decompress(blob, folder).data == data
