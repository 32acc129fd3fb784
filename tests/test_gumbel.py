import dataclasses
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import chisquare

from iqvae.config import from_dict
from iqvae.errors import ConfigError, IQVAEError
from iqvae.models.gpt import GPT, GPTConfig
from iqvae.train.gumbel import (
    GumbelConfig,
    gumbel_mix,
    gumbel_mix_tokens,
    gumbel_softmax_sample,
    reliability,
    replace_rate,
    rq_soft_targets,
    tau,
    teacher_forcing_prob,
    training_loss,
)

CFG = GPTConfig(cond_vocab=7, image_vocab=12, n_cond=3, n_image=8, n_layer=2, n_head=2, n_embd=16)


def setup(B=4, seed=0):
    torch.manual_seed(seed)
    model = GPT(CFG)
    cond = torch.randint(0, CFG.cond_vocab, (B, CFG.n_cond))
    image = torch.randint(0, CFG.image_vocab, (B, CFG.n_image))
    codebook = torch.randn(CFG.image_vocab, 5)
    return model, cond, image, codebook


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def teacher(model, cond, image):
    model.zero_grad()
    loss = F.cross_entropy(model(cond, image).reshape(-1, CFG.image_vocab), image.reshape(-1))
    loss.backward()
    return loss.detach(), grads(model)


def run(model, cond, image, step, cfg, codebook, seed=0, token_fast_path=True):
    model.zero_grad()
    loss, stats = training_loss(model, cond, image, step, cfg, codebook, torch.Generator().manual_seed(seed),
                                token_fast_path=token_fast_path)
    loss.backward()
    return loss.detach(), grads(model), stats


# ---------------------------------------------------------------------------------------------- reliability
def test_reliability_matches_double_loop():
    B, t, V, D = 2, 5, 9, 4
    probs = torch.softmax(torch.randn(B, t, V, dtype=torch.float64), -1)
    gold = torch.randint(0, V, (B, t))
    codebook = torch.randn(V, D, dtype=torch.float64)
    got = reliability(probs, gold, codebook)
    for b in range(B):
        for i in range(t):
            g = codebook[gold[b, i]] / codebook[gold[b, i]].norm()
            expect = sum(float(probs[b, i, j]) * float(codebook[j] @ g / codebook[j].norm()) for j in range(V))
            assert math.isclose(float(got[b, i]), expect, rel_tol=1e-12, abs_tol=1e-12)
    assert (got.abs() <= 1 + 1e-12).all()
    # one-hot prediction of the gold token -> R = 1; orthonormal codes (None) -> R = p(gold)
    assert torch.allclose(reliability(F.one_hot(gold, V).double(), gold, codebook), torch.ones(B, t, dtype=torch.float64))
    torch.testing.assert_close(reliability(probs, gold, None), probs.gather(-1, gold[..., None])[..., 0])
    torch.testing.assert_close(reliability(probs, gold, torch.eye(V, dtype=torch.float64)), reliability(probs, gold, None))
    with pytest.raises(IQVAEError, match="codebook"):
        reliability(probs, gold, torch.randn(V + 1, D, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- gumbel-softmax
def test_gumbel_max_frequencies_match_p():
    logits = torch.tensor([0.3, -1.0, 1.2, 0.0, -0.4, 2.0])
    n = 20000
    g = torch.Generator().manual_seed(123)
    y = gumbel_softmax_sample(logits.expand(n, -1), tau=0.7, hard=True, generator=g)
    assert torch.equal(y.sum(-1), torch.ones(n)) and set(y.unique().tolist()) <= {0.0, 1.0}
    counts = y.sum(0).double()
    expected = torch.softmax(logits.double(), -1) * n
    assert chisquare(counts.numpy(), expected.numpy()).pvalue > 0.01
    uniform = torch.full_like(expected, n / len(logits))
    assert chisquare(counts.numpy(), uniform.numpy()).pvalue < 1e-6  # the test can fail


def test_gumbel_softmax_soft_and_straight_through():
    logits = torch.randn(3, 4, 10, requires_grad=True)
    soft = gumbel_softmax_sample(logits, 0.5, hard=False, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(soft.sum(-1), torch.ones(3, 4))
    hard = gumbel_softmax_sample(logits, 0.5, hard=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(hard.detach(), F.one_hot(soft.argmax(-1), 10).float())
    w = torch.randn(10)
    (gs,) = torch.autograd.grad((soft * w).sum(), logits)
    (gh,) = torch.autograd.grad((hard * w).sum(), logits)
    torch.testing.assert_close(gh, gs)  # straight-through: backward of the soft sample
    # same generator seed -> same sample
    again = gumbel_softmax_sample(logits, 0.5, hard=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again, soft)
    with pytest.raises(IQVAEError, match="tau"):
        gumbel_softmax_sample(logits, 0.0)


# ---------------------------------------------------------------------------------------------- schedules
def test_schedules_monotone_with_documented_endpoints():
    steps = list(range(0, 60001, 500))
    for schedule in ("linear", "exponential", "sigmoid", "constant"):
        cfg = GumbelConfig(schedule=schedule, linear_steps=10000, exp_k=0.999, sigmoid_k=500.0, max_rate=1.0)
        rates = [replace_rate(s, cfg) for s in steps]
        assert all(b >= a for a, b in zip(rates, rates[1:])), schedule
        assert all(0.0 <= r <= 1.0 for r in rates)
        assert rates[-1] == pytest.approx(1.0, abs=1e-9)
    lin = GumbelConfig(schedule="linear", linear_steps=10000)
    assert replace_rate(0, lin) == 0 and replace_rate(2500, lin) == pytest.approx(0.25)
    assert replace_rate(10000, lin) == 1
    exp = GumbelConfig(schedule="exponential", exp_k=0.99)
    assert replace_rate(0, exp) == 0 and replace_rate(10, exp) == pytest.approx(1 - 0.99**10)
    sig = GumbelConfig(schedule="sigmoid", sigmoid_k=100.0)
    assert replace_rate(0, sig) == pytest.approx(1 / 101)
    assert teacher_forcing_prob(100 * math.log(100), sig) == pytest.approx(0.5)
    const = GumbelConfig(schedule="constant", max_rate=0.3)
    assert replace_rate(0, const) == replace_rate(10**6, const) == 0.3
    capped = GumbelConfig(schedule="linear", linear_steps=100, max_rate=0.4, warmup_steps=50)
    assert replace_rate(49, capped) == 0 and replace_rate(50, capped) == 0
    assert replace_rate(60, capped) == pytest.approx(0.1) and replace_rate(10**5, capped) == 0.4
    # no overflow far out on the sigmoid
    assert replace_rate(10**9, GumbelConfig(schedule="sigmoid", sigmoid_k=1.0)) == 1.0


def test_tau_schedules():
    for kind in ("exponential", "linear"):
        cfg = GumbelConfig(tau_start=2.0, tau_end=0.5, tau_anneal_steps=1000, tau_schedule=kind)
        vals = [tau(s, cfg) for s in range(0, 2001, 50)]
        assert vals[0] == 2.0 and vals[-1] == pytest.approx(0.5)
        assert all(b <= a for a, b in zip(vals, vals[1:]))
    geo = GumbelConfig(tau_start=2.0, tau_end=0.5, tau_anneal_steps=1000, tau_schedule="exponential")
    assert tau(500, geo) == pytest.approx(1.0)  # geometric midpoint
    lin = GumbelConfig(tau_start=2.0, tau_end=0.5, tau_anneal_steps=1000, tau_schedule="linear")
    assert tau(500, lin) == pytest.approx(1.25)
    assert tau(10**6, GumbelConfig(tau_start=1.5, tau_schedule="constant")) == 1.5


@pytest.mark.parametrize(
    "kw, name",
    [({"every": 0}, "every"), ({"exp_k": 1.0}, "exp_k"), ({"sigmoid_k": 0.5}, "sigmoid_k"),
     ({"max_rate": 1.5}, "max_rate"), ({"pkeep": -0.1}, "pkeep"), ({"tau_end": 0.0}, "tau_end"),
     ({"mode": "nope"}, "mode"), ({"rq_soft_temperature": 0}, "rq_soft_temperature")],
)
def test_config_validation(kw, name):
    with pytest.raises(ConfigError, match=name):
        from_dict(GumbelConfig, kw)


# ---------------------------------------------------------------------------------------------- training loss
def test_threshold_above_one_equals_teacher_forcing_exactly():
    model, cond, image, codebook = setup()
    t_loss, t_grads = teacher(model, cond, image)
    for first_pass_grad in (False, True):
        cfg = GumbelConfig(threshold=1.5, schedule="constant", max_rate=1.0, first_pass_grad=first_pass_grad)
        loss, g, stats = run(model, cond, image, 0, cfg, codebook)
        assert stats["gs_applied"] == 1.0 and stats["gs_candidates"] == 0.0 and stats["gs_replaced"] == 0.0
        assert torch.equal(loss, t_loss)
        assert g.keys() == t_grads.keys()
        for n in g:
            torch.testing.assert_close(g[n], t_grads[n], atol=1e-7, rtol=1e-6, msg=n)


def test_off_steps_are_teacher_forcing():
    model, cond, image, codebook = setup()
    t_loss, t_grads = teacher(model, cond, image)
    cfg = GumbelConfig(every=4, threshold=-2.0, schedule="constant", max_rate=1.0)
    for step in (1, 2, 3, 5, 7):
        loss, g, stats = run(model, cond, image, step, cfg, codebook)
        assert stats["gs_applied"] == 0.0
        assert torch.equal(loss, t_loss)
        for n in g:
            assert torch.equal(g[n], t_grads[n]), n
    # on an application step with everything replaced, the loss differs
    loss, _, stats = run(model, cond, image, 8, cfg, codebook)
    assert stats["gs_applied"] == 1.0 and stats["gs_replaced"] == 1.0 and stats["gs_candidates"] == 1.0
    assert not torch.equal(loss, t_loss)


class FixedModel(nn.Module):
    """Stand-in for GPT whose predictions are known: logits[:, j] puts (almost) all mass on (image[:, j] + 1) % V."""

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.wte_image = nn.Embedding(cfg.image_vocab, cfg.n_embd)
        self.calls = []

    def embed_image_soft(self, probs):
        return probs @ self.wte_image.weight

    def forward(self, cond, image, image_embeds=None):
        self.calls.append(image_embeds)
        return 30.0 * F.one_hot((image + 1) % self.config.image_vocab, self.config.image_vocab).float()


def test_mixing_alignment_and_rate():
    """The input at index j is replaced by a sample from the distribution that predicts token j."""
    fixed = FixedModel(CFG)
    image = torch.randint(0, CFG.image_vocab, (64, CFG.n_image))
    cond = torch.zeros(64, CFG.n_cond, dtype=torch.long)
    cfg = GumbelConfig(threshold=-2.0, schedule="constant", max_rate=0.3)
    mixed, replace, stats = gumbel_mix(fixed, cond, image, 0, cfg, None, torch.Generator().manual_seed(0))
    W = fixed.wte_image.weight
    torch.testing.assert_close(mixed[replace], W[(image[replace] + 1) % CFG.image_vocab])
    torch.testing.assert_close(mixed[~replace], W[image[~replace]])
    # Bernoulli(0.3) per candidate: 512 positions, 5-sigma band
    frac = replace.float().mean().item()
    assert stats["gs_replaced"] == pytest.approx(frac) and abs(frac - 0.3) < 5 * math.sqrt(0.21 / replace.numel())
    # reliability of this model w.r.t. orthonormal codes is ~0: with the paper's threshold nothing is a candidate
    _, replace2, stats2 = gumbel_mix(fixed, cond, image, 0, dataclasses.replace(cfg, threshold=0.9), None)
    assert not replace2.any() and stats2["gs_candidates"] == 0.0


class Recorder(nn.Module):
    """Wraps GPT and keeps every forward's logits (with retain_grad) to inspect pass-1 gradients."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config
        self.outputs = []

    @property
    def wte_image(self):
        return self.model.wte_image

    def embed_image_soft(self, probs):
        return self.model.embed_image_soft(probs)

    def forward(self, cond, image, image_embeds=None):
        out = self.model(cond, image, image_embeds=image_embeds)
        if out.requires_grad:
            out.retain_grad()
        self.outputs.append(out)
        return out


@pytest.mark.parametrize("hard", [True, False])
def test_first_pass_gradient_flag(hard):
    model, cond, image, codebook = setup()
    cfg = GumbelConfig(threshold=-2.0, schedule="constant", max_rate=0.5, hard=hard)
    results = {}
    for flag in (False, True):
        rec = Recorder(model)
        model.zero_grad()
        c = dataclasses.replace(cfg, first_pass_grad=flag)
        gen = torch.Generator().manual_seed(5)
        mixed, replace, _ = gumbel_mix(rec, cond, image, 0, c, codebook, gen)
        loss = F.cross_entropy(rec(cond, image, image_embeds=mixed).reshape(-1, CFG.image_vocab), image.reshape(-1))
        loss.backward()
        pass1 = rec.outputs[0]
        results[flag] = (loss.detach(), grads(model), replace)
        if not flag:
            assert not pass1.requires_grad and pass1.grad is None
        else:
            g = pass1.grad.abs().sum(-1)  # (B, t)
            used = replace.clone()
            used[:, -1] = False  # the last input column is never fed to the network
            assert replace.any() and (~replace).any()
            assert (g[used] > 0).all(), "gradient must reach pass-1 logits at replaced positions"
            assert (g[~used] == 0).all(), "no gradient at gold positions"
    (l0, g0, r0), (l1, g1, r1) = results[False], results[True]
    assert torch.equal(r0, r1)  # same random draws
    if hard:  # straight-through: identical forward value, different backward
        assert torch.equal(l0, l1)
    assert any(not torch.allclose(g0[n], g1[n]) for n in g0 if n.startswith("blocks"))


@pytest.mark.parametrize("step", [0, 60, 200])
def test_token_fast_path_equals_straight_through_embeddings(step):
    """Defaults (hard, no first-pass gradient): feeding sampled ids gives the embedding path's loss and gradients."""
    model, cond, image, codebook = setup(B=8)
    cfg = GumbelConfig(threshold=-0.5, schedule="linear", linear_steps=200)
    fast = run(model, cond, image, step, cfg, codebook, seed=11)
    slow = run(model, cond, image, step, cfg, codebook, seed=11, token_fast_path=False)
    assert fast[2] == slow[2]  # same draws: same candidates, same replaced fraction
    if step:
        assert 0.0 < fast[2]["gs_replaced"] <= fast[2]["gs_candidates"] <= 1.0
    torch.testing.assert_close(fast[0], slow[0], atol=1e-6, rtol=1e-6)
    assert fast[1].keys() == slow[1].keys()
    for n in fast[1]:
        torch.testing.assert_close(fast[1][n], slow[1][n], atol=1e-6, rtol=1e-5, msg=n)
    # the replaced ids are the argmax of the straight-through samples of the embedding path
    tokens, replace, _ = gumbel_mix_tokens(model, cond, image, step, cfg, codebook, torch.Generator().manual_seed(11))
    mixed, replace2, _ = gumbel_mix(model, cond, image, step, cfg, codebook, torch.Generator().manual_seed(11))
    assert torch.equal(replace, replace2)
    torch.testing.assert_close(mixed, model.wte_image(tokens), atol=1e-7, rtol=0)
    with pytest.raises(IQVAEError, match="first_pass_grad"):
        gumbel_mix_tokens(model, cond, image, step, dataclasses.replace(cfg, first_pass_grad=True), codebook)


def test_training_loss_gumbel_stats_and_determinism():
    model, cond, image, codebook = setup()
    cfg = GumbelConfig(threshold=-2.0, schedule="linear", linear_steps=100, tau_start=1.0, tau_end=0.5,
                       tau_anneal_steps=100, hard=False)
    l1, _, s1 = run(model, cond, image, 40, cfg, codebook, seed=3)
    l2, _, s2 = run(model, cond, image, 40, cfg, codebook, seed=3)
    assert torch.equal(l1, l2) and s1 == s2
    assert set(s1) == {"gs_candidates", "gs_replaced", "gs_tau", "gs_rate", "gs_applied"}
    assert s1["gs_rate"] == pytest.approx(0.4) and s1["gs_tau"] == pytest.approx(0.5**0.4)
    # the defaults (hard samples, no gradient into pass 1): tau acts on nothing, so it is not logged
    _, _, s3 = run(model, cond, image, 40, dataclasses.replace(cfg, hard=True), codebook, seed=3)
    assert set(s3) == {"gs_candidates", "gs_replaced", "gs_rate", "gs_applied"}
    _, _, s4 = run(model, cond, image, 41, dataclasses.replace(cfg, hard=True), codebook, seed=3)
    assert s4 == {"gs_candidates": 0.0, "gs_replaced": 0.0, "gs_rate": pytest.approx(0.41), "gs_applied": 0.0}


@pytest.mark.parametrize("name, value", [("tau_start", 2.0), ("tau_end", 0.1), ("tau_anneal_steps", 100),
                                         ("tau_schedule", "linear")])
def test_tau_options_refuse_a_value_where_tau_cannot_act(name, value):
    with pytest.raises(ConfigError, match=f"'gumbel.{name}' has no effect with gumbel.hard=true"):
        from_dict(GumbelConfig, {name: value})
    from_dict(GumbelConfig, {name: value, "hard": False})
    from_dict(GumbelConfig, {name: value, "first_pass_grad": True})
    defaults = GumbelConfig()
    from_dict(GumbelConfig, {name: getattr(defaults, name)})  # the default value is accepted
    with pytest.raises(ConfigError, match="unknown option 'token_fast_path'"):  # a function argument now
        from_dict(GumbelConfig, {"token_fast_path": False})


def test_pkeep_one_equals_teacher_and_zero_corrupts():
    model, cond, image, codebook = setup()
    t_loss, t_grads = teacher(model, cond, image)
    loss, g, stats = run(model, cond, image, 3, GumbelConfig(mode="pkeep", pkeep=1.0), None)
    assert torch.equal(loss, t_loss) and stats["pk_replaced"] == 0.0
    for n in g:
        assert torch.equal(g[n], t_grads[n]), n
    loss0, _, stats0 = run(model, cond, image, 3, GumbelConfig(mode="pkeep", pkeep=0.0), None)
    assert stats0["pk_replaced"] == 1.0 and not torch.equal(loss0, t_loss)
    # pkeep replaces inputs only: oracle = teacher loss on the corrupted input
    gen = torch.Generator().manual_seed(0)
    keep = torch.rand(image.shape, generator=gen) < 0.0
    noise = torch.randint(0, CFG.image_vocab, image.shape, generator=gen)
    oracle = F.cross_entropy(model(cond, torch.where(keep, image, noise)).reshape(-1, 12), image.reshape(-1))
    torch.testing.assert_close(loss0, oracle.detach())


def test_teacher_mode():
    model, cond, image, codebook = setup()
    t_loss, _ = teacher(model, cond, image)
    loss, _, stats = run(model, cond, image, 0, GumbelConfig(mode="teacher"), codebook)
    assert torch.equal(loss, t_loss) and stats == {}


def test_rq_soft_targets_and_limits():
    model, cond, image, codebook = setup()
    q = rq_soft_targets(image, codebook, 0.7)
    b, j = 1, 2
    d2 = ((codebook[image[b, j]] - codebook) ** 2).sum(-1)
    torch.testing.assert_close(q[b, j], torch.softmax(-d2 / 0.7, -1), atol=1e-5, rtol=1e-4)
    t_loss, _ = teacher(model, cond, image)
    # tiny temperature: q is one-hot at the gold code, samples equal gold -> teacher forcing
    cold = GumbelConfig(mode="rq-soft", rq_soft_temperature=1e-6)
    loss, _, stats = run(model, cond, image, 0, cold, codebook)
    assert stats["rq_changed"] == 0.0
    torch.testing.assert_close(loss, t_loss, atol=1e-5, rtol=1e-5)
    # both features off -> exactly teacher forcing
    off = GumbelConfig(mode="rq-soft", rq_soft_labels=False, rq_stochastic_codes=False)
    assert torch.equal(run(model, cond, image, 0, off, codebook)[0], t_loss)
    # soft labels only: loss = soft cross-entropy against q with gold inputs
    soft = GumbelConfig(mode="rq-soft", rq_soft_temperature=2.0, rq_stochastic_codes=False)
    q2 = rq_soft_targets(image, codebook, 2.0)
    expect = -(q2 * torch.log_softmax(model(cond, image), -1)).sum(-1).mean()
    torch.testing.assert_close(run(model, cond, image, 0, soft, codebook)[0], expect.detach())
    # warm temperature: stochastic codes do change some inputs
    warm = GumbelConfig(mode="rq-soft", rq_soft_temperature=50.0)
    assert run(model, cond, image, 0, warm, codebook)[2]["rq_changed"] > 0
    with pytest.raises(IQVAEError, match="codebook"):
        training_loss(model, cond, image, 0, cold, None)
