"""Trains a byte model from a TOML config: `python -m training.train --config configs/text.toml`.

Runs as one process, or under `torchrun --nproc_per_node=N` with DistributedDataParallel
(gloo on CPU, nccl on CUDA); the global batch is the same either way. Batches depend only
on (seed, step), so `--resume` continues exactly where the last checkpoint stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save
from tqdm import tqdm

from model import ConfigError, build_model, next_byte_loss, save_checkpoint
from model.checkpoint import CheckpointError, load_checkpoint
from model.hardware import choose_precision, machine_description

from .config import RunConfig, load_run_config


def load_split(data_dir, split: str) -> np.ndarray:
    path = Path(data_dir) / f"{split}.bin"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; make it with `python -m training.data`.")
    return np.memmap(path, dtype=np.uint8, mode="r")


def batch_offsets(n_bytes: int, seq_len: int, align: int, batch: int, seed: int, step: int) -> np.ndarray:
    """The start of each window of a step's global batch; a function of (seed, step) alone."""
    slots = (n_bytes - seq_len) // align + 1
    if slots < 1:
        raise ConfigError(f"the data ({n_bytes} bytes) is shorter than one window of {seq_len}.")
    return np.random.default_rng([seed, step]).integers(0, slots, size=batch) * align


def windows(data: np.ndarray, offsets, seq_len: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([data[o : o + seq_len] for o in offsets]).astype(np.int64))


def with_input_noise(x: torch.Tensor, share: float, seed: int, step: int) -> torch.Tensor:
    """x with a share of its bytes replaced by random ones; a function of (seed, step) alone."""
    if not share:
        return x
    rng = np.random.default_rng([seed, step, 1])
    noisy = torch.from_numpy(rng.random(x.shape) < share)
    random_bytes = torch.from_numpy(rng.integers(0, 256, size=x.shape))
    return torch.where(noisy, random_bytes, x.cpu()).to(x.device)


def learning_rate(step: int, t) -> float:
    """Linear warmup, then cosine decay from lr to min_lr at max_steps."""
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * progress))


def make_optimizer(model, t) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.lr, betas=(0.9, 0.95))


def optimizer_tensors(optimizer) -> dict[str, torch.Tensor]:
    """AdamW's state as flat tensors, so it saves as safetensors (no pickle)."""
    out = {}
    for i, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{i}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return out


def restore_optimizer(optimizer, tensors: dict[str, torch.Tensor]):
    state_dict = optimizer.state_dict()
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        i, key = name.split(".", 1)
        state.setdefault(int(i), {})[key] = value
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)


@torch.no_grad()
def evaluate(model, val: np.ndarray, cfg: RunConfig, device, bf16: bool = False) -> float:
    """Validation bits per byte over fixed, evenly spaced windows of the held-out split."""
    t = cfg.train
    slots = (len(val) - t.seq_len) // cfg.data.align + 1
    offsets = np.linspace(0, slots - 1, num=min(t.eval_windows, slots)).astype(np.int64) * cfg.data.align
    model.eval()
    total = 0.0
    for i in range(0, len(offsets), t.batch_size):
        x = windows(val, offsets[i : i + t.batch_size], t.seq_len).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        total += next_byte_loss(logits, x).item() * len(x)
    model.train()
    return total / len(offsets) / math.log(2)


def data_summary(data_dir) -> str:
    """One Markdown line per source of the data manifest: package, licence, files, bytes."""
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        return "(no manifest)\n"
    manifest = json.loads(path.read_text())
    lines = [f"- {s['name']}: {s['package']}, licence {s['licence']}; "
             f"files train/val {s['files']['train']}/{s['files']['val']}, "
             f"bytes train/val {s['bytes']['train']:,}/{s['bytes']['val']:,}."
             for s in manifest.get("sources", [])]
    return "\n".join(lines) + f"\n\nMade by `{manifest.get('command', 'python -m training.data')}`.\n"


def precision_note(trainer: dict) -> str:
    rates = trainer.get("precision_rates") or {}
    if not rates:
        return " (as the config asked)"
    measured = ", ".join(f"{name} {rate:,.0f} bytes/s" for name, rate in rates.items())
    return f" (chosen at start by timing training steps: {measured})"


def fresh_note(trainer: dict) -> str:
    fresh = trainer.get("init_fresh") or []
    return f"; {len(fresh)} tensors of other shapes started fresh ({', '.join(fresh)})" if fresh else ""


def model_card(cfg: RunConfig, trainer: dict, argv: list[str], device) -> str:
    params = trainer.get("parameters", 0)
    init = trainer.get("init")
    return (
        f"# {cfg.layout.get('modality', 'bytes')} model\n\n"
        f"- Model: {cfg.model.kind}, {params / 1e6:.2f}M parameters, config in config.json.\n"
        f"- Trained: {trainer['step']} steps, {trainer['bytes_seen']:,} bytes seen, "
        f"{trainer['seconds'] / 60:.1f} minutes on {machine_description(device)}, "
        f"in {trainer.get('precision', 'fp32')}{precision_note(trainer)}.\n"
        + (f"- Started from the weights of `{init}`, with a fresh optimizer{fresh_note(trainer)}.\n" if init else "")
        + f"- Validation bits per byte (held-out files): {trainer.get('val_bpb', float('nan')):.4f}.\n"
        f"- Command: `{' '.join(argv)}`\n\n"
        f"## Data\n\n{data_summary(cfg.data.dir)}"
    )


def plot_losses(log_path: Path, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines()]
    train = [(r["bytes_seen"], r["loss_bpb"]) for r in rows if "loss_bpb" in r]
    val = [(r["bytes_seen"], r["val_bpb"]) for r in rows if "val_bpb" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train", alpha=0.7)
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("bytes seen")
    ax.set_ylabel("bits per byte")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


class Logger:
    """Appends JSON lines; on resume, drops lines written after the checkpoint."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        lines = path.read_text().splitlines() if path.is_file() and resume_step else []
        kept = [line for line in lines if json.loads(line)["step"] <= resume_step]
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, row: dict):
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def load_weights(model, folder, device) -> list[str]:
    """Copies a checkpoint's weights into the model where name and shape match (a longer
    context, another patch size or other positions keep the rest of what was learned);
    -> the names that start fresh. A checkpoint of another kind of model is refused."""
    loaded, _ = load_checkpoint(folder, device)
    ours, theirs = model.state_dict(), loaded.state_dict()
    fitting = {k: v for k, v in theirs.items() if k in ours and v.shape == ours[k].shape}
    if loaded.config.kind != model.config.kind or not fitting:
        raise CheckpointError(f"the weights in {folder} do not fit this config's model "
                              f"(a {loaded.config.kind} model; this config makes a {model.config.kind} one).")
    model.load_state_dict(fitting, strict=False)
    return sorted(set(ours) - set(fitting))


def train(cfg: RunConfig, resume: bool, argv: list[str], init: str | None = None, minutes: float = 0.0):
    """Trains to the config's max_steps, or for `minutes` of this call (then evaluates and
    checkpoints, so `--resume` goes on: side-by-side trials of equal time)."""
    t = cfg.train
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    if t.batch_size % world:
        raise ConfigError(f"batch_size={t.batch_size} does not split over {world} processes.")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    main = rank == 0
    out = Path(t.out)
    checkpoint_dir = out / "checkpoint"

    train_data = load_split(cfg.data.dir, "train")
    val_data = load_split(cfg.data.dir, "val")
    torch.manual_seed(t.seed)
    model = build_model(cfg.model).to(device)
    optimizer = make_optimizer(model, t)
    trainer = {"step": 0, "bytes_seen": 0, "seconds": 0.0,
               "parameters": sum(p.numel() for p in model.parameters())}
    if resume and (checkpoint_dir / "trainer.json").is_file():
        loaded, _ = load_checkpoint(checkpoint_dir, device)
        model.load_state_dict(loaded.state_dict())
        restore_optimizer(optimizer, load_file(checkpoint_dir / "optimizer.safetensors", device=str(device)))
        trainer = json.loads((checkpoint_dir / "trainer.json").read_text())
    elif init:
        trainer["init_fresh"] = load_weights(model, init, device)
        trainer["init"] = str(init)
    elif resume:
        raise CheckpointError(f"there is no checkpoint to resume in {checkpoint_dir}; "
                              "add --init checkpoints/NAME to start from shipped weights.")
    sample = windows(train_data, batch_offsets(len(train_data), t.seq_len, cfg.data.align, t.batch_size,
                                               t.seed, trainer["step"])[:t.batch_size // world], t.seq_len)
    precision, rates = choose_precision(t.precision, model, sample.to(device), next_byte_loss)
    if distributed:  # every process must train in the same precision: rank 0's choice
        flag = torch.tensor([int(precision == "bf16")], device=device)
        dist.broadcast(flag, 0)
        precision = "bf16" if flag.item() else "fp32"
    bf16 = precision == "bf16"
    trainer["precision"], trainer["precision_rates"] = precision, rates
    step_model = model
    if distributed:
        step_model = torch.nn.parallel.DistributedDataParallel(model)
    if t.compile:
        step_model = torch.compile(step_model)

    if main:
        out.mkdir(parents=True, exist_ok=True)
        logger = Logger(out / "log.jsonl", trainer["step"])
        logger.write({"step": trainer["step"], "precision": precision, "measured_bytes_per_s": rates})
        measured = ", ".join(f"{name} {rate:,.0f} bytes/s" for name, rate in rates.items())
        print(f"training in {precision}" + (f" (measured: {measured})" if rates else " (as the config asks)"),
              flush=True)

    def save_state():
        extra = {"optimizer.safetensors": save(optimizer_tensors(optimizer)),
                 "trainer.json": json.dumps(trainer).encode()}
        save_checkpoint(checkpoint_dir, model, cfg.layout, model_card(cfg, trainer, argv, device), extra=extra)

    local_batch = t.batch_size // world
    last_save = call_started = time.monotonic()
    started = time.monotonic() - trainer["seconds"]
    bar = tqdm(total=t.max_steps, initial=trainer["step"], disable=not main, unit="step")
    model.train()
    while trainer["step"] < t.max_steps:
        step = trainer["step"]
        lr = learning_rate(step, t)
        for group in optimizer.param_groups:
            group["lr"] = lr
        offsets = batch_offsets(len(train_data), t.seq_len, cfg.data.align, t.batch_size, t.seed, step)
        x = windows(train_data, offsets[rank * local_batch : (rank + 1) * local_batch], t.seq_len).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = step_model(with_input_noise(x, t.input_noise, t.seed + rank, step))
        loss = next_byte_loss(logits, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        loss = loss.detach()
        if distributed:  # gloo has no average: sum, then divide
            dist.all_reduce(loss)
            loss /= world
        trainer["step"] = step + 1
        trainer["bytes_seen"] += t.batch_size * t.seq_len
        trainer["seconds"] = time.monotonic() - started
        step += 1
        row = {"step": step, "loss_bpb": loss.item() / math.log(2), "lr": lr,
               "bytes_seen": trainer["bytes_seen"], "seconds": round(trainer["seconds"], 2)}
        out_of_time = minutes and time.monotonic() - call_started > 60 * minutes
        if distributed:  # every process must agree on when to stop
            flag = torch.tensor([int(bool(out_of_time))], device=device)
            dist.broadcast(flag, 0)
            out_of_time = bool(flag.item())
        if step % t.eval_every == 0 or step == t.max_steps or out_of_time:
            if main:
                row["val_bpb"] = trainer["val_bpb"] = evaluate(model, val_data, cfg, device, bf16)
            if distributed:
                dist.barrier()
        due = (t.checkpoint_steps and step % t.checkpoint_steps == 0) or step == t.max_steps or out_of_time
        due = due or time.monotonic() - last_save > 60 * t.checkpoint_minutes
        if distributed:  # every process must agree on when to save
            flag = torch.tensor([int(due)], device=device)
            dist.broadcast(flag, 0)
            due = bool(flag.item())
        if main:
            if step % t.log_every == 0 or "val_bpb" in row:
                logger.write(row)
                bar.set_postfix(bpb=f"{row['loss_bpb']:.3f}", val=f"{trainer.get('val_bpb', float('nan')):.3f}")
            if "val_bpb" in row:
                plot_losses(out / "log.jsonl", out / "loss.png")
            if due:
                save_state()
        if due:
            last_save = time.monotonic()
            if distributed:
                dist.barrier()
        bar.update(1)
        if out_of_time:
            break
    bar.close()
    if distributed:
        dist.destroy_process_group()
    return trainer


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a TOML run config, e.g. configs/text.toml")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    parser.add_argument("--init", metavar="DIR", default=None,
                        help="start from the weights of a checkpoint (e.g. checkpoints/text) with a fresh "
                             "optimizer and the config's warm-up; with --resume, only when there is no "
                             "run checkpoint to resume (a new machine)")
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="stop after this many minutes of training (evaluated and checkpointed, "
                             "so --resume goes on); default: run to max_steps")
    args = parser.parse_args(argv)
    try:
        cfg = load_run_config(args.config)
        train(cfg, args.resume, ["python -m training.train", *argv], init=args.init, minutes=args.minutes)
    except (ConfigError, CheckpointError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
