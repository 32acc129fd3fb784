"""Reconstruction metrics (PSNR, SSIM) and codebook-usage statistics.

Protocol: images in ``[-1, 1]`` are mapped to ``[0, 1]`` by ``(x + 1) / 2`` and clamped, then scored with
torchmetrics' functional metrics at ``data_range = 1.0`` (identical to scoring the ``[-1, 1]`` images with range 2).
float64 inputs are scored in float64, others in float32.

* PSNR per image, ``10 log10(1 / MSE)`` with the MSE over the image's 3 x H x W values, then averaged over images
  (not the PSNR of the pooled MSE).  Identical images give ``inf``; ``psnr`` caps each value at ``max_db`` (100 dB)
  so a mean stays finite.
* SSIM per image: Gaussian window 11 x 11, sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03`` (Wang et al. 2004, torchmetrics
  defaults), mean over the valid window positions and channels, then averaged over images.

Codebook usage: fraction of the ``K`` code entries that occur, and the perplexity ``exp(H(p))`` of the empirical code
distribution (``K`` for uniform usage, 1 when one code is used).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import IQVAEError


def _to_unit(x: Tensor) -> Tensor:
    x = x.double() if x.dtype == torch.float64 else x.float()  # float64 stays float64
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def _check(x: Tensor, y: Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise IQVAEError(f"expected two (B, C, H, W) image batches of equal shape; got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}")


def psnr_per_image(x: Tensor, y: Tensor, max_db: float = 100.0) -> Tensor:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check(x, y)
    v = peak_signal_noise_ratio(_to_unit(x), _to_unit(y), data_range=1.0, reduction="none", dim=(1, 2, 3))
    return v.clamp(max=max_db)


def psnr(x: Tensor, y: Tensor, max_db: float = 100.0) -> float:
    """Mean per-image PSNR (dB) of ``x`` against ``y``; both in ``[-1, 1]``."""
    return float(psnr_per_image(x, y, max_db).mean())


def ssim_per_image(x: Tensor, y: Tensor) -> Tensor:
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check(x, y)
    if min(x.shape[-2:]) < 11:
        raise IQVAEError(f"SSIM needs images of at least 11x11 px; got {tuple(x.shape[-2:])}")
    return structural_similarity_index_measure(_to_unit(x), _to_unit(y), data_range=1.0, reduction="none")


def ssim(x: Tensor, y: Tensor) -> float:
    """Mean per-image SSIM of ``x`` against ``y``; both in ``[-1, 1]``."""
    return float(ssim_per_image(x, y).mean())


def codebook_usage(indices: Tensor, codebook_size: int) -> dict:
    """``{"used": #codes seen, "fraction": used / K, "perplexity": exp(entropy)}`` of integer code ``indices``."""
    idx = indices.reshape(-1).long()
    if idx.numel() == 0:
        raise IQVAEError("codebook_usage: no indices given")
    if int(idx.min()) < 0 or int(idx.max()) >= codebook_size:
        raise IQVAEError(f"codebook_usage: indices in [{int(idx.min())}, {int(idx.max())}] outside "
                         f"[0, {codebook_size - 1}]")
    counts = torch.bincount(idx, minlength=codebook_size).double()
    p = counts / counts.sum()
    nz = p[p > 0]
    entropy = float(-(nz * nz.log()).sum())
    used = int((counts > 0).sum())
    return {"used": used, "fraction": used / codebook_size, "perplexity": math.exp(entropy)}


def code_label_histogram(indices: Tensor, labels: Tensor, background: int = 0) -> Tensor:
    """Counts ``hist[code, label]`` over the latent cells whose pixel patch has one label other than ``background``.

    ``indices``: token maps ``(B, h, w)`` (residual quantization: one depth level); ``labels``: integer maps
    ``(B, H, W)`` with ``H``, ``W`` multiples of ``h``, ``w`` (a class per pixel, a colour id, ...).  The shared
    counting of :func:`cond_code_class_purity` and :func:`iqvae.metrics.shapes.code_colour_purity`.
    """
    idx, s = torch.as_tensor(indices), torch.as_tensor(labels)
    if idx.ndim != 3 or s.ndim != 3 or idx.shape[0] != s.shape[0] or idx.dtype.is_floating_point \
            or s.dtype.is_floating_point or s.shape[1] % idx.shape[1] or s.shape[2] % idx.shape[2]:
        raise IQVAEError(f"need integer token maps (B, h, w) and label maps (B, H, W) with H, W multiples of h, w; "
                         f"got {idx.dtype} {tuple(idx.shape)} and {s.dtype} {tuple(s.shape)}")
    B, h, w = idx.shape
    fh, fw = s.shape[1] // h, s.shape[2] // w
    cells = s.reshape(B, h, fh, w, fw).permute(0, 1, 3, 2, 4).reshape(B, h, w, fh * fw).long()
    pure = (cells == cells[..., :1]).all(-1) & (cells[..., 0] != background)
    code, label = idx[pure].long(), cells[..., 0][pure]
    if code.numel() == 0:
        raise IQVAEError("no latent cell lies wholly inside one non-background label")
    n = int(label.max()) + 1
    return torch.bincount(code * n + label, minlength=(int(code.max()) + 1) * n).reshape(-1, n)


def majority_share(hist: Tensor) -> float:
    """Share of the counts ``hist[code, label]`` that fall on each code's most frequent label."""
    return float(hist.max(dim=1).values.sum() / hist.sum())


def cond_code_class_purity(indices: Tensor, seg: Tensor, background: int = 0) -> dict:
    """How well segmentation-condition codes name a class, over the latent cells that lie wholly inside one class.

    ``indices``: condition token maps ``(B, h, w)`` (residual quantization: one depth level); ``seg``: the class maps
    ``(B, H, W)`` they encode, ``H`` and ``W`` multiples of ``h`` and ``w``; cells of class ``background`` are left
    out.  Returns ``{"cond_code_class_purity": p}``: the share of those cells whose code's most frequent class (over
    all those cells) is their own; 1 when no code is used for two classes.  A code that does not name its class
    leaves the class to context (D_c may still decode it well), which a transformer then has to infer as well.
    """
    try:
        hist = code_label_histogram(indices, seg, background)
    except IQVAEError as e:
        raise IQVAEError(f"cond_code_class_purity: {e}") from None
    return {"cond_code_class_purity": majority_share(hist)}
