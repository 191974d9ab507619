"""Audio ⇄ bytes: mono, 8-bit µ-law (one byte per sample) at the layout's sample rate."""

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from model import PerSample, Sampling

from .common import AdapterError, read_source
from .layout import Layout

MU = 255
FULL_SCALE = (0, 255)  # the µ-law codes of -1 and +1
ZERO_CROSSINGS = 16  # half-width of the resampling filter, in sinc lobes: sharper cut-off, more work
CHUNK = 8192  # output samples resampled at once, and frames read at once, to bound memory
UNREADABLE = "The audio file is corrupt, truncated or in an unsupported format."
# Rates a header may claim: a 96 MHz or 1 Hz claim would make resampling take gigabytes or
# stretch each sample into thousands. 4 kHz is below any telephone codec, 192 kHz studio audio's top.
MIN_RATE, MAX_RATE = 4_000, 192_000
# Sampling µ-law audio from the whole distribution now and then draws a code far out in the
# tail: a loud click, after which the model expects a louder signal, and the continuation runs
# away (a quiet piano prompt, RMS 0.03, went to 0.14-0.22 within 0.5 s at top-p 1, and stayed
# at 0.02-0.05 with top-p 0.9). Top-p 0.9 cut those tails, but the general audio checkpoint
# still faded (2 of 3 validation music clips below 0.3× the prompt's loudness). Min-p 0.1 (keep
# bytes with p >= 0.1·p_max) cuts the tail relative to the likeliest byte instead: on 4 melody
# and 3 music validation prompts, 0.5 s each (bench/results/samplers.md), it kept similarity
# at least today's on both checkpoints (0.297 and 0.864, top-p 0.9: 0.243 and 0.845) with one
# loudness failure instead of two, the fewest of the rules a stream can use; best-of-4 by
# likelihood did as well with lower flatness, but needs all four continuations before it can pick.
# On 4 melody test tunes (bench/results/samplers_test.md): flatness 0.21 against top-p's 0.39,
# similarity 0.40 against 0.34, loudness drift 1.22 against 0.72. Few prompts: a first measurement.
DEFAULT_SAMPLING = Sampling(min_p=0.1)


def load(source, layout: Layout, max_seconds: float | None = None) -> np.ndarray:
    """Float32 mono samples in [-1, 1] at layout.sample_rate, from a path, bytes or a binary
    file object (wav, flac, ogg, ... as libsndfile reads them); at most max_seconds long."""
    _require_audio(layout)
    if max_seconds is not None and not max_seconds > 0:
        raise AdapterError(f"max_seconds must be positive, not {max_seconds}.")
    data = read_source(source)
    if _cut_short(data):
        raise AdapterError(UNREADABLE)
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:  # opening reads the header only
            rate = f.samplerate
            if not MIN_RATE <= rate <= MAX_RATE:
                raise AdapterError(f"The audio's sample rate is {rate:,} Hz; it must be between {MIN_RATE:,} and "
                                  f"{MAX_RATE:,} Hz.")
            wanted = f.frames if max_seconds is None else min(f.frames, int(max_seconds * rate))
            mono = _read_mono(f, wanted)
    except (sf.SoundFileError, RuntimeError):
        raise AdapterError(UNREADABLE) from None
    if len(mono) < wanted:  # e.g. a FLAC cut between frames: fewer samples than its header promises
        raise AdapterError(UNREADABLE)
    samples = _resample(mono, rate, layout.sample_rate)
    if not len(samples):  # none in the file, or too few for one at the layout's rate
        raise AdapterError(f"The audio file has no samples at {layout.sample_rate:,} Hz.")
    return _clean(samples).astype(np.float32)


def encode(samples: np.ndarray, layout: Layout) -> bytes:
    """µ-law (mu=255): one byte per sample, code 0 for -1 and 255 for +1."""
    _require_audio(layout)
    x = _clean(samples)
    compressed = np.log1p(MU * np.abs(x)) / np.log1p(MU) * np.sign(x)
    return np.round((compressed + 1) / 2 * 255).astype(np.uint8).tobytes()


def decode(data: bytes, layout: Layout) -> np.ndarray:
    """Int16 PCM at layout.sample_rate, one sample per byte."""
    _require_audio(layout)
    compressed = np.frombuffer(data, dtype=np.uint8) / 255 * 2 - 1
    samples = np.expm1(np.abs(compressed) * np.log1p(MU)) / MU * np.sign(compressed)
    return np.round(samples * 32767).astype(np.int16)


def to_wav_bytes(pcm_int16: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, pcm_int16, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def write(path, pcm_int16: np.ndarray, rate: int) -> None:
    """Write 16-bit PCM; the format follows the file extension (.wav, .flac, ...)."""
    try:
        sf.write(path, pcm_int16, rate, subtype="PCM_16")
    except (TypeError, ValueError, sf.SoundFileError) as e:
        raise AdapterError(f"Cannot write audio to {path} ({e}).") from None


def seconds_to_bytes(seconds: float, layout: Layout) -> int:
    _require_audio(layout)
    return round(seconds * layout.sample_rate)


def _require_audio(layout):
    if layout.modality != "audio":
        raise AdapterError(f"This needs an audio layout, not a {layout.modality} one.")


def _clean(samples) -> np.ndarray:
    return np.clip(np.nan_to_num(np.asarray(samples, dtype=np.float64)), -1, 1)


def _read_mono(f: sf.SoundFile, frames: int) -> np.ndarray:
    """Up to `frames` frames from the start, mixed to mono. Read a block at a time, because
    soundfile's read(frames) allocates all the header claims at once (256 GB for a FLAC
    claiming 2^36 samples), and a mono block is kept, not its channels."""
    blocks, read = [], 0
    while read < frames:
        block = f.read(min(CHUNK, frames - read), dtype="float32", always_2d=True)
        if not len(block):  # the file ends before its header says
            break
        blocks.append(block.mean(axis=1))
        read += len(block)
    return np.concatenate(blocks) if blocks else np.empty(0, np.float32)


def _cut_short(data: bytes) -> bool:
    """libsndfile quietly reads what is left of a cut WAV or Ogg file, so check their framing."""
    if data[:4] == b"RIFF":
        riff_size = int.from_bytes(data[4:8], "little")
        return riff_size not in (0, 0xFFFFFFFF) and len(data) < riff_size + 8  # streamed WAVs leave 0 or ~0
    if data[:4] == b"OggS":
        return _ogg_pages_end(data) > len(data)
    return False


def _ogg_pages_end(data: bytes) -> int:
    """Where the Ogg pages end, walking them from the start: past len(data) when the last is cut.

    The end-of-stream flag is no proof of a whole file: some encoders (e.g. Tux Paint's
    clips) never set it, and libsndfile decodes them completely all the same.
    """
    end = 0
    while data[end : end + 4] == b"OggS":
        table = end + 27  # a page: 27 header bytes, a table of segment lengths, the segments
        if len(data) < table:
            return table
        count = data[end + 26]
        end = table + count + sum(data[table : table + count])
    return end


def _resample(x: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Band-limited resampling: each output sample is a Hann-windowed sinc interpolation of
    the input, low-passed below the lower of the two Nyquist frequencies."""
    if src_rate == dst_rate:
        return x
    step = src_rate / dst_rate  # input samples per output sample
    cutoff = min(1.0, 1 / step)  # as a fraction of the input's Nyquist frequency
    half_width = int(np.ceil(ZERO_CROSSINGS / cutoff))
    padded = np.pad(x.astype(np.float64), half_width)
    taps = np.arange(-half_width + 1, half_width + 1)
    out = np.empty(int(round(len(x) / step)))
    for start in range(0, len(out), CHUNK):
        t = np.arange(start, min(start + CHUNK, len(out))) * step  # output times, in input samples
        index = np.floor(t).astype(np.int64)[:, None] + taps
        distance = t[:, None] - index
        weights = cutoff * np.sinc(cutoff * distance) * (0.5 + 0.5 * np.cos(np.pi * distance / half_width))
        out[start : start + len(t)] = (padded[index + half_width] * weights).sum(axis=1)
    return out


def average_power_spectrum(samples: np.ndarray, frame: int = 512) -> np.ndarray:
    """The mean power spectrum over Hann-windowed frames overlapping by half."""
    x = _clean(samples)
    if len(x) < frame:
        x = np.pad(x, (0, frame - len(x)))
    starts = range(0, len(x) - frame + 1, frame // 2)
    frames = np.stack([x[s : s + frame] for s in starts]) * np.hanning(frame)
    return (np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(axis=0)


def spectral_flatness(samples: np.ndarray) -> float:
    """Geometric over arithmetic mean of the average power spectrum: ~1 for white noise,
    near 0 for a tone."""
    power = average_power_spectrum(samples) + 1e-12
    return float(np.exp(np.log(power).mean()) / power.mean())


def log_power_spectrum(samples: np.ndarray) -> np.ndarray:
    return np.log10(average_power_spectrum(samples) + 1e-12)


def spectral_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of the two average log-power spectra: 1 for the same timbre and pitches."""
    return log_spectra_similarity(log_power_spectrum(a), log_power_spectrum(b))


def log_spectra_similarity(log_a: np.ndarray, log_b: np.ndarray) -> float:
    if log_a.std() == 0 or log_b.std() == 0:  # silence (or one code held) has no timbre to share
        return 0.0
    return float(np.corrcoef(log_a, log_b)[0, 1])


def loudness(samples) -> float:
    """RMS about the mean: what an ear hears, so a steady offset (a held µ-law code) is silence."""
    clean = _clean(samples)
    return float(np.sqrt(np.mean((clean - clean.mean()) ** 2))) + 1e-12


def continuation_metrics(prompt_tail: np.ndarray, continuation: np.ndarray) -> dict[str, float]:
    """How a continuation compares with the end of its prompt, as a listener would judge it:
    its spectral flatness (noise is flat), its spectral similarity to the prompt's tail,
    and its loudness drift (the continuation's loudness over the tail's)."""
    return {"flatness": spectral_flatness(continuation),
            "prompt_flatness": spectral_flatness(prompt_tail),
            "similarity": spectral_similarity(prompt_tail, continuation),
            "rms_drift": loudness(continuation) / loudness(prompt_tail)}


@dataclass(frozen=True)
class Steering:
    """How model.best_of.chunked_best_of steers a continuation: `candidates` drawn in one batch for
    every `seconds`, the last `untruncated` of them from every byte, and the one loudness_cost
    (with its `timbre` weight) rates lowest kept."""

    candidates: int
    untruncated: int
    seconds: float
    timbre: float = 0.0

    @property
    def name(self) -> str:
        """In words, for summaries and tables: "steered best of 8 per 0.125 s, 4 from every byte"."""
        every_byte = f", {self.untruncated} from every byte" if self.untruncated else ""
        timbre = f", timbre weight {self.timbre:g}" if self.timbre else ""
        return f"steered best of {self.candidates} per {self.seconds:g} s{every_byte}{timbre}"

    def plan(self, prompt: bytes, layout: Layout, how: Sampling) -> tuple:
        """chunked_best_of's (n, chunk_bytes, cost, sampling) for a continuation of `prompt`: each
        candidate drawn by `how`, but the last `untruncated` from every byte (at how's temperature
        and top-k), and loudness_cost to pick by."""
        rules = how  # one rule for all: the knobs the compiled step was compiled with
        if self.untruncated:
            every_byte = Sampling(temperature=how.temperature, top_k=how.top_k)
            rules = PerSample((how,) * (self.candidates - self.untruncated) + (every_byte,) * self.untruncated)
        return self.candidates, seconds_to_bytes(self.seconds, layout), loudness_cost(prompt, layout, self.timbre), rules


# Chosen on validation (bench/results/samplers_audio.md: 3 prompts of 2 s per checkpoint, each
# continued for 4 s, the general audio checkpoint with recall on): every rule that draws bytes one
# at a time, and best-of-4 on whole continuations, clicked or left the prompt's loudness on at
# least one prompt of melody or audio (min-p 0.1: a click on music, a second outside 0.3-2x on a
# tune; top-p 0.9 the same). Steering, which picks as it goes, did neither on any: for every
# 0.125 s, 8 candidates by the default rule in one batch, the one nearest the prompt's loudness
# kept. Weighing timbre as well (4 × (1 - spectral similarity to the prompt's last second)) gave
# the highest similarity of those: 0.954 on music (loudness alone 0.905, top-p 0.9 0.905), 0.841
# on tunes (0.878, 0.816); a weight of 1 made no difference on music. Drawing 2 or 4 of the 8
# from every byte changed nothing on music and cut similarity on tunes to 0.52-0.53. Before
# recall, the 8 candidates all faded together on 3 of 6 validation clips (no rule kept the 3.8M
# model's own music loud without recall's copies); 4 per 0.25 s steered less (4 of 6 too quiet).
STEERING = Steering(candidates=8, untruncated=0, seconds=0.125, timbre=4.0)
FULL_SCALE_PENALTY = 10.0  # past any loudness mismatch a candidate shows (|log| 10 is 22,000×): a click loses


def loudness_cost(prompt: bytes, layout: Layout, timbre: float = 0.0) -> Callable[[bytes], float]:
    """A cost for model.best_of.chunked_best_of that keeps a continuation as loud as the prompt's
    last second: |log(the chunk's loudness / that second's)| (`loudness`: a held offset is
    silence), plus FULL_SCALE_PENALTY for a full-scale sample (a click) where the prompt has none,
    plus `timbre` × (1 − the chunk's spectral similarity to that second): noise loses to notes."""
    rate = layout.sample_rate
    heard = lambda samples: loudness(samples) + 1e-6  # noqa: E731 -- silence: |log| ~11
    last_second = decode(prompt[-rate:], layout) / 32768
    target, target_spectrum = heard(last_second), log_power_spectrum(last_second)
    clicks_allowed = any(code in prompt for code in FULL_SCALE)

    def cost(chunk: bytes) -> float:
        samples = decode(chunk, layout) / 32768
        click = not clicks_allowed and any(code in chunk for code in FULL_SCALE)
        unlike = 1 - log_spectra_similarity(log_power_spectrum(samples), target_spectrum) if timbre else 0.0
        return abs(math.log(heard(samples) / target)) + FULL_SCALE_PENALTY * click + timbre * unlike

    return cost

