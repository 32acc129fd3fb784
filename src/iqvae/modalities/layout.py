"""layout: a per-class box map, float32 (C, H, W): channel c is 1 inside boxes of class c.

Network input: the planes as is.  D_c loss: per-channel binary cross-entropy (boxes of different classes overlap);
prediction: the sigmoid.  Cell head: binary cross-entropy against each cell's mean.  Rendered as the mean colour of
the classes whose boxes cover a pixel.  Metric: F1 at 0.5.
Controllability: box-map IoU of a condition predictor's box planes.
"""

from __future__ import annotations

import numpy as np

from .base import register
from .edge import BinaryMaps
from .palette import label_colours, upscale


class Layout(BinaryMaps):
    name = "layout"
    title = "Layout"
    menu_rank = 3
    control = "box_iou"
    control_judge = "predictor"

    def render(self, x, spec, tile):
        maps = x.detach().cpu().float().numpy()
        cols = label_colours(maps.shape[0]).astype(np.float64)
        count = maps.sum(axis=0)[..., None]
        rgb = np.einsum("chw,cd->hwd", maps, cols) / np.maximum(count, 1)
        rgb[count[..., 0] > 0] = np.maximum(rgb[count[..., 0] > 0], 40)  # class 0 boxes stay visible
        return upscale(np.round(rgb), tile)


LAYOUT = register(Layout())
