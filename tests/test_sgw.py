"""Oracle tests for the sliced Gromov-Wasserstein loss (iqvae.models.sgw)."""

from __future__ import annotations

import itertools

import numpy as np
import ot
import pytest
import torch

from iqvae.errors import ConfigError, IQVAEError
from iqvae.losses import (
    random_projections,
    sliced_gromov_wasserstein,
    sliced_gromov_wasserstein_reference,
)

D64 = torch.float64


def _gw_pairing(a: np.ndarray, b: np.ndarray) -> float:
    """(1/n^2) sum_{i,k} ((a_i - a_k)^2 - (b_i - b_k)^2)^2, pairing a_i with b_i: the plain double sum."""
    n = len(a)
    return float((((a[:, None] - a[None]) ** 2 - (b[:, None] - b[None]) ** 2) ** 2).sum() / n**2)


def _project_sorted(c: torch.Tensor, x: torch.Tensor, p: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad to d = p.shape[0], project on the single column of p, sort: the 1-D sets, in float64."""
    d = p.shape[0]
    cp = torch.nn.functional.pad(c, (0, d - c.shape[-1]))
    xp = torch.nn.functional.pad(x, (0, d - x.shape[-1]))
    return np.sort((cp @ p[:, 0]).numpy()), np.sort((xp @ p[:, 0]).numpy())


# ----------------------------------------------------------------------------------------------- closed form


@pytest.mark.parametrize("B,n,dc,dx,L", [(1, 1, 2, 2, 3), (2, 2, 3, 1, 5), (3, 17, 4, 6, 7), (2, 64, 8, 3, 11)])
def test_linear_time_formula_matches_quadratic_double_sum(B, n, dc, dx, L):
    c = torch.randn(B, n, dc, dtype=D64) * 2 + 3
    x = torch.randn(B, n, dx, dtype=D64) ** 3 - 1  # skewed, so odd power sums are far from zero
    p = random_projections(max(dc, dx), L, dtype=D64)
    fast = sliced_gromov_wasserstein(c, x, projections=p)
    slow = sliced_gromov_wasserstein_reference(c, x, projections=p)
    assert fast.dim() == 0
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-12)


def test_matches_numpy_double_sum_direction_by_direction():
    """A second, independent implementation: numpy loops over directions, pads explicitly, min of two plans."""
    c, x = torch.randn(9, 3, dtype=D64), torch.rand(9, 5, dtype=D64)
    p = random_projections(5, 4, dtype=D64)
    costs = []
    for m in range(4):
        a, b = _project_sorted(c, x, p[:, m : m + 1])
        costs.append(min(_gw_pairing(a, b), _gw_pairing(a, b[::-1])))
    got = sliced_gromov_wasserstein(c, x, projections=p).item()
    assert got == pytest.approx(np.mean(costs), rel=1e-10)


def test_batch_is_the_mean_of_items_and_2d_equals_batch_of_one():
    c, x = torch.randn(3, 10, 4, dtype=D64), torch.randn(3, 10, 2, dtype=D64)
    p = random_projections(4, 6, dtype=D64)
    per_item = torch.stack([sliced_gromov_wasserstein(c[i], x[i], projections=p) for i in range(3)])
    torch.testing.assert_close(sliced_gromov_wasserstein(c, x, projections=p), per_item.mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(
        sliced_gromov_wasserstein(c[:1], x[:1], projections=p), per_item[0], rtol=1e-12, atol=0
    )


# ----------------------------------------------------------------------------------------------- brute force / POT


def test_upper_bound_of_exact_1d_gw_and_usually_equal():
    """Against brute force over all n! permutation plans (tiny n): never below, equal in most draws."""
    rng = np.random.default_rng(0)
    equal = 0
    trials = 40
    for t in range(trials):
        n = 4 + t % 3
        a = torch.from_numpy(rng.normal(size=(n, 1)) * rng.uniform(0.2, 3))
        b = torch.from_numpy(rng.normal(size=(n, 1)) ** (1 + t % 2))
        one = torch.ones(1, 1, dtype=D64)
        sgw = sliced_gromov_wasserstein(a, b, projections=one).item()
        av, bv = a[:, 0].numpy(), b[:, 0].numpy()
        brute = min(_gw_pairing(av, bv[list(s)]) for s in itertools.permutations(range(n)))
        assert sgw >= brute - 1e-12 * max(1.0, brute)
        equal += sgw <= brute * (1 + 1e-9) + 1e-12
    assert equal >= 0.75 * trials, f"monotone plans optimal in only {equal}/{trials} draws"


def test_matches_pot_gw_loss_at_identity_and_anti_identity_plans():
    """POT's square-loss GW objective sum_{ijkl}(C1_ik - C2_jl)^2 T_ij T_kl at T = I/n and anti-diagonal/n."""
    n, L = 12, 5
    c, x = torch.randn(n, 3, dtype=D64), torch.randn(n, 2, dtype=D64) * 1.5 + 4
    p = random_projections(3, L, dtype=D64)
    weights = np.full(n, 1.0 / n)
    identity, anti = np.eye(n) / n, np.fliplr(np.eye(n)) / n
    costs = []
    for m in range(L):
        a, b = _project_sorted(c, x, p[:, m : m + 1])
        C1, C2 = (a[:, None] - a[None]) ** 2, (b[:, None] - b[None]) ** 2
        constC, hC1, hC2 = ot.gromov.init_matrix(C1, C2, weights, weights, loss_fun="square_loss")
        costs.append(min(ot.gromov.gwloss(constC, hC1, hC2, identity), ot.gromov.gwloss(constC, hC1, hC2, anti)))
        # and per direction: the loss with only this direction
        single = sliced_gromov_wasserstein(c, x, projections=p[:, m : m + 1]).item()
        assert single == pytest.approx(costs[-1], rel=1e-9)
    assert sliced_gromov_wasserstein(c, x, projections=p).item() == pytest.approx(np.mean(costs), rel=1e-9)


# ----------------------------------------------------------------------------------------------- invariances


def test_invariant_to_translating_or_permuting_either_set():
    c, x = torch.randn(2, 20, 4, dtype=D64), torch.randn(2, 20, 3, dtype=D64)
    p = random_projections(4, 8, dtype=D64)
    base = sliced_gromov_wasserstein(c, x, projections=p)
    perm = torch.randperm(20)
    variants = [
        (c + torch.tensor([5.0, -3.0, 1.0, 100.0], dtype=D64), x),
        (c, x - 7.5),
        (c[:, perm], x),
        (c, x[:, torch.randperm(20)]),
    ]
    for cv, xv in variants:
        torch.testing.assert_close(sliced_gromov_wasserstein(cv, xv, projections=p), base, rtol=1e-9, atol=0)


def test_zero_for_identical_translated_permuted_or_negated_sets():
    c = torch.randn(3, 30, 5, dtype=D64)
    p = random_projections(5, 16, dtype=D64)
    scale = sliced_gromov_wasserstein(c, torch.randn_like(c), projections=p).item()
    assert scale > 0.1
    for x in (c.clone(), c + 3.0, c[:, torch.randperm(30)], -c, -c[:, torch.randperm(30)] + 1.0):
        assert abs(sliced_gromov_wasserstein(c, x, projections=p).item()) <= 1e-12 * scale


def test_zero_padding_makes_extra_zero_dimensions_free():
    """x equal to c plus all-zero extra features: padding c reproduces x exactly, so the loss is zero."""
    c = torch.randn(15, 3, dtype=D64)
    x = torch.cat([c, torch.zeros(15, 2, dtype=D64)], dim=1)
    assert abs(sliced_gromov_wasserstein(c, x, num_projections=32).item()) < 1e-12


def test_common_rotation_rotates_the_directions_exactly():
    c, x = torch.randn(25, 4, dtype=D64), torch.randn(25, 4, dtype=D64)
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=D64))
    p = random_projections(4, 10, dtype=D64)
    torch.testing.assert_close(
        sliced_gromov_wasserstein(c @ q, x @ q, projections=p),
        sliced_gromov_wasserstein(c, x, projections=q @ p),
        rtol=1e-10,
        atol=0,
    )


def test_common_rotation_leaves_expectation_over_random_directions_unchanged():
    """Statistical check: equal means within 5 standard errors over 40 x 250 random directions each."""
    c, x = torch.randn(24, 3, dtype=D64), torch.randn(24, 3, dtype=D64) * torch.tensor([2.0, 1.0, 0.3], dtype=D64)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=D64))
    gen = torch.Generator().manual_seed(1)

    def chunk_means(cc, xx):
        return np.array(
            [sliced_gromov_wasserstein(cc, xx, num_projections=250, generator=gen).item() for _ in range(40)]
        )

    m0, m1 = chunk_means(c, x), chunk_means(c @ q, x @ q)
    se = np.sqrt(m0.var(ddof=1) / len(m0) + m1.var(ddof=1) / len(m1))
    assert abs(m0.mean() - m1.mean()) < 5 * se
    # The check has power: sliced GW is not invariant to rotating ONE set, and that moves the mean far away.
    m2 = chunk_means(c, x @ q)
    assert abs(m2.mean() - m0.mean()) > 8 * se


# ----------------------------------------------------------------------------------------------- gradients / fp32


def test_gradients_match_reference_and_finite_differences():
    c = torch.randn(2, 7, 3, dtype=D64, requires_grad=True)
    x = torch.randn(2, 7, 2, dtype=D64, requires_grad=True)
    p = random_projections(3, 4, dtype=D64)
    assert torch.autograd.gradcheck(lambda cc, xx: sliced_gromov_wasserstein(cc, xx, projections=p), (c, x))
    g_fast = torch.autograd.grad(sliced_gromov_wasserstein(c, x, projections=p), (c, x))
    g_slow = torch.autograd.grad(sliced_gromov_wasserstein_reference(c, x, projections=p), (c, x))
    for gf, gs in zip(g_fast, g_slow):
        torch.testing.assert_close(gf, gs, rtol=1e-9, atol=1e-12)


def test_float32_accurate_for_offset_data():
    """n = 256 with x shifted by 100: centring keeps fp32 within 1e-4 (relative) of the float64 double sum."""
    c64 = torch.randn(2, 256, 8, dtype=D64)
    x64 = torch.randn(2, 256, 6, dtype=D64).pow(3) + 100.0
    p64 = random_projections(8, 32, dtype=D64)
    want = sliced_gromov_wasserstein_reference(c64, x64, projections=p64).item()
    got = sliced_gromov_wasserstein(c64.float(), x64.float(), projections=p64.float())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want, rel=1e-4)


def test_half_precision_inputs_are_computed_in_float32():
    c, x = torch.randn(16, 4), torch.randn(16, 4)
    p = random_projections(4, 8)
    got = sliced_gromov_wasserstein(c.bfloat16(), x.bfloat16(), projections=p)
    assert got.dtype == torch.float32
    want = sliced_gromov_wasserstein(c.bfloat16().float(), x.bfloat16().float(), projections=p)
    torch.testing.assert_close(got, want)


# ----------------------------------------------------------------------------------------------- projections / RNG


def test_random_projections_are_unit_columns_and_reproducible():
    p = random_projections(7, 300, generator=torch.Generator().manual_seed(3), dtype=D64)
    assert p.shape == (7, 300)
    torch.testing.assert_close(p.norm(dim=0), torch.ones(300, dtype=D64))
    q = random_projections(7, 300, generator=torch.Generator().manual_seed(3), dtype=D64)
    assert torch.equal(p, q)
    # roughly isotropic: E[p p^T] = I / d
    torch.testing.assert_close(p @ p.T / 300, torch.eye(7, dtype=D64) / 7, atol=0.04, rtol=0)


def test_generator_makes_the_loss_reproducible():
    c, x = torch.randn(10, 3), torch.randn(10, 3)
    first = sliced_gromov_wasserstein(c, x, num_projections=5, generator=torch.Generator().manual_seed(9))
    again = sliced_gromov_wasserstein(c, x, num_projections=5, generator=torch.Generator().manual_seed(9))
    assert torch.equal(first, again)


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "c_shape,x_shape,match",
    [
        ((2, 10, 3), (2, 11, 3), r"\(2, 10, 3\).*\(2, 11, 3\)"),
        ((2, 10, 3), (3, 10, 3), r"\(2, 10, 3\).*\(3, 10, 3\)"),
        ((10, 3), (1, 10, 3), "both"),
        ((10,), (10,), "'c'"),
        ((1, 2, 10, 3), (1, 2, 10, 3), "'c'"),
    ],
)
def test_shape_errors_name_the_shapes(c_shape, x_shape, match):
    with pytest.raises(IQVAEError, match=match) as info:
        sliced_gromov_wasserstein(torch.randn(c_shape), torch.randn(x_shape))
    assert isinstance(info.value, ValueError)


def test_bad_projections_and_options():
    c, x = torch.randn(10, 3), torch.randn(10, 5)
    with pytest.raises(IQVAEError, match=r"projections.*d=5"):
        sliced_gromov_wasserstein(c, x, projections=torch.randn(3, 4))
    with pytest.raises(ConfigError, match="num_projections"):
        sliced_gromov_wasserstein(c, x, num_projections=0)
    with pytest.raises(ConfigError, match="'L'"):
        random_projections(3, 0)
    with pytest.raises(IQVAEError, match="floating"):
        sliced_gromov_wasserstein(torch.ones(10, 3, dtype=torch.long), x)
