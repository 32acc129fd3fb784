"""The non-finite guard of the training loop (train/loop.py): a NaN/Inf loss term or gradient never reaches the
weights or a checkpoint, for both stages.  Each test forces a NaN at a chosen step by wrapping the stage's loss."""

import pytest
import torch

from iqvae.checkpoint import load_checkpoint
from iqvae.cli import main
from iqvae.config import build_config
from iqvae.errors import NonFiniteError
from iqvae.losses.vqgan import VQGANLoss
from iqvae.train import transformer as transformer_mod
from iqvae.train.tokenizer import TokenizerRunConfig, train_tokenizer
from iqvae.train.transformer import TransformerRunConfig, train_transformer

pytestmark = pytest.mark.slow
BAD = 3  # the step forced to NaN
RUN = ["train.steps=6", "train.checkpoint_every=1", "train.log_every=1", "train.threads=1"]


class _PoisonGrad(torch.autograd.Function):
    """Identity forward (a finite loss), NaN gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def _poison(loss, how):
    return loss * float("nan") if how == "loss" else _PoisonGrad.apply(loss)


def _weights(path):
    return load_checkpoint(path).model_state


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _assert_finite(state):
    for k, v in state.items():
        assert torch.isfinite(v.float()).all(), k


def _skip_optimizer_step_at(monkeypatch, seen, step):
    """The reference for a skipped step: a run whose optimizers do not step at ``step`` (all else equal)."""
    orig = torch.optim.AdamW.step

    def step_fn(self, *args, **kwargs):
        if seen["step"] == step:
            return None
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step_fn)


# ---------------------------------------------------------------------------------------------- tokenizer
def _tok_cfg(*extra):
    return build_config(TokenizerRunConfig, "tokenizer", preset="tiny", overrides=[*RUN, *extra])


def _poison_generator(monkeypatch, how, seen=None):
    orig = VQGANLoss.generator_loss

    def generator_loss(self, out, image, step, last_layer):
        total, logs = orig(self, out, image, step, last_layer)
        if seen is not None:
            seen["step"] = step
        if how and step == BAD:
            total = _poison(total, how)
            logs = {**logs, "total": total.detach()}
        return total, logs

    monkeypatch.setattr(VQGANLoss, "generator_loss", generator_loss)


@pytest.mark.parametrize("how, term", [("loss", "total"), ("grad", "gradient norm")])
def test_tokenizer_stops_at_a_nonfinite_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, how, term):
    ref = tmp_path / "ref"
    train_tokenizer(_tok_cfg(), ref, progress=False, stop_after=BAD)  # the weights after steps 0 .. BAD-1
    _poison_generator(monkeypatch, how)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=f"step {BAD}") as e:
        train_tokenizer(_tok_cfg(), run, progress=False)
    msg = str(e.value)
    assert term in msg and "generator" in msg
    if how == "grad":
        assert "total" not in msg  # the loss itself was finite
    last = load_checkpoint(run / "checkpoints" / "last", with_train_state=True)
    assert last.train_state["step"] == BAD
    _assert_same(last.model_state, _weights(ref / "checkpoints" / "last"))
    _assert_finite(last.model_state)
    assert not (run / "tokenizer").exists() and not (run / "report.json").exists()


def test_tokenizer_discriminator_step_is_guarded(tmp_path, monkeypatch):
    orig = VQGANLoss.discriminator_loss

    def discriminator_loss(self, image, recon, step):
        loss, logs = orig(self, image, recon, step)
        if step == BAD:
            loss = loss * float("nan")
            logs = {**logs, "disc_loss": loss.detach()}
        return loss, logs

    monkeypatch.setattr(VQGANLoss, "discriminator_loss", discriminator_loss)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=f"step {BAD}: non-finite disc_loss.* in the discriminator update"):
        train_tokenizer(_tok_cfg("loss.disc_start=0"), run, progress=False)
    last = load_checkpoint(run / "checkpoints" / "last", with_train_state=True)
    assert last.train_state["step"] == BAD
    for key in ("disc", "model"):
        _assert_finite(last.train_state[key])
    assert not (run / "tokenizer").exists()


def test_tokenizer_skips_up_to_max_bad_steps(tmp_path, monkeypatch):
    seen = {"step": -1}
    with monkeypatch.context() as m:  # the reference: the same run without the optimizer step of step BAD
        _poison_generator(m, None, seen)
        _skip_optimizer_step_at(m, seen, BAD)
        train_tokenizer(_tok_cfg(), tmp_path / "ref", progress=False)
    _poison_generator(monkeypatch, "loss")
    run = tmp_path / "run"
    final = train_tokenizer(_tok_cfg("train.max_bad_steps=1"), run, progress=False)
    state = _weights(final)
    _assert_finite(state)
    _assert_same(state, _weights(tmp_path / "ref" / "tokenizer"))
    assert load_checkpoint(final).meta["steps"] == 6
    assert load_checkpoint(run / "checkpoints" / "last", with_train_state=True).train_state["step"] == 6
    assert BAD not in [int(r) for r in _log_steps(run / "tokenizer.csv")]  # no log row of the skipped step


def _log_steps(path):
    from iqvae.train.common import read_log

    return [row["step"] for row in read_log(path)]


def test_cli_with_a_huge_learning_rate_stops_instead_of_saving_nan_weights(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train-tokenizer", "--preset", "tiny", "--no-progress", "--run-dir", str(run),
                 "--set", "train.lr=1e8", "--set", "train.threads=1", "--set", "train.checkpoint_every=1"]) == 2
    err = capsys.readouterr().err
    assert "training stopped at step" in err and "non-finite" in err and "Traceback" not in err
    assert not (run / "tokenizer").exists()
    last = run / "checkpoints" / "last"
    if last.exists():
        _assert_finite(_weights(last))


# ---------------------------------------------------------------------------------------------- transformer
@pytest.fixture(scope="module")
def codes(tmp_path_factory):
    root = tmp_path_factory.mktemp("codes")
    assert main(["train-tokenizer", "--preset", "tiny", "--no-progress", "--run-dir", str(root / "tok"),
                 "--set", "train.steps=2", "--set", "train.threads=1"]) == 0
    assert main(["encode", "--tokenizer", str(root / "tok"), "--out", str(root / "codes"), "--splits", "train,val",
                 "--no-progress"]) == 0
    return root / "codes"


def _gpt_cfg(codes, *extra):
    return build_config(TransformerRunConfig, "transformer", preset="tiny",
                        overrides=[f"codes={codes}", *RUN, "gumbel.every=2", "gumbel.threshold=-1.0", *extra])


def _poison_transformer(monkeypatch, how, seen=None, steps=(BAD,)):
    orig = transformer_mod.training_loss

    def training_loss(model, cond, image, step, cfg, codebook, generator=None):
        loss, stats = orig(model, cond, image, step, cfg, codebook, generator)
        if seen is not None:
            seen["step"] = step
        if how and step in steps:
            loss = _poison(loss, how)
        return loss, stats

    monkeypatch.setattr(transformer_mod, "training_loss", training_loss)


@pytest.mark.parametrize("how, term", [("loss", "loss"), ("grad", "gradient norm")])
def test_transformer_stops_at_a_nonfinite_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, codes,
                                                                                   how, term):
    ref = tmp_path / "ref"
    train_transformer(_gpt_cfg(codes), ref, progress=False, stop_after=BAD)
    _poison_transformer(monkeypatch, how)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=f"step {BAD}: non-finite {term}") as e:
        train_transformer(_gpt_cfg(codes), run, progress=False)
    assert "in the transformer update" in str(e.value)
    last = load_checkpoint(run / "checkpoints" / "last", with_train_state=True)
    assert last.train_state["step"] == BAD
    _assert_same(last.model_state, _weights(ref / "checkpoints" / "last"))
    _assert_finite(last.model_state)
    assert not (run / "transformer").exists() and not (run / "report.json").exists()


def test_transformer_skips_up_to_max_bad_steps(tmp_path, monkeypatch, codes):
    seen = {"step": -1}
    with monkeypatch.context() as m:
        _poison_transformer(m, None, seen)
        _skip_optimizer_step_at(m, seen, BAD)
        train_transformer(_gpt_cfg(codes), tmp_path / "ref", progress=False)
    with monkeypatch.context() as m:
        _poison_transformer(m, "loss")
        final = train_transformer(_gpt_cfg(codes, "train.max_bad_steps=1"), tmp_path / "run", progress=False)
    state = _weights(final)
    _assert_finite(state)
    _assert_same(state, _weights(tmp_path / "ref" / "transformer"))
    assert load_checkpoint(final).meta["steps"] == 6
    # a second bad step is one too many
    _poison_transformer(monkeypatch, "loss", steps=(BAD, BAD + 1))
    with pytest.raises(NonFiniteError, match=f"step {BAD + 1} after skipping 1 bad step"):
        train_transformer(_gpt_cfg(codes, "train.max_bad_steps=1"), tmp_path / "two", progress=False)
    assert load_checkpoint(tmp_path / "two" / "checkpoints" / "last", with_train_state=True).train_state["step"] == BAD
