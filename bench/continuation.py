"""Audio continuation as a listener would judge it: `python -m bench.continuation`.

For each held-out tune or clip, the checkpoint continues 1 s after a 2 s prompt (--prompt-seconds; the app's
default sampling and decoder, Decoder.fastest, eager; a fixed seed); the continuation is compared with the prompt's last second:
spectral flatness (noise is flat), similarity of the average log-power spectra, and loudness
drift (RMS of the continuation over RMS of the prompt's last second). Reference rows are
computed the same way: the real next second (the ceiling) and white noise at the prompt's
loudness (the floor). A checkpoint with recall (model.recall) is measured twice: as the app
continues (recall copying what followed the prompt's tail earlier in the tune) and by its neural
model alone. Writes bench/results/continuation.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from adapters import AdapterError, Layout, audio
from adapters.checkpoints import load_for
from bench.provenance import measured_line
from model import CheckpointError, Decoder, Sampling, stream_bytes

PROMPT_SECONDS = 2.0
CONTINUE_SECONDS = 1.0
START_SECONDS = 3.0  # the prompt starts this far into a tune (past its first notes) when the tune is long enough
# checkpoint name: (data folder, split, what its clips are)
BENCHES = {"melody": ("melody", "test", "melody test tunes"), "melody_long": ("melody", "test", "melody test tunes"),
           "audio": ("audio", "val_music", "held-out music clips")}
METRICS = ("flatness", "similarity", "rms_drift")
GOALS = {"flatness": "≤ 2× the real next second's", "similarity": "≥ 0.8× the real next second's",
         "rms_drift": "within 0.5–2×"}


class BenchError(Exception):
    """A missing input; the message is one sentence."""


def floats(mu_law: bytes, layout: Layout) -> np.ndarray:
    return audio.decode(mu_law, layout) / 32768.0


def clips(folder: Path, split: str, layout: Layout, count: int, prompt_seconds: float = PROMPT_SECONDS) -> list[dict]:
    """Up to `count` held-out files long enough for a prompt and a real next second, with
    where the prompt starts; evenly spread over the split."""
    manifest_path, data_path = folder / "manifest.json", folder / f"{split}.bin"
    if not manifest_path.is_file() or not data_path.is_file():
        raise BenchError(f"{data_path} is missing: make it with `python -m training.data {folder.name}`.")
    files = json.loads(manifest_path.read_text())["files"][split]
    data = data_path.read_bytes()
    prompt = audio.seconds_to_bytes(prompt_seconds, layout)
    follow = audio.seconds_to_bytes(CONTINUE_SECONDS, layout)
    usable = [f for f in files if f["bytes"] >= prompt + follow]
    chosen = [usable[i] for i in np.linspace(0, len(usable) - 1, min(count, len(usable))).astype(int)] if usable else []
    out = []
    for f in chosen:
        start = audio.seconds_to_bytes(START_SECONDS, layout)
        if f["bytes"] < start + prompt + follow:
            start = 0
        begin = f["offset"] + start
        out.append({"name": f.get("tune") or f.get("path") or str(f["offset"]), "instrument": f.get("instrument", "–"),
                    "prompt": data[begin : begin + prompt], "real": data[begin + prompt : begin + prompt + follow]})
    return out


def without_recall(model):
    """The same model (its weights shared) with its recall turned off."""
    alone = copy.copy(model)
    alone.config = replace(model.config, recall=())
    return alone


def measure(decoder: Decoder, layout: Layout, clip: dict, sampling: Sampling, seed: int) -> dict[str, dict]:
    """The metrics of the continuation made on the app's decoder, the real next second and white noise."""
    follow = audio.seconds_to_bytes(CONTINUE_SECONDS, layout)
    tail = floats(clip["prompt"][-follow:], layout)
    made = np.concatenate(list(stream_bytes(decoder, clip["prompt"], follow, 1, sampling, seed)), axis=1)[0].tobytes()
    noise = np.random.default_rng(seed).standard_normal(follow) * np.sqrt(np.mean(tail**2))
    return {"model": audio.continuation_metrics(tail, floats(made, layout)),
            "real next second": audio.continuation_metrics(tail, floats(clip["real"], layout)),
            "white noise": audio.continuation_metrics(tail, noise)}


def summary_table(results: dict[str, list[dict]]) -> list[str]:
    """Median over clips of each metric, per checkpoint and row, with the goals checked for the model."""
    lines = ["| checkpoint | clips | row | flatness | prompt's last second flatness | similarity | RMS drift |",
             "|---|---|---|---|---|---|---|"]
    for name, per_clip in results.items():
        for row in ("model", "real next second", "white noise"):
            med = {k: float(np.median([c["metrics"][row][k] for c in per_clip])) for k in (*METRICS, "prompt_flatness")}
            lines.append(f"| {name} | {len(per_clip)} | {row} | {med['flatness']:.3f} | {med['prompt_flatness']:.3f} "
                         f"| {med['similarity']:.2f} | {med['rms_drift']:.2f} |")
    return lines


def goals(per_clip: list[dict]) -> list[str]:
    med = {row: {k: float(np.median([c["metrics"][row][k] for c in per_clip])) for k in METRICS}
           for row in ("model", "real next second")}
    model, real = med["model"], med["real next second"]
    met = {"flatness": model["flatness"] <= 2 * real["flatness"],
           "similarity": model["similarity"] >= 0.8 * real["similarity"],
           "rms_drift": 0.5 <= model["rms_drift"] <= 2}
    shown = {"flatness": f"{model['flatness']:.3f} vs {2 * real['flatness']:.3f}",
             "similarity": f"{model['similarity']:.2f} vs {0.8 * real['similarity']:.2f}",
             "rms_drift": f"{model['rms_drift']:.2f}"}
    return [f"- {k}: goal {GOALS[k]}: {shown[k]}: **{'met' if met[k] else 'not met'}**" for k in METRICS]


def per_clip_table(per_clip: list[dict]) -> list[str]:
    lines = ["| clip | instrument | flatness (model / real) | similarity (model / real) | RMS drift (model / real) |",
             "|---|---|---|---|---|"]
    for c in per_clip:
        m, r = c["metrics"]["model"], c["metrics"]["real next second"]
        lines.append(f"| {c['name']} | {c['instrument']} | {m['flatness']:.3f} / {r['flatness']:.3f} "
                     f"| {m['similarity']:.2f} / {r['similarity']:.2f} | {m['rms_drift']:.2f} / {r['rms_drift']:.2f} |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.continuation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/continuation.md"))
    parser.add_argument("--clips", type=int, default=12, help="held-out tunes or clips per checkpoint (default: 12)")
    parser.add_argument("--temperature", type=float, default=1.0, help="default: 1.0, the app's default")
    parser.add_argument("--top-k", type=int, default=0, help="default: 0 (all 256 bytes), the app's default")
    parser.add_argument("--top-p", type=float, default=None,
                        help=f"default: {audio.DEFAULT_SAMPLING.top_p:g}, that of the app's rule for audio "
                             f"({audio.DEFAULT_SAMPLING.describe()}), which the other knobs keep (1 keeps every byte)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt-seconds", type=float, default=PROMPT_SECONDS,
                        help=f"seconds of prompt (default: {PROMPT_SECONDS:g}; a prompt longer than a checkpoint's "
                             "context is cut to its last context's worth, as generation does)")
    parser.add_argument("--only", default=None, help="comma-separated checkpoint names (default: every one there)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    if args.clips < 1 or args.threads < 1 or args.prompt_seconds <= 0:
        sys.exit("bench.continuation: --clips and --threads must be at least 1, --prompt-seconds above 0.")
    names = args.only.split(",") if args.only else list(BENCHES)
    torch.set_num_threads(args.threads)
    try:
        sampling = replace(audio.DEFAULT_SAMPLING, temperature=args.temperature, top_k=args.top_k,
                           top_p=audio.DEFAULT_SAMPLING.top_p if args.top_p is None else args.top_p)
    except ValueError as e:
        sys.exit(f"bench.continuation: {e}")
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    results, used = {}, []
    try:
        for name, (data_name, split, what) in BENCHES.items():
            if name not in names:
                continue
            folder = args.checkpoints / name
            if not folder.is_dir():
                print(f"No checkpoint at {folder}: skipping {name}.", file=sys.stderr)
                continue
            model, layout = load_for("audio", folder)
            try:
                chosen = clips(args.data / data_name, split, layout, args.clips, args.prompt_seconds)
            except BenchError as e:  # the other checkpoints can still be measured
                print(f"{e} Skipping {name}.", file=sys.stderr)
                used.append(f"- `{folder}`: not measured; {e}")
                continue
            if not chosen:
                raise BenchError(f"{args.data / data_name}/{split}.bin holds no clip of {args.prompt_seconds + CONTINUE_SECONDS:g} s.")
            used.append(f"- `{folder}` on {len(chosen)} {what} from `{args.data / data_name}/{split}.bin`.")
            variants = {name: model}
            if getattr(model.config, "recall", ()):
                variants = {f"{name} (with recall)": model, f"{name} (neural alone)": without_recall(model)}
            for label, variant in variants.items():
                decoder = Decoder.fastest(variant)  # as the app decodes, eagerly: the fused C++ step where it builds
                results[label] = [{**c, "metrics": measure(decoder, layout, c, sampling, args.seed)}
                                  for c in tqdm(chosen, desc=f"{label}: continuing", unit="clip")]
    except (BenchError, CheckpointError, AdapterError) as e:
        sys.exit(f"bench.continuation: {e}")
    if not results:
        sys.exit(f"bench.continuation: no melody or audio checkpoint in {args.checkpoints} could be measured"
                 + (f" ({used[-1][2:]})" if used else "."))
    lines = ["# Audio continuation: does it continue the music?", "",
             measured_line("bench.continuation", started, time.perf_counter() - clock, argv), "",
             f"Each clip: a {args.prompt_seconds:g} s prompt ({START_SECONDS:g} s into the tune when it is long enough), "
             f"continued for {CONTINUE_SECONDS:g} s drawing by {sampling.describe()}, seed {args.seed}; compared with "
             "the prompt's last "
             "second. Medians over clips. "
             "Flatness: geometric over arithmetic mean of the average power spectrum (white noise ~1, a tone ~0). "
             "Similarity: correlation of the two average log-power spectra. RMS drift: loudness of the continuation "
             "over the prompt's last second.", "", *summary_table(results), "", "## What was measured", "", *used]
    for name, per_clip in results.items():
        lines += ["", f"## {name}: goals", "", *goals(per_clip), "", f"## {name}: each clip", "", *per_clip_table(per_clip)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(summary_table(results)))
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
