"""What this machine is and which precision runs fastest on it, measured, never assumed.

The CPU differs from one machine to the next (AVX2 only: bf16 matmuls near 1 GFLOP/s;
AVX512-BF16 or AMX: bf16 several times fp32), so the choice is timed at start.
"""

from __future__ import annotations

import copy
import functools
import os
import platform
import time
from pathlib import Path

import torch

from .sampling import Sampling

ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def machine_description(device=torch.device("cpu")) -> str:
    """The hardware in words, for model cards and benchmark tables."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    return (f"{names[0] if names else platform.machine()} CPU ({os.cpu_count()} cores, ISA "
            f"{isa(device)}), {torch.get_num_threads()} torch threads")


def isa(device=torch.device("cpu")) -> str:
    """The instruction sets that decide how the CPU's float arithmetic is done (e.g. "avx2/avx512f"),
    or the GPU's name: two machines with the same string compute the same floats."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "/".join(flag for flag in ISA_FLAGS if f" {flag}" in cpuinfo) or f"{platform.machine()} baseline"


def matmul_gflops(dtype, n=1024, seconds=0.5) -> float:
    """The best rate of an n x n matmul over repeats that fill about `seconds`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def bf16_hopeless(device) -> bool:
    """True where bf16 matmuls run at under a quarter of fp32 (AVX2-only CPUs): timing a
    bf16 training step there would take minutes, and it could not win."""
    if device.type != "cpu":
        return False
    return matmul_gflops(torch.bfloat16, n=256, seconds=0.1) < matmul_gflops(torch.float32, n=256, seconds=0.1) / 4


@functools.cache
def bf16_faster(device=torch.device("cpu")) -> bool:
    """True where a bf16 matmul of scoring's size (a few thousand rows) beats fp32: on CUDA,
    and on CPUs with AVX512-BF16 or AMX. Measured once per process."""
    if device.type != "cpu":
        return True
    return matmul_gflops(torch.bfloat16, n=512, seconds=0.1) > matmul_gflops(torch.float32, n=512, seconds=0.1)


@torch.no_grad()
def decoding_dtype(model, batch: int, fused: bool = False, patches: int = 3) -> torch.dtype:
    """torch.float32 or torch.bfloat16, whichever decodes `model` faster at `batch` samples:
    times its hot step (`prefill`, then `patch_step`) in each, a few tens of ms. Decoding
    multiplies one to eight rows at a time, where a bf16 matmul can lose to fp32 on its
    overhead even on CPUs whose bf16 peak is twice fp32's, so the matmul peak cannot say.
    `fused`: timed on the fused C++ step (model.fused_step), which the caller has built."""
    device = next(model.parameters()).device
    if device.type != "cpu":
        return torch.bfloat16
    if bf16_hopeless(device):
        return torch.float32

    def seconds(dtype) -> float:
        candidate = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
        p = candidate.patch_size
        logits, state = candidate.prefill(torch.zeros(batch, p, dtype=torch.long, device=device), fused)
        knobs = Sampling().knobs(device)
        uniform = torch.rand(batch, p, device=device)
        best = float("inf")
        for _ in range(patches + 1):  # the first one warms up
            start = time.perf_counter()
            _, logits, state = candidate.patch_step(logits, state, uniform, knobs, fused, fused_sampling=fused)
            best = min(best, time.perf_counter() - start)
        return best

    return torch.bfloat16 if seconds(torch.bfloat16) < seconds(torch.float32) else torch.float32


def training_rate(model, x: torch.Tensor, bf16: bool, loss_fn, steps: int = 3) -> float:
    """Bytes/s of forward + backward on the batch x (one untimed warm-up step); leaves no gradients."""
    def step():
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x), x)
        loss.backward()

    step()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)
    return x.numel() * steps / (time.perf_counter() - start)


def choose_precision(requested: str, model, x: torch.Tensor, loss_fn) -> tuple[str, dict]:
    """(precision, {precision: bytes/s measured}): "fp32"/"bf16" as asked; for "auto", bf16
    on CUDA, and on a CPU whichever trains this model on batches like x faster."""
    rate = training_rate
    if requested != "auto":
        return requested, {}
    if x.device.type == "cuda":
        return "bf16", {}
    rates = {"fp32": rate(model, x, False, loss_fn)}
    if not bf16_hopeless(x.device):
        rates["bf16"] = rate(model, x, True, loss_fn)
    return max(rates, key=rates.get), rates
