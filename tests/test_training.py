import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from model import ConfigError, load_checkpoint
from training.config import load_run_config

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
    return [(r["step"], r["loss_bpb"]) for r in rows]


@pytest.mark.slow
def test_a_killed_run_resumes_with_the_same_losses(tmp_path, data_dir):
    whole = write_config(tmp_path, data_dir, "whole")
    assert run(["-m", "training.train", "--config", str(whole)]).wait() == 0

    broken = write_config(tmp_path, data_dir, "broken")
    process = run(["-m", "training.train", "--config", str(broken)])
    trainer = tmp_path / "broken" / "checkpoint" / "trainer.json"
    while not trainer.exists() and process.poll() is None:
        time.sleep(0.05)
    while process.poll() is None and len(losses(tmp_path / "broken")) < 15:
        time.sleep(0.05)
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
    # bf16 autocast and a different reduction order: the curves agree to within 0.01 bits
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
