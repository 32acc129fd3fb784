"""PatchGAN discriminator (pix2pix ``NLayerDiscriminator``, as used by taming-transformers' VQGAN).

A stack of 4x4 convolutions: ``n_layers`` stride-2 convolutions, one stride-1 convolution, then a 1-channel
stride-1 output convolution, so each output logit judges one overlapping image patch (70x70 px for n_layers=3).

Normalisation: ``norm="group"`` (default) uses GroupNorm, which behaves identically in train and eval mode, works at
batch size 1 and does not mix the statistics of the real and the fake batch (each is a separate forward pass here);
``norm="batch"`` reproduces pix2pix / taming (BatchNorm).  Either way the logits are not strictly local during
training (normalisation statistics span the whole map); in eval mode BatchNorm is per-pixel affine.  Weights are initialised as in pix2pix:
conv ~ N(0, 0.02), norm scale ~ N(1, 0.02), biases 0.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError, DataError
from .autoencoder import num_groups


def _norm(kind: str, ch: int) -> nn.Module:
    return nn.BatchNorm2d(ch) if kind == "batch" else nn.GroupNorm(num_groups(ch), ch)


class NLayerDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3,
                 norm: Literal["group", "batch"] = "group"):
        super().__init__()
        if norm not in ("group", "batch"):
            raise ConfigError(f"discriminator norm must be 'group' or 'batch', got {norm!r}")
        if n_layers < 1 or ndf < 1:
            raise ConfigError(f"discriminator needs n_layers >= 1 and ndf >= 1, got {n_layers}, {ndf}")
        self.n_layers = n_layers
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False), _norm(norm, ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    @property
    def min_size(self) -> int:
        """Smallest input side that leaves at least one output logit."""
        return 3 * 2 ** self.n_layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> patch logits (B, 1, h, w)."""
        if min(x.shape[-2:]) < self.min_size:
            raise DataError(f"discriminator with n_layers={self.n_layers} needs images of at least "
                            f"{self.min_size}x{self.min_size} px; got {tuple(x.shape[-2:])} (use fewer layers)")
        return self.main(x)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
