"""keypoints: one Gaussian heatmap per keypoint, float32 (K, H, W), values in [0, 1].

Network input: the heatmaps as is.  D_c loss: MSE; prediction: clamped to [0, 1].  Cell head: squared error
against each cell's mean.  Rendered as the max over channels, coloured by the channel that wins.  Metric: MSE.
Controllability: a condition predictor's heatmaps (squared error weighted towards the peaks), keypoint error.
"""

from __future__ import annotations

import numpy as np

from .base import Modality, register
from .palette import label_colours, upscale

PEAK_WEIGHT = 200.0


class Keypoints(Modality):
    name = "keypoints"
    title = "Keypoints"
    menu_rank = 4
    control = "keypoint_error"
    control_judge = "predictor"

    def predictor_loss(self, spec, out, cond):
        # Heatmaps are nearly all zeros: with plain MSE a predictor learns to output zeros (its arg-max is then noise;
        # Shapes, 300 steps: keypoint error 0.34 of the image side), so the squared error is weighted
        # 1 + PEAK_WEIGHT x target (0.13 with 200, 0.14 with 50).
        return ((out - cond) ** 2 * (1 + PEAK_WEIGHT * cond)).mean()

    def prediction(self, out):
        return out.clamp(0, 1)

    def render(self, x, spec, tile):
        maps = x.detach().cpu().float().numpy()
        cols = label_colours(maps.shape[0] + 1)[1:].astype(np.float64)
        win = maps.argmax(axis=0)
        rgb = cols[win] * maps.max(axis=0)[..., None]
        return upscale(np.round(rgb), tile)


KEYPOINTS = register(Keypoints())
