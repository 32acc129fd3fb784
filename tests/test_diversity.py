"""LPIPS diversity: pair protocol against a brute-force loop, exact zero for identical samples."""

import itertools

import pytest
import torch
from torch import nn

from iqvae.errors import IQVAEError
from iqvae.metrics.diversity import lpips_diversity
from iqvae.models.lpips import LPIPS


class MeanAbs(nn.Module):
    """A stand-in distance with a known closed form: mean |x - y| per pair."""

    label = "L1-stand-in"

    def forward(self, x, y):
        return (x - y).abs().flatten(1).mean(1)


def test_all_pairs_match_brute_force():
    s = torch.rand(3, 4, 3, 8, 8) * 2 - 1
    out = lpips_diversity(s, MeanAbs(), pairs="all", batch_size=5)
    d = torch.tensor([[(s[c, i] - s[c, j]).abs().mean().item() for i, j in itertools.combinations(range(4), 2)]
                      for c in range(3)], dtype=torch.float64)
    assert out["mean"] == pytest.approx(float(d.mean()), rel=1e-6)
    assert out["std"] == pytest.approx(float(d.flatten().std(correction=0)), rel=1e-5)
    assert out["per_condition"] == pytest.approx(d.mean(1).tolist(), rel=1e-6)
    assert out["protocol"].startswith("3 conditions × 6 pairs (all pairs of 4 samples)")
    assert out["protocol"].endswith("L1-stand-in")


def test_random_pairs_are_distinct_seeded_and_subset_of_all():
    s = torch.rand(2, 6, 3, 8, 8) * 2 - 1
    a = lpips_diversity(s, MeanAbs(), pairs=5, seed=3)
    b = lpips_diversity(s, MeanAbs(), pairs=5, seed=3)
    assert a == b and a["pairs_per_condition"] == 5
    full = lpips_diversity(s, MeanAbs(), pairs="all")
    assert lpips_diversity(s, MeanAbs(), pairs=15, seed=9)["mean"] == pytest.approx(full["mean"], rel=1e-9)
    with pytest.raises(IQVAEError, match="only 15"):
        lpips_diversity(s, MeanAbs(), pairs=16)


def test_identical_samples_give_exactly_zero_with_lpips():
    model = LPIPS("alex", random_init=True)
    one = torch.rand(2, 1, 3, 64, 64) * 2 - 1
    same = one.expand(2, 4, 3, 64, 64).clone()
    out = lpips_diversity(same, model)
    assert out["mean"] == 0.0 and out["std"] == 0.0
    assert "LPIPS-alex(random weights)" in out["protocol"]
    diff = lpips_diversity(torch.rand(2, 3, 3, 64, 64) * 2 - 1, model)
    assert diff["mean"] > 0


def test_bad_shapes():
    with pytest.raises(IQVAEError, match=r"\(C, N, 3, H, W\)"):
        lpips_diversity(torch.zeros(4, 3, 8, 8), MeanAbs())
    with pytest.raises(IQVAEError, match="at least 2"):
        lpips_diversity(torch.zeros(2, 1, 3, 8, 8), MeanAbs())
    with pytest.raises(IQVAEError, match="pairs"):
        lpips_diversity(torch.zeros(2, 3, 3, 8, 8), MeanAbs(), pairs=0)
