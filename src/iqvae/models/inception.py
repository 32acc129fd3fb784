"""The FID InceptionV3 (TensorFlow 2015-12-05 graph as ported by pytorch-fid), written without torchvision.

Key-compatible with ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's ``FID_WEIGHTS_URL``): module names follow
torchvision's ``Inception3`` without ``AuxLogits`` and with a 1008-way ``fc``; every conv is a ``BasicConv2d``
(``conv`` without bias + ``bn`` with eps 1e-3 + ReLU).  ``expected_keys()`` lists the 472 tensors of that file.

Differences from torchvision's InceptionV3 that the FID graph needs (pytorch-fid's FIDInception* blocks):

* the pooling branch of every InceptionA (Mixed_5b/c/d), InceptionC (Mixed_6b..e) and the first InceptionE
  (Mixed_7b) is a 3x3/stride 1 average pool with ``count_include_pad=False`` (TensorFlow's SAME average pool);
* the pooling branch of the last InceptionE (Mixed_7c) is a 3x3/stride 1 *max* pool;
* no input transform; inputs in ``[-1, 1]`` are resized bilinearly (``align_corners=False``) to 299x299.

Output: the 2048-d global average pool of Mixed_7c (the FID feature), and optionally the 1008 logits of ``fc``.
``is_standard_fid`` is True only when the weights file's SHA-256 starts with ``6726825d`` (the published file), so
that a report calls a number "FID" only when it was computed with exactly those weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import IQVAEError
from .weights import load_state_checked, read_weights_file

FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
NUM_CLASSES = 1008


class BasicConv2d(nn.Module):
    def __init__(self, c_in: int, c_out: int, **kw) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, bias=False, **kw)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _pool_branch(x: Tensor, kind: str) -> Tensor:
    if kind == "max":
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    pool_kind = "avg"

    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_pool_branch(x, self.pool_kind))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    pool_kind = "avg"

    def __init__(self, c_in: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(_pool_branch(x, self.pool_kind))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, c_in: int, pool_kind: str) -> None:
        super().__init__()
        self.pool_kind = pool_kind
        self.branch1x1 = BasicConv2d(c_in, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        t = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(t), self.branch3x3_2b(t)], 1)
        t = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(t), self.branch3x3dbl_3b(t)], 1)
        bp = self.branch_pool(_pool_branch(x, self.pool_kind))
        return torch.cat([b1, b3, bd, bp], 1)


class FIDInceptionV3(nn.Module):
    """Feature extractor for FID: ``forward(x in [-1, 1]) -> (B, 2048)``; frozen, eval mode."""

    num_features = 2048

    def __init__(self, resize_to: int | None = 299) -> None:
        super().__init__()
        self.resize_to = resize_to
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool_kind="avg")
        self.Mixed_7c = InceptionE(2048, pool_kind="max")
        self.fc = nn.Linear(2048, NUM_CLASSES)
        self.weights_file: str | None = None
        self.weights_sha256: str | None = None
        self.requires_grad_(False)
        self.eval()

    @property
    def is_standard_fid(self) -> bool:
        return self.weights_sha256 is not None and self.weights_sha256.startswith(FID_WEIGHTS_SHA256_PREFIX)

    @property
    def name(self) -> str:
        if self.weights_sha256 is None:
            return "inception(random weights)"
        if self.is_standard_fid:
            return "inception"
        return f"inception[{self.weights_sha256[:8]}]"

    def train(self, mode: bool = True) -> "FIDInceptionV3":  # BN statistics are part of the metric: never train
        return super().train(False)

    def features(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise IQVAEError(f"Inception expects (B, 3, H, W) images in [-1, 1]; got {tuple(x.shape)}")
        x = x.float()
        if self.resize_to is not None and tuple(x.shape[-2:]) != (self.resize_to, self.resize_to):
            x = F.interpolate(x, size=(self.resize_to, self.resize_to), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor, return_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        pool = self.features(x)
        if return_logits:
            return pool, self.fc(pool)
        return pool


def expected_keys() -> list[str]:
    """The state-dict keys a weights file must hold (BatchNorm ``num_batches_tracked`` counters are optional)."""
    with torch.device("meta"):
        model = FIDInceptionV3()
    return [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_fid_inception(path: str | Path, resize_to: int | None = 299) -> FIDInceptionV3:
    """Build the FID Inception and load ``path`` (the pytorch-fid file, or any file with the same keys/shapes)."""
    state = read_weights_file(path, "FID Inception")
    with torch.device("meta"):
        model = FIDInceptionV3(resize_to=resize_to)
    model = model.to_empty(device="cpu")
    load_state_checked(model, state, path, "FID Inception")
    model.weights_file = str(path)
    model.weights_sha256 = _sha256(Path(path))
    model.requires_grad_(False)
    return model.eval()
