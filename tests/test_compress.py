"""Lossless compression with the model: round trips bit for bit, and every broken .mbz refused
in one sentence. On conftest's tiny random checkpoints (P=4, a 512-byte context for text)."""

import io
import os
import subprocess
import sys
import tracemalloc
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import model.compress as mbz
from adapters import image
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
    decoded, layout = mbz.decompress(model, blob, SHA, adaptations=[adapt])
    assert layout == {"modality": "bytes"}
    return decoded


# Short segments, so that a few hundred bytes already go as several rows side by side.
# rows of 200 bytes, shorter than the test model's context, so that short inputs take several rows
few_segments = mock.patch.object(mbz, "segment_count", lambda n, context: max(1, min(mbz.MAX_SEGMENTS, n // 200)))


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
        monkeypatch.setattr(fused_step, "transformer_step", lambda *a, **k: pytest.fail("coding took the fused step"))
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


GENESIS = (ASSETS / "text/genesis.txt").read_bytes()[:600]


@pytest.fixture(scope="module")
def blob(text_model):
    return mbz.compress(text_model, GENESIS, SHA, {"modality": "text"})


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


def with_header(blob: bytes, header) -> bytes:
    """The .mbz with this header (as an attacker would write it), its payload kept."""
    return mbz.pack(header, blob[len(blob) - mbz.read_header(blob)["payload_bytes"] :])


def test_another_torch_version_is_refused(text_model, blob):
    assert "torch 1.0.0" in refusal(text_model, mbz.edited(blob, torch="1.0.0"))


# Every claim of a header is checked before any work that grows with it. (Issue 21: four edited
# copies of a real 5.8 KB .mbz held the server's scoring slots and grew it to 13 GB.)

# Python memory a decode may take: GENESIS's takes under 0.2 MB; the old decoder allocated a
# claimed length's bytes there (600 MB for the attacker's) before torch's rows.
MEMORY_BOUND = 4 << 20


@contextmanager
def bounded_work(model, max_length: int):
    """Fails, at once, what runs inside when it calls the model more than decoding max_length
    bytes needs (a local step a byte; Adaptation's SGD steps each time the window slides by
    half), and, after, when it took more than MEMORY_BOUND (tracemalloc). Yields the counts."""
    work = {"local steps": 0, "SGD steps": 0}
    most = {"local steps": max_length + model.patch_size,
            "SGD steps": mbz.Adaptation().steps * (max_length // (model.context // 2) + 1)}

    def counted(function, what, amount):
        def run(*args):
            work[what] += amount(args)
            assert work[what] <= most[what], f"{work[what]:,} {what}, more than {max_length:,} bytes need"
            return function(*args)
        return run

    tracemalloc.start()
    try:
        with mock.patch.object(mbz, "byte_logits", counted(mbz.byte_logits, "local steps", lambda args: 1)), \
                mock.patch.object(mbz, "adapt_model", counted(mbz.adapt_model, "SGD steps", lambda args: args[-1].steps)):
            yield work
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"{peak:,} bytes of Python memory"


def decoded_or_refused(model, blob: bytes) -> bytes | None:
    """What decompress gives for `blob` as a reader of at most len(GENESIS) bytes of text, or
    None where it refuses in one sentence of ours; within bounded_work."""
    with bounded_work(model, len(GENESIS)):
        try:
            return mbz.decompress(model, blob, SHA, max_length=len(GENESIS), layouts=[{"modality": "text"}])[0]
        except mbz.CompressError as e:
            assert str(e).endswith(".") and "\n" not in str(e)
            return None


# values near the real ones or the attackers': of the right type, they reach the checks of claims and the decoder
NEAR = {
    "checkpoint_sha256": st.sampled_from([SHA, "1" * 64]),
    "checkpoint": st.text(st.characters(min_codepoint=32), max_size=20),
    "torch": st.sampled_from([torch.__version__, "1.0.0"]),
    "isa": st.sampled_from(["avx2", "avx512"]),
    "length": st.integers(0, 2 * len(GENESIS)) | st.sampled_from([600_000_000, 10**12]),
    "crc32": st.integers(0, 2**32 - 1),
    "payload_bytes": st.integers(0, 2_000),
    "segments": st.integers(0, 40) | st.just(100_000_000),
    "threads": st.integers(0, 64),
    "adapt": st.sampled_from([None, asdict(mbz.Adaptation())])
    | st.fixed_dictionaries({"steps": st.integers(), "lr": st.floats()}),
    "layout": st.sampled_from([{"modality": "text"}, {"modality": "bytes"},
                               {"modality": "image", "image_size": 100_000, "image_order": "raster"}]),
}
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=6)


def header_edits(values: dict) -> st.SearchStrategy:
    """One to three header fields, each set to a value drawn from values[field]."""
    return st.lists(st.sampled_from(sorted(values)).flatmap(lambda key: st.tuples(st.just(key), values[key])),
                    min_size=1, max_size=3).map(dict)


@settings(max_examples=50, deadline=None)
@given(edits=header_edits(NEAR))
def test_a_header_edited_to_values_near_the_real_ones_is_refused_or_decodes_exactly(text_model, blob, edits):
    assert decoded_or_refused(text_model, mbz.edited(blob, **edits)) in (None, GENESIS)


@settings(max_examples=40, deadline=None)
@given(edits=header_edits(dict.fromkeys(mbz.HEADER_KEYS, JSON)), dropped=st.sampled_from(sorted(mbz.HEADER_KEYS)))
def test_a_header_edited_to_any_json_is_refused_or_decodes_exactly(text_model, blob, edits, dropped):
    assert decoded_or_refused(text_model, mbz.edited(blob, **edits)) in (None, GENESIS)
    header = mbz.read_header(blob)
    del header[dropped]
    assert decoded_or_refused(text_model, with_header(blob, header)) is None


@settings(max_examples=60, deadline=None)
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=4),
       cut=st.none() | st.integers(0, 10**6), header_size=st.none() | st.integers(0, 2**32 - 1))
def test_damaged_bytes_are_refused_or_decode_exactly(text_model, blob, flips, cut, header_size):
    """Bytes flipped anywhere (magic, version, header size, header, payload), the file cut short,
    or its header size field set to any 32-bit number."""
    damaged = bytearray(blob)
    for position, flip in flips:
        damaged[position % len(blob)] ^= flip
    if header_size is not None:
        damaged[5:9] = header_size.to_bytes(4, "little")
    if cut is not None:
        damaged = damaged[: cut % len(blob)]
    assert decoded_or_refused(text_model, bytes(damaged)) in (None, GENESIS)


@pytest.fixture(scope="module")
def packed(tiny_checkpoints):
    """A .mbz the app made, adapting (so that its header holds the settings), as the attacker's was."""
    return service.compress_bytes(GENESIS, "text", tiny_checkpoints / "text", adapt=True)


@pytest.mark.parametrize("fields, sentence", [
    ({"length": 600_000_000, "layout": {"modality": "image", "image_size": 100_000, "image_order": "raster"}},
     "The .mbz header is corrupt: its layout is not one its checkpoint writes."),
    ({"length": 600_000_000}, "This .mbz holds 600,000,000 bytes, more than the 10,000,000 allowed here."),
    ({"segments": 100_000_000},
     "The .mbz header is corrupt: it claims 100,000,000 segments, and 600 bytes are coded in 1."),
    ({"adapt": {"steps": 10**12, "lr": 0.1}},
     "The .mbz header is corrupt: its adaptation is not one its checkpoint is used with."),
    ({"threads": 64}, "The .mbz header is corrupt: it claims 64 threads, and .mbz files are coded on 1."),
], ids=["image of side 100,000", "600 MB", "1e8 segments", "1e12 SGD steps", "64 threads"])
def test_the_edited_copies_of_issue_21_are_refused_before_any_work(tiny_checkpoints, packed, fields, sentence):
    model, _ = service.load(tiny_checkpoints / "text")
    with bounded_work(model, 0) as work, pytest.raises(service.UserError) as refused:
        service.decompress(mbz.edited(packed, **fields), tiny_checkpoints / "text")
    assert str(refused.value) == sentence
    assert work == {"local steps": 0, "SGD steps": 0}


def test_a_huge_or_deep_header_is_refused_before_it_is_parsed(text_model, blob):
    huge = mbz.edited(blob, checkpoint="x" * 5_000_000)
    assert refusal(text_model, huge).startswith("The .mbz header is corrupt: it claims 5,000,")
    deep = b"[" * mbz.MAX_HEADER_BYTES
    nested = mbz.MAGIC + bytes([mbz.FORMAT_VERSION]) + len(deep).to_bytes(4, "little") + deep
    assert refusal(text_model, nested) == "The .mbz header is corrupt: it is not valid JSON."


def test_a_payload_that_cannot_code_its_length_is_refused(text_model, blob):
    empty = mbz.compress(text_model, b"", SHA, {"modality": "text"})  # its payload: the coder's 8-byte flush
    ten_mb = mbz.edited(empty, length=10_000_000, segments=mbz.segment_count(10_000_000, text_model.context))
    with bounded_work(text_model, 0):
        assert refusal(text_model, ten_mb) == "The .mbz file is corrupt: a payload of 8 bytes cannot code 10,000,000 bytes."
    payload_bytes = mbz.read_header(blob)["payload_bytes"]
    assert refusal(text_model, mbz.edited(blob, length=20)) == (
        f"The .mbz file is corrupt: a payload of {payload_bytes:,} bytes cannot code 20 bytes.")


def test_payload_bounds_hold_at_the_coders_extremes():
    """A byte as sure as float32 makes it, and one as wrong, coded n times: the payload stays in
    payload_bounds(n), and the intervals are what the bounds assume."""
    logits = torch.full((256,), -1e4)
    logits[65] = 1e4
    frequencies = [int(f) for f in mbz.cumulative_frequencies(logits)]
    total, sure, wrong = frequencies[-1], frequencies[66] - frequencies[65], frequencies[1] - frequencies[0]
    assert sure <= 2**24 + 3 and total - sure >= 255 and total < 2**24 + 2**9 and wrong >= 1
    for start, size in ((frequencies[65], sure), (0, wrong)):
        for n in (0, 1, 7, 1_000):
            encoder = mbz.RangeEncoder()
            for _ in range(n):
                encoder.encode(start, size, total)
            fewest, most = mbz.payload_bounds(n)
            assert fewest <= len(encoder.finish()) <= most


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


def test_cli_decompresses_up_to_max_bytes_and_says_how_to_raise_it(tiny_checkpoints, tmp_path, capsys):
    from app import cli

    packed = tmp_path / "genesis.txt.mbz"
    packed.write_bytes(service.compress_bytes(GENESIS, "text", tiny_checkpoints / "text"))
    crafted = tmp_path / "crafted.mbz"
    crafted.write_bytes(mbz.edited(packed.read_bytes(), length=600_000_000))
    for file, cap, limit in ((packed, ["--max-bytes", "599"], 599), (crafted, [], mbz.MAX_LENGTH)):
        with pytest.raises(SystemExit):
            cli.main(["decompress", str(file), "--checkpoint", str(tiny_checkpoints / "text"), *cap])
        length = mbz.read_header(file.read_bytes())["length"]
        assert capsys.readouterr().err.strip() == (
            f"error: {file} holds {length:,} bytes, over the limit of {limit:,}; pass --max-bytes {length} "
            "to decompress it all (a progress bar shows the time left).")
    cli.main(["decompress", str(packed), "--checkpoint", str(tiny_checkpoints / "text"), "--max-bytes", "600"])
    assert (tmp_path / "genesis.txt").read_bytes() == GENESIS


def test_adapt_learns_audio_at_its_own_rate_and_decodes(tiny_checkpoints):
    folder = tiny_checkpoints / "audio"
    _, layout = service.load_for("audio", folder)
    data = service.encode_file(ASSETS / "audio" / "ambi_choir.flac", layout, max_audio_seconds=0.25)
    blob = service.compress_bytes(data, "audio", folder, adapt=True)
    assert service.read_mbz_header(blob)["adapt"]["lr"] == service.ADAPT_RATES["audio"] != mbz.Adaptation.lr
    assert service.decompress(blob, folder).data == data


def test_short_inputs_go_as_several_rows_and_long_ones_as_rows_a_context_long():
    """One row codes a byte per model call, so 16 KB goes as 8 rows of 2 KiB whatever the
    context (the bits that costs: bench/results/speed.md); beyond 8 rows, rows are at least a
    context long, so a long-context checkpoint reads as much of the past as it can."""
    assert mbz.segment_count(16_384, 2048) == mbz.segment_count(16_384, 131072) == 8
    assert mbz.segment_count(4_095, 2048) == 1
    assert mbz.segment_count(1_000_000, 2048) == mbz.MAX_SEGMENTS
    assert mbz.segment_count(1_000_000, 65536) == 15
    assert mbz.segment_count(1_000_000, 131072) == 8  # 7 rows a context long would code fewer bytes a call
    # each row holds a whole context's KV cache: a 10 MB claim on a long context gets 8 rows, not 64
    assert mbz.segment_count(10_000_000, 131072) == 8
    assert mbz.segment_count(10_000_000, 65536) == 16
    assert mbz.segment_count(10_000_000, 2048) == mbz.MAX_SEGMENTS


def test_decompress_takes_one_cached_local_step_per_byte(text_model):
    """The decoder keeps the local model's cache: one call per byte of a row, over that byte
    alone, never the patch again; and compress makes the same calls."""
    data = (ASSETS / "text/genesis.txt").read_bytes()[:1000]
    blob = mbz.compress(text_model, data, SHA, {"modality": "text"})
    rows, _ = mbz.split_rows(data, mbz.read_header(blob)["segments"], text_model.patch_size)
    shapes = []
    forward = text_model.local_model.forward

    def recorded(x, cache=None, positions=None, fused=False):
        shapes.append((x.shape[1], cache is not None))
        return forward(x, cache, positions, fused)

    with mock.patch.object(text_model.local_model, "forward", recorded):
        assert mbz.decompress(text_model, blob, SHA)[0] == data
        decoded = list(shapes)
        shapes.clear()
        assert mbz.compress(text_model, data, SHA, {"modality": "text"}) == blob
    assert decoded == shapes == [(1, True)] * rows.shape[1]


def test_a_file_of_the_old_format_is_refused(text_model, blob):
    old = blob[:4] + bytes([1]) + blob[5:]
    assert refusal(text_model, old) == f"This .mbz file has format version 1; this program reads version {mbz.FORMAT_VERSION}."
