"""Two CPU processes (gloo, started by torchrun; accelerate picks the environment up) compute the same training step
as one process on the concatenated batch.

Oracle: after the first AdamW step the optimizer's ``exp_avg`` is exactly (1 - beta1) * gradient, so comparing it
between the runs compares the gradients themselves (parameters after one Adam step are ~lr*sign(g) and would hide
errors).  Both training commands are run through the real CLI.
"""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from iqvae.checkpoint import load_checkpoint

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, nproc=None, cwd=None):
    cmd = ([TORCHRUN, "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
            "-m", "iqvae.cli"] if nproc
           else [sys.executable, "-m", "iqvae.cli"]) + args
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def _grad_diff(a_dir, b_dir, opt_key):
    a = load_checkpoint(a_dir / "checkpoints" / "last", with_train_state=True).train_state
    b = load_checkpoint(b_dir / "checkpoints" / "last", with_train_state=True).train_state
    assert a["step"] == b["step"] == 1
    worst = 0.0
    for k, st in a[opt_key]["state"].items():
        ga, gb = st["exp_avg"], b[opt_key]["state"][k]["exp_avg"]
        worst = max(worst, float((ga - gb).norm() / (ga.norm() + 1e-12)))
    return worst, len(a[opt_key]["state"])


def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    common = ["--preset", "tiny", "--no-progress", "--set", "train.steps=1", "--set", "train.checkpoint_every=1",
              "--set", "train.batch_size=8", "--set", "train.threads=1"]
    tok = common + ["--set", "model.kmeans_init=false"]  # k-means init would see a different first batch per rank
    _run(["train-tokenizer", *tok, "--run-dir", str(tmp_path / "tok1")])
    _run(["train-tokenizer", *tok, "--run-dir", str(tmp_path / "tok2")], nproc=2)
    worst, n = _grad_diff(tmp_path / "tok1", tmp_path / "tok2", "opt_g")
    assert n > 50 and worst < 1e-3, worst

    # a shuffled control must fail the same check: the oracle can tell different batches apart
    other = common + ["--set", "model.kmeans_init=false", "--set", "train.seed=1"]
    _run(["train-tokenizer", *other, "--run-dir", str(tmp_path / "tok3")])
    assert _grad_diff(tmp_path / "tok1", tmp_path / "tok3", "opt_g")[0] > 1e-2

    _run(["encode", "--tokenizer", str(tmp_path / "tok1"), "--out", str(tmp_path / "codes"), "--splits", "train,val",
          "--no-progress"])
    gpt = common + ["--codes", str(tmp_path / "codes"), "--set", "gumbel.mode=teacher"]
    _run(["train-transformer", *gpt, "--run-dir", str(tmp_path / "gpt1")])
    _run(["train-transformer", *gpt, "--run-dir", str(tmp_path / "gpt2")], nproc=2)
    worst, n = _grad_diff(tmp_path / "gpt1", tmp_path / "gpt2", "opt")
    assert n > 10 and worst < 1e-3, worst
