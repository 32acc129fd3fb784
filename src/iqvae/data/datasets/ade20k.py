"""ADE20K (SceneParsing / ADEChallengeData2016) as on disk; dataset name ``"ade20k"``.

Layout (``root`` may be the ``ADEChallengeData2016`` folder itself or the folder that contains it)::

    ADEChallengeData2016/images/{training,validation}/ADE_*.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_*.png   # uint8 ids 0..150, 0 = "other"

Conditions: ``seg`` (151 classes, 0 = other / unlabeled, 1..150 the official classes, ids kept as stored) and
``edge`` (boundaries between different ids of the resized label map).

Splits: ``test`` = the official validation set (2,000 images); ``val`` = a ~5 % hash carve-out of training
(see :mod:`._io`), ``train`` = the rest of training.  Resize: short side to ``resolution``, centre crop (image
bicubic, labels NEAREST).  An image without annotation, an annotation without image, or an id > 150 is an error
naming the file.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import register_dataset
from ...modalities import ConditionSpec
from ._base import FolderDataset, Item, LoadResult, builder
from ._io import FileError, image_tensor, list_files, read_label_map, read_rgb, require_dir, \
    resize_crop_image, resize_crop_labels

NUM_CLASSES = 151  # 0 = other + 150 classes


def seg_edge(labels: np.ndarray) -> torch.Tensor:
    """float32 (1, H, W) boundaries of an int64 label map (uses the shared ``seg_boundaries``)."""
    from ..conditions import seg_boundaries

    return seg_boundaries(torch.from_numpy(labels))


class ADE20K(FolderDataset):
    name = "ade20k"
    supported = ("seg", "edge")
    default_cond = "seg"
    layout_help = "ADEChallengeData2016/{images,annotations}/{training,validation}/ADE_*.{jpg,png}"
    subroot = "ADEChallengeData2016"

    def _index(self) -> dict[str, list[Item]]:
        base = self.base
        pools: dict[str, list[Item]] = {}
        for official in ("training", "validation"):
            img_dir = require_dir(base / "images" / official, f"ADE20K {official} images (ADE_*.jpg)")
            ann_dir = require_dir(base / "annotations" / official, f"ADE20K {official} label maps (ADE_*.png)")
            images = {p.stem: p for p in list_files(img_dir, (".jpg", ".jpeg", ".png"))}
            labels = {p.stem: p for p in list_files(ann_dir, (".png",))}
            both = self._paired(
                images, labels,
                lambda k: (images[k], f"image {images[k]} has no label map {ann_dir / (k + '.png')}"),
                lambda k: (labels[k], f"label map {labels[k]} has no image {img_dir / (k + '.jpg')}"))
            pools[official] = [Item(stem, {"image": images[stem], "seg": labels[stem]}) for stem in both]
        return self._official_splits(pools["training"], pools["validation"])

    def _load(self, item: Item) -> LoadResult:
        im = read_rgb(item.paths["image"])
        labels = read_label_map(item.paths["seg"])
        if labels.max(initial=0) >= NUM_CLASSES:
            raise FileError(item.paths["seg"], f"label map {item.paths['seg']} has id {labels.max()}: expected "
                            f"ids 0..{NUM_CLASSES - 1}")
        seg = resize_crop_labels(labels, self.resolution)
        cond = {"seg": torch.from_numpy(seg)} if self.cond == "seg" else {"edge": seg_edge(seg)}
        return image_tensor(resize_crop_image(im, self.resolution)), cond, {}, {"image": str(item.paths["image"])}

    def _spec(self, modality: str) -> ConditionSpec:
        return ConditionSpec("seg", NUM_CLASSES) if modality == "seg" else ConditionSpec("edge", 1)


register_dataset("ade20k")(builder(ADE20K))
