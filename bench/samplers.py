"""Which way of drawing bytes continues audio and completes images best: `python -m bench.samplers`.

Each rule continues the same held-out prompts: top-p 0.9 (today's default),
min-p, η-sampling, LPCNet's probability floor and its peak sharpening (model.sampling), and
best-of-N (model.best_of: N continuations drawn in one batch, the model's likeliest or most
typical kept), and for audio the loudness steering (adapters.audio.Steering: N candidates a
chunk, the one nearest the prompt's loudness kept, model.best_of.chunked_best_of), with none,
two or half of the candidates drawn from every byte instead of by the default rule.

- Audio (melody and general audio checkpoints): a 2 s prompt from bench.continuation's clips,
  continued; bench.continuation's flatness, similarity and loudness drift, plus the failures
  the general checkpoint showed: a full-scale sample the prompt does not have (a click), and
  any second of the continuation quieter than 0.3× or louder than 2× the prompt's last second.
- Images (emoji and photo checkpoints): the top half kept, the bottom half completed; the
  completion's bits per subpixel under the model, and the total-variation distance between
  the colour histograms of the completed and the kept half.

`--split validation` (the default) measures every rule on validation data and chooses one per
medium; `--split test` measures today's rule, best-of-N and audio's steering against the adapters'
defaults (the rules chosen on validation) on the test splits. The photo and general audio data have no test
split: their validation clips are dealt alternately to the two runs, so the report never sees a
clip that chose.
Writes bench/results/samplers.md (validation) or samplers_test.md (test); with one of
`--media`, samplers_audio.md, samplers_test_image.md and so on. `--only` measures some checkpoints.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from matplotlib.figure import Figure  # without pyplot: no GUI backend, PNGs are drawn by Agg
from tqdm import tqdm

from adapters import AdapterError, Layout, audio, image
from adapters.checkpoints import load_for
from bench import compression, continuation
from bench.compression import markdown_table, read_manifest, read_split
from bench.continuation import PROMPT_SECONDS, START_SECONDS, clips, floats
from bench.figures import spread
from bench.provenance import measured_line
from model import CheckpointError, Sampling, generate, read_config
from model.best_of import RANKINGS, badness, chunked_best_of, continuation_scores
from model.sampling import PerSample

TODAY_NAME, TODAY = "top-p 0.9 (today)", Sampling(top_p=0.9)
# name: rule (knobs only, so a streamed generation can use it)
RULES = {
    TODAY_NAME: TODAY,
    "min-p 0.05": Sampling(min_p=0.05),
    "min-p 0.1": Sampling(min_p=0.1),
    "η 0.02": Sampling(eta=0.02),
    "LPCNet floor 0.002": Sampling(floor=0.002),
    "LPCNet floor 0.002 + sharpen 1": Sampling(floor=0.002, sharpen=1),
    "min-p 0.05 + sharpen 1": Sampling(min_p=0.05, sharpen=1),
}
BEST_OF = 4  # candidates per best-of-N draw, today's rule; one batch serves both rankings
# audio's steering by loudness with 0 or 2 of its candidates drawn from every byte, and by loudness
# and timbre (the app's is one of them; half from every byte, dropped: similarity on validation
# tunes 0.53 against 0.88 with none, 2026-12-03)
STEERINGS = (*(replace(audio.STEERING, untruncated=every, timbre=0.0) for every in (0, 2)),
             *(replace(audio.STEERING, untruncated=0, timbre=weight) for weight in (1.0, 4.0)))
# checkpoint: (medium, data folder, validation split, test split)
BENCHES = {"melody": ("audio", "melody", "val", "test"), "audio": ("audio", "audio", "val_music", "val_music"),
           "emoji": ("image", "emoji", "val", "test"), "image": ("image", "image", "val", "val")}
LOUDNESS = (0.3, 2.0)  # a second of continuation outside these times the prompt's last second's RMS fails
FULL_SCALE = (0, 255)  # µ-law codes of -1 and +1
COLOUR_LEVELS = 4  # per channel, so 64 colour bins
CHOOSING = {"audio": "The fewest clicks and loudness failures over all checkpoints' prompts (what the general audio "
                     "checkpoint must not do); among those, the highest median similarity relative to today's, then "
                     "the lowest median flatness relative to today's (means over checkpoints).",
            "image": "The lowest median colour distance, mean over checkpoints."}


@dataclass
class Size:
    clips: int  # audio prompts per checkpoint
    seconds: float  # audio continued per prompt
    images: int  # images per checkpoint


SIZES = {"full": Size(clips=6, seconds=1.0, images=12), "quick": Size(clips=2, seconds=0.25, images=3)}


def best_of_names() -> list[str]:
    return [f"best of {BEST_OF} by {ranking}" for ranking in RANKINGS]


def continuations(model, prompt: bytes, new_bytes: int, rules: dict[str, Sampling], seed: int) -> dict[str, bytes]:
    """Each rule's continuation of `prompt`, and best-of-N's under each ranking, all in one batch."""
    rows = PerSample((*rules.values(), *[TODAY] * BEST_OF))
    made = generate(model, prompt, new_bytes, len(rows.rules), rows, seed)
    out = dict(zip(rules, made))
    scores = [continuation_scores(model, prompt, c) for c in made[len(rules):]]
    for name, ranking in zip(best_of_names(), RANKINGS):
        out[name] = made[len(rules) + int(np.argmin([badness(s, ranking) for s in scores]))]
    return out


def steered(model, prompt: bytes, new_bytes: int, layout: Layout, steering: audio.Steering, seed: int) -> bytes:
    """The continuation `steering` makes (adapters.audio.Steering.plan), drawn by the adapter's rule."""
    return b"".join(chunked_best_of(model, prompt, new_bytes, *steering.plan(prompt, layout, audio.DEFAULT_SAMPLING),
                                    seed))


def loudness_range(prompt_tail: np.ndarray, continuation: np.ndarray, rate: int) -> tuple[float, float]:
    """The quietest and loudest second of the continuation (a shorter one whole), as RMS over
    the prompt tail's."""
    seconds = [continuation[i : i + rate] for i in range(0, len(continuation), rate)]
    ratios = [audio.loudness(s) / audio.loudness(prompt_tail) for s in seconds]
    return min(ratios), max(ratios)


def audio_measures(prompt: bytes, made: bytes, layout: Layout) -> dict[str, float]:
    tail = floats(prompt[-layout.sample_rate :], layout)
    continuation = floats(made, layout)
    quietest, loudest = loudness_range(tail, continuation, layout.sample_rate)
    prompt_full_scale = any(b in FULL_SCALE for b in prompt)
    return {**audio.continuation_metrics(tail, continuation),
            "click": float(not prompt_full_scale and any(b in FULL_SCALE for b in made)),
            "loudness_fail": float(not LOUDNESS[0] <= quietest <= loudest <= LOUDNESS[1])}


def spectrograms(drawn: list, rules: list[str], layout: Layout, title: str, out: Path):
    """One row per prompt, one column per rule: the spectrogram of prompt + continuation, titled with
    the continuation's quietest and loudest second against the prompt's last and whether it clicks.
    Written in 64 colours, which a spectrogram needs, to keep the PNG small."""
    rate = layout.sample_rate
    fig = Figure(figsize=(5.5 * len(rules), 0.6 + 2.2 * len(drawn)))
    axes = fig.subplots(len(drawn), len(rules), squeeze=False, sharex=True, sharey=True)
    for number, (row, (prompt, made_by)) in enumerate(zip(axes, drawn), 1):
        for ax, rule in zip(row, rules):
            made = made_by[rule]
            quietest, loudest = loudness_range(floats(prompt[-rate:], layout), floats(made, layout), rate)
            clicks = "a click" if audio_measures(prompt, made, layout)["click"] else "no click"
            ax.specgram(floats(prompt + made, layout), NFFT=256, Fs=rate, noverlap=128, cmap="magma", vmin=-110,
                        vmax=-10)
            ax.axvline(len(prompt) / rate, color="white", linestyle="--")
            ax.set_title(f"clip {number}, {rule}:\nseconds {quietest:.2f}–{loudest:.2f}× the prompt's last, {clicks}",
                         fontsize=9)
        row[0].set_ylabel("Hz")
    for ax in axes[-1]:
        ax.set_xlabel("seconds (dashed: the continuation starts)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    PIL.Image.open(buffer).quantize(64).save(out, optimize=True)


def colour_histogram(pixels: np.ndarray) -> np.ndarray:
    bins = (pixels.reshape(-1, 3).astype(int) * COLOUR_LEVELS // 256) @ [COLOUR_LEVELS**2, COLOUR_LEVELS, 1]
    return np.bincount(bins, minlength=COLOUR_LEVELS**3) / len(bins)


def image_measures(model, prompt: bytes, made: bytes, layout: Layout) -> dict[str, float]:
    pixels = np.asarray(image.decode(prompt + made, layout))
    half = layout.image_size // 2
    distance = 0.5 * np.abs(colour_histogram(pixels[:half]) - colour_histogram(pixels[half:])).sum()
    return {"bits": float(continuation_scores(model, prompt, made).surprisal.mean()),
            "colour_distance": float(distance)}


def audio_prompts(folder: Path, split: str, layout: Layout, count: int, part: int | None) -> list[bytes]:
    """bench.continuation's clips; `part` 0 or 1 deals every other one of twice as many, when
    choosing and reporting share a split."""
    if part is None:
        return [c["prompt"] for c in clips(folder, split, layout, count)]
    return [c["prompt"] for c in clips(folder, split, layout, 2 * count)[part::2]]


def image_prompts(folder: Path, split: str, layout: Layout, count: int, part: int | None) -> list[bytes]:
    """The top halves of images spread evenly over the split, dealt as audio_prompts deals clips."""
    side = read_manifest(folder)["layout"]["image_size"]
    if side != layout.image_size:
        raise compression.BenchError(f"The checkpoint works on {layout.image_size}-pixel images but {folder} "
                                     f"holds {side}-pixel ones.")
    data, size = read_split(folder, split), layout.bytes_per_image
    starts = spread(list(range(0, len(data) - size + 1, size)), count if part is None else 2 * count)
    starts = starts if part is None else starts[part::2]
    kept = image.prefix_bytes(layout.image_size // 2, layout)
    return [data[s : s + kept] for s in starts]


def measure(name: str, folder: Path, data: Path, split_index: int, size: Size, rules: dict[str, Sampling],
            drawn: list | None = None) -> dict[str, list[dict]]:
    """{rule: [the measures of each prompt]} for checkpoint `name`; `drawn` gets (prompt, {rule:
    continuation}) for each prompt."""
    medium, data_name, *splits = BENCHES[name]
    model, layout = load_for(medium, folder / name)
    split = splits[split_index]
    part = split_index if splits[0] == splits[1] else None
    if medium == "audio":
        prompts = audio_prompts(data / data_name, split, layout, size.clips, part)
        new_bytes = audio.seconds_to_bytes(size.seconds, layout)
    else:
        prompts = image_prompts(data / data_name, split, layout, size.images, part)
        new_bytes = layout.bytes_per_image - len(prompts[0]) if prompts else 0
    if not prompts:
        raise compression.BenchError(f"{data / data_name}/{split}.bin holds nothing long enough to prompt with.")
    results: dict[str, list[dict]] = {}
    for seed, prompt in enumerate(tqdm(prompts, desc=f"{name} ({split})", unit="prompt")):
        made_by = continuations(model, prompt, new_bytes, rules, seed)
        if medium == "audio":
            made_by.update({steering.name: steered(model, prompt, new_bytes, layout, steering, seed)
                            for steering in STEERINGS})
        for rule, made in made_by.items():
            results.setdefault(rule, []).append(audio_measures(prompt, made, layout) if medium == "audio"
                                                else image_measures(model, prompt, made, layout))
        if drawn is not None:
            drawn.append((prompt, made_by))
    return results


def medians(per_prompt: list[dict]) -> dict[str, float]:
    return {k: float(np.median([m[k] for m in per_prompt])) for k in per_prompt[0]}


def table(medium: str, results: dict[str, list[dict]]) -> str:
    if medium == "audio":
        header = ["rule", "flatness", "similarity", "RMS drift", "clicks", "loudness outside 0.3–2×"]
        rows = [[rule, f"{m['flatness']:.3f}", f"{m['similarity']:.3f}", f"{m['rms_drift']:.2f}",
                 *(f"{sum(p[failure] for p in per):.0f} of {len(per)}" for failure in ("click", "loudness_fail"))]
                for rule, per in results.items() for m in [medians(per)]]
    else:
        header = ["rule", "completed half: bits per subpixel", "colour distance to the kept half"]
        rows = [[rule, f"{m['bits']:.3f}", f"{m['colour_distance']:.3f}"]
                for rule, per in results.items() for m in [medians(per)]]
    return markdown_table(header, rows)


def choose(medium: str, measured: dict[str, dict[str, list[dict]]], candidates) -> str:
    """The rule for `medium` among `candidates` as CHOOSING says, from each checkpoint's
    {rule: [per-prompt measures]}."""
    today = TODAY_NAME
    if medium == "image":
        return min(candidates, key=lambda rule: np.mean(
            [medians(results[rule])["colour_distance"] for results in measured.values()]))

    def relative(rule, measure):
        return np.mean([medians(results[rule])[measure] / max(medians(results[today])[measure], 1e-9)
                        for results in measured.values()])

    def key(rule):
        failures = sum(p["click"] + p["loudness_fail"] for results in measured.values() for p in results[rule])
        return failures, -relative(rule, "similarity"), relative(rule, "flatness")

    return min(candidates, key=key)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.samplers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("validation", "test"), default="validation",
                        help="validation: every rule, and a choice per medium; test: today's against the defaults")
    parser.add_argument("--quick", action="store_true", help="few, short prompts: a smoke run of a few minutes")
    parser.add_argument("--media", nargs="+", choices=("audio", "image"), default=["audio", "image"],
                        help="which media to measure (default: both)")
    parser.add_argument("--clips", type=int, help=f"audio prompts per checkpoint (default: {SIZES['full'].clips}; "
                                                  f"{SIZES['quick'].clips} with --quick)")
    parser.add_argument("--seconds", type=float,
                        help=f"audio continued per prompt (default: {SIZES['full'].seconds:g}; "
                             f"{SIZES['quick'].seconds:g} with --quick)")
    parser.add_argument("--images", type=int, help=f"images per checkpoint (default: {SIZES['full'].images}; "
                                                   f"{SIZES['quick'].images} with --quick)")
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--figure", type=Path, metavar="PNG",
                        help="also draw the audio checkpoint's continuations by the default rule and steered as "
                             "spectrograms, one row per prompt (e.g. docs/audio_steered.png)")
    parser.add_argument("--only", help=f"comma-separated checkpoint names (default: every one of the media: "
                                       f"{', '.join(BENCHES)})")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    size = SIZES["quick" if args.quick else "full"]
    size = Size(args.clips or size.clips, args.seconds or size.seconds, args.images or size.images)
    if min(size.clips, size.seconds, size.images) <= 0:
        sys.exit("bench.samplers: --clips, --seconds and --images must be positive.")
    names = args.only.split(",") if args.only else list(BENCHES)
    if unknown := set(names) - set(BENCHES):
        sys.exit(f"bench.samplers: --only takes {', '.join(BENCHES)}, not {', '.join(sorted(unknown))}.")
    if args.figure and ("audio" not in args.media or "audio" not in names):
        sys.exit("bench.samplers: --figure draws the audio checkpoint's continuations: measure it (--media audio).")
    testing = args.split == "test"
    # one file per split, and per medium when only one is measured
    one_medium = f"_{args.media[0]}" if len(set(args.media)) == 1 else ""
    out = args.out or Path(f"bench/results/samplers{'_test' if testing else ''}{one_medium}.md")
    defaults = {"audio": audio.DEFAULT_SAMPLING, "image": image.DEFAULT_SAMPLING}
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    measured: dict[str, dict[str, dict[str, list[dict]]]] = {medium: {} for medium in args.media}
    drawn: list = []  # the audio checkpoint's prompts and continuations, for --figure
    try:
        for name, (medium, *_) in BENCHES.items():
            if medium not in measured or name not in names:
                continue
            rules = {TODAY_NAME: TODAY, "default": defaults[medium]} if testing else RULES
            measured[medium][name] = measure(name, args.checkpoints, args.data, int(testing), size, rules,
                                             drawn if name == "audio" else None)
    except (compression.BenchError, continuation.BenchError, CheckpointError, AdapterError) as e:
        sys.exit(f"bench.samplers: {e}")
    if args.figure:
        default = "default" if testing else next(name for name, rule in RULES.items() if rule == audio.DEFAULT_SAMPLING)
        _, data_name, *splits = BENCHES["audio"]
        spectrograms(drawn, [default, audio.STEERING.name],
                     Layout.from_dict(read_config(args.checkpoints / "audio")["layout"]),
                     f"The audio checkpoint continues held-out music ({args.data / data_name}/{splits[int(testing)]}"
                     f".bin, the {args.split} side) for {size.seconds:g} s:\n{default} ({audio.DEFAULT_SAMPLING.describe()}) "
                     f"and {audio.STEERING.name}. Asked: each second 0.3–2× the prompt's last, no click.",
                     args.figure)
    lines = [f"# Sampling rules on the {args.split} split{' (quick)' if args.quick else ''}", "",
             measured_line("bench.samplers", started, time.perf_counter() - clock, argv), "",
             f"Audio: {size.clips} prompts of {PROMPT_SECONDS:g} s per checkpoint ({START_SECONDS:g} s into each "
             f"tune or clip when it is long enough), each continued for {size.seconds:g} s. Images: {size.images} "
             "per checkpoint, the top half kept. All rules continue each prompt in one batch "
             "(model.sampling.PerSample), each sample with its own noise, but audio's steering, which draws its "
             "own batch for each chunk. Medians over prompts; clicks and loudness failures counted.", "",
             "## Rules tried", ""]
    tried = {TODAY_NAME: TODAY, **({"default": None} if testing else RULES)}
    for rule, how in tried.items():
        lines.append(f"- {rule}: " + (how.describe() if how else "the adapter's DEFAULT_SAMPLING: "
                                       f"audio {defaults['audio'].describe()}; images {defaults['image'].describe()}"))
    lines.append(f"- best of {BEST_OF}: {BEST_OF} continuations at top-p 0.9 in one batch; by likelihood: the "
                 "lowest mean surprisal under the model; typical: mean surprisal closest to the mean entropy")
    if "audio" in measured:
        lines += [f"- {steering.name} (audio): {steering.candidates} candidates in one batch for every "
                  f"{steering.seconds:g} s, {steering.candidates - steering.untruncated} by the default rule "
                  f"({defaults['audio'].describe()}) and {steering.untruncated} from every byte; the one nearest the "
                  "prompt's last second in loudness" + (f" and, weighted {steering.timbre:g}, in spectrum" if steering.timbre else "")
                  + " kept, and one with a click the prompt lacks only where all have one (adapters.audio.loudness_cost)" + ("; the app's default" if steering == audio.STEERING else "")
                  for steering in STEERINGS]
    for medium, per_checkpoint in measured.items():
        for name, results in per_checkpoint.items():
            _, data_name, *splits = BENCHES[name]
            split = splits[int(testing)]
            dealt = " (every other prompt; the other run takes the rest)" if splits[0] == splits[1] else ""
            lines += ["", f"## {name} checkpoint: `{args.data / data_name}/{split}.bin`{dealt}", "",
                      table(medium, results)]
        if not testing:
            streamed = [*RULES, *(steering.name for steering in STEERINGS if medium == "audio")]
            best = choose(medium, per_checkpoint, [*streamed, *best_of_names()])
            lines += ["", f"**Chosen for {medium}: {best}**; of the rules a streamed generation can use (knobs "
                      f"only, or steered a chunk at a time): **{choose(medium, per_checkpoint, streamed)}**. "
                      f"{CHOOSING[medium]}"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"Wrote {out}" + (f" and {args.figure}" if args.figure else ""))


if __name__ == "__main__":
    main()
