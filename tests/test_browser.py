"""The app in a real browser: Playwright for Python driving the system Chromium.

Each view's test takes a screenshot. The app serves tiny random checkpoints, whose
pictures are noise, so the screenshots go to tests/screenshots/ (git-ignored), unless
APP_CHECKPOINTS names real ones: then they are the README's, in docs/screenshots/:

    APP_CHECKPOINTS=checkpoints python -m pytest -q tests/test_browser.py
"""

import os
import time
from pathlib import Path

import pytest

import adapters
from app import limits, service, views
from model import read_config

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-gpu",
                 "--disable-component-update", "--no-first-run", "--autoplay-policy=no-user-gesture-required"]
ASSETS = service.ROOT / "assets"
WAIT_MS = 120_000  # generous: the CPU is shared; no test asserts a time


@pytest.fixture(scope="module")
def screenshots() -> Path:
    if os.environ.get("APP_CHECKPOINTS"):
        return service.ROOT / "docs" / "screenshots"
    folder = service.ROOT / "tests" / "screenshots"  # git-ignored: to look at, not to keep
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def served(served_checkpoints) -> Path:
    """The checkpoints the app serves."""
    return Path(os.environ.get("APP_CHECKPOINTS") or served_checkpoints)


@pytest.fixture(scope="module")
def outside_requests():
    """Every request the page makes beyond the app itself: there must be none (no fonts, no analytics)."""
    return []


@pytest.fixture(scope="module")
def page(app_url, outside_requests):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need the system Chromium "
                    "(apt-get install -y chromium).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(WAIT_MS)
        page.on("request", lambda request: None if request.url.startswith((app_url, "data:", "blob:"))
                else outside_requests.append(request.url))
        page.goto(app_url)
        yield page
        browser.close()


def open_tab(page, name: str):
    page.get_by_role("tab", name=name).click()


def set_slider(page, elem_id: str, value):
    page.locator(f"#{elem_id} input[type=number]").fill(str(value))


def wait_for_text(page, elem_id: str, text: str):
    page.wait_for_function("([id, text]) => document.getElementById(id).innerText.includes(text)",
                           arg=[elem_id, text], timeout=WAIT_MS)




def choose(page, elem_id: str, option: str):
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option).click()


def click_image_at(page, image, x: float, y: float):
    """Clicks the pixel (x, y) of an image as the page shows it: scaled down to fit its box, centred."""
    box = image.bounding_box()
    width, height = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    scale = min(box["width"] / width, box["height"] / height, 1)
    image.click(position={"x": (box["width"] - width * scale) / 2 + x * scale,
                          "y": (box["height"] - height * scale) / 2 + y * scale})


def python_example(page):
    """Picks the explorer's Python code example, which leaves no file, and waits until its text is in the box
    (it comes from the server: text typed before then would be overwritten)."""
    page.get_by_role("button", name="Python code").click()
    page.wait_for_function("() => document.querySelector('#explore-text textarea').value.startsWith('def greet')")


def wait_for_continuation(page, seconds: float):
    """Waits until the WAV of prompt + continuation, as the browser decodes it, lasts `seconds`:
    the player may show the prompt alone a little after the summary says the continuation is made."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while (lasts := page.evaluate("""async () => {
        const wav = await fetch(document.querySelector('#continuation a[download]').href);
        const audio = await new OfflineAudioContext(1, 1, 8000).decodeAudioData(await wav.arrayBuffer());
        return audio.duration;
    }""")) != pytest.approx(seconds, abs=0.01):
        assert time.monotonic() < deadline, f"the WAV lasts {lasts} s, not {seconds} s"
        page.wait_for_timeout(250)


def toast(page, text: str):
    page.locator(".toast-body", has_text=text).first.wait_for()


def uncovered(page, selector: str) -> list:
    """For each element matching selector: whether every corner of it, 3 px in, shows the element
    itself (no label, caption or button drawn over it)."""
    return page.evaluate("""(selector) => [...document.querySelectorAll(selector)].map(el => {
        const r = el.getBoundingClientRect();
        return [[r.left + 3, r.top + 3], [r.right - 3, r.top + 3], [r.left + 3, r.bottom - 3], [r.right - 3, r.bottom - 3]]
            .every(([x, y]) => document.elementFromPoint(x, y) === el);
    })""", selector)


def auto_chooses(source, modality: str, served: Path, **options) -> str:
    """The checkpoint auto chooses for the input, as the app's summary names it."""
    choice = service.choose_checkpoint(source, modality, adapters.checkpoints.catalog(served, modality), **options)
    return f"with {choice.folder.name} (chosen in"


def test_complete_an_image(page, outside_requests, screenshots, served):
    open_tab(page, "Image completion")
    assert page.locator("#image-checkpoint input").input_value().startswith("auto: ")  # the view opens on auto
    photo = ASSETS / "images" / "chelsea.png"
    page.locator("#image-input input[type=file]").set_input_files(photo)
    # Record every row count the summary shows, to see the completions stream in.
    page.evaluate("""() => {
        window.rowsSeen = new Set();
        new MutationObserver(() => {
            const shown = document.getElementById('image-summary').innerText.match(/Generated (\\d+) of/);
            if (shown) window.rowsSeen.add(Number(shown[1]));
        }).observe(document.body, {subtree: true, childList: true, characterData: true});
    }""")
    page.get_by_role("button", name="Complete").click()
    wait_for_text(page, "image-summary", "Generated 16 of 16 rows")
    wait_for_text(page, "image-summary", "completed " + auto_chooses(photo, "image", served))
    rows_seen = page.evaluate("[...window.rowsSeen]")
    assert min(rows_seen) < 16 and 16 in rows_seen, rows_seen
    widths = page.wait_for_function("""() => {
        const images = [...document.querySelectorAll('#completions img')];
        return images.every(img => img.complete && img.naturalWidth) && images.map(img => img.naturalWidth);
    }""", timeout=WAIT_MS).json_value()
    assert widths == [256] * 4  # four samples, shown 8 times the model's 32 pixels
    page.locator("#completions").scroll_into_view_if_needed()  # elementFromPoint sees the viewport only
    assert uncovered(page, "#completions img") == [True] * 4  # no label or caption over the kept rows
    for shown in (*page.locator("#completions img").all(), page.locator("#image-original img")):
        box = shown.bounding_box()
        assert box["width"] >= 128 and box["height"] >= 128, box  # a size a person can judge
    gallery, first = (page.locator(selector).first.bounding_box() for selector in ("#completions", "#completions img"))
    assert gallery["height"] < first["height"] + 80  # one row of samples, no empty area below
    page.screenshot(path=screenshots / "image.png", full_page=True)
    assert not outside_requests


def test_a_corrupt_image_is_cleared_and_explained(page, tmp_path):
    open_tab(page, "Image completion")
    broken = tmp_path / "broken.png"
    broken.write_bytes((ASSETS / "images" / "chelsea.png").read_bytes()[:2000])
    page.locator("#image-input input[type=file]").set_input_files(broken)
    toast(page, "The image file is truncated or corrupt.")
    page.wait_for_function("() => !document.querySelector('#image-input img')")  # no broken-image icon
    page.locator(".toast-body").first.wait_for(state="detached")  # gone by itself, not over later screenshots


def test_continue_an_audio_clip(page, outside_requests, screenshots, served):
    open_tab(page, "Audio continuation")
    assert page.locator("#audio-checkpoint input").input_value().startswith("auto: ")  # the view opens on auto
    song = ASSETS / "audio" / "guit_em9.flac"
    page.locator("#audio-input input[type=file]").set_input_files(song)
    set_slider(page, "prompt-seconds", 1)
    set_slider(page, "new-seconds", 0.25)
    wait_for_text(page, "audio-estimate", "0.25 s is 2,000 bytes")  # said before it starts
    page.get_by_role("button", name="Continue").click()
    wait_for_text(page, "audio-summary", "Generated 0.25 of 0.25 s")
    wait_for_text(page, "audio-summary", "continued " + auto_chooses(song, "audio", served, max_audio_seconds=1))
    wait_for_text(page, "audio-estimate", "at the last measured")
    for measure in ("Spectral flatness", "Similarity to the prompt's last second", "Loudness drift"):
        wait_for_text(page, "audio-measures", measure)
    wait_for_continuation(page, 1.25)  # prompt + continuation
    page.locator("#continuation button[aria-label='Play']").click()
    player = page.locator("#continuation audio[src^='blob:']")  # the waveform player's own element
    page.wait_for_function("el => el.currentTime > 0", arg=player.element_handle(), timeout=WAIT_MS)
    page.screenshot(path=screenshots / "audio.png", full_page=True)
    assert not outside_requests


def test_stop_says_how_far_it_got(page):
    open_tab(page, "Audio continuation")
    set_slider(page, "new-seconds", 4)
    page.get_by_role("button", name="Continue").click()
    wait_for_text(page, "audio-summary", "of 4.00 s in")  # under way, its speed shown
    assert "bytes/s" in page.locator("#audio-summary").inner_text()
    # The page says "Stopped" at once; the server ends the run at its next step, and until then
    # Gradio drops a new click on Continue (the next test's): wait for the cancel to return.
    with page.expect_response(lambda response: response.url.endswith("/cancel"), timeout=WAIT_MS):
        page.get_by_role("button", name="Stop").click()
    wait_for_text(page, "audio-summary", "Stopped after")
    set_slider(page, "new-seconds", 0.25)


def test_continue_an_8_second_audio_prompt_with_a_long_context_checkpoint(page, served):
    open_tab(page, "Audio continuation")  # the clip of test_continue_an_audio_clip is still there
    longest = max(adapters.checkpoints.catalog(served, "audio"), key=lambda folder: read_config(folder)["model"]["max_bytes"])
    config = read_config(longest)
    holds = limits.prompt_seconds(config["model"]["max_bytes"] / config["layout"]["sample_rate"]).high
    if holds < 8:
        pytest.skip(f"no audio checkpoint in {served} holds 8 s of audio")
    choose(page, "audio-checkpoint", adapters.checkpoints.description(longest))
    wait_for_text(page, "prompt-seconds", f"at most {holds:g}")  # the slider goes up to what its context holds
    set_slider(page, "prompt-seconds", 8)
    page.get_by_role("button", name="Continue").click()
    wait_for_text(page, "audio-summary", "Prompt: 8.00 s")  # this request's summary, not the last one's
    wait_for_text(page, "audio-summary", "Generated 0.25 of 0.25 s")
    wait_for_continuation(page, 8.25)
    choose(page, "audio-checkpoint", "auto: least surprised by the input")
    set_slider(page, "prompt-seconds", 1)


def test_explore_a_text(page, outside_requests, screenshots):
    open_tab(page, "Surprisal explorer")
    text = (ASSETS / "text" / "sonnets.txt").read_text()[:600]
    page.locator("#explore-text textarea").fill(text)
    page.get_by_role("button", name="Score").click()
    spans = page.locator("#surprisal .surprisal-text span[title]")
    spans.first.wait_for()
    assert spans.count() == len(text)
    assert "bits" in spans.first.get_attribute("title")
    for example in page.locator("#explore-examples button").all():  # each example's name shown whole
        assert example.evaluate("el => el.scrollWidth <= el.clientWidth && el.getBoundingClientRect().right <= "
                                "el.closest('#explore-examples').getBoundingClientRect().right")
    wait_for_text(page, "explore-summary", "An entropy patcher with the same mean patch size")
    page.get_by_role("button", name="Compress with this model").click()  # enabled once scored
    wait_for_text(page, "explore-compressed", "Compressed with this model:")
    assert "% of xz -9e)" in page.locator("#explore-compressed").inner_text()
    page.locator("#explore-download a[download='text.mbz']").wait_for()  # offered as a download
    page.screenshot(path=screenshots / "text.png", full_page=True)
    assert not outside_requests


def test_explore_a_million_bytes_with_an_overview_and_a_chosen_window(page, outside_requests, screenshots, tmp_path):
    open_tab(page, "Surprisal explorer")
    n, window = limits.MAX_SCORE_BYTES, limits.DETAIL_BYTES
    sonnets = (ASSETS / "text" / "sonnets.txt").read_bytes()
    big = tmp_path / "sonnets.txt"
    big.write_bytes(sonnets * (n // len(sonnets)) + b" " * (n % len(sonnets)))
    page.locator("#explore-file input[type=file]").set_input_files(big)
    page.get_by_role("button", name="Score").click()
    wait_for_text(page, "explore-summary", f"Scored {n:,} bytes as text")
    overview = page.locator("#explore-chart img")
    width = page.wait_for_function("img => img.complete && img.naturalWidth", arg=overview.element_handle()).json_value()
    assert width == views.CHART_WIDTH * views.DPI
    wait_for_text(page, "surprisal", f"Bytes 0–{window - 1:,} of {n:,}")
    spans = page.locator("#surprisal .surprisal-text span[title]")
    assert 0 < spans.count() <= window
    # A window by its start, then by a click on the overview a quarter of the way along it.
    page.locator("#window-start input").fill("600000")
    wait_for_text(page, "surprisal", f"Bytes 600,000–{600_000 + window - 1:,} of {n:,}")
    x = views.CHART_WIDTH * views.DPI * (views.CHART_LEFT + (views.CHART_RIGHT - views.CHART_LEFT) / 4)
    click_image_at(page, overview, x, 100)
    page.wait_for_function("() => document.querySelector('#window-start input').value !== '600000'")
    start = int(page.locator("#window-start input").input_value())
    assert abs(start - (n // 4 - window // 2)) < 3 * n / (views.CHART_WIDTH * views.DPI)  # within 3 pixels
    wait_for_text(page, "surprisal", f"Bytes {start:,}–")
    assert page.locator("#surprisal").evaluate("el => el.innerHTML.length") < 1_000_000  # one window of spans
    page.screenshot(path=screenshots / "explorer_million.png", full_page=True)
    assert not outside_requests
    python_example(page)  # no file left for the next tests


def test_the_byte_count_is_live_and_nothing_is_cut(page):
    open_tab(page, "Surprisal explorer")
    cap = limits.MAX_SCORE_BYTES
    box = page.locator("#explore-text textarea")
    box.fill("é" * 100)
    wait_for_text(page, "explore-count", f"200 of at most {cap:,} bytes")
    box.fill("x" * (cap + 1))
    wait_for_text(page, "explore-count", f"{cap + 1:,} bytes: over the limit of {cap:,}.")
    assert len(box.input_value()) == cap + 1
    page.get_by_role("button", name="Score").click()
    toast(page, f"The input is {cap + 1:,} bytes")
    box.fill("é" * (cap // 2 + 1))
    wait_for_text(page, "explore-count", f"{cap + 2:,} bytes: over the limit of {cap:,}.")


def test_explore_an_image_shows_what_the_model_read(page):
    open_tab(page, "Surprisal explorer")
    page.locator("#explore-text textarea").fill("")
    page.get_by_role("button", name="a photo (chelsea.png)").click()
    page.get_by_role("button", name="Score").click()
    wait_for_text(page, "explore-summary", "became 3,072 bytes")
    assert page.locator("#surprisal img.scored-image").evaluate("img => img.complete && img.naturalWidth") == 256


def test_bad_input_shows_one_sentence_in_the_page(page):
    open_tab(page, "Surprisal explorer")
    python_example(page)  # no file left from before
    page.locator("#explore-text textarea").fill("plain words are no audio clip")
    page.locator("#explore-text").scroll_into_view_if_needed()
    page.get_by_role("radio", name="audio").check()
    page.get_by_role("button", name="Score").click()
    toast(page, "The audio file is corrupt, truncated or in an unsupported format.")
    page.get_by_role("radio", name="auto").check()
    page.get_by_role("button", name="Score").click()  # and the app goes on serving
    wait_for_text(page, "explore-summary", "Scored 29 bytes as text")
