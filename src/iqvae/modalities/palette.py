"""Colours and small picture helpers shared by the modalities' renderers and by the readers of painted files.

:func:`label_palette` is the one palette of label maps: previews, ``iqvae sample`` grids, the web demo's brush and
painted condition files all use it, so a rendered segmentation can be painted over and read back.
"""

from __future__ import annotations

import colorsys
import textwrap

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# Viridis-like anchors (dark purple -> blue -> green -> yellow), interpolated linearly.
_CMAP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64)


def label_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours for label maps: black background, then well-separated hues."""
    cols = [(0, 0, 0)]
    for i in range(1, num_classes):
        h = (i * 0.618033988749895) % 1.0
        s = 0.65 + 0.35 * ((i // 7) % 2)
        v = 0.95 - 0.3 * ((i // 14) % 2)
        r, g, b = colorsys.hsv_to_rgb(h, s, v)
        cols.append((int(r * 255), int(g * 255), int(b * 255)))
    return np.array(cols, dtype=np.uint8)


def label_colours(n: int) -> np.ndarray:
    """``n`` (at least 1) colours of :func:`label_palette`."""
    return label_palette(max(n, 1))


def colorize_labels(seg: torch.Tensor | np.ndarray, num_classes: int) -> Image.Image:
    arr = np.asarray(seg)
    return Image.fromarray(label_palette(max(num_classes, int(arr.max()) + 1))[arr])


def colormap(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB ``(..., 3)``."""
    x = np.clip(x, 0.0, 1.0) * (len(_CMAP) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_CMAP) - 2)
    t = (x - lo)[..., None]
    return np.round(_CMAP[lo] * (1 - t) + _CMAP[lo + 1] * t).astype(np.uint8)


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def upscale(rgb: np.ndarray, tile: int) -> Image.Image:
    """An RGB array (values cast to uint8) as a ``tile`` x ``tile`` picture, nearest neighbour."""
    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    return img.resize((tile, tile), Image.NEAREST) if img.size != (tile, tile) else img


def text_tile(text: str, tile: int) -> Image.Image:
    """``text`` word-wrapped in black on a white tile (a red ``...`` when it does not fit)."""
    img = Image.new("RGB", (tile, tile), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    size = max(9, tile // 11)
    fnt = font(size)
    chars = max(8, int(tile / (0.55 * size)))
    lines = textwrap.wrap(text, chars) or [""]
    y = 2
    for line in lines:
        if y + size > tile:
            draw.text((2, tile - size - 2), "...", fill=(200, 0, 0), font=fnt)
            break
        draw.text((2, y), line, fill=(0, 0, 0), font=fnt)
        y += size + 2
    return img


def hex_colour(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb))
