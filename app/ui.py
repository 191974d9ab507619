"""The web app: complete an image, continue an audio clip, see the model's surprisal at every byte.

`build(checkpoints)` makes the Gradio Blocks and `launch` serves them; `python -m app`
does both, and so do the tests (on tiny checkpoints).
"""

from __future__ import annotations

import contextlib
import io
import mimetypes
import os
import threading
import time
from pathlib import Path

# Nothing may call home: Gradio reads these when it is imported.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"

import gradio as gr
import numpy as np
import soundfile as sf
import torch
from PIL import Image

import adapters
from adapters import AdapterError
from app import service, views
from app.service import UserError
from model import CheckpointError, read_config

ASSETS = service.ROOT / "assets"

# Caps, each named in the interface. Speeds measured on 2 shared CPU cores with one torch thread.
MAX_UPLOAD_MB = 5
MAX_SCORE_BYTES = 20_000  # text or raw bytes in the explorer: ~3 s to score (~7 KB/s), ~2 MB of coloured HTML
MAX_AUDIO_SECONDS = 5.0  # of a clip, scored as a prompt or in the explorer (40,000 bytes at 8 kHz)
MAX_CONTINUE_SECONDS = 4.0  # generation makes ~300-1,000 bytes a second: 4 s of 8 kHz audio is 30-100 s
MAX_SAMPLES = 8
CONCURRENT_REQUESTS = 2  # model requests served at once; more wait in the queue
MAX_QUEUE = 20
SHOWN_IMAGE_SIDE = 256  # model-resolution images are enlarged to about this many pixels
DEFAULT_IMAGE_SIZE = 32  # the rows slider's scale when no image checkpoint is there yet
EXPLORER_KINDS = ("auto", "text", "image", "audio", "bytes")
PROGRESS_EVERY_SECONDS = 0.25

# System fonts only: the default theme would fetch its fonts from Google.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "SFMono-Regular", "monospace"])


def image_path_input(**options) -> gr.Image:
    """An image input that hands the app the uploaded file's path unopened, so that a corrupt
    or non-image file gets the app's one-sentence message instead of failing inside Gradio."""
    image = gr.Image(type="filepath", **options)
    # Overridden on the instance: a gr.Image subclass would make Gradio write a .pyi beside this file.
    image.preprocess = lambda payload: None if payload is None else payload.path
    return image


@contextlib.contextmanager
def shown_in_page():
    """Turns a UserError (one sentence meant for the user) into gr.Error, which the page shows."""
    try:
        yield
    except (UserError, AdapterError) as e:
        raise gr.Error(str(e), print_exception=False) from None


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


class Studio:
    """The request handlers, serving the checkpoints in one folder (text/, image/, audio/)."""

    def __init__(self, checkpoints):
        self.checkpoints = Path(checkpoints)
        # Generation keeps its KV cache inside the model: one request at a time per model.
        self.locks = {name: threading.Lock() for name in ("text", "image", "audio")}

    def folder(self, modality: str) -> Path:
        return self.checkpoints / service.default_checkpoint(modality).name

    @contextlib.contextmanager
    def model(self, modality: str):
        folder = self.folder(modality)
        model, layout = service.load_for(modality, folder)
        with self.locks[folder.name]:
            yield model, layout

    def image_size(self) -> int:
        """The image checkpoint's side, from its config alone (weights load on first use)."""
        try:
            return int(read_config(self.folder("image"))["layout"]["image_size"])
        except (CheckpointError, KeyError, TypeError, ValueError):
            return DEFAULT_IMAGE_SIZE  # the tab names the missing checkpoint when it is used

    def complete_image(self, image, rows, samples, temperature, top_k, seed):
        """Streams (original, completions, heat map, summary); the completions grow a row at a time."""
        with shown_in_page(), self.model("image") as (model, layout):
            how = service.sampling(temperature, top_k)
            data = service.encode_file(required(image, "an image"), layout)
            original = adapters.image.decode(data, layout)
            scored = service.score_bytes(model, data)
            heat = views.heat_map(adapters.image.surprisal_map(scored.scores.surprisal, layout),
                                  title="Where the model was surprised by the original")
            bits = f"Bits per subpixel of the original: {comparison(compression_rows(scored, original))}."
            prompt = data[: adapters.image.prefix_bytes(rows, layout)]
            row_bytes = adapters.image.prefix_bytes(1, layout)  # one row, or one row of blocks
            wanted = layout.bytes_per_image - len(prompt)
            start = time.perf_counter()

            def update(made: np.ndarray, complete: bool):
                gallery = [(enlarge(adapters.image.decode(prompt + row.tobytes(), layout)), f"sample {i + 1}")
                           for i, row in enumerate(made)]
                status = (f"Generated {made.shape[1] // row_bytes} of {wanted // row_bytes} rows "
                          f"in {time.perf_counter() - start:.1f} s.")
                # Between the first and last update the original and heat map stay as they are:
                # sending them again would rewrite their files while the browser may be reading them.
                unchanged = lambda value: value if complete else gr.skip()  # noqa: E731
                return unchanged(enlarge(original)), gallery, unchanged(heat), f"{bits}\n\n{status}"

            made = np.zeros((samples, 0), np.uint8)
            yield update(made, complete=True)  # the prompt alone, at once
            parts = []
            for part in service.continue_bytes(model, prompt, wanted, samples, how, seed):
                parts.append(part)
                rows_before = made.shape[1] // row_bytes
                made = np.concatenate(parts, axis=1)
                if rows_before < made.shape[1] // row_bytes < wanted // row_bytes:  # a new row, not the last
                    yield update(made, complete=False)
            yield update(made, complete=True)

    def continue_audio(self, audio, prompt_seconds, new_seconds, temperature, top_k, seed,
                       progress=gr.Progress()):
        """Yields the prompt's analysis at once, then prompt + continuation when it is done."""
        with shown_in_page(), self.model("audio") as (model, layout):
            how = service.sampling(temperature, top_k)
            rate = layout.sample_rate
            prompt = service.encode_file(required(audio, "a clip"), layout, prompt_seconds)
            scored = service.score_bytes(model, prompt, progress=lambda done, n: progress(done / n, desc="Scoring"))
            curve = views.surprisal_curve(scored.scores.surprisal, rate, title="The prompt's surprisal over time")
            prompt_pcm = adapters.audio.decode(prompt, layout)
            about = (f"Prompt: {len(prompt) / rate:.2f} s; bits per sample: "
                     f"{comparison(compression_rows(scored))}.")
            yield (rate, prompt_pcm), views.waveform(prompt_pcm, rate), curve, about
            wanted = adapters.audio.seconds_to_bytes(new_seconds, layout)
            parts, start, last = [], time.perf_counter(), 0.0
            for part in service.continue_bytes(model, prompt, wanted, 1, how, seed):
                parts.append(part)
                if time.perf_counter() - last > PROGRESS_EVERY_SECONDS:
                    last = time.perf_counter()
                    progress(sum(p.shape[1] for p in parts) / wanted, desc="Generating")
                    yield gr.skip(), gr.skip(), gr.skip(), gr.skip()  # where a Stop can end the request
            pcm = adapters.audio.decode(prompt + np.concatenate(parts, axis=1)[0].tobytes(), layout)
            made = f"Continued by {wanted / rate:.2f} s in {time.perf_counter() - start:.1f} s."
            yield (rate, pcm), views.waveform(pcm, rate, len(prompt) / rate), curve, f"{about}\n\n{made}"

    def explore(self, text, file, kind, progress=gr.Progress()):
        """(summary, coloured HTML, chart, compression table) for typed text or any file."""
        with shown_in_page():
            if file:
                data = Path(file).read_bytes()
                kind = detect_kind(file, data) if kind == "auto" else kind
            elif text:
                data = adapters.text.encode(text)
                kind = "text" if kind == "auto" else kind
            else:
                raise UserError("Type some text or upload a file to score.")
            if kind in ("text", "bytes") and len(data) > MAX_SCORE_BYTES:
                raise UserError(f"The input is {len(data):,} bytes; the explorer scores at most "
                                f"{MAX_SCORE_BYTES:,} bytes of text or raw bytes.")
            with self.model(kind) as (model, layout):
                data = service.encode_file(data, layout, MAX_AUDIO_SECONDS)
                scored = service.score_bytes(model, data, progress=lambda done, n: progress(done / n, desc="Scoring"))
                patch_size = model.patch_size
            s, image, page = scored.scores, None, ""
            if kind == "image":
                image = adapters.image.decode(data, layout)
                chart = views.heat_map(adapters.image.surprisal_map(s.surprisal, layout))
            elif kind == "audio":
                chart = views.surprisal_curve(s.surprisal, layout.sample_rate)
            else:
                chart = views.patch_chart(s.surprisal, patch_size)
                page = (views.text_html if kind == "text" else views.hex_html)(data, s.surprisal, s.top_bytes, s.top_probs)
            summary = (f"Scored {len(data):,} bytes as {kind} with the {self.folder(kind).name} model "
                       f"in {scored.seconds:.1f} s: **{scored.bits_per_byte:.3f} bits per byte**.")
            return summary, page, chart, compression_rows(scored, image)


def sampling_controls():
    temperature = gr.Slider(0, 2, value=1.0, step=0.05, label="Temperature (0 = always the likeliest byte)")
    top_k = gr.Slider(0, 256, value=0, step=1, precision=0, label="Top-k (0 = all 256 bytes)")
    seed = gr.Number(0, precision=0, minimum=0, maximum=2**31 - 1, label="Seed")
    return temperature, top_k, seed


def plot(label: str) -> gr.Image:
    """An output for a matplotlib figure; the figure carries its own title, since Gradio's
    label would float over its top. The label still names the output in the API."""
    return gr.Image(label=label, show_label=False, format="png", interactive=False)


def wire(button, fn, inputs, outputs, api_name: str, stop=None, progress_on=None):
    """Runs fn on a click, queued with every other model request; a Stop button cancels it."""
    event = button.click(fn, inputs, outputs, api_name=api_name, concurrency_id="model",
                         show_progress_on=progress_on)
    if stop is not None:
        stop.click(None, cancels=[event], api_visibility="private")


def run_buttons(label: str):
    with gr.Row():
        return gr.Button(label, variant="primary"), gr.Button("Stop", variant="stop")


def examples(folder: str, pattern: str) -> list[str]:
    return [str(p) for p in sorted((ASSETS / folder).glob(pattern))]


def image_tab(studio: Studio):
    size = studio.image_size()
    with gr.Row():
        with gr.Column():
            image = image_path_input(label=f"Image (cropped square, at most {MAX_UPLOAD_MB} MB)",
                                     sources=["upload", "clipboard"], height=260, elem_id="image-input")
            gr.Examples(examples("images", "*.png"), inputs=image)
            rows = gr.Slider(1, size - 1, value=size // 2, step=1, precision=0, label="Top rows to keep")
            samples = gr.Slider(1, MAX_SAMPLES, value=4, step=1, precision=0,
                                label=f"Samples (generated as one batch, at most {MAX_SAMPLES})")
            temperature, top_k, seed = sampling_controls()
            go, stop = run_buttons("Complete")
        with gr.Column():
            original = gr.Image(label=f"Original at the model's {size}×{size}", format="png", interactive=False)
            gallery = gr.Gallery(label="Completions (magenta: not generated yet)", columns=4, height="auto", format="png",
                                 interactive=False, elem_id="completions")
            heat = plot("Where the model was surprised by the original")
            summary = gr.Markdown(elem_id="image-summary")
    wire(go, studio.complete_image, [image, rows, samples, temperature, top_k, seed],
         [original, gallery, heat, summary], "complete_image", stop)


def audio_tab(studio: Studio):
    with gr.Row():
        with gr.Column():
            audio = gr.Audio(sources=["upload", "microphone"], type="filepath",
                             label=f"Clip (wav, flac, ogg, …; at most {MAX_UPLOAD_MB} MB)", elem_id="audio-input")
            gr.Examples(examples("audio", "*.flac"), inputs=audio)
            prompt_seconds = gr.Slider(0.25, MAX_AUDIO_SECONDS, value=2, step=0.25,
                                       label=f"Prompt: the clip's first seconds (at most {MAX_AUDIO_SECONDS:g})",
                                       elem_id="prompt-seconds")
            new_seconds = gr.Slider(0.25, MAX_CONTINUE_SECONDS, value=1, step=0.25,
                                    label=f"Seconds to continue (at most {MAX_CONTINUE_SECONDS:g}; "
                                          "each takes 10-30 s on a CPU)", elem_id="new-seconds")
            temperature, top_k, seed = sampling_controls()
            go, stop = run_buttons("Continue")
        with gr.Column():
            result = gr.Audio(label="Prompt + continuation", type="numpy", format="wav",
                              interactive=False, elem_id="continuation")
            wave = plot("Waveform and spectrogram")
            curve = plot("The prompt's surprisal over time")
            summary = gr.Markdown(elem_id="audio-summary")
    wire(go, studio.continue_audio, [audio, prompt_seconds, new_seconds, temperature, top_k, seed],
         [result, wave, curve, summary], "continue_audio", stop, progress_on=result)  # the prompt's plots stay in view


def explorer_tab(studio: Studio):
    with gr.Row():
        with gr.Column():
            text = gr.Textbox(label=f"Text (at most {MAX_SCORE_BYTES:,} bytes)", lines=8,
                              max_length=MAX_SCORE_BYTES, elem_id="explore-text")
            file = gr.File(label=f"…or any file, used instead of the text (at most {MAX_UPLOAD_MB} MB; "
                                 f"audio: the first {MAX_AUDIO_SECONDS:g} s)", type="filepath")
            kind = gr.Radio(list(EXPLORER_KINDS), value="auto", label="Read it as",
                            info="auto: images and audio by their extension or format, else UTF-8 text, else raw bytes")
            go = gr.Button("Score", variant="primary")
            gr.Examples([["def greet(name):\n    return f'Hello, {name}!'\n", None, "auto"],
                         *[[None, path, "auto"] for path in examples("text", "*.txt")],
                         [None, examples("images", "chelsea.png")[0], "auto"],
                         [None, examples("audio", "guit_em9.flac")[0], "auto"]],
                        inputs=[text, file, kind])
        with gr.Column():
            summary = gr.Markdown(elem_id="explore-summary")
            table = gr.Dataframe(headers=["coder", "bits per byte"], label="On this input (fewer bits is better)",
                                 interactive=False)
            page = gr.HTML(elem_id="surprisal", max_height=640)
            chart = plot("Surprisal: per patch for text, per pixel for images, over time for audio")
    wire(go, studio.explore, [text, file, kind], [summary, page, chart, table], "explore")


def build(checkpoints=service.CHECKPOINTS) -> gr.Blocks:
    studio = Studio(checkpoints)
    with gr.Blocks(title="MegaByte studio", analytics_enabled=False) as demo:
        gr.Markdown("# MegaByte studio\nOne byte-level model per medium: it completes images, continues "
                    "audio and shows how surprised it is by every byte. Requests run "
                    f"{CONCURRENT_REQUESTS} at a time; the rest wait in a queue.")
        with gr.Tab("Image completion"):
            image_tab(studio)
        with gr.Tab("Audio continuation"):
            audio_tab(studio)
        with gr.Tab("Surprisal explorer"):
            explorer_tab(studio)
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, threads: int = 1) -> str:
    """Starts serving the app in the background and returns its URL: never through a share
    tunnel, with uploads and the queue capped."""
    torch.set_num_threads(threads)  # one byte at a time: more threads mostly wait on each other
    demo.queue(default_concurrency_limit=CONCURRENT_REQUESTS, max_size=MAX_QUEUE)
    _, url, _ = demo.launch(server_name=host, server_port=port, share=False, max_file_size=f"{MAX_UPLOAD_MB}mb",
                            theme=THEME, ssr_mode=False, prevent_thread_lock=True, quiet=True)
    return url
