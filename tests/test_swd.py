"""SWD: against a NumPy transcription of Karras et al.'s procedure (written here, loops), plus known properties."""

import numpy as np
import pytest
import scipy.ndimage
import torch

from iqvae.errors import IQVAEError
from iqvae.metrics.swd import laplacian_pyramid, sliced_wasserstein_distance


# ---- independent NumPy transcription ---------------------------------------------------------------------------

_G = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]).astype(np.float64) / 256.0


def np_down(img):  # (C, H, W)
    out = np.stack([scipy.ndimage.convolve(ch, _G, mode="mirror") for ch in img])
    return out[:, ::2, ::2]


def np_up(img):
    c, h, w = img.shape
    z = np.zeros((c, 2 * h, 2 * w))
    z[:, ::2, ::2] = img
    return np.stack([scipy.ndimage.convolve(ch, 4 * _G, mode="mirror") for ch in z])


def np_swd(real, fake, rng, nh=7, per_img=128, repeats=4, ndirs=128):
    """real, fake: (N, 3, H, W) float64 in [-1, 1]."""
    res = []
    r = real.shape[2]
    while r >= 16:
        res.append(r)
        r //= 2
    L = len(res)

    def descriptors(imgs):
        pyrs = []
        for im in imgs:
            g = [(im + 1.0) * 127.5]
            for _ in range(1, L):
                g.append(np_down(g[-1]))
            lap = [g[i] - np_up(g[i + 1]) for i in range(L - 1)] + [g[-1]]
            pyrs.append(lap)
        sets = []
        for lvl in range(L):
            S = pyrs[0][lvl].shape
            n = len(imgs) * per_img
            xs = rng.integers(nh // 2, S[2] - nh // 2, size=n)
            ys = rng.integers(nh // 2, S[1] - nh // 2, size=n)
            d = np.zeros((n, 3, nh, nh))
            for i in range(n):
                lev = pyrs[i // per_img][lvl]
                d[i] = lev[:, ys[i] - 3: ys[i] + 4, xs[i] - 3: xs[i] + 4]
            for c in range(3):
                d[:, c] = (d[:, c] - d[:, c].mean()) / d[:, c].std()
            sets.append(d.reshape(n, -1))
        return sets

    A, B = descriptors(real), descriptors(fake)
    out = []
    for a, b in zip(A, B):
        vals = []
        for _ in range(repeats):
            dirs = rng.standard_normal((a.shape[1], ndirs))
            dirs /= np.sqrt((dirs ** 2).sum(0, keepdims=True))
            pa = np.sort(a @ dirs, axis=0)
            pb = np.sort(b @ dirs, axis=0)
            vals.append(np.abs(pa - pb).mean())
        out.append(np.mean(vals) * 1e3)
    return out


def _shapes(n, size, colour, seed):
    """Random coloured squares on a grey background."""
    g = np.random.default_rng(seed)
    x = np.full((n, 3, size, size), -0.2)
    for i in range(n):
        for _ in range(2):
            s = g.integers(4, size // 2)
            y0, x0 = g.integers(0, size - s, size=2)
            x[i, :, y0:y0 + s, x0:x0 + s] = np.asarray(colour)[:, None, None] + 0.05 * g.standard_normal((3, 1, 1))
    return torch.from_numpy(x.clip(-1, 1))


# ---- tests ---------------------------------------------------------------------------------------------------

def test_pyramid_matches_scipy_mirror_convolution():
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    lap = laplacian_pyramid(x, 2)
    for i in range(2):
        im = x[i].numpy()
        g1 = np_down(im)
        np.testing.assert_allclose(lap[1][i].numpy(), g1, atol=1e-12)
        np.testing.assert_allclose(lap[0][i].numpy(), im - np_up(g1), atol=1e-12)


def test_matches_numpy_transcription_float64():
    real = torch.rand(3, 3, 32, 32, dtype=torch.float64) * 2 - 1
    fake = (torch.rand(3, 3, 32, 32, dtype=torch.float64) * 2 - 1) ** 3
    ours = sliced_wasserstein_distance(real, fake, rng=np.random.default_rng(7), dtype=torch.float64)
    ref = np_swd(real.numpy(), fake.numpy(), np.random.default_rng(7))
    assert ours["resolutions"] == [32, 16]
    np.testing.assert_allclose(ours["per_level"], ref, rtol=1e-9)
    assert ours["mean"] == pytest.approx(np.mean(ref), rel=1e-9)


def test_matches_numpy_transcription_float32_and_seed():
    real = _shapes(4, 64, (0.8, -0.5, -0.5), 1)
    fake = _shapes(4, 64, (-0.5, 0.8, -0.5), 2)
    ours = sliced_wasserstein_distance(real, fake, seed=3)  # float32 default, like the original
    ref = np_swd(real.numpy(), fake.numpy(), np.random.default_rng(3))
    assert len(ours["per_level"]) == 3
    np.testing.assert_allclose(ours["per_level"], ref, rtol=2e-3)
    # a different seed gives different draws, hence (slightly) different numbers
    other = sliced_wasserstein_distance(real, fake, seed=4)
    assert other["per_level"] != ours["per_level"]


def test_same_set_is_zero_with_shared_positions_and_small_otherwise():
    x = _shapes(4, 32, (0.8, -0.5, -0.5), 5)
    out = sliced_wasserstein_distance(x, x.clone(), seed=0, shared_positions=True)
    assert out["per_level"] == [0.0, 0.0]
    # default (independent neighbourhoods, as in the original): only the sampling noise floor remains,
    # far below the distance to a colour-shifted version of the same layouts
    floor = sliced_wasserstein_distance(x, x.clone(), seed=0)["mean"]
    shifted = sliced_wasserstein_distance(x, _shapes(4, 32, (-0.5, -0.5, 0.8), 5), seed=0)["mean"]
    assert 0 < floor < shifted / 2


def test_shared_positions_matches_transcription_with_reused_centres():
    real = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 2 - 1
    fake = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 2 - 1
    ours = sliced_wasserstein_distance(real, fake, seed=1, shared_positions=True, dtype=torch.float64)

    class Replay:  # the transcription draws centres twice; replay the first draw for the second set
        def __init__(self, rng):
            self.rng, self.saved, self.calls = rng, [], 0

        def integers(self, lo, hi, size):
            self.calls += 1
            if self.calls <= 2:
                self.saved.append(self.rng.integers(lo, hi, size=size))
                return self.saved[-1]
            return self.saved[self.calls - 3]

        def standard_normal(self, shape):
            return self.rng.standard_normal(shape)

    ref = np_swd(real.numpy(), fake.numpy(), Replay(np.random.default_rng(1)))
    np.testing.assert_allclose(ours["per_level"], ref, rtol=1e-9)


def test_grows_with_colour_shift_and_ignores_global_affine_change():
    base = _shapes(8, 32, (0.8, -0.5, -0.5), 1)
    same_dist = _shapes(8, 32, (0.8, -0.5, -0.5), 2)
    shifted = _shapes(8, 32, (-0.5, -0.5, 0.8), 2)  # same layout, red objects -> blue
    d_same = sliced_wasserstein_distance(base, same_dist, seed=0)["mean"]
    d_shift = sliced_wasserstein_distance(base, shifted, seed=0)["mean"]
    assert d_shift > 2 * d_same
    # documented property: per-channel standardisation cancels a whole-set affine intensity change
    scaled = same_dist * 0.5 + 0.1
    d_scaled = sliced_wasserstein_distance(base, scaled, seed=0, dtype=torch.float64)["mean"]
    d_ref = sliced_wasserstein_distance(base, same_dist, seed=0, dtype=torch.float64)["mean"]
    assert d_scaled == pytest.approx(d_ref, rel=1e-8)


def test_bad_inputs():
    x = torch.zeros(2, 3, 32, 32)
    with pytest.raises(IQVAEError, match="equal shape"):
        sliced_wasserstein_distance(x, torch.zeros(3, 3, 32, 32))
    with pytest.raises(IQVAEError, match="at least 16"):
        sliced_wasserstein_distance(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))
    with pytest.raises(IQVAEError, match="halved"):
        sliced_wasserstein_distance(torch.zeros(2, 3, 33, 33), torch.zeros(2, 3, 33, 33))


def test_chunked_descriptor_extraction_is_exact():
    from iqvae.metrics import swd as S

    x = torch.rand(5, 3, 32, 32, dtype=torch.float64) * 2 - 1
    centres = S._draw_set_centres(np.random.default_rng(0), x, 2, 128, 7)
    whole = S._descriptor_sets(x, centres, 128, 7, False, torch.float64)
    pieces = S._descriptor_sets(x, centres, 128, 7, False, torch.float64, chunk=2)
    for a, b in zip(whole, pieces):
        assert torch.equal(a, b)
