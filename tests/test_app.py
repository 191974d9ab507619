"""The web app through gradio_client, as an API user sees it: every endpoint, good files and bad.

The app serves tiny random checkpoints (tests/conftest.py), so the results are noise, but
their shapes, sizes and the bytes the user kept are exactly what a trained model gives.
"""

import base64
import html
import io
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import numpy as np
import pytest
import soundfile as sf
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import model.compress as mbz
from app import handlers, limits, service, ui, views

ASSETS = service.ROOT / "assets"
PHOTO = ASSETS / "images" / "chelsea.png"
CLIP = ASSETS / "audio" / "guit_em9.flac"
SHOWN = 8  # the app shows 32x32 images enlarged 8 times
HELD_SECONDS = 120  # a held request's own deadline, so that a failing test cannot hold the app for good


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    files = {
        "empty.png": b"",
        "truncated.png": PHOTO.read_bytes()[:2000],
        "noise.png": np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        "noise.bin": np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        "big.bin": bytes(limits.MAX_UPLOAD_MB * 2**20 + 1),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def still_serves(client):
    summary, *_ = client.predict("still there?", None, "auto", api_name="/explore")
    assert summary.startswith("Scored 12 bytes as text")


def test_every_endpoint_is_named_in_the_api(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/complete_image", "/continue_audio", "/explore", "/compress"}
    for endpoint in endpoints.values():  # names a client can read, not Gradio's value_20
        names = [p["parameter_name"] for p in endpoint["parameters"]] + [r["label"] for r in endpoint["returns"]]
        assert all(name and not name.startswith("value_") for name in names), names
        assert "checkpoint" in names


def test_image_completion_streams_rows_and_keeps_the_top(client):
    rows, samples = 20, 3
    job = client.submit(handle_file(PHOTO), rows, samples, 1.0, 0, 7, "image", api_name="/complete_image")
    original, gallery, heat, summary = job.result()
    assert len(job.outputs()) == 1 + 32 - rows  # the prompt alone, then one update per generated row
    top = pixels(original)
    assert top.shape == (32 * SHOWN, 32 * SHOWN, 3)
    assert len(gallery) == samples
    for item in gallery:
        completion = pixels(item["image"])
        assert completion.shape == top.shape
        assert np.array_equal(completion[: rows * SHOWN], top[: rows * SHOWN])
        magenta = np.all(completion[rows * SHOWN :] == (255, 0, 255), axis=-1)
        assert not magenta.all(axis=1).any()  # every generated row is there
    assert pixels(heat).shape[0] > 100  # a readable plot, with its colour bar
    assert "PNG" in summary and "WebP" in summary and "Generated 12 of 12 rows" in summary


def test_the_image_view_completes_with_auto_or_any_checkpoint(client, tiny_checkpoints):
    studio = handlers.Studio(tiny_checkpoints)
    assert studio.choices("image") == [("tiny random emoji model", "emoji"), ("tiny random image model", "image")]
    assert studio.rows_range("auto").high == 31  # the raster checkpoint's; emoji's 2×2 blocks keep at most 30
    for checkpoint in ("emoji", "image"):
        original, gallery, _, summary = client.predict(handle_file(PHOTO), 30, 1, 1.0, 0, 0, checkpoint,
                                                       api_name="/complete_image")
        assert len(gallery) == 1 and "Generated" in summary and f"Completed with {checkpoint}." in summary
    with pytest.raises(AppError, match="Checkpoint: there is no image checkpoint called 'text'"):
        client.predict(handle_file(PHOTO), 16, 1, 1.0, 0, 0, "text", api_name="/complete_image")


def test_auto_completes_with_the_checkpoint_least_surprised_by_the_upload(client, served_checkpoints):
    chosen = service.choose_checkpoint(PHOTO, "image", [served_checkpoints / "emoji", served_checkpoints / "image"])
    *_, summary = client.predict(handle_file(PHOTO), 16, 1, 1.0, 0, 0, api_name="/complete_image")  # auto: the default
    ranking = " · ".join(f"{fit.folder.name} {fit.bits_per_byte:.2f}" for fit in chosen.fits)
    assert re.search(rf"Auto: {ranking} bits per subpixel: completed with {chosen.folder.name} "
                     r"\(chosen in \d+\.\d s\)\.", summary), summary
    *_, summary = client.predict(handle_file(PHOTO), 31, 1, 1.0, 0, 0, api_name="/complete_image")
    assert "Auto: image " in summary and "completed with image" in summary  # emoji's blocks cannot keep 31 rows
    *_, summary = client.predict(handle_file(CLIP), 6, 0.25, 1.0, 0, 0, api_name="/continue_audio")
    assert "Auto: audio_long " in summary and "continued with audio_long" in summary  # the one context for 6 s


def test_examples_follow_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(handlers, "ASSETS", tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "photo.png").write_bytes(b"")
    assert [Path(p).name for p in handlers.example_files(["emoji"], "image")] == ["photo.png"]  # none of its own yet
    (tmp_path / "emoji").mkdir()
    (tmp_path / "emoji" / "smile.png").write_bytes(b"")
    assert [Path(p).name for p in handlers.example_files(["emoji"], "image")] == ["smile.png"]
    assert [Path(p).name for p in handlers.example_files(["image"], "image")] == ["photo.png"]
    assert [Path(p).name for p in handlers.example_files(["emoji", "image"], "image")] == ["smile.png", "photo.png"]  # auto's


def test_audio_continuation_plays_prompt_then_continuation(client, monkeypatch):
    # every part reported, the first ones empty while steering draws its first chunk
    monkeypatch.setattr(handlers, "PROGRESS_EVERY_SECONDS", 0)
    wav, wave_plot, measures, curve_plot, summary = client.predict(
        handle_file(CLIP), 1.0, 0.25, 1.0, 0, 0, api_name="/continue_audio")
    audio, rate = sf.read(wav, dtype="int16")
    assert rate == 8000 and len(audio) == 8000 + 2000
    assert np.abs(audio[:8000]).max() > 1000  # the guitar, not silence
    assert pixels(wave_plot).shape[0] > 100 and pixels(curve_plot).shape[0] > 100
    assert "Prompt: 1.00 s" in summary and "Generated 0.25 of 0.25 s" in summary and "bytes/s" in summary and "decoder: eager, " in summary
    for measure in ("Spectral flatness", "Similarity to the prompt's last second", "Loudness drift"):
        assert measure in measures
    # steered by default (adapters.audio.steering), and the summary says so; off, one draw
    assert "Drawn by min_p 0.1, steered best of 8 per 0.125 s, timbre weight 4 (8 candidates drawn for each byte kept)." in summary
    *_, summary = client.predict(handle_file(CLIP), 1.0, 0.25, 1.0, 0, 0, "auto", False, api_name="/continue_audio")
    assert "Drawn by min_p 0.1." in summary


@pytest.fixture
def held_generations(monkeypatch):
    """Every generation of the app (served in this process) yields silence until its client stops
    it, so that it lasts as long as the test needs on any machine; gives the list of those stopped."""
    stopped = []

    def continue_bytes(model, prompt, new_bytes, samples, *args, **kwargs):
        deadline = time.monotonic() + HELD_SECONDS
        try:
            while time.monotonic() < deadline:
                time.sleep(0.05)
                yield np.full((samples, 1), 0xFF, np.uint8)
        except GeneratorExit:
            stopped.append(True)
            raise

    monkeypatch.setattr(service, "continue_bytes", continue_bytes)
    return stopped


def generating(job) -> bool:
    return len(job.outputs()) > 1  # the prompt's analysis comes first, then the generation's progress


def test_stop_ends_a_generation_and_the_server_goes_on(client, held_generations, monkeypatch, wait_until):
    job = client.submit(handle_file(CLIP), 1.0, limits.MAX_CONTINUE_SECONDS, 1.0, 0, 0, api_name="/continue_audio")
    wait_until(lambda: generating(job), "the generation to start")
    job.cancel()
    wait_until(lambda: held_generations, "the generation to stop")
    monkeypatch.undo()
    wav, *_ = client.predict(handle_file(CLIP), 0.5, 0.25, 1.0, 0, 0, api_name="/continue_audio")
    assert len(sf.read(wav)[0]) == 4000 + 2000


def test_scoring_does_not_wait_behind_generations(client, held_generations, wait_until):
    held = [client.submit(handle_file(CLIP), 1.0, 1.0, 1.0, 0, seed, api_name="/continue_audio") for seed in (1, 2)]
    try:
        wait_until(lambda: all(generating(job) for job in held), "both generations to take the generation slots")
        summary, *_ = client.submit("quick", None, "auto", api_name="/explore").result(timeout=HELD_SECONDS / 2)
        assert summary.startswith("Scored 5 bytes")
    finally:
        for job in held:
            job.cancel()
    wait_until(lambda: len(held_generations) == 2, "both generations to stop")


def test_stop_ends_an_explorer_request_and_the_server_goes_on(client, monkeypatch, wait_until):
    scoring, stopped, score = threading.Event(), [], service.score

    def endless_score(model, data, progress, **options):  # reports progress until stopped
        scoring.set()
        deadline = time.monotonic() + HELD_SECONDS
        try:
            while time.monotonic() < deadline:
                time.sleep(0.05)
                progress(0, len(data))
        except handlers.Stopped:
            stopped.append(True)
            raise
        return score(model, data, **options)

    monkeypatch.setattr(service, "score", endless_score)
    job = client.submit("stop me", None, "auto", api_name="/explore")
    wait_until(lambda: scoring.is_set() and job.outputs(), "the scoring to start")  # a first value: it can stop
    job.cancel()
    wait_until(lambda: stopped, "the scoring to stop", seconds=HELD_SECONDS / 2)
    monkeypatch.undo()
    still_serves(client)


def test_explore_text_colours_every_character(client):
    text = 'naïve <b>bold</b> & "quotes" ☃\n\tend'
    summary, page, chart, positions, context, table, download = client.predict(text, None, "auto", api_name="/explore")
    assert summary.startswith(f"Scored {len(text.encode())} bytes as text")
    body = page[page.index('class="surprisal-text"') :]
    shown = [html.unescape(char) for char in re.findall(r'<span [^>]*title="[^"]*">(.*?)</span>', body, re.S)]
    assert shown == list(text)  # one span per character
    assert "<b>" not in page  # the text is shown, never run as HTML
    assert "expected:" in page  # the model's guesses, on hover
    assert all(pixels(plot).shape[0] > 100 for plot in (chart, positions, context))
    coders = [name for name, _ in table["data"]]
    assert coders == ["this model", "gzip -9", "xz -9e"]
    assert download is None  # a download only for a .mbz


@pytest.mark.parametrize("path, kind, coders", [
    (ASSETS / "text" / "sonnets.txt", "text", 3),
    (PHOTO, "image", 5),  # and PNG, WebP
    (CLIP, "audio", 3),
])
def test_explore_reads_files_by_their_kind(client, path, kind, coders):
    summary, page, chart, positions, context, table, _ = client.predict(None, handle_file(path), "auto",
                                                                        api_name="/explore")
    assert f"as {kind} with the {'emoji' if kind == 'image' else kind} model" in summary
    assert len(table["data"]) == coders
    assert all(pixels(plot).shape[0] > 100 for plot in (chart, positions, context))
    assert ("surprisal-text" in page) == (kind == "text")
    assert "An entropy patcher with the same mean patch size would cut" in summary


def test_explore_shows_the_image_it_scored_and_how_the_file_became_bytes(client):
    summary, page, *_ = client.predict(None, handle_file(PHOTO), "auto", "image", api_name="/explore")
    width, height = Image.open(PHOTO).size
    assert f"The PNG file ({PHOTO.stat().st_size:,} bytes, {width}×{height}) became 3,072 bytes" in summary
    assert "with the image model" in summary
    shown = Image.open(io.BytesIO(base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', page)[1])))
    assert shown.size == (32 * SHOWN, 32 * SHOWN)  # the 32x32 image the model read, enlarged


def test_explore_counts_bytes_not_characters_and_cuts_nothing(client):
    with pytest.raises(AppError) as caught:
        client.predict("é" * (limits.MAX_SCORE_BYTES // 2 + 1), None, "auto", api_name="/explore")
    assert f"The input is {limits.MAX_SCORE_BYTES + 2:,} bytes" in str(caught.value)
    summary, *_ = client.predict("é" * 1000, None, "auto", api_name="/explore")
    assert summary.startswith("Scored 2,000 bytes as text")  # the cap itself: a million-byte test below


def test_explore_shows_raw_bytes_as_coloured_hex(client, bad_files):
    summary, page, *_ = client.predict(None, handle_file(bad_files / "noise.bin"), "auto", api_name="/explore")
    assert "3,000 bytes as bytes with the text model" in summary
    assert len(re.findall(r"<span [^>]*title=", page[page.index("surprisal-hex") :])) == 3000


def shown_characters(page: str) -> str:
    """The characters a coloured text shows, one a span."""
    body = page[page.index('class="surprisal-text"') :]
    return "".join(html.unescape(c) for c in re.findall(r'<span [^>]*title="[^"]*">(.*?)</span>', body, re.S))


def shown_bytes(page: str) -> tuple[int, int]:
    """[start, end) of the window a page colours, from its heading."""
    start, last = re.search(r"Bytes ([\d,]+)–([\d,]+) of", page).groups()
    return int(start.replace(",", "")), int(last.replace(",", "")) + 1


def test_explore_scores_a_million_bytes_whole_and_colours_one_window_at_a_time(tiny_checkpoints, monkeypatch):
    line = "Shall I compare thee to a summer’s day? Thou art more lovely — and more temperate.\n"
    copies = limits.MAX_SCORE_BYTES // len(line.encode())
    text = line * copies + "x" * (limits.MAX_SCORE_BYTES - copies * len(line.encode()))  # exactly the cap
    data = text.encode()
    scorings, score_bytes = [], service.score_bytes
    monkeypatch.setattr(service, "score_bytes", lambda *args, **kwargs: scorings.append(1) or score_bytes(*args, **kwargs))
    studio = handlers.Studio(tiny_checkpoints)
    summary, page, chart, positions, context, table, download, explored = studio.explore_now(text, None, "auto")
    assert summary.startswith(f"Scored {limits.MAX_SCORE_BYTES:,} bytes as text")  # nothing cut
    assert explored.scored.data == data and np.isfinite(explored.scored.scores.surprisal).all()
    assert chart.width == views.CHART_WIDTH * views.DPI and context.height > 100  # the whole input, drawn
    assert len(page.encode()) < 1_000_000  # one window, not a million spans
    assert shown_bytes(page) == (0, limits.DETAIL_BYTES) and shown_characters(page) == data[:limits.DETAIL_BYTES].decode()
    # Another window, by its start or by a click on the chart, from the scores kept: no scoring again.
    middle = SimpleNamespace(index=[chart.width * (views.CHART_LEFT + views.CHART_RIGHT) / 2, 100])
    for start, page in [(500_000, studio.window(explored, 500_000)), studio.pick_window(explored, middle)]:
        first, end = shown_bytes(page)
        assert start - 3 <= first <= start < end <= first + limits.DETAIL_BYTES  # from a whole character on
        assert shown_characters(page) == data[first:end].decode()
    assert abs(start - (500_000 - limits.DETAIL_BYTES // 2)) <= 1  # the click: the window around the byte under it
    assert shown_bytes(studio.window(explored, limits.MAX_SCORE_BYTES - 1))[1] == limits.MAX_SCORE_BYTES  # the end
    with pytest.raises(gr.Error, match="Window start: at most 999,999."):
        studio.window(explored, limits.MAX_SCORE_BYTES)
    assert len(scorings) == 1


def test_a_window_starts_on_a_whole_character_or_a_line_of_the_hex_dump():
    data = "aé☃b".encode()  # a at 0, é at 1-2, ☃ at 3-5, b at 6
    assert views.window_bounds(data, 2, 3, "text") == (1, 3)  # é, whole; ☃ would not fit whole
    assert views.window_bounds(data, 5, 100, "text") == (0, 7)  # all of a short input
    assert views.window_bounds(bytes(100), 40, 16, "bytes") == (32, 56)
    assert views.window_bounds(bytes(100), 95, 16, "bytes") == (64, 100)  # at the end: the last bytes, whole lines


def test_a_click_on_the_chart_picks_the_byte_under_it():
    n = 1_000_000
    assert views.bar_bytes(n, 8) == 2000  # 500 bars, each the mean of 250 patches
    chart = np.asarray(views.patch_chart(np.full(n, 4.0, np.float32), 8))
    red = (chart[..., 0] > 150) & (chart[..., 1] < 130) & (chart[..., 2] < 130)
    columns = np.flatnonzero(red[: chart.shape[0] // 2].any(axis=0))  # the bars, above the patch strip
    assert views.byte_at(columns[0], n) < n / 200 and views.byte_at(columns[-1], n) > n - n / 200
    assert views.byte_at(0, n) == 0 and views.byte_at(chart.shape[1], n) == n - 1


def test_the_context_chart_places_each_byte_in_the_window_that_scored_it():
    # windows of 4 bytes over 10: the first scores all of its bytes, each later one its second half
    assert views.context_positions(10, 4).tolist() == [0, 1, 2, 3, 2, 3, 2, 3, 2, 3]
    surprisal = (8 / np.sqrt(1 + views.context_positions(100_000, 2048))).astype(np.float32)
    chart = np.asarray(views.context_chart(surprisal, 2048))
    red = (chart[..., 0] > 150) & (chart[..., 1] < 130) & (chart[..., 2] < 130)
    tops = [np.flatnonzero(red[:, column]).min() for column in np.flatnonzero(red.any(axis=0))]
    assert tops[0] < tops[-1]  # more context, fewer bits: the line falls from left to right


def test_audio_is_taken_up_to_what_the_checkpoints_context_holds(client, served_checkpoints):
    assert limits.prompt_seconds(131_072 / 8000).high == 16  # the long melody model
    assert limits.prompt_seconds(4096 / 8000).high == limits.SHORT_CONTEXT_AUDIO_SECONDS  # a short one: still 5 s
    studio = handlers.Studio(served_checkpoints)
    assert studio.prompt_range("audio_long").high == 8 and studio.prompt_range("audio").high == 5
    assert studio.prompt_range("auto").high == 8  # auto then chooses among those that take the prompt
    summary, *_ = client.predict(None, handle_file(CLIP), "auto", "audio_long", api_name="/explore")
    assert "became 64,000 bytes: its first 8 s" in summary


COMPRESSED = re.compile(r"Compressed with this model: ([\d,]+) bytes \((\d+)% of xz -9e\) "
                        r"for the ([\d,]+) bytes of text")


def test_compress_makes_a_mbz_that_gives_back_the_bytes_and_the_explorer_opens_it(client, tiny_checkpoints):
    text = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
    data = text.encode()
    line, packed = client.predict(text, None, "auto", "auto", api_name="/compress")
    size, percent, read = COMPRESSED.search(line).groups()
    blob = Path(packed).read_bytes()
    assert Path(packed).name == "text.mbz" and int(size.replace(",", "")) == len(blob) and int(read) == len(data)
    assert abs(int(percent) - 100 * len(blob) / service.xz_size(data)) <= 0.5  # xz on the same bytes
    assert service.decompress(packed, tiny_checkpoints / "text").data == data
    # The .mbz uploaded to the explorer: what it held, as a download, and scored.
    summary, page, *_, download = client.predict(None, handle_file(packed), "auto", api_name="/explore")
    assert Path(download).name == "text.txt" and Path(download).read_bytes() == data
    assert f"Decompressed text.mbz ({len(blob):,} bytes) with the text checkpoint" in summary
    assert f"{len(data):,} bytes of text" in summary and f"Scored {len(data)} bytes as text" in summary
    assert "surprisal-text" in page
    with pytest.raises(AppError, match="This file is a .mbz already: Score decompresses it."):
        client.predict(None, handle_file(packed), "auto", api_name="/compress")


def test_an_uploaded_mbz_is_named_after_the_file_it_holds(client, tmp_path):
    raw = tmp_path / "noise.bin"
    raw.write_bytes(bytes(range(256)) * 2)
    line, packed = client.predict(None, handle_file(raw), "auto", "auto", api_name="/compress")
    assert Path(packed).name == "noise.bin.mbz" and "for the 512 bytes of bytes it read" in line
    summary, page, *_, download = client.predict(None, handle_file(packed), "auto", api_name="/explore")
    assert Path(download).name == "noise.bin" and Path(download).read_bytes() == raw.read_bytes()
    assert "surprisal-hex" in page


def test_an_image_mbz_decompresses_to_the_png_the_model_read(client, tiny_checkpoints):
    line, packed = client.predict(None, handle_file(PHOTO), "auto", "auto", api_name="/compress")
    assert Path(packed).name == "chelsea.png.mbz" and "the image is coded as 32×32 RGB pixels" in line
    summary, *_, download = client.predict(None, handle_file(packed), "auto", api_name="/explore")
    assert Path(download).name == "chelsea.png" and "3,072 bytes of image" in summary
    assert Path(download).read_bytes() == service.decompress(packed, tiny_checkpoints / "emoji").content
    assert Image.open(download).size == (32, 32)


def mbz_header(**fields) -> bytes:
    """A .mbz with only a header (and no payload): enough for the checks made before decoding."""
    header = {"checkpoint_sha256": "0" * 64, "checkpoint": "elsewhere", "layout": {"modality": "text"}, "length": 10,
              "crc32": 0, "payload_bytes": 0, "segments": 1, "threads": 1, "torch": "", "isa": "", "adapt": None,
              **fields}
    return mbz.pack(header, b"")


def test_a_bad_mbz_gets_one_sentence(client, tmp_path, tiny_checkpoints):
    text = "a short text to pack"
    _, packed = client.predict(text, None, "auto", "auto", api_name="/compress")
    blob = Path(packed).read_bytes()
    files = {
        "cut.mbz": (blob[:-3], "The .mbz file is truncated: 3 bytes of its payload are missing."),
        "header.mbz": (blob[:20], "The .mbz file is truncated: its header is incomplete."),
        "other.mbz": (mbz_header(), "This .mbz was made with a checkpoint (elsewhere, sha256 000000000000...) "
                                    "that this app does not serve."),
        "types.mbz": (mbz_header(length="ten"), "The .mbz header is corrupt: its fields do not have the types"),
        "long.mbz": (mbz_header(length=limits.MAX_SCORE_BYTES + 1,
                                checkpoint_sha256=service.checkpoint_sha256(tiny_checkpoints / "text")),
                     "This .mbz holds 1,000,001 bytes of text; the explorer decompresses at most 1,000,000"),
    }
    for name, (data, message) in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(AppError) as caught:
            client.predict(None, handle_file(tmp_path / name), "auto", api_name="/explore")
        assert message in str(caught.value) and "\n" not in str(caught.value), (name, str(caught.value))
    summary, *_ = client.predict(None, handle_file(tmp_path / "cut.mbz"), "bytes", api_name="/explore")
    assert summary.startswith(f"Scored {len(blob) - 3} bytes as bytes")  # read as bytes, a .mbz is only bytes


def files_in(folder: Path) -> set[Path]:
    return {Path(parent, name) for parent, _, files in os.walk(folder) for name in files}


@pytest.mark.slow
def test_fifty_requests_leave_no_files_behind(tiny_checkpoints, free_port, tmp_path, monkeypatch, wait_until):
    """What the requests leave in the temp dir and Gradio's cache (in an app with both of its own,
    to count them) goes once past its age: an hour in the app, seconds here."""
    cache, temp = tmp_path / "gradio", tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(ui, "KEEP_FILES_SECONDS", 3)
    monkeypatch.setattr(ui, "SWEEP_EVERY_SECONDS", 1)
    demo = ui.build(tiny_checkpoints)
    try:
        client = Client(ui.launch(demo, port=free_port()), verbose=False, download_files=False)
        kept = files_in(cache)  # the examples, cached as the app was built
        for number in range(25):
            text = f"request {number}, a text of its own"
            client.predict(text, None, "auto", api_name="/explore")  # plots
            client.predict(text, None, "auto", "auto", api_name="/compress")  # a download
        assert files_in(cache) - kept  # what they made is there until it is old
        wait_until(lambda: files_in(cache) <= kept and not files_in(temp), "the files to go", seconds=60)
    finally:
        demo.close()


def test_decompressed_files_are_named_as_the_command_line_names_them():
    assert handlers.decompressed_name("photo.jpg.mbz", ".png", "image") == "photo.png"
    assert handlers.decompressed_name("clip.flac.mbz", ".wav", "audio") == "clip.wav"
    assert handlers.decompressed_name("notes.md.mbz", "", "text") == "notes.md"
    assert handlers.decompressed_name("text.mbz", "", "text") == "text.txt"
    assert handlers.decompressed_name("packed", "", "bytes") == "packed.out"


def bad_requests(files):
    photo, clip = handle_file(PHOTO), handle_file(CLIP)
    image = [16, 2, 1.0, 0, 0]
    audio = [1.0, 0.25, 1.0, 0, 0]
    return [
        ("/complete_image", [None, *image], "Upload an image or pick an example first."),
        ("/complete_image", [handle_file(files / "empty.png"), *image], "The file is empty."),
        ("/complete_image", [handle_file(files / "truncated.png"), *image], "The image file is truncated or corrupt."),
        ("/complete_image", [handle_file(files / "noise.png"), *image], "This is not an image Pillow can read"),
        ("/complete_image", [handle_file(ASSETS / "text" / "genesis.txt"), *image], "This is not an image"),
        ("/complete_image", [photo, 16, 99, 1.0, 0, 0], "Samples: at most 8."),
        ("/complete_image", [photo, 16, 2, -1, 0, 0], "Temperature: at least 0."),
        ("/complete_image", [photo, 0, 2, 1.0, 0, 0], "Top rows to keep: at least 1."),
        ("/complete_image", [photo, 31, 2, 1.0, 0, 0, "emoji"], "Top rows to keep: at most 30."),  # 2x2 blocks
        ("/complete_image", [photo, 16, 2.5, 1.0, 0, 0], "Samples: a whole number from 1 to 8, not 2.5."),
        ("/complete_image", [photo, 16, 2, 1.0, 0, "abc"], "Seed: a whole number from 0 to 2,147,483,647, not 'abc'."),
        ("/complete_image", [photo, 16, 2, 1.0, 0, 0, "nope"], "Checkpoint: there is no image checkpoint called 'nope'"),
        ("/continue_audio", [handle_file(files / "noise.bin"), *audio], "The audio file is corrupt, truncated"),
        ("/continue_audio", [handle_file(files / "empty.png"), *audio], "The file is empty."),
        ("/continue_audio", [clip, 1.0, 60, 1.0, 0, 0], "Seconds to continue: at most 4."),
        ("/continue_audio", [clip, 9, 1, 1.0, 0, 0, "audio"], "Prompt seconds: at most 5."),
        ("/continue_audio", [clip, 9, 1, 1.0, 0, 0], "Prompt seconds: at most 8."),  # auto: the longest context's
        ("/continue_audio", [clip, 9, 1, 1.0, 0, 0, "audio_long"], "Prompt seconds: at most 8."),  # its context
        ("/continue_audio", [clip, 1.0, 0.25, 1.0, 999, 0], "Top-k: at most 256."),
        ("/continue_audio", [clip, 1.0, 0.25, "hot", 0, 0], "Temperature: a number from 0 to 2, not 'hot'."),
        ("/continue_audio", [clip, 1.0, 0.25, 1.0, 0, 0, "auto", "yes"], f"{service.STEER_LABEL}: true or false, not 'yes'."),
        ("/explore", [None, None, "auto"], "Type some text or upload a file to score."),
        ("/explore", ["x" * (handlers.MAX_SCORE_BYTES + 1), None, "auto"], "the explorer scores at most 1,000,000 bytes"),
        ("/explore", [None, handle_file(files / "empty.png"), "text"], "The file is empty."),
        ("/explore", [None, handle_file(files / "truncated.png"), "auto"], "The image file is truncated or corrupt."),
        ("/explore", ["plain words", None, "audio"], "The audio file is corrupt, truncated"),
        ("/explore", ["plain words", None, "video"], "Read it as: one of auto, text, image, audio, bytes, not 'video'."),
        ("/explore", ["plain words", None, "auto", "emoji"], "Checkpoint: there is no text checkpoint called 'emoji'"),
    ]


def test_bad_input_gets_one_sentence_and_the_server_goes_on(client, bad_files):
    for api_name, args, message in bad_requests(bad_files):
        with pytest.raises(AppError) as caught:
            client.predict(*args, api_name=api_name)
        error = str(caught.value)
        assert message in error, (api_name, error)
        assert "\n" not in error and "Traceback" not in error
    still_serves(client)


def test_uploads_are_capped(client, app_url, bad_files):
    big = bad_files / "big.bin"
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # gradio_client checks first
        client.predict(None, handle_file(big), "auto", api_name="/explore")
    with big.open("rb") as f:  # and the server refuses what a client sends anyway
        response = httpx.post(f"{app_url}gradio_api/upload", files={"files": ("big.bin", f)})
    assert response.status_code == 413
    still_serves(client)


def test_python_m_app_serves_and_logs_one_line_per_refused_request(tiny_checkpoints, free_port, tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "app", "--checkpoints", str(tiny_checkpoints), "--port", str(port)],
                              cwd=service.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              # nothing compiled: a C++ or inductor build cut short by the stop leaves its
                              # own temporary files, which are not the app's
                              env={**os.environ, "TMPDIR": str(tmp_path), "CXX": "false", "TORCH_COMPILE_DISABLE": "1"})
    try:
        assert server.stdout.readline().startswith(f"MegaByte studio: http://127.0.0.1:{port}/")
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        for seed, samples in (("abc", 2), (0, 1000)):
            with pytest.raises(AppError):
                client.predict(handle_file(PHOTO), 16, samples, 1.0, 0, seed, api_name="/complete_image")
        still_serves(client)
    finally:
        server.terminate()
        _, log = server.communicate()
    refused = [line for line in log.splitlines() if "refused" in line]
    assert len(refused) == 2 and "Traceback" not in log, log
    assert "/complete_image: Seed:" in refused[0] and "/complete_image: Samples: at most 8." in refused[1]
    assert not list(tmp_path.iterdir())  # its temporary files (Gradio's cache) went as it stopped


def test_help_names_the_defaults():
    result = subprocess.run([sys.executable, "-m", "app", "--help"], capture_output=True, text=True,
                            cwd=service.ROOT, check=True)
    for option in ("--host", "127.0.0.1", "--port", "7860", "--checkpoints"):
        assert option in result.stdout


def test_the_shipped_checkpoints_load():
    shipped = {folder.name: service.load(folder)[1].modality for folder in sorted(service.CHECKPOINTS.iterdir())}
    assert shipped == {"audio": "audio", "emoji": "image", "image": "image", "melody": "audio",
                       "melody_long": "audio", "text": "text", "text_long": "text"}
    assert service.default_checkpoint("audio").name == "melody_long"  # the explorer reads audio with the long melodies
    studio = handlers.Studio(service.CHECKPOINTS)
    assert studio.rows_range("auto").high == 31  # the image view opens on auto: emoji and photos, 32x32 in raster order


def test_each_character_is_coloured_by_the_bits_of_all_its_bytes():
    data = "a☃".encode() + b"\xff"  # one, three and one (invalid) bytes
    surprisal = np.array([1, 2, 3, 4, 20], np.float32)
    guesses = np.zeros((5, 5), np.uint8), np.full((5, 5), 0.2, np.float32)
    page = views.text_html(data, surprisal, *guesses)
    titles = re.findall(r'title="([\d.]+) bits', page)
    labels = [html.unescape(c) for c in re.findall(r'<span [^>]*title="[^"]*">(.*?)</span>', page, re.S)]
    assert titles == ["1.0", "9.0", "20.0"] and labels == ["a", "☃", "\ufffd"]
    assert page.count("#800026") == 2  # 20 bits: the darkest colour, as in the legend


def test_the_patch_means_are_not_hidden_under_the_bytes():
    surprisal = np.random.default_rng(0).gamma(2, 2, 2000).astype(np.float32)
    chart = np.asarray(views.patch_chart(surprisal, 8))
    r, g, b = (chart[..., i].astype(int) for i in range(3))
    red = (r > 150) & (g < 130) & (b < 130)
    grey = (abs(r - g) < 8) & (abs(g - b) < 8) & (r > 150) & (r < 225)
    assert red.sum() > grey.sum()  # the per-patch bars show more than the faint bytes behind them (a line did not)


def test_the_position_chart_has_a_bar_per_position_inside_the_patch():
    surprisal = np.tile(np.arange(8, dtype=np.float32), 50)  # position i always costs i bits
    chart = np.asarray(views.position_chart(surprisal, 8))
    red_columns = ((chart[..., 0] > 150) & (chart[..., 1] < 130)).any(axis=0)
    bars = np.count_nonzero(np.diff(red_columns.astype(int)) == 1)
    assert bars == 7  # position 0 costs nothing here, so it draws no bar


def test_the_patch_chart_shows_where_an_entropy_patcher_would_cut():
    rng = np.random.default_rng(0)
    surprisal = rng.gamma(2, 2, 400).astype(np.float32)
    entropy = np.tile([6.0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 34)[:400]  # a spike every 12 bytes
    blue = lambda chart: (chart[..., 2].astype(int) - chart[..., 0] > 40).sum()  # noqa: E731
    assert blue(np.asarray(views.patch_chart(surprisal, 8))) == 0
    assert blue(np.asarray(views.patch_chart(surprisal, 8, entropy))) > 200  # the entropy patcher's ticks
    line = views.entropy_patch_line(entropy, 8)
    assert line.startswith("An entropy patcher with the same mean patch size would cut 34 patches of 4–12 bytes "
                           "(median 12) where MegaByte cuts 50 of 8.")
    curve = np.asarray(views.surprisal_curve(np.tile(surprisal, 20), 8000, entropy=np.tile(entropy, 20)))
    assert blue(curve) > 200  # audio: shaded where its patches start


def test_the_image_heat_map_rings_where_entropy_patches_start():
    bits = np.zeros((32, 32))
    marks = np.zeros((32, 32), bool)
    marks[::4, ::4] = True
    cyan = lambda chart: ((chart[..., 0] < 80) & (chart[..., 1] > 180) & (chart[..., 2] > 200)).sum()  # noqa: E731
    assert cyan(np.asarray(views.heat_map(bits))) == 0
    assert cyan(np.asarray(views.heat_map(bits, marks=marks, marks_label="patch starts"))) > 64
