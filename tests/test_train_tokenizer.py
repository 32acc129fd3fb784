"""The stage-1 loop's optional branches: adversarial training after disc_start, LPIPS from weight files, and a real
dataset layout (ADE20K) read from disk."""

import torch

from iqvae.checkpoint import load_checkpoint
from iqvae.cli import main
from iqvae.models.lpips import LPIPS
from iqvae.train.common import read_log
from tests._dataset_fixtures import make_ade20k

TINY = ["--preset", "tiny", "--no-progress", "--set", "train.steps=3", "--set", "train.log_every=1",
        "--set", "train.checkpoint_every=3", "--set", "train.threads=1"]


def test_adversarial_and_perceptual_terms_train(tmp_path):
    ref = LPIPS("alex", random_init=True, seed=0)
    bb, ln = tmp_path / "alex.pth", tmp_path / "lin.pth"
    torch.save({f"features.{k}": v for k, v in ref.net.features.state_dict().items()}, bb)
    torch.save({f"lin{i}.model.1.weight": lin.model[1].weight for i, lin in enumerate(ref.lins)}, ln)
    run = tmp_path / "run"
    assert main(["train-tokenizer", *TINY, "--run-dir", str(run), "--set", "loss.disc_start=1",
                 "--set", "perceptual.net=alex", "--set", f"perceptual.backbone_weights={bb}",
                 "--set", f"perceptual.lin_weights={ln}"]) == 0
    log = read_log(run / "tokenizer.csv")
    assert log[0]["perceptual"] > 0 and all(r["perceptual"] > 0 for r in log)
    assert log[0]["disc_factor"] == 0 and log[1]["disc_factor"] == 1 and log[2]["disc_factor"] == 1
    assert log[1]["adaptive_weight"] > 0 and "disc_loss" in log[1]
    # the discriminator optimizer stepped after disc_start
    state = load_checkpoint(run / "checkpoints" / "last", with_train_state=True).train_state
    assert state["opt_d"]["state"], "the discriminator optimizer never stepped"


def test_missing_lpips_weights_file_is_a_clear_error(tmp_path, capsys):
    assert main(["train-tokenizer", *TINY, "--run-dir", str(tmp_path / "r"),
                 "--set", f"perceptual.backbone_weights={tmp_path / 'nope.pth'}",
                 "--set", f"perceptual.lin_weights={tmp_path / 'nope2.pth'}"]) == 2
    assert "nope.pth" in capsys.readouterr().err


def test_train_tokenizer_starts_on_an_ade20k_fixture(tmp_path):
    root = make_ade20k(tmp_path / "ADEChallengeData2016")
    run = tmp_path / "ade"
    assert main(["train-tokenizer", *TINY, "--data", "ade20k", "--data-root", str(root), "--run-dir", str(run),
                 "--set", "train.batch_size=2"]) == 0
    ck = load_checkpoint(run / "tokenizer")
    assert ck.config["data"]["dataset"] == "ade20k"
    assert ck.config["model"]["cond_spec"]["channels"] == 151  # ADE20K: 150 classes + "other"
    assert len(read_log(run / "tokenizer.csv")) == 3
