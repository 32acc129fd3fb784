"""Preview grids: one row per sample, the image then one tile per requested condition.

Tiles are upscaled (nearest neighbour) to at least 128 pixels so that 32-pixel samples are legible.  Renderings:
``seg`` one colour per class (0 = black); ``edge`` white on black; ``keypoints`` the max over channels, coloured by
the channel that wins; ``layout`` the mean colour of the classes whose boxes cover a pixel; ``text`` the decoded
token ids (what a model sees; unknown words read ``<unk>``) word-wrapped inside the tile; ``audio`` the log-mel
spectrogram (low frequencies at the bottom, time to the right) with a viridis-like colour map.  Works for any
:class:`~iqvae.data.record.PairDataset`.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..errors import DataError
from .conditions import TextVocab
from .record import ConditionSpec, PairDataset, Sample

MIN_TILE = 128
PAD = 4
HEADER = 18
# Viridis-like anchors (dark purple -> blue -> green -> yellow), interpolated linearly.
_CMAP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64)


def label_colours(n: int) -> np.ndarray:
    """``n`` distinct RGB uint8 colours (colour 0 black = background): the palette that ``iqvae sample``, the web
    demo and condition files use (:func:`iqvae.condition_io.label_palette`), so a preview can be painted over."""
    from ..condition_io import label_palette

    return label_palette(max(n, 1))


def colormap(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB ``(..., 3)``."""
    x = np.clip(x, 0.0, 1.0) * (len(_CMAP) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_CMAP) - 2)
    t = (x - lo)[..., None]
    return np.round(_CMAP[lo] * (1 - t) + _CMAP[lo + 1] * t).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _upscale(rgb: np.ndarray, tile: int) -> Image.Image:
    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    return img.resize((tile, tile), Image.NEAREST) if img.size != (tile, tile) else img


def _text_tile(text: str, tile: int) -> Image.Image:
    img = Image.new("RGB", (tile, tile), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    size = max(9, tile // 11)
    font = _font(size)
    chars = max(8, int(tile / (0.55 * size)))
    lines = textwrap.wrap(text, chars) or [""]
    y = 2
    for line in lines:
        if y + size > tile:
            draw.text((2, tile - size - 2), "...", fill=(200, 0, 0), font=font)
            break
        draw.text((2, y), line, fill=(0, 0, 0), font=font)
        y += size + 2
    return img


def render_tile(modality: str, x: torch.Tensor, spec: ConditionSpec | None, tile: int) -> Image.Image:
    """One condition tensor (no batch dimension, conventions of :mod:`iqvae.data.record`) as an RGB tile."""
    x = x.detach().cpu()
    if modality == "seg":
        n = spec.channels if spec else int(x.max()) + 1
        return _upscale(label_colours(max(n, int(x.max()) + 1))[x.numpy()], tile)
    if modality == "edge":
        return _upscale(np.repeat((x[0].numpy() * 255).clip(0, 255)[..., None], 3, axis=2), tile)
    if modality in ("keypoints", "layout"):
        maps = x.float().numpy()
        cols = label_colours(maps.shape[0] + 1)[1:].astype(np.float64) if modality == "keypoints" else \
            label_colours(maps.shape[0]).astype(np.float64)  # fmt: skip
        if modality == "keypoints":
            win = maps.argmax(axis=0)
            rgb = cols[win] * maps.max(axis=0)[..., None]
        else:
            count = maps.sum(axis=0)[..., None]
            rgb = np.einsum("chw,cd->hwd", maps, cols) / np.maximum(count, 1)
            rgb[count[..., 0] > 0] = np.maximum(rgb[count[..., 0] > 0], 40)  # class 0 boxes stay visible
        return _upscale(np.round(rgb), tile)
    if modality == "text":
        ids = x.reshape(-1)
        text = TextVocab(spec.vocab).decode(ids) if spec is not None and spec.vocab else " ".join(
            str(i) for i in ids.tolist() if i)  # fmt: skip
        return _text_tile(text, tile)
    if modality == "audio":
        m = x.float().numpy()
        m = (m - m.min()) / max(float(m.max() - m.min()), 1e-8)
        img = Image.fromarray(colormap(m[::-1]), "RGB")
        return img.resize((tile, tile), Image.BILINEAR)
    raise DataError(f"cannot preview unknown modality '{modality}'")


def image_tile(image: torch.Tensor, tile: int) -> Image.Image:
    """Image float (3, H, W) in [-1, 1] as an RGB tile."""
    rgb = ((image.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return _upscale(rgb, tile)


def tile_size(resolution: int) -> int:
    """Tile side: the resolution times the smallest integer factor reaching :data:`MIN_TILE` pixels."""
    return resolution * max(1, math.ceil(MIN_TILE / resolution))


def preview_grid(samples: Sequence[Sample], modalities: Sequence[str],
                 specs: dict[str, ConditionSpec] | None = None) -> Image.Image:  # fmt: skip
    """Grid image: a header row of column names, then per sample ``image | cond_1 | cond_2 | ...``."""
    if not samples:
        raise DataError("nothing to preview: no samples")
    specs = specs or {}
    res = samples[0].image.shape[-1]
    tile = tile_size(res)
    cols = ["image", *modalities]
    width = PAD + len(cols) * (tile + PAD)
    height = HEADER + PAD + len(samples) * (tile + PAD)
    grid = Image.new("RGB", (width, height), (235, 235, 235))
    draw = ImageDraw.Draw(grid)
    font = _font(12)
    for c, name in enumerate(cols):
        draw.text((PAD + c * (tile + PAD) + 2, 3), name, fill=(0, 0, 0), font=font)
    for r, s in enumerate(samples):
        y = HEADER + PAD + r * (tile + PAD)
        grid.paste(image_tile(s.image, tile), (PAD, y))
        for c, m in enumerate(modalities, start=1):
            if m not in s.cond:
                raise DataError(f"sample {r} has no '{m}' condition; it has: {', '.join(s.cond) or 'none'}")
            grid.paste(render_tile(m, s.cond[m], specs.get(m), tile), (PAD + c * (tile + PAD), y))
    return grid


def preview_dataset(dataset: PairDataset, indices: Sequence[int], modalities: Sequence[str]) -> Image.Image:
    """:func:`preview_grid` of ``dataset[i]`` for ``i`` in ``indices`` (conditions decoded with the dataset specs)."""
    specs = {m: dataset.condition_spec(m) for m in modalities}
    return preview_grid([dataset[i] for i in indices], modalities, specs)


def check_output_path(path: str | Path, what: str = "output file") -> Path:
    """Fail early (DataError naming ``what``) if ``path`` is a folder or its folder does not exist."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{what} '{p}' is a folder; expected a file name such as preview.png")
    if not p.parent.is_dir():
        raise DataError(f"{what} '{p}': folder '{p.parent}' does not exist")
    return p


def save_png(image: Image.Image, path: str | Path, what: str = "output file") -> Path:
    """Write ``image`` as PNG; a DataError naming ``what`` and the path if it cannot be written."""
    p = check_output_path(path, what)
    try:
        image.save(p, format="PNG")
    except OSError as e:
        raise DataError(f"{what} '{p}' cannot be written: {e.strerror or e}") from None
    return p
