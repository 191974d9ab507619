"""Speed and memory of the model core: `python -m bench.speed` writes bench/results/speed.md.

Measures, in one run on this machine: the matmul ceiling (fp32, bf16); training bytes/s
and model FLOPs utilisation for MegaByte and the flat baseline (fp32/bf16, eager/compiled);
generation bytes/s at batch 1 and 8 (MegaByte cached, eager and compiled, flat cached,
MegaByte recomputing the whole sequence for every byte, what MegaByte's Linear calls
alone reach, and the ceiling that memory bandwidth and the matmul peak set); scoring 1 MB
and 2 MB (seconds, peak memory).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import torch
from torch import nn

from model import (FlatConfig, MegaByteConfig, Sampling, build_model, compile_decoding,
                   generate, next_byte_loss)
from model.hardware import machine_description

MEGABYTE = MegaByteConfig(patch_size=8, byte_dim=32, global_layers=4, global_heads=4,
                          local_dim=128, local_layers=2, local_heads=4, max_bytes=2048)
FLAT = FlatConfig(dim=256, layers=5, heads=4, max_bytes=2048)


def matmul_gflops(dtype, n=1024, repeats=5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


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


def generation_speed(model, samples: int, new_bytes: int) -> float:
    generate(model, b"warm-up", 32, samples)
    start = time.perf_counter()
    generate(model, b"The prompt. ", new_bytes, samples, Sampling(top_k=50))
    return samples * new_bytes / (time.perf_counter() - start)


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
    start = time.perf_counter()
    for _ in range(repeats):
        data.sum()
    return n_bytes * repeats / (time.perf_counter() - start)


def weights_used_per_patch(model) -> int:
    """Weights that decoding one patch multiplies by: the global ones once, the local ones
    and the head once per byte."""
    per_patch, per_byte = decoding_linears(model)
    return sum(m.weight.numel() for m in per_patch) + model.patch_size * sum(m.weight.numel() for m in per_byte)


def decoding_ceiling(model, samples: int, bandwidth: float, peak_flops: float) -> float:
    """Bytes/s that the hardware allows MegaByte's decoding, as a roofline: per patch, the
    global weights are read once and the local ones once per byte (memory), and every
    weight use costs 2 FLOPs per sample (compute). Attention and sampling are left out,
    so no implementation on this machine can beat it."""
    weights = weights_used_per_patch(model)
    seconds = max(4 * weights / bandwidth, 2 * samples * weights / peak_flops)
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
from model import build_model, config_from_dict, score
torch.manual_seed(0)
model = build_model(config_from_dict(json.loads(sys.argv[1]))).eval()
data = open(sys.argv[2], "rb").read()[: int(sys.argv[3])]
start = time.perf_counter()
score(model, data)
seconds = time.perf_counter() - start
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec
peak_kb = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
print(json.dumps({"seconds": seconds, "peak_mb": peak_kb / 1024}))
"""


def scoring_cost(config, path: Path, n_bytes: int) -> dict:
    """Seconds and peak resident memory of scoring n_bytes, in a fresh process."""
    out = subprocess.run([sys.executable, "-c", SCORE_CHILD, json.dumps(config.to_dict()), str(path), str(n_bytes)],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/speed.md")
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script itself")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    args = parser.parse_args(argv)
    quick = args.quick
    lines = [f"# Speed and memory\n\nMachine: {machine_description(torch.device('cpu'))}  \nDate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  \n"
             f"Command: `python -m bench.speed{' --quick' if quick else ''}`\n"]

    peaks = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16, n=256, repeats=2)}
    lines += ["## Matmul ceiling\n", "| dtype | GFLOP/s |", "|---|---|"]
    lines += [f"| {k} | {v:,.1f} |" for k, v in peaks.items()]
    print(lines[-2:], flush=True)

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
                speed = training_speed(config, precision == "bf16", compiled, batch, seq_len, 1 if quick else 3)
                mfu = speed * flops_per_byte(config, seq_len) / (peaks[precision] * 1e9)
                lines.append(f"| {config.kind} | {params / 1e6:.1f}M | {precision} | {compiled} | {speed:,.0f} | {mfu:.0%} |")
                print(lines[-1], flush=True)

    new_bytes = 64 if quick else 512
    lines += ["\n## Generation (fp32, top-k 50)\n", f"{new_bytes} new bytes per sample; bytes/s counts all samples.\n",
              "| method | batch 1 | batch 8 |", "|---|---|---|"]
    torch.manual_seed(0)
    megabyte, flat = build_model(MEGABYTE).eval(), build_model(FLAT).eval()
    rows = [("MegaByte, KV caches in both models", lambda s: generation_speed(megabyte, s, new_bytes)),
            ("flat transformer, KV cache", lambda s: generation_speed(flat, s, new_bytes)),
            ("MegaByte, whole sequence recomputed every byte", lambda s: recompute_speed(megabyte, s, new_bytes // 4))]
    if not args.no_compile:
        compiled = compile_decoding(build_model(MEGABYTE).eval())
        rows.insert(1, ("MegaByte, KV caches, compiled patch step", lambda s: generation_speed(compiled, s, new_bytes)))
    weight_bytes = 4 * sum(p.numel() for p in megabyte.parameters())
    bandwidth = streaming_bandwidth(weight_bytes)
    rows += [("MegaByte's Linear calls alone (eager), nothing else", lambda s: linear_calls_speed(megabyte, s)),
             (f"ceiling: weight reads at {bandwidth / 1e9:.0f} GB/s or FLOPs at the fp32 peak",
              lambda s: decoding_ceiling(megabyte, s, bandwidth, peaks["fp32"] * 1e9))]
    for name, measure in rows:
        lines.append(f"| {name} | {measure(1):,.0f} | {measure(8):,.0f} |")
        print(lines[-1], flush=True)

    sizes = (50_000, 100_000) if quick else (1_000_000, 2_000_000)
    data = real_bytes(sizes[-1], Path("/tmp/megabyte_bench_bytes.bin"))
    lines += ["\n## Scoring (fp32, windows of the 2048-byte context, stride 1024), real Python source\n",
              "| bytes | seconds | peak memory (MB) | bytes/s |", "|---|---|---|---|"]
    for n in sizes:
        cost = scoring_cost(MEGABYTE, data, n)
        lines.append(f"| {n:,} | {cost['seconds']:.1f} | {cost['peak_mb']:.0f} | {n / cost['seconds']:,.0f} |")
        print(lines[-1], flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
