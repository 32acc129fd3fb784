"""PSNR / SSIM against closed forms; codebook usage against hand-computed values."""

import math

import pytest
import torch

from iqvae.errors import IQVAEError
from iqvae.metrics.recon import codebook_usage, cond_code_class_purity, psnr, psnr_per_image, ssim, ssim_per_image


def test_psnr_closed_form():
    x = torch.rand(4, 3, 16, 16) - 0.5  # x + delta stays inside [-1, 1]: no clamping
    deltas = torch.tensor([0.02, 0.1, 0.2, 0.4]).view(4, 1, 1, 1)  # in [-1, 1] units
    y = x + deltas
    # in [0, 1] units the error is delta / 2 everywhere: PSNR = 10 log10(1 / (delta / 2)^2)
    expect = [10 * math.log10(1.0 / (d / 2) ** 2) for d in deltas.flatten().tolist()]
    got = psnr_per_image(y, x)
    assert got.tolist() == pytest.approx(expect, rel=1e-5)
    assert psnr(y, x) == pytest.approx(sum(expect) / 4, rel=1e-5)  # mean of per-image values
    # random errors: against a direct computation of the per-image MSE
    z = (x + 0.1 * torch.randn_like(x)).clamp(-1, 1)
    mse = (((z + 1) / 2 - (x + 1) / 2) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(psnr_per_image(z, x), 10 * torch.log10(1 / mse), rtol=1e-5, atol=1e-4)
    assert psnr(x, x) == 100.0  # identical: capped


def test_ssim_closed_form_on_constant_images():
    # constant images a, b (in [0, 1] units): every window has zero variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    c1 = (0.01 * 1.0) ** 2
    for a, b in [(0.2, 0.3), (0.5, 0.9), (0.1, 0.1)]:
        x = torch.full((1, 3, 24, 24), 2 * a - 1, dtype=torch.float64)
        y = torch.full((1, 3, 24, 24), 2 * b - 1, dtype=torch.float64)
        expect = (2 * a * b + c1) / (a * a + b * b + c1)
        assert ssim(x, y) == pytest.approx(expect, rel=1e-9)
        assert ssim(x.float(), y.float()) == pytest.approx(expect, rel=1e-3)  # float32 round-off
    x = torch.rand(2, 3, 24, 24) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    s = ssim_per_image(x, y)
    assert s.shape == (2,) and torch.all(s < 0.95)
    torch.testing.assert_close(ssim_per_image(y, x), s)  # symmetric


def test_shape_errors():
    with pytest.raises(IQVAEError):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(IQVAEError, match="11x11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_codebook_usage():
    u = codebook_usage(torch.tensor([[0, 1], [2, 3]]), 8)
    assert u["used"] == 4 and u["fraction"] == 0.5 and u["perplexity"] == pytest.approx(4.0)
    u = codebook_usage(torch.tensor([5, 5, 5]), 8)
    assert u["used"] == 1 and u["perplexity"] == pytest.approx(1.0)
    # p = (1/2, 1/4, 1/4): H = 1.5 ln 2, perplexity = 2^1.5
    assert codebook_usage(torch.tensor([0, 0, 1, 2]), 3)["perplexity"] == pytest.approx(2 ** 1.5)
    with pytest.raises(IQVAEError, match="outside"):
        codebook_usage(torch.tensor([0, 8]), 8)


def _class_purity_brute_force(idx, seg, f):
    """Loop over every cell: keep the wholly-one-non-background-class ones, count (code, class), majority share."""
    counts = {}
    for b in range(idx.shape[0]):
        for r in range(idx.shape[1]):
            for c in range(idx.shape[2]):
                patch = seg[b, r * f:(r + 1) * f, c * f:(c + 1) * f].flatten().tolist()
                if len(set(patch)) == 1 and patch[0] != 0:
                    key = int(idx[b, r, c])
                    counts.setdefault(key, {}).setdefault(patch[0], 0)
                    counts[key][patch[0]] += 1
    total = sum(sum(v.values()) for v in counts.values())
    return sum(max(v.values()) for v in counts.values()) / total


def test_cond_code_class_purity_against_brute_force_and_closed_cases():
    g = torch.Generator().manual_seed(0)
    # blocky class maps (2 x 2 blocks of one class, then a few pixels flipped so some cells are mixed)
    seg = torch.randint(0, 4, (3, 4, 4), generator=g).repeat_interleave(2, 1).repeat_interleave(2, 2)
    seg[torch.rand(seg.shape, generator=g) < 0.1] = 2
    idx = torch.randint(0, 5, (3, 4, 4), generator=g)
    got = cond_code_class_purity(idx, seg)["cond_code_class_purity"]
    assert got == pytest.approx(_class_purity_brute_force(idx, seg, 2))
    # codes = the cell's class: pure; one code for every cell: the majority class's share
    cls = seg[:, ::2, ::2]
    assert cond_code_class_purity(cls, seg)["cond_code_class_purity"] == 1.0
    one = torch.zeros_like(idx)
    cells = seg.reshape(3, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(3, 4, 4, 4)
    pure = (cells == cells[..., :1]).all(-1) & (cells[..., 0] != 0)
    share = torch.bincount(cells[..., 0][pure]).max().item() / pure.sum().item()
    assert cond_code_class_purity(one, seg)["cond_code_class_purity"] == pytest.approx(share)
    with pytest.raises(IQVAEError, match="multiples"):
        cond_code_class_purity(idx, seg[:, :7])
    with pytest.raises(IQVAEError, match="no latent cell"):
        cond_code_class_purity(idx, torch.zeros_like(seg))
