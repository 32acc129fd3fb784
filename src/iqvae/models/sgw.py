r"""Sliced Gromov-Wasserstein (SGW) distance: the variational regulariser of IQ-VAE (Sec. 3.2, Eq. 1-2).

IQ-VAE regularises the *structure* of two latent sets -- the encoder outputs of the condition ``c`` and of the
image ``x`` (``n`` feature vectors each, one set per image) -- with the Gromov-Wasserstein distance between them,
estimated with the sliced GW of Vayer et al. (2019, "Sliced Gromov-Wasserstein"):

1. zero-pad the narrower side to ``d = max(dc, dx)`` dimensions (Vayer's :math:`\Delta_{pad}`);
2. project both sets onto the same ``L`` unit-norm Gaussian directions (a ``d x L`` matrix);
3. per direction, solve the 1-D GW problem with uniform weights by taking the better of the two monotone plans:
   with ``a`` sorted ascending, pair it with ``b`` sorted ascending (identity plan) or descending (anti-identity);
4. average over directions (and over the batch).

The 1-D cost of pairing ``a_i`` with ``b_i`` is

.. math::  G(a, b) = \frac{1}{n^2} \sum_{i,k} \big((a_i - a_k)^2 - (b_i - b_k)^2\big)^2 ,

i.e. POT's square-loss GW objective at the plan ``diag(1/n)`` (or the anti-diagonal one).  It is an upper bound
of the exact 1-D GW between the projected sets, and equal to it in most cases.

O(n) evaluation (derivation)
----------------------------
``G`` is invariant to translating ``a`` or ``b``, so both are centred first (:math:`\sum_i a_i = \sum_i b_i = 0`);
this also keeps fp32 accurate for data with a large offset.  Write power sums :math:`A_p = \sum_i a_i^p`,
:math:`B_p = \sum_i b_i^p` and cross sums :math:`P_{pq} = \sum_i a_i^p b_i^q`.  Then

.. math::

   \sum_{i,k} (a_i-a_k)^4 &= \sum_{i,k} a_i^4 - 4a_i^3a_k + 6a_i^2a_k^2 - 4a_ia_k^3 + a_k^4
                           = 2nA_4 - 8A_3A_1 + 6A_2^2  \;=\; 2nA_4 + 6A_2^2, \\
   \sum_{i,k} (a_i-a_k)^2(b_i-b_k)^2
        &= \sum_{i,k} (a_i^2 - 2a_ia_k + a_k^2)(b_i^2 - 2b_ib_k + b_k^2) \\
        &= 2nP_{22} - 4P_{21}B_1 - 4P_{12}A_1 + 2A_2B_2 + 4P_{11}^2 \;=\; 2nP_{22} + 2A_2B_2 + 4P_{11}^2 .

Expanding the square, :math:`n^2 G = \sum(a_i-a_k)^4 - 2\sum(a_i-a_k)^2(b_i-b_k)^2 + \sum(b_i-b_k)^4`, so

.. math::

   n^2 G &= 2n(A_4 + B_4 - 2P_{22}) + 6(A_2^2 + B_2^2) - 4A_2B_2 - 8P_{11}^2 \\
         &= 2n \sum_i (a_i^2 - b_i^2)^2 \;+\; 6(A_2 - B_2)^2 \;+\; 8(A_2B_2 - P_{11}^2) .

All three terms are non-negative (the last by Cauchy-Schwarz), which avoids most cancellation.  The
anti-identity plan only changes the cross terms: replace ``b`` with ``b`` reversed.  Cost per direction: O(n)
after the O(n log n) sort.  :func:`sliced_gromov_wasserstein_reference` evaluates the O(n^2) double sum instead
and exists for tests.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError, ShapeError

DEFAULT_NUM_PROJECTIONS = 64


def random_projections(
    d: int,
    L: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``L`` directions drawn uniformly on the unit sphere of R^d, as the columns of a ``(d, L)`` matrix.

    Gaussian vectors normalised to unit length.  ``generator`` makes the draw reproducible; it may live on another
    device than ``device`` (the draw is then moved).
    """
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ConfigError(f"random_projections: 'd' must be a positive int, got {d!r}")
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ConfigError(f"random_projections: 'L' (number of projections) must be a positive int, got {L!r}")
    dtype = dtype or torch.get_default_dtype()
    draw_device = generator.device if generator is not None else device
    p = torch.randn(d, L, generator=generator, device=draw_device, dtype=dtype)
    if device is not None:
        p = p.to(device)
    return p / p.norm(dim=0, keepdim=True)


def _as_batched(t: object, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ShapeError(f"sliced_gromov_wasserstein: '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in (2, 3):
        raise ShapeError(
            f"sliced_gromov_wasserstein: '{name}' must have shape (n, d) or (B, n, d), got {tuple(t.shape)}"
        )
    if not t.is_floating_point():
        raise ShapeError(f"sliced_gromov_wasserstein: '{name}' must be a floating-point tensor, got {t.dtype}")
    return t if t.dim() == 3 else t.unsqueeze(0)


def _projected(c: torch.Tensor, x: torch.Tensor, num_projections: int = DEFAULT_NUM_PROJECTIONS,
               projections: torch.Tensor | None = None, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the inputs; return both sets projected on the same directions, each ``(B, n, L)``."""
    if isinstance(c, torch.Tensor) and isinstance(x, torch.Tensor) and c.dim() != x.dim():
        raise ShapeError(
            "sliced_gromov_wasserstein: 'c' and 'x' must both be (n, d) or both (B, n, d), "
            f"got c {tuple(c.shape)} and x {tuple(x.shape)}"
        )
    cb, xb = _as_batched(c, "c"), _as_batched(x, "x")
    if cb.shape[:2] != xb.shape[:2]:
        raise ShapeError(
            "sliced_gromov_wasserstein: 'c' and 'x' need the same batch size and number of points n, "
            f"got c {tuple(c.shape)} and x {tuple(x.shape)}"
        )
    if cb.shape[1] < 1:
        raise ShapeError(f"sliced_gromov_wasserstein: need at least one point, got c {tuple(c.shape)}")
    dc, dx = cb.shape[-1], xb.shape[-1]
    d = max(dc, dx)
    work = torch.promote_types(torch.promote_types(cb.dtype, xb.dtype), torch.float32)
    if projections is None:
        if isinstance(num_projections, bool) or not isinstance(num_projections, int) or num_projections < 1:
            raise ConfigError(
                f"sliced_gromov_wasserstein: 'num_projections' must be a positive int, got {num_projections!r}"
            )
        projections = random_projections(d, num_projections, generator=generator, device=cb.device, dtype=work)
    elif not isinstance(projections, torch.Tensor) or projections.dim() != 2 or projections.shape[0] != d:
        got = tuple(projections.shape) if isinstance(projections, torch.Tensor) else type(projections).__name__
        raise ShapeError(f"sliced_gromov_wasserstein: 'projections' must have shape (d={d}, L), got {got}")
    p = projections.to(device=cb.device, dtype=work)
    # Zero-padding a set to d dims and projecting equals projecting with the first rows of p.  Centring before
    # projecting (GW is translation invariant) keeps the matmul accurate for data far from the origin.
    cb = cb.to(work)
    xb = xb.to(work)
    a = (cb - cb.mean(dim=1, keepdim=True)) @ p[:dc]
    b = (xb - xb.mean(dim=1, keepdim=True)) @ p[:dx]
    return a, b


def _gw1d_monotone(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1-D GW cost of the identity / anti-identity plans between sorted columns; the smaller one, ``(B, L)``.

    ``a``, ``b``: ``(B, n, L)``, each column sorted ascending.  O(n) per column (see the module docstring).
    """
    n = a.shape[1]
    a = a - a.mean(dim=1, keepdim=True)  # re-centre: the closed form assumes sum(a) == 0 exactly
    b = b - b.mean(dim=1, keepdim=True)
    a2, b2 = a * a, b * b
    A2, B2 = a2.sum(dim=1), b2.sum(dim=1)
    common = 6.0 * (A2 - B2) ** 2

    def cost(bb: torch.Tensor, bb2: torch.Tensor) -> torch.Tensor:
        p11 = (a * bb).sum(dim=1)
        total = 2.0 * n * ((a2 - bb2) ** 2).sum(dim=1) + common + 8.0 * (A2 * B2 - p11 * p11)
        return total / (n * n)

    ascending = cost(b, b2)
    descending = cost(b.flip(1), b2.flip(1))
    return torch.minimum(ascending, descending)


def sliced_gromov_wasserstein(
    c: torch.Tensor,
    x: torch.Tensor,
    num_projections: int = DEFAULT_NUM_PROJECTIONS,
    projections: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sliced Gromov-Wasserstein discrepancy between point sets ``c`` and ``x`` (uniform weights); a scalar.

    Args:
        c: ``(n, dc)`` or ``(B, n, dc)`` -- e.g. the condition's encoder outputs, one set of n vectors per image.
        x: ``(n, dx)`` or ``(B, n, dx)`` -- same ``B`` and ``n`` as ``c``; ``dx`` may differ (zero padding).
        num_projections: number ``L`` of random directions, used when ``projections`` is not given.
        projections: a ``(max(dc, dx), L)`` matrix of directions (unit-norm columns expected, used as given);
            the same directions serve every batch element.
        generator: RNG for drawing the directions.

    Returns:
        The mean over batch and directions of the 1-D GW cost (see module docstring); differentiable in ``c``
        and ``x``.  Computed in at least float32.  O(B L n log n).
    """
    a, b = _projected(c, x, num_projections, projections, generator)
    a = torch.sort(a, dim=1).values
    b = torch.sort(b, dim=1).values
    return _gw1d_monotone(a, b).mean()


def sliced_gromov_wasserstein_reference(c: torch.Tensor, x: torch.Tensor, **directions: Any) -> torch.Tensor:
    """Slow O(n^2)-per-direction evaluation of :func:`sliced_gromov_wasserstein`; for tests.

    ``directions``: its ``num_projections`` / ``projections`` / ``generator``, with the same defaults."""
    a, b = _projected(c, x, **directions)
    a = torch.sort(a, dim=1).values.transpose(1, 2)  # (B, L, n)
    b = torch.sort(b, dim=1).values.transpose(1, 2)
    n = a.shape[-1]
    da = (a[..., :, None] - a[..., None, :]) ** 2

    def cost(bb: torch.Tensor) -> torch.Tensor:
        db = (bb[..., :, None] - bb[..., None, :]) ** 2
        return ((da - db) ** 2).sum(dim=(-1, -2)) / (n * n)

    return torch.minimum(cost(b), cost(b.flip(-1))).mean()
