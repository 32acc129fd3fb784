"""Image grids for logs, reports and the sample command (PIL only)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .errors import IQVAEError


def bar_options() -> dict:
    """tqdm options: redraw at most every 30 s when stderr is not a terminal (logs, CI), so logs stay readable."""
    import sys

    return {"dynamic_ncols": True} if sys.stderr.isatty() else {"mininterval": 30.0, "maxinterval": 60.0}


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(a) for a in to_uint8(images)]


def grid_image(rows: Sequence[torch.Tensor | Sequence[Image.Image]], *, labels: Sequence[str] | None = None,
               scale: int | None = None, pad: int = 2, label_width: int = 0) -> Image.Image:
    """One grid row per entry of ``rows`` (tensors (N,3,H,W) in [-1,1] or lists of PIL images), tiles upscaled
    (nearest) by ``scale`` so small images stay legible; ``labels`` are written at the left of each row."""
    pil_rows = [to_pil(r) if isinstance(r, torch.Tensor) else list(r) for r in rows]
    if not pil_rows or not any(pil_rows):
        raise IQVAEError("nothing to draw: the image grid is empty")
    h = max(im.height for r in pil_rows for im in r)
    if scale is None:
        scale = max(1, 96 // h)
    th = h * scale
    tw = max(im.width for r in pil_rows for im in r) * scale
    ncol = max(len(r) for r in pil_rows)
    lw = label_width or (110 if labels else 0)
    canvas = Image.new("RGB", (lw + ncol * (tw + pad) + pad, len(pil_rows) * (th + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, r in enumerate(pil_rows):
        y = pad + i * (th + pad)
        if labels:
            draw.text((4, y + th // 2 - 6), str(labels[i])[:18], fill="black")
        for j, im in enumerate(r):
            tile = im.convert("RGB").resize((im.width * th // im.height, th), Image.NEAREST)
            canvas.paste(tile, (lw + pad + j * (tw + pad), y))
    return canvas


def save_image_grid(path: str | Path, rows: Sequence[torch.Tensor | Sequence[Image.Image]], **kw) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        grid_image(rows, **kw).save(path)
    except OSError as e:
        raise IQVAEError(f"cannot write the image grid '{path}': {e.strerror or e}") from None
    return path
