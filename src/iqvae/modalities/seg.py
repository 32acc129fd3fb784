"""seg: a class map, int64 (H, W), 0 = background, ids < spec.channels.

Network input: one-hot planes.  D_c loss: cross-entropy over classes; prediction: the arg-max class.  Cell head:
cross-entropy against each cell's class histogram.  Rendered in :func:`~.palette.label_palette` colours; read from a
label-id PNG or a PNG painted in those colours.  Metrics: pixel accuracy and mIoU.
Controllability: mIoU of a condition predictor's class map (trained on the dataset).
"""

from __future__ import annotations

import html
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import DataError
from .base import ConditionSpec, Modality, check_image_size, register, resize_nearest
from .palette import hex_colour, label_colours, label_palette, upscale


def miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean intersection over union over the classes present in ``target``."""
    ious = []
    for c in range(num_classes):
        p, t = pred == c, target == c
        union = (p | t).sum().item()
        if (t.sum().item()) == 0:
            continue
        ious.append((p & t).sum().item() / union)
    return float(sum(ious) / len(ious)) if ious else float("nan")


class Seg(Modality):
    name = "seg"
    dtype = torch.int64
    values = "ids"
    meaning = "class ids"
    min_channels = 2
    title = "Segmentation"
    menu_rank = 0
    control = "miou"
    control_judge = "predictor"
    file_hint = "a PNG of label ids (mode L / P / I), a PNG painted in the palette colours, or a .safetensors tensor"
    drawable = True
    class_map = True

    def item_shape(self, spec, resolution):
        return (resolution, resolution)

    def network_input(self, spec, cond):
        return F.one_hot(cond, spec.channels).permute(0, 3, 1, 2).float()

    def recon_loss(self, spec, out, cond):
        return F.cross_entropy(out, cond)

    def prediction(self, out):
        return out.argmax(dim=1)

    def cell_loss(self, pred, target):  # soft-target cross-entropy with the class histogram
        return -(target * F.log_softmax(pred, dim=1)).sum(1).mean()

    def render(self, x, spec, tile):
        x = x.detach().cpu()
        n = spec.channels if spec else int(x.max()) + 1
        return upscale(label_colours(max(n, int(x.max()) + 1))[x.numpy()], tile)

    def legend_html(self, spec, resolution, names: Callable[[], list[str]]):
        pal = label_palette(spec.channels)
        items = []
        for i, name in enumerate(names()):
            sw = (f'<span style="display:inline-block;width:1.1em;height:1.1em;vertical-align:middle;'
                  f'border:1px solid #888;background:{hex_colour(pal[i])}"></span>')
            items.append(f'<span class="iqvae-swatch" style="margin-right:0.9em;white-space:nowrap">{sw} '
                         f"{i}&nbsp;{html.escape(str(name))}</span>")
        return ("<div><b>Palette</b> (paint each class in its colour; black is background):<br>"
                + " ".join(items) + "</div>")

    def canvas_brush(self, spec):
        cols = [hex_colour(c) for c in label_palette(spec.channels)]
        return cols, cols[1 if len(cols) > 1 else 0], 4

    def recon_scores(self, spec, preds, conds):
        return {"cond_pixel_acc": float((preds == conds).float().mean()),
                "cond_miou": miou(preds, conds, spec.channels)}

    def from_image(self, img: Image.Image, spec: ConditionSpec, resolution: int, source: str = "image"):
        check_image_size(img, source)
        if img.mode in ("L", "P", "I", "I;16"):
            arr = np.asarray(resize_nearest(img, resolution)).astype(np.int64)
        elif img.mode in ("RGB", "RGBA"):
            rgb = np.asarray(resize_nearest(img.convert("RGB"), resolution)).astype(np.int64)
            pal = label_palette(spec.channels).astype(np.int64)
            d = ((rgb[:, :, None, :] - pal[None, None]) ** 2).sum(-1)
            arr = d.argmin(-1)
            far = d.min(-1) > 3 * 40 ** 2
            if far.mean() > 0.05:
                raise DataError(f"{source}: {far.mean():.0%} of the pixels are not painted in the label palette "
                                f"(see iqvae.modalities.palette.label_palette); use a PNG of label ids instead")
        else:
            raise DataError(f"{source}: a segmentation must be an RGB or a label-id (L/P/I) image, got mode {img.mode}")
        t = torch.from_numpy(arr).long()
        if int(t.max()) >= spec.channels:
            raise DataError(f"{source}: label {int(t.max())} is out of range; this model knows {spec.channels} classes")
        return t


SEG = register(Seg())
