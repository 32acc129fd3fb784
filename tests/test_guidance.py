"""Classifier-free guidance: the null condition (training) and guided sampling l_u + s (l_c - l_u)."""

import math
import subprocess
import sys

import pytest
import torch

from iqvae.errors import IQVAEError
from iqvae.models.gpt import GPT, GPTConfig
from iqvae.sampling import generate, generate_reference
from iqvae.train.gumbel import GumbelConfig, training_loss
from iqvae.train.transformer import null_condition_mask

BASE = dict(cond_vocab=9, image_vocab=17, n_layer=2, n_head=2, n_embd=16, cfg_dropout=0.1)
CONFIGS = [
    dict(BASE, n_cond=4, n_image=9),
    dict(BASE, n_cond=6, n_image=6, cond_align=True),
    dict(BASE, n_cond=6, n_image=6, cond_align=True, above_input=True, above_window=2, image_grid=[2, 3]),
    dict(BASE, n_cond=6, n_image=6, pos_init="spatial", image_grid=[2, 3]),
    dict(BASE, n_cond=5, n_image=8, above_input=True, image_grid=[2, 2, 2], bias=False),
]


def _model(cfg_kw, seed=0, scale=8.0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**cfg_kw))
    with torch.no_grad():  # larger weights so logits vary strongly between steps and between l_c and l_u
        for p in model.parameters():
            p.mul_(scale)
    return model


def _null_twin(model: GPT) -> GPT:
    """A second implementation of the unconditional model: a GPT without a null condition whose condition vocabulary
    is the null table's rows (fed as tokens 0 .. n_cond-1) and whose aligned-condition table is zero."""
    cfg = GPTConfig(**{**model.config.__dict__, "cfg_dropout": 0.0, "cond_vocab": model.config.n_cond})
    twin = GPT(cfg)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("wte_cond", "wte_null", "wte_align"))}
    state["wte_cond.weight"] = model.wte_null.weight.detach().clone()
    if cfg.cond_align:
        state["wte_align.weight"] = torch.zeros_like(twin.wte_align.weight)
    twin.load_state_dict(state)
    return twin.eval()


@pytest.mark.parametrize("cfg_kw", CONFIGS)
@pytest.mark.parametrize("scale, top_k, temperature", [(0.0, None, 1.0), (1.5, 5, 0.8), (3.0, None, 1.3)])
def test_guided_cached_matches_reference_and_closed_form(cfg_kw, scale, top_k, temperature):
    model = _model(cfg_kw).eval()
    cfg = model.config
    B = 3
    cond = torch.randint(0, cfg.cond_vocab, (B, cfg.n_cond), generator=torch.Generator().manual_seed(1))
    kw = dict(top_k=top_k, temperature=temperature, return_logits=True, guidance_scale=scale)
    tok, logits = generate(model, cond, generator=torch.Generator().manual_seed(7), **kw)
    tok_r, logits_r = generate_reference(model, cond, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(tok, tok_r)
    torch.testing.assert_close(logits, logits_r, atol=1e-4, rtol=0)
    # closed form: l_c from the conditional model, l_u from an independent unconditional twin, combined by hand
    with torch.no_grad():
        l_c = model(cond, tok).double()
        l_u = _null_twin(model)(torch.arange(cfg.n_cond).expand(B, -1), tok).double()
    assert (l_c - l_u).abs().max() > 1.0  # the two really differ, so the scale matters
    torch.testing.assert_close(logits.double(), l_u + scale * (l_c - l_u), atol=1e-4, rtol=0)
    # and it is not unguided sampling
    unguided = generate(model, cond, generator=torch.Generator().manual_seed(7), top_k=top_k, temperature=temperature)
    assert not torch.equal(unguided, tok)


@pytest.mark.parametrize("cfg_kw", CONFIGS)
def test_scale_one_is_exactly_unguided_sampling(cfg_kw):
    model = _model(cfg_kw)
    torch.manual_seed(0)  # the null table is created last: every other weight is the one of the model without it
    plain = GPT(GPTConfig(**{**cfg_kw, "cfg_dropout": 0.0}))
    with torch.no_grad():
        for p in plain.parameters():
            p.mul_(8.0)
    assert set(model.state_dict()) - set(plain.state_dict()) == {"wte_null.weight"}
    for k, v in plain.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    cond = torch.randint(0, model.config.cond_vocab, (4, model.config.n_cond))
    kw = dict(top_k=5, temperature=0.9, return_logits=True)
    a, la = generate(model, cond, generator=torch.Generator().manual_seed(3), guidance_scale=1.0, **kw)
    b, lb = generate(plain, cond, generator=torch.Generator().manual_seed(3), **kw)
    c, lc = generate_reference(model, cond, generator=torch.Generator().manual_seed(3), guidance_scale=1, **kw)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert torch.equal(a, c)


def test_no_null_condition_without_cfg_dropout_and_guidance_is_refused():
    cfg_kw = {**CONFIGS[1], "cfg_dropout": 0.0}
    model = GPT(GPTConfig(**cfg_kw))
    assert model.wte_null is None and not any("null" in k for k in model.state_dict())
    cond = torch.zeros(1, model.config.n_cond, dtype=torch.long)
    for fn in (generate, generate_reference):
        with pytest.raises(IQVAEError, match="--cfg-scale"):
            fn(model, cond, guidance_scale=2.0)
    with pytest.raises(IQVAEError, match="null condition"):
        model(cond, torch.zeros(1, 2, dtype=torch.long), null=torch.ones(1, dtype=torch.bool))
    with pytest.raises(IQVAEError, match="--cfg-scale"):
        generate(_model(CONFIGS[0]), torch.zeros(1, 4, dtype=torch.long), guidance_scale=float("nan"))
    with pytest.raises(Exception, match="cfg_dropout"):
        GPTConfig(**{**cfg_kw, "cfg_dropout": 1.0}).validate()


def test_null_rows_see_no_condition_anywhere():
    """With cond_align, a null row's output does not depend on its condition tokens (prefix and aligned input)."""
    model = _model(CONFIGS[2], scale=2.0)
    cfg = model.config
    img = torch.randint(0, cfg.image_vocab, (4, cfg.n_image))
    c1, c2 = torch.randint(0, cfg.cond_vocab, (2, 4, cfg.n_cond))
    null = torch.tensor([True, False, True, False])
    with torch.no_grad():
        a, b = model(c1, img, null=null), model(c2, img, null=null)
        plain = model(c1, img)
    assert torch.equal(a[null], b[null])
    assert (a[~null] - b[~null]).abs().max() > 1e-3
    assert torch.equal(a[~null], plain[~null])  # the other rows are exactly the conditional model


@pytest.mark.parametrize("rate", [0.1, 0.35])
def test_null_condition_is_drawn_at_the_set_rate(rate):
    n_steps, batch = 400, 32
    masks = [null_condition_mask(s, rate, batch, seed=5) for s in range(n_steps)]
    n, k = n_steps * batch, sum(int(m.sum()) for m in masks)
    sd = math.sqrt(n * rate * (1 - rate))
    assert abs(k - n * rate) < 5 * sd, (k, n * rate)  # binomial: fails with probability < 1e-6
    # per-position: every sample position is dropped at the rate (no position is favoured)
    per_pos = torch.stack(masks).float().sum(0)
    sd_pos = math.sqrt(n_steps * rate * (1 - rate))
    assert (per_pos - n_steps * rate).abs().max() < 5 * sd_pos
    # a pure function of (seed, step); sharded by rank like the batch; another seed gives other coins
    assert torch.equal(null_condition_mask(7, rate, batch, 5), masks[7])
    halves = [null_condition_mask(7, rate, batch, 5, rank=r, world=2) for r in (0, 1)]
    assert torch.equal(torch.cat(halves), masks[7])
    assert not all(torch.equal(null_condition_mask(s, rate, batch, 6), masks[s]) for s in range(10))
    assert null_condition_mask(3, 0.0, batch, 5) is None


class _Spy(torch.nn.Module):
    """Wraps a GPT like DDP does (``.module``) and records the null mask of every call."""

    def __init__(self, gpt):
        super().__init__()
        self.module, self.calls = gpt, []

    def forward(self, cond, image, image_embeds=None, null=None):
        self.calls.append(null)
        return self.module(cond, image, image_embeds=image_embeds, null=null)


@pytest.mark.parametrize("fast", [True, False])
def test_both_gumbel_passes_see_the_same_rows_and_the_null_table_learns(fast):
    gpt = _model(CONFIGS[2], scale=1.0)
    spy = _Spy(gpt)
    cfg = GumbelConfig(every=1, threshold=-1.0, schedule="constant", max_rate=0.5)
    cond = torch.randint(0, 9, (4, 6))
    image = torch.randint(0, 17, (4, 6))
    null = torch.tensor([True, False, False, True])
    loss, stats = training_loss(spy, cond, image, 0, cfg, None, torch.Generator().manual_seed(0), null=null,
                                token_fast_path=fast)
    assert stats["gs_replaced"] > 0 and len(spy.calls) == 2 and all(c is null for c in spy.calls)
    loss.backward()
    g = gpt.wte_null.weight.grad
    assert g is not None and g.abs().sum() > 0
    # no row dropped: the null table gets no gradient; every row dropped: the condition tables get none
    gpt.zero_grad(set_to_none=True)
    teacher = GumbelConfig(mode="teacher")
    training_loss(gpt, cond, image, 1, teacher, None, null=torch.zeros(4, dtype=torch.bool))[0].backward()
    assert gpt.wte_null.weight.grad is None or gpt.wte_null.weight.grad.abs().sum() == 0
    gpt.zero_grad(set_to_none=True)
    training_loss(gpt, cond, image, 1, teacher, None, null=torch.ones(4, dtype=torch.bool))[0].backward()
    for table in (gpt.wte_cond, gpt.wte_align):
        assert table.weight.grad is None or table.weight.grad.abs().sum() == 0


@pytest.mark.slow
def test_transformer_resume_is_exact_with_cfg_dropout(tmp_path):
    from test_resume import ENV, _check

    tok = tmp_path / "tok"
    subprocess.run([sys.executable, "-m", "iqvae.cli", "train-tokenizer", "--preset", "tiny", "--no-progress",
                    "--run-dir", str(tok), "--set", "train.steps=2"], env=ENV, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "iqvae.cli", "encode", "--tokenizer", str(tok), "--out",
                    str(tmp_path / "codes"), "--splits", "train,val", "--no-progress"], env=ENV, check=True,
                   capture_output=True)
    _check("train-transformer", tmp_path, ["--codes", str(tmp_path / "codes"), "--set", "model.cfg_dropout=0.5",
                                           "--set", "model.cond_align=true", "--set", "gumbel.every=2",
                                           "--set", "gumbel.threshold=-1.0", "--set", "gumbel.schedule=constant",
                                           "--set", "gumbel.max_rate=0.5"], "transformer.csv")
    final = GPT.from_pretrained(tmp_path / "train-transformer-full")
    assert final.wte_null is not None and final.config.cfg_dropout == 0.5
    # in the training step: the mask of null_condition_mask(step, ...) reaches the loss when on, nothing when off
    import iqvae.train.transformer as tt
    from iqvae.config import build_config

    for rate in (0.5, 0.0):
        seen = []

        def spy(model, cond, image, step, cfg, codebook, generator=None, **kw):
            seen.append((step, kw.get("null")))
            return training_loss(model, cond, image, step, cfg, codebook, generator, **kw)

        cfg = build_config(tt.TransformerRunConfig, "transformer", preset="tiny",
                           overrides=[f"codes={tmp_path / 'codes'}", f"model.cfg_dropout={rate}", "train.steps=4",
                                      "train.threads=1", "train.seed=3"])
        orig = tt.training_loss
        tt.training_loss = spy
        try:
            tt.train_transformer(cfg, tmp_path / f"inproc-{rate}", progress=False)
        finally:
            tt.training_loss = orig
        assert [st for st, _ in seen] == [0, 1, 2, 3]
        for st, null in seen:
            want = null_condition_mask(st, rate, cfg.train.batch_size, 3)
            assert (null is None) if rate == 0 else torch.equal(null, want)
        if rate:
            assert any(m.any() for _, m in seen) and not all(m.all() for _, m in seen)


def test_bench_sampling_prints_guided_and_unguided_rates_and_their_ratio(capsys):
    import re

    from iqvae.cli import main

    assert main(["bench", "sampling", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--vocab", "32",
                 "--seq", "16", "--batch", "1,2", "--cfg-scale", "2"]) == 0
    out = capsys.readouterr().out
    assert "classifier-free guidance, scale 2" in out
    plain = re.findall(r"^\s+(\d+)\s+8\s+([\d.]+)\s+[\d.]+\s+[\d.]+x\s+[\d.]+%", out, flags=re.M)
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x$", out, flags=re.M)
    assert [r[0] for r in rows] == ["1", "2"] and all(r[1] == "8" for r in rows)
    for (batch, rate), r in zip(plain, rows):
        assert r[2] == rate  # the unguided rate is the cached sampler's of the same run
        assert float(r[4]) == pytest.approx(float(r[2]) / float(r[3]), rel=0.02, abs=0.01)
    # scale 1: nothing guided is timed or printed
    assert main(["bench", "sampling", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--vocab", "32",
                 "--seq", "16", "--batch", "1", "--cfg-scale", "1"]) == 0
    assert "guidance" not in capsys.readouterr().out


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """Tiny random seg pipelines (test_web's), with and without a null condition, saved as pipeline folders."""
    from test_web import tiny_pipeline

    root = tmp_path_factory.mktemp("guided")
    out = {}
    for name, rate in (("guided", 0.1), ("plain", 0.0)):
        pipe = tiny_pipeline("seg", cfg_dropout=rate)
        with torch.no_grad():  # larger weights so guidance visibly changes the samples
            for p in pipe.transformer.parameters():
                p.mul_(8.0)
        pipe.save_pretrained(root / name)
        out[name] = (pipe, root / name)
    return out


def test_pipeline_guidance_scale(pipelines):
    pipe, _ = pipelines["guided"]
    cond = torch.zeros(pipe.resolution, pipe.resolution, dtype=torch.long)
    cond[2:9, 3:12] = 1

    def run(**kw):
        return pipe(cond, num_images=3, generator=torch.Generator().manual_seed(0), output_type="pt", **kw)

    assert pipe.has_null_condition and not pipelines["plain"][0].has_null_condition
    assert torch.equal(run(guidance_scale=1.0), run())
    guided = run(guidance_scale=3.0)
    assert guided.shape == (1, 3, 3, pipe.resolution, pipe.resolution) and not torch.equal(guided, run())
    # the same tokens as the sampler called directly with the scale
    tok_cond = pipe.condition_tokens(cond)[0].repeat_interleave(3, 0)
    tokens = generate(pipe.transformer, tok_cond, generator=torch.Generator().manual_seed(0), guidance_scale=3.0)
    cond_idx = pipe.condition_tokens(cond)[1].repeat_interleave(3, 0)
    images = pipe.tokenizer.decode_indices(tokens.reshape(3, *pipe.tokenizer.tokens_shape), cond_idx).clamp(-1, 1)
    torch.testing.assert_close(guided[0], images.float())
    with pytest.raises(IQVAEError, match="--cfg-scale"):
        pipelines["plain"][0](cond, guidance_scale=2.0)


def test_sample_and_evaluate_take_cfg_scale(pipelines, tmp_path):
    from iqvae.cli import main
    from iqvae.evaluation.evaluate import evaluate_model

    guided, plain = pipelines["guided"][1], pipelines["plain"][1]
    args = ["sample", "--world", "shapes", "--index", "0", "-n", "2", "--cfg-scale", "2.5"]
    assert main([*args, "--model", str(guided), "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").is_file()
    assert main([*args, "--model", str(plain), "--out", str(tmp_path / "p.png")]) == 2  # a clear error
    res = evaluate_model(guided, conditions=2, samples=2, recon_items=2, guidance_scale=2.5)
    assert res["protocol"]["guidance_scale"] == 2.5
    with pytest.raises(IQVAEError, match="--cfg-scale"):
        evaluate_model(plain, conditions=2, samples=2, recon_items=2, guidance_scale=2.5)


def test_evaluate_command_passes_cfg_scale(pipelines, monkeypatch):
    import iqvae.evaluation.evaluate as ev
    import iqvae.metrics.extractor as ex
    from iqvae.cli import main

    seen = {}

    def fake_evaluate(model, **kw):
        seen.update(kw)
        raise IQVAEError("stop here")

    monkeypatch.setattr(ev, "evaluate_model", fake_evaluate)
    monkeypatch.setattr(ex, "resolve_extractor", lambda **kw: (None, "none in this test"))
    import iqvae.train.predictor as tp

    monkeypatch.setattr(tp, "resolve_predictor", lambda *a, **kw: (None, "none in this test"))
    guided = str(pipelines["guided"][1])
    assert main(["evaluate", "--model", guided, "--cfg-scale", "1.75", "--no-progress"]) == 2
    assert seen["guidance_scale"] == 1.75
    assert main(["evaluate", "--model", guided, "--no-progress"]) == 2 and seen["guidance_scale"] == 1.0
    # a model without a null condition is refused before anything is computed
    seen.clear()
    assert main(["evaluate", "--model", str(pipelines["plain"][1]), "--cfg-scale", "2", "--no-progress"]) == 2
    assert seen == {}
