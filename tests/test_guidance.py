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
    training_loss(gpt, cond, image, 1, GumbelConfig(mode="teacher"), None, null=torch.zeros(4, dtype=torch.bool))[0].backward()
    assert gpt.wte_null.weight.grad is None or gpt.wte_null.weight.grad.abs().sum() == 0
    gpt.zero_grad(set_to_none=True)
    training_loss(gpt, cond, image, 1, GumbelConfig(mode="teacher"), None, null=torch.ones(4, dtype=torch.bool))[0].backward()
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
