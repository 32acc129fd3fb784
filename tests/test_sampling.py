import math

import pytest
import torch
from scipy.stats import chisquare

from iqvae.errors import IQVAEError
from iqvae.models.gpt import GPT, GPTConfig
from iqvae.sampling import filter_logits, generate, generate_reference, sample_next, validate_sampling_args


def brute_filter(row: list[float], top_k, top_p) -> list[bool]:
    """Kept-mask of one row by plain Python sorting (oracle for filter_logits)."""
    V = len(row)
    order = sorted(range(V), key=lambda i: -row[i])
    keep = [True] * V
    if top_k is not None and top_k < V:
        kth = row[order[top_k - 1]]
        keep = [x >= kth for x in row]
    if top_p is not None and top_p < 1.0:
        kept = [i for i in order if keep[i]]
        z = sum(math.exp(row[i]) for i in kept)
        mass = 0.0
        new = [False] * V
        for i in kept:
            if mass < top_p:
                new[i] = True
            mass += math.exp(row[i]) / z
        keep = new
    return keep


@pytest.mark.parametrize(
    "top_k, top_p", [(None, None), (1, None), (5, None), (40, None), (None, 0.3), (None, 0.9), (7, 0.5), (3, 1.0)]
)
def test_filter_logits_matches_brute_force(top_k, top_p):
    logits = torch.randn(6, 20, dtype=torch.float64) * 2
    out = filter_logits(logits, top_k, top_p)
    for b in range(logits.shape[0]):
        keep = brute_filter(logits[b].tolist(), top_k, top_p)
        got = torch.isfinite(out[b]).tolist()
        assert got == keep
        torch.testing.assert_close(out[b][torch.isfinite(out[b])], logits[b][torch.tensor(keep)])


@pytest.mark.parametrize("top_k, top_p, min_p", [(None, None, 0.05), (None, None, 0.5), (5, None, 0.2),
                                                 (None, 0.9, 0.1), (7, 0.5, 0.3), (None, None, 1.0)])
def test_filter_min_p_matches_brute_force(top_k, top_p, min_p):
    """min-p oracle: after top-k / top-p, keep a survivor iff its renormalised probability is >= min_p times the
    largest renormalised probability (computed in plain Python)."""
    logits = torch.randn(6, 20, dtype=torch.float64) * 2
    out = filter_logits(logits, top_k, top_p, min_p)
    for b in range(logits.shape[0]):
        row = logits[b].tolist()
        keep = brute_filter(row, top_k, top_p)
        z = sum(math.exp(x) for x, k in zip(row, keep) if k)
        probs = [math.exp(x) / z if k else 0.0 for x, k in zip(row, keep)]
        keep = [k and p >= min_p * max(probs) for k, p in zip(keep, probs)]
        assert torch.isfinite(out[b]).tolist() == keep
        torch.testing.assert_close(out[b][torch.isfinite(out[b])], logits[b][torch.tensor(keep)])


def test_filter_min_p_keeps_comparable_modes():
    """Three about-equal options survive min-p 0.3 whatever their share, the tail does not; min-p 0 / None is off."""
    probs = torch.tensor([[0.30, 0.28, 0.26, 0.08, 0.05, 0.03]])
    assert torch.isfinite(filter_logits(probs.log(), min_p=0.3)).tolist() == [[True] * 3 + [False] * 3]
    assert torch.isfinite(filter_logits(probs.log(), min_p=0.15)).tolist() == [[True] * 5 + [False]]
    # top-p 0.5 on the same row cuts one of the three options
    assert torch.isfinite(filter_logits(probs.log(), top_p=0.5)).tolist() == [[True, True] + [False] * 4]
    for off in (None, 0, 0.0):
        torch.testing.assert_close(filter_logits(probs.log(), min_p=off), probs.log())


def test_filter_top_p_keeps_minimal_set():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = filter_logits(probs.log(), top_p=0.8)
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    out = filter_logits(probs.log(), top_p=0.81)
    assert torch.isfinite(out).tolist() == [[True, True, True, False]]
    out = filter_logits(probs.log(), top_p=0.1)  # the top token always survives
    assert torch.isfinite(out).tolist() == [[True, False, False, False]]


def test_top_k_larger_than_vocab_is_clamped():
    logits = torch.randn(2, 10)
    torch.testing.assert_close(filter_logits(logits, top_k=1000), logits)


def test_top_k_one_is_greedy():
    logits = torch.randn(64, 50)
    g = torch.Generator().manual_seed(1)
    assert torch.equal(sample_next(logits, top_k=1, temperature=0.7, generator=g), logits.argmax(-1))


def test_sample_next_frequencies_match_softmax():
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5, 2.0]])
    temperature = 1.7
    n = 20000
    g = torch.Generator().manual_seed(0)
    draws = sample_next(logits.expand(n, -1), temperature=temperature, generator=g)
    counts = torch.bincount(draws, minlength=5).double()
    expected = torch.softmax(logits[0].double() / temperature, -1) * n
    assert chisquare(counts.numpy(), expected.numpy()).pvalue > 0.01
    # and a different temperature is detectably different (the test can fail)
    expected_t1 = torch.softmax(logits[0].double(), -1) * n
    assert chisquare(counts.numpy(), expected_t1.numpy()).pvalue < 1e-6


def test_temperature_scaling_is_logit_division():
    logits = torch.randn(4, 30)
    for temp in (0.5, 2.0):
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        a = sample_next(logits, top_k=10, temperature=temp, generator=g1)
        b = sample_next(logits / temp, top_k=10, temperature=1.0, generator=g2)
        assert torch.equal(a, b)


def test_sample_respects_filter():
    logits = torch.randn(2000, 30)
    g = torch.Generator().manual_seed(0)
    tok = sample_next(logits, top_k=3, top_p=0.6, generator=g)
    allowed = torch.isfinite(filter_logits(logits, 3, 0.6))
    assert allowed.gather(1, tok[:, None]).all()


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"top_k": 0, "top_p": None, "temperature": 1.0}, "top_k must be an integer >= 1"),
        ({"top_k": 2.5, "top_p": None, "temperature": 1.0}, "top_k"),
        ({"top_k": None, "top_p": 0.0, "temperature": 1.0}, r"top_p must be in \(0, 1\]"),
        ({"top_k": None, "top_p": 1.5, "temperature": 1.0}, "top_p"),
        ({"top_k": None, "top_p": None, "temperature": 0.0}, "temperature must be a number > 0"),
        ({"top_k": None, "top_p": None, "temperature": -1}, "temperature"),
        ({"top_k": None, "top_p": None, "temperature": 1.0, "min_p": 1.5}, r"min_p must be in \[0, 1\]"),
        ({"top_k": None, "top_p": None, "temperature": 1.0, "min_p": -0.1}, "min_p"),
    ],
)
def test_argument_validation(kwargs, word):
    with pytest.raises(IQVAEError, match=word):
        validate_sampling_args(**kwargs)
    cfg = GPTConfig(cond_vocab=5, image_vocab=6, n_cond=2, n_image=2, n_layer=1, n_head=1, n_embd=8)
    with pytest.raises(IQVAEError, match=word):
        generate(GPT(cfg), torch.zeros(1, 2, dtype=torch.long), **kwargs)


CONFIGS = [
    dict(cond_vocab=9, image_vocab=17, n_cond=4, n_image=9, n_layer=2, n_head=2, n_embd=16),
    dict(cond_vocab=3, image_vocab=40, n_cond=1, n_image=6, n_layer=3, n_head=4, n_embd=32, bias=False),
    dict(cond_vocab=20, image_vocab=8, n_cond=7, n_image=5, n_layer=1, n_head=1, n_embd=8),
    dict(cond_vocab=9, image_vocab=17, n_cond=6, n_image=6, n_layer=2, n_head=2, n_embd=16, cond_align=True),
    dict(cond_vocab=9, image_vocab=17, n_cond=3, n_image=6, n_layer=2, n_head=2, n_embd=16, cond_align=True),
    dict(cond_vocab=9, image_vocab=17, n_cond=6, n_image=6, n_layer=2, n_head=2, n_embd=16, cond_align=True,
         above_input=True, image_grid=[2, 3]),
    dict(cond_vocab=9, image_vocab=17, n_cond=5, n_image=8, n_layer=2, n_head=2, n_embd=16, above_input=True,
         image_grid=[2, 2, 2]),
    dict(cond_vocab=9, image_vocab=17, n_cond=12, n_image=12, n_layer=2, n_head=2, n_embd=16, cond_align=True,
         above_input=True, above_window=3, image_grid=[3, 4]),
    dict(cond_vocab=9, image_vocab=17, n_cond=5, n_image=12, n_layer=2, n_head=2, n_embd=16, above_input=True,
         above_window=2, image_grid=[2, 3, 2]),
]


@pytest.mark.parametrize("cfg_kw", CONFIGS)
@pytest.mark.parametrize("top_k, top_p, temperature, min_p", [(None, None, 1.0, None), (5, 0.9, 0.8, None),
                                                              (None, None, 1.0, 0.05)])
def test_cached_generate_matches_reference(cfg_kw, top_k, top_p, temperature, min_p):
    cfg = GPTConfig(**cfg_kw)
    model = GPT(cfg)
    with torch.no_grad():  # larger weights so logits vary strongly between steps
        for p in model.parameters():
            p.mul_(8.0)
    B = 4
    cond = torch.randint(0, cfg.cond_vocab, (B, cfg.n_cond))
    kw = dict(top_k=top_k, top_p=top_p, temperature=temperature, return_logits=True, min_p=min_p)
    tok, logits = generate(model, cond, generator=torch.Generator().manual_seed(7), **kw)
    tok_r, logits_r = generate_reference(model, cond, generator=torch.Generator().manual_seed(7), **kw)
    assert tok.shape == (B, cfg.n_image) and logits.shape == (B, cfg.n_image, cfg.image_vocab)
    torch.testing.assert_close(logits, logits_r, atol=1e-4, rtol=0)
    assert torch.equal(tok, tok_r)
    # the samples are genuinely stochastic: another seed gives other tokens
    other = generate(model, cond, generator=torch.Generator().manual_seed(8), top_k=top_k, top_p=top_p,
                     min_p=min_p)
    assert not torch.equal(other, tok)
    # the returned logits are those of the sampled prefix: re-scoring with the training forward reproduces them
    torch.testing.assert_close(model(cond, tok), logits, atol=1e-4, rtol=0)


def test_generate_restores_training_mode_and_greedy_is_deterministic():
    cfg = GPTConfig(**CONFIGS[0])
    model = GPT(cfg).train()
    cond = torch.randint(0, cfg.cond_vocab, (2, cfg.n_cond))
    a = generate(model, cond, top_k=1)
    b = generate_reference(model, cond, top_k=1)
    assert model.training
    assert torch.equal(a, b)
    with pytest.raises(IQVAEError, match="cond"):
        generate(model, cond[:, :2])
