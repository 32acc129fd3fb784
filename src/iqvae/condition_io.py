"""Read a user's condition from a file or an image, for ``iqvae sample`` and the web demo.

Accepted inputs, by modality:

* any modality: ``.safetensors`` holding one tensor (key ``cond`` or the only key) in the model's convention;
* seg: a PNG of label ids (mode L / P / I) or an RGB PNG painted in :func:`label_palette` colours;
* edge: a grey or RGB image; pixels brighter than 127 are edges;
* text: a ``.txt`` file (the caption) or a string;
* audio: a ``.wav`` file (16-bit PCM mono) when the model's dataset defines its audio parameters.

Images of another size are resized to the model's resolution (nearest neighbour, so labels stay labels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .data.record import ConditionSpec
from .errors import DataError

MAX_UPLOAD_PIXELS = 4096 * 4096


def label_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours for label maps: black background, then well-separated hues."""
    import colorsys

    cols = [(0, 0, 0)]
    for i in range(1, num_classes):
        h = (i * 0.618033988749895) % 1.0
        s = 0.65 + 0.35 * ((i // 7) % 2)
        v = 0.95 - 0.3 * ((i // 14) % 2)
        r, g, b = colorsys.hsv_to_rgb(h, s, v)
        cols.append((int(r * 255), int(g * 255), int(b * 255)))
    return np.array(cols, dtype=np.uint8)


def colorize_labels(seg: torch.Tensor | np.ndarray, num_classes: int) -> Image.Image:
    arr = np.asarray(seg)
    return Image.fromarray(label_palette(max(num_classes, int(arr.max()) + 1))[arr])


def _resize(img: Image.Image, resolution: int) -> Image.Image:
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.NEAREST)
    return img


def condition_from_image(img: Image.Image, spec: ConditionSpec, resolution: int, source: str = "image") -> torch.Tensor:
    if img.width * img.height > MAX_UPLOAD_PIXELS:
        raise DataError(f"{source}: {img.width}x{img.height} pixels is larger than the limit of {MAX_UPLOAD_PIXELS}")
    m = spec.modality
    if m == "seg":
        if img.mode in ("L", "P", "I", "I;16"):
            arr = np.asarray(_resize(img, resolution)).astype(np.int64)
        elif img.mode in ("RGB", "RGBA"):
            rgb = np.asarray(_resize(img.convert("RGB"), resolution)).astype(np.int64)
            pal = label_palette(spec.channels).astype(np.int64)
            d = ((rgb[:, :, None, :] - pal[None, None]) ** 2).sum(-1)
            arr = d.argmin(-1)
            far = d.min(-1) > 3 * 40 ** 2
            if far.mean() > 0.05:
                raise DataError(f"{source}: {far.mean():.0%} of the pixels are not painted in the label palette "
                                f"(see iqvae.condition_io.label_palette); use a PNG of label ids instead")
        else:
            raise DataError(f"{source}: a segmentation must be an RGB or a label-id (L/P/I) image, got mode {img.mode}")
        t = torch.from_numpy(arr).long()
        if int(t.max()) >= spec.channels:
            raise DataError(f"{source}: label {int(t.max())} is out of range; this model knows {spec.channels} classes")
        return t
    if m == "edge":
        if img.mode not in ("L", "RGB", "RGBA", "P", "1"):
            raise DataError(f"{source}: an edge map must be a grey or RGB image, got mode {img.mode}")
        arr = np.asarray(_resize(img.convert("L"), resolution))
        return torch.from_numpy((arr > 127).astype(np.float32))[None]
    raise DataError(f"{source}: a {m} condition cannot be given as an image; use a .safetensors tensor"
                    + (" or a .txt caption" if m == "text" else ""))


def condition_from_text(text: str, spec: ConditionSpec) -> torch.Tensor:
    from .data.conditions import TextVocab

    if spec.modality != "text":
        raise DataError(f"this model is conditioned on '{spec.modality}', not on text")
    if not text.strip():
        raise DataError("the caption is empty")
    vocab = TextVocab([w for w in (spec.vocab or ())[2:]])
    return vocab.encode(text, spec.length)


def load_condition(path: str | Path, spec: ConditionSpec, resolution: int, data_config: Any = None) -> torch.Tensor:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"condition file '{path}' does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        t = load_file(str(path))
        if "cond" in t:
            x = t["cond"]
        elif len(t) == 1:
            x = next(iter(t.values()))
        else:
            raise DataError(f"'{path}' holds several tensors ({', '.join(t)}); name the condition 'cond'")
        spec.check(x, resolution, f"condition in '{path}'")
        return x
    if suffix == ".txt":
        return condition_from_text(path.read_text(), spec)
    if suffix == ".wav":
        from .data.shapes import audio_condition_from_wav

        if spec.modality != "audio":
            raise DataError(f"'{path}': this model is conditioned on '{spec.modality}', not on audio")
        return audio_condition_from_wav(path, spec)
    try:
        img = Image.open(path)
        img.load()
    except Exception as e:
        raise DataError(f"cannot read condition image '{path}': {e}") from None
    return condition_from_image(img, spec, resolution, f"'{path}'")
