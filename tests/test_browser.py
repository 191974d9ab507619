"""The app in a real browser: Playwright for Python driving the system Chromium.

Each view's test takes a screenshot. The app serves tiny random checkpoints, whose
pictures are noise, so the screenshots go to a temporary folder, unless APP_CHECKPOINTS
names real ones: then they are the README's, in docs/screenshots/:

    APP_CHECKPOINTS=checkpoints python -m pytest -q tests/test_browser.py
"""

import os
from pathlib import Path

import pytest

from app import service

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-gpu",
                 "--disable-component-update", "--no-first-run", "--autoplay-policy=no-user-gesture-required"]
ASSETS = service.ROOT / "assets"
WAIT_MS = 120_000  # generous: the CPU is shared; no test asserts a time


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    if os.environ.get("APP_CHECKPOINTS"):
        return service.ROOT / "docs" / "screenshots"
    return tmp_path_factory.mktemp("screenshots")


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




def test_complete_an_image(page, outside_requests, screenshots):
    open_tab(page, "Image completion")
    page.locator("#image-input input[type=file]").set_input_files(ASSETS / "images" / "chelsea.png")
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
    rows_seen = page.evaluate("[...window.rowsSeen]")
    assert min(rows_seen) < 16 and 16 in rows_seen, rows_seen
    widths = page.wait_for_function("""() => {
        const images = [...document.querySelectorAll('#completions img')];
        return images.every(img => img.complete && img.naturalWidth) && images.map(img => img.naturalWidth);
    }""", timeout=WAIT_MS).json_value()
    assert widths == [256] * 4  # four samples, shown 8 times the model's 32 pixels
    page.screenshot(path=screenshots / "image.png", full_page=True)
    assert not outside_requests


def test_continue_an_audio_clip(page, outside_requests, screenshots):
    open_tab(page, "Audio continuation")
    page.locator("#audio-input input[type=file]").set_input_files(ASSETS / "audio" / "guit_em9.flac")
    set_slider(page, "prompt-seconds", 1)
    set_slider(page, "new-seconds", 0.25)
    page.get_by_role("button", name="Continue").click()
    wait_for_text(page, "audio-summary", "Continued by 0.25 s")
    seconds = page.evaluate("""async () => {
        const wav = await fetch(document.querySelector('#continuation a[download]').href);
        const audio = await new OfflineAudioContext(1, 1, 8000).decodeAudioData(await wav.arrayBuffer());
        return audio.duration;
    }""")
    assert seconds == pytest.approx(1.25, abs=0.01)  # prompt + continuation
    page.locator("#continuation button[aria-label='Play']").click()
    player = page.locator("#continuation audio[src^='blob:']")  # the waveform player's own element
    page.wait_for_function("el => el.currentTime > 0", arg=player.element_handle(), timeout=WAIT_MS)
    page.screenshot(path=screenshots / "audio.png", full_page=True)
    assert not outside_requests


def test_explore_a_text(page, outside_requests, screenshots):
    open_tab(page, "Surprisal explorer")
    text = (ASSETS / "text" / "sonnets.txt").read_text()[:600]
    page.locator("#explore-text textarea").fill(text)
    page.get_by_role("button", name="Score").click()
    spans = page.locator("#surprisal .surprisal-text span[title]")
    spans.first.wait_for()
    assert spans.count() == len(text)
    assert "bits" in spans.first.get_attribute("title")
    page.screenshot(path=screenshots / "text.png", full_page=True)
    assert not outside_requests


def test_bad_input_shows_one_sentence_in_the_page(page):
    open_tab(page, "Surprisal explorer")
    page.get_by_role("radio", name="audio").check()
    page.locator("#explore-text textarea").fill("plain words are no audio clip")
    page.get_by_role("button", name="Score").click()
    toast = page.locator(".toast-body", has_text="The audio file is corrupt, truncated or in an unsupported format.")
    toast.wait_for()
    page.get_by_role("radio", name="auto").check()
    page.get_by_role("button", name="Score").click()  # and the app goes on serving
    wait_for_text(page, "explore-summary", "Scored 29 bytes as text")
