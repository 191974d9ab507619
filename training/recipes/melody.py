"""Melody recipe: single-line folk tunes rendered from scores, 8 kHz mono µ-law.

Tunes: O'Neill's 1850 and Ryan's Mammoth collections from the corpus in PyPI's music21
(public-domain era; the Essen collection stays out: its licence is unclear). Each tune
is rendered once by fluidsynth with Debian's FluidR3 GM SoundFont (MIT), on one of
eight General MIDI instruments, dry, at a seeded tempo and transposition; leading silence
is trimmed and the peak set to a fixed level, then the adapter makes 8 kHz µ-law.

The split is by tune. The manifest lists every tune with its split, offset, length and
instrument, so benchmarks can cut prompts inside whole tunes.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from adapters import Layout
from adapters import audio as audio_adapter

from .common import DEFAULT_DOWNLOADS, HELD_OUT, CacheWriter, DataError, hashed_split, apt_install, run_tool, seeded_shuffle

LAYOUT = Layout(modality="audio", sample_rate=8000)
SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
COLLECTIONS = {"oneills1850": "O'Neill's Music of Ireland (1850)", "ryansMammoth": "Ryan's Mammoth Collection (1883)"}
INSTRUMENTS = {"piano": 0, "organ": 16, "guitar": 24, "violin": 40, "clarinet": 71, "flute": 73,
               "ocarina": 79, "square lead": 80}
TUNES = 480
TINY_TUNES = 8
MAX_SECONDS = 60.0          # whole tunes with their repeats: long-context models recall the notes
PEAK = 0.7
SILENCE = 1e-3
RENDER_SECONDS = 60          # a render that takes longer is a stuck note: skip the tune
# Rendered dry (fluidsynth's reverb and chorus off): their noise-like tails cost xz 1-3 more
# bits per sample on the same tunes (6.0 vs 3.3 on one piano tune), entropy a small model
# would spend its capacity on instead of the melody.


def tune_texts(collection_dir: Path) -> list[tuple[str, str]]:
    """(id, ABC text) of every tune in a collection folder: a file holds one or many tunes."""
    tunes = []
    for path in sorted(collection_dir.glob("*.abc")):
        text = path.read_text(encoding="latin-1")
        parts = re.split(r"(?m)^(?=X:)", text)
        for part in parts:
            number = re.match(r"X:\s*(\d+)", part)
            if number:
                tunes.append((f"{collection_dir.name}/{path.stem}#{number.group(1)}", part))
    return tunes


def playable(abc: str, transpose: int, bpm: float, program: int):
    """A music21 score of the tune ready for MIDI: grace and zero-length notes dropped
    (they leave stuck notes), one time signature, one tempo, one instrument."""
    from music21 import converter, instrument, meter, tempo

    score = converter.parse(abc, format="abc")
    for element in list(score.recurse().getElementsByClass(["Note", "Chord", "Rest"])):
        if element.duration.isGrace or element.duration.quarterLength == 0:
            element.activeSite.remove(element)
    signatures = list(score.recurse().getElementsByClass(meter.TimeSignature))
    for signature in signatures[1:]:
        signature.activeSite.remove(signature)
    for mark in list(score.recurse().getElementsByClass(tempo.MetronomeMark)):
        mark.activeSite.remove(mark)
    score = score.transpose(transpose)
    part = score.parts[0] if score.parts else score
    part.insert(0, tempo.MetronomeMark(number=bpm))
    player = instrument.Instrument()
    player.midiProgram = program
    part.insert(0, player)
    return score


def render(abc: str, transpose: int, bpm: float, program: int, workdir: Path) -> np.ndarray | None:
    """Float samples at 8 kHz, or None when music21 or fluidsynth cannot make the tune."""
    midi, wav = workdir / "tune.mid", workdir / "tune.wav"
    try:
        playable(abc, transpose, bpm, program).write("midi", fp=str(midi))
    except Exception:  # music21 raises many kinds on odd ABC; such a tune is skipped
        return None
    try:
        run_tool(["timeout", str(RENDER_SECONDS), "fluidsynth", "-ni", "-O", "float", "-T", "wav", "-r", "16000",
                  "-R", "0", "-C", "0", "-F", str(wav), SOUNDFONT, str(midi)], what="render melodies")
    except DataError:
        return None
    samples = audio_adapter.load(wav, LAYOUT, max_seconds=MAX_SECONDS + 5)
    loud = np.flatnonzero(np.abs(samples) > SILENCE)
    if not len(loud):
        return None
    samples = samples[loud[0]: loud[-1] + 1][: int(MAX_SECONDS * LAYOUT.sample_rate)]
    return samples / np.abs(samples).max() * PEAK


def build_melody(out: Path | str = "data/melody", *, tiny: bool = False, seed: int = 0,
                 sources: Sequence[str] | None = None, downloads: Path | str = DEFAULT_DOWNLOADS,
                 progress: bool = True) -> dict:
    """Render the chosen tunes and write the melody cache to ``out``."""
    from tqdm import tqdm

    t0 = time.time()
    names = list(sources or COLLECTIONS)
    unknown = [n for n in names if n not in COLLECTIONS]
    if unknown:
        raise DataError(f"Unknown melody source {unknown[0]!r}; choose from {', '.join(COLLECTIONS)}.")
    for package in ("fluidsynth", "fluid-soundfont-gm"):
        apt_install(package)
    try:
        import music21
    except ImportError:
        raise DataError("The melody recipe needs music21: pip install music21.") from None
    corpus = Path(music21.__file__).parent / "corpus"
    tunes = [t for name in names for t in tune_texts(corpus / name)]
    tunes = seeded_shuffle(tunes, seed, "melody:tunes")
    wanted = TINY_TUNES if tiny else TUNES
    rng = np.random.default_rng([seed, 77])
    splits = ("train", "val", "test")
    rows = {s: [] for s in splits}
    chunks = {s: [] for s in splits}
    offsets = {s: 0 for s in splits}
    bar = tqdm(total=wanted, desc="melody: rendering", unit="tune", disable=not progress)
    with tempfile.TemporaryDirectory() as tmp:
        for tune_id, abc in tunes:
            if sum(len(r) for r in rows.values()) >= wanted:
                break
            name = list(INSTRUMENTS)[int(rng.integers(len(INSTRUMENTS)))]
            transpose, bpm = int(rng.integers(-5, 7)), float(rng.uniform(80, 150))
            samples = render(abc, transpose, bpm, INSTRUMENTS[name], Path(tmp))
            if samples is None:
                continue
            done = sum(len(r) for r in rows.values())
            split = ("train", "train", "val", "test")[done % 4] if tiny else hashed_split(tune_id, seed)
            data = audio_adapter.encode(samples, LAYOUT)
            chunks[split].append(data)
            rows[split].append({"tune": tune_id, "instrument": name, "program": INSTRUMENTS[name],
                                "transpose": transpose, "bpm": round(bpm, 1),
                                "offset": offsets[split], "bytes": len(data)})
            offsets[split] += len(data)
            bar.update()
    bar.close()

    with CacheWriter(Path(out), list(splits)) as writer:
        for split in splits:
            writer.add(split, b"".join(chunks[split]))
        manifest = {
            "modality": "audio",
            "format": "raw uint8; 8000 Hz mono 8-bit mu-law, tunes back to back (offsets in files)",
            "layout": LAYOUT.to_dict(),
            "command": "python -m training.data melody" + (" --tiny" if tiny else ""),
            "seed": seed,
            "tiny": tiny,
            "split": f"by tune, seeded: {HELD_OUT['val']:.0%} validation, {HELD_OUT['test']:.0%} test",
            "rendering": f"music21 ABC -> MIDI (grace and zero-length notes dropped, first time signature "
                         f"only), transposed -5..+6 semitones, 80-150 bpm; fluidsynth -O float at 16 kHz "
                         f"with FluidR3 GM, reverb and chorus off (-R 0 -C 0); leading and trailing silence trimmed; peak {PEAK}; at most "
                         f"{MAX_SECONDS:.0f} s; adapters.audio to 8 kHz mu-law",
            "instruments": INSTRUMENTS,
            "splits": {s: {"bytes": writer.sizes[s], "files": len(rows[s]),
                           "seconds": writer.sizes[s] / LAYOUT.sample_rate} for s in splits},
            "sources": [
                {"name": n, "package": f"music21=={music21.__version__} (PyPI), corpus/{n}",
                 "how": "pip install music21; render with fluidsynth + fluid-soundfont-gm (Debian)",
                 "licence": f"{COLLECTIONS[n]}: public-domain era scores; FluidR3 GM SoundFont MIT",
                 "files": {s: sum(r["tune"].startswith(n + "/") for r in rows[s]) for s in splits},
                 "bytes": {s: sum(r["bytes"] for r in rows[s] if r["tune"].startswith(n + "/")) for s in splits}}
                for n in names
            ],
            "excluded": "music21's Essen collection (licence unclear)",
            "files": rows,
            "seconds": round(time.time() - t0, 1),
        }
        writer.commit(manifest)
    return manifest
