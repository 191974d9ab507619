"""The web app's page: complete an image, continue an audio clip, see the model's surprisal at
every byte. It only builds the components and wires them to the handlers (app.handlers).

`build(checkpoints)` makes the Gradio Blocks and `launch` serves them; `python -m app`
does both, and so do the tests (on tiny checkpoints).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import gradio as gr
import torch

from app import limits, service
from app.handlers import ASSETS, EXPLORER_KINDS, Studio, example_files, is_mbz_file, prompt_label
from app.limits import DETAIL_BYTES, MAX_SCORE_BYTES, MAX_UPLOAD_MB, SHORT_CONTEXT_AUDIO_SECONDS
from app.service import AUTO
import model.compress as mbz

# Generations served at once, and scorings beside them (separate, so that scoring a short text
# never waits behind long generations); more of either wait in the queue.
CONCURRENT_REQUESTS = 2
MAX_QUEUE = 20
MOST_EXAMPLES = 20  # on one page: auto shows the examples of every checkpoint of the medium
# The files Gradio serves (downloads, plots, audio, uploads) stay in its cache this long at most:
# time enough to fetch them. Older ones are looked for every SWEEP_EVERY_SECONDS.
KEEP_FILES_SECONDS = 3600
SWEEP_EVERY_SECONDS = 600

# The gallery is as tall as its rows of samples: Gradio would keep it tall and empty below them.
# Images at the model's size are sent enlarged with sharp pixels (enlarge); the browser keeps
# them sharp when it scales them to fit.
CSS = """#completions, #completions .grid-wrap { height: auto !important; min-height: 0 !important; }
#image-original img, #completions img { image-rendering: pixelated; }"""

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


def checked_by_handler(component):
    """Hands the handler the raw value. Gradio's own check would answer a bad API value with its
    generic text and a traceback in the log; the handler checks it and names the control."""
    component.preprocess = lambda payload: payload
    return component


def remove_old_files(folder: Path, kept: set[Path]):
    """Removes the files and empty folders under `folder` unchanged for KEEP_FILES_SECONDS (a
    folder just made is about to get its file), but those in `kept`."""
    cutoff = time.time() - KEEP_FILES_SECONDS
    for parent, folders, files in os.walk(folder, topdown=False):  # a folder's files before the folder
        for name in files + folders:
            path = Path(parent, name)
            with contextlib.suppress(OSError):  # gone already, or a folder not empty
                if path in kept or path.lstat().st_mtime > cutoff:
                    continue
                if name in folders:
                    path.rmdir()
                else:
                    path.unlink()


def sweep_while_running(demo: gr.Blocks):
    """Every SWEEP_EVERY_SECONDS while the app runs, removes the files in Gradio's cache older than
    KEEP_FILES_SECONDS, but the examples it cached at start-up. Gradio's own delete_cache misses
    every output that a handler updated (gr.skip(), gr.File(visible=...)): the session's copy of
    the component that caches its files from then on is not one it tracks."""
    cache = Path(demo.GRADIO_CACHE)
    kept = {Path(parent, name) for parent, folders, files in os.walk(cache) for name in files + folders}  # examples

    def sweep():
        while demo.is_running:
            time.sleep(SWEEP_EVERY_SECONDS)
            remove_old_files(cache, kept)

    threading.Thread(target=sweep, name="sweep-old-files", daemon=True).start()


def sampling_controls():
    temperature = gr.Slider(0, limits.MAX_TEMPERATURE, value=1.0, step=0.05,
                            label="Temperature (0 = always the likeliest byte)")
    top_k = gr.Slider(0, 256, value=0, step=1, precision=0, label="Top-k (0 = all 256 bytes)")
    seed = gr.Number(0, precision=0, minimum=0, maximum=limits.MAX_SEED, label="Seed")
    return checked_by_handler(temperature), checked_by_handler(top_k), checked_by_handler(seed)


def checkpoint_choice(studio: Studio, modality: str, elem_id: str) -> gr.Dropdown:
    choices = [("auto: least surprised by the input", AUTO), *studio.choices(modality)]
    return checked_by_handler(gr.Dropdown(choices, value=AUTO, label="Checkpoint", elem_id=elem_id))


def examples_of(component, samples: list[list[str]]) -> gr.Dataset:
    """Example files that fill `component` when clicked; the checkpoint's choice swaps them."""
    examples = gr.Dataset(components=[component], samples=samples, label="Examples",
                          samples_per_page=MOST_EXAMPLES)
    examples.click(lambda sample: sample[0], examples, component, api_visibility="private")
    return examples


def plot(label: str, **options) -> gr.Image:
    """An output for a matplotlib figure; the figure carries its own title, since Gradio's
    label would float over its top. The label still names the output in the API."""
    return gr.Image(label=label, show_label=False, format="png", interactive=False, **options)


# After a Stop the summary says so, and what was made stays on the page.
STOPPED = """(summary) => {
    const progress = /Generated ([\\d.]+) of ([\\d.]+) (rows|s) in ([\\d.]+) s[^\\n]*/;
    const shown = (summary || "").match(progress);
    if (shown && shown[1] === shown[2]) return summary;
    if (shown) return summary.replace(progress, "Stopped after $1 of $2 $3 ($4 s); what was made stays.");
    return (summary ? summary + "\\n\\n" : "") + "Stopped before generating.";
}"""


def wire(button, fn, inputs, outputs, api_name: str, stop, summary, progress_on=None):
    """Runs fn on a click, queued with the other generations; Stop cancels it and says so."""
    event = button.click(fn, inputs, outputs, api_name=api_name, concurrency_id="generate",
                         show_progress_on=progress_on)
    stop.click(None, summary, summary, js=STOPPED, cancels=[event], api_visibility="private")
    return event


def run_buttons(label: str):
    with gr.Row():
        return gr.Button(label, variant="primary"), gr.Button("Stop", variant="stop")


def image_tab(studio: Studio):
    rows_range = studio.rows_range(AUTO)
    with gr.Row():
        with gr.Column(scale=1, min_width=360):
            checkpoint = checkpoint_choice(studio, "image", "image-checkpoint")
            image = image_path_input(label=f"Image (cropped square, at most {MAX_UPLOAD_MB} MB)",
                                     sources=["upload", "clipboard"], height=260, elem_id="image-input")
            examples = examples_of(image, studio.examples("image", AUTO))
            rows = checked_by_handler(gr.Slider(rows_range.low, rows_range.high, value=(rows_range.high + 1) // 2,
                                                step=1, precision=0, label="Top rows to keep"))
            samples = checked_by_handler(gr.Slider(1, limits.MAX_SAMPLES, value=4, step=1, precision=0,
                                                   label=f"Samples (generated as one batch, at most {limits.MAX_SAMPLES})"))
            temperature, top_k, seed = sampling_controls()
            go, stop = run_buttons("Complete")
        with gr.Column(scale=2):  # wide: four samples a row at 128 px or more each
            with gr.Row(equal_height=True):
                original = gr.Image(label="Original at the model's size", format="png", interactive=False,
                                    elem_id="image-original")
                # no buttons: in half the column they would float over the figure's title
                heat = plot("Where the model was surprised by the original", buttons=[])
            # The gallery's own label and captions would float over the kept rows: a heading instead.
            gr.Markdown("**Completions**, samples in order: the kept rows, then the model's (magenta: not "
                        "generated yet)")
            gallery = gr.Gallery(label="Completions", show_label=False, columns=4, height="auto", format="png",
                                 object_fit="contain", interactive=False, allow_preview=False, buttons=[],
                                 elem_id="completions")
            summary = gr.Markdown(label="Summary", elem_id="image-summary")
    checkpoint.change(studio.image_choice, checkpoint, [rows, examples], api_visibility="private")
    # preprocess=False: Gradio's own image preprocessing would fail on a corrupt file before the check
    image.upload(studio.check_image_upload, image, image, api_visibility="private", preprocess=False)
    wire(go, studio.complete_image, [image, rows, samples, temperature, top_k, seed, checkpoint],
         [original, gallery, heat, summary], "complete_image", stop, summary)


def audio_tab(studio: Studio):
    with gr.Row():
        with gr.Column():
            checkpoint = checkpoint_choice(studio, "audio", "audio-checkpoint")
            audio = gr.Audio(sources=["upload", "microphone"], type="filepath",
                             label=f"Clip (wav, flac, ogg, …; at most {MAX_UPLOAD_MB} MB)", elem_id="audio-input")
            examples = examples_of(audio, studio.examples("audio", AUTO))
            prompt_range = studio.prompt_range(AUTO)
            prompt_seconds = checked_by_handler(gr.Slider(
                prompt_range.low, prompt_range.high, value=2, step=0.25, elem_id="prompt-seconds",
                label=prompt_label(prompt_range.high)))
            new_seconds = checked_by_handler(gr.Slider(
                limits.CONTINUE_SECONDS.low, limits.MAX_CONTINUE_SECONDS, value=1, step=0.25, elem_id="new-seconds",
                label=f"Seconds to continue (at most {limits.MAX_CONTINUE_SECONDS:g})"))
            estimate = gr.Markdown(studio.estimate(1, AUTO), label="How long it will take", elem_id="audio-estimate")
            temperature, top_k, seed = sampling_controls()
            steer = gr.Checkbox(True, label=service.STEER_LABEL, info=f"{service.STEER_INFO}; off: one draw", elem_id="steer")
            go, stop = run_buttons("Continue")
        with gr.Column():
            result = gr.Audio(label="Prompt + continuation", type="numpy", format="wav",
                              interactive=False, elem_id="continuation")
            wave = plot("Waveform and spectrogram")
            measures = gr.Markdown(label="The continuation against the prompt's last second", elem_id="audio-measures")
            curve = plot("The prompt's surprisal over time")
            summary = gr.Markdown(label="Summary", elem_id="audio-summary")
    checkpoint.change(studio.audio_choice, [checkpoint, new_seconds, prompt_seconds], [prompt_seconds, examples, estimate],
                      api_visibility="private")
    new_seconds.change(studio.estimate, [new_seconds, checkpoint], estimate, api_visibility="private",
                       queue=False, show_progress="hidden")
    event = wire(go, studio.continue_audio,
                 [audio, prompt_seconds, new_seconds, temperature, top_k, seed, checkpoint, steer],
                 [result, wave, measures, curve, summary], "continue_audio", stop, summary,
                 progress_on=result)  # the prompt's plots stay in view
    event.then(studio.estimate, [new_seconds, checkpoint], estimate, api_visibility="private", queue=False)


# The byte count beside the text box, live and in bytes: the same count the explorer's cap checks.
BYTE_COUNT = f"""(text) => {{
    const bytes = new TextEncoder().encode(text || "").length;
    const shown = bytes.toLocaleString("en-US");
    return bytes > {MAX_SCORE_BYTES}
        ? `**${{shown}} bytes: over the limit of {MAX_SCORE_BYTES:,}.** Shorten the text to score it; nothing is cut.`
        : `${{shown}} of at most {MAX_SCORE_BYTES:,} bytes (UTF-8)`;
}}"""


def explorer_tab(studio: Studio):
    checkpoints = [("auto: the default for what the input is read as", AUTO)]
    for modality in ("text", "image", "audio"):
        checkpoints += studio.choices(modality)
    with gr.Row():
        with gr.Column():
            # No max_length: a browser cuts at characters, not bytes, and silently. The count shows the bytes.
            text = gr.Textbox(label=f"Text (at most {MAX_SCORE_BYTES:,} bytes)", lines=8, elem_id="explore-text")
            count = gr.Markdown(f"0 of at most {MAX_SCORE_BYTES:,} bytes (UTF-8)", label="Bytes",
                                elem_id="explore-count")
            file = gr.File(label=f"…or any file, used instead of the text (at most {MAX_UPLOAD_MB} MB; audio: as "
                                 f"much as the checkpoint's context holds, at least {SHORT_CONTEXT_AUDIO_SECONDS:g} s)",
                           type="filepath", elem_id="explore-file")
            kind = checked_by_handler(gr.Radio(
                list(EXPLORER_KINDS), value="auto", label="Read it as",
                info="auto: a .mbz is decompressed; images and audio by their extension or format, "
                     "else UTF-8 text, else raw bytes"))
            checkpoint = checked_by_handler(gr.Dropdown(checkpoints, value=AUTO, label="Checkpoint",
                                                        elem_id="explore-checkpoint"))
            go, stop = run_buttons("Score")
            # Short labels: a table of the inputs' long labels would be clipped.
            samples = {"Python code": ["def greet(name):\n    return f'Hello, {name}!'\n", None],
                       **{Path(path).name: [None, path] for path in example_files(["text"], "text")},
                       "a photo (chelsea.png)": [None, str(ASSETS / "images" / "chelsea.png")],
                       "a guitar chord (guit_em9.flac)": [None, str(ASSETS / "audio" / "guit_em9.flac")]}
            gr.Examples([[text_, file_, "auto", AUTO] for text_, file_ in samples.values()],
                        inputs=[text, file, kind, checkpoint], example_labels=list(samples), elem_id="explore-examples")
        with gr.Column():
            summary = gr.Markdown(label="Summary", elem_id="explore-summary")
            # Compressing takes several times as long as scoring: asked for once the input is scored.
            compress = gr.Button("Compress with this model", interactive=False, elem_id="explore-compress")
            compressed = gr.Markdown(label="Compressed", elem_id="explore-compressed")
            saved = gr.File(label="Download", visible=False, interactive=False, elem_id="explore-download")
            table = gr.Dataframe(headers=["coder", "bits per byte"], label="On this input (fewer bits is better)",
                                 interactive=False)
            chart = plot("Surprisal of the whole input: per patch for text, per pixel for images, over time for audio",
                         elem_id="explore-chart")
            window_start = checked_by_handler(gr.Number(
                0, precision=0, minimum=0, step=DETAIL_BYTES, visible=False, elem_id="window-start",
                label=f"Coloured below: {DETAIL_BYTES:,} bytes from this byte on (or click the chart above)"))
            page = gr.HTML(label="What the model read, coloured by surprisal", elem_id="surprisal", max_height=640)
            context = plot("Mean surprisal by position in the context")
            positions = plot("Mean surprisal by position inside the patch")
            explored = gr.State()  # the last text or raw bytes scored, for picking windows of them
    text.change(None, text, count, js=BYTE_COUNT, api_visibility="private", queue=False, show_progress="hidden")
    inputs = [text, file, kind, checkpoint]
    go.click(lambda: "", None, compressed, api_visibility="private", queue=False)  # a new input's line comes later
    scored = go.click(studio.explore, inputs, [summary, page, chart, positions, context, table, saved, explored],
                      api_name="explore", concurrency_id="score")
    # Another window is coloured from the scores kept in `explored`: nothing is scored again.
    scored.success(lambda explored: gr.Number(0, visible=explored is not None), explored, window_start,
                   api_visibility="private", queue=False)
    window_start.input(studio.window, [explored, window_start], page, api_visibility="private", queue=False,
                       trigger_mode="always_last")
    chart.select(studio.pick_window, explored, [window_start, page], api_visibility="private", queue=False)
    # A .mbz is decompressed, not compressed again.
    scored.success(lambda file: gr.Button(interactive=not is_mbz_file(file)), file, compress,
                   api_visibility="private", queue=False)
    packed = compress.click(studio.compress, inputs, [compressed, saved], api_name="compress",
                            concurrency_id="generate", show_progress_on=compressed)
    stop.click(None, cancels=[scored, packed], api_visibility="private")
    for event in (scored, packed):  # the download box shows only when there is a file in it
        event.then(lambda path: gr.File(visible=bool(path)), saved, saved, api_visibility="private", queue=False)


def build(checkpoints=service.CHECKPOINTS) -> gr.Blocks:
    """The app. Gradio removes the files in its cache older than KEEP_FILES_SECONDS that it tracks,
    and all of them when it closes; launch() sweeps the rest (sweep_while_running)."""
    studio = Studio(checkpoints)
    with gr.Blocks(title="MegaByte studio", analytics_enabled=False,
                   delete_cache=(SWEEP_EVERY_SECONDS, KEEP_FILES_SECONDS)) as demo:
        gr.Markdown("# MegaByte studio\nOne byte-level model per medium: it completes images, continues "
                    f"audio and shows how surprised it is by every byte. {CONCURRENT_REQUESTS} generations "
                    f"and {CONCURRENT_REQUESTS} scorings run at a time; the rest wait in a queue.")
        with gr.Tab("Image completion"):
            image_tab(studio)
        with gr.Tab("Audio continuation"):
            audio_tab(studio)
        with gr.Tab("Surprisal explorer"):
            explorer_tab(studio)
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860) -> str:
    """Starts serving the app in the background and returns its URL: never through a share
    tunnel, with uploads and the queue capped."""
    # Once, for every request: the .mbz coder needs this count, and a request that changed it would
    # change it for all the others (generating a byte at a time gains little from more threads).
    torch.set_num_threads(mbz.THREADS)
    demo.queue(default_concurrency_limit=CONCURRENT_REQUESTS, max_size=MAX_QUEUE)
    _, url, _ = demo.launch(server_name=host, server_port=port, share=False, max_file_size=f"{MAX_UPLOAD_MB}mb",
                            theme=THEME, css=CSS, ssr_mode=False, prevent_thread_lock=True, quiet=True,
                            allowed_paths=[str(ASSETS)])  # the examples the checkpoint choice swaps in
    sweep_while_running(demo)
    return url
