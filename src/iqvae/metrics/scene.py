"""Object-level *scene accuracy* of the Shapes world (:mod:`iqvae.data.shapes`): does a generated image hold the
objects its scene description names?

Text and audio conditions name each object's class, size and 3 x 3 cell, not its pixels, so they are scored on
objects instead of masks (:mod:`iqvae.metrics.shapes`).

* **Described objects** (:func:`described_objects`): class and cell of each object of ``meta``, the cell being the
  (row, column) third of its centre ``(geom cx, geom cy)``, exactly what the caption's position words and the
  sound's onset / duration are derived from.
* **Found objects** (:func:`find_objects`): each pixel is labelled by its nearest colour
  (:func:`iqvae.metrics.shapes.nearest_colour`: one of the 18 palette colours, whose class it takes, or the grey
  axis = background); the 8-connected regions of each class (OpenCV ``connectedComponentsWithStats``) are the
  pieces.  Pieces of one class whose joint bounding box fits in the largest object the world draws
  (``2 R_MAX`` + 1 pixel per side) are one object: an object partly hidden by another one is cut into pieces, and
  two whole objects of one class do not fit in that box unless they overlap.  Objects of fewer than
  ``min_pixels`` pixels (default: a quarter of half the smallest object's area, 4 pixels at 32 px) are noise.
  Each object has a class, a colour (its majority palette colour), a pixel count, a centroid, a bounding box, a
  size (half the longer box side) and a cell, the third of its box centre (the world's centre is the centre of
  the object's box; a triangle's centroid lies ``r / 3`` below it).
* **In its cell**: an object may be partly hidden by objects in front of it, so its true box is only known to
  contain its visible pixels, to lie within its pixels and those of the objects touching it (the ones that may
  cover it), and to be no larger than the largest object.  That bounds the box centre to an interval per axis; the
  object lies in cell (i, j) when that interval meets the cell widened by ``tolerance_px`` (default 1 pixel, the
  pixel quantisation of a box).  An object that touches no other object has a single centre.
* **Matching**: described and found objects are paired one to one (as many pairs as the smaller side has) by an
  exact minimum-cost assignment (:func:`assign`: dynamic programming over the subsets of the smaller side, which
  has at most 4 described objects; scipy is a development dependency only, so the runtime does not use its
  ``linear_sum_assignment``; the tests check the two agree).  A pair is *right* when the found object has the
  described class (i.e. a colour of that class's palette) and lies in the described cell.  The cost counts a wrong
  pair first (weight ``2 k + 1`` for k pairs, more than all the other terms together), then a class mismatch
  (1), then the distance from the found centre interval to the cell (< 1), so the matching has the most right pairs
  there can be and, among those, pairs wrong objects by class and nearness.
* Scores (:func:`scene_scores`): ``scene_accuracy`` = mean over images of right / described objects;
  ``scene_recall`` = right / described objects pooled over images; ``scene_precision`` = right / found objects
  pooled over images (0 when no object is found at all).
* Diversity (:func:`scene_mode_coverage`): the object-level analogue of
  :func:`iqvae.metrics.shapes.mode_coverage` for conditions that do not fix an object's pixels.  Among N images of
  one condition, a described object's colour "appears" when some image has a *right* found object paired with it
  whose majority colour is that colour; the score is the share of the class's palette that appears, averaged over
  the described objects (an object never drawn right adds 0).  The mask-based ``mode_coverage`` reads the colour
  over the true object's pixels, which a caption or a sound does not fix, so an object drawn right but elsewhere in
  its cell counts there as missing.  On true images the two agree (tests).

True images of the world score 1 on all three (``tests/test_scene_metrics.py`` checks thousands of scenes of every
background kind).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..data.shapes import CLASS_NAMES, MIN_VISIBLE, PALETTES, R_MAX, R_MIN
from ..errors import DataError
from .shapes import nearest_colour, to_rgb255

MAX_EXACT_SIDE = 12  # the assignment is exponential in the smaller side


def cell_of(x: float, y: float) -> tuple[int, int]:
    """(row, column) third of the normalised point ``(x, y)``, as the caption's position words."""

    def third(v: float) -> int:
        return 0 if v < 1 / 3 else (2 if v > 2 / 3 else 1)

    return third(y), third(x)


@dataclass(frozen=True)
class DescribedObject:
    """An object as the condition names it (class, cell; size is carried but not scored)."""

    cls: int
    cell: tuple[int, int]  # (row, column)
    size: float  # the half-extent r, normalised


@dataclass(frozen=True)
class FoundObject:
    """An object found in an image (:func:`find_objects`); coordinates are normalised to the unit square."""

    cls: int
    colour: int  # majority palette index within the class
    pixels: int
    centroid: tuple[float, float]  # (x, y), normalised
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1), normalised pixel edges
    centre_range: tuple[tuple[float, float], tuple[float, float]]  # ((x lo, x hi), (y lo, y hi)), normalised
    size: float  # half the longer box side, normalised

    @property
    def cell(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.box
        return cell_of((x0 + x1) / 2, (y0 + y1) / 2)

    def cell_distance(self, cell: tuple[int, int], tolerance: float = 0.0) -> float:
        """Distance (max over axes, normalised) from the centre interval to ``cell`` widened by ``tolerance``."""
        d = 0.0
        for (lo, hi), c in zip(self.centre_range, (cell[1], cell[0])):
            a, b = c / 3 - tolerance, (c + 1) / 3 + tolerance
            d = max(d, a - hi, lo - b)
        return d


def described_objects(meta: dict[str, Any]) -> list[DescribedObject]:
    """Class, cell and size of each object of the scene description ``meta`` (the caption's / sound's content)."""
    try:
        return [DescribedObject(int(o["class"]), cell_of(o["geom"]["cx"], o["geom"]["cy"]), float(o["geom"]["r"]))
                for o in meta["objects"]]
    except (KeyError, TypeError) as e:
        raise DataError(f"scene description (meta) without objects / class / geom: {e}") from None


def default_min_pixels(resolution: int) -> int:
    """A quarter of the least visible part of the smallest object (a triangle of half-extent R_MIN)."""
    return max(1, int(round(0.25 * MIN_VISIBLE * 2 * R_MIN**2 * resolution**2)))


def _pieces(cls_map: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """8-connected regions of each class: a map of piece ids (0: none; piece ``k`` is id ``k + 1``) and per piece
    its class, pixel count and box (pixel edges)."""
    import cv2

    ids = np.zeros(cls_map.shape, np.int32)
    out: list[dict[str, Any]] = []
    for c in np.unique(cls_map[cls_map > 0]).tolist():
        n, lab, stats, _ = cv2.connectedComponentsWithStats((cls_map == c).astype(np.uint8), connectivity=8)
        inside = lab > 0
        ids[inside] = lab[inside] + len(out)
        for k in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[k, :5])
            out.append({"cls": int(c), "pixels": area, "box": [x, y, x + w, y + h]})
    return ids, out


def _merge_pieces(pieces: list[dict[str, Any]], max_side: float) -> list[dict[str, Any]]:
    """Greedily join pieces of one class (largest first) whose joint box has both sides <= ``max_side`` pixels.

    Returns groups ``{"cls", "pixels", "box", "pieces"}`` (piece indices)."""
    groups: list[dict[str, Any]] = []
    for i in sorted(range(len(pieces)), key=lambda i: -pieces[i]["pixels"]):
        p = pieces[i]
        for g in groups:
            if g["cls"] != p["cls"]:
                continue
            b = [min(g["box"][0], p["box"][0]), min(g["box"][1], p["box"][1]),
                 max(g["box"][2], p["box"][2]), max(g["box"][3], p["box"][3])]
            if b[2] - b[0] <= max_side and b[3] - b[1] <= max_side:
                g["box"], g["pixels"] = b, g["pixels"] + p["pixels"]
                g["pieces"].append(i)
                break
        else:
            groups.append({"cls": p["cls"], "pixels": p["pixels"], "box": list(p["box"]), "pieces": [i]})
    return groups


def _centre_range(box: Sequence[int], outer: Sequence[int], max_side: float) -> tuple[float, float, float, float]:
    """Bounds of the true box centre (x lo, x hi, y lo, y hi; pixels): the true box holds ``box``, lies in
    ``outer`` and has sides <= ``max_side``."""
    out = []
    for a in (0, 1):
        p0, p1, t0, t1 = box[a], box[a + 2], outer[a], outer[a + 2]
        lo0 = max(t0, p1 - max_side)  # the lowest start the box may have
        hi1 = min(t1, p0 + max_side)  # the highest end
        out += [(min(lo0, p0) + p1) / 2, (p0 + max(hi1, p1)) / 2]
    return out[0], out[1], out[2], out[3]


def find_objects(image: torch.Tensor, min_pixels: int | None = None) -> list[FoundObject]:
    """The objects of one image ``(3, H, H)`` in [-1, 1]; see the module docstring."""
    import cv2

    rgb = to_rgb255(torch.as_tensor(image)[None])[0]
    res = rgb.shape[0]
    cls_t, idx_t = nearest_colour(rgb)
    cls_map, idx_map = cls_t.numpy(), idx_t.numpy()
    min_px = default_min_pixels(res) if min_pixels is None else int(min_pixels)
    max_side = 2 * R_MAX * res + 1.0
    ids, pieces = _pieces(cls_map)
    groups = [g for g in _merge_pieces(pieces, max_side) if g["pixels"] >= min_px]
    lut = np.zeros(len(pieces) + 1, np.int32)  # piece id -> object id (0: none)
    for k, g in enumerate(groups):
        lut[np.asarray(g["pieces"]) + 1] = k + 1
    label = lut[ids]
    kernel = np.ones((3, 3), np.uint8)
    out = []
    for k, g in enumerate(groups):
        mask = label == k + 1
        ring = cv2.dilate(mask.astype(np.uint8), kernel) > 0
        touching = set(np.unique(label[ring]).tolist()) - {0, k + 1}
        outer = list(g["box"])
        for t in touching:
            b = groups[t - 1]["box"]
            outer = [min(outer[0], b[0]), min(outer[1], b[1]), max(outer[2], b[2]), max(outer[3], b[3])]
        xl, xh, yl, yh = _centre_range(g["box"], outer, max_side)
        ys, xs = np.nonzero(mask)
        colours = np.bincount(idx_map[mask])
        x0, y0, x1, y1 = g["box"]
        out.append(FoundObject(
            cls=g["cls"], colour=int(colours.argmax()), pixels=int(len(xs)),
            centroid=((float(xs.mean()) + 0.5) / res, (float(ys.mean()) + 0.5) / res),
            box=(x0 / res, y0 / res, x1 / res, y1 / res),
            centre_range=((xl / res, xh / res), (yl / res, yh / res)),
            size=max(x1 - x0, y1 - y0) / (2 * res),
        ))  # fmt: skip
    return out


def assign(cost: np.ndarray) -> list[tuple[int, int]]:
    """Exact minimum-cost one-to-one assignment of a rectangular cost matrix: ``min(rows, cols)`` pairs
    ``(row, col)``, as scipy's ``linear_sum_assignment``; dynamic programming over the subsets of the smaller side."""
    c = np.asarray(cost, np.float64)
    if c.ndim != 2:
        raise DataError(f"assign: the cost must be a matrix; got shape {c.shape}")
    transposed = c.shape[0] > c.shape[1]
    if transposed:
        c = c.T
    k, n = c.shape
    if k == 0:
        return []
    if k > MAX_EXACT_SIDE:
        raise DataError(f"assign: exact assignment of {k} x {n} objects is too large (at most {MAX_EXACT_SIDE} on "
                        "the smaller side)")
    best = np.full((n + 1, 1 << k), np.inf)  # best[j, mask]: rows in mask paired with columns < j
    best[0, 0] = 0.0
    row = np.full((n + 1, 1 << k), -1)  # row paired with column j - 1 on the best way to (j, mask); -1: none
    for j in range(n):
        best[j + 1] = best[j]
        for mask in np.nonzero(np.isfinite(best[j]))[0].tolist():
            for r in range(k):
                if not mask >> r & 1:
                    m2, v = mask | 1 << r, best[j, mask] + c[r, j]
                    if v < best[j + 1, m2]:
                        best[j + 1, m2], row[j + 1, m2] = v, r
    pairs, mask = [], (1 << k) - 1
    for j in range(n, 0, -1):
        r = int(row[j, mask])
        if r >= 0:
            pairs.append((j - 1, r) if transposed else (r, j - 1))
            mask &= ~(1 << r)
    return sorted(pairs)


def match(described: Sequence[DescribedObject], found: Sequence[FoundObject], tolerance: float) -> list[dict]:
    """One entry per described object: ``{"found": index or None, "right": bool}`` (see the module docstring)."""
    k = min(len(described), len(found))
    weight = 2 * k + 1
    cost = np.zeros((len(described), len(found)))
    right = np.zeros(cost.shape, bool)
    for i, d in enumerate(described):
        for j, f in enumerate(found):
            dist = f.cell_distance(d.cell, tolerance)
            right[i, j] = f.cls == d.cls and dist <= 0
            cost[i, j] = weight * (not right[i, j]) + (f.cls != d.cls) + min(max(dist, 0.0), 0.99)
    out = [{"found": None, "right": False} for _ in described]
    for i, j in assign(cost):
        out[i] = {"found": j, "right": bool(right[i, j])}
    return out


def scene_report(image: torch.Tensor, meta: dict[str, Any], min_pixels: int | None = None,
                 tolerance_px: float = 1.0) -> dict[str, Any]:
    """The described and found objects of one image and their matching."""
    res = int(torch.as_tensor(image).shape[-1])
    described, found = described_objects(meta), find_objects(image, min_pixels)
    pairs = match(described, found, tolerance_px / res)
    return {"described": described, "found": found, "pairs": pairs, "right": sum(p["right"] for p in pairs)}


def scene_scores(images: torch.Tensor, metas: Sequence[dict[str, Any]], min_pixels: int | None = None,
                 tolerance_px: float = 1.0) -> dict[str, float]:
    """``scene_accuracy``, ``scene_precision``, ``scene_recall`` of images ``(B, 3, H, H)`` against their scene
    descriptions (see the module docstring)."""
    x = torch.as_tensor(images)
    if x.ndim != 4 or len(metas) != x.shape[0]:
        raise DataError(f"scene_scores: got images of shape {tuple(x.shape)} and {len(metas)} scene descriptions; "
                        "expected (B, 3, H, H) with one description per image")
    return _scores_of([scene_report(img, meta, min_pixels, tolerance_px) for img, meta in zip(x, metas)])


def _scores_of(reports: Sequence[dict[str, Any]]) -> dict[str, float]:
    accs, right, described, found = [], 0, 0, 0
    for r in reports:
        if not r["described"]:
            raise DataError("scene_scores: a scene description has no object")
        accs.append(r["right"] / len(r["described"]))
        right, described, found = right + r["right"], described + len(r["described"]), found + len(r["found"])
    if not accs:
        raise DataError("scene_scores: no image")
    return {"scene_accuracy": float(np.mean(accs)), "scene_precision": right / found if found else 0.0,
            "scene_recall": right / described}


def scene_mode_coverage(images: torch.Tensor, meta: dict[str, Any], min_pixels: int | None = None,
                        tolerance_px: float = 1.0) -> float:
    """Share of each described object's palette colours drawn right among N images ``(N, 3, H, H)`` of one
    condition ``meta``, averaged over its described objects (see the module docstring)."""
    x = torch.as_tensor(images)
    if x.ndim != 4 or x.shape[0] < 1:
        raise DataError(f"scene_mode_coverage: expected images (N, 3, H, H) of one condition, got {tuple(x.shape)}")
    return _coverage_of([scene_report(img, meta, min_pixels, tolerance_px) for img in x])


def _coverage_of(reports: Sequence[dict[str, Any]]) -> float:
    """:func:`scene_mode_coverage` of the reports of N images of one condition."""
    described = reports[0]["described"]
    if not described:
        raise DataError("scene_mode_coverage: the scene description has no object")
    seen: list[set[int]] = [set() for _ in described]
    for r in reports:
        for i, p in enumerate(r["pairs"]):
            if p["right"]:
                seen[i].add(r["found"][p["found"]].colour)
    return float(np.mean([len(s) / len(PALETTES[CLASS_NAMES[d.cls]]) for s, d in zip(seen, described)]))


def scene_metrics(images: torch.Tensor, metas: Sequence[dict[str, Any]], min_pixels: int | None = None,
                  tolerance_px: float = 1.0) -> dict[str, float]:
    """:func:`scene_scores` over all images ``(C, N, 3, H, H)`` (N samples of each of C conditions ``metas``) and
    the mean over conditions of :func:`scene_mode_coverage`, each image's objects found and matched once."""
    x = torch.as_tensor(images)
    if x.ndim != 5 or len(metas) != x.shape[0] or x.shape[1] < 1:
        raise DataError(f"scene_metrics: got images of shape {tuple(x.shape)} and {len(metas)} scene descriptions; "
                        "expected (C, N, 3, H, H) with one description per condition")
    reports = [[scene_report(img, meta, min_pixels, tolerance_px) for img in imgs] for imgs, meta in zip(x, metas)]
    return {**_scores_of([r for rs in reports for r in rs]),
            "scene_mode_coverage": float(np.mean([_coverage_of(rs) for rs in reports]))}
