"""Speed and memory of the model core: `python -m bench.speed` writes bench/results/speed.md.

Measures, in one run on this machine: the matmul ceiling (fp32, bf16, the best over sizes
that reach it); training bytes/s and model FLOPs utilisation for MegaByte and the flat
baseline (fp32/bf16, eager/compiled); generation bytes/s at batch 1 and 8 (MegaByte cached,
eager, compiled, and as the app decodes: model.stream_bytes; flat cached; MegaByte recomputing
the whole sequence for every byte; what MegaByte's Linear calls alone reach; the ceiling that
memory bandwidth and the matmul peak set); scoring 1 MB (seconds, peak memory), today's fp32
path beside the fast one; compressing 16 KB and 1 MB to a .mbz against scoring the same bytes,
and decompressing 1 MB against compressing it. `--json` prints the headline figures as one
JSON object on the last line. The run prints how long each section took: about 15 minutes in
all on an idle 2-core machine, and `--quick` (small sizes, nothing compiled) under 3.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import torch
from torch import nn

import model.compress as mbz
from model import (Decoder, FlatConfig, GenerationStatus, MegaByteConfig, Sampling, build_model, fused_step, generate,
                   next_byte_loss, score, stream_bytes)
from model.hardware import bf16_faster, decoding_dtype, machine_description, matmul_gflops

MEGABYTE = MegaByteConfig(patch_size=8, byte_dim=32, global_layers=4, global_heads=4,
                          local_dim=128, local_layers=2, local_heads=4, max_bytes=2048)
FLAT = FlatConfig(dim=256, layers=5, heads=4, max_bytes=2048)
# The long-context checkpoints' shapes (configs/text_long.toml, configs/melody_long.toml)
LONG_TEXT = dataclasses.replace(MEGABYTE, max_bytes=65536, positions="rotary")
LONG_MELODY = dataclasses.replace(MEGABYTE, max_bytes=131072, positions="rotary")


MATMUL_SIZES = (256, 512, 1024, 2048)


def matmul_ceiling(dtype, sizes=MATMUL_SIZES, seconds=0.5) -> float:
    """GFLOP/s: the best n x n matmul rate over sizes large enough to reach the peak
    (bf16 units reach theirs only at n >= 1024 on some CPUs)."""
    return max(matmul_gflops(dtype, n, seconds) for n in sizes)


def flops_per_byte(config, seq_len: int) -> float:
    """Training FLOPs per byte: 6 per weight use (forward and backward) plus causal attention."""
    if config.kind == "megabyte":
        p, dg, dl = config.patch_size, config.global_dim, config.local_dim
        global_weights = config.global_layers * 12 * dg * dg
        local_weights = config.local_layers * 12 * dl * dl + dl * 256 + config.byte_dim * dl
        attention = (config.global_layers * 2 * dg * seq_len / p) / p + config.local_layers * 2 * dl * p
        return 6 * (global_weights / p + local_weights) + 3 * attention
    d = config.dim
    return 6 * (config.layers * 12 * d * d + d * 256) + 3 * config.layers * 2 * d * seq_len


def training_speed(config, bf16: bool, compiled: bool, batch=8, seq_len=2048, steps=3) -> float:
    torch.manual_seed(0)
    model = build_model(config)
    step_model = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (batch, seq_len))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = next_byte_loss(step_model(x), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up (and compilation)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * seq_len * steps / (time.perf_counter() - start)


def best_of(repeats: int, measure) -> float:
    """The best of a few runs: the machine is shared, and other work only ever slows a run."""
    return max(measure() for _ in range(repeats))


def generation_speed(model, samples: int, new_bytes: int, patch_step=None, fused: bool = False,
                     repeats: int = 3) -> float:
    generate(model, b"warm-up", 32, samples, patch_step=patch_step, fused=fused)

    def once():
        start = time.perf_counter()
        generate(model, b"The prompt. ", new_bytes, samples, Sampling(top_k=50), patch_step=patch_step, fused=fused)
        return samples * new_bytes / (time.perf_counter() - start)

    return best_of(repeats, once)


def app_generation_speed(decoder: Decoder, samples: int, new_bytes: int, repeats: int = 3) -> float:
    """What a web request gets once the app's background compile is done: model.stream_bytes
    on the app's decoder, padded to its batch bucket, on the step the decoder compiled."""
    def once():
        status = GenerationStatus()
        for _ in stream_bytes(decoder, b"The prompt. ", new_bytes, samples, Sampling(top_k=50), status=status):
            pass
        assert status.path.startswith("compiled")
        return status.bytes_per_second

    return best_of(repeats, once)


def decoding_linears(model) -> tuple[list[nn.Linear], list[nn.Linear]]:
    """MegaByte's Linear layers used once per patch (global) and once per byte (local, head)."""
    def linears(module):
        return [m for m in module.modules() if isinstance(m, nn.Linear)]

    return linears(model.global_model) + [model.global_to_local], linears(model.local_model) + [model.head]


@torch.no_grad()
def linear_calls_speed(model, samples: int, repeats: int = 50) -> float:
    """Bytes/s if MegaByte decoding did nothing but call its Linear layers, eagerly: each
    global one once per patch, each local one and the head once per byte."""
    per_patch, per_byte = decoding_linears(model)
    calls = per_patch + per_byte * model.patch_size
    inputs = [torch.randn(samples, m.in_features) for m in calls]

    def one_patch():
        for linear, x in zip(calls, inputs):
            linear(x)

    one_patch()
    start = time.perf_counter()
    for _ in range(repeats):
        one_patch()
    return samples * model.patch_size * repeats / (time.perf_counter() - start)


def streaming_bandwidth(n_bytes: int, repeats: int = 20) -> float:
    """Bytes/s at which this machine reads n_bytes over and over (a sum over them); with
    n_bytes the size of the weights, they sit in the same cache level as in decoding."""
    data = torch.ones(n_bytes // 4)
    data.sum()
    best = float("inf")
    for _ in range(repeats):  # the fastest read: on a shared machine, others only slow a read down
        start = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - start)
    return n_bytes / best


def weights_used_per_patch(model) -> int:
    """Weights that decoding one patch multiplies by: the global ones once, the local ones
    and the head once per byte."""
    per_patch, per_byte = decoding_linears(model)
    return sum(m.weight.numel() for m in per_patch) + model.patch_size * sum(m.weight.numel() for m in per_byte)


def decoding_ceiling(model, samples: int, bandwidth: float, peak_flops: float, bytes_per_weight: int = 4) -> float:
    """Bytes/s that the hardware allows MegaByte's decoding, as a roofline: per patch, the
    global weights are read once and the local ones once per byte (memory, at the dtype
    decoding uses), and every weight use costs 2 FLOPs per sample (compute). Attention and
    sampling are left out, so no implementation on this machine can beat it."""
    weights = weights_used_per_patch(model)
    seconds = max(bytes_per_weight * weights / bandwidth, 2 * samples * weights / peak_flops)
    return samples * model.patch_size / seconds


@torch.no_grad()
def recompute_speed(model, samples: int, new_bytes: int) -> float:
    """Generation as popular open implementations do it: the whole sequence, every byte."""
    sequence = torch.randint(0, 256, (samples, 12))
    start = time.perf_counter()
    for _ in range(new_bytes):
        length = sequence.shape[1]
        padded = torch.nn.functional.pad(sequence, (0, (-(length + 1)) % model.patch_size + 1))
        logits = model(padded)[:, length]
        sequence = torch.cat([sequence, logits.softmax(-1).multinomial(1)], 1)
    return samples * new_bytes / (time.perf_counter() - start)


SCORE_CHILD = """
import json, re, sys, time, torch
from model import build_model, compile_scoring, config_from_dict, score
torch.set_num_threads(int(sys.argv[4]))
torch.manual_seed(0)
model = build_model(config_from_dict(json.loads(sys.argv[1]))).eval()
data = open(sys.argv[2], "rb").read()[: int(sys.argv[3])]
batch, bf16, compiled = int(sys.argv[5]), sys.argv[6] == "bf16", None
start = time.perf_counter()
if sys.argv[7] == "compiled":  # compiled once, as the app does at start-up: its first batches compile it
    compiled = compile_scoring(model, torch.bfloat16 if bf16 else torch.float32)
    # two full batches: the first window predicts from byte 0, later ones from mid-window
    score(model, data[: (2 * batch + 1) * model.context // 2], batch=batch, bf16=bf16, compiled=compiled)
compile_seconds = time.perf_counter() - start
start = time.perf_counter()
score(model, data, batch=batch, bf16=bf16, compiled=compiled)
seconds = time.perf_counter() - start
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec
peak_kb = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
print(json.dumps({"seconds": seconds, "compile_seconds": compile_seconds, "peak_mb": peak_kb / 1024}))
"""


def scoring_cost(config, path: Path, n_bytes: int, batch: int, precision: str, compiled: bool) -> dict:
    """Seconds and peak resident memory of scoring n_bytes, `batch` windows at a time, in a
    fresh process on as many threads as this one; `compiled`: after compiling (timed apart)."""
    command = [sys.executable, "-c", SCORE_CHILD, json.dumps(config.to_dict()), str(path), str(n_bytes),
               str(torch.get_num_threads()), str(batch), precision, "compiled" if compiled else "eager"]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def coding_speed(model, data: bytes) -> dict[str, float]:
    """Seconds to compress `data` to a .mbz and to decompress it (checked to give it back)."""
    start = time.perf_counter()
    blob = mbz.compress(model, data, "", {"modality": "bytes"})
    middle = time.perf_counter()
    decoded, _ = mbz.decompress(model, blob, "")
    end = time.perf_counter()
    assert decoded == data, "decompress did not give the input back"
    return {"compress_seconds": middle - start, "decompress_seconds": end - middle}


def exact_scoring_seconds(model, data: bytes) -> float:
    """Seconds of today's exact scoring path, `score(model, data)`, on this process's threads."""
    start = time.perf_counter()
    score(model, data)
    return time.perf_counter() - start


def full_context_decoding_speed(config, new_bytes: int, repeats: int = 2) -> tuple[float, float, str]:
    """Batch-1 decoding by the app's decoder (Decoder.fastest, compiled) on a model of `config`
    whose context is full: a prompt of all but new_bytes of it. The prompt's prefill is timed
    apart: it is scoring (seconds for 128 KB), not decoding. -> (bytes/s after the first patch,
    seconds to the first patch, the decoder's words)."""
    torch.manual_seed(0)
    decoder = Decoder.fastest(build_model(config).eval())
    decoder.compile((1,))
    prompt = bytes(torch.randint(0, 256, (config.max_bytes - new_bytes - config.patch_size,)).tolist())

    def once():
        start, first, made = time.perf_counter(), None, 0
        for part in stream_bytes(decoder, prompt, new_bytes, 1, Sampling(top_k=50)):
            if first is None:
                first = time.perf_counter()
            else:
                made += part.shape[1]
        return made / (time.perf_counter() - first), first - start

    speed, prefill = max(once() for _ in range(repeats))
    return speed, prefill, decoder.describe()


def real_bytes(n: int, path: Path) -> Path:
    """n bytes of real Python source from the interpreter's standard library."""
    chunks, total = [], 0
    for source in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        chunks.append(source.read_bytes())
        total += len(chunks[-1])
        if total >= n:
            break
    path.write_bytes(b"".join(chunks)[:n])
    return path


SCORE_BATCH_BEFORE, SCORE_BATCH = 4, 16  # windows per forward pass: score()'s default, and the fast path's
SMALL_FILE = 16_384  # a small file to compress: its rows are few and short, so the per-call cost shows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/speed.md")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and no torch.compile (compiling alone takes minutes), to check the script itself")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default: %(default)s, as the app decodes)")
    parser.add_argument("--json", action="store_true", help="print the headline figures as one JSON object, last")
    args = parser.parse_args(argv)
    quick = args.quick
    args.no_compile = args.no_compile or quick
    torch.set_num_threads(args.threads)
    machine = machine_description(torch.device("cpu"))
    flags = "".join(f" {flag}" for flag, on in (("--quick", quick), ("--no-compile", args.no_compile)) if on)
    lines = [f"# Speed and memory\n\nMachine: {machine}  \nDate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  \n"
             f"Command: `python -m bench.speed --threads {args.threads}{flags}`\n"]
    summary = {"machine": machine}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    took, clock = {}, [time.perf_counter()]  # seconds per section: the whole run must stay under 15 minutes

    def save(section: str = ""):  # after every section: a long run on a busy machine shows what it has so far
        if section:
            took[section] = time.perf_counter() - clock[0]
            clock[0] = time.perf_counter()
            print(f"({section}: {took[section]:.0f} s)", flush=True)
        out.write_text("\n".join(lines) + "\n")

    peaks = {name: matmul_ceiling(dtype, MATMUL_SIZES[:2] if quick else MATMUL_SIZES, 0.1 if quick else 0.5)
             for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    lines += ["## Matmul ceiling\n", f"The best n × n matmul over n in {MATMUL_SIZES[:2] if quick else MATMUL_SIZES}.\n",
              "| dtype | GFLOP/s |", "|---|---|"]
    lines += [f"| {k} | {v:,.1f} |" for k, v in peaks.items()]
    print(lines[-2:], flush=True)
    save("matmul ceiling")

    seq_len, batch = (256, 2) if quick else (2048, 8)
    lines += ["\n## Training (forward + backward + AdamW), random bytes\n",
              f"Batch {batch} × {seq_len} bytes. MFU = model FLOPs per second / the matmul ceiling above.\n",
              "| model | params | precision | compiled | bytes/s | MFU |", "|---|---|---|---|---|---|"]
    for config in (MEGABYTE, FLAT):
        params = sum(p.numel() for p in build_model(config).parameters())
        for precision in ("fp32", "bf16"):
            for compiled in (False, True):
                if compiled and args.no_compile:
                    continue
                if precision == "bf16" and peaks["bf16"] < peaks["fp32"] / 4:
                    lines.append(f"| {config.kind} | {params / 1e6:.1f}M | bf16 | {compiled} | skipped: bf16 matmuls "
                                 f"run at {peaks['bf16']:.1f} GFLOP/s on this CPU | |")
                    continue
                # a flat step at this size takes ~10 s, long enough to time once
                steps = 1 if quick or config is FLAT else 3
                speed = training_speed(config, precision == "bf16", compiled, batch, seq_len, steps)
                mfu = speed * flops_per_byte(config, seq_len) / (peaks[precision] * 1e9)
                lines.append(f"| {config.kind} | {params / 1e6:.1f}M | {precision} | {compiled} | {speed:,.0f} | {mfu:.0%} |")
                print(lines[-1], flush=True)
                if config is MEGABYTE and speed > summary.get("train_bytes_per_s", 0):
                    summary.update(train_bytes_per_s=round(speed), train_precision=precision, train_compiled=compiled)
    save("training")

    new_bytes = 64 if quick else 512
    torch.manual_seed(0)
    megabyte, flat = build_model(MEGABYTE).eval(), build_model(FLAT).eval()
    fused = fused_step.build()
    dtypes = {s: decoding_dtype(megabyte, s, fused) for s in (1, 8)}  # as Decoder.fastest chooses
    names = {torch.float32: "fp32", torch.bfloat16: "bf16"}
    lines += ["\n## Generation (top-k 50)\n",
              f"{new_bytes} new bytes per sample; bytes/s counts all samples; the best of 3 runs. The compiled step "
              f"and the app decode in the dtype that `model.hardware.decoding_dtype` measures to be faster: "
              f"{names[dtypes[1]]} at batch 1, {names[dtypes[8]]} at batch 8. The rest run in fp32.\n",
              "| method | batch 1 | batch 8 |", "|---|---|---|"]
    rows = [("eager_torch", "MegaByte, KV caches in both models, torch's layers",
             lambda s: generation_speed(megabyte, s, new_bytes)),
            ("eager", f"MegaByte, KV caches, fused C++ step per position{'' if fused else ' (did not build)'}",
             lambda s: generation_speed(megabyte, s, new_bytes, fused=fused))]
    if not args.no_compile:
        decoders = {s: Decoder(megabyte, dtypes[s], fused) for s in dtypes}  # what the app's compile makes
        torch_decoders = {s: Decoder(megabyte, dtypes[s], fused=False) for s in dtypes}
        for s in dtypes:
            decoders[s].compile((s,))
            torch_decoders[s].compile((s,))
        rows += [("compiled_torch", "MegaByte, KV caches, compiled patch step, torch's layers (session 6's step)",
                  lambda s: generation_speed(torch_decoders[s].model, s, new_bytes, torch_decoders[s].steps[s])),
                 ("compiled", "MegaByte, KV caches, compiled patch step with the fused C++ step",
                  lambda s: generation_speed(decoders[s].model, s, new_bytes, decoders[s].steps[s], fused)),
                 ("app", "the app's service once compiled (stream_bytes on its Decoder, padded to its batch bucket)",
                  lambda s: app_generation_speed(decoders[s], s, new_bytes))]
    rows += [("flat", "flat transformer, KV cache, fused C++ step",
              lambda s: generation_speed(flat, s, new_bytes, fused=fused)),
             ("recompute", "MegaByte, whole sequence recomputed every byte",
              lambda s: recompute_speed(megabyte, s, new_bytes // 4)),
             ("linears", "MegaByte's Linear calls alone (eager, fp32), nothing else",
              lambda s: linear_calls_speed(megabyte, s))]
    bandwidths = {dtype: streaming_bandwidth(dtype.itemsize * sum(p.numel() for p in megabyte.parameters()))
                  for dtype in set(dtypes.values())}
    rows.append(("ceiling", "ceiling: weight reads at the bandwidth of their size (" +
                 ", ".join(f"{names[d]} {b / 1e9:.0f} GB/s" for d, b in bandwidths.items()) +
                 ") or FLOPs at the matmul peak, in the dtype of the compiled row",
                 lambda s: decoding_ceiling(megabyte, s, bandwidths[dtypes[s]], peaks[names[dtypes[s]]] * 1e9,
                                            dtypes[s].itemsize)))
    for key, name, measure in rows:
        speeds = [measure(1), measure(8)]
        summary.update({f"{key}_batch1": round(speeds[0]), f"{key}_batch8": round(speeds[1])})
        lines.append(f"| {name} | {speeds[0]:,.0f} | {speeds[1]:,.0f} |")
        print(lines[-1], flush=True)
        save()
    if not args.no_compile:
        lines.append(f"\nCompiled step against the ceiling: {summary['compiled_batch1'] / summary['ceiling_batch1']:.0%} "
                     f"at batch 1, {summary['compiled_batch8'] / summary['ceiling_batch8']:.0%} at batch 8.")
    save("generation")

    size = 50_000 if quick else 1_000_000  # scoring is linear in the length: one size tells it
    data = real_bytes(size, Path("/tmp/megabyte_bench_bytes.bin"))
    fast_precision = "bf16" if bf16_faster() else "fp32"
    compiled = not args.no_compile
    fast = (f"`score(..., batch={SCORE_BATCH}, bf16=bf16_faster(), compiled=compile_scoring(model, dtype))`: "
            f"{fast_precision} weights{', compiled' if compiled else ''} (the compile, timed apart, is done once "
            "per process, as the app does it at start-up)")
    lines += ["\n## Scoring (windows of the 2048-byte context, stride 1024), real Python source\n",
              f"Today's path, `score(model, data)`: fp32, {SCORE_BATCH_BEFORE} windows a pass (exact, as lossless "
              f"compression needs it). The fast path, as the explorer scores: {fast}.\n",
              "| path | bytes | seconds | compile seconds | peak memory (MB) | bytes/s |", "|---|---|---|---|---|---|"]
    costs = {}
    for label, batch_windows, precision, compile_it in (("before", SCORE_BATCH_BEFORE, "fp32", False),
                                                        ("fast", SCORE_BATCH, fast_precision, compiled)):
        cost = costs[label] = scoring_cost(MEGABYTE, data, size, batch_windows, precision, compile_it)
        lines.append(f"| {label}, {precision}, {batch_windows} windows{', compiled' if compile_it else ''} | "
                     f"{size:,} | {cost['seconds']:.1f} | {cost['compile_seconds']:.1f} | {cost['peak_mb']:.0f} | "
                     f"{size / cost['seconds']:,.0f} |")
        print(lines[-1], flush=True)
        summary["score_1mb_seconds" if label == "fast" else "score_1mb_seconds_before"] = round(cost["seconds"], 2)
    lines.append(f"\nThe fast path scores 1 MB {summary['score_1mb_seconds_before'] / summary['score_1mb_seconds']:.2f}× "
                 "as fast as today's.")
    summary["score_precision"] = fast_precision
    save("scoring")

    lines += ["\n## Long context (random weights of the long checkpoints' shapes: rotary positions)\n",
              f"Scoring {size:,} bytes on the fast path, the 2,048-byte context (16 windows a pass, the fast row above) beside "
              "65,536 bytes (`configs/text_long.toml`'s shape, one window a pass); then batch-1 decoding with the "
              "context full (`configs/melody_long.toml`'s shape, 131,072 bytes): the app's Decoder, compiled.\n",
              "| what | seconds | peak memory (MB) | bytes/s |", "|---|---|---|---|"]
    for label, config, cost in (("2,048-byte context", MEGABYTE, costs["fast"]),
                                ("65,536-byte context", LONG_TEXT, scoring_cost(LONG_TEXT, data, size, 1, fast_precision, compiled))):
        summary[f"score_{config.max_bytes}_seconds"] = round(cost["seconds"], 2)
        lines.append(f"| scoring, {label} | {cost['seconds']:.1f} | {cost['peak_mb']:.0f} | {size / cost['seconds']:,.0f} |")
        print(lines[-1], flush=True)
    if not args.no_compile:
        speed, prefill, how = full_context_decoding_speed(LONG_MELODY, 512 if quick else 4096)
        summary["decode_full_context_batch1"] = round(speed)
        lines.append(f"| prefill of the {LONG_MELODY.max_bytes - (512 if quick else 4096) - 8:,}-byte prompt, then "
                     f"decoding with the context full, batch 1 ({how}) | {prefill:.1f} | | {speed:,.0f} |")
    ratio = summary["score_65536_seconds"] / summary["score_2048_seconds"]
    lines.append(f"\nScoring with the 65,536-byte context takes {ratio:.2f}× the 2,048-byte path's time (target ≤ 1.5×)."
                 + (f" Decoding with the context full: {summary['decode_full_context_batch1']:,} bytes/s at batch 1 "
                    "(real time for 8 kHz audio is 8,000)." if not args.no_compile else ""))
    save("long context")

    small = data.read_bytes()[:SMALL_FILE]
    exact_scoring_seconds(megabyte, small)  # warm-up
    small_scored, small_coded = exact_scoring_seconds(megabyte, small), coding_speed(megabyte, small)
    coded = coding_speed(megabyte, data.read_bytes())
    summary.update(compress_bytes_per_s=round(size / coded["compress_seconds"]),
                   decompress_bytes_per_s=round(size / coded["decompress_seconds"]),
                   compress_16kb_vs_score=round(small_coded["compress_seconds"] / small_scored, 2),
                   compress_1mb_vs_score=round(coded["compress_seconds"] / summary["score_1mb_seconds_before"], 2),
                   decompress_vs_compress=round(coded["decompress_seconds"] / coded["compress_seconds"], 2))
    lines += ["\n## Lossless compression (`model.compress`: fp32, one thread, as `.mbz` files are made)\n",
              "Compressing against the exact scoring of the same bytes (`score(model, data)`, fp32, "
              f"{args.threads} torch thread(s): the {size:,} bytes of the scoring section, and {SMALL_FILE:,} of them "
              "just before); decompressing against compressing.\n",
              "| | bytes | seconds | bytes/s | against |", "|---|---|---|---|---|"]
    for what, n, seconds, against in (
            ("compress", SMALL_FILE, small_coded["compress_seconds"], f"{summary['compress_16kb_vs_score']:.2f}× scoring"),
            ("compress", size, coded["compress_seconds"], f"{summary['compress_1mb_vs_score']:.2f}× scoring"),
            ("decompress", size, coded["decompress_seconds"], f"{summary['decompress_vs_compress']:.2f}× compressing")):
        lines.append(f"| {what} | {n:,} | {seconds:.1f} | {n / seconds:,.0f} | {against} |")
        print(lines[-1], flush=True)
    save("compression")
    lines.append(f"\nThe run took {sum(took.values()) / 60:.1f} minutes: " +
                 ", ".join(f"{section} {seconds:.0f} s" for section, seconds in took.items()) + ".")
    save()
    print(f"wrote {out}")
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
