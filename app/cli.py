"""The command line: how surprised a model is by a file, and what it makes of a prompt.

    python -m app.cli score assets/text/genesis.txt --modality text
    python -m app.cli score assets/images/astronaut.png assets/images/coffee.png --modality image --json
    python -m app.cli generate text --prompt "In the beginning" --bytes 200
    python -m app.cli generate image assets/images/coffee.png --rows 16 --samples 4
    python -m app.cli generate audio assets/audio/ambi_piano.flac --prompt-seconds 1 --seconds 2

Every mistake a user can make ends in one line on stderr, "error: ...", and a non-zero exit;
a mistake in the arguments also prints the usage line above it.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

import adapters
from app import limits, service
from app.service import UserError
from model import bucket_for
from model.compress import MAX_LENGTH

SPOTS = 3  # how many of the most surprising places the summary names


class Parser(argparse.ArgumentParser):
    """argparse, reporting a mistake in one line like every other error here."""

    def error(self, message):
        self.print_usage(sys.stderr)
        fail(message, status=2)


def fail(message: str, status: int = 1):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def positive_seconds(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def progress_bar(total: int, what: str) -> tqdm:
    """A bar on stderr that shows only once the work has taken a second, so quick runs stay quiet."""
    return tqdm(total=total, desc=what, unit="B", unit_scale=True, file=sys.stderr, delay=1)


# score


def score(args):
    """Scores each file in turn with one model, loaded once."""
    folder = checkpoint_folder(args, args.modality)
    model, layout = service.load_for(args.modality, folder)
    for file in args.files:
        score_file(file, model, layout, folder, args)


def score_file(file: Path, model, layout, folder: Path, args):
    data = service.encode_file(file, layout)
    if len(data) > args.max_bytes:
        raise UserError(f"{file} is {len(data):,} bytes as {args.modality}, over the limit of {args.max_bytes:,}; "
                        f"pass --max-bytes {len(data)} to score it all (a progress bar shows the time left).")
    with progress_bar(len(data), f"scoring {file.name}") as bar:
        result = service.score_bytes(model, data, progress=lambda done, _total: bar.update(done - bar.n),
                                     adapt=args.adapt, modality=layout.modality)
    compressors = result.compressor_bits_per_byte()
    if args.json:
        report = {
            "file": str(file),
            "modality": args.modality,
            "checkpoint": str(folder),
            "bytes": len(data),
            "bits_per_byte": round(result.bits_per_byte, 4),
            "seconds": round(result.seconds, 4),
            "gzip_bits_per_byte": round(compressors["gzip -9"], 4),
            "xz_bits_per_byte": round(compressors["xz -9e"], 4),
            "patch_size": model.patch_size,
        }
        if args.per_byte:
            surprisal = result.scores.surprisal.astype(np.float64)  # float32 would print as 7.8470001220703125
            report["surprisal"] = np.round(surprisal, 3).tolist()
            report["patch_surprisal"] = np.round(patch_means(surprisal, model.patch_size), 3).tolist()
        print(json.dumps(report), flush=True)
        return
    print(f"{file}: {len(data):,} bytes as {args.modality}, scored by {folder} in {result.seconds:.1f} s")
    for name, bits in {"model": result.bits_per_byte, **compressors}.items():
        print(f"  {name:<8} {bits:6.3f} bits per byte")
    print("most surprising:")
    for spot in surprising_spots(data, result.scores.surprisal, layout, model.patch_size):
        print(f"  {spot}")


def patch_means(surprisal: np.ndarray, patch_size: int) -> np.ndarray:
    """Mean surprisal of each model patch (the last one may be short)."""
    starts = np.arange(0, len(surprisal), patch_size)
    return np.add.reduceat(surprisal, starts) / np.diff(np.append(starts, len(surprisal)))


def surprising_spots(data: bytes, surprisal: np.ndarray, layout, patch_size: int) -> list[str]:
    """The places the model least expected, most surprising first: pixels for an image
    (its three bytes together), model patches for everything else."""
    if layout.modality == "image":
        per_pixel = adapters.image.surprisal_map(surprisal, layout)
        top = np.argsort(per_pixel, axis=None)[::-1][:SPOTS]
        return [f"pixel at row {row}, column {column}: {per_pixel[row, column]:.1f} bits"
                for row, column in zip(*np.unravel_index(top, per_pixel.shape))]
    means = patch_means(surprisal, patch_size)
    spots = []
    for patch in np.argsort(means)[::-1][:SPOTS]:
        start, end = patch * patch_size, min((patch + 1) * patch_size, len(data))
        if layout.modality == "audio":
            where = f"at {start / layout.sample_rate:.3f} s"
        else:
            where = f"bytes {start:,}-{end - 1:,} {adapters.text.decode(data[start:end])!r}"
        spots.append(f"{where}: {means[patch]:.1f} bits per byte")
    return spots


# generate


def generate_text(args):
    if args.out:
        check_writable(args.out, args.samples)
    model, layout = load_checkpoint(args, "text")
    if args.prompt_file:
        prompt = service.encode_file(args.prompt_file, layout)
    else:
        prompt = adapters.text.encode(args.prompt)
    texts = continue_prompt(model, prompt, args.bytes, args)
    if args.out:
        save_all(args.out, texts)
        return
    for number, text in enumerate(texts, 1):
        if len(texts) > 1:
            print(f"--- sample {number} ---")
        print(adapters.text.decode(text))


def generate_image(args):
    check_writable(args.out, args.samples)
    model, layout, pixels = model_input(args, "image", args.file, "completed", rows_range, args.rows)
    rows = rows_range(model, layout).check(layout.image_size // 2 if args.rows is None else args.rows)
    prompt = pixels[: adapters.image.prefix_bytes(rows, layout)]
    images = continue_prompt(model, prompt, layout.bytes_per_image - len(prompt), args)
    save_all(args.out, [png_bytes(adapters.image.decode(image, layout)) for image in images])


def generate_audio(args):
    check_writable(args.out, args.samples)
    model, layout, prompt = model_input(args, "audio", args.file, "continued", prompt_range, args.prompt_seconds,
                                        max_audio_seconds=args.prompt_seconds)
    new_bytes = adapters.audio.seconds_to_bytes(args.seconds, layout)
    clips = continue_prompt(model, prompt, new_bytes, args, adapters.audio.STEERING if args.steer else None, layout)
    save_all(args.out, [adapters.audio.to_wav_bytes(adapters.audio.decode(clip, layout), layout.sample_rate)
                        for clip in clips])


def rows_range(model, layout) -> limits.Range:
    return limits.rows(layout.image_size, layout.block_side)


def prompt_range(model, layout) -> limits.Range:
    return limits.prompt_seconds(model.context / layout.sample_rate)


def model_input(args, modality: str, source, done: str, allowed, asked, max_audio_seconds=None):
    """(model, layout, the input's bytes) for a generation: the --checkpoint named, or with auto
    (the default) the checkpoint under --checkpoints least surprised by the input, among those
    whose `allowed(model, layout)` range holds the `asked` setting (None: any). Auto's choice,
    the bits under each and what choosing took go to stderr."""
    if args.checkpoint != service.AUTO:
        model, layout = service.load_for(modality, args.checkpoint)
        if asked is not None:
            allowed(model, layout).check(asked)
        return model, layout, service.encode_file(source, layout, max_audio_seconds)
    loaded = {folder: service.load_for(modality, folder)
              for folder in adapters.checkpoints.catalog(args.checkpoints, modality)}
    if asked is not None and loaded:
        max((allowed(*both) for both in loaded.values()), key=lambda r: r.high).check(asked)  # the widest's sentence
        loaded = {folder: both for folder, both in loaded.items() if asked in allowed(*both)}
    choice = service.choose_checkpoint(source, modality, list(loaded), max_audio_seconds)
    print(f"auto: {choice.summary(done)}", file=sys.stderr)
    return *loaded[choice.folder], choice.data


def checkpoint_folder(args, modality: str) -> Path:
    return args.checkpoint or service.default_checkpoint(modality)


def load_checkpoint(args, modality: str):
    return service.load_for(modality, checkpoint_folder(args, modality))


def continue_prompt(model, prompt: bytes, new_bytes: int, args, steering=None, layout=None) -> list[bytes]:
    """The prompt followed by each sample's new bytes; with `steering` (adapters.audio.Steering),
    audio of `layout` steered a chunk at a time, the rule and its cost said on stderr."""
    how = service.default_sampling(args.kind, args.temperature, args.top_k, args.top_p)
    if args.compile:
        service.use_compile_cache()
        batch = steering.candidates if steering else args.samples
        service.compile_now(model, (bucket_for(batch),))  # as the app does, in the foreground
    if steering:
        print(f"drawing by {service.rule_words(how, steering)}; --no-steer draws once", file=sys.stderr)
    stream = service.continue_bytes(model, prompt, new_bytes, args.samples, how, args.seed, None, steering, layout)
    with progress_bar(new_bytes, "generating") as bar:
        parts = []
        for part in stream:
            parts.append(part)
            bar.update(part.shape[1])
    return [prompt + continuation for continuation in service.collect(parts)]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def output_paths(out: Path, samples: int) -> list[Path]:
    """One sample goes to `out`; several go to out_1, out_2, ... beside it."""
    if samples == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{number}{out.suffix}") for number in range(1, samples + 1)]


def check_writable(out: Path, samples: int):
    """Refuses an output that cannot be written before any work is done, not after it."""
    for path in output_paths(out, samples):
        folder = path.parent
        if path.is_dir():
            raise UserError(f"Cannot write {path}: it is a folder.")
        if not folder.is_dir():
            raise UserError(f"Cannot write {path}: there is no folder {folder}.")
        if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise UserError(f"Cannot write {path}: permission denied.")


def save_all(out: Path, contents: list[bytes]):
    for path, content in zip(output_paths(out, len(contents)), contents):
        save(path, content)


def save(path: Path, content: bytes):
    """Written under a temporary name and renamed, so an interrupted run leaves no half file."""
    temporary = path.with_name(f".{path.name}.partial")
    try:
        temporary.write_bytes(content)
        os.replace(temporary, path)
    except OSError as e:
        raise UserError(f"Cannot write {path} ({e.strerror}).") from None
    finally:
        temporary.unlink(missing_ok=True)
    print(f"wrote {path}", file=sys.stderr)


# compress, decompress


def compress(args):
    modality = args.modality
    folder = checkpoint_folder(args, modality)
    out = args.output or args.file.with_name(args.file.name + ".mbz")
    refuse_to_replace(out, args.output)
    _, layout = service.load_for(modality, folder)
    data = service.encode_file(args.file, layout)
    note = service.coding_note(layout)
    if note:
        print(f"note: {note}.", file=sys.stderr)
    start = time.perf_counter()
    with progress_bar(len(data), "compressing") as bar:
        blob = service.compress_bytes(data, modality, folder, args.adapt,
                                      progress=lambda done, _total: bar.update(done - bar.n))
    save(out, blob)
    print(f"{args.file}: {len(data):,} bytes as {modality} -> {out}: {len(blob):,} bytes "
          f"({8 * len(blob) / max(1, len(data)):.3f} bits per byte, header included) "
          f"in {time.perf_counter() - start:.1f} s")


def decompress(args):
    length = service.read_mbz_header(args.file)["length"]
    if length > args.max_bytes:
        raise UserError(f"{args.file} holds {length:,} bytes, over the limit of {args.max_bytes:,}; pass "
                        f"--max-bytes {length} to decompress it all (a progress bar shows the time left).")
    out = args.output or default_decompressed_path(args.file, service.decompressed_suffix(args.file))
    refuse_to_replace(out, args.output)  # before the work, not after it
    with progress_bar(0, "decompressing") as bar:
        def advance(done: int, total: int):
            bar.total = total
            bar.update(done - bar.n)

        result = service.decompress(args.file, args.checkpoint, progress=advance, max_length=args.max_bytes)
    save(out, result.content)
    note = service.coding_note(result.layout)
    print(f"{args.file} -> {out}: {len(result.data):,} bytes as {result.layout.modality}"
          + (f" (note: {note})" if note else ""))


def default_decompressed_path(mbz_path: Path, suffix: str) -> Path:
    """x.txt.mbz -> x.txt; an image or audio clip gets its format's suffix: x.png.mbz -> x.png, x.flac.mbz -> x.wav."""
    name = mbz_path.name[: -len(".mbz")] if mbz_path.name.endswith(".mbz") else mbz_path.name + ".out"
    path = mbz_path.with_name(name)
    return path.with_suffix(suffix) if suffix else path


def refuse_to_replace(out: Path, named: Path | None):
    """A file the user did not name with -o is never overwritten."""
    if named is None and out.exists():
        raise UserError(f"{out} already exists; name the output with -o to replace it.")


def add_coding_commands(commands, checkpoint: Parser):
    compress_parser = commands.add_parser(
        "compress", parents=[checkpoint], help="compress a file losslessly with the model (writes FILE.mbz)",
        description="Arithmetic coding driven by the model's next-byte probabilities. Text and bytes are "
                    "coded exactly as the file's bytes; an image as its RGB pixels at the checkpoint's size and "
                    "audio as 8-bit µ-law at its rate, so decompress gives a PNG or WAV of those, not the "
                    "original file. Decompressing needs the same checkpoint, torch version and CPU ISA.")
    compress_parser.add_argument("file", type=Path, metavar="FILE")
    compress_parser.add_argument("-o", "--output", type=Path, metavar="OUT", help="where to write (default: FILE.mbz)")
    compress_parser.add_argument("--modality", default="bytes", choices=service.MODALITIES,
                                 help="how to read FILE (default: bytes, an exact copy of any file)")
    compress_parser.add_argument("--adapt", action="store_true",
                                 help="the model learns while it reads (dynamic evaluation): fewer bits on long "
                                      "inputs, several times slower; decompress repeats it")
    compress_parser.set_defaults(run=compress)

    decompress_parser = commands.add_parser(
        "decompress", parents=[checkpoint], help="give back what compress coded",
        description="Decode FILE.mbz with the checkpoint that coded it (found under checkpoints/ by its "
                    "sha256 unless --checkpoint names it): the exact bytes for text and bytes, a PNG or WAV "
                    "for an image or audio clip.")
    decompress_parser.add_argument("file", type=Path, metavar="FILE.mbz")
    decompress_parser.add_argument("-o", "--output", type=Path, metavar="OUT",
                                   help="where to write (default: FILE without .mbz; .png or .wav for media)")
    decompress_parser.add_argument("--max-bytes", type=int, default=MAX_LENGTH, metavar="N",
                                   help="refuse a file that holds more bytes than this (default: %(default)s, "
                                        "about half an hour on one CPU core)")
    decompress_parser.set_defaults(run=decompress)


# the parser


def build_parser() -> Parser:
    checkpoint = Parser(add_help=False)
    checkpoint.add_argument("--checkpoint", type=Path, metavar="DIR",
                            help="checkpoint folder (default: the shipped one for the modality, under checkpoints/)")

    parser = Parser(prog="python -m app.cli", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{score,generate,compress,decompress}")

    score_parser = commands.add_parser(
        "score", parents=[checkpoint], help="how surprised the model is by every byte of a file",
        description="Per-byte surprisal of each FILE as the modality's adapter encodes it: text and bytes as "
                    "the file's raw bytes, an image as its RGB pixels at the checkpoint's size, audio as 8-bit "
                    "µ-law at the checkpoint's rate. Compared with gzip -9 and xz -9e on the same bytes. "
                    "The model loads once for all the files.")
    score_parser.add_argument("files", type=Path, nargs="+", metavar="FILE")
    score_parser.add_argument("--modality", required=True, choices=service.MODALITIES)
    score_parser.add_argument("--json", action="store_true",
                              help="print one JSON object per file, one a line, instead of a summary")
    score_parser.add_argument("--max-bytes", type=int, default=limits.MAX_CLI_SCORE_BYTES, metavar="N",
                              help="refuse a file that encodes to more bytes than this (default: %(default)s, "
                                   "about five minutes on 2 CPU cores)")
    score_parser.add_argument("--per-byte", action="store_true",
                              help="with --json, add the surprisal of every byte and the mean of every patch, in bits")
    score_parser.add_argument("--adapt", action="store_true",
                              help="the model learns while it reads (dynamic evaluation), as compress --adapt codes")
    score_parser.set_defaults(run=score)

    media_checkpoint = Parser(add_help=False)
    media_checkpoint.add_argument(
        "--checkpoint", type=lambda text: text if text == service.AUTO else Path(text), default=service.AUTO,
        metavar="DIR", help="checkpoint folder, or auto: the one under --checkpoints least surprised by FILE, "
                            "which then prints the bits under each and the seconds choosing took (default: auto)")
    media_checkpoint.add_argument("--checkpoints", type=Path, default=service.CHECKPOINTS, metavar="DIR",
                                  help="where auto looks for checkpoints (default: the shipped checkpoints/)")

    sampling = Parser(add_help=False)
    sampling.add_argument("--seed", type=limits.SEED.argument, default=0,
                          help=f"the same seed gives the same output, 0 to {limits.MAX_SEED:,} (default: 0)")
    sampling.add_argument("--temperature", type=limits.TEMPERATURE.argument, default=1.0, metavar="T",
                          help=f"0 picks the likeliest byte, higher is wilder, at most {limits.MAX_TEMPERATURE:g} "
                               "(default: 1)")
    sampling.add_argument("--top-k", type=limits.TOP_K.argument, default=0, metavar="K",
                          help="draw among the K likeliest bytes, up to 256; 0 keeps all (default: 0)")
    sampling.add_argument("--top-p", type=float, default=None, metavar="P",
                          help="draw among the likeliest bytes that together make up probability P; images "
                               "and audio also draw by the rule bench/results/samplers.md chose (images: "
                               f"{adapters.image.DEFAULT_SAMPLING.describe()}; audio: "
                               f"{adapters.audio.DEFAULT_SAMPLING.describe()}) (default: the rule's top-p; 1, all, "
                               "for text)")
    sampling.add_argument("--samples", type=limits.SAMPLES.argument, default=1, metavar="N",
                          help=f"how many outputs, 1 to {limits.MAX_SAMPLES} (default: 1); several are written to OUT_1, OUT_2, ... "
                               "beside OUT (printed text comes one after another)")
    sampling.add_argument("--compile", action="store_true",
                          help="compile the decoding step first: about 3x faster on long outputs, but each new "
                               "number of samples first compiles for 1-2 minutes (a few seconds once cached)")

    generate_parser = commands.add_parser("generate", help="continue a text, an image or an audio clip",
                                          description="Continue a prompt with the model.")
    kinds = generate_parser.add_subparsers(dest="kind", required=True, metavar="{text,image,audio}")

    text = kinds.add_parser("text", parents=[sampling, checkpoint], help="continue a text",
                            description="Continue a text prompt; prints the prompt and its continuation, "
                                        "or writes them to --out.")
    prompt = text.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", metavar="TEXT", help="the text to continue")
    prompt.add_argument("--prompt-file", type=Path, metavar="FILE", help="a file whose bytes are the prompt")
    text.add_argument("--bytes", type=int, default=256, metavar="N", help="how many bytes to add (default: 256)")
    text.add_argument("--out", type=Path, help="write prompt and continuation to this file instead of printing")
    text.set_defaults(run=generate_text)

    image = kinds.add_parser("image", parents=[sampling, media_checkpoint], help="complete an image from its top rows",
                             description="Keep the top rows of FILE (at the checkpoint's size) and let the "
                                         "model paint the rest; writes a PNG of the checkpoint's size.")
    image.add_argument("file", type=Path, metavar="FILE")
    image.add_argument("--rows", type=int, metavar="K",
                       help="pixel rows to keep, at least 1 (default: half); in patch-scan order they round up "
                            "to whole blocks")
    image.add_argument("--out", type=Path, default=Path("completion.png"), help="PNG to write (default: completion.png)")
    image.set_defaults(run=generate_image)

    audio = kinds.add_parser("audio", parents=[sampling, media_checkpoint], help="continue an audio clip",
                             description="Take the start of FILE (wav, flac, ogg) as the prompt and continue it; "
                                         "writes a WAV of prompt and continuation at the checkpoint's rate.")
    audio.add_argument("file", type=Path, metavar="FILE")
    audio.add_argument("--prompt-seconds", type=positive_seconds, default=1.0, metavar="S",
                       help="how much of the clip's start to keep, up to what the checkpoint's context holds "
                            f"and at least {limits.SHORT_CONTEXT_AUDIO_SECONDS:g} s (default: 1)")
    audio.add_argument("--seconds", type=positive_seconds, default=1.0, metavar="S",
                       help="how much to add (default: 1)")
    audio.add_argument("--out", type=Path, default=Path("continuation.wav"),
                       help="WAV to write (default: continuation.wav)")
    audio.add_argument("--steer", action=argparse.BooleanOptionalAction, default=True,
                       help=f"{service.STEER_LABEL.lower()}: {service.STEER_INFO} (default: on; --no-steer draws once, faster)")
    audio.set_defaults(run=generate_audio)
    add_coding_commands(commands, checkpoint)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except UserError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted.", status=130)
    except BrokenPipeError:  # piped into e.g. head, which has read all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush fails quietly


if __name__ == "__main__":
    main()
