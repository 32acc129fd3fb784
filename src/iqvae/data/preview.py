"""Preview grids: one row per sample, the image then one tile per requested condition.

Tiles are upscaled (nearest neighbour) to at least 128 pixels so that 32-pixel samples are legible.  Renderings:
``seg`` one colour per class (0 = black); ``edge`` white on black; ``keypoints`` the max over channels, coloured by
the channel that wins; ``layout`` the mean colour of the classes whose boxes cover a pixel; ``text`` the decoded
token ids (what a model sees; unknown words read ``<unk>``) word-wrapped inside the tile; ``audio`` the log-mel
spectrogram (low frequencies at the bottom, time to the right) with a viridis-like colour map.  Works for any
:class:`~iqvae.data.record.PairDataset`.  The renderings are the modalities' own (:mod:`iqvae.modalities`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, ImageDraw

from ..errors import DataError
from ..modalities import get_modality
from ..modalities.palette import upscale as _upscale
from ..modalities.palette import font as _font
from ..modalities import ConditionSpec
from .record import PairDataset, Sample

MIN_TILE = 128
PAD = 4
HEADER = 18


def render_tile(modality: str, x: torch.Tensor, spec: ConditionSpec | None, tile: int) -> Image.Image:
    """One condition tensor (no batch dimension, conventions of :mod:`iqvae.data.record`) as an RGB tile: the
    modality's own renderer (:meth:`iqvae.modalities.Modality.render`)."""
    return get_modality(modality).render(x, spec, tile)


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
