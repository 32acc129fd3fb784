"""Oracle tests for iqvae.models.quantize (VectorQuantizer, ResidualQuantizer)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from iqvae.errors import ConfigError, IQVAEError
from iqvae.models.quantize import QuantizerOutput, ResidualQuantizer, VectorQuantizer, perplexity_of_counts

D64 = torch.float64


def _flat(z: torch.Tensor) -> torch.Tensor:
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def _brute_argmin(v: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return ((v[:, None, :] - codebook[None, :, :]) ** 2).sum(-1).argmin(1)


def _clustered(n_clusters: int, dim: int, per: int, spread: float = 0.05, scale: float = 5.0) -> torch.Tensor:
    centres = torch.randn(n_clusters, dim) * scale
    pts = centres.repeat_interleave(per, 0) + spread * torch.randn(n_clusters * per, dim)
    return pts[torch.randperm(len(pts))]


def _as_map(flat: torch.Tensor, h: int = 4) -> torch.Tensor:
    """(N, D) -> (N / h^2, D, h, h)."""
    return flat.view(-1, h, h, flat.shape[1]).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------------------------- VQ: search / ST


def test_indices_are_brute_force_argmin_and_z_q_is_codebook_rows():
    vq = VectorQuantizer(32, 6).double().eval()
    with torch.no_grad():
        vq.weight.normal_()
    z = torch.randn(3, 6, 5, 4, dtype=D64)
    out = vq(z)
    assert isinstance(out, QuantizerOutput)
    assert out.indices.shape == (3, 5, 4) and out.indices.dtype == torch.int64
    assert torch.equal(out.indices.flatten(), _brute_argmin(_flat(z), vq.weight))
    assert out.z_q.shape == z.shape
    # z + (e - z) equals e up to one rounding
    torch.testing.assert_close(_flat(out.z_q), vq.weight[out.indices.flatten()].detach(), rtol=0, atol=1e-14)
    torch.testing.assert_close(vq.embed(out.indices), out.z_q.detach(), rtol=0, atol=1e-14)


def test_straight_through_gradient_is_identity():
    vq = VectorQuantizer(16, 4)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    vq(z).z_q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))
    assert vq.weight.grad is None  # z_q carries no gradient to the codebook


def test_loss_value_and_gradients_match_closed_form():
    """Loss = mean||sg(z)-e||^2 + beta mean||z-sg(e)||^2: codebook grad 2(e-z)/M, encoder grad 2 beta (z-e)/M."""
    beta = 0.37
    vq = VectorQuantizer(5, 3, beta=beta).double()
    with torch.no_grad():
        vq.weight.copy_(torch.randn(5, 3, dtype=D64))
    z = torch.randn(2, 3, 2, 2, dtype=D64, requires_grad=True)
    out = vq(z)
    flat = _flat(z).detach()
    e = vq.weight.detach()[_brute_argmin(flat, vq.weight.detach())]
    m = flat.numel()
    sq = ((flat - e) ** 2).sum() / m
    assert out.loss.item() == pytest.approx((1 + beta) * sq.item(), rel=1e-12)

    g_z, g_w = torch.autograd.grad(out.loss, (z, vq.weight))
    expected_gz = (2 * beta * (flat - e) / m).view(2, 2, 2, 3).permute(0, 3, 1, 2)
    torch.testing.assert_close(g_z, expected_gz, rtol=1e-12, atol=1e-15)
    expected_gw = torch.zeros(5, 3, dtype=D64).index_add_(0, _brute_argmin(flat, vq.weight.detach()),
                                                          2 * (e - flat) / m)
    torch.testing.assert_close(g_w, expected_gw, rtol=1e-12, atol=1e-15)

    # Numerically, each gradient equals the finite-difference derivative of ONE term only (assignment fixed).
    eps = 1e-6
    codebook_term = lambda w: ((flat - w[_brute_argmin(flat, vq.weight.detach())]) ** 2).sum() / m  # noqa: E731
    w0 = vq.weight.detach().clone()
    i = int(_brute_argmin(flat, w0)[0])
    bump = torch.zeros_like(w0)
    bump[i, 1] = eps
    fd = (codebook_term(w0 + bump) - codebook_term(w0 - bump)) / (2 * eps)
    assert g_w[i, 1].item() == pytest.approx(fd.item(), rel=1e-6)
    commit_term = lambda f: beta * ((f - e) ** 2).sum() / m  # noqa: E731
    bump = torch.zeros_like(flat)
    bump[3, 2] = eps
    fd = (commit_term(flat + bump) - commit_term(flat - bump)) / (2 * eps)
    assert _flat(g_z)[3, 2].item() == pytest.approx(fd.item(), rel=1e-6)


def test_l2_mode_returns_unit_vectors_and_uses_cosine_neighbours():
    vq = VectorQuantizer(20, 5, l2_norm=True).double().eval()
    with torch.no_grad():
        vq.weight.normal_(std=3.0)
    z = torch.randn(2, 5, 3, 3, dtype=D64) * 7
    out = vq(z)
    torch.testing.assert_close(out.z_q.norm(dim=1), torch.ones(2, 3, 3, dtype=D64))
    torch.testing.assert_close(vq.codebook.norm(dim=1), torch.ones(20, dtype=D64))
    cos = F.normalize(_flat(z), dim=1) @ F.normalize(vq.weight, dim=1).T
    assert torch.equal(out.indices.flatten(), cos.argmax(1))
    zn = F.normalize(_flat(z), dim=1)
    e = vq.codebook.detach()[out.indices.flatten()]
    assert out.loss.item() == pytest.approx(1.25 * ((zn - e) ** 2).mean().item(), rel=1e-12)


# ----------------------------------------------------------------------------------------------- stats


def test_perplexity_is_k_for_uniform_and_one_for_a_single_code():
    vq = VectorQuantizer(8, 2).double().eval()
    with torch.no_grad():
        vq.weight.copy_(torch.randn(8, 2, dtype=D64) * 10)
    uniform = _as_map(vq.weight.detach().repeat(2, 1), h=4)  # every code exactly twice
    out = vq(uniform)
    assert out.perplexity.item() == pytest.approx(8.0, rel=1e-6)
    assert out.usage.item() == 1.0
    single = _as_map(vq.weight.detach()[3:4].repeat(16, 1), h=4)
    out = vq(single)
    assert out.perplexity.item() == pytest.approx(1.0, rel=1e-6)
    assert out.usage.item() == pytest.approx(1 / 8)
    counts = torch.tensor([3.0, 1.0, 0.0])
    p = torch.tensor([0.75, 0.25])
    assert perplexity_of_counts(counts).item() == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-6)


def test_codebook_stats_follow_the_ema_counts():
    vq = VectorQuantizer(4, 2, usage_decay=0.5)
    assert vq.codebook_stats()["num_updates"] == 0
    with torch.no_grad():
        vq.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [-10.0, 0.0]]))
    batch = _as_map(torch.tensor([[0.1, 0.0]] * 8 + [[9.0, 0.0]] * 8), h=4)  # codes 0 and 1, 8 each
    vq.train()
    vq(batch)
    torch.testing.assert_close(vq.ema_usage, torch.tensor([8.0, 8.0, 0.0, 0.0]))
    vq(_as_map(torch.tensor([[0.1, 0.0]] * 16), h=4))
    torch.testing.assert_close(vq.ema_usage, torch.tensor([12.0, 4.0, 0.0, 0.0]))  # 0.5 * old + 0.5 * new
    stats = vq.codebook_stats()
    assert stats["usage"] == 0.5 and stats["num_updates"] == 2
    assert stats["perplexity"] == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    vq.eval()
    vq(batch)
    assert vq.codebook_stats()["num_updates"] == 2  # eval mode leaves the statistics alone


# ----------------------------------------------------------------------------------------------- init / restarts


def _quant_error(q, data: torch.Tensor) -> float:
    q.eval()
    with torch.no_grad():
        return F.mse_loss(q(_as_map(data)).z_q, _as_map(data)).item()


def test_kmeans_init_beats_random_init_on_clustered_data():
    data = _clustered(16, 8, 64)
    random_vq = VectorQuantizer(16, 8)
    kmeans_vq = VectorQuantizer(16, 8, kmeans_init=True, kmeans_iters=10)
    kmeans_vq.train()
    kmeans_vq(_as_map(data))
    assert bool(kmeans_vq.kmeans_done)
    err_random, err_kmeans = _quant_error(random_vq, data), _quant_error(kmeans_vq, data)
    assert err_kmeans < 0.05 * err_random
    # once done it is not redone (e.g. after restoring a checkpoint)
    before = kmeans_vq.weight.detach().clone()
    kmeans_vq.train()
    with torch.no_grad():
        kmeans_vq(_as_map(data + 100))
    assert torch.equal(kmeans_vq.weight.detach(), before)


def test_spherical_kmeans_init_in_l2_mode():
    directions = F.normalize(torch.randn(8, 6), dim=1)
    data = (directions.repeat_interleave(32, 0) + 0.02 * torch.randn(256, 6)) * torch.rand(256, 1).add(0.5)
    vq = VectorQuantizer(16, 6, l2_norm=True, kmeans_init=True).train()  # more codes than modes, as in practice
    vq(_as_map(data))
    vq.eval()
    cos = (F.normalize(data, dim=1) * _flat(vq(_as_map(data)).z_q).detach()).sum(1)
    assert cos.min().item() > 0.99


def test_dead_code_restart_revives_unused_codes():
    data = _clustered(8, 4, 32)

    def run(threshold: float) -> tuple[float, float]:
        torch.manual_seed(1)
        vq = VectorQuantizer(16, 4, dead_code_threshold=threshold).train()
        with torch.no_grad():
            vq.weight.fill_(20.0)  # collapsed codebook: identical codes, ties go to code 0, 15 codes dead
        opt = torch.optim.SGD(vq.parameters(), lr=0.0)  # no learning: only restarts can change the codebook
        for _ in range(5):
            out = vq(_as_map(data))
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        return out.usage.item(), _quant_error(vq, data)
    usage_off, err_off = run(0.0)
    usage_on, err_on = run(1.0)
    assert usage_off == 1 / 16
    assert usage_on >= 8 / 16  # (8 clusters)
    assert err_on < 0.1 * err_off


def test_restarted_codes_get_a_fair_share_grace_period():
    """Restart sets a code's EMA count to N / K before blending in the batch: closed-form EMA afterwards."""
    data = _as_map(_clustered(4, 3, 16))  # N = 64 vectors
    vq = VectorQuantizer(8, 3, dead_code_threshold=2.0, usage_decay=0.9).train()
    with torch.no_grad():
        vq.weight.fill_(50.0)
    vq(data)  # first update: EMA = counts = [64, 0, ..., 0]; no restart yet
    torch.testing.assert_close(vq.ema_usage, torch.tensor([64.0] + [0.0] * 7))
    restarted = vq.weight.detach()[1:].clone()
    out = vq(data)  # codes 1..7 are dead (0 < 2): restarted to encoder outputs of this batch
    assert not torch.equal(vq.weight.detach()[1:], restarted)
    assert all(any(torch.equal(w, v) for v in _flat(data)) for w in vq.weight.detach()[1:])
    counts = torch.bincount(out.indices.flatten(), minlength=8).float()
    expected = torch.cat([torch.tensor([0.9 * 64.0]), torch.full((7,), 0.9 * 64 / 8)]) + 0.1 * counts
    torch.testing.assert_close(vq.ema_usage, expected)
    before = vq.weight.detach().clone()
    vq(data)  # grace period: nothing is below the threshold any more, so nothing moves
    assert torch.equal(vq.weight.detach(), before)


def test_restart_is_deterministic_under_manual_seed():
    data = _as_map(torch.randn(64, 4))
    weights = []
    for _ in range(2):
        torch.manual_seed(5)
        vq = VectorQuantizer(32, 4, dead_code_threshold=0.5).train()
        vq(data)
        vq(data)
        weights.append(vq.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])


# ----------------------------------------------------------------------------------------------- RQ


def test_rq_depth_one_equals_vq_with_the_same_codebook():
    vq = VectorQuantizer(12, 5, beta=0.3).double()
    rq = ResidualQuantizer(12, 5, depth=1, beta=0.3).double()
    with torch.no_grad():
        vq.weight.normal_()
        rq.weight.copy_(vq.weight)
    z = torch.randn(2, 5, 3, 3, dtype=D64, requires_grad=True)
    a, b = vq(z), rq(z)
    assert torch.equal(a.indices, b.indices[..., 0])
    torch.testing.assert_close(a.z_q, b.z_q, rtol=0, atol=0)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-14, atol=0)
    ga = torch.autograd.grad(a.loss, (z, vq.weight))
    gb = torch.autograd.grad(b.loss, (z, rq.weight))
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-14, atol=0)


def test_rq_matches_a_loop_reference_and_closed_form_loss():
    depth, beta = 3, 0.25
    rq = ResidualQuantizer(10, 4, depth=depth, beta=beta).double()
    with torch.no_grad():
        rq.weight.normal_()
    z = torch.randn(2, 4, 2, 3, dtype=D64, requires_grad=True)
    out = rq(z)
    flat = _flat(z).detach()
    w = rq.weight.detach()
    r, partial, codes, loss = flat.clone(), torch.zeros_like(flat), [], 0.0
    for _ in range(depth):
        k = _brute_argmin(r, w)
        codes.append(k)
        r = r - w[k]
        partial = partial + w[k]
        loss += (1 + beta) * ((flat - partial) ** 2).mean().item()  # codebook + beta * commitment, same value
    assert torch.equal(out.indices.reshape(-1, depth), torch.stack(codes, 1))
    torch.testing.assert_close(_flat(out.z_q).detach(), partial)
    torch.testing.assert_close(rq.embed(out.indices), out.z_q.detach())
    assert out.loss.item() == pytest.approx(loss, rel=1e-12)
    # gradients: encoder gets beta * sum_d 2 (z - zhat_d) / M, each code pulled toward its residuals
    m = flat.numel()
    g_z, g_w = torch.autograd.grad(out.loss, (z, rq.weight))
    r, partial = flat.clone(), torch.zeros_like(flat)
    exp_gz, exp_gw = torch.zeros_like(flat), torch.zeros_like(w)
    for k in codes:
        exp_gw.index_add_(0, k, 2 * (w[k] - r) / m)
        r = r - w[k]
        partial = partial + w[k]
        exp_gz += 2 * beta * (flat - partial) / m
    torch.testing.assert_close(_flat(g_z), exp_gz, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(g_w, exp_gw, rtol=1e-12, atol=1e-15)
    # straight-through
    z.grad = None
    rq(z).z_q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


def test_rq_reconstruction_error_is_non_increasing_in_depth():
    rq = ResidualQuantizer(32, 6, depth=6).eval()
    with torch.no_grad():
        rq.weight.normal_(std=0.7)
    z = torch.randn(4, 6, 4, 4)
    idx = rq(z).indices
    errors = [F.mse_loss(rq.embed(idx[..., : d + 1]), z).item() for d in range(6)]
    assert errors[0] < F.mse_loss(torch.zeros_like(z), z).item()
    assert all(b <= a + 1e-7 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.8 * errors[0]


def test_rq_kmeans_init_and_restart():
    data = _clustered(8, 4, 32)
    plain = ResidualQuantizer(16, 4, depth=2)
    km = ResidualQuantizer(16, 4, depth=2, kmeans_init=True).train()
    km(_as_map(data))
    assert _quant_error(km, data) < 0.05 * _quant_error(plain, data)

    torch.manual_seed(2)
    rq = ResidualQuantizer(16, 4, depth=2, dead_code_threshold=1.0).train()
    with torch.no_grad():
        rq.weight.fill_(20.0)
    first, err_first = rq(_as_map(data)).usage.item(), _quant_error(rq, data)
    rq.train()
    for _ in range(4):
        last = rq(_as_map(data)).usage.item()
    assert first == 1 / 16 and last >= 5 / 16  # revived codes from the pooled residuals of both depths
    assert _quant_error(rq, data) < 0.2 * err_first


# ----------------------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("make", [lambda: VectorQuantizer(16, 4, l2_norm=True, dead_code_threshold=0.5,
                                                          kmeans_init=True),
                                  lambda: ResidualQuantizer(16, 4, depth=3, dead_code_threshold=0.5,
                                                            kmeans_init=True)])
def test_state_dict_round_trip_through_safetensors(make, tmp_path):
    q = make().train()
    data = _as_map(torch.randn(64, 4))
    for _ in range(3):
        q(data)
    assert set(q.state_dict()) == {"weight", "ema_usage", "num_updates", "kmeans_done"}
    save_file(q.state_dict(), str(tmp_path / "q.safetensors"))
    restored = make()
    restored.load_state_dict(load_file(str(tmp_path / "q.safetensors")))
    assert restored.codebook_stats() == q.codebook_stats()
    # identical outputs in eval mode, and identical training steps (no k-means re-init, same restarts)
    for mode in ("eval", "train"):
        getattr(q, mode)()
        getattr(restored, mode)()
        torch.manual_seed(3)
        a = q(data)
        torch.manual_seed(3)
        b = restored(data)
        assert torch.equal(a.indices, b.indices)
        assert torch.equal(a.z_q, b.z_q) and torch.equal(a.loss, b.loss)
    assert torch.equal(q.weight, restored.weight) and torch.equal(q.ema_usage, restored.ema_usage)


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("cls,kw", [(VectorQuantizer, {}), (ResidualQuantizer, {"depth": 2})])
def test_shape_and_index_errors(cls, kw):
    q = cls(8, 4, **kw)
    with pytest.raises(IQVAEError, match=r"\(B, 4, H, W\).*\(2, 3, 5, 5\)"):
        q(torch.randn(2, 3, 5, 5))
    with pytest.raises(IQVAEError, match=r"\(B, 4, H, W\).*\(2, 4, 5\)"):
        q(torch.randn(2, 4, 5))
    shape = (1, 2, 2) + ((2,) if cls is ResidualQuantizer else ())
    with pytest.raises(IQVAEError, match=r"\[0, 8\)"):
        q.embed(torch.full(shape, 8))
    with pytest.raises(IQVAEError, match=r"\[0, 8\)"):
        q.embed(torch.full(shape, -1))
    with pytest.raises(IQVAEError, match="integer"):
        q.embed(torch.zeros(shape))
    with pytest.raises(IQVAEError, match="indices"):
        q.embed(torch.zeros(1, 2, dtype=torch.long))


def test_rq_embed_rejects_too_deep_indices():
    with pytest.raises(IQVAEError, match=r"1\.\.2"):
        ResidualQuantizer(8, 4, depth=2).embed(torch.zeros(1, 2, 2, 3, dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"num_codes": 0, "dim": 4}, "num_codes"),
        ({"num_codes": 8, "dim": 2.5}, "dim"),
        ({"num_codes": 8, "dim": 4, "beta": -1.0}, "beta"),
        ({"num_codes": 8, "dim": 4, "usage_decay": 1.0}, "usage_decay"),
        ({"num_codes": 8, "dim": 4, "dead_code_threshold": float("nan")}, "dead_code_threshold"),
        ({"num_codes": 8, "dim": 4, "kmeans_iters": -1}, "kmeans_iters"),
        ({"num_codes": 8, "dim": 4, "l2_norm": "yes"}, "l2_norm"),
    ],
)
def test_invalid_options_raise_config_error(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        VectorQuantizer(**kwargs)


def test_invalid_depth():
    with pytest.raises(ConfigError, match="depth"):
        ResidualQuantizer(8, 4, depth=0)


def test_chunked_nearest_code_matches_unchunked(monkeypatch):
    from iqvae.models import quantize

    v, e = torch.randn(100, 3, dtype=D64), torch.randn(7, 3, dtype=D64)
    monkeypatch.setattr(quantize, "DISTANCE_CHUNK_ELEMENTS", 20)  # 2 rows per chunk
    assert torch.equal(quantize.nearest_code(v, e), _brute_argmin(v, e))
