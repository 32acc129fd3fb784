"""LPIPS diversity of samples drawn for the same condition (the paper's "LPIPS ↑" column).

Protocol: ``samples`` has shape ``(C, N, 3, H, W)``: ``N`` images generated for each of ``C`` conditions, in
``[-1, 1]``.  For every condition the LPIPS distance is computed for ``P`` unordered pairs ``(i, j), i < j`` of its
samples: all ``N (N - 1) / 2`` pairs with ``pairs="all"``, or ``P = pairs`` pairs drawn uniformly without
replacement from them (``torch.Generator`` seeded with ``seed``, one draw per condition in order).  Reported:
``mean`` over all ``C x P`` distances (equal to the mean of the per-condition means, as every condition has ``P``
pairs), ``std`` = population standard deviation of those ``C x P`` distances, ``per_condition`` means, and a
``protocol`` string such as ``"8 conditions × 45 pairs (all pairs of 10 samples), LPIPS-vgg"`` that names the LPIPS
variant (``LPIPS-vgg(random weights)`` for an uncalibrated stand-in).  Identical samples give exactly 0.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from ..errors import IQVAEError


def _pairs_for(n: int, pairs: str | int, g: torch.Generator) -> list[tuple[int, int]]:
    every = list(itertools.combinations(range(n), 2))
    if pairs == "all":
        return every
    k = int(pairs)
    if k > len(every):
        raise IQVAEError(f"LPIPS diversity: {k} pairs requested but {n} samples give only {len(every)} distinct pairs")
    pick = torch.randperm(len(every), generator=g)[:k].tolist()
    return [every[i] for i in sorted(pick)]


def lpips_diversity(samples: Tensor, lpips_model: nn.Module, pairs: str | int = "all", seed: int = 0,
                    batch_size: int = 32) -> dict:
    """Mean / std LPIPS between samples of the same condition; see the module docstring."""
    if samples.dim() != 5 or samples.shape[2] != 3:
        raise IQVAEError(f"LPIPS diversity expects samples of shape (C, N, 3, H, W); got {tuple(samples.shape)}")
    c, n = samples.shape[:2]
    if n < 2:
        raise IQVAEError(f"LPIPS diversity needs at least 2 samples per condition; got {n}")
    if pairs != "all" and (isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1):
        raise IQVAEError(f"pairs must be 'all' or a positive int; got {pairs!r}")
    g = torch.Generator().manual_seed(seed)
    plan = [(ci, i, j) for ci in range(c) for i, j in _pairs_for(n, pairs, g)]
    dev = next(iter(lpips_model.parameters()), torch.empty(0)).device
    dists = []
    with torch.no_grad():
        for k in range(0, len(plan), batch_size):
            chunk = plan[k:k + batch_size]
            a = torch.stack([samples[ci, i] for ci, i, _ in chunk]).to(dev)
            b = torch.stack([samples[ci, j] for ci, _, j in chunk]).to(dev)
            d = lpips_model(a, b).reshape(-1).double().cpu()
            same = (a == b).flatten(1).all(1).cpu()
            dists.append(torch.where(same, torch.zeros_like(d), d))
    d = torch.cat(dists)
    p = len(plan) // c
    per_condition = d.view(c, p).mean(1)
    label = getattr(lpips_model, "label", type(lpips_model).__name__)
    which = f"all pairs of {n} samples" if pairs == "all" else f"random pairs of {n} samples, seed {seed}"
    return {
        "mean": float(d.mean()),
        "std": float(d.std(correction=0)),
        "per_condition": per_condition.tolist(),
        "num_conditions": c,
        "pairs_per_condition": p,
        "protocol": f"{c} conditions × {p} pairs ({which}), {label}",
    }
