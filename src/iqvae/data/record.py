"""The typed record every dataset yields, and the condition specs models are built from.

Tensor conventions (the contract between datasets and models; ``H, W`` = image resolution):

============  ==========  ==================  ===============================================================
modality      kind        tensor              meaning
============  ==========  ==================  ===============================================================
seg           spatial     int64   (H, W)      class id per pixel, 0 = background, < spec.channels
edge          spatial     float32 (1, H, W)   object boundaries, values in {0, 1}
keypoints     spatial     float32 (K, H, W)   one Gaussian heatmap per keypoint, values in [0, 1]
layout        spatial     float32 (C, H, W)   per-class box map: channel c is 1 inside boxes of class c
text          sequence    int64   (T,)        token ids of the caption, 0 = padding, < spec.channels
audio         sequence    float32 (M, F)      log-mel spectrogram, M mel bands, F frames
============  ==========  ==================  ===============================================================

``spec.channels`` is the number of classes (seg, layout), 1 (edge), K (keypoints), the vocabulary size (text) or the
number of mel bands (audio); ``spec.length`` is T (text) or F (audio) and ``None`` for spatial modalities.
Each modality's contract, check and everything else about it is its object in :mod:`iqvae.modalities`;
:class:`ConditionSpec` lives there too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import DataError
from ..modalities import ConditionSpec, modality_names


def check_modalities(names: list[str] | tuple[str, ...], available: tuple[str, ...] | None = None) -> list[str]:
    """Validate a list of modality names (default: the registered ones); raise a DataError naming the bad one."""
    available = modality_names() if available is None else available
    out = []
    for n in names:
        if n not in available:
            raise DataError(f"unknown condition modality '{n}'; expected one of: {', '.join(available)}")
        out.append(n)
    if not out:
        raise DataError(f"no condition modality given; expected one or more of: {', '.join(available)}")
    return out


@dataclass
class Sample:
    """One (image, conditions) pair.

    image: float32 (3, H, W) in [-1, 1].  cond: modality -> tensor (see the module docstring).
    extra: non-batched side data (caption string, waveform, keypoint coordinates, ...).
    meta: JSON-able description (dataset, split, index, objects, ...).
    """

    image: torch.Tensor
    cond: dict[str, torch.Tensor]
    extra: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Batch:
    image: torch.Tensor  # (B, 3, H, W)
    cond: dict[str, torch.Tensor]  # each (B, ...)
    extra: list[dict[str, Any]]
    meta: list[dict[str, Any]]

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.image.to(device), {k: v.to(device) for k, v in self.cond.items()}, self.extra, self.meta)


def collate(samples: list[Sample]) -> Batch:
    """Stack samples into a Batch (a DataLoader ``collate_fn``)."""
    if not samples:
        raise DataError("cannot collate an empty list of samples")
    keys = samples[0].cond.keys()
    return Batch(
        torch.stack([s.image for s in samples]),
        {k: torch.stack([s.cond[k] for s in samples]) for k in keys},
        [s.extra for s in samples],
        [s.meta for s in samples],
    )


class PairDataset(torch.utils.data.Dataset):
    """Base class of every dataset: a map-style dataset of :class:`Sample` with condition specs.

    Subclasses set ``name``, ``split``, ``resolution`` and ``modalities`` and implement ``__len__``,
    ``__getitem__`` and ``condition_spec``.
    """

    name: str = "dataset"
    split: str = "train"
    resolution: int = 32
    modalities: tuple[str, ...] = ()

    def condition_spec(self, modality: str) -> ConditionSpec:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError
