"""Killing a training run (SIGKILL, at whatever moment) and resuming it reproduces the uninterrupted loss curve."""

import os
import signal
import subprocess
import sys
import time

import pytest

from iqvae.checkpoint import read_header
from iqvae.train.common import read_log

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
pytestmark = pytest.mark.slow


def _cmd(kind, run_dir, extra):
    return [sys.executable, "-m", "iqvae.cli", kind, "--preset", "tiny", "--no-progress", "--run-dir", str(run_dir),
            "--set", "train.steps=12", "--set", "train.checkpoint_every=4", "--set", "train.log_every=1",
            "--set", "train.threads=1", *extra]


def _kill_after_first_checkpoint(cmd, run_dir):
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run_dir / "checkpoints" / "last"
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if (last / "config.json").exists():
            break
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be killed: " + p.stderr.read().decode()[-2000:]
    p.send_signal(signal.SIGKILL)
    p.wait()
    step = read_header(last)["meta"]["step"]
    assert 4 <= step < 12
    return step


def _check(kind, tmp_path, extra, log_name):
    full, cut = tmp_path / f"{kind}-full", tmp_path / f"{kind}-cut"
    subprocess.run(_cmd(kind, full, extra), env=ENV, check=True, capture_output=True)
    killed_at = _kill_after_first_checkpoint(_cmd(kind, cut, extra), cut)
    r = subprocess.run(_cmd(kind, cut, extra) + ["--resume"], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = read_log(full / log_name), read_log(cut / log_name)
    assert [row["step"] for row in a] == [row["step"] for row in b] == list(range(12))
    for ra, rb in zip(a, b):
        for key in ("total", "loss"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=1e-6, abs=1e-7), (ra["step"], key, killed_at)
    # resuming without --resume is refused, resuming with other options is refused
    r = subprocess.run(_cmd(kind, cut, extra), env=ENV, capture_output=True, text=True)
    assert r.returncode == 2 and "--resume" in r.stderr
    r = subprocess.run(_cmd(kind, cut, extra + ["--set", "train.lr=0.5"]) + ["--resume"], env=ENV,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "configuration differs" in r.stderr and "at train.lr " in r.stderr


def test_config_differences_names_keys_and_lets_machine_settings_change():
    from iqvae.train.common import config_differences

    saved = {"model": {"a": 1, "b": [1, 2]}, "train": {"lr": 0.1, "threads": 2, "device": "cpu"}}
    same_math = {"model": {"a": 1, "b": [1, 2]}, "train": {"lr": 0.1, "threads": 1, "device": "cuda:1"}}
    assert config_differences(saved, same_math) == []
    other = {"model": {"a": 2, "b": [1, 3], "c": 0}, "train": {"lr": 0.1}}
    assert config_differences(saved, other) == ["model.a", "model.b", "model.c"]


def test_tokenizer_resume_reproduces_the_loss_curve(tmp_path):
    _check("train-tokenizer", tmp_path, ["--set", "model.kmeans_init=true", "--set", "model.dead_code_threshold=0.5"],
           "tokenizer.csv")


def test_transformer_resume_reproduces_the_loss_curve(tmp_path):
    tok = tmp_path / "tok"
    subprocess.run([sys.executable, "-m", "iqvae.cli", "train-tokenizer", "--preset", "tiny", "--no-progress",
                    "--run-dir", str(tok), "--set", "train.steps=2"], env=ENV, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "iqvae.cli", "encode", "--tokenizer", str(tok), "--out", str(tmp_path / "codes"),
                    "--splits", "train,val", "--no-progress"], env=ENV, check=True, capture_output=True)
    # Gumbel sampling every 2 steps with a threshold low enough that it replaces tokens: its RNG must resume too
    _check("train-transformer", tmp_path, ["--codes", str(tmp_path / "codes"), "--set", "gumbel.every=2",
                                           "--set", "gumbel.threshold=-1.0", "--set", "gumbel.schedule=constant",
                                           "--set", "gumbel.max_rate=0.5"], "transformer.csv")
