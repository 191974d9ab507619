"""Audio recipe: real music and speech as 8000 Hz mono 8-bit µ-law bytes.

Sources (Debian packages, unpacked with ``apt-get download`` + ``dpkg-deb -x``
unless installed, since installing the speech packages would pull in whole
games): Wesnoth's orchestral music (a seeded subset of whole tracks, under
half an hour), Sonic Pi's CC0 instrument samples, Fish Fillets' Czech voice
acting and Tux Paint's spoken stamp descriptions (ten languages).

Files are decoded, mixed to mono, resampled to 8 kHz and µ-law encoded with
the audio adapter (``adapters.audio``), one byte per sample, and written
whole, back to back. Validation holds whole files that training never sees;
``val_music.bin`` and ``val_speech.bin`` hold the same files split by kind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from adapters import AdapterError, Layout
from adapters import audio as audio_adapter

from .common import (DEFAULT_DOWNLOADS, CacheWriter, DataError, apt_data_dir,
                     choose_validation, seeded_shuffle)

SAMPLE_RATE = 8000
SILENT_PEAK = 1e-3                  # files quieter than this everywhere are skipped

WESNOTH_MINUTES = 28.0
FILLETS_MINUTES = 40.0
TUXPAINT_MINUTES = 20.0
TINY_FILES = 4                      # per source, plus its validation files
TINY_MAX_SECONDS = 8.0              # per file, with --tiny

# Sonic Pi samples that ship as demo assets: never trained on, held out for validation
SONIC_PI_DEMOS = ["ambi_choir.flac", "ambi_piano.flac", "guit_em9.flac", "loop_tabla.flac"]
# loops that may have been sampled from records: not used at all
SONIC_PI_EXCLUDED_PREFIXES = ("loop_amen", "loop_breakbeat")
WESNOTH_SKIP = {"silence.ogg": "silence", "frantic-old.ogg": "an older mix of frantic.ogg"}


@dataclass
class Clip:
    source: str
    name: str                 # stable identifier, e.g. "wesnoth/knolls.ogg"
    path: Path
    seconds: float
    forced_val: bool = False


@dataclass
class AudioSource:
    name: str
    kind: str                 # "music" or "speech"
    package: str
    how: str
    paths: list[str]
    licence: str
    clips: list[Clip]
    note: str = ""


def _info_seconds(path: Path) -> float:
    import soundfile as sf
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types
        raise DataError(f"libsndfile cannot read {path}: {exc}.") from None
    return float(info.frames) / float(info.samplerate) if info.samplerate else 0.0


def _budget(clips: list[Clip], minutes: float, seed: int, salt: str) -> list[Clip]:
    """A seeded subset of whole clips adding up to at most ``minutes``
    (the forced-validation clips always stay)."""
    keep = [c for c in clips if c.forced_val]
    total = sum(c.seconds for c in keep)
    for c in seeded_shuffle([c for c in clips if not c.forced_val], seed, f"budget:{salt}"):
        if total + c.seconds <= minutes * 60:
            keep.append(c)
            total += c.seconds
    return sorted(keep, key=lambda c: c.name)


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


# --------------------------------------------------------------------------- #
# sources
# --------------------------------------------------------------------------- #

def wesnoth_source(downloads: Path, seed: int) -> AudioSource:
    system = "/usr/share/games/wesnoth/1.16/data/core/music"
    root = apt_data_dir("wesnoth-1.16-music", system, downloads)
    files = [f for f in sorted(root.glob("*.ogg")) if f.name not in WESNOTH_SKIP]
    if not files:
        raise DataError(f"The wesnoth-1.16-music package has no .ogg files in {system}.")
    clips = [Clip("wesnoth", f"wesnoth/{f.name}", f, _info_seconds(f)) for f in files]
    clips = _budget(clips, WESNOTH_MINUTES, seed, "wesnoth")
    return AudioSource("wesnoth", "music", "wesnoth-1.16-music (Debian)",
                       "apt-get download wesnoth-1.16-music; dpkg-deb -x (or the installed package)",
                       [f"{system}/*.ogg"], "GPL-2+", clips,
                       note=f"a seeded subset of whole tracks, at most {WESNOTH_MINUTES:g} min; "
                            f"skipped: {WESNOTH_SKIP}")


def sonic_pi_source(downloads: Path, seed: int) -> AudioSource:
    system = "/usr/share/sonic-pi/samples"
    root = apt_data_dir("sonic-pi-samples", system, downloads)
    files = [f for f in sorted(root.glob("*.flac"))
             if not f.name.startswith(SONIC_PI_EXCLUDED_PREFIXES)]
    if not files:
        raise DataError(f"The sonic-pi-samples package has no .flac files in {system}.")
    clips = [Clip("sonic-pi", f"sonic-pi/{f.name}", f, _info_seconds(f),
                  forced_val=f.name in SONIC_PI_DEMOS) for f in files]
    return AudioSource("sonic-pi", "music", "sonic-pi-samples (Debian)",
                       "apt-get download sonic-pi-samples; dpkg-deb -x (or the installed package)",
                       [f"{system}/*.flac"], "CC0", clips,
                       note="loop_amen* and loop_breakbeat* are left out (they may come from records); "
                            f"the demo samples {SONIC_PI_DEMOS} are held out for validation")


def fillets_source(downloads: Path, seed: int) -> AudioSource:
    system = "/usr/share/games/fillets-ng/sound"
    root = apt_data_dir("fillets-ng-data-cs", system, downloads)
    files = sorted(root.glob("*/cs/*.ogg"))
    if not files:
        raise DataError(f"The fillets-ng-data-cs package has no */cs/*.ogg files in {system}.")
    clips = [Clip("fillets", f"fillets/{_rel(f, root)}", f, _info_seconds(f)) for f in files]
    clips = _budget(clips, FILLETS_MINUTES, seed, "fillets")
    return AudioSource("fillets", "speech", "fillets-ng-data-cs (Debian)",
                       "apt-get download fillets-ng-data-cs; dpkg-deb -x (or the installed package)",
                       [f"{system}/*/cs/*.ogg"], "GPL-2", clips,
                       note=f"Czech voice acting; a seeded subset of whole clips, at most {FILLETS_MINUTES:g} min")


def tuxpaint_source(downloads: Path, seed: int) -> AudioSource:
    system = "/usr/share/tuxpaint/stamps"
    root = apt_data_dir("tuxpaint-stamps-default", system, downloads)
    files = sorted(f for f in root.rglob("*_desc_*.ogg") if not f.is_symlink())
    if not files:
        raise DataError(f"The tuxpaint-stamps-default package has no *_desc_*.ogg files under {system}.")
    clips = [Clip("tuxpaint", f"tuxpaint/{_rel(f, root)}", f, _info_seconds(f)) for f in files]
    clips = _budget(clips, TUXPAINT_MINUTES, seed, "tuxpaint")
    return AudioSource("tuxpaint", "speech", "tuxpaint-stamps-default (Debian)",
                       "apt-get download tuxpaint-stamps-default; dpkg-deb -x (or the installed package)",
                       [f"{system}/**/*_desc_*.ogg"], "GPL-2", clips,
                       note=f"spoken stamp descriptions in ten European languages; a seeded subset "
                            f"of whole clips, at most {TUXPAINT_MINUTES:g} min")


AUDIO_SOURCES: dict[str, Callable[[Path, int], AudioSource]] = {
    "wesnoth": wesnoth_source,
    "sonic-pi": sonic_pi_source,
    "fillets": fillets_source,
    "tuxpaint": tuxpaint_source,
}
TINY_SOURCES = ["sonic-pi", "fillets"]


# --------------------------------------------------------------------------- #
# decoding
# --------------------------------------------------------------------------- #

def make_codec(max_seconds: float | None):
    """(file -> µ-law bytes, layout dict, codec name), with the audio adapter."""
    layout = Layout(modality="audio", sample_rate=SAMPLE_RATE)

    def codec(path: Path) -> bytes:
        try:
            samples = audio_adapter.load(path, layout, max_seconds=max_seconds)
        except AdapterError as exc:
            raise DataError(f"Cannot decode {path}: {exc}") from None
        if samples.size == 0 or float(np.max(np.abs(samples))) < SILENT_PEAK:
            return b""
        return audio_adapter.encode(samples, layout)

    return codec, layout.to_dict(), "adapters.audio.load + adapters.audio.encode"


# --------------------------------------------------------------------------- #
# the recipe
# --------------------------------------------------------------------------- #

def build_audio(out: Path | str = "data/audio", *, tiny: bool = False, seed: int = 0,
                sources: Sequence[str] | None = None,
                downloads: Path | str = DEFAULT_DOWNLOADS, progress: bool = True) -> dict:
    """Install the audio sources, encode them and write the audio cache to ``out``."""
    from tqdm import tqdm

    t0 = time.time()
    names = list(sources or (TINY_SOURCES if tiny else AUDIO_SOURCES))
    unknown = [n for n in names if n not in AUDIO_SOURCES]
    if unknown:
        raise DataError(f"Unknown audio source {unknown[0]!r}; choose from {', '.join(AUDIO_SOURCES)}.")
    downloads = Path(downloads)
    codec, layout, codec_name = make_codec(TINY_MAX_SECONDS if tiny else None)

    srcs = [AUDIO_SOURCES[n](downloads, seed) for n in names]
    train: list[Clip] = []
    val: list[Clip] = []
    report = []
    for src in srcs:
        clips = src.clips
        if tiny:
            forced = [c for c in clips if c.forced_val][:1]
            short = [c for c in clips if not c.forced_val and 0.5 <= c.seconds <= 6]
            clips = sorted(forced + seeded_shuffle(short or clips, seed, f"tiny:{src.name}")[:TINY_FILES + 2],
                           key=lambda c: c.name)
        forced = [c.name for c in clips if c.forced_val]
        # music: a couple of whole tracks / samples; speech: ~4% of the clips
        frac = 0.04 if src.kind == "speech" else 0.06
        held = choose_validation([c.name for c in clips], seed=seed, source=f"audio:{src.name}",
                                 fraction=frac, min_files=2 if src.name == "wesnoth" or tiny else 3,
                                 forced=forced)
        tr = [c for c in clips if c.name not in held]
        va = [c for c in clips if c.name in held]
        train += tr
        val += va
        report.append((src, tr, va))
    if not train or not val:
        raise DataError("The audio sources gave too few files for both a training and a validation split.")

    kind = {s.name: s.kind for s in srcs}
    extra = [f"val_{k}" for k in ("music", "speech") if any(kind[c.source] == k for c in val)]
    splits = ["train", "val"] + extra
    files: dict[str, list[dict]] = {s: [] for s in splits}
    skipped: list[str] = []          # silent files
    unreadable: list[dict] = []      # files the decoder refused (a few are tolerated)
    used_bytes: dict[tuple[str, str], int] = {}
    used_files: dict[tuple[str, str], int] = {}
    seconds_total = sum(min(c.seconds, TINY_MAX_SECONDS) if tiny else c.seconds for c in train + val)
    bar = tqdm(total=round(seconds_total), desc="audio: decoding", unit="s", disable=not progress)
    done = [0.0]

    def advance(clip):
        before = round(done[0])
        done[0] += min(clip.seconds, TINY_MAX_SECONDS) if tiny else clip.seconds
        bar.update(round(done[0]) - before)

    with CacheWriter(Path(out), splits) as writer:
        def put(split_names, clip, data):
            for split in split_names:
                off = writer.add(split, data)
                files[split].append({"source": clip.source, "path": clip.name, "offset": off,
                                     "bytes": len(data), "seconds": round(len(data) / SAMPLE_RATE, 3)})

        def record(split, clip, data):
            key = (clip.source, split)
            used_bytes[key] = used_bytes.get(key, 0) + len(data)
            used_files[key] = used_files.get(key, 0) + 1

        def decode(clip):
            try:
                data = codec(clip.path)
            except DataError as exc:
                unreadable.append({"path": clip.name, "why": str(exc).split(": ", 1)[-1]})
                if len(unreadable) > max(3, 0.05 * len(train + val)):
                    raise DataError(f"Too many audio files could not be decoded; the last: {exc}") from None
                data = None
            advance(clip)
            if data is not None and not data:
                skipped.append(clip.name)
            return data or None

        for clip in seeded_shuffle(train, seed, "train-order"):     # mix sources
            data = decode(clip)
            if data is None:
                continue
            put(["train"], clip, data)
            record("train", clip, data)
        for clip in sorted(val, key=lambda c: (kind[c.source] != "music", c.name)):
            data = decode(clip)
            if data is None:
                continue
            put(["val", f"val_{kind[clip.source]}"], clip, data)
            record("val", clip, data)
        bar.close()

        def split_info(s):
            return {"bytes": writer.sizes[s], "files": writer.counts[s],
                    "seconds": round(writer.sizes[s] / SAMPLE_RATE, 1)}

        manifest = {
            "modality": "audio",
            "format": "raw uint8; 8000 Hz mono 8-bit mu-law (mu=255, code 0 = -1, 255 = +1), "
                      "one byte per sample; whole files back to back, no separator",
            "layout": layout,
            "codec": codec_name,
            "command": "python -m training.data audio" + (" --tiny" if tiny else ""),
            "seed": seed,
            "tiny": tiny,
            "splits": {s: split_info(s) for s in splits},
            "sources": [
                {"name": src.name, "kind": src.kind, "package": src.package, "how": src.how,
                 "paths": src.paths, "licence": src.licence, "note": src.note,
                 "files": {"train": used_files.get((src.name, "train"), 0),
                           "val": used_files.get((src.name, "val"), 0)},
                 "bytes": {"train": used_bytes.get((src.name, "train"), 0),
                           "val": used_bytes.get((src.name, "val"), 0)},
                 "validation_files": [f["path"] for f in files["val"] if f["source"] == src.name]}
                for src, tr, va in report
            ],
            "skipped_silent": skipped,
            "skipped_unreadable": unreadable,
            "excluded_from_training": {
                "demo assets (in validation)": [c.name for c in val if c.forced_val],
                "not used (licence)": ["sonic-pi/loop_amen*", "sonic-pi/loop_breakbeat*"]},
            "files": files,
            "seconds": round(time.time() - t0, 1),
        }
        writer.commit(manifest)
    return manifest
