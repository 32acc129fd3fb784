"""edge: object boundaries, float32 (1, H, W), values in {0, 1}.

Network input: the map as is (one channel whatever ``spec.channels`` says).  D_c loss: binary cross-entropy;
prediction: the sigmoid.  Cell head: binary cross-entropy against each cell's mean.  Rendered white on black; read
from a grey or RGB image (pixels brighter than 127 are edges).  Metric: F1 at 0.5.
Controllability: Canny F1 of the generated image against the edge map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from .base import Modality, check_image_size, register, resize_nearest
from .palette import upscale


def f1_at_half(preds: torch.Tensor, conds: torch.Tensor) -> dict[str, float]:
    p, t = preds > 0.5, conds > 0.5
    tp = (p & t).sum().item()
    prec, rec = tp / max(p.sum().item(), 1), tp / max(t.sum().item(), 1)
    return {"cond_f1": 2 * prec * rec / max(prec + rec, 1e-12)}


class BinaryMaps(Modality):
    """Shared by edge and layout: maps in [0, 1] scored with (binary) cross-entropy."""

    def recon_loss(self, spec, out, cond):
        return F.binary_cross_entropy_with_logits(out, cond)

    def prediction(self, out):
        return torch.sigmoid(out)

    def cell_loss(self, pred, target):
        return F.binary_cross_entropy_with_logits(pred, target)

    def recon_scores(self, spec, preds, conds):
        return f1_at_half(preds, conds)


class Edge(BinaryMaps):
    name = "edge"
    title = "Edge map"
    menu_rank = 1
    control = "canny_f1"
    control_judge = "canny"
    file_hint = "a grey or RGB image (pixels brighter than 127 are edges) or a .safetensors tensor"
    drawable = True

    def item_shape(self, spec, resolution):
        return (1, resolution, resolution)

    def in_channels(self, spec):
        return 1

    def render(self, x, spec, tile):
        x = x.detach().cpu()
        return upscale(np.repeat((x[0].numpy() * 255).clip(0, 255)[..., None], 3, axis=2), tile)

    def legend_html(self, spec, resolution, names):
        return ("<div><b>Edge map</b>: draw edges in <b>white</b> on the black canvas (black erases). "
                f"The model sees a {resolution}&times;{resolution} binary map.</div>")

    def from_image(self, img, spec, resolution, source="image"):
        check_image_size(img, source)
        if img.mode not in ("L", "RGB", "RGBA", "P", "1"):
            raise DataError(f"{source}: an edge map must be a grey or RGB image, got mode {img.mode}")
        arr = np.asarray(resize_nearest(img.convert("L"), resolution))
        return torch.from_numpy((arr > 127).astype(np.float32))[None]


EDGE = register(Edge())
