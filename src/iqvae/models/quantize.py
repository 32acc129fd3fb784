r"""Vector quantisers for the IQ-VAE tokenizer: plain VQ (VQ-VAE / VQGAN) and residual VQ (RQ-VAE, Sec. 3.1).

Both map an encoder feature map ``z`` of shape ``(B, D, H, W)`` to codebook vectors and return a
:class:`QuantizerOutput`.  Shared behaviour:

* **Loss** (VQ-VAE, van den Oord et al. 2017): ``||sg(z) - e||^2 + beta * ||z - sg(e)||^2`` with means over
  elements.  The first (codebook) term moves the codes, the second (commitment) term, weighted by ``beta``,
  moves the encoder.  (taming-transformers' legacy quantizer puts ``beta`` on the codebook term; not here.)
* **Straight-through**: ``z_q = z + (e - z).detach()`` -- forward value ``e``, gradient of ``z_q`` w.r.t. ``z``
  is the identity.  The codebook gets gradient only from the codebook term.
* **k-means init** (``kmeans_init=True``): on the first forward in training mode the codebook is set by
  ``kmeans_iters`` Lloyd iterations on a random subset (at most ``KMEANS_MAX_POINTS``) of that batch's encoder
  outputs, seeded with randomly chosen outputs.  A buffer records that it happened, so a restored checkpoint does
  not re-initialise.
* **Dead-code restart** (``dead_code_threshold > 0``): buffer ``ema_usage`` holds an exponential moving average
  (decay ``usage_decay``) of how many vectors were assigned to each code per training batch (set to the first
  batch's counts on the first update).  At the start of each training forward, codes whose EMA count is below
  ``dead_code_threshold`` are re-initialised to randomly chosen encoder outputs of the current batch (for RQ:
  residuals of the current batch, pooled over depths), and their EMA count is reset to the fair share
  ``assignments / num_codes`` so they get a grace period.  Restarting before quantising keeps the forward
  and its gradients consistent with the codebook actually used.  The random choice uses torch's global RNG
  for the device of ``z``, so it is reproducible under ``torch.manual_seed``.  Optimiser state of restarted
  rows is not touched; in multi-process training each process restarts on its own batch (no sync).
* All statistics live in registered buffers (``ema_usage``, ``num_updates``, ``kmeans_done``) so that they
  are part of ``state_dict`` and survive a safetensors checkpoint.

Nothing of this runs in eval mode: there the quantiser is a pure function of its parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, IQVAEError, ShapeError

KMEANS_MAX_POINTS = 65536
DISTANCE_CHUNK_ELEMENTS = 1 << 24


@dataclass
class QuantizerOutput:
    """What a quantiser returns.

    Attributes:
        z_q: ``(B, D, H, W)`` quantised features with the straight-through gradient.
        indices: int64 code indices, ``(B, H, W)`` for VQ and ``(B, H, W, depth)`` for RQ.
        loss: scalar codebook + ``beta`` * commitment loss.
        perplexity: scalar ``exp(entropy)`` of the code histogram of this batch (1 .. num_codes).
        usage: scalar fraction of codes used at least once in this batch.
    """

    z_q: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    perplexity: torch.Tensor
    usage: torch.Tensor


def perplexity_of_counts(counts: torch.Tensor) -> torch.Tensor:
    """``exp`` of the entropy of the normalised histogram ``counts`` (0 log 0 = 0); 0 for an empty histogram."""
    counts = counts.double()
    total = counts.sum()
    if total <= 0:
        return torch.zeros((), dtype=torch.float32, device=counts.device)
    p = counts / total
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum()
    return torch.exp(entropy).float()


def nearest_code(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row (squared Euclidean distance) for each row of ``vectors``; int64.

    Computed without gradient, in at least float32, via ``|v|^2 - 2 v.e + |e|^2``, in row chunks so that the
    distance matrix never exceeds ``DISTANCE_CHUNK_ELEMENTS`` entries (large codebooks x many vectors).
    """
    with torch.no_grad():
        dtype = torch.promote_types(torch.promote_types(vectors.dtype, codebook.dtype), torch.float32)
        v, e = vectors.to(dtype), codebook.to(dtype)
        e_sq = (e * e).sum(1)[None, :]
        rows = max(1, DISTANCE_CHUNK_ELEMENTS // max(1, e.shape[0]))
        out = [
            ((chunk * chunk).sum(1, keepdim=True) - 2.0 * (chunk @ e.T) + e_sq).argmin(dim=1)
            for chunk in v.split(rows)
        ]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=v.device)


def _check_positive_int(value: object, name: str, owner: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{owner}: '{name}' must be an int >= {minimum}, got {value!r}")
    return value


def _random_rows(points: torch.Tensor, k: int) -> torch.Tensor:
    """``k`` rows of ``points`` chosen at random (without replacement when possible), global RNG."""
    n = points.shape[0]
    if n >= k:
        pick = torch.randperm(n, device=points.device)[:k]
    else:
        pick = torch.randint(n, (k,), device=points.device)
    return points[pick]


def lloyd_kmeans(points: torch.Tensor, init: torch.Tensor, iters: int, spherical: bool = False) -> torch.Tensor:
    """``iters`` Lloyd iterations from centroids ``init``; empty clusters keep their centroid.

    With ``spherical`` the points are assumed unit-norm and centroids are re-normalised after each update
    (k-means for cosine similarity).
    """
    centroids = init.clone()
    for _ in range(iters):
        assign = nearest_code(points, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, points.to(centroids.dtype))
        counts = torch.bincount(assign, minlength=centroids.shape[0]).to(centroids.dtype)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        if spherical:
            centroids = F.normalize(centroids, dim=1)
    return centroids


class _CodebookQuantizer(nn.Module):
    """Codebook parameter, usage buffers, input checks and dead-code restart shared by VQ and RQ."""

    def __init__(self, num_codes: int, dim: int, *, beta: float = 0.25, kmeans_init: bool = False,
                 kmeans_iters: int = 10, dead_code_threshold: float = 0.0, usage_decay: float = 0.99) -> None:
        super().__init__()
        owner = type(self).__name__
        self.num_codes = _check_positive_int(num_codes, "num_codes", owner)
        self.dim = _check_positive_int(dim, "dim", owner)
        self.kmeans_iters = _check_positive_int(kmeans_iters, "kmeans_iters", owner, minimum=0)
        for name, value in (("beta", beta), ("dead_code_threshold", dead_code_threshold)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{owner}: '{name}' must be a finite number >= 0, got {value!r}")
        if isinstance(usage_decay, bool) or not isinstance(usage_decay, (int, float)) or not 0 <= usage_decay < 1:
            raise ConfigError(f"{owner}: 'usage_decay' must be a number in [0, 1), got {usage_decay!r}")
        if not isinstance(kmeans_init, bool):
            raise ConfigError(f"{owner}: 'kmeans_init' must be true or false, got {kmeans_init!r}")
        self.beta = float(beta)
        self.kmeans_init = kmeans_init
        self.dead_code_threshold = float(dead_code_threshold)
        self.usage_decay = float(usage_decay)
        self.weight = nn.Parameter(torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes))
        self.register_buffer("ema_usage", torch.zeros(num_codes))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))
        self.register_buffer("kmeans_done", torch.zeros((), dtype=torch.bool))

    # -- input checks ------------------------------------------------------------------------------------------

    def _flatten(self, z: object) -> torch.Tensor:
        """``(B, D, H, W)`` -> ``(B*H*W, D)`` after checking the shape."""
        owner = type(self).__name__
        if not isinstance(z, torch.Tensor):
            raise ShapeError(f"{owner}: 'z' must be a torch.Tensor of shape (B, {self.dim}, H, W), got {type(z)}")
        if z.dim() != 4 or z.shape[1] != self.dim:
            raise ShapeError(f"{owner}: 'z' must have shape (B, {self.dim}, H, W), got {tuple(z.shape)}")
        if not z.is_floating_point():
            raise ShapeError(f"{owner}: 'z' must be a floating-point tensor, got {z.dtype}")
        return z.permute(0, 2, 3, 1).reshape(-1, self.dim)

    def _check_indices(self, indices: object, ndim: int, shape_text: str) -> torch.Tensor:
        owner = type(self).__name__
        if not isinstance(indices, torch.Tensor) or indices.dim() != ndim:
            got = tuple(indices.shape) if isinstance(indices, torch.Tensor) else type(indices).__name__
            raise ShapeError(f"{owner}.embed: 'indices' must have shape {shape_text}, got {got}")
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise ShapeError(f"{owner}.embed: 'indices' must be an integer tensor, got {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_codes):
            raise IQVAEError(
                f"{owner}.embed: 'indices' must lie in [0, {self.num_codes}), "
                f"got values in [{int(indices.min())}, {int(indices.max())}]"
            )
        return indices.long()

    # -- usage statistics and restarts -------------------------------------------------------------------------

    @torch.no_grad()
    def _update_usage(self, counts: torch.Tensor) -> None:
        counts = counts.to(self.ema_usage.dtype)
        if int(self.num_updates) == 0:
            self.ema_usage.copy_(counts)
        else:
            self.ema_usage.mul_(self.usage_decay).add_(counts, alpha=1.0 - self.usage_decay)
        self.num_updates += 1

    @torch.no_grad()
    def _dead_codes(self) -> torch.Tensor:
        if self.dead_code_threshold <= 0 or int(self.num_updates) == 0:
            return torch.zeros(0, dtype=torch.long, device=self.weight.device)
        return torch.nonzero(self.ema_usage < self.dead_code_threshold).flatten()

    @torch.no_grad()
    def _restart(self, dead: torch.Tensor, candidates: torch.Tensor, assignments_per_batch: int) -> None:
        """Re-initialise codebook rows ``dead`` to random rows of ``candidates``."""
        if dead.numel() == 0 or candidates.shape[0] == 0:
            return
        self.weight[dead] = _random_rows(candidates, dead.numel()).to(self.weight.dtype)
        self.ema_usage[dead] = assignments_per_batch / self.num_codes

    def codebook_stats(self) -> dict[str, float]:
        """Statistics of the EMA usage counts (training batches only).

        Returns ``usage`` (fraction of codes whose EMA count is at least ``max(dead_code_threshold, 1e-3 *
        mean count)``), ``perplexity`` (exp-entropy of the EMA histogram), ``dead_codes`` (codes below
        ``dead_code_threshold``; 0 when restarts are off) and ``num_updates`` (training batches seen).
        """
        ema = self.ema_usage.detach().double()
        updates = int(self.num_updates)
        if updates == 0 or float(ema.sum()) <= 0:
            return {"usage": 0.0, "perplexity": 0.0, "dead_codes": 0, "num_updates": updates}
        floor = max(self.dead_code_threshold, 1e-3 * float(ema.mean()))
        dead = int((ema < self.dead_code_threshold).sum()) if self.dead_code_threshold > 0 else 0
        return {
            "usage": float((ema >= floor).double().mean()),
            "perplexity": float(perplexity_of_counts(ema)),
            "dead_codes": dead,
            "num_updates": updates,
        }

    def _batch_stats(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        counts = torch.bincount(indices.flatten(), minlength=self.num_codes)
        usage = (counts > 0).float().mean()
        return counts, perplexity_of_counts(counts), usage

    # -- the frame of forward: input, training-time codebook upkeep, output -------------------------------------

    def _prepare(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` flattened to ``(N, D)``; in training, first the one-off k-means initialisation, then the dead-code
        restarts (:meth:`_restart_dead` of the subclass)."""
        flat = self._flatten(z)
        if self.training:
            with torch.no_grad():
                if self.kmeans_init and not bool(self.kmeans_done):
                    self._kmeans_initialise(flat.detach())
                self._restart_dead(flat)
        return flat

    def _output(self, z: torch.Tensor, zq: torch.Tensor, idx: torch.Tensor, loss: torch.Tensor) -> QuantizerOutput:
        """Batch statistics (EMA usage updated in training) and the output in ``z``'s layout; ``zq`` ``(N, D)``,
        ``idx`` ``(N,)`` or ``(N, depth)``."""
        counts, perplexity, usage = self._batch_stats(idx)
        if self.training:
            self._update_usage(counts)
        B, _, H, W = z.shape
        return QuantizerOutput(
            z_q=zq.view(B, H, W, self.dim).permute(0, 3, 1, 2),
            indices=idx.view(B, H, W, *idx.shape[1:]),
            loss=loss,
            perplexity=perplexity,
            usage=usage,
        )

    def extra_repr(self) -> str:
        return (
            f"num_codes={self.num_codes}, dim={self.dim}, beta={self.beta}, kmeans_init={self.kmeans_init}, "
            f"dead_code_threshold={self.dead_code_threshold}"
        )


class VectorQuantizer(_CodebookQuantizer):
    """Nearest-neighbour vector quantiser with a learned codebook of ``num_codes`` vectors of size ``dim``.

    With ``l2_norm=True`` both the encoder outputs and the codes are l2-normalised along ``D`` before the
    nearest-neighbour search and in the loss (cosine-similarity codebook, as in ViT-VQGAN); ``z_q`` is then made
    of unit vectors and the straight-through path is ``normalize(z) + (e - normalize(z)).detach()``, so the
    gradient w.r.t. ``z`` passes through the normalisation.  See the module docstring for loss, k-means
    initialisation and dead-code restarts.
    """

    def __init__(self, num_codes: int, dim: int, *, l2_norm: bool = False, **codebook: Any) -> None:
        """``codebook``: ``beta``, ``kmeans_init``, ``kmeans_iters``, ``dead_code_threshold``, ``usage_decay`` (see
        :class:`_CodebookQuantizer` for their defaults)."""
        super().__init__(num_codes, dim, **codebook)
        if not isinstance(l2_norm, bool):
            raise ConfigError(f"VectorQuantizer: 'l2_norm' must be true or false, got {l2_norm!r}")
        self.l2_norm = l2_norm

    @property
    def codebook(self) -> torch.Tensor:
        """The effective ``(num_codes, dim)`` codebook (rows l2-normalised when ``l2_norm``)."""
        return F.normalize(self.weight, dim=1) if self.l2_norm else self.weight

    @torch.no_grad()
    def _kmeans_initialise(self, flat: torch.Tensor) -> None:
        points = _random_rows(flat, min(flat.shape[0], KMEANS_MAX_POINTS))
        if self.l2_norm:
            points = F.normalize(points, dim=1)
        centroids = lloyd_kmeans(
            points.to(self.weight.dtype),
            _random_rows(points, self.num_codes).to(self.weight.dtype),
            self.kmeans_iters,
            spherical=self.l2_norm,
        )
        self.weight.copy_(centroids)
        self.kmeans_done.fill_(True)

    def _restart_dead(self, flat: torch.Tensor) -> None:
        self._restart(self._dead_codes(), flat.detach(), flat.shape[0])

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantise ``z`` ``(B, D, H, W)``; see :class:`QuantizerOutput`."""
        flat = self._prepare(z)
        zf = F.normalize(flat, dim=1) if self.l2_norm else flat
        codebook = self.codebook
        idx = nearest_code(zf.detach(), codebook.detach())
        e = F.embedding(idx, codebook).to(zf.dtype)
        loss = F.mse_loss(e, zf.detach()) + self.beta * F.mse_loss(zf, e.detach())
        zq = zf + (e - zf).detach()
        return self._output(z, zq, idx, loss)

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook vectors for ``indices`` ``(B, H, W)``, as a ``(B, D, H, W)`` feature map."""
        idx = self._check_indices(indices, 3, "(B, H, W)")
        return F.embedding(idx, self.codebook).permute(0, 3, 1, 2)


class ResidualQuantizer(_CodebookQuantizer):
    r"""Residual quantiser of RQ-VAE (Lee et al. 2022, Sec. 3.1) with ONE codebook shared by all ``depth`` steps.

    Coarse to fine: :math:`r_0 = z`; :math:`k_d = \arg\min_k \|r_{d-1} - e_k\|`; :math:`r_d = r_{d-1} - e_{k_d}`;
    the partial sums :math:`\hat z^{(d)} = \sum_{d' \le d} e_{k_{d'}}` approximate ``z`` ever more finely and
    ``z_q = z + (\hat z^{(depth)} - z).detach()``.

    Loss, summed over depths as in the paper's Eq. (7):

    * commitment, ``beta * ||z - sg(\hat z^{(d)})||^2`` on each partial sum (RQ-VAE's definition);
    * codebook, ``||sg(r_{d-1}) - e_{k_d}||^2`` -- each code is pulled toward the residuals it quantised, the
      gradient counterpart of the EMA update RQ-VAE uses (``r_{d-1} - e_{k_d} = z - \hat z^{(d)}``, so both
      terms have the same value per depth).

    The official RQ-VAE code averages over depths instead of summing; divide the loss weight by ``depth`` to
    match it.  With ``depth=1`` this is exactly :class:`VectorQuantizer` (no ``l2_norm``: residuals are not unit
    vectors).  k-means init: random encoder outputs, then ``kmeans_iters`` *residual* Lloyd steps (encode the
    subset with RQ, move each code to the mean of all residuals assigned to it at any depth).  Dead-code
    restarts draw from the current batch's residuals ``r_0 .. r_{depth-1}``, pooled.
    """

    def __init__(self, num_codes: int, dim: int, depth: int, **codebook: Any) -> None:
        """``codebook``: the options of :class:`VectorQuantizer` but ``l2_norm``."""
        super().__init__(num_codes, dim, **codebook)
        self.depth = _check_positive_int(depth, "depth", "ResidualQuantizer")

    @property
    def codebook(self) -> torch.Tensor:
        """The shared ``(num_codes, dim)`` codebook."""
        return self.weight

    @torch.no_grad()
    def _encode_residuals(self, flat: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Residuals fed to each depth ``(depth, N, D)`` and the codes chosen ``(depth, N)``; no gradient."""
        residual = flat.detach().to(codebook.dtype)
        inputs, codes = [], []
        for _ in range(self.depth):
            k = nearest_code(residual, codebook)
            inputs.append(residual)
            codes.append(k)
            residual = residual - codebook[k]
        return torch.stack(inputs), torch.stack(codes)

    @torch.no_grad()
    def _kmeans_initialise(self, flat: torch.Tensor) -> None:
        points = _random_rows(flat, min(flat.shape[0], KMEANS_MAX_POINTS)).to(self.weight.dtype)
        codebook = _random_rows(points, self.num_codes).clone()
        for _ in range(self.kmeans_iters):
            inputs, codes = self._encode_residuals(points, codebook)
            inputs, codes = inputs.reshape(-1, self.dim), codes.flatten()
            sums = torch.zeros_like(codebook).index_add_(0, codes, inputs)
            counts = torch.bincount(codes, minlength=self.num_codes).to(codebook.dtype)
            filled = counts > 0
            codebook[filled] = sums[filled] / counts[filled, None]
        self.weight.copy_(codebook)
        self.kmeans_done.fill_(True)

    def _restart_dead(self, flat: torch.Tensor) -> None:
        dead = self._dead_codes()
        if dead.numel():
            inputs, _ = self._encode_residuals(flat, self.weight)
            self._restart(dead, inputs.reshape(-1, self.dim), flat.shape[0] * self.depth)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantise ``z`` ``(B, D, H, W)``; ``indices`` are ``(B, H, W, depth)``."""
        flat = self._prepare(z)
        codebook = self.weight
        residual = flat.detach()
        partial = torch.zeros_like(flat)
        codebook_loss = flat.new_zeros(())
        commitment = flat.new_zeros(())
        codes = []
        for _ in range(self.depth):
            k = nearest_code(residual, codebook.detach())
            e = F.embedding(k, codebook).to(flat.dtype)
            codebook_loss = codebook_loss + F.mse_loss(e, residual)
            residual = residual - e.detach()
            partial = partial + e.detach()
            commitment = commitment + F.mse_loss(flat, partial)
            codes.append(k)
        idx = torch.stack(codes, dim=1)  # (N, depth)
        zq = flat + (partial - flat).detach()
        return self._output(z, zq, idx, codebook_loss + self.beta * commitment)

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Sum of the codes ``indices`` ``(B, H, W, depth)`` over depth, as a ``(B, D, H, W)`` feature map.

        Any depth ``<= self.depth`` is accepted in the last dimension (a partial sum, coarse reconstruction).
        """
        idx = self._check_indices(indices, 4, f"(B, H, W, {self.depth})")
        if not 1 <= idx.shape[-1] <= self.depth:
            raise ShapeError(
                f"ResidualQuantizer.embed: 'indices' last dimension must be 1..{self.depth} (depth), "
                f"got shape {tuple(indices.shape)}"
            )
        return F.embedding(idx, self.weight).sum(dim=3).permute(0, 3, 1, 2)
