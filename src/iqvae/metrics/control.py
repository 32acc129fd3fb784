"""Controllability: does a generated image follow its condition?  (ControlNet++ / ControlAR protocol, any dataset.)

A *judge* reads a condition back from each image and compares it with the condition the image was generated from;
the same judge applied to the real image of each condition gives the **oracle** row (what a perfect generator would
score under this judge, i.e. the judge's own error).  Pure arithmetic here; the condition predictor that reads
seg / layout / keypoints back is :class:`iqvae.models.predictor.ConditionPredictor` (trained by
:mod:`iqvae.train.predictor`), and each modality names its score in :attr:`iqvae.modalities.Modality.control`.

* ``canny_f1`` (edge): OpenCV Canny 100 / 200 (:func:`iqvae.data.conditions.canny_edges`) of the generated image
  against the input edge map at the same resolution, per image: ``F1 = 2 |P & T| / (|P| + |T|)`` over edge pixels
  (1 when both maps are empty), then the mean over images.  ``tolerance`` r > 0 counts a predicted edge pixel as
  right when a true one lies within Chebyshev distance r, and a true one as found when a predicted one does
  (precision and recall each through a (2r + 1)^2 dilation of the other map; r = 0 is the exact protocol).
* ``miou`` (seg): each class's intersection and union summed over all images, then the mean IoU over the classes
  present (background included): the segmentation benchmarks' protocol and that of the Shapes world's exact
  ``mask_miou`` (:func:`iqvae.metrics.shapes.miou_of_maps`), so the two can be read side by side.
* ``box_iou`` (layout): per image, the mean over classes whose box plane is non-empty in the prediction (> 0.5) or
  the condition (> 0.5) of the IoU of the two planes, then the mean over images that have any such class.
* ``keypoint_error`` (keypoints; lower is better): for every keypoint channel whose condition heatmap peaks at
  >= 0.5 (the keypoint is present), the distance between the predicted heatmap's arg-max pixel and the condition's,
  divided by the image side; the mean over all present keypoints of all images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from ..errors import DataError

if TYPE_CHECKING:
    from .shapes import MiouProtocol

CANNY_LOW, CANNY_HIGH = 100, 200
KEYPOINT_PRESENT = 0.5


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """float ``(N, 3, H, W)`` in [-1, 1] -> uint8 ``(N, H, W, 3)`` (clamped, rounded)."""
    x = torch.as_tensor(images)
    if x.ndim != 4 or x.shape[1] != 3 or not x.dtype.is_floating_point:
        raise DataError(f"images must be float (N, 3, H, W) in [-1, 1]; got {x.dtype} {tuple(x.shape)}")
    x = (x.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5
    return x.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    if r <= 0:
        return mask
    import cv2

    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)) > 0


def edge_f1(pred: np.ndarray, target: np.ndarray, tolerance: int = 0) -> float:
    """F1 of two binary edge maps ``(H, W)`` (see the module docstring); 1 when both are empty."""
    p, t = np.asarray(pred) > 0.5, np.asarray(target) > 0.5
    if p.shape != t.shape:
        raise DataError(f"edge maps of different shapes: {p.shape} and {t.shape}")
    n_p, n_t = int(p.sum()), int(t.sum())
    if n_p == 0 and n_t == 0:
        return 1.0
    if n_p == 0 or n_t == 0:
        return 0.0
    if tolerance <= 0:
        return 2.0 * int((p & t).sum()) / (n_p + n_t)
    prec = int((p & _dilate(t, tolerance)).sum()) / n_p
    rec = int((t & _dilate(p, tolerance)).sum()) / n_t
    return 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)


def canny_maps(images: torch.Tensor, low: float = CANNY_LOW, high: float = CANNY_HIGH) -> np.ndarray:
    """bool ``(N, H, W)``: OpenCV Canny ``low`` / ``high`` of each image (in [-1, 1])."""
    from ..data.conditions import canny_edges

    return np.stack([canny_edges(im, low, high)[0].numpy() > 0.5 for im in images_to_uint8(images)])


def canny_f1(images: torch.Tensor, edges: torch.Tensor, low: float = CANNY_LOW, high: float = CANNY_HIGH,
             tolerance: int = 0) -> dict[str, Any]:
    """``{"mean", "per_image"}``: Canny F1 of ``images`` ``(N, 3, H, W)`` against ``edges`` ``(N, 1, H, W)`` or
    ``(N, H, W)`` (the input edge maps, at the images' resolution)."""
    e = torch.as_tensor(edges)
    e = e[:, 0] if e.ndim == 4 and e.shape[1] == 1 else e
    if e.ndim != 3 or e.shape[0] != images.shape[0] or tuple(e.shape[1:]) != tuple(images.shape[2:]):
        raise DataError(f"edge maps must be (N, 1, H, W) matching the images {tuple(images.shape)}; got "
                        f"{tuple(torch.as_tensor(edges).shape)} (compare them at the images' resolution)")
    pred = canny_maps(images, low, high)
    tgt = e.detach().cpu().float().numpy()
    per = [edge_f1(pred[i], tgt[i], tolerance) for i in range(pred.shape[0])]
    return {"mean": float(np.mean(per)), "per_image": per}


# ----------------------------------------------------------------------------------- scores of a condition predictor


def miou(pred: torch.Tensor, target: torch.Tensor, protocol: MiouProtocol = "dataset") -> float:
    """mIoU of two ``(N, H, W)`` int label maps (:func:`iqvae.metrics.shapes.miou_of_maps`: ``dataset``, summed
    over the N maps, or ``image``, the mean of per-map mIoUs)."""
    from .shapes import miou_of_maps

    return miou_of_maps(pred, target, protocol)


def box_iou(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over images of the mean IoU over the classes boxed in either ``(N, C, H, W)`` map (> 0.5); NaN when no
    image has any box."""
    p, t = torch.as_tensor(pred) > 0.5, torch.as_tensor(target) > 0.5
    if p.shape != t.shape or p.ndim != 4:
        raise DataError(f"box_iou needs two (N, C, H, W) box maps of one shape; got {tuple(p.shape)} and "
                        f"{tuple(t.shape)}")
    inter = (p & t).flatten(2).sum(-1).double()
    union = (p | t).flatten(2).sum(-1).double()
    present = union > 0
    per = [float((inter[i][present[i]] / union[i][present[i]]).mean()) for i in range(p.shape[0]) if present[i].any()]
    return float(np.mean(per)) if per else float("nan")


def _argmax_xy(maps: torch.Tensor) -> torch.Tensor:
    """``(..., H, W)`` -> ``(..., 2)`` (x, y) of the arg-max pixel's centre (first maximum in raster order)."""
    h, w = maps.shape[-2:]
    idx = maps.flatten(-2).argmax(-1)
    return torch.stack([(idx % w).double() + 0.5, torch.div(idx, w, rounding_mode="floor").double() + 0.5], -1)


def keypoint_error(pred: torch.Tensor, target: torch.Tensor, present: float = KEYPOINT_PRESENT) -> float:
    """Mean distance / image side between the arg-max pixels of predicted and condition heatmaps ``(N, K, H, W)``,
    over the keypoints present in the condition (peak >= ``present``); NaN when none is present."""
    p, t = torch.as_tensor(pred).float(), torch.as_tensor(target).float()
    if p.shape != t.shape or p.ndim != 4:
        raise DataError(f"keypoint_error needs two (N, K, H, W) heatmaps of one shape; got {tuple(p.shape)} and "
                        f"{tuple(t.shape)}")
    mask = t.flatten(2).amax(-1) >= present
    if not bool(mask.any()):
        return float("nan")
    d = (_argmax_xy(p) - _argmax_xy(t)).norm(dim=-1) / max(p.shape[-2:])
    return float(d[mask].mean())


# name -> (score function of (prediction, condition), higher is better)
PREDICTOR_SCORES: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], float], bool]] = {
    "miou": (miou, True),
    "box_iou": (box_iou, True),
    "keypoint_error": (keypoint_error, False),
}
HIGHER_IS_BETTER = {"canny_f1": True, "scene_accuracy": True, **{k: v[1] for k, v in PREDICTOR_SCORES.items()}}


def predictor_score(name: str, pred: torch.Tensor, cond: torch.Tensor) -> float:
    """The controllability score ``name`` of predictions (the modality's own tensor convention) against conditions."""
    if name not in PREDICTOR_SCORES:
        raise DataError(f"unknown predictor score '{name}'; expected one of: {', '.join(PREDICTOR_SCORES)}")
    return PREDICTOR_SCORES[name][0](pred, cond)
