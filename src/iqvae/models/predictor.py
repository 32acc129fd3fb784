"""The condition predictor: a small CNN trained on a dataset's own train split to read a condition back from an
image (image -> seg / layout / keypoints / edge map), whose pooled encoder features are also an FD feature space.

Architecture (any resolution): an encoder of four 3x3 conv stages (widths w, 2w, 4w, 4w; strides 1, 2, 2, 2;
BatchNorm + ReLU); a U-Net decoder (nearest upsampling, concatenation with the encoder stage of the same size, 3x3
conv + BatchNorm + ReLU; widths 4w, 2w, w) and a 1x1 conv to the modality's network-input channels
(:meth:`iqvae.modalities.Modality.in_channels`: class logits for seg, one plane per box class / keypoint / the edge
map); the deepest map's global average ⊕ max pooling through a linear map gives ``feature_dim`` features (the FD
features), from which a ReLU + linear head predicts the image's ``thumb`` x ``thumb`` colour thumbnail.  The
thumbnail objective makes the features name colours and where they are, which no spatial condition fixes (so FD
sees colour errors); with no spatial condition (text, audio) it is the only objective (``out_channels = 0``).

Outputs follow the modality: :meth:`ConditionPredictor.predict` is the modality's :meth:`prediction` of the dense
logits (class ids for seg, probabilities for edge / layout, heatmaps for keypoints), the condition's own tensor
convention.  Saved like every checkpoint here: a folder of safetensors + JSON (kind ``condition-predictor``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import load_checkpoint, save_checkpoint
from ..errors import IQVAEError
from ..modalities import ConditionSpec, get_modality

PREDICTOR_KIND = "condition-predictor"


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class ConditionPredictor(nn.Module):
    """See the module docstring.  ``spec``: the condition it predicts (None: features and thumbnail only)."""

    def __init__(self, spec: dict[str, Any] | None, resolution: int, width: int = 16, feature_dim: int = 64,
                 thumb: int = 8, name: str = "predictor") -> None:
        super().__init__()
        if width < 1 or feature_dim < 1 or thumb < 1 or resolution < 8:
            raise IQVAEError(f"ConditionPredictor needs positive width, feature_dim, thumb and resolution >= 8; got "
                             f"{width}, {feature_dim}, {thumb}, {resolution}")
        self.spec = ConditionSpec.from_dict(spec) if spec is not None else None
        if self.spec is not None and self.spec.kind != "spatial":
            raise IQVAEError(f"a condition predictor reads spatial conditions only, not '{self.spec.modality}'")
        self.modality = get_modality(self.spec.modality) if self.spec is not None else None
        out = self.modality.in_channels(self.spec) if self.modality is not None else 0
        w = width
        chans = [3, w, 2 * w, 4 * w, 4 * w]
        self.down = nn.ModuleList(_block(chans[i], chans[i + 1], 1 if i == 0 else 2) for i in range(4))
        if out:
            self.up = nn.ModuleList([_block(8 * w, 4 * w), _block(6 * w, 2 * w), _block(3 * w, w)])
            self.head = nn.Conv2d(w, out, 1)
        self.proj = nn.Linear(8 * w, feature_dim)
        self.thumb_head = nn.Sequential(nn.ReLU(), nn.Linear(feature_dim, 3 * thumb * thumb))
        self.config = {"spec": spec, "resolution": int(resolution), "width": int(width),
                       "feature_dim": int(feature_dim), "thumb": int(thumb), "name": str(name)}
        self.name = str(name)
        self.num_features = int(feature_dim)
        self.resolution = int(resolution)
        self.thumb = int(thumb)
        self.out_channels = int(out)

    def _check(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise IQVAEError(f"{self.name} expects (B, 3, H, W) images in [-1, 1]; got {tuple(x.shape)}")
        return x.float()

    def _encode(self, x: Tensor) -> list[Tensor]:
        hs, h = [], self._check(x)
        for stage in self.down:
            h = stage(h)
            hs.append(h)
        return hs

    def _pool(self, h: Tensor) -> Tensor:
        return self.proj(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], 1))

    def features(self, x: Tensor) -> Tensor:
        """``(B, feature_dim)``: the FD features."""
        return self._pool(self._encode(x)[-1])

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)

    def outputs(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        """(dense logits ``(B, out_channels, H, W)`` or None, thumbnail ``(B, 3, thumb, thumb)``) in one pass."""
        hs = self._encode(x)
        thumb = self.thumb_head(self._pool(hs[-1])).view(-1, 3, self.thumb, self.thumb)
        if not self.out_channels:
            return None, thumb
        h = hs[-1]
        for block, skip in zip(self.up, reversed(hs[:-1])):
            h = block(torch.cat([F.interpolate(h, size=skip.shape[-2:], mode="nearest"), skip], 1))
        return self.head(h), thumb

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 64) -> Tensor:
        """The condition read back from images ``(B, 3, H, W)``, in the modality's tensor convention."""
        if self.modality is None:
            raise IQVAEError(f"{self.name} predicts no condition (it was trained for features only)")
        dev = next(self.parameters()).device
        out = [self.modality.prediction(self.outputs(x[i:i + batch_size].to(dev))[0]).cpu()
               for i in range(0, x.shape[0], batch_size)]
        return torch.cat(out)

    def save_pretrained(self, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
        return save_checkpoint(path, kind=PREDICTOR_KIND, config=dict(self.config), model_state=self.state_dict(),
                               meta=meta)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "ConditionPredictor":
        from .weights import load_state_checked

        ck = load_checkpoint(path, kind=PREDICTOR_KIND)
        try:
            model = cls(**ck.config)
        except (TypeError, KeyError) as e:
            raise IQVAEError(f"condition predictor checkpoint '{path}' has a bad config: {e}") from None
        load_state_checked(model, ck.model_state, Path(path) / "model.safetensors", "condition predictor")
        model.meta = ck.meta  # type: ignore[attr-defined]
        return model.to(device).eval().requires_grad_(False)
