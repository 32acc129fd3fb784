"""LPIPS (Zhang et al., CVPR 2018) written without torchvision, loading the standard weight files.

Protocol (identical to the ``lpips`` package, version 0.1, ``spatial=False``):

1. inputs ``x, y`` are RGB images in ``[-1, 1]``, shape ``(B, 3, H, W)``;
2. ScalingLayer: ``(x - shift) / scale`` with ``shift = (-.030, -.088, -.188)``, ``scale = (.458, .448, .450)``;
3. trunk features at five taps -- VGG16: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (64/128/256/512/512 channels);
   AlexNet: relu1..relu5 (64/192/384/256/256 channels);
4. each feature map is unit-normalised over channels, ``f / (||f||_2 + 1e-10)``;
5. squared difference of the two normalised maps, a 1x1 convolution to one channel without bias (the "lin" layers,
   learnt calibration weights), spatial mean;
6. sum over the five layers -> one distance per image pair, returned as shape ``(B,)``.

One numerical deviation: the divisor is ``sqrt(sum f^2 + 1e-20) + 1e-10`` instead of ``sqrt(sum f^2) + 1e-10`` so
that its gradient stays finite where a whole feature vector is zero (the original yields NaN gradients there); the
divisor changes by at most 1e-10.  Pairs whose two images are bitwise identical get exactly 0.

Weight files (never unpickled beyond ``torch.load(..., weights_only=True)``):

* backbone: the torchvision ImageNet file (``vgg16-397923af.pth`` / ``alexnet-owt-7be5be79.pth``) -- keys
  ``features.N.weight`` / ``features.N.bias``; its ``classifier.*`` keys are ignored;
* calibration: the lpips package file (``weights/v0.1/vgg.pth`` / ``alex.pth``) -- keys ``lin0.model.1.weight`` ...
  ``lin4.model.1.weight``.

A model built with ``random_init=True`` in place of a missing file carries ``is_calibrated = False`` and a ``label``
such as ``"LPIPS-vgg(random weights)"``, so that reports never call such a number LPIPS.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import IQVAEError
from .weights import load_state_checked, read_weights_file

# --------------------------------------------------------------------------------------------------------------------
# Trunks whose parameter names match torchvision's ``vgg16().features`` / ``alexnet().features``.

_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_VGG16_TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in ``features``
_ALEX_TAPS = (1, 4, 7, 9, 11)  # indices of relu1 .. relu5
CHANNELS = {"vgg": (64, 128, 256, 512, 512), "alex": (64, 192, 384, 256, 256)}


def _vgg16_layers() -> list[nn.Module]:
    layers: list[nn.Module] = []
    c_in = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, int(v), kernel_size=3, padding=1), nn.ReLU()]
            c_in = int(v)
    return layers


def _alexnet_layers() -> list[nn.Module]:
    return [
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
    ]


class FeatureTrunk(nn.Module):
    """``features`` = the torchvision Sequential; ``forward`` returns the activations at the five LPIPS taps."""

    def __init__(self, net: str) -> None:
        super().__init__()
        if net == "vgg":
            self.features = nn.Sequential(*_vgg16_layers())
            self.taps = _VGG16_TAPS
        elif net == "alex":
            self.features = nn.Sequential(*_alexnet_layers())
            self.taps = _ALEX_TAPS
        else:
            raise IQVAEError(f"unknown LPIPS network '{net}'; expected 'vgg' or 'alex'")

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        last = self.taps[-1]
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                outs.append(x)
            if i == last:
                break
        return outs


class NetLinLayer(nn.Module):
    """The lpips 1x1 calibration conv; ``model.0`` is the (parameter-free) dropout slot, ``model.1`` the conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def normalize_channels(f: Tensor, eps: float = 1e-10) -> Tensor:
    """``f / (||f||_2 over channels + eps)`` with a gradient that stays finite at ``f = 0``."""
    norm = torch.sqrt((f * f).sum(dim=1, keepdim=True) + eps * eps)
    return f / (norm + eps)


class LPIPS(nn.Module):
    """Learned perceptual image patch similarity; frozen, differentiable with respect to its inputs."""

    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)

    def __init__(
        self,
        net: str = "vgg",
        backbone_weights: str | Path | None = None,
        lin_weights: str | Path | None = None,
        random_init: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if net not in CHANNELS:
            raise IQVAEError(f"unknown LPIPS network '{net}'; expected 'vgg' or 'alex'")
        if not random_init:
            for what, p in (("backbone", backbone_weights), ("lin (calibration)", lin_weights)):
                if p is None:
                    raise IQVAEError(
                        f"LPIPS-{net} needs its {what} weights file; pass its path, or random_init=True for an"
                        " uncalibrated stand-in that is reported as such"
                    )
        self.net_name = net
        self.register_buffer("shift", torch.tensor(self.SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(self.SCALE).view(1, 3, 1, 1), persistent=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # random stand-ins are reproducible
            self.net = FeatureTrunk(net)
            self.lins = nn.ModuleList(NetLinLayer(c) for c in CHANNELS[net])
            with torch.no_grad():  # non-negative calibration, like trained lpips weights
                for lin in self.lins:
                    lin.model[1].weight.abs_()
        self.backbone_loaded = backbone_weights is not None
        self.lin_loaded = lin_weights is not None
        if backbone_weights is not None:
            state = read_weights_file(backbone_weights, f"LPIPS-{net} backbone")
            load_state_checked(self.net, state, backbone_weights, f"LPIPS-{net} backbone",
                               ignore_prefixes=("classifier.",))
        if lin_weights is not None:
            state = read_weights_file(lin_weights, f"LPIPS-{net} lin")
            target = nn.ModuleDict({f"lin{i}": lin for i, lin in enumerate(self.lins)})
            load_state_checked(target, state, lin_weights, f"LPIPS-{net} lin", ignore_prefixes=("scaling_layer.",))
        self.requires_grad_(False)
        self.eval()

    @property
    def is_calibrated(self) -> bool:
        return self.backbone_loaded and self.lin_loaded

    @property
    def label(self) -> str:
        if self.is_calibrated:
            return f"LPIPS-{self.net_name}"
        if not self.backbone_loaded:
            return f"LPIPS-{self.net_name}(random weights)"
        return f"LPIPS-{self.net_name}(uncalibrated lin)"

    def train(self, mode: bool = True) -> "LPIPS":  # always in eval mode: it is a fixed metric
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor, per_layer: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise IQVAEError(f"LPIPS expects two (B, 3, H, W) images of equal shape; got {tuple(x.shape)} and "
                             f"{tuple(y.shape)}")
        fx = self.net((x - self.shift) / self.scale)
        fy = self.net((y - self.shift) / self.scale)
        layers = []
        for lin, a, b in zip(self.lins, fx, fy):
            d = (normalize_channels(a) - normalize_channels(b)) ** 2
            layers.append(lin(d).mean(dim=(2, 3)).flatten())
        dist = torch.stack(layers, 0).sum(0)
        same = (x == y).flatten(1).all(1)
        dist = torch.where(same, torch.zeros_like(dist), dist)
        return (dist, layers) if per_layer else dist


def build_lpips(
    backbone_weights: str | Path | None, lin_weights: str | Path | None, net: str = "vgg"
) -> LPIPS | None:
    """LPIPS from the two weight files; ``None`` when neither is given (the perceptual term is then off)."""
    if backbone_weights is None and lin_weights is None:
        return None
    if backbone_weights is None or lin_weights is None:
        missing = "backbone" if backbone_weights is None else "lin (calibration)"
        raise IQVAEError(f"LPIPS-{net} needs both weight files; the {missing} weights file was not given")
    return LPIPS(net, backbone_weights, lin_weights)
