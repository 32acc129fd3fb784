"""Read a user's condition from a file or an image, for ``iqvae sample`` and the web demo.

Accepted inputs, by modality:

* any modality: ``.safetensors`` holding one tensor (key ``cond`` or the only key) in the model's convention;
* seg: a PNG of label ids (mode L / P / I) or an RGB PNG painted in :func:`label_palette` colours;
* edge: a grey or RGB image; pixels brighter than 127 are edges;
* text: a ``.txt`` file (the caption) or a string;
* audio: a ``.wav`` file (16-bit PCM mono), turned into the Sub-URMP log-mel (the datasets that read ``.wav``).

Images of another size are resized to the model's resolution (nearest neighbour, so labels stay labels).  The
reading itself is each modality's (:mod:`iqvae.modalities`); these are the entry points the apps call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .modalities import ConditionSpec, get_modality


def condition_from_image(img: Image.Image, spec: ConditionSpec, resolution: int, source: str = "image") -> torch.Tensor:
    return get_modality(spec.modality).from_image(img, spec, resolution, source)


def condition_from_text(text: str, spec: ConditionSpec) -> torch.Tensor:
    return get_modality(spec.modality).from_text(text, spec)


def _wav_features(path: Path) -> torch.Tensor:
    """Log-mel of a ``.wav`` with the Sub-URMP / generic-pairs audio parameters (the datasets that read .wav)."""
    from .data.datasets.suburmp import audio_features

    return audio_features(path)[0]


def load_condition(path: str | Path, spec: ConditionSpec, resolution: int, data_config: Any = None) -> torch.Tensor:
    """A condition from a file, read by the model's modality (:meth:`iqvae.modalities.Modality.read_file`)."""
    return get_modality(spec.modality).read_file(path, spec, resolution, wav_features=_wav_features)
