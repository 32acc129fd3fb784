"""Exact metrics of the Shapes world (:mod:`iqvae.data.shapes`): is a generated image right for its condition?

All metrics read colours by *nearest colour*: a colour (RGB in 0..255) is assigned to the nearest of the 18 object
palette colours or to the grey axis (background), whichever is closer; the world guarantees >= 52 units between a
true colour and any decision boundary (see the shapes module docstring).

* :func:`palette_accuracy`: fraction of object regions whose mean colour is nearest to an allowed colour of the
  object's class.
* :func:`mask_adherence`: mIoU between a condition segmentation and the segmentation recovered from the image
  (over the whole evaluated set, as segmentation benchmarks count it; per image on request).
* :func:`mode_coverage`: over N images of one condition, the fraction of each object's allowed colours that appear.

Object regions are the *visible* pixels of each object of the scene description (``meta``), re-rendered at the
resolution of the images; an object with no visible pixel at that resolution is skipped.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
import torch

from ..data.shapes import CLASS_NAMES, COLOURS, OBJECT_CLASSES, PALETTES, render_instance_map
from ..errors import DataError, IQVAEError
from .recon import code_label_histogram, majority_share

# Row k of the colour table: its rgb, the class it belongs to and its index in that class's palette.
_TABLE = [(COLOURS[n], CLASS_NAMES.index(c), i) for c in OBJECT_CLASSES for i, n in enumerate(PALETTES[c])]
COLOUR_TABLE = torch.tensor([t[0] for t in _TABLE], dtype=torch.float32)  # (18, 3)
COLOUR_CLASS = torch.tensor([t[1] for t in _TABLE], dtype=torch.int64)  # (18,)
COLOUR_INDEX = torch.tensor([t[2] for t in _TABLE], dtype=torch.int64)  # (18,)
_CHUNK = 1 << 16


def _check_images(images: torch.Tensor, what: str = "images") -> torch.Tensor:
    x = torch.as_tensor(images)
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3] or not x.dtype.is_floating_point:
        raise DataError(f"{what} must be float (B, 3, H, H) in [-1, 1]; got {x.dtype} {tuple(x.shape)}")
    return x.detach().float().cpu()


def to_rgb255(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) float in [0, 255]."""
    x = _check_images(images)
    return ((x.clamp(-1, 1) + 1.0) * 127.5).permute(0, 2, 3, 1)


def nearest_colour(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest palette colour of RGB values ``(..., 3)`` in 0..255.

    Returns ``(class, palette_index)`` int64 ``(...)``: class 0 (index -1) where the grey axis is nearest,
    else the class owning the nearest palette colour and that colour's index in the class palette.
    """
    arr = torch.as_tensor(rgb, dtype=torch.float32).numpy()
    flat = arr.reshape(-1, 3)
    table = COLOUR_TABLE.numpy()
    cls = np.empty(len(flat), np.int64)
    idx = np.empty(len(flat), np.int64)
    for a in range(0, len(flat), _CHUNK):  # bounded memory for large batches
        x = flat[a : a + _CHUNK]
        d2 = (x * x).sum(1, keepdims=True) - 2.0 * x @ table.T + (table * table).sum(1)[None]  # (P, 18)
        k = d2.argmin(axis=1)
        grey2 = ((x - x.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
        is_bg = grey2 < d2[np.arange(len(k)), k]
        cls[a : a + _CHUNK] = np.where(is_bg, 0, COLOUR_CLASS.numpy()[k])
        idx[a : a + _CHUNK] = np.where(is_bg, -1, COLOUR_INDEX.numpy()[k])
    shape = arr.shape[:-1]
    return torch.from_numpy(cls.reshape(shape)), torch.from_numpy(idx.reshape(shape))


def recover_segmentation(images: torch.Tensor) -> torch.Tensor:
    """Segmentation recovered from images by nearest palette colour: int64 (B, H, W), 0 = background."""
    return nearest_colour(to_rgb255(images))[0]


def object_masks(meta: dict[str, Any], resolution: int) -> torch.Tensor:
    """Visible region of each object of ``meta`` at ``resolution``: bool (n_objects, H, W)."""
    inst = torch.from_numpy(render_instance_map(meta, resolution))
    n = len(meta["objects"])
    return inst[None] == torch.arange(1, n + 1)[:, None, None]


def object_colours(images: torch.Tensor, metas: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Per image, per object: mean colour of its visible region and the nearest colour's class / palette index.

    Each entry: ``{"class", "pixels", "mean_rgb" (list or None), "nearest_class", "nearest_colour", "correct"}``
    (``correct``: the nearest colour is an allowed colour of the object's class; None when no pixel is visible).
    """
    rgb = to_rgb255(images).numpy()
    if len(metas) != rgb.shape[0]:
        raise DataError(f"got {rgb.shape[0]} images but {len(metas)} scene descriptions (metas)")
    res = rgb.shape[1]
    counts, means = [], []
    for b, meta in enumerate(metas):
        n = len(meta["objects"])
        inst = render_instance_map(meta, res).ravel()
        cnt = np.bincount(inst, minlength=n + 1)[1 : n + 1]
        sums = np.stack([np.bincount(inst, weights=rgb[b, ..., c].ravel(), minlength=n + 1) for c in range(3)], 1)
        counts.append(cnt)
        means.append(sums[1 : n + 1] / np.maximum(cnt, 1)[:, None])
    all_means = np.concatenate(means) if means else np.zeros((0, 3))
    near_cls, near_idx = (t.tolist() for t in nearest_colour(torch.from_numpy(all_means).float()))
    out, pos = [], 0
    for meta, cnt, mean in zip(metas, counts, means):
        rows = []
        for k, o in enumerate(meta["objects"]):
            row: dict[str, Any] = {"class": o["class"], "pixels": int(cnt[k]), "mean_rgb": None,
                                   "nearest_class": None, "nearest_colour": None, "correct": None}  # fmt: skip
            if cnt[k]:
                row.update(mean_rgb=mean[k].tolist(), nearest_class=near_cls[pos], nearest_colour=near_idx[pos],
                           correct=near_cls[pos] == o["class"])  # fmt: skip
            pos += 1
            rows.append(row)
        out.append(rows)
    return out


def palette_accuracy(images: torch.Tensor, metas: Sequence[dict[str, Any]]) -> float:
    """Fraction of (visible) object regions whose mean colour is nearest to an allowed colour of their class."""
    flags = [r["correct"] for rows in object_colours(images, metas) for r in rows if r["correct"] is not None]
    if not flags:
        raise DataError("palette_accuracy: no visible object in any of the scene descriptions")
    return float(np.mean(flags))


def iou_per_class(pred: torch.Tensor, target: torch.Tensor) -> dict[int, float]:
    """IoU of every class present in ``pred`` or ``target`` (two int label maps of the same shape)."""
    p = torch.as_tensor(pred).reshape(-1).long().numpy()
    t = torch.as_tensor(target).reshape(-1).long().numpy()
    if p.shape != t.shape:
        raise DataError(f"label maps of different sizes: {p.size} and {t.size} pixels")
    n = int(max(p.max(initial=0), t.max(initial=0))) + 1
    inter = np.bincount(p[p == t], minlength=n)
    union = np.bincount(p, minlength=n) + np.bincount(t, minlength=n) - inter
    return {c: float(inter[c] / union[c]) for c in np.nonzero(union)[0].tolist()}


MiouProtocol = Literal["dataset", "image"]


def miou_of_maps(pred: torch.Tensor, target: torch.Tensor, protocol: MiouProtocol = "dataset") -> float:
    """mIoU of two int label maps ``(B, H, W)``.

    ``dataset`` (the segmentation benchmarks' protocol: SPADE, OASIS, mmsegmentation): each class's intersection and
    union are summed over all B maps, then the IoU is averaged over the classes whose summed union is non-zero.
    ``image``: per map the mean IoU over the classes present in its prediction or target (:func:`iou_per_class`),
    then the mean over maps.  The per-image protocol gives a class that appears in a map's prediction only (a few
    stray pixels of a wrong colour at a blurred boundary) an IoU of 0 in that map's mean, so reconstructions with
    97 % of pixels right can score 0.65 (docs/performance.md); the dataset protocol weighs those pixels by their
    count.  Both are 1 for identical maps.
    """
    p, t = torch.as_tensor(pred), torch.as_tensor(target)
    if p.shape != t.shape or p.ndim != 3 or p.dtype.is_floating_point or t.dtype.is_floating_point:
        raise DataError(f"mIoU needs two int (B, H, W) label maps of one shape; got {p.dtype} {tuple(p.shape)} and "
                        f"{t.dtype} {tuple(t.shape)}")
    if protocol == "image":
        return float(np.mean([np.mean(list(iou_per_class(p[b], t[b]).values())) for b in range(p.shape[0])]))
    if protocol != "dataset":
        raise DataError(f"mIoU protocol must be 'dataset' or 'image'; got {protocol!r}")
    pf, tf = p.reshape(-1).long().numpy(), t.reshape(-1).long().numpy()
    if pf.size and min(pf.min(), tf.min()) < 0:
        raise DataError("mIoU label maps must hold non-negative class ids")
    n = int(max(pf.max(initial=0), tf.max(initial=0))) + 1
    inter = np.bincount(pf[pf == tf], minlength=n)
    union = np.bincount(pf, minlength=n) + np.bincount(tf, minlength=n) - inter
    present = union > 0
    return float(np.mean(inter[present] / union[present]))


def mask_adherence(images: torch.Tensor, seg: torch.Tensor, protocol: MiouProtocol = "dataset") -> float:
    """mIoU between ``seg`` (B, H, W) and :func:`recover_segmentation` of the images (:func:`miou_of_maps`:
    ``dataset``, summed over the B images, is ``mask_miou``; ``image``, the mean of per-image mIoUs over the classes
    present in either map, is ``mask_miou_per_image``).  Background counts as a class, so missing, extra and
    misplaced objects all lower it.
    """
    pred = recover_segmentation(images)
    seg = torch.as_tensor(seg)
    if seg.shape != pred.shape or seg.dtype.is_floating_point:
        raise DataError(f"seg must be integer (B, H, W) = {tuple(pred.shape)}; got {seg.dtype} {tuple(seg.shape)}")
    return miou_of_maps(pred, seg, protocol)


def mode_coverage(images: torch.Tensor, meta: dict[str, Any]) -> float:
    """Fraction of each object's allowed colours that appear among N images of one condition, averaged over objects.

    A colour "appears" when some image's mean colour over the object's region is nearest to it (colours of other
    classes do not count).  With all images of one colour the value is ``1 / len(palette)``.
    """
    x = _check_images(images)
    per_image = object_colours(x, [meta] * x.shape[0])
    scores = []
    for k, o in enumerate(meta["objects"]):
        seen = {rows[k]["nearest_colour"] for rows in per_image if rows[k]["correct"]}
        if per_image and per_image[0][k]["pixels"] == 0:
            continue
        scores.append(len(seen) / len(PALETTES[CLASS_NAMES[o["class"]]]))
    if not scores:
        raise DataError("mode_coverage: the scene description has no visible object")
    return float(np.mean(scores))


def code_colour_purity(indices: torch.Tensor, metas: Sequence[dict[str, Any]], resolution: int) -> dict[str, float]:
    """How well image codes name an object colour, over the latent cells that lie wholly inside one object.

    ``indices``: image token maps ``(B, h, w)`` (for residual quantization pass one depth level); each cell covers a
    ``resolution / h`` pixel patch of the scene ``metas[b]``.  Returns

    * ``code_colour_purity``: the share of those cells whose code's most frequent colour (over all those cells) is
      their own object's colour; 1 when no code is used for two colours;
    * ``codes_per_colour``: the mean over colours of ``exp(H(code | colour))``, the effective number of codes a
      colour uses (1 when every colour has one code).
    """
    idx = torch.as_tensor(indices)
    if idx.ndim != 3 or idx.dtype.is_floating_point or idx.shape[1] != idx.shape[2] or len(metas) != idx.shape[0]:
        raise DataError(f"indices must be integer (B, h, h) with one scene description per map; got {idx.dtype} "
                        f"{tuple(idx.shape)} and {len(metas)} descriptions")
    if resolution % idx.shape[1]:
        raise DataError(f"resolution {resolution} is not a multiple of the token grid {idx.shape[1]}")
    names = list(COLOURS)
    colour_maps = []  # colour id + 1 per pixel, 0 outside objects (a colour belongs to one class, so to one object)
    for meta in metas:
        ids = np.array([0] + [names.index(o["colour_name"]) + 1 for o in meta["objects"]], np.int64)
        colour_maps.append(torch.from_numpy(ids[render_instance_map(meta, resolution)]))
    try:
        hist = code_label_histogram(idx, torch.stack(colour_maps)).double()
    except IQVAEError as e:
        raise DataError(f"code_colour_purity: {e}") from None
    per = []
    for c in torch.nonzero(hist.sum(dim=0)).flatten().tolist():
        p = hist[:, c][hist[:, c] > 0] / hist[:, c].sum()
        per.append(float(torch.exp(-(p * p.log()).sum())))
    return {"code_colour_purity": majority_share(hist), "codes_per_colour": float(np.mean(per))}
