"""The built-in "Shapes" world: deterministic scenes with exact ground truth for all six condition modalities.

A scene holds 1-4 objects of *distinct* classes (circle, square, triangle, diamond, ring, cross) on a grey background
(flat, gradient or stripes).  Each class has a palette of 3 allowed colours (:data:`PALETTES`); each object draws one
of them, a brightness ramp (shading) and the image gets per-pixel noise, so one condition has many correct images.

Geometry (normalised to the unit square, so a scene looks the same at every resolution): object ``k`` has centre
``(cx, cy)`` and half-extent ``r`` in ``[R_MIN, R_MAX]``; its bounding box ``[cx - r, cx + r]^2`` lies inside the
image.  Objects are drawn back to front in ``meta["objects"]`` order; placement is retried until every object keeps at
least :data:`MIN_VISIBLE` of its area visible (checked on a fixed 64 x 64 grid, so the scene does not depend on the
resolution).  Edges are hard (no anti-aliasing), so the segmentation is exact.

Colour margins (why recovering the segmentation from an image by nearest colour is unambiguous):

* every object colour is on the grid ``{0, 128, 255}^3`` and not grey, so two palette colours differ by >= 127 RGB
  units and each is >= 104.5 units from the grey axis; backgrounds are pure greys in ``[40, 215]``.
  Nearest-colour decision boundaries therefore lie >= 52 units from every palette colour and from the grey axis.
* shading adds ``s (1, 1, 1)`` with ``|s| <= SHADING_MAX = 12`` (at most 20.8 units, and parallel to the grey
  axis); pixel noise is Gaussian with ``NOISE_SIGMA = 4`` per channel.  The worst-case pixel is thus >= 31 units
  (~7.8 sigma) from a decision boundary; clipping to [0, 255] only moves colours back towards the palette.

Conditions (tensor conventions of :mod:`iqvae.data.record`; pixel coordinates as in :mod:`iqvae.data.conditions`):

* ``seg``: class id per pixel (0 background), :data:`NUM_CLASSES` = 7 channels.
* ``edge``: object outlines, :func:`~iqvae.data.conditions.seg_boundaries` of the instance map (so occlusion
  boundaries and the inner edge of a ring appear), or Canny 100/200 on the image with ``edge_source="canny"``.
* ``keypoints``: 5 keypoints per object: centre, top, right, bottom, left (the midpoints of the bounding-box sides,
  which are the extremal points of circle, ring, diamond and cross and the apex of the triangle).  One channel per
  (class, slot): channel ``(class - 1) * 5 + slot``, 30 channels; as classes are distinct within a scene, the heatmaps
  give class, centre and size of every object, i.e. everything but colours and shading.  ``extra["keypoints_xy"]``
  holds the (30, 2) coordinates (-1 for absent classes).  Heatmap sigma = ``resolution / 32`` pixels.
* ``layout``: :func:`~iqvae.data.conditions.boxes_to_layout` of the class boxes, 7 channels (channel 0 stays empty).
* ``text``: e.g. ``"a small circle at the top left and a large ring at the centre on a striped background"``
  (colour words only with ``caption_colours=True``: colour is the one-to-many axis), fixed vocabulary, 40 tokens.
* ``audio``: 1 s at 8 kHz; each object is a sine tone: class -> pitch (:data:`CLASS_FREQS`), size -> amplitude,
  x-centre -> onset, y-centre -> duration; condition = 32-band log-mel, 64 frames (n_fft 512, hop 128).

Determinism: the scene of (world seed, split, index) is drawn from ``numpy.random.SeedSequence`` keyed on those three
numbers (PCG64, identical on every machine); splits use different keys, so they are disjoint by construction.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import DataError
from ..modalities import MODALITIES, ConditionSpec
from ..modalities.text import TextVocab
from .conditions import (
    boxes_to_layout,
    canny_edges,
    gaussian_heatmaps,
    log_mel,
    seg_boundaries,
)
from .config import SPLITS, DataConfig, register_dataset
from .record import PairDataset, Sample, check_modalities

WORLD_VERSION = 1
CLASS_NAMES: tuple[str, ...] = ("background", "circle", "square", "triangle", "diamond", "ring", "cross")
NUM_CLASSES = len(CLASS_NAMES)
OBJECT_CLASSES: tuple[str, ...] = CLASS_NAMES[1:]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "azure": (0, 128, 255), "olive": (128, 128, 0),
    "blue": (0, 0, 255), "orange": (255, 128, 0), "teal": (0, 128, 128),
    "green": (0, 255, 0), "magenta": (255, 0, 255), "maroon": (128, 0, 0),
    "yellow": (255, 255, 0), "violet": (128, 0, 255), "navy": (0, 0, 128),
    "cyan": (0, 255, 255), "rose": (255, 0, 128), "forest": (0, 128, 0),
    "purple": (128, 0, 128), "lime": (128, 255, 0), "mint": (0, 255, 128),
}  # fmt: skip
PALETTES: dict[str, tuple[str, ...]] = {
    "circle": ("red", "azure", "olive"),
    "square": ("blue", "orange", "teal"),
    "triangle": ("green", "magenta", "maroon"),
    "diamond": ("yellow", "violet", "navy"),
    "ring": ("cyan", "rose", "forest"),
    "cross": ("purple", "lime", "mint"),
}
BACKGROUNDS: tuple[str, ...] = ("flat", "gradient", "stripes")
GREY_RANGE = (40.0, 215.0)
MIN_GREY_CONTRAST = 40.0
SHADING_MAX = 12.0
NOISE_SIGMA = 4.0
R_MIN, R_MAX = 0.12, 0.24
MAX_OBJECTS = 4
MIN_VISIBLE = 0.5
CANONICAL_GRID = 64
PLACEMENT_TRIES = 40
RING_INNER = 0.5
CROSS_HALF_WIDTH = 0.35

KEYPOINT_SLOTS: tuple[str, ...] = ("centre", "top", "right", "bottom", "left")
NUM_KEYPOINTS = len(OBJECT_CLASSES) * len(KEYPOINT_SLOTS)

SAMPLE_RATE = 8000
AUDIO_SECONDS = 1.0
N_FFT, HOP, N_MELS, FRAMES = 512, 128, 32, 64
CLASS_FREQS: dict[str, float] = {c: round(250.0 * 1.45**k, 2) for k, c in enumerate(OBJECT_CLASSES)}
FADE_SECONDS = 0.01

TEXT_LENGTH = 40
SIZE_WORDS = ("small", "medium", "large")
POSITION_WORDS = (  # [row third][column third] of the object centre
    ("top left", "top", "top right"),
    ("left", "centre", "right"),
    ("bottom left", "bottom", "bottom right"),
)
BACKGROUND_WORDS = {"flat": "flat", "gradient": "gradient", "stripes": "striped"}
VOCAB = TextVocab(
    ["a", "and", "at", "the", "on", "background", *SIZE_WORDS, *OBJECT_CLASSES, *COLOURS,
     "top", "bottom", "left", "right", "centre", *BACKGROUND_WORDS.values()]
)  # fmt: skip

MIN_RESOLUTION, MAX_RESOLUTION = 16, 1024
_SPLIT_KEYS = {"train": 0, "val": 1, "test": 2}
_SCENE_TAG, _RESAMPLE_TAG = 0x5A4E, 0xC010
PALETTE_RGB: dict[str, np.ndarray] = {
    c: np.array([COLOURS[n] for n in PALETTES[c]], np.float64) for c in OBJECT_CLASSES
}


def world_metadata() -> dict[str, Any]:
    """JSON-able description of the world: classes, palettes, generation parameters, margins, encodings."""
    return {
        "world": "shapes",
        "version": WORLD_VERSION,
        "classes": list(CLASS_NAMES),
        "palettes": {c: [{"name": n, "rgb": list(COLOURS[n])} for n in PALETTES[c]] for c in OBJECT_CLASSES},
        "backgrounds": list(BACKGROUNDS),
        "grey_range": list(GREY_RANGE),
        "min_grey_contrast": MIN_GREY_CONTRAST,
        "shading_max": SHADING_MAX,
        "noise_sigma": NOISE_SIGMA,
        "size_range": [R_MIN, R_MAX],
        "max_objects": MAX_OBJECTS,
        "distinct_classes_per_scene": True,
        "min_visible_fraction": MIN_VISIBLE,
        "ring_inner_radius": RING_INNER,
        "cross_half_width": CROSS_HALF_WIDTH,
        "margins": {"min_palette_distance": 127.0, "min_distance_to_grey": 104.5, "decision_margin": 52.0},
        "keypoints": {"slots": list(KEYPOINT_SLOTS), "channels": NUM_KEYPOINTS,
                      "channel_of": "(class - 1) * 5 + slot", "sigma": "resolution / 32 pixels"},
        "audio": {"sample_rate": SAMPLE_RATE, "seconds": AUDIO_SECONDS, "n_fft": N_FFT, "hop": HOP,
                  "n_mels": N_MELS, "frames": FRAMES, "class_freqs": dict(CLASS_FREQS),
                  "onset": "0.05 + 0.55 * cx s", "duration": "0.15 + 0.2 * cy s",
                  "amplitude": "0.1 + 0.15 * (r - r_min) / (r_max - r_min)",
                  "log_mel": "log(mel @ |stft|^2 + 1e-5)"},
        "text": {"length": TEXT_LENGTH, "vocab": list(VOCAB.words)},
        "resolution_range": [MIN_RESOLUTION, MAX_RESOLUTION],
    }  # fmt: skip


def check_resolution(resolution: Any, what: str = "resolution") -> int:
    """The resolution as an int; a DataError unless it is an integer in [16, 1024]."""
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise DataError(f"{what} must be an integer number of pixels, got {resolution!r}")
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise DataError(
            f"{what} {resolution} cannot be rendered by the shapes world; expected {MIN_RESOLUTION} to "
            f"{MAX_RESOLUTION} pixels (smaller scenes lose the ring hole and cross arms)"
        )
    return int(resolution)


# ---------------------------------------------------------------------------------------------------- geometry


def _shape_mask(cls: int, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Inside test of class ``cls`` (1..6) at offsets ``dx, dy`` from the centre, half-extent ``r`` (same units)."""
    name = CLASS_NAMES[cls]
    if name == "circle":
        return dx * dx + dy * dy <= r * r
    if name == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if name == "triangle":  # apex (0, -r), base corners (+-r, r)
        return (dy <= r) & (2.0 * np.abs(dx) <= dy + r)
    if name == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if name == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (RING_INNER * r) ** 2)
    if name == "cross":
        ax, ay, w = np.abs(dx), np.abs(dy), CROSS_HALF_WIDTH * r
        return ((ax <= w) & (ay <= r)) | ((ay <= w) & (ax <= r))
    raise DataError(f"unknown shapes class id {cls}; expected 1..{NUM_CLASSES - 1}")


def _window(cx: float, cy: float, r: float, res: int) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Pixel window around a box and the normalised offsets (dy column, dx row) of its pixel centres."""
    j0 = max(0, math.floor((cx - r) * res - 0.5))
    j1 = min(res, math.ceil((cx + r) * res - 0.5) + 1)
    i0 = max(0, math.floor((cy - r) * res - 0.5))
    i1 = min(res, math.ceil((cy + r) * res - 0.5) + 1)
    dx = (np.arange(j0, j1) + 0.5) / res - cx
    dy = (np.arange(i0, i1) + 0.5) / res - cy
    return slice(i0, i1), slice(j0, j1), dx[None, :], dy[:, None]


def _object_mask(obj: dict[str, Any], res: int) -> tuple[slice, slice, np.ndarray, np.ndarray, np.ndarray]:
    g = obj["geom"]
    rows, cols, dx, dy = _window(g["cx"], g["cy"], g["r"], res)
    return rows, cols, _shape_mask(obj["class"], dx, dy, g["r"]), dx, dy


# -------------------------------------------------------------------------------------------------------- scenes


def _round(x: float) -> float:
    return round(float(x), 6)


def _sample_scene(rng: np.random.Generator) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """Background, objects (class, colour, geometry, shading) and noise seed, drawn in a fixed order."""
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    classes = rng.choice(len(OBJECT_CLASSES), size=n, replace=False) + 1
    g = CANONICAL_GRID
    inst = np.zeros((g, g), np.int64)
    areas: list[int] = []
    objects: list[dict[str, Any]] = []
    for cls in classes.tolist():
        r = float(rng.uniform(R_MIN, R_MAX))
        colour = int(rng.integers(len(PALETTES[CLASS_NAMES[cls]])))
        shade = {"angle": _round(rng.uniform(0, 2 * math.pi)), "amp": _round(rng.uniform(0, SHADING_MAX))}
        placed = None
        visible = np.bincount(inst.ravel(), minlength=len(objects) + 1)
        for t in range(PLACEMENT_TRIES):
            if t and t % 10 == 0:
                r = max(R_MIN, r * 0.9)
            cx, cy = (float(v) for v in rng.uniform(r, 1.0 - r, size=2))
            rows, cols, dx, dy = _window(cx, cy, r, g)
            m = _shape_mask(cls, dx, dy, r)
            covered = np.bincount(inst[rows, cols][m], minlength=len(objects) + 1)
            if all(visible[k + 1] - covered[k + 1] >= MIN_VISIBLE * areas[k] for k in range(len(objects))):
                placed = (cx, cy, r, rows, cols, m)
                break
        if placed is None:  # rare: the scene keeps fewer objects
            continue
        cx, cy, r, rows, cols, m = placed
        inst[rows, cols][m] = len(objects) + 1
        areas.append(int(m.sum()))
        geom = {"cx": _round(cx), "cy": _round(cy), "r": _round(r)}
        objects.append({"class": int(cls), "colour": colour, "geom": geom, "shade": shade})
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    lo, hi = GREY_RANGE
    g1 = float(rng.uniform(lo, hi))
    # Second grey at a distance in [MIN_GREY_CONTRAST, 85] on whichever side fits (one always does).
    delta = float(rng.uniform(MIN_GREY_CONTRAST, 85.0)) * (1.0 if rng.integers(2) else -1.0)
    g2 = g1 + delta if lo <= g1 + delta <= hi else g1 - delta
    if kind == "flat":
        g2 = g1
    background = {
        "kind": kind,
        "grey": [_round(g1), _round(g2)],
        "angle": _round(rng.uniform(0, math.pi)),
        "period": _round(rng.uniform(0.1, 0.25)),
        "phase": _round(rng.uniform(0, 1)),
    }
    noise_seed = int(rng.integers(0, 2**31))
    return background, objects, noise_seed


def _describe_objects(objects: list[dict[str, Any]], res: int) -> list[dict[str, Any]]:
    """Fill names, rgb and pixel quantities (box, centre, size) of each object from its class, colour and geometry."""
    out = []
    for o in objects:
        cname = CLASS_NAMES[o["class"]]
        colour_name = PALETTES[cname][o["colour"]]
        g = o["geom"]
        cx, cy, r = g["cx"] * res, g["cy"] * res, g["r"] * res
        out.append({
            "class": o["class"], "class_name": cname, "colour": o["colour"], "colour_name": colour_name,
            "rgb": list(COLOURS[colour_name]),
            "box": [_round(cx - r), _round(cy - r), _round(cx + r), _round(cy + r)],
            "centre": [_round(cx), _round(cy)], "size": _round(r),
            "geom": dict(g), "shade": dict(o["shade"]),
        })  # fmt: skip
    return out


def scene_meta(split: str, index: int, resolution: int = 32, seed: int = 0) -> dict[str, Any]:
    """The JSON-able description of scene ``index`` of ``split`` (everything needed to render it again)."""
    if split not in _SPLIT_KEYS:
        raise DataError(f"unknown split {split!r}; expected one of: {', '.join(SPLITS)}")
    if index < 0:
        raise DataError(f"scene index must be non-negative, got {index}")
    res = check_resolution(resolution)
    ss = np.random.SeedSequence([_SCENE_TAG, WORLD_VERSION, int(seed), _SPLIT_KEYS[split], int(index)])
    background, objects, noise_seed = _sample_scene(np.random.Generator(np.random.PCG64(ss)))
    return {
        "dataset": "shapes", "version": WORLD_VERSION, "seed": int(seed), "split": split, "index": int(index),
        "resolution": res, "background": background, "noise_seed": noise_seed,
        "objects": _describe_objects(objects, res),
    }  # fmt: skip


def resample_colours(meta: dict[str, Any], seed: int, colours: Sequence[int] | None = None) -> dict[str, Any]:
    """A copy of ``meta`` with new colour choices, shading and pixel noise: another true image of the same
    seg / edge / keypoints / layout / audio condition (and text, unless captions name colours).

    ``colours`` (one palette index per object) fixes the colours instead of drawing them uniformly.
    """
    out = copy.deepcopy(meta)
    objs = out["objects"]
    if colours is not None and len(colours) != len(objs):
        raise DataError(f"resample_colours: got {len(colours)} colour indices for {len(objs)} objects")
    ss = np.random.SeedSequence(
        [_RESAMPLE_TAG, int(seed), int(meta.get("seed", 0)), _SPLIT_KEYS.get(meta.get("split"), 9),
         int(meta.get("index", 0))]
    )  # fmt: skip
    rng = np.random.Generator(np.random.PCG64(ss))
    for k, o in enumerate(objs):
        palette = PALETTES[CLASS_NAMES[o["class"]]]
        c = int(rng.integers(len(palette)))
        if colours is not None:
            c = int(colours[k])
            if not 0 <= c < len(palette):
                raise DataError(f"colour index {c} of object {k} is outside its palette [0, {len(palette) - 1}]")
        o["colour"], o["colour_name"], o["rgb"] = c, palette[c], list(COLOURS[palette[c]])
        o["shade"] = {"angle": _round(rng.uniform(0, 2 * math.pi)), "amp": _round(rng.uniform(0, SHADING_MAX))}
    out["noise_seed"] = int(rng.integers(0, 2**31))
    return out


def rescale_meta(meta: dict[str, Any], resolution: int) -> dict[str, Any]:
    """A copy of ``meta`` describing the same scene at another resolution (pixel boxes, centres, sizes)."""
    out = copy.deepcopy(meta)
    res = check_resolution(resolution)
    out["resolution"] = res
    described = _describe_objects(out["objects"], res)
    for o, d in zip(out["objects"], described):  # keep rgb / names as given (tests may have corrupted them)
        o.update(box=d["box"], centre=d["centre"], size=d["size"])
    return out


# -------------------------------------------------------------------------------------------------------- render


def _background(bg: dict[str, Any], res: int) -> np.ndarray:
    u = (np.arange(res) + 0.5) / res
    x, y = u[None, :], u[:, None]
    g1, g2 = bg["grey"]
    if bg["kind"] == "flat":
        grey = np.full((res, res), g1)
    elif bg["kind"] == "gradient":
        c, s = math.cos(bg["angle"]), math.sin(bg["angle"])
        t = ((x - 0.5) * c + (y - 0.5) * s) / (0.5 * (abs(c) + abs(s)))  # in [-1, 1]
        grey = g1 + (g2 - g1) * (t + 1.0) / 2.0
    elif bg["kind"] == "stripes":
        c, s = math.cos(bg["angle"]), math.sin(bg["angle"])
        phase = (x * c + y * s) / bg["period"] + bg["phase"]
        grey = np.where(np.floor(phase) % 2 == 0, g1, g2)
    else:
        raise DataError(f"unknown background kind {bg['kind']!r}; expected one of {', '.join(BACKGROUNDS)}")
    return np.broadcast_to(grey, (res, res))


def render_scene(meta: dict[str, Any], resolution: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render ``meta`` (any resolution; default ``meta["resolution"]``).

    Returns the image, uint8 ``(H, W, 3)``, and the instance map, int64 ``(H, W)``: 0 background, ``k + 1`` where
    object ``k`` of ``meta["objects"]`` is visible.  Object colours come from each object's ``rgb`` entry (tests
    corrupt them there).
    """
    res = check_resolution(meta["resolution"] if resolution is None else resolution)
    img = np.empty((res, res, 3), np.float32)
    img[...] = _background(meta["background"], res)[..., None]
    inst = np.zeros((res, res), np.int64)
    for k, o in enumerate(meta["objects"]):
        rows, cols, m, dx, dy = _object_mask(o, res)
        sh = o["shade"]
        ramp = sh["amp"] * (dx * math.cos(sh["angle"]) + dy * math.sin(sh["angle"])) / o["geom"]["r"]
        colour = np.asarray(o["rgb"], np.float32)[None, :] + ramp[m].astype(np.float32)[:, None]
        img[rows, cols][m] = colour
        inst[rows, cols][m] = k + 1
    noise = np.random.Generator(np.random.PCG64(meta["noise_seed"])).standard_normal((res, res, 3), np.float32)
    img += NOISE_SIGMA * noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), inst


def render_instance_map(meta: dict[str, Any], resolution: int | None = None) -> np.ndarray:
    """Instance map only (int64 ``(H, W)``, see :func:`render_scene`); cheaper than rendering the image."""
    res = check_resolution(meta["resolution"] if resolution is None else resolution)
    inst = np.zeros((res, res), np.int64)
    for k, o in enumerate(meta["objects"]):
        rows, cols, m, _, _ = _object_mask(o, res)
        inst[rows, cols][m] = k + 1
    return inst


def class_map(meta: dict[str, Any], inst: np.ndarray) -> np.ndarray:
    """Segmentation (class per pixel) from an instance map of ``meta``."""
    lut = np.array([0] + [o["class"] for o in meta["objects"]], np.int64)
    return lut[inst]


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> float32 ``(3, H, W)`` in [-1, 1]."""
    return torch.from_numpy(img).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def tensor_to_image(x: torch.Tensor) -> np.ndarray:
    """float ``(3, H, W)`` in [-1, 1] -> uint8 ``(H, W, 3)``."""
    x = (x.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5
    return x.round().to(torch.uint8).permute(1, 2, 0).numpy()


# ---------------------------------------------------------------------------------------------------- conditions


def keypoints_xy(meta: dict[str, Any], resolution: int | None = None) -> torch.Tensor:
    """(30, 2) keypoint coordinates in pixels, row ``(class - 1) * 5 + slot``; -1 for classes not in the scene."""
    res = meta["resolution"] if resolution is None else resolution
    out = torch.full((NUM_KEYPOINTS, 2), -1.0)
    for o in meta["objects"]:
        g = o["geom"]
        cx, cy, r = g["cx"] * res, g["cy"] * res, g["r"] * res
        pts = [(cx, cy), (cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
        base = (o["class"] - 1) * len(KEYPOINT_SLOTS)
        out[base : base + len(pts)] = torch.tensor(pts, dtype=torch.float32)
    return out


def boxes(meta: dict[str, Any], resolution: int | None = None) -> list[tuple[int, float, float, float, float]]:
    """Class boxes ``(class, x0, y0, x1, y1)`` in pixels."""
    res = meta["resolution"] if resolution is None else resolution
    out = []
    for o in meta["objects"]:
        g = o["geom"]
        cx, cy, r = g["cx"] * res, g["cy"] * res, g["r"] * res
        out.append((o["class"], cx - r, cy - r, cx + r, cy + r))
    return out


def _size_word(r: float) -> str:
    k = min(len(SIZE_WORDS) - 1, int((r - R_MIN) / (R_MAX - R_MIN) * len(SIZE_WORDS)))
    return SIZE_WORDS[max(0, k)]


def _third(v: float) -> int:
    return 0 if v < 1 / 3 else (2 if v > 2 / 3 else 1)


def caption(meta: dict[str, Any], colours: bool = False) -> str:
    """English description: size, (colour,) class and position (3 x 3 grid) of each object, then the background."""
    parts = []
    for o in meta["objects"]:
        g = o["geom"]
        words = ["a", _size_word(g["r"])] + ([o["colour_name"]] if colours else []) + [o["class_name"]]
        parts.append(" ".join(words) + " at the " + POSITION_WORDS[_third(g["cy"])][_third(g["cx"])])
    bg = BACKGROUND_WORDS[meta["background"]["kind"]]
    return " and ".join(parts) + f" on a {bg} background"


def waveform(meta: dict[str, Any]) -> torch.Tensor:
    """float32 ``(8000,)``: one faded sine tone per object (class -> pitch, size -> amplitude, x -> onset,
    y -> duration); the amplitudes of at most 4 tones sum to at most 1, so nothing clips."""
    n = int(SAMPLE_RATE * AUDIO_SECONDS)
    t = np.arange(n) / SAMPLE_RATE
    out = np.zeros(n)
    fade = FADE_SECONDS
    for o in meta["objects"]:
        g = o["geom"]
        onset, dur = 0.05 + 0.55 * g["cx"], 0.15 + 0.2 * g["cy"]
        amp = 0.1 + 0.15 * (g["r"] - R_MIN) / (R_MAX - R_MIN)
        a, b = max(0, math.floor(onset * SAMPLE_RATE)), min(n, math.ceil((onset + dur) * SAMPLE_RATE) + 1)
        local = t[a:b] - onset
        env = np.clip(np.minimum(local, dur - local) / fade, 0.0, 1.0)
        env = 0.5 - 0.5 * np.cos(np.pi * env)  # raised-cosine fades, 1 in between, 0 outside
        out[a:b] += amp * env * np.sin(2 * np.pi * CLASS_FREQS[o["class_name"]] * local)
    return torch.from_numpy(out.astype(np.float32))


class ShapesWorld:
    """Scene sampler + renderer + condition encoder at one resolution.

    ``edge_source``: ``"boundary"`` (object outlines from the exact instance map) or ``"canny"`` (OpenCV Canny
    100/200 on the rendered image, which also finds stripes and gradients).  ``caption_colours``: name colours in
    captions (then the text condition fixes the colours and is no longer one-to-many in colour).
    """

    def __init__(self, resolution: int = 32, seed: int = 0, edge_source: str = "boundary",
                 caption_colours: bool = False):  # fmt: skip
        self.resolution = check_resolution(resolution)
        if edge_source not in ("boundary", "canny"):
            raise DataError(f"edge_source must be 'boundary' or 'canny', got {edge_source!r}")
        self.seed = int(seed)
        self.edge_source = edge_source
        self.caption_colours = bool(caption_colours)
        self.sigma = self.resolution / 32.0
        self.vocab = VOCAB

    def condition_spec(self, modality: str) -> ConditionSpec:
        check_modalities([modality])
        specs = {"seg": (NUM_CLASSES,), "edge": (1,), "keypoints": (NUM_KEYPOINTS,), "layout": (NUM_CLASSES,),
                 "text": (len(self.vocab), TEXT_LENGTH, self.vocab.words), "audio": (N_MELS, FRAMES)}
        if modality not in specs:
            raise DataError(f"the Shapes world has no '{modality}' condition; it has: {', '.join(specs)}")
        return ConditionSpec(modality, *specs[modality])

    def metadata(self) -> dict[str, Any]:
        d = world_metadata()
        d.update(resolution=self.resolution, seed=self.seed, edge_source=self.edge_source,
                 caption_colours=self.caption_colours, heatmap_sigma=self.sigma)  # fmt: skip
        return d

    def meta(self, split: str, index: int) -> dict[str, Any]:
        return scene_meta(split, index, self.resolution, self.seed)

    def sample_from_meta(self, meta: dict[str, Any], modalities: Sequence[str] = MODALITIES) -> Sample:
        """Render ``meta`` (e.g. from :func:`resample_colours`) and encode the requested conditions.

        A ``meta`` of another resolution is rescaled to this world's resolution first (:func:`rescale_meta`).
        """
        res = self.resolution
        if meta.get("resolution") != res:
            meta = rescale_meta(meta, res)
        img, inst = render_scene(meta, res)
        cap = caption(meta, self.caption_colours)
        wav = waveform(meta)
        kp = keypoints_xy(meta, res)
        derive = {  # how the world derives each condition from the scene
            "seg": lambda: torch.from_numpy(class_map(meta, inst)),
            "edge": lambda: canny_edges(img) if self.edge_source == "canny" else seg_boundaries(torch.from_numpy(inst)),
            "keypoints": lambda: gaussian_heatmaps(kp, res, self.sigma),
            "layout": lambda: boxes_to_layout(boxes(meta, res), NUM_CLASSES, res),
            "text": lambda: self.vocab.encode(cap, TEXT_LENGTH),
            "audio": lambda: log_mel(wav, SAMPLE_RATE, N_MELS, N_FFT, HOP, FRAMES),
        }
        cond: dict[str, torch.Tensor] = {}
        for m in modalities:
            if m not in derive:
                check_modalities([m])
                raise DataError(f"the Shapes world has no '{m}' condition; it has: {', '.join(derive)}")
            cond[m] = derive[m]()
        extra = {"caption": cap, "waveform": wav, "keypoints_xy": kp}
        return Sample(image_to_tensor(img), cond, extra, meta)

    def sample(self, split: str, index: int, modalities: Sequence[str] = MODALITIES) -> Sample:
        return self.sample_from_meta(self.meta(split, index), modalities)


class ShapesDataset(PairDataset):
    """``size`` scenes of one split of the Shapes world, yielding :class:`~iqvae.data.record.Sample` records."""

    name = "shapes"

    def __init__(self, split: str = "train", size: int = 20000, resolution: int = 32,
                 modalities: Sequence[str] = MODALITIES, seed: int = 0, edge_source: str = "boundary",
                 caption_colours: bool = False):  # fmt: skip
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of: {', '.join(SPLITS)}")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise DataError(f"shapes dataset size must be a positive integer, got {size!r}")
        if isinstance(modalities, str):
            modalities = [m.strip() for m in modalities.split(",") if m.strip()]
        self.world = ShapesWorld(resolution, seed, edge_source, caption_colours)
        self.split = split
        self.size = int(size)
        self.resolution = self.world.resolution
        self.modalities = tuple(check_modalities(list(modalities)))

    def condition_spec(self, modality: str) -> ConditionSpec:
        return self.world.condition_spec(modality)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Sample:
        i = int(index)
        if i < 0:
            i += self.size
        if not 0 <= i < self.size:
            raise IndexError(f"shapes {self.split} index {index} out of range for {self.size} scenes")
        return self.world.sample(self.split, i, self.modalities)


@register_dataset("shapes")
def build_shapes(cfg: DataConfig, split: str) -> ShapesDataset:
    """Shapes split from a DataConfig: ``cfg.cond`` plus ``seg`` (the exact metrics need it)."""
    check_resolution(cfg.resolution, "option 'data.resolution'")
    size = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size}[split]
    if cfg.limit is not None:
        size = min(size, cfg.limit)
    mods = (cfg.cond,) if cfg.cond == "seg" else (cfg.cond, "seg")
    return ShapesDataset(split, size, cfg.resolution, mods)
