"""Generic image / condition pairs from one folder; dataset name ``"pairs"``.

Layout::

    images/NAME.{jpg,jpeg,png,bmp,webp}
    conditions/NAME.<ext>          # the same NAME; the file type depends on the modality (data.cond / --cond)
    classes.txt                    # optional (seg): one class name per line, line i = class id i

================  ==============  ==================================================================================
modality          condition file  read as
================  ==============  ==================================================================================
seg               .png            single-channel class ids; classes = lines of ``classes.txt``, else the largest
                                  id in any condition file + 1 (every file is read once to find it)
edge              .png / .jpg     grey levels >= 128 are edges; resized by area, a pixel is an edge if any edge
                                  pixel falls in it
keypoints         .npy            float (K, h, w) heatmaps in [0, 1] (numpy, ``allow_pickle=False``), bilinear
layout            .npy            float (C, h, w) box maps in {0, 1}, NEAREST
text              .txt            the first non-empty line is the caption; vocabulary from the train captions,
                                  :data:`~.cub.CAPTION_LENGTH` tokens
audio             .wav            16-bit PCM, the Sub-URMP features (:func:`~.suburmp.audio_features`)
================  ==============  ==================================================================================

Spatial conditions get the image's transform: short side to ``resolution``, centre crop.  K / C (keypoints, layout)
must be the same in every file.

Splits: none on disk, so ``test`` (~5 %) and then ``val`` (~5 %) are carved by a hash of NAME
(:func:`._io.split_three_way`) and the rest is ``train``; adding files never moves existing ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...errors import DataError
from ..config import register_dataset
from ...modalities import ConditionSpec
from ._base import FolderDataset, Item, LoadResult, builder
from ._io import IMAGE_EXTS, FileError, image_tensor, list_files, open_image, read_label_map, read_rgb, read_text, \
    require_dir, resize_crop, resize_crop_image, resize_crop_labels, split_three_way
from .cub import CAPTION_LENGTH
from .suburmp import FRAMES, N_MELS, audio_features

COND_EXTS: dict[str, tuple[str, ...]] = {
    "seg": (".png",),
    "edge": (".png", ".jpg", ".jpeg", ".bmp"),
    "keypoints": (".npy",),
    "layout": (".npy",),
    "text": (".txt",),
    "audio": (".wav",),
}


def read_npy(path: Path) -> np.ndarray:
    """A float (C, h, w) array from a .npy file (no pickles)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:
        raise FileError(path, f"unreadable array {path}: {type(e).__name__}: {e} (expected a .npy of shape "
                        "(C, h, w))") from None
    if arr.ndim != 3 or not np.issubdtype(arr.dtype, np.number):
        raise FileError(path, f"array {path} is {arr.dtype} {arr.shape}: expected a numeric (C, h, w) array")
    return arr.astype(np.float32)


def resize_crop_planes(arr: np.ndarray, res: int, resample: int) -> torch.Tensor:
    """Resize-and-crop each channel of a float (C, h, w) array -> float32 (C, res, res)."""
    planes = [np.asarray(resize_crop(Image.fromarray(p, mode="F"), res, resample)) for p in arr]
    return torch.from_numpy(np.stack(planes).astype(np.float32))


class Pairs(FolderDataset):
    name = "pairs"
    supported = ("seg", "edge", "keypoints", "layout", "text", "audio")
    default_cond = "seg"
    layout_help = "images/NAME.<ext> and conditions/NAME.<ext> pairs"

    def _index(self) -> dict[str, list[Item]]:
        img_dir = require_dir(self.root / "images", "images/NAME.jpg|png")
        cond_dir = require_dir(self.root / "conditions", f"conditions/NAME{'|'.join(COND_EXTS[self.cond])}")
        found: dict[str, dict[str, Path]] = {"image": {}, "cond": {}}
        for kind, folder, exts in (("image", img_dir, IMAGE_EXTS), ("cond", cond_dir, COND_EXTS[self.cond])):
            for p in list_files(folder, exts):
                if p.stem in found[kind]:
                    self._problem(p, f"ambiguous pair: {p} and {found[kind][p.stem]} share the name {p.stem}")
                    continue
                found[kind][p.stem] = p
        images, conds = found["image"], found["cond"]
        exts = ",".join(COND_EXTS[self.cond])
        both = self._paired(images, conds,
                            lambda k: (images[k], f"image {images[k]} has no condition {cond_dir / k}{{{exts}}}"),
                            lambda k: (conds[k], f"condition {conds[k]} has no image {img_dir / k}.<jpg|png>"))
        items = {k: Item(k, {"image": images[k], "cond": conds[k]}) for k in both}
        splits = {s: [items[k] for k in split_three_way(items, s, self.val_fraction)] for s in ("train", "val", "test")}
        self._scan_channels(list(items.values()), splits["train"])
        return splits

    def _scan_channels(self, items: list[Item], train: list[Item]) -> None:
        """Fix the spec: class count (seg), channel count (keypoints / layout) or vocabulary (text)."""
        self.channels, self.vocab = 1, None
        if self.cond == "seg":
            classes = self.root / "classes.txt"
            if classes.is_file():
                self.channels = len([n for n in read_text(classes).splitlines() if n.strip()])
                return
            for it in items:
                try:
                    self.channels = max(self.channels, int(read_label_map(it.paths["cond"]).max(initial=0)) + 1)
                except FileError as e:
                    self._problem(e.path, str(e))
        elif self.cond in ("keypoints", "layout") and items:
            counts: dict[int, Path] = {}
            for it in items:
                try:
                    with open(it.paths["cond"], "rb") as f:
                        version = np.lib.format.read_magic(f)  # read the header only, not the data
                        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0)
                        shape = read_header(f)[0]
                except Exception as e:
                    self._problem(it.paths["cond"], f"unreadable array {it.paths['cond']}: {e}")
                    continue
                counts.setdefault(shape[0] if len(shape) == 3 else -1, it.paths["cond"])
            if len(counts) > 1 or -1 in counts:
                bad = counts.get(-1) or sorted(counts.values())[-1]
                raise FileError(bad, f"condition arrays under {self.root / 'conditions'} have different channel "
                                f"counts or shapes ({sorted(counts)}); expected the same (C, h, w) C everywhere "
                                f"(e.g. {bad})")
            self.channels = next(iter(counts), 1)
        elif self.cond == "text":
            from ...modalities.text import TextVocab

            captions = []
            for it in train:
                try:
                    captions.append(self._caption(it.paths["cond"]))
                except FileError as e:
                    self._problem(e.path, str(e))
            self.vocab = TextVocab.build(captions)
        elif self.cond == "audio":
            self.channels = N_MELS

    @staticmethod
    def _caption(path: Path) -> str:
        lines = [ln.strip() for ln in read_text(path).splitlines() if ln.strip()]
        if not lines:
            raise FileError(path, f"caption file {path} is empty: expected a caption on its first line")
        return lines[0]

    def _load(self, item: Item) -> LoadResult:
        res, path = self.resolution, item.paths["cond"]
        image = image_tensor(resize_crop_image(read_rgb(item.paths["image"]), res))
        meta = {"image": str(item.paths["image"]), "condition": str(path)}
        extra: dict = {}
        if self.cond == "seg":
            labels = read_label_map(path)
            if labels.max(initial=0) >= self.channels:
                raise FileError(path, f"label map {path} has id {labels.max()}: expected ids 0..{self.channels - 1} "
                                f"({self.root / 'classes.txt'} lists {self.channels} classes)")
            cond = torch.from_numpy(resize_crop_labels(labels, res))
        elif self.cond == "edge":
            grey = np.asarray(open_image(path).convert("L")) >= 128
            small = resize_crop(Image.fromarray(grey.astype(np.float32), mode="F"), res, Image.BOX)
            cond = torch.from_numpy((np.asarray(small) > 0).astype(np.float32))[None]
        elif self.cond in ("keypoints", "layout"):
            arr = read_npy(path)
            if arr.shape[0] != self.channels:
                raise FileError(path, f"array {path} has {arr.shape[0]} channels: expected {self.channels}")
            cond = resize_crop_planes(arr, res, Image.BILINEAR if self.cond == "keypoints" else Image.NEAREST)
        elif self.cond == "text":
            caption = self._caption(path)
            cond, extra = self.vocab.encode(caption, CAPTION_LENGTH), {"caption": caption}
        else:
            cond, wav = audio_features(path)
            extra = {"waveform": wav}
        return image, {self.cond: cond}, extra, meta

    def _spec(self, modality: str) -> ConditionSpec:
        if modality != self.cond:
            raise DataError(f"this '{self.name}' dataset was read for condition '{self.cond}', not '{modality}'")
        if modality == "text":
            return ConditionSpec("text", len(self.vocab), CAPTION_LENGTH, self.vocab.words)
        if modality == "audio":
            return ConditionSpec("audio", N_MELS, FRAMES)
        return ConditionSpec(modality, self.channels)


register_dataset("pairs")(builder(Pairs))
