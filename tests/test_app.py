"""The web app through gradio_client, as an API user sees it: every endpoint, good files and bad.

The app serves tiny random checkpoints (tests/conftest.py), so the results are noise, but
their shapes, sizes and the bytes the user kept are exactly what a trained model gives.
"""

import html
import re
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import soundfile as sf
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app import service, ui, views

ASSETS = service.ROOT / "assets"
PHOTO = ASSETS / "images" / "chelsea.png"
CLIP = ASSETS / "audio" / "guit_em9.flac"
SHOWN = 8  # the app shows 32x32 images enlarged 8 times


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
        "big.bin": bytes(ui.MAX_UPLOAD_MB * 2**20 + 1),
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
    assert set(endpoints) == {"/complete_image", "/continue_audio", "/explore"}


def test_image_completion_streams_rows_and_keeps_the_top(client):
    rows, samples = 20, 3
    job = client.submit(handle_file(PHOTO), rows, samples, 1.0, 0, 7, api_name="/complete_image")
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


def test_audio_continuation_plays_prompt_then_continuation(client):
    wav, wave_plot, curve_plot, summary = client.predict(
        handle_file(CLIP), 1.0, 0.25, 1.0, 0, 0, api_name="/continue_audio")
    audio, rate = sf.read(wav, dtype="int16")
    assert rate == 8000 and len(audio) == 8000 + 2000
    assert np.abs(audio[:8000]).max() > 1000  # the guitar, not silence
    assert pixels(wave_plot).shape[0] > 100 and pixels(curve_plot).shape[0] > 100
    assert "Prompt: 1.00 s" in summary and "Continued by 0.25 s" in summary


def test_stop_ends_a_generation_and_the_server_goes_on(client):
    job = client.submit(handle_file(CLIP), 1.0, ui.MAX_CONTINUE_SECONDS, 1.0, 0, 0, api_name="/continue_audio")
    while not job.outputs():  # the prompt's analysis comes first, then generation starts
        assert not job.done()
        time.sleep(0.1)
    job.cancel()
    wav, *_ = client.predict(handle_file(CLIP), 0.5, 0.25, 1.0, 0, 0, api_name="/continue_audio")
    assert len(sf.read(wav)[0]) == 4000 + 2000


def test_explore_text_colours_every_character(client):
    text = 'naïve <b>bold</b> & "quotes" ☃\n\tend'
    summary, page, chart, table = client.predict(text, None, "auto", api_name="/explore")
    assert summary.startswith(f"Scored {len(text.encode())} bytes as text")
    body = page[page.index('class="surprisal-text"') :]
    shown = [html.unescape(char) for char in re.findall(r'<span [^>]*title="[^"]*">(.*?)</span>', body, re.S)]
    assert shown == list(text)  # one span per character
    assert "<b>" not in page  # the text is shown, never run as HTML
    assert "expected:" in page  # the model's guesses, on hover
    assert pixels(chart).shape[0] > 100
    coders = [name for name, _ in table["data"]]
    assert coders == ["this model", "gzip -9", "xz -9e"]


@pytest.mark.parametrize("path, kind, coders", [
    (ASSETS / "text" / "sonnets.txt", "text", 3),
    (PHOTO, "image", 5),  # and PNG, WebP
    (CLIP, "audio", 3),
])
def test_explore_reads_files_by_their_kind(client, path, kind, coders):
    summary, page, chart, table = client.predict(None, handle_file(path), "auto", api_name="/explore")
    assert f"as {kind} with the {'text' if kind == 'text' else kind} model" in summary
    assert len(table["data"]) == coders
    assert pixels(chart).shape[0] > 100
    assert ("surprisal-text" in page) == (kind == "text")


def test_explore_shows_raw_bytes_as_coloured_hex(client, bad_files):
    summary, page, _, _ = client.predict(None, handle_file(bad_files / "noise.bin"), "auto", api_name="/explore")
    assert "3,000 bytes as bytes with the text model" in summary
    assert len(re.findall(r"<span [^>]*title=", page[page.index("surprisal-hex") :])) == 3000


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
        ("/complete_image", [photo, 16, 99, 1.0, 0, 0], "Value 99 is greater than maximum value 8."),
        ("/complete_image", [photo, 16, 2, -1, 0, 0], "Value -1 is less than minimum value 0."),
        ("/complete_image", [photo, 0, 2, 1.0, 0, 0], "Value 0 is less than minimum value 1."),
        ("/continue_audio", [handle_file(files / "noise.bin"), *audio], "The audio file is corrupt, truncated"),
        ("/continue_audio", [handle_file(files / "empty.png"), *audio], "The file is empty."),
        ("/continue_audio", [clip, 1.0, 60, 1.0, 0, 0], "Value 60 is greater than maximum value 4.0."),
        ("/continue_audio", [clip, 1.0, 0.25, 1.0, 999, 0], "Value 999 is greater than maximum value 256."),
        ("/explore", [None, None, "auto"], "Type some text or upload a file to score."),
        ("/explore", ["x" * (ui.MAX_SCORE_BYTES + 1), None, "auto"], "the explorer scores at most 20,000 bytes"),
        ("/explore", [None, handle_file(files / "empty.png"), "text"], "The file is empty."),
        ("/explore", [None, handle_file(files / "truncated.png"), "auto"], "The image file is truncated or corrupt."),
        ("/explore", ["plain words", None, "audio"], "The audio file is corrupt, truncated"),
        ("/explore", ["plain words", None, "video"], "video"),
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


def test_python_m_app_serves_the_checkpoints_it_is_given(tiny_checkpoints, free_port):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "app", "--checkpoints", str(tiny_checkpoints), "--port", str(port)],
                              cwd=service.ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().startswith(f"MegaByte studio: http://127.0.0.1:{port}/")
        still_serves(Client(f"http://127.0.0.1:{port}/", verbose=False))
    finally:
        server.terminate()
        server.wait()


def test_help_names_the_defaults():
    result = subprocess.run([sys.executable, "-m", "app", "--help"], capture_output=True, text=True,
                            cwd=service.ROOT, check=True)
    for option in ("--host", "127.0.0.1", "--port", "7860", "--checkpoints"):
        assert option in result.stdout


def test_the_shipped_checkpoints_load():
    for modality in ("text", "image", "audio"):
        model, layout = service.load(service.default_checkpoint(modality))
        assert layout.modality == modality
    assert ui.Studio(service.CHECKPOINTS).image_size() == service.load(service.default_checkpoint("image"))[1].image_size


def test_each_character_is_coloured_by_the_bits_of_all_its_bytes():
    data = "a☃".encode() + b"\xff"  # one, three and one (invalid) bytes
    surprisal = np.array([1, 2, 3, 4, 20], np.float32)
    guesses = np.zeros((5, 5), np.uint8), np.full((5, 5), 0.2, np.float32)
    page = views.text_html(data, surprisal, *guesses)
    titles = re.findall(r'title="([\d.]+) bits', page)
    labels = [html.unescape(c) for c in re.findall(r'<span [^>]*title="[^"]*">(.*?)</span>', page, re.S)]
    assert titles == ["1.0", "9.0", "20.0"] and labels == ["a", "☃", "\ufffd"]
    assert page.count("#800026") == 2  # 20 bits: the darkest colour, as in the legend
