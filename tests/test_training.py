import json
import os
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import model.hardware
from model import ConfigError, load_checkpoint
from model.checkpoint import CheckpointError
from training.config import load_run_config
from training.train import train, with_input_noise

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
[model]
kind = "megabyte"
patch_size = 4
byte_dim = 16
global_layers = 2
global_heads = 2
local_dim = 32
local_layers = 1
local_heads = 2
max_bytes = 256

[data]
dir = "{data}"

[train]
out = "{out}"
seq_len = 256
batch_size = 4
max_steps = 30
warmup_steps = 5
eval_every = 15
eval_windows = 8
log_every = 1
checkpoint_steps = 10
precision = "fp32"

[layout]
modality = "text"
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Real bytes: Python source from the interpreter's standard library."""
    folder = tmp_path_factory.mktemp("data")
    stdlib = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    text = b"".join(p.read_bytes() for p in stdlib[:30])
    (folder / "train.bin").write_bytes(text[:200_000])
    (folder / "val.bin").write_bytes(text[200_000:230_000])
    return folder


def write_config(tmp_path, data_dir, name, **replace):
    text = CONFIG.format(data=data_dir, out=tmp_path / name)
    for key, value in replace.items():
        text = text.replace(key, value)
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def run(args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss_bpb"]) for r in rows if "loss_bpb" in r]


@pytest.mark.slow
def test_a_killed_run_resumes_with_the_same_losses(tmp_path, data_dir, wait_until):
    whole = write_config(tmp_path, data_dir, "whole")
    assert run(["-m", "training.train", "--config", str(whole)]).wait() == 0

    broken = write_config(tmp_path, data_dir, "broken")
    process = run(["-m", "training.train", "--config", str(broken)])
    trainer = tmp_path / "broken" / "checkpoint" / "trainer.json"
    try:  # killed once it has a checkpoint and has logged half its steps (or has ended)
        wait_until(lambda: trainer.exists() or process.poll() is not None, "the run's first checkpoint", 300)
        wait_until(lambda: process.poll() is not None or len(losses(tmp_path / "broken")) >= 15, "15 steps", 300)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    stopped_at = json.loads(trainer.read_text())["step"]
    assert stopped_at < 30
    load_checkpoint(tmp_path / "broken" / "checkpoint")  # what is on disk is whole
    assert not [p for p in (tmp_path / "broken").iterdir() if p.name.startswith(".")]

    assert run(["-m", "training.train", "--config", str(broken), "--resume"]).wait() == 0
    assert losses(tmp_path / "broken") == losses(tmp_path / "whole")


@pytest.mark.slow
def test_two_process_ddp_follows_the_single_process_curve(tmp_path, data_dir):
    single = write_config(tmp_path, data_dir, "single")
    assert run(["-m", "training.train", "--config", str(single)]).wait() == 0
    double = write_config(tmp_path, data_dir, "ddp")
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"]
    process = run([*torchrun, "-m", "training.train", "--config", str(double)])
    assert process.wait() == 0, process.stderr.read().decode()[-2000:]
    a, b = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert [s for s, _ in a] == [s for s, _ in b]
    # a different reduction order: the curves agree to within 0.01 bits
    assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) < 0.01
    assert a[-1][1] < a[0][1] - 1.0  # and both actually learned


@pytest.mark.parametrize("replace, words", [
    ({"max_steps = 30": "max_steps = \"many\""}, "must be of type int"),
    ({"seq_len = 256": "seq_len = 250"}, "not a multiple of patch_size"),
    ({"[train]": "[trian]"}, "unknown section"),
    ({"batch_size": "batch_sise"}, "unknown setting 'batch_sise'"),
    ({"global_heads = 2": "global_heads = 3"}, "does not divide"),
    ({"kind = ": "kind = \"rnn\"\n#"}, "unknown model kind"),
    ({"[model]": "[model"}, "not valid TOML"),
    ({"precision = ": "input_noise = 1.5\nprecision = "}, "input_noise must be"),
])
def test_a_malformed_config_gives_one_sentence(tmp_path, data_dir, replace, words):
    path = write_config(tmp_path, data_dir, "bad", **replace)
    with pytest.raises(ConfigError, match=words) as info:
        load_run_config(path)
    assert "\n" not in str(info.value)


def test_the_command_line_reports_a_bad_config_without_a_traceback(tmp_path, data_dir):
    path = write_config(tmp_path, data_dir, "bad", **{"seq_len = 256": "seq_len = 250"})
    process = run(["-m", "training.train", "--config", str(path)])
    assert process.wait() != 0
    err = process.stderr.read().decode()
    assert "Traceback" not in err and "not a multiple of patch_size" in err


def test_shipped_configs_are_valid():
    for path in sorted((ROOT / "configs").glob("*.toml")):
        load_run_config(path)


@pytest.mark.parametrize("faster", ["fp32", "bf16"])
def test_auto_precision_trains_in_the_faster_and_says_so(tmp_path, data_dir, monkeypatch, capsys, faster):
    timed = {"fp32": 100.0, "bf16": 50.0} if faster == "fp32" else {"fp32": 100.0, "bf16": 300.0}
    monkeypatch.setattr(model.hardware, "training_rate",
                        lambda model, x, bf16, loss_fn: timed["bf16" if bf16 else "fp32"])
    monkeypatch.setattr(model.hardware, "bf16_hopeless", lambda device: False)
    path = write_config(tmp_path, data_dir, "auto", **{'precision = "fp32"': 'precision = "auto"',
                                                        "max_steps = 30": "max_steps = 6"})
    trainer = train(load_run_config(path), resume=False, argv=["test"])
    assert trainer["precision"] == faster and trainer["precision_rates"] == timed
    first = json.loads((tmp_path / "auto" / "log.jsonl").read_text().splitlines()[0])
    assert first == {"step": 0, "precision": faster, "measured_bytes_per_s": timed}
    assert f"training in {faster}" in capsys.readouterr().out
    card = (tmp_path / "auto" / "checkpoint" / "card.md").read_text()
    assert f"in {faster} (chosen at start by timing training steps: fp32 100 bytes/s" in card


def test_a_forced_precision_is_not_timed(tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr(model.hardware, "training_rate", lambda *a: pytest.fail("timed a forced precision"))
    path = write_config(tmp_path, data_dir, "forced", **{"max_steps = 30": "max_steps = 6"})
    assert train(load_run_config(path), resume=False, argv=["test"])["precision"] == "fp32"


def test_init_starts_from_shipped_weights_with_a_fresh_optimizer(tmp_path, data_dir):
    first = write_config(tmp_path, data_dir, "first")
    train(load_run_config(first), resume=False, argv=["test"])
    scratch = write_config(tmp_path, data_dir, "scratch", **{"max_steps = 30": "max_steps = 6"})
    train(load_run_config(scratch), resume=False, argv=["test"])
    warm = write_config(tmp_path, data_dir, "warm", **{"max_steps = 30": "max_steps = 6"})
    trainer = train(load_run_config(warm), resume=True, argv=["test"], init=str(tmp_path / "first" / "checkpoint"))
    assert trainer["step"] == 6 and trainer["init"].endswith("checkpoint")
    # the warm start begins where the first run ended, far below a start from scratch
    assert losses(tmp_path / "warm")[0][1] < losses(tmp_path / "scratch")[0][1] - 1.0
    assert abs(losses(tmp_path / "warm")[0][1] - losses(tmp_path / "first")[-1][1]) < 0.5
    assert "Started from the weights of" in (tmp_path / "warm" / "checkpoint" / "card.md").read_text()

    # another shape keeps what fits: rotary positions leave only the position table fresh
    rotary = write_config(tmp_path, data_dir, "rotary", **{"max_steps = 30": "max_steps = 6",
                                                           "[model]": '[model]\npositions = "rotary"'})
    train(load_run_config(rotary), resume=False, argv=["test"], init=str(tmp_path / "first" / "checkpoint"))
    card = (tmp_path / "rotary" / "checkpoint" / "card.md").read_text()
    assert "1 tensors of other shapes started fresh (position_embed.weight)" in card
    model_section = CONFIG[CONFIG.index("[model]"):CONFIG.index("[data]")]
    flat = write_config(tmp_path, data_dir, "flat", **{model_section: '[model]\nkind = "flat"\ndim = 24\nlayers = 1\nheads = 2\nmax_bytes = 256\n\n'})
    with pytest.raises(CheckpointError, match="do not fit this config's model"):
        train(load_run_config(flat), resume=False, argv=["test"], init=str(tmp_path / "first" / "checkpoint"))


def test_a_run_resumes_in_another_precision(tmp_path, data_dir):
    bf16 = write_config(tmp_path, data_dir, "mixed", **{'precision = "fp32"': 'precision = "bf16"',
                                                         "max_steps = 30": "max_steps = 10"})
    assert train(load_run_config(bf16), resume=False, argv=["test"])["precision"] == "bf16"
    fp32 = write_config(tmp_path, data_dir, "mixed", **{"max_steps = 30": "max_steps = 20"})
    trainer = train(load_run_config(fp32), resume=True, argv=["test"])
    assert trainer["step"] == 20 and trainer["precision"] == "fp32"
    steps = [step for step, _ in losses(tmp_path / "mixed")]
    assert steps == list(range(1, 21))  # one log, no step lost or repeated


def test_input_noise_replaces_a_share_of_bytes_the_same_way_each_time():
    x = torch.full((8, 4096), 7)
    noisy = with_input_noise(x, 0.03, seed=0, step=5)
    changed = (noisy != x).float().mean().item()
    assert 0.02 < changed < 0.04  # 3% asked; a replaced byte is 7 again 1 time in 256
    assert torch.equal(noisy, with_input_noise(x, 0.03, seed=0, step=5))  # a resumed run sees the same
    assert not torch.equal(noisy, with_input_noise(x, 0.03, seed=0, step=6))
    assert with_input_noise(x, 0.0, seed=0, step=5) is x


def test_a_run_with_input_noise_still_learns(tmp_path, data_dir):
    path = write_config(tmp_path, data_dir, "noisy", **{"precision = ": "input_noise = 0.05\nprecision = "})
    cfg = load_run_config(path)
    train(cfg, resume=False, argv=[])
    rows = losses(tmp_path / "noisy")
    assert rows[-1][1] < rows[0][1] - 1.0


def test_minutes_stop_a_run_evaluated_and_resumable(tmp_path, data_dir):
    path = write_config(tmp_path, data_dir, "timed")
    trainer = train(load_run_config(path), resume=False, argv=["test"], minutes=1e-9)
    assert trainer["step"] == 1 and "val_bpb" in trainer
    saved = json.loads((tmp_path / "timed" / "checkpoint" / "trainer.json").read_text())
    assert saved["step"] == 1
    assert train(load_run_config(path), resume=True, argv=["test"])["step"] == 30
