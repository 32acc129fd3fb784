"""Sliced Wasserstein distance (SWD) between two image sets, after Karras et al. (ICLR 2018).

A port of the procedure of ``metrics/sliced_wasserstein.py`` in ``tkarras/progressive_growing_of_gans``:

1. Images (``N, 3, H, W`` in ``[-1, 1]``) are mapped to the ``[0, 255]`` range of the original, ``(x + 1) * 127.5``
   (optionally rounded to uint8 values with ``quantize=True``, as the original's image files are).  Because step 4
   standardises every channel of every set, any per-set positive affine intensity map cancels: the value does not
   depend on this scaling, and a *global* per-channel offset or gain applied to a whole set leaves SWD unchanged.
2. Laplacian pyramid with resolutions ``H, H/2, ...`` while ``>= 16`` px.  ``pyr_down`` convolves with the 5x5
   binomial filter ``[1, 4, 6, 4, 1]^T [1, 4, 6, 4, 1] / 256`` with mirror padding (``d c b | a b c d``, i.e. torch
   "reflect") and keeps every second pixel; ``pyr_up`` inserts zeros and convolves with 4x the filter.  Level ``l``
   holds ``G_l - pyr_up(G_{l+1})``; the last (coarsest) level holds the Gaussian level itself.
3. Per image and level, 128 random 7x7x3 neighbourhoods; centres drawn uniformly from ``[3, S - 4]`` (numpy's
   ``integers(3, S - 3)``), x before y.
4. Descriptors of one set and level are standardised per channel: subtract the mean and divide by the (population)
   standard deviation over all descriptors and the 7x7 positions of that channel; then flattened to 147-d.
5. 4 repeats x 128 random directions (standard normal, normalised to unit length); both sets are projected, the
   projections sorted per direction, and the mean absolute difference of the sorted projections is the distance
   (the 1-D Wasserstein-1 distance between the empirical projected distributions); averaged over the repeats.
6. Reported x 1e3 per level (finest first), and the mean over levels.

Random numbers come from one ``numpy.random.Generator`` (``default_rng(seed)``) in this order: for the real set then
the fake set (skipped with ``shared_positions=True``), for each level (finest first) the x then y centres of all
``N * 128`` neighbourhoods; then for each
level and repeat a ``(147, 128)`` normal matrix of directions.  (The original draws from numpy's global state per
minibatch and also draws directions when comparing the reals with themselves; that changes which random numbers are
used, not the procedure.)  Computation runs in float32 like the original (``dtype`` selects float64).  A channel with
zero spread is left unscaled instead of being divided by zero.  Both sets must hold the same number of images.

Noise floor: with independently drawn neighbourhoods, two copies of the same set do not give 0 but a small positive
value that shrinks as N grows (e.g. a few tens at N=4 images of 32 px); compare numbers at equal N.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import IQVAEError

NHOOD_SIZE = 7
NHOODS_PER_IMAGE = 128
DIR_REPEATS = 4
DIRS_PER_REPEAT = 128
MIN_RESOLUTION = 16

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64)
_FILTER = torch.outer(_BINOMIAL, _BINOMIAL) / 256.0


def pyramid_resolutions(height: int, min_resolution: int = MIN_RESOLUTION) -> list[int]:
    out, res = [], height
    while res >= min_resolution:
        out.append(res)
        res //= 2
    return out


def _conv_mirror(x: Tensor, kernel: Tensor) -> Tensor:
    c = x.shape[1]
    w = kernel.to(x.dtype).expand(c, 1, 5, 5).contiguous()
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), w, groups=c)


def pyr_down(x: Tensor) -> Tensor:
    return _conv_mirror(x, _FILTER)[:, :, ::2, ::2]


def pyr_up(x: Tensor) -> Tensor:
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x
    return _conv_mirror(up, _FILTER * 4.0)


def laplacian_pyramid(x: Tensor, num_levels: int) -> list[Tensor]:
    levels = [x]
    for _ in range(1, num_levels):
        levels.append(pyr_down(levels[-1]))
        levels[-2] = levels[-2] - pyr_up(levels[-1])
    return levels


def draw_centres(rng: np.random.Generator, count: int, height: int, width: int, nhood_size: int = NHOOD_SIZE):
    """(y, x) centres of ``count`` neighbourhoods; x is drawn first, like the original."""
    h = nhood_size // 2
    xs = rng.integers(h, width - h, size=count)
    ys = rng.integers(h, height - h, size=count)
    return ys, xs


def extract_descriptors(level: Tensor, ys: np.ndarray, xs: np.ndarray, nhoods_per_image: int,
                        nhood_size: int = NHOOD_SIZE) -> Tensor:
    """Neighbourhood ``i`` comes from image ``i // nhoods_per_image``; returns ``(count, C, k, k)``."""
    h = nhood_size // 2
    count = len(ys)
    img = torch.arange(count) // nhoods_per_image
    off = torch.arange(-h, h + 1)
    yy = torch.as_tensor(ys, dtype=torch.long)[:, None] + off[None, :]  # (count, k)
    xx = torch.as_tensor(xs, dtype=torch.long)[:, None] + off[None, :]
    chan = torch.arange(level.shape[1])
    return level[img[:, None, None, None], chan[None, :, None, None], yy[:, None, :, None], xx[:, None, None, :]]


def finalize_descriptors(desc: Tensor) -> Tensor:
    desc = desc - desc.mean(dim=(0, 2, 3), keepdim=True)
    std = desc.std(dim=(0, 2, 3), keepdim=True, correction=0)
    desc = desc / torch.where(std > 0, std, torch.ones_like(std))
    return desc.reshape(desc.shape[0], -1)


def sliced_wasserstein(a: Tensor, b: Tensor, directions: list[np.ndarray]) -> float:
    """Mean over ``directions`` (each ``(D, K)``, normalised here) of the mean |sorted(a d) - sorted(b d)|."""
    results = []
    for d in directions:
        d = torch.as_tensor(d, dtype=a.dtype)
        d = d / d.square().sum(dim=0, keepdim=True).sqrt()
        pa = torch.sort(a @ d, dim=0).values
        pb = torch.sort(b @ d, dim=0).values
        results.append((pa - pb).abs().mean().item())
    return float(np.mean(results))


def _check(x: Tensor, what: str, levels: int, nhood_size: int) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3:
        raise IQVAEError(f"SWD expects {what} images as a (N, 3, H, W) tensor; got {getattr(x, 'shape', type(x))}")
    h, w = x.shape[-2:]
    if levels == 0:
        raise IQVAEError(f"SWD needs images of at least {MIN_RESOLUTION} px; {what} images are {h}x{w}")
    for lvl in range(levels - 1):
        if (h >> lvl) % 2 or (w >> lvl) % 2:
            raise IQVAEError(f"SWD: {what} image size {h}x{w} cannot be halved {levels - 1} times")
    if min(h, w) >> (levels - 1) < nhood_size:
        raise IQVAEError(f"SWD: {what} images {h}x{w} are too small for {nhood_size}x{nhood_size} neighbourhoods")


def _draw_set_centres(rng: np.random.Generator, x: Tensor, levels: int, nhoods_per_image: int, nhood_size: int):
    n, _, h, w = x.shape
    return [draw_centres(rng, n * nhoods_per_image, h >> i, w >> i, nhood_size) for i in range(levels)]


def _descriptor_sets(x: Tensor, centres, nhoods_per_image: int, nhood_size: int, quantize: bool,
                     dtype: torch.dtype, chunk: int = 256) -> list[Tensor]:
    """Descriptors of every level, built ``chunk`` images at a time (bounded memory for large sets)."""
    parts: list[list[Tensor]] = [[] for _ in centres]
    for start in range(0, x.shape[0], chunk):
        xc = (x[start:start + chunk].detach().to(torch.float64).cpu() + 1.0) * 127.5
        if quantize:
            xc = xc.round().clamp(0, 255)
        lo, hi = start * nhoods_per_image, (start + xc.shape[0]) * nhoods_per_image
        for lvl, level in enumerate(laplacian_pyramid(xc.to(dtype), len(centres))):
            ys, xs = centres[lvl]
            parts[lvl].append(extract_descriptors(level, ys[lo:hi], xs[lo:hi], nhoods_per_image, nhood_size))
    return [finalize_descriptors(torch.cat(p)) for p in parts]


def sliced_wasserstein_distance(
    real: Tensor,
    fake: Tensor,
    seed: int = 0,
    *,
    rng: np.random.Generator | None = None,
    nhood_size: int = NHOOD_SIZE,
    nhoods_per_image: int = NHOODS_PER_IMAGE,
    dir_repeats: int = DIR_REPEATS,
    dirs_per_repeat: int = DIRS_PER_REPEAT,
    min_resolution: int = MIN_RESOLUTION,
    quantize: bool = False,
    shared_positions: bool = False,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """SWD x 1e3 between two equally sized image sets; see the module docstring for the exact protocol.

    ``shared_positions=True`` (not in the original) uses the same neighbourhood centres for both sets (common random
    numbers): identical sets then give exactly 0 and comparisons have less sampling noise, but the numbers are not
    comparable with the original's, which draws the two sets' centres independently (default).

    Returns ``{"per_level": [...], "resolutions": [...], "mean": float, "protocol": str}`` (finest level first).
    """
    levels = len(pyramid_resolutions(int(real.shape[-2]), min_resolution)) if isinstance(real, Tensor) else 0
    _check(real, "real", levels, nhood_size)
    _check(fake, "fake", levels, nhood_size)
    if real.shape != fake.shape:
        raise IQVAEError(f"SWD needs two sets of equal shape; got real {tuple(real.shape)}, fake {tuple(fake.shape)}")
    rng = np.random.default_rng(seed) if rng is None else rng
    centres_real = _draw_set_centres(rng, real, levels, nhoods_per_image, nhood_size)
    centres_fake = (centres_real if shared_positions
                    else _draw_set_centres(rng, fake, levels, nhoods_per_image, nhood_size))
    desc_real = _descriptor_sets(real, centres_real, nhoods_per_image, nhood_size, quantize, dtype)
    desc_fake = _descriptor_sets(fake, centres_fake, nhoods_per_image, nhood_size, quantize, dtype)
    per_level = []
    for a, b in zip(desc_real, desc_fake):
        dirs = [rng.standard_normal((a.shape[1], dirs_per_repeat)) for _ in range(dir_repeats)]
        per_level.append(sliced_wasserstein(a, b, dirs) * 1e3)
    res = [int(real.shape[-2]) >> i for i in range(levels)]
    protocol = (f"SWDx1e3 (Karras et al.): Laplacian levels {res}, {nhoods_per_image} {nhood_size}x{nhood_size}"
                f" descriptors/image/level, {dir_repeats}x{dirs_per_repeat} directions, N={real.shape[0]}, seed={seed}"
                + (", shared positions" if shared_positions else ""))
    return {"per_level": per_level, "resolutions": res, "mean": float(np.mean(per_level)), "protocol": protocol}
