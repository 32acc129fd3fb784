"""Condition encodings shared by every dataset (the built-in Shapes world and the real-dataset loaders).

Each function turns raw annotations into the tensor convention of :mod:`iqvae.data.record`.

Coordinate convention (keypoints and boxes): continuous pixel coordinates, ``x`` to the right and ``y`` down;
pixel ``(row i, column j)`` covers ``[j, j + 1) x [i, i + 1)`` and its centre is ``(j + 0.5, i + 0.5)``.  A loader
whose annotations give integer pixel indices of keypoints should add 0.5 to them.

Audio convention: :func:`log_mel` is the natural log of the mel-filtered power spectrogram plus ``1e-5``
(``log(mel @ |STFT|^2 + 1e-5)``, periodic Hann window, ``center=True``, no normalisation), so digital silence
maps to ``log(1e-5) ~= -11.51`` (:data:`LOG_MEL_FLOOR`), which is also the value of padded frames.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError, DataError

LOG_MEL_EPS = 1e-5
LOG_MEL_FLOOR = math.log(LOG_MEL_EPS)


def _check_resolution(resolution: int, what: str = "resolution") -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise ConfigError(f"{what} must be a positive integer number of pixels, got {resolution!r}")
    return int(resolution)


# ----------------------------------------------------------------------------------------------------- keypoints


def gaussian_heatmaps(coords: torch.Tensor, resolution: int, sigma: float) -> torch.Tensor:
    """One Gaussian heatmap per keypoint: float32 ``(K, H, W)`` with ``H = W = resolution``, values in [0, 1].

    ``coords`` is ``(K, 2)`` float ``(x, y)`` in continuous pixel coordinates (module docstring); a keypoint with a
    negative coordinate is missing and its channel is all zeros.  Channel ``k`` at pixel ``(i, j)`` is
    ``exp(-((j + 0.5 - x)^2 + (i + 0.5 - y)^2) / (2 sigma^2))``, so it is exactly 1 at a keypoint lying on a pixel
    centre.
    """
    res = _check_resolution(resolution)
    coords = torch.as_tensor(coords, dtype=torch.float32)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise DataError(f"keypoint coordinates must have shape (K, 2) as (x, y) pairs; got {tuple(coords.shape)}")
    if not (sigma > 0):
        raise ConfigError(f"heatmap sigma must be positive, got {sigma!r}")
    centres = torch.arange(res, dtype=torch.float32) + 0.5
    x = coords[:, 0:1]  # (K, 1)
    y = coords[:, 1:2]
    gx = torch.exp(-((centres[None, :] - x) ** 2) / (2.0 * sigma * sigma))  # (K, W)
    gy = torch.exp(-((centres[None, :] - y) ** 2) / (2.0 * sigma * sigma))  # (K, H)
    heat = gy[:, :, None] * gx[:, None, :]
    missing = (coords < 0).any(dim=1)
    heat[missing] = 0.0
    return heat.contiguous()


# -------------------------------------------------------------------------------------------------------- layout


def boxes_to_layout(
    boxes: Sequence[tuple[int, float, float, float, float]], num_classes: int, resolution: int
) -> torch.Tensor:
    """Per-class box map: float32 ``(num_classes, H, W)`` in {0, 1}; channel ``c`` is 1 inside boxes of class ``c``.

    Each box is ``(class, x0, y0, x1, y1)`` in continuous pixel coordinates; it covers the pixels whose centre lies in
    ``[x0, x1] x [y0, y1]`` (an integer box ``(0, 2, 3, 6, 8)`` covers 4 x 5 pixels).  Boxes of one class are
    merged (logical or).  No channel is filled implicitly: datasets whose class 0 is background leave channel 0 empty.
    """
    res = _check_resolution(resolution)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    out = torch.zeros(int(num_classes), res, res, dtype=torch.float32)
    for n, box in enumerate(boxes):
        if len(box) != 5:
            raise DataError(f"box {n} must be (class, x0, y0, x1, y1); got {box!r}")
        cls, x0, y0, x1, y1 = box
        cls = int(cls)
        if not 0 <= cls < num_classes:
            raise DataError(f"box {n} has class {cls}; expected a class id in [0, {num_classes - 1}]")
        if x1 < x0 or y1 < y0:
            raise DataError(f"box {n} has x1 < x0 or y1 < y0: {box!r}")
        # Pixel j is inside iff x0 <= j + 0.5 <= x1.
        j0, j1 = max(0, math.ceil(x0 - 0.5)), min(res - 1, math.floor(x1 - 0.5))
        i0, i1 = max(0, math.ceil(y0 - 0.5)), min(res - 1, math.floor(y1 - 0.5))
        if j0 <= j1 and i0 <= i1:
            out[cls, i0 : i1 + 1, j0 : j1 + 1] = 1.0
    return out


# --------------------------------------------------------------------------------------------------------- edges


def canny_edges(image_rgb_uint8: np.ndarray, low: float = 100, high: float = 200) -> torch.Tensor:
    """Canny edges of an RGB uint8 image ``(H, W, 3)`` (OpenCV, thresholds 100/200 as in ControlNet).

    OpenCV computes the gradient on each colour channel and keeps the strongest, so edges between two colours of
    equal brightness are found too.  Returns float32 ``(1, H, W)`` in {0, 1}.
    """
    import cv2

    img = np.asarray(image_rgb_uint8)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise DataError(f"canny_edges expects an RGB uint8 array (H, W, 3); got {img.dtype} {img.shape}")
    if not 0 <= low <= high:
        raise ConfigError(f"Canny thresholds must satisfy 0 <= low <= high; got low={low}, high={high}")
    edges = cv2.Canny(np.ascontiguousarray(img), float(low), float(high))
    return torch.from_numpy((edges > 0).astype(np.float32))[None]


def seg_boundaries(seg: torch.Tensor) -> torch.Tensor:
    """Boundaries between different labels: float32 ``(1, H, W)`` in {0, 1}.

    A pixel is on a boundary when one of its 4 neighbours has a *smaller* label.  Lines are therefore one pixel thick
    and lie on the side of the larger label (with background 0, on the object; with an instance map drawn back to
    front, on the occluding object).  The image border is not a boundary.
    """
    seg = torch.as_tensor(seg)
    if seg.ndim != 2 or seg.dtype.is_floating_point or seg.dtype == torch.bool:
        raise DataError(f"seg_boundaries expects an integer label map (H, W); got {seg.dtype} {tuple(seg.shape)}")
    s = seg.long()
    edge = torch.zeros_like(s, dtype=torch.bool)
    edge[1:, :] |= s[:-1, :] < s[1:, :]
    edge[:-1, :] |= s[1:, :] < s[:-1, :]
    edge[:, 1:] |= s[:, :-1] < s[:, 1:]
    edge[:, :-1] |= s[:, 1:] < s[:, :-1]
    return edge.float()[None]


# -------------------------------------------------------------------------------------------------------- one-hot


def one_hot(ids: torch.Tensor, num_classes: int, what: str = "ids") -> torch.Tensor:
    """Float32 one-hot with the class axis first: ``(...)`` int -> ``(num_classes, ...)``; checks the id range."""
    ids = torch.as_tensor(ids)
    if ids.dtype.is_floating_point:
        raise DataError(f"{what} must be integer class ids; got {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
        raise DataError(f"{what} has ids in [{int(ids.min())}, {int(ids.max())}]; expected [0, {num_classes - 1}]")
    out = torch.nn.functional.one_hot(ids.long(), num_classes).float()
    return out.movedim(-1, 0).contiguous()


def one_hot_seg(seg: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Segmentation map int64 ``(H, W)`` -> float32 ``(num_classes, H, W)`` in {0, 1}."""
    seg = torch.as_tensor(seg)
    if seg.ndim != 2:
        raise DataError(f"segmentation map must be (H, W); got shape {tuple(seg.shape)}")
    return one_hot(seg, num_classes, "segmentation map")


# --------------------------------------------------------------------------------------------------------- audio


def hz_to_mel(f: np.ndarray | float) -> np.ndarray | float:
    """HTK mel scale: ``2595 log10(1 + f / 700)``."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray | float:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_centres(sample_rate: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """Centre frequencies (Hz) of the ``n_mels`` triangles of :func:`mel_filterbank`."""
    fmax = sample_rate / 2 if fmax is None else fmax
    pts = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    return np.asarray(pts[1:-1])


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> torch.Tensor:
    """Triangular mel filterbank, float32 ``(n_mels, n_fft // 2 + 1)``.

    ``n_mels + 2`` edge frequencies are equally spaced on the HTK mel scale between ``fmin`` and ``fmax``
    (default ``sample_rate / 2``); filter ``m`` rises linearly (in Hz) from edge ``m`` to 1 at edge ``m + 1`` and
    falls to 0 at edge ``m + 2``.  Filters are not area-normalised: between the first and the last centre the rows
    sum to exactly 1 at every frequency.
    """
    if sample_rate <= 0 or n_fft < 2 or n_mels < 1:
        raise ConfigError(
            f"mel filterbank needs sample_rate > 0, n_fft >= 2, n_mels >= 1; got {sample_rate}, {n_fft}, {n_mels}"
        )
    fmax = sample_rate / 2 if fmax is None else float(fmax)
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ConfigError(f"mel filterbank needs 0 <= fmin < fmax <= sample_rate/2; got fmin={fmin}, fmax={fmax}")
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    lo, ce, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (freqs[None] - lo) / (ce - lo)
    fall = (hi - freqs[None]) / (hi - ce)
    fb = np.clip(np.minimum(rise, fall), 0.0, None)
    return torch.from_numpy(fb.astype(np.float32))


_FB_CACHE: dict[tuple[int, int, int, float, float | None], torch.Tensor] = {}


def log_mel(
    waveform: torch.Tensor,
    sample_rate: int,
    n_mels: int,
    n_fft: int,
    hop: int,
    frames: int,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> torch.Tensor:
    """Log-mel spectrogram float32 ``(n_mels, frames)`` of a mono waveform ``(N,)``.

    ``log(mel_filterbank @ |STFT|^2 + 1e-5)`` with a periodic Hann window of ``n_fft`` samples, hop ``hop``,
    ``center=True`` (reflect padding).  The result is cropped or padded (with the silence value
    :data:`LOG_MEL_FLOOR`) to exactly ``frames`` frames.  A waveform shorter than ``n_fft`` is zero-padded first.
    """
    w = torch.as_tensor(waveform, dtype=torch.float32)
    if w.ndim != 1 or w.numel() == 0:
        raise DataError(f"log_mel expects a non-empty mono waveform of shape (N,); got {tuple(w.shape)}")
    if hop < 1 or frames < 1:
        raise ConfigError(f"log_mel needs hop >= 1 and frames >= 1; got hop={hop}, frames={frames}")
    if w.numel() < n_fft:
        w = torch.nn.functional.pad(w, (0, n_fft - w.numel()))
    key = (int(sample_rate), int(n_fft), int(n_mels), float(fmin), fmax)
    fb = _FB_CACHE.get(key)
    if fb is None:
        fb = _FB_CACHE[key] = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
    spec = torch.stft(
        w, n_fft, hop_length=hop, window=torch.hann_window(n_fft), center=True, return_complex=True
    )
    power = spec.real**2 + spec.imag**2  # (n_fft//2+1, T)
    mel = torch.log(fb @ power + LOG_MEL_EPS)
    t = mel.shape[1]
    if t >= frames:
        return mel[:, :frames].contiguous()
    return torch.nn.functional.pad(mel, (0, frames - t), value=LOG_MEL_FLOOR)

