"""Sub-URMP (image / 0.5 s audio pairs from URMP performances); dataset name ``"sub-urmp"``.

Layout::

    img/{train,validation}/<instrument>/<name>.jpg
    chunk/{train,validation}/<instrument>/<name>.wav      # 16-bit PCM, 0.5 s

An image and a chunk are a pair when they have the same split, instrument folder and file stem.

Condition: ``audio`` -> log-mel (shared ``log_mel``).  The wav is read with the stdlib ``wave`` module (16-bit PCM
only; stereo averaged to mono), resampled to :data:`SAMPLE_RATE` by linear interpolation, zero-padded / truncated
to exactly :data:`CHUNK_SECONDS`, then turned into :data:`N_MELS` mel bands x :data:`FRAMES` frames
(``n_fft`` = :data:`N_FFT`, hop = :data:`HOP`).  ``extra`` holds the ``waveform`` (float32, :data:`SAMPLE_RATE`) and
the ``instrument``; ``meta["instrument"]`` too.

Splits: ``test`` = the official validation folders; ``val`` = a ~5 % hash carve-out of train (hash of
``<instrument>/<name>``); ``train`` = the rest.  Resize: short side to ``resolution``, centre crop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import register_dataset
from ...modalities import ConditionSpec
from ._base import FolderDataset, Item, LoadResult, builder
from ._io import fix_length, image_tensor, list_files, read_rgb, read_wav, require_dir, resample_linear, \
    resize_crop_image

SAMPLE_RATE = 16000
CHUNK_SECONDS = 0.5
N_MELS = 64
N_FFT = 512
HOP = 125
FRAMES = 64  # 8000 samples / hop 125 + 1 = 65 STFT frames; the last is dropped


def audio_features(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-mel float32 (N_MELS, FRAMES), waveform float32 (SAMPLE_RATE * CHUNK_SECONDS,)) of one wav file."""
    from ..conditions import log_mel

    wav, rate = read_wav(path)
    wav = fix_length(resample_linear(wav, rate, SAMPLE_RATE), int(SAMPLE_RATE * CHUNK_SECONDS))
    wave_t = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
    return log_mel(wave_t, SAMPLE_RATE, N_MELS, N_FFT, HOP, FRAMES), wave_t


class SubURMP(FolderDataset):
    name = "sub-urmp"
    supported = ("audio",)
    default_cond = "audio"
    layout_help = "img/{train,validation}/<instrument>/*.jpg with chunk/{train,validation}/<instrument>/*.wav"

    def _pool(self, official: str) -> list[Item]:
        img_root = require_dir(self.root / "img" / official, f"Sub-URMP {official} images img/{official}/<instrument>")
        wav_root = require_dir(self.root / "chunk" / official,
                               f"Sub-URMP {official} audio chunks chunk/{official}/<instrument>")
        images: dict[str, Path] = {}
        chunks: dict[str, Path] = {}
        for found, root, exts in ((images, img_root, (".jpg", ".jpeg", ".png")), (chunks, wav_root, (".wav",))):
            for inst in sorted(d for d in root.iterdir() if d.is_dir()):
                found.update({f"{inst.name}/{p.stem}": p for p in list_files(inst, exts)})
        both = self._paired(images, chunks,
                            lambda k: (images[k], f"image {images[k]} has no audio chunk {wav_root / (k + '.wav')}"),
                            lambda k: (chunks[k], f"audio chunk {chunks[k]} has no image {img_root / (k + '.jpg')}"))
        return [Item(k, {"image": images[k], "audio": chunks[k]}, {"instrument": k.split("/")[0]}) for k in both]

    def _index(self) -> dict[str, list[Item]]:
        return self._official_splits(self._pool("train"), self._pool("validation"))

    def _load(self, item: Item) -> LoadResult:
        image = image_tensor(resize_crop_image(read_rgb(item.paths["image"]), self.resolution))
        mel, wav = audio_features(item.paths["audio"])
        inst = item.data["instrument"]
        return image, {"audio": mel}, {"waveform": wav, "instrument": inst}, \
            {"image": str(item.paths["image"]), "audio": str(item.paths["audio"]), "instrument": inst}

    def _spec(self, modality: str) -> ConditionSpec:
        return ConditionSpec("audio", N_MELS, FRAMES)


register_dataset("sub-urmp")(builder(SubURMP))
