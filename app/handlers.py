"""The web app's request handlers: each takes what the page (or an API client) sends, calls
app.service and returns what the page shows. app.ui builds the page and wires them to it.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import io
import logging
import mimetypes
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder
import numpy as np
import soundfile as sf
import torch
from PIL import Image

import adapters
from adapters import AdapterError, Layout
from app import limits, service, views
from app.cli import default_decompressed_path
from app.limits import DETAIL_BYTES, MAX_SCORE_BYTES
from app.service import AUTO, UserError
from model import CheckpointError, read_config

ASSETS = service.ROOT / "assets"
# Demo files: assets/<checkpoint name>/ when it holds files of the modality's kind (assets/emoji/*.png,
# assets/melody/*.flac), else the modality's general folder.
EXAMPLES = {"image": ("images", "*.png"), "audio": ("audio", "*.flac"), "text": ("text", "*.txt")}
SHOWN_IMAGE_SIDE = 256  # model-resolution images are enlarged to about this many pixels
DEFAULT_IMAGE_SIZE = 32  # the rows slider's scale when no image checkpoint is there yet
EXPLORER_KINDS = ("auto", "text", "image", "audio", "bytes")
PROGRESS_EVERY_SECONDS = 0.25
TAIL_SECONDS = 1.0  # the continuation is measured against this much of the prompt's end

log = logging.getLogger("app")


@contextlib.contextmanager
def shown_in_page(endpoint: str):
    """Turns a UserError (one sentence meant for the user) into gr.Error, which the page shows,
    and logs one line for the refused request instead of a traceback."""
    try:
        yield
    except (UserError, AdapterError) as e:
        log.warning("refused %s: %s", endpoint, e)
        raise gr.Error(str(e), print_exception=False) from None


def sampling_settings(temperature, top_k, seed, modality: str):
    """The sampling knobs, each checked against its control's range, with the modality's rule, and the seed."""
    how = service.default_sampling(modality, limits.TEMPERATURE.check(temperature), limits.TOP_K.check(top_k))
    return how, limits.SEED.check(seed)


def required(path, what: str) -> str:
    if not path:
        raise UserError(f"Upload {what} or pick an example first.")
    return path


def enlarge(img: Image.Image) -> Image.Image:
    return adapters.image.upscale(img, max(1, SHOWN_IMAGE_SIDE // img.width))


def encoded_size(img: Image.Image, format: str, **options) -> int:
    buffer = io.BytesIO()
    img.save(buffer, format, **options)
    return len(buffer.getvalue())


def compression_rows(scored: service.ScoreResult, image: Image.Image | None = None) -> list[list]:
    """[coder, bits per byte] for the model and classical coders on the same bytes; for an
    image also PNG and lossless WebP (a byte is a subpixel, so this is bits per subpixel)."""
    rows = {"this model": scored.bits_per_byte, **scored.compressor_bits_per_byte()}
    if image is not None:
        subpixels = image.width * image.height * 3
        rows["PNG (optimised)"] = 8 * encoded_size(image, "PNG", optimize=True) / subpixels
        rows["WebP lossless"] = 8 * encoded_size(image, "WEBP", lossless=True, quality=100, method=6) / subpixels
    return [[name, round(bits, 3)] for name, bits in rows.items()]


def comparison(rows: list[list]) -> str:
    """The compression rows as one line of Markdown, the model first and in bold."""
    (name, bits), *others = rows
    return f"**{name}: {bits:.2f}** · " + " · ".join(f"{n} {b:.2f}" for n, b in others)


def detect_kind(name: str, data: bytes) -> str:
    """What "auto" reads a file as: image or audio by its extension or, failing that, when
    Pillow or libsndfile recognise its format; else text when it is valid UTF-8; else raw bytes."""
    major = (mimetypes.guess_type(name)[0] or "").split("/")[0]
    if major in ("image", "audio"):
        return major
    try:
        Image.open(io.BytesIO(data))  # reads the header only
        return "image"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        pass
    try:
        sf.info(io.BytesIO(data))
        return "audio"
    except (RuntimeError, sf.SoundFileError):
        pass
    try:
        data.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "bytes"


def example_files(checkpoints: list[str], modality: str) -> list[str]:
    """The demo files of these checkpoints, each file once."""
    general, pattern = EXAMPLES[modality]
    files = []
    for name in checkpoints:
        files += sorted((ASSETS / name).glob(pattern)) or sorted((ASSETS / general).glob(pattern))
    return list(dict.fromkeys(map(str, files)))


def picture_html(img: Image.Image) -> str:
    """An image inline in the page, enlarged with sharp pixels."""
    buffer = io.BytesIO()
    enlarge(img).save(buffer, "PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    return (f'<img class="scored-image" alt="the image as the model read it" src="data:image/png;base64,{data}" '
            'style="image-rendering:pixelated">')


def how_encoded(original: bytes, kind: str, layout: Layout, encoded: int, max_seconds: float | None) -> str:
    """One line on how a file became the bytes the model scored (empty for text and raw bytes);
    audio was cut to `max_seconds`."""
    if kind == "image":
        img = Image.open(io.BytesIO(original))
        size, order = layout.image_size, ("row by row" if layout.block_side == 1
                                          else f"in {layout.block_side}×{layout.block_side} blocks")
        return (f"The {img.format or 'image'} file ({len(original):,} bytes, {img.width}×{img.height}) became "
                f"{encoded:,} bytes: its centred square, resized to {size}×{size} pixels, read {order}, "
                "3 bytes (R, G, B) a pixel.")
    if kind == "audio":
        info = sf.info(io.BytesIO(original))
        kept = f"its first {max_seconds:g} s" if info.duration > max_seconds else "all of it"
        return (f"The {info.format} file ({len(original):,} bytes, {info.samplerate:,} Hz, {info.channels} "
                f"channel{'s' if info.channels > 1 else ''}, {info.duration:.1f} s) became {encoded:,} bytes: "
                f"{kept}, mixed to mono, resampled to {layout.sample_rate:,} Hz, one µ-law byte a sample.")
    return ""


MBZ = "mbz"  # what "auto" reads a .mbz file as: it is decompressed


@dataclass
class Reading:
    """An input as a checkpoint reads it, to score in the explorer or to generate from."""

    model: torch.nn.Module
    layout: Layout
    folder: Path
    kind: str  # text, image, audio or bytes
    encoded: bytes  # the bytes the model reads
    note: str = ""  # how the input became those bytes, or what a .mbz held
    download: str | None = None  # for a .mbz, the decompressed file


@dataclass
class Explored:
    """The explorer's last scored text or raw bytes, kept in the page's session (gr.State), so
    that another window of them is coloured without scoring them again."""

    kind: str  # text or bytes
    scored: service.ScoreResult

    def window(self, start: int) -> str:
        return views.window_html(self.scored.data, self.scored.scores, self.kind, start, DETAIL_BYTES)


def clip_seconds(layout: Layout, context: int) -> float | None:
    """The most seconds of audio a checkpoint of this context takes (limits.audio_seconds); None for other layouts."""
    return limits.audio_seconds(context / layout.sample_rate) if layout.modality == "audio" else None


def explorer_cap(layout: Layout, context: int) -> int:
    """The most bytes the explorer reads with a checkpoint: its caps on text and raw bytes, audio, and one image."""
    if layout.modality == "image":
        return layout.bytes_per_image
    if layout.modality == "audio":
        return adapters.audio.seconds_to_bytes(clip_seconds(layout, context), layout)
    return MAX_SCORE_BYTES


def decompressed_name(name: str, suffix: str, kind: str) -> str:
    """What the file a .mbz held is called: photo.png.mbz -> photo.png, clip.flac.mbz -> clip.wav,
    as the command line names it; text.mbz -> text.txt."""
    saved = default_decompressed_path(Path(name), suffix).name
    return saved if Path(saved).suffix else saved + {"text": ".txt"}.get(kind, ".bin")


def download(content: bytes, name: str) -> str:
    """`content` written as a file called `name` for the user to download, in a folder of its own
    (two requests may want the same name) in Gradio's cache: Gradio serves it from there, without
    a copy, and it goes with the cache's other files once older than app.ui.KEEP_FILES_SECONDS."""
    cache = Path(get_upload_folder())
    cache.mkdir(parents=True, exist_ok=True)  # Gradio makes it on first use
    path = Path(tempfile.mkdtemp(dir=cache)) / name
    path.write_bytes(content)
    return str(path)


def is_mbz_file(path) -> bool:
    if not path:
        return False
    with open(path, "rb") as f:
        return service.is_mbz(f.read(8))


def fraction(progress, desc: str):
    """A (done, total) callback that moves a gr.Progress bar."""
    return lambda done, total: progress(done / max(total, 1), desc=desc)


def coding_progress(progress, verb: str, n: int):
    """fraction(progress, verb) for compressing or decompressing n bytes, stopped past their Budget."""
    return service.Budget.for_bytes(verb, n, service.CODING_BYTES_PER_SECOND).watching(fraction(progress, verb))


class Stopped(Exception):
    """Raised in the work of a request that was stopped: nobody waits for its answer."""


def stoppable(work, progress):
    """A handler's work(progress) as a generator that Gradio can stop, which yields its outputs.
    Gradio stops a generator between yields (Stop, or a client's cancel), while a plain handler's
    thread would run on to the end unseen; so the work runs in a thread of its own, this yields
    gr.skip() every PROGRESS_EVERY_SECONDS meanwhile, and once stopped, the work's next progress
    report raises Stopped."""
    stop = threading.Event()

    def report(*args, **kwargs):
        if stop.is_set():
            raise Stopped
        progress(*args, **kwargs)

    worker = ThreadPoolExecutor(1, thread_name_prefix="request")
    # in a copy of this context, where Gradio's progress bar finds its request
    done = worker.submit(contextvars.copy_context().run, work, report)
    worker.shutdown(wait=False)
    try:
        yield gr.skip()  # at once: Gradio can stop a generator only once it has had a value from it
        while not wait([done], timeout=PROGRESS_EVERY_SECONDS).done:
            yield gr.skip()
    finally:
        stop.set()
    yield done.result()


class Studio:
    """The request handlers, serving the checkpoints found in one folder."""

    def __init__(self, checkpoints):
        self.checkpoints = Path(checkpoints)
        # each checkpoint's last generation, and auto's (whichever it chose), for estimates
        self.bytes_per_second: dict[str, float] = {}

    def choices(self, modality: str) -> list[tuple[str, str]]:
        """(the card's one-line description, folder name) of each checkpoint for the modality."""
        return [(adapters.checkpoints.description(folder), folder.name)
                for folder in adapters.checkpoints.catalog(self.checkpoints, modality)]

    def names(self, modality: str) -> list[str]:
        return [folder.name for folder in adapters.checkpoints.catalog(self.checkpoints, modality)]

    def examples(self, modality: str, name: str) -> list[list[str]]:
        """The demo files of the chosen checkpoint, as a gr.Dataset's samples; with auto, those of
        every checkpoint of the medium."""
        return [[path] for path in example_files(self.names(modality) if name == AUTO else [name], modality)]

    def folder(self, modality: str, name: str | None) -> Path:
        """The checkpoint called `name` that reads the modality; the default one when no name is given."""
        if not name or name == AUTO:
            return service.default_checkpoint(modality, self.checkpoints)
        found = adapters.checkpoints.catalog(self.checkpoints, modality)
        for folder in found:
            if folder.name == name:
                return folder
        names = ", ".join(folder.name for folder in found) or "none is here"
        raise UserError(f"Checkpoint: there is no {modality} checkpoint called {name!r} (choose from: {names}).")

    def context_seconds(self, name: str | None) -> float:
        """The seconds an audio checkpoint's context holds, from its config alone; 0 if unreadable."""
        try:
            config = read_config(self.folder("audio", name))
            return config["model"]["max_bytes"] / config["layout"]["sample_rate"]
        except (UserError, CheckpointError, KeyError, TypeError, ZeroDivisionError):
            return 0.0  # the view names the problem when the checkpoint is used

    def prompt_range(self, name: str | None) -> limits.Range:
        """The prompt seconds a checkpoint takes; with auto, what the longest context takes (auto
        then chooses among the checkpoints that take the prompt)."""
        if name == AUTO:
            return max((self.prompt_range(other) for other in self.names("audio")), key=lambda r: r.high,
                       default=limits.prompt_seconds(0))
        return limits.prompt_seconds(self.context_seconds(name))

    def layout(self, modality: str, name: str | None) -> Layout | None:
        """A checkpoint's layout from its config alone (weights load on first use); None if unreadable."""
        try:
            return Layout.from_dict(read_config(self.folder(modality, name))["layout"])
        except (UserError, CheckpointError, AdapterError, KeyError, TypeError):
            return None  # the view names the problem when the checkpoint is used

    @contextlib.contextmanager
    def model(self, modality: str, name: str | None):
        folder = self.folder(modality, name)
        model, layout = service.load_for(modality, folder)
        yield model, layout, folder  # no lock: each generation keeps its own decoding state

    def rows_range(self, name: str | None) -> limits.Range:
        """The top rows a checkpoint keeps; with auto, the most any checkpoint keeps (auto then
        chooses among the checkpoints that keep that many)."""
        if name == AUTO:
            return max((self.rows_range(other) for other in self.names("image")), key=lambda r: r.high,
                       default=limits.rows(DEFAULT_IMAGE_SIZE))
        layout = self.layout("image", name)
        return limits.rows(layout.image_size, layout.block_side) if layout else limits.rows(DEFAULT_IMAGE_SIZE)

    def image_choice(self, name: str):
        """What changes with the image checkpoint: the rows slider's range and the examples."""
        rows = self.rows_range(name)
        return (gr.Slider(rows.low, rows.high, value=(rows.high + 1) // 2),
                gr.Dataset(samples=self.examples("image", name)))

    def audio_choice(self, name: str, new_seconds, prompt_seconds):
        """What changes with the audio checkpoint: the prompt's range (up to what its context holds),
        the examples and the estimate."""
        prompt = self.prompt_range(name)
        return (gr.Slider(maximum=prompt.high, value=min(float(prompt_seconds), prompt.high),
                          label=prompt_label(prompt.high)),
                gr.Dataset(samples=self.examples("audio", name)), self.estimate(new_seconds, name))

    def check_image_upload(self, upload: dict | None):
        """Clears an upload that is no image the adapter can read, and says why, instead of
        leaving a broken-image icon in the box. Gets the raw upload (a dict with its path).
        Checks without decoding the pixels: complete_image decodes them, once."""
        path = (upload or {}).get("path")
        if path:
            try:
                adapters.image.check(path)
            except AdapterError as e:
                log.warning("refused an image upload: %s", e)
                gr.Warning(str(e))
                return None
        return gr.skip()

    def estimate(self, new_seconds, name: str | None) -> str:
        """How long a continuation will take, from its length and the checkpoint's last measured speed."""
        try:
            seconds = limits.CONTINUE_SECONDS.check(new_seconds)
            self.folder("audio", name)
        except UserError as e:
            return str(e)
        layout = self.layout("audio", name)
        if layout is None:
            return ""
        wanted = adapters.audio.seconds_to_bytes(seconds, layout)
        speed = self.bytes_per_second.get(name or AUTO)
        if speed is None:
            return f"{seconds:g} s is {wanted:,} bytes; the first continuation measures how fast they come."
        return f"{seconds:g} s is {wanted:,} bytes: about {wanted / speed:.0f} s at the last measured {speed:,.0f} bytes/s."

    def generating(self, source, modality: str, checkpoint: str, takes, done: str,
                   max_audio_seconds: float | None = None) -> Reading:
        """The input as the checkpoint that generates from it reads it: the one named, or with auto
        the least surprised of those that `takes` (by name), its note naming it and the others' bits."""
        if checkpoint != AUTO:
            with self.model(modality, checkpoint) as (model, layout, folder):
                data = service.encode_file(source, layout, max_audio_seconds)
            return Reading(model, layout, folder, modality, data, f"{done.capitalize()} with {folder.name}.")
        folders = [folder for folder in adapters.checkpoints.catalog(self.checkpoints, modality) if takes(folder.name)]
        choice = service.choose_checkpoint(source, modality, folders, max_audio_seconds)
        model, layout = service.load_for(modality, choice.folder)
        return Reading(model, layout, choice.folder, modality, choice.data, f"Auto: {choice.summary(done)}.")

    def complete_image(self, image, rows, samples, temperature, top_k, seed, checkpoint=AUTO):
        """Streams (original, completions, heat map, summary); the completions grow a row at a time."""
        with shown_in_page("/complete_image"):
            checkpoint = checkpoint or AUTO
            samples = limits.SAMPLES.check(samples)
            how, seed = sampling_settings(temperature, top_k, seed, "image")
            rows = self.rows_range(checkpoint).check(rows)
            read = self.generating(required(image, "an image"), "image", checkpoint,
                                   lambda name: rows in self.rows_range(name), "completed")
            yield from self.stream_completion(read, rows, samples, how, seed)

    def stream_completion(self, read: Reading, rows, samples, how, seed):
        model, layout, data = read.model, read.layout, read.encoded
        original = adapters.image.decode(data, layout)
        scored = service.score_bytes(model, data)
        heat = views.heat_map(adapters.image.surprisal_map(scored.scores.surprisal, layout),
                              title="Where the model was surprised by the original")
        bits = f"{read.note}\n\nBits per subpixel of the original: {comparison(compression_rows(scored, original))}."
        prompt = data[: adapters.image.prefix_bytes(rows, layout)]
        row_bytes = adapters.image.prefix_bytes(1, layout)  # one row, or one row of blocks
        wanted = layout.bytes_per_image - len(prompt)
        pixel_rows = lambda n: n // row_bytes * layout.block_side  # noqa: E731 (whole rows among n bytes)
        start = time.perf_counter()

        def update(made: np.ndarray, complete: bool):
            gallery = [enlarge(adapters.image.decode(prompt + row.tobytes(), layout)) for row in made]
            status = (f"Generated {pixel_rows(made.shape[1])} of {pixel_rows(wanted)} rows "
                      f"in {time.perf_counter() - start:.1f} s ({decoding_path(how_run)}).")
            # Between the first and last update the original and heat map stay as they are:
            # sending them again would rewrite their files while the browser may be reading them.
            unchanged = lambda value: value if complete else gr.skip()  # noqa: E731
            return unchanged(enlarge(original)), gallery, unchanged(heat), f"{bits}\n\n{status}"

        made, how_run = np.zeros((samples, 0), np.uint8), service.GenerationStatus()
        yield update(made, complete=True)  # the prompt alone, at once
        parts = []
        for part in service.continue_bytes(model, prompt, wanted, samples, how, seed, status=how_run):
            parts.append(part)
            rows_before = made.shape[1] // row_bytes
            made = np.concatenate(parts, axis=1)
            if rows_before < made.shape[1] // row_bytes < wanted // row_bytes:  # a new row, not the last
                yield update(made, complete=False)
        yield update(made, complete=True)

    def continue_audio(self, audio, prompt_seconds, new_seconds, temperature, top_k, seed, checkpoint=AUTO,
                       steer=True, progress=gr.Progress()):
        """Yields the prompt's analysis at once, the speed while it generates, then prompt +
        continuation and how the continuation compares with the prompt's end. `steer`: keep the
        continuation as loud as the prompt's end (adapters.audio.STEERING)."""
        with shown_in_page("/continue_audio"):
            checkpoint = checkpoint or AUTO
            prompt_seconds = self.prompt_range(checkpoint).check(prompt_seconds)
            new_seconds = limits.CONTINUE_SECONDS.check(new_seconds)
            how, seed = sampling_settings(temperature, top_k, seed, "audio")
            steer = limits.switch(service.STEER_LABEL, steer)
            path = required(audio, "a clip")
            read = self.generating(path, "audio", checkpoint, lambda name: prompt_seconds in self.prompt_range(name),
                                   "continued", max_audio_seconds=prompt_seconds)
            steering = adapters.audio.STEERING if steer else None
            yield from self.stream_continuation(read, checkpoint, new_seconds, how, seed, steering, progress)

    def stream_continuation(self, read: Reading, checkpoint: str, new_seconds, how, seed, steering, progress):
        model, layout, prompt = read.model, read.layout, read.encoded
        rate = layout.sample_rate
        scored = service.score_bytes(model, prompt, progress=fraction(progress, "Scoring"))
        curve = views.surprisal_curve(scored.scores.surprisal, rate, title="The prompt's surprisal over time")
        prompt_pcm = adapters.audio.decode(prompt, layout)
        about = (f"{read.note}\n\nPrompt: {len(prompt) / rate:.2f} s; bits per sample: "
                 f"{comparison(compression_rows(scored))}.")
        estimate = self.estimate(new_seconds, checkpoint)
        yield (rate, prompt_pcm), views.waveform(prompt_pcm, rate), "", curve, f"{about}\n\n{estimate}"
        wanted = adapters.audio.seconds_to_bytes(new_seconds, layout)
        parts, made, start, last, how_run = [], 0, time.perf_counter(), 0.0, service.GenerationStatus()
        drawn = f"Drawn by {service.rule_words(how, steering)}."
        for part in service.continue_bytes(model, prompt, wanted, 1, how, seed, how_run, steering, layout):
            parts.append(part)
            made += part.shape[1]
            if time.perf_counter() - last > PROGRESS_EVERY_SECONDS:  # each yield is where a Stop can end it
                last = time.perf_counter()
                speed = made / (last - start)
                left = f"about {(wanted - made) / speed:.0f} s left" if made else "the first steered chunk not chosen yet"
                status = (f"Generated {made / rate:.2f} of {wanted / rate:.2f} s in {last - start:.1f} s "
                          f"({speed:,.0f} bytes/s, {decoding_path(how_run)}; {left}). {drawn}")
                progress(made / wanted, desc=f"Generating at {speed:,.0f} bytes/s")
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"{about}\n\n{status}"
        took = time.perf_counter() - start
        self.bytes_per_second[read.folder.name] = self.bytes_per_second[AUTO] = wanted / took
        continuation = np.concatenate(parts, axis=1)[0].tobytes()
        pcm = adapters.audio.decode(prompt + continuation, layout)
        tail = prompt_pcm[-round(TAIL_SECONDS * rate) :]
        measures = views.continuation_measures(
            adapters.audio.continuation_metrics(tail / 32768, pcm[len(prompt) :] / 32768))
        made = (f"Generated {wanted / rate:.2f} of {wanted / rate:.2f} s in {took:.1f} s ({wanted / took:,.0f} bytes/s, "
                f"{decoding_path(how_run)}). {drawn}")
        yield (rate, pcm), views.waveform(pcm, rate, len(prompt) / rate), measures, curve, f"{about}\n\n{made}"

    def explorer_input(self, text, file, kind) -> tuple[bytes, str, str]:
        """(the bytes typed or uploaded, what to read them as, the upload's file name or "text").
        Read as "auto", a .mbz file (known by its magic bytes) is MBZ: decompressed, not scored as it is."""
        if kind not in EXPLORER_KINDS:
            raise UserError(f"Read it as: one of {', '.join(EXPLORER_KINDS)}, not {kind!r}.")
        if file:
            data, name = Path(file).read_bytes(), Path(file).name
            if kind == "auto":
                kind = MBZ if service.is_mbz(data) else detect_kind(file, data)
        elif text:
            data, name = adapters.text.encode(text), "text"
            kind = "text" if kind == "auto" else kind
        else:
            raise UserError("Type some text or upload a file to score.")
        if kind in ("text", "bytes") and len(data) > MAX_SCORE_BYTES:
            raise UserError(f"The input is {len(data):,} bytes; the explorer scores at most "
                            f"{MAX_SCORE_BYTES:,} bytes of text or raw bytes, and cuts nothing: shorten it.")
        return data, kind, name

    def reading(self, data: bytes, kind: str, checkpoint) -> Reading:
        """The input as the checkpoint (or the kind's default) reads it."""
        with self.model(kind, checkpoint) as (model, layout, folder):
            seconds = clip_seconds(layout, model.context)
            encoded = service.encode_file(data, layout, seconds)
        return Reading(model, layout, folder, kind, encoded, how_encoded(data, kind, layout, len(encoded), seconds))

    def unpack(self, blob: bytes, name: str, progress) -> Reading:
        """A .mbz decompressed by the served checkpoint that made it, as that checkpoint reads it."""
        header = service.read_mbz_header(blob)
        folder = service.find_checkpoint(header["checkpoint_sha256"], self.checkpoints)
        if folder is None:
            raise UserError(f"This .mbz was made with a checkpoint ({header['checkpoint'] or 'unnamed'}, sha256 "
                            f"{header['checkpoint_sha256'][:12]}...) that this app does not serve.")
        layout = Layout.from_dict(header["layout"])
        cap = explorer_cap(layout, service.load(folder)[0].context)
        if header["length"] > cap:
            raise UserError(f"This .mbz holds {header['length']:,} bytes of {layout.modality}; the explorer "
                            f"decompresses at most {cap:,}, so decompress it with python -m app.cli decompress.")
        start = time.perf_counter()
        unpacked = service.decompress(blob, folder,
                                      progress=coding_progress(progress, "Decompressing", header["length"]))
        kind = unpacked.layout.modality
        model, layout = service.load_for(kind, folder)
        saved = decompressed_name(name, unpacked.suffix, kind)
        note = (f"Decompressed {name} ({len(blob):,} bytes) with the {folder.name} checkpoint that made it, in "
                f"{time.perf_counter() - start:.1f} s: {len(unpacked.data):,} bytes of {kind}, their CRC-32 checked. "
                f"Download {saved} below.")
        return Reading(model, layout, folder, kind, unpacked.data, note, download(unpacked.content, saved))

    def explore(self, text, file, kind, checkpoint=AUTO, progress=gr.Progress()):
        """explore_now, as a request that Stop can end."""
        yield from stoppable(partial(self.explore_now, text, file, kind, checkpoint), progress)

    def explore_now(self, text, file, kind, checkpoint=AUTO, progress=gr.Progress()):
        """(summary, what the model read, surprisal chart, charts by position in the patch and in the
        context, compression table, download, what to keep for picking windows) for typed text or
        any file; a .mbz is decompressed, offered as a download and scored. Text and raw bytes are
        drawn whole in the chart and coloured byte by byte in a window of DETAIL_BYTES."""
        with shown_in_page("/explore"):
            data, kind, name = self.explorer_input(text, file, kind)
            read = self.unpack(data, name, progress) if kind == MBZ else self.reading(data, kind, checkpoint)
            kind, layout, encoded, patch_size = read.kind, read.layout, read.encoded, read.model.patch_size
            scored = service.score_bytes(read.model, encoded, progress=fraction(progress, "Scoring"))
            s, image, page, explored = scored.scores, None, "", None
            patches = views.entropy_patch_line(s.entropy, patch_size)
            if kind == "image":
                image = adapters.image.decode(encoded, layout)
                starts = np.zeros(len(encoded))
                starts[views.entropy_cuts(s.entropy, patch_size)] = 1
                chart = views.heat_map(adapters.image.surprisal_map(s.surprisal, layout),
                                       marks=adapters.image.surprisal_map(starts, layout) > 0,
                                       marks_label="an entropy patcher's patch starts in this pixel")
                page = picture_html(image)
                patches += (f" The rings mark where its patches start; MegaByte's start every {patch_size} bytes "
                            f"({patch_size / 3:.3g} pixels), alike everywhere.")
            elif kind == "audio":
                chart = views.surprisal_curve(s.surprisal, layout.sample_rate, entropy=s.entropy, patch_size=patch_size)
            else:
                chart = views.patch_chart(s.surprisal, patch_size, s.entropy,
                                          title=f"Surprisal of all {len(encoded):,} bytes, by patch")
                explored = Explored(kind, scored)
                page = explored.window(0)
            summary = (f"Scored {len(encoded):,} bytes as {kind} with the {read.folder.name} model "
                       f"in {scored.seconds:.1f} s: **{scored.bits_per_byte:.3f} bits per byte**.")
            if read.download:  # a .mbz: what it held comes first
                summary = f"{read.note}\n\n{summary}"
            elif read.note:
                summary = f"{summary}\n\n{read.note}"
            return (f"{summary}\n\n{patches}", page, chart, views.position_chart(s.surprisal, patch_size),
                    views.context_chart(s.surprisal, read.model.context), compression_rows(scored, image),
                    read.download, explored)

    def window(self, explored: Explored | None, start):
        """The coloured detail of another window of the last input scored: nothing is scored again."""
        with shown_in_page("/window"):
            if explored is None:  # an image or a clip: it has no window
                return gr.skip()
            return explored.window(limits.window_start(len(explored.scored.data)).check(start))

    def pick_window(self, explored: Explored | None, click: gr.SelectData):
        """(its start, the window) centred on the byte clicked in the chart of the whole input."""
        if explored is None:
            return gr.skip(), gr.skip()
        start = max(0, views.byte_at(click.index[0], len(explored.scored.data)) - DETAIL_BYTES // 2)
        return start, explored.window(start)

    def compress(self, text, file, kind, checkpoint=AUTO, progress=gr.Progress()):
        """compress_now, as a request that Stop can end."""
        yield from stoppable(partial(self.compress_now, text, file, kind, checkpoint), progress)

    def compress_now(self, text, file, kind, checkpoint=AUTO, progress=gr.Progress()):
        """(how many bytes the model's .mbz of the input takes, beside xz; the .mbz to download), for
        the same bytes explore scores. Several times slower than scoring, so asked for on its own."""
        with shown_in_page("/compress"):
            data, kind, name = self.explorer_input(text, file, kind)
            if kind == MBZ:
                raise UserError("This file is a .mbz already: Score decompresses it.")
            read = self.reading(data, kind, checkpoint)
            start = time.perf_counter()
            blob = service.compress_bytes(read.encoded, kind, read.folder,
                                          progress=coding_progress(progress, "Compressing", len(read.encoded)))
            n, of_xz = len(read.encoded), len(blob) / service.xz_size(read.encoded)  # xz on the bytes coded
            line = (f"Compressed with this model: {len(blob):,} bytes ({of_xz:.0%} of xz -9e) for the {n:,} bytes "
                    f"of {kind} it read, header included: {8 * len(blob) / n:.2f} bits per byte, "
                    f"in {time.perf_counter() - start:.1f} s.")
            note = service.coding_note(read.layout, f"reading the file as bytes (at most {MAX_SCORE_BYTES:,})")
            line = f"{line} Note: {note}." if note else line
            return line, download(blob, f"{name}.mbz")


def decoding_path(status: service.GenerationStatus) -> str:
    """The decoder's own words for its path, e.g. "decoder: compiled, fused C++ step, sampling in C++,
    float32"."""
    if status.path.startswith("compiled"):
        return f"decoder: {status.path}"
    return f"decoder: {status.path}; the compiled step is not ready yet"


def prompt_label(high: float) -> str:
    return f"Prompt: the clip's first seconds (at most {high:g} with this checkpoint)"
