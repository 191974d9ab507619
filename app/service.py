"""What the web app and the command line both do: load checkpoints, score, generate.

Every error a user can cause comes out as UserError with one sentence.
"""

from __future__ import annotations

import gzip
import io
import functools
import lzma
import os
import threading
import time
import weakref
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch

import adapters
from adapters import AdapterError, Layout
from adapters.common import read_source
from model import (BATCH_BUCKETS, CheckpointError, Decoder, GenerationStatus, Sampling, Scores, bucket_for,
                   compile_scoring, score, stream_bytes)
from model.hardware import bf16_faster
import model.compress as mbz
from model.best_of import chunked_best_of

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = ROOT / "checkpoints"
MODALITIES = ("text", "image", "audio", "bytes")
SCORE_BATCH = 16  # windows a scoring pass: the batch compile_scoring_now compiles for
# Inductor's compiled code, kept across restarts: a warm start compiles in seconds.
COMPILE_CACHE = Path.home() / ".cache" / "megabyte-studio"


class UserError(ValueError):
    """Something the user asked for that cannot be done; the message is one sentence."""


# Every request's wall-clock budget: BUDGET_START_SECONDS (loading a checkpoint, a first call's
# warm-up) plus BUDGET_FACTOR times what its bytes take at these speeds, the slowest of the shipped
# checkpoints measured on 2 CPU cores shared with a training run, one torch thread, eager (nothing
# compiled yet): scoring 12,000-90,000 bytes/s; coding (compress, decompress, score --adapt)
# 1,200-14,000; generating 1,500-2,600 new bytes/s at one sample, 6,500-12,000 at eight (all
# samples counted). Generous, so that a busy server never stops an honest request; one that runs
# away (a stuck step, a size nobody meant) still ends.
SCORE_BYTES_PER_SECOND = 10_000
CODING_BYTES_PER_SECOND = 1_000
GENERATE_BYTES_PER_SECOND = 1_000
BUDGET_FACTOR = 10
BUDGET_START_SECONDS = 30


@dataclass
class Budget:
    """How long a request may take; past that, check() stops it with a UserError that says so."""

    doing: str  # what the request does, for its sentence: "Scoring 20,000 bytes"
    seconds: float
    start: float = field(default_factory=time.perf_counter)

    @classmethod
    def for_bytes(cls, verb: str, n: int, bytes_per_second: float) -> Budget:
        return cls(f"{verb} {n:,} bytes", BUDGET_START_SECONDS + BUDGET_FACTOR * n / bytes_per_second)

    def check(self):
        if time.perf_counter() - self.start > self.seconds:
            raise UserError(f"{self.doing} ran past its time budget of {self.seconds:,.0f} s and was stopped; "
                            "the server may be busy: try again later, or with less.")

    def watching(self, progress=None):
        """A (done, total) progress callback that checks the budget, then calls `progress`."""
        def report(done: int, total: int):
            self.check()
            if progress:
                progress(done, total)
        return report


# The checkpoint each modality opens on when it is there; else the first that fits, by name.
PREFERRED = {"text": "text", "bytes": "text", "image": "emoji", "audio": "melody_long"}


def default_checkpoint(modality: str, root: str | Path = CHECKPOINTS) -> Path:
    """The checkpoint a modality uses unless told otherwise (raw bytes are scored by the text model)."""
    if modality not in MODALITIES:
        raise UserError(f"Unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}.")
    found = adapters.checkpoints.catalog(root, modality)
    preferred = [folder for folder in found if folder.name == PREFERRED[modality]]
    # With none there, the usual folder name, so that loading says what is missing.
    return (preferred or found or [Path(root) / ("text" if modality == "bytes" else modality)])[0]


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@lru_cache(maxsize=8)
def _load(folder: str):
    return adapters.checkpoints.load(folder, device())


def default_sampling(modality: str, temperature: float = 1.0, top_k: int = 0,
                     top_p: float | None = None) -> Sampling:
    """The modality's rule with the user's temperature and top-k, and their top-p when given. Images
    and audio draw by the rule bench.samplers chose (adapters.image/audio.DEFAULT_SAMPLING says what
    it fixed); text and bytes draw from every byte."""
    rules = {"image": adapters.image.DEFAULT_SAMPLING, "audio": adapters.audio.DEFAULT_SAMPLING}
    rule = rules.get(modality, Sampling())
    asked = sampling(temperature, top_k, rule.top_p if top_p is None else top_p)
    return replace(rule, temperature=asked.temperature, top_k=asked.top_k, top_p=asked.top_p)


def sampling(temperature: float, top_k: int, top_p: float = 1.0) -> Sampling:
    try:
        return Sampling(float(temperature), int(top_k), float(top_p))
    except (ValueError, TypeError) as e:
        raise UserError(str(e)[:1].upper() + str(e)[1:]) from None


@dataclass
class ScoreResult:
    data: bytes
    scores: Scores
    seconds: float

    @property
    def bits_per_byte(self) -> float:
        return self.scores.bits_per_byte

    def compressor_bits_per_byte(self) -> dict[str, float]:
        """What gzip -9 and xz -9e need for the same bytes, in bits per byte."""
        n = max(1, len(self.data))
        return {"gzip -9": 8 * len(gzip.compress(self.data, 9)) / n, "xz -9e": 8 * xz_size(self.data) / n}


def xz_size(data: bytes) -> int:
    """The bytes xz -9e needs for `data`: the yardstick the app sets the model's .mbz beside."""
    return len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))


# --adapt's SGD rate where model.compress.Adaptation's (chosen on text) does not suit: on a
# held-out music clip it made the bits 8% worse, and 0.01 (chosen on another clip) 0.2% better.
ADAPT_RATES = {"audio": 0.01}


def adaptation(modality: str) -> mbz.Adaptation:
    return mbz.Adaptation(lr=ADAPT_RATES.get(modality, mbz.Adaptation.lr))


def score_bytes(model, data: bytes, progress=None, adapt: bool = False, modality: str = "bytes") -> ScoreResult:
    """With `adapt`, the model learns while it reads, as `compress --adapt` codes `modality`'s
    bytes (no top guesses)."""
    if not data:
        raise UserError("There is nothing to score: the input is empty.")
    start = time.perf_counter()
    budget = Budget.for_bytes("Scoring", len(data), CODING_BYTES_PER_SECOND if adapt else SCORE_BYTES_PER_SECOND)
    progress = budget.watching(progress)
    if adapt:
        scores = mbz.coded_scores(model, data, adaptation(modality), progress)
    else:  # bf16 where it is faster: the view shows bits, it does not need fp32's exactness
        scores = score(model, data, top=5, batch=SCORE_BATCH, bf16=bf16_faster(device()), progress=progress,
                       compiled=_compiled_scoring.get(model))
    return ScoreResult(data, scores, time.perf_counter() - start)


def encode_file(source, layout: Layout, max_audio_seconds: float | None = None) -> bytes:
    """A media file (path, bytes, file object, or an image from open_image) as the bytes the
    layout describes (adapters.checkpoints.encode_media)."""
    try:
        return adapters.checkpoints.encode_media(source, layout, max_audio_seconds)
    except AdapterError as e:
        raise UserError(str(e)) from None


def open_image(source, side: int):
    """An image decoded, shrunk while decoding where that keeps enough pixels for layouts of
    `side`: encode_file resizes it for each checkpoint without decoding it again."""
    try:
        return adapters.image.open_rgb(source, adapters.image.SHRINK_MARGIN * side)
    except AdapterError as e:
        raise UserError(str(e)) from None


AUTO = "auto"  # the checkpoint choice that scores the input under every checkpoint of its medium


UNITS = {"image": "subpixel", "audio": "sample"}  # what one byte of a medium is; else a byte


@dataclass
class Choice:
    """What auto chose for an input: each candidate's fit, least surprised first, the bytes the
    chosen checkpoint reads, and the seconds choosing took (encoding and scoring)."""

    modality: str
    fits: list[adapters.checkpoints.Fit]
    data: bytes
    seconds: float

    @property
    def folder(self) -> Path:
        return self.fits[0].folder

    def summary(self, done: str) -> str:
        """ "image 4.90 · emoji 5.31 bits per subpixel: completed with image (chosen in 0.4 s)" """
        scored = " · ".join(f"{fit.folder.name} {fit.bits_per_byte:.2f}" for fit in self.fits)
        unit = UNITS.get(self.modality, "byte")
        return f"{scored} bits per {unit}: {done} with {self.folder.name} (chosen in {self.seconds:.1f} s)"


def choose_checkpoint(source, modality: str, folders, max_audio_seconds: float | None = None) -> Choice:
    """Every checkpoint in `folders` scores the input as its own layout encodes it (an image is
    decoded once; each layout encodes once), and the least surprised is chosen
    (adapters.checkpoints.rank)."""
    if not folders:
        raise UserError(f"There is no {modality} checkpoint to choose from.")
    start = time.perf_counter()
    candidates = [(folder, *load_for(modality, folder)) for folder in folders]
    if modality == "image":  # decoded once, then resized for each layout
        source = open_image(source, max(layout.image_size for *_, layout in candidates))
    encode = functools.cache(lambda layout: encode_file(source, layout, max_audio_seconds))
    fits = adapters.checkpoints.rank(candidates, encode)
    data = encode(load(fits[0].folder)[1])
    return Choice(modality, fits, data, time.perf_counter() - start)


def continue_bytes(model, prompt: bytes, new_bytes: int, samples: int, how: Sampling, seed: int = 0,
                   status: GenerationStatus | None = None, steering: adapters.audio.Steering | None = None,
                   layout: Layout | None = None):
    """model.stream_bytes on the model's decoder (see `decoder`), the request checked first:
    yields the new bytes (samples, m) as they are made; `status.path` says which decoder ran;
    stopped with a UserError past its Budget. With `steering`, audio of `layout` is steered a
    chunk at a time (steered_bytes), drawing steering.candidates times the bytes."""
    if new_bytes < 1:
        raise UserError("Ask for at least one new byte.")
    if not 1 <= samples <= BATCH_BUCKETS[-1]:
        raise UserError(f"The number of samples must be between 1 and {BATCH_BUCKETS[-1]}.")
    draws = steering.candidates if steering else 1
    budget = Budget.for_bytes("Generating", new_bytes * samples, GENERATE_BYTES_PER_SECOND / draws)
    if steering:
        stream = steered_bytes(decoder(model), prompt, new_bytes, samples, how, seed, status, steering, layout)
    else:
        stream = stream_bytes(decoder(model), prompt, new_bytes, samples, how, seed, status)
    for part in stream:
        budget.check()
        yield part


# What audio's steering does, as the view and the command line say it.
STEER_LABEL = "Steer loudness" + (" and timbre" if adapters.audio.STEERING.timbre else "")
STEER_INFO = (f"draw {adapters.audio.STEERING.candidates} candidates for every {adapters.audio.STEERING.seconds:g} s "
              "and keep the one nearest the prompt's loudness" + (" and timbre" if adapters.audio.STEERING.timbre else "")
              + ", without a click the prompt lacks")


def steered_bytes(decoder: Decoder, prompt: bytes, new_bytes: int, samples: int, how: Sampling, seed: int,
                  status: GenerationStatus | None, steering: adapters.audio.Steering, layout: Layout):
    """As stream_bytes yields, a chunk at a time: each sample its own model.best_of.chunked_best_of
    (seed + its index) as steering plans it, the samples in step; each chunk's candidates one batch
    on the decoder."""
    status = status or GenerationStatus()
    n, chunk_bytes, cost, rules = steering.plan(prompt, layout, how)
    status.path = decoder.describe(n, rules)
    streams = [chunked_best_of(decoder.model, prompt, new_bytes, n, chunk_bytes, cost, rules, seed + sample,
                               decoder.step_for(n, rules), decoder.fused)
               for sample in range(samples)]
    start, made = time.perf_counter(), 0
    for chunks in zip(*streams):
        made += len(chunks[0])
        status.bytes_per_second = samples * made / (time.perf_counter() - start)
        yield np.frombuffer(b"".join(chunks), np.uint8).reshape(samples, -1)


def rule_words(how: Sampling, steering: adapters.audio.Steering | None) -> str:
    """The rule a generation drew by, and what steering cost: "min_p 0.1, steered best of 8 per 0.125 s,
    4 from every byte (8 candidates drawn for each byte kept)"."""
    if not steering:
        return how.describe()
    return f"{how.describe()}, {steering.name} ({steering.candidates} candidates drawn for each byte kept)"


def use_compile_cache():
    """Keeps inductor's compiled code in COMPILE_CACHE, so that a restart reuses it. Called once at
    start-up, before anything compiles: the environment is the process's, not one thread's."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(COMPILE_CACHE / "inductor"))


# model -> the Decoder its requests take: made by fast_decoder_now (the fused step where it builds, the
# faster dtype), its buckets compiled by compile_now, so a request never waits for a build; torch's
# layers in fp32 until then
_decoders: dict = {}


@functools.cache
def _eager_decoder(model) -> Decoder:
    return Decoder(model, torch.float32, fused=False)


def decoder(model) -> Decoder:
    """The decoder a request on `model` takes now; its describe() is what the views print."""
    return _decoders.get(model) or _eager_decoder(model)


def fast_decoder_now(model) -> Decoder:
    """`model`'s fastest decoder (Decoder.fastest: the fused C++ step where it builds, the faster
    dtype), which requests take from now on: eager until compile_now compiles its buckets, and
    eager it already decodes ~5x faster than torch's layers (bench/results/speed.md), so a fresh
    start serves at speed once the C++ step is built (about a minute the first time), not after
    minutes of compiling."""
    if model not in _decoders:
        _decoders[model] = Decoder.fastest(model)
    return _decoders[model]


def compile_now(model, buckets=BATCH_BUCKETS):
    """Compiles `model`'s fastest decoder for `buckets`, into the cache use_compile_cache chose
    at start-up; requests take each bucket's compiled step as soon as it is ready."""
    fast_decoder_now(model).compile(buckets)


# model -> its forward compiled for score_bytes' full batches of windows, filled by compile_scoring_now
_compiled_scoring: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compile_scoring_now(model):
    """Compiles `model`'s scoring forward (bf16 weights where bf16 is faster), running it once
    on two batches of windows (the first window's graph and the later ones'); score_bytes
    uses it from then on for inputs of a batch of windows or more."""
    bf16 = bf16_faster(device())
    compiled = compile_scoring(model, torch.bfloat16 if bf16 else torch.float32)
    score(model, bytes((2 * SCORE_BATCH + 1) * model.context // 2), batch=SCORE_BATCH, bf16=bf16, compiled=compiled)
    _compiled_scoring[model] = compiled


def compile_in_background(checkpoints: str | Path = CHECKPOINTS) -> threading.Thread:
    """Compiles, in a daemon thread, the decoding step of every checkpoint that generates:
    audio ones at the batch of steering's candidates (the app continues one clip, steered by
    default), image ones at every bucket, the smallest batches first; then the scoring forward
    of the text and audio checkpoints (an image is one window: its scoring never fills a batch);
    last, audio at batch 1, for continuations not steered. Nobody waits: requests that come
    first run eagerly."""
    audio = adapters.checkpoints.catalog(checkpoints, "audio")
    images = adapters.checkpoints.catalog(checkpoints, "image")
    compiling = lambda folders, bucket: [(f"Decoding at batch {bucket}, compiled,", folder,  # noqa: E731
                                          partial(compile_now, buckets=(bucket,))) for folder in folders]
    # (what is made ready, the checkpoint, how): first the fused step, eager, for every checkpoint
    jobs = [("The fused C++ decoding step (eager)", folder, fast_decoder_now) for folder in [*audio, *images]]
    jobs += compiling(audio, bucket_for(adapters.audio.STEERING.candidates))
    jobs += [job for bucket in BATCH_BUCKETS for job in compiling(images, bucket)]
    jobs += [("Scoring, compiled,", folder, compile_scoring_now)
             for folder in [*adapters.checkpoints.catalog(checkpoints, "text"), *audio]]
    jobs += compiling(audio, 1)

    def work():
        start = time.perf_counter()
        for what, folder, compile_it in jobs:
            try:
                compile_it(load(folder)[0])
                print(f"{what} for {Path(folder).name} is ready ({time.perf_counter() - start:.0f} s after start-up).",
                      flush=True)
            except Exception as e:  # noqa: BLE001 -- a failed compile must not stop the app; it stays eager
                print(f"{what} for {Path(folder).name} failed, so it stays as it was ({type(e).__name__}: {e}).",
                      flush=True)
        print(f"Compiled decoding and scoring for {len(audio) + len(images)} checkpoints in "
              f"{time.perf_counter() - start:.0f} s: requests from now on take the compiled steps.", flush=True)

    thread = threading.Thread(target=work, name="compile-decoding", daemon=True)
    thread.start()
    return thread


def collect(stream) -> list[bytes]:
    parts = list(stream)
    return [row.tobytes() for row in np.concatenate(parts, axis=1)] if parts else []


def load(checkpoint: str | Path) -> tuple[torch.nn.Module, Layout]:
    """A checkpoint's model and layout, loaded once per process."""
    try:
        return _load(str(Path(checkpoint).resolve()))
    except (CheckpointError, AdapterError) as e:
        raise UserError(str(e)) from None


def load_for(modality: str, checkpoint: str | Path) -> tuple[torch.nn.Module, Layout]:
    """A checkpoint's model and layout, refused unless it was trained on `modality`'s bytes."""
    model, layout = load(checkpoint)
    try:
        adapters.checkpoints.check_fits(layout, modality, checkpoint)
    except AdapterError as e:
        raise UserError(str(e)) from None
    return model, layout


# Lossless compression: the model drives a range coder (model.compress). Images and audio are
# coded in their adapter's byte layout, so what the adapter drops is lost before coding.


@dataclass
class Decompressed:
    data: bytes  # the decoded bytes: the file itself for text and bytes, pixels or µ-law samples for media
    layout: Layout
    content: bytes  # the file to save: the bytes themselves, a PNG or a WAV
    suffix: str  # "" (the original name), ".png" or ".wav"


def coding_note(layout: Layout, exact_copy: str = "--modality bytes") -> str | None:
    """What is lost before coding, for a medium the model codes in its adapter's layout; None if
    nothing. `exact_copy` is how to code the file's own bytes instead."""
    if layout.modality == "image":
        return (f"the image is coded as {layout.image_size}×{layout.image_size} RGB pixels (resized and "
                "cropped to that), so decompress gives that PNG, not the original file; "
                f"{exact_copy} keeps an exact copy")
    if layout.modality == "audio":
        return (f"the audio is coded as mono 8-bit µ-law at {layout.sample_rate} Hz, so decompress gives "
                f"that WAV, not the original file; {exact_copy} keeps an exact copy")
    return None


def is_mbz(blob: bytes) -> bool:
    return blob[: len(mbz.MAGIC)] == mbz.MAGIC


def recorded_layout(layout: Layout, modality: str) -> Layout:
    """The layout a .mbz of `modality`'s bytes records, coded by a checkpoint of `layout`: an
    image's or audio's is the checkpoint's; text and bytes, which share checkpoints, say which."""
    return layout if layout.modality in ("image", "audio") else Layout(modality)


def compress_bytes(data: bytes, modality: str, checkpoint: str | Path, adapt: bool = False, progress=None) -> bytes:
    """The .mbz of bytes already in `modality`'s layout (what encode_file gives), coded by the checkpoint."""
    model, layout = load_for(modality, checkpoint)
    try:
        return mbz.compress(model, data, checkpoint_sha256(checkpoint), recorded_layout(layout, modality).to_dict(),
                            Path(checkpoint).name, adaptation(modality) if adapt else None, progress)
    except mbz.CompressError as e:
        raise UserError(str(e)) from None


def compress_file(source, modality: str, checkpoint: str | Path | None = None, adapt: bool = False,
                  progress=None) -> bytes:
    """The .mbz of a file (path, bytes or file object) as `modality`'s adapter encodes it."""
    checkpoint = checkpoint or default_checkpoint(modality)
    _, layout = load_for(modality, checkpoint)
    return compress_bytes(encode_file(source, layout), modality, checkpoint, adapt, progress)


SAVED_AS = {"image": ".png", "audio": ".wav"}  # what decompress writes for a medium coded in its layout


def read_mbz_header(source) -> dict:
    """The header of a .mbz (path, bytes or file object), checked to be one."""
    try:
        blob = read_source(source)
        if not is_mbz(blob):
            raise UserError("That is not a .mbz file: it does not start with the .mbz magic bytes.")
        return mbz.read_header(blob)
    except (mbz.CompressError, AdapterError) as e:
        raise UserError(str(e)) from None


def decompressed_suffix(source) -> str:
    """The suffix of the file decompress will give: "" (the original name's), ".png" or ".wav"."""
    return SAVED_AS.get(read_mbz_header(source)["layout"].get("modality"), "")


def decompress(source, checkpoint: str | Path | None = None, progress=None,
               max_length: int = mbz.MAX_LENGTH) -> Decompressed:
    """A .mbz (path, bytes or file object) of at most `max_length` bytes back to its bytes, and
    the file they make; the checkpoint that coded it is found under checkpoints/ by its sha256
    unless named. The header must claim only what compress_bytes writes with that checkpoint."""
    try:
        blob = read_source(source)  # once: a file object reads only once
    except AdapterError as e:
        raise UserError(str(e)) from None
    header = read_mbz_header(blob)
    folder = checkpoint or _checkpoint_with(header["checkpoint_sha256"], header["checkpoint"])
    model, own = load(folder)
    modalities = adapters.checkpoints.READABLE[own.modality]
    try:
        data, recorded = mbz.decompress(
            model, blob, checkpoint_sha256(folder), progress, max_length=max_length,
            layouts=[recorded_layout(own, modality).to_dict() for modality in modalities],
            adaptations=[None, *(adaptation(modality) for modality in modalities)])
        layout = Layout.from_dict(recorded)
    except (mbz.CompressError, AdapterError) as e:
        raise UserError(str(e)) from None
    if layout.modality == "image":
        image = io.BytesIO()
        adapters.image.decode(data, layout).save(image, format="PNG")
        return Decompressed(data, layout, image.getvalue(), SAVED_AS["image"])
    if layout.modality == "audio":
        wav = adapters.audio.to_wav_bytes(adapters.audio.decode(data, layout), layout.sample_rate)
        return Decompressed(data, layout, wav, SAVED_AS["audio"])
    return Decompressed(data, layout, data, "")


def checkpoint_sha256(folder: str | Path) -> str:
    try:
        return _sha256(str(Path(folder).resolve()), *(Path(folder, name).stat().st_mtime_ns
                                                      for name in ("config.json", "model.safetensors")))
    except OSError:
        raise UserError(f"{folder} is not a checkpoint folder.") from None


@lru_cache(maxsize=32)
def _sha256(folder: str, *modified) -> str:  # `modified` keys the cache, so a retrained checkpoint is hashed again
    return mbz.checkpoint_sha256(folder)


def find_checkpoint(sha256: str, root: str | Path = CHECKPOINTS) -> Path | None:
    """The checkpoint folder under `root` whose sha256 (checkpoint_sha256) is this; None if there is none."""
    root = Path(root)
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if (folder / "model.safetensors").is_file() and checkpoint_sha256(folder) == sha256:
            return folder
    return None


def _checkpoint_with(sha256: str, name: str) -> Path:
    found = find_checkpoint(sha256)
    if found is None:
        raise UserError(f"This .mbz was made with a checkpoint ({name or 'unnamed'}, sha256 {sha256[:12]}...) "
                        f"that is not under {CHECKPOINTS}; name its folder with --checkpoint.")
    return found
