"""CelebAMask-HQ as distributed; dataset name ``"celebamask-hq"``.

Layout (``root`` may be the ``CelebAMask-HQ`` folder or the folder that contains it)::

    CelebA-HQ-img/{id}.jpg                                   # id = 0..29999, 1024 x 1024
    CelebAMask-HQ-mask-anno/{id // 2000}/{id:05d}_{part}.png # 512 x 512 binary masks, one file per visible part

Label map (``seg``, 19 classes): 0 = background, then the 18 parts in the order of the dataset's own
``face_parsing/Data_preprocessing/g_mask.py`` (verified against the CelebAMask-HQ repository)::

    1 skin, 2 nose, 3 eye_g, 4 l_eye, 5 r_eye, 6 l_brow, 7 r_brow, 8 l_ear, 9 r_ear, 10 mouth, 11 u_lip,
    12 l_lip, 13 hair, 14 hat, 15 ear_r, 16 neck_l, 17 neck, 18 cloth

A pixel gets the id of the last part (in that order) whose mask is non-zero there, as ``g_mask.py`` does.  Absent
part files are normal (occluded / absent parts are not annotated); an image with no part file at all is a missing
pair (for ``seg``; ``edge`` does not read the masks).  ``edge`` is the paper's CelebA-HQ edge task: Canny
(100 / 200, shared ``canny_edges``) on the image after resizing to ``resolution``.

Splits: CelebAMask-HQ ships none; we use the common face-synthesis split (SEAN / SPADE follow-ups): ids
0..27999 form the training pool (``val`` = ~5 % hash carve-out, ``train`` = the rest), ids 28000..29999 are ``test``.
Resize: short side to ``resolution``, centre crop (images are square, so this is a plain resize).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..config import register_dataset
from ...modalities import ConditionSpec
from ._base import FolderDataset, Item, LoadResult, builder
from ._io import FileError, image_tensor, list_files, read_label_map, read_rgb, require_dir, \
    resize_crop_image, resize_crop_labels

PARTS: tuple[str, ...] = ("skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth",
                          "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")
NUM_CLASSES = len(PARTS) + 1
TEST_FIRST_ID = 28000
_MASK_NAME = re.compile(r"^(\d{5})_([a-z_]+)\.png$")


def merge_parts(masks: dict[str, np.ndarray]) -> np.ndarray:
    """int64 label map from {part: mask}; later parts in :data:`PARTS` overwrite earlier ones."""
    shape = next(iter(masks.values())).shape
    out = np.zeros(shape, dtype=np.int64)
    for idx, part in enumerate(PARTS, start=1):
        if part in masks:
            out[masks[part] != 0] = idx
    return out


class CelebAMaskHQ(FolderDataset):
    name = "celebamask-hq"
    supported = ("seg", "edge")
    default_cond = "seg"
    layout_help = "CelebA-HQ-img/{id}.jpg and CelebAMask-HQ-mask-anno/{id//2000}/{id:05d}_{part}.png"

    subroot = "CelebAMask-HQ"

    def _index(self) -> dict[str, list[Item]]:
        base = self.base
        img_dir = require_dir(base / "CelebA-HQ-img", "CelebA-HQ images {id}.jpg")
        images: dict[int, Path] = {}
        for p in list_files(img_dir, (".jpg", ".jpeg", ".png")):
            if not p.stem.isdigit():
                self._problem(p, f"unexpected image name {p}: expected CelebA-HQ-img/{{id}}.jpg with an integer id")
                continue
            images[int(p.stem)] = p
        if self.cond == "edge":  # edges come from the image alone: the part masks are not read
            return self._split({f"{i:05d}": Item(f"{i:05d}", {"image": p}, {"id": i}) for i, p in images.items()})
        mask_dir = require_dir(base / "CelebAMask-HQ-mask-anno", "part masks {id//2000}/{id:05d}_{part}.png")
        parts: dict[int, dict[str, Path]] = {}
        for sub in sorted(d for d in mask_dir.iterdir() if d.is_dir()):
            for p in list_files(sub, (".png",)):
                m = _MASK_NAME.match(p.name)
                if not m or m.group(2) not in PARTS:
                    self._problem(p, f"unexpected mask name {p}: expected {{id:05d}}_{{part}}.png with part one of "
                                  f"{', '.join(PARTS)}")
                    continue
                i = int(m.group(1))
                if sub.name != str(i // 2000):
                    self._problem(p, f"mask {p} is in folder {sub.name}: expected folder {i // 2000} (id // 2000)")
                    continue
                parts.setdefault(i, {})[m.group(2)] = p
        both = self._paired(
            images, parts,
            lambda i: (images[i], f"image {images[i]} has no part mask in {mask_dir / str(i // 2000)} ({i:05d}_*.png)"),
            lambda i: (next(iter(parts[i].values())),
                       f"part masks {i:05d}_*.png have no image {img_dir / f'{i}.jpg'}"))
        return self._split({f"{i:05d}": Item(f"{i:05d}", {"image": images[i], **parts[i]}, {"id": i}) for i in both})

    def _split(self, items: dict[str, Item]) -> dict[str, list[Item]]:
        """Ids below :data:`TEST_FIRST_ID` are the official training list."""
        return self._official_splits([it for it in items.values() if it.data["id"] < TEST_FIRST_ID],
                                     [it for it in items.values() if it.data["id"] >= TEST_FIRST_ID])

    def _load(self, item: Item) -> LoadResult:
        im = resize_crop_image(read_rgb(item.paths["image"]), self.resolution)
        meta = {"image": str(item.paths["image"]), "id": item.data["id"]}
        if self.cond == "edge":
            from ..conditions import canny_edges

            edge = canny_edges(np.asarray(im, dtype=np.uint8))
            return image_tensor(im), {"edge": edge}, {}, meta
        masks: dict[str, np.ndarray] = {}
        for part in PARTS:
            if part in item.paths:
                masks[part] = read_label_map(item.paths[part], first_channel=True)
        shapes = {m.shape for m in masks.values()}
        if len(shapes) > 1:
            bad = next(p for p in PARTS if p in masks and masks[p].shape != masks[next(iter(masks))].shape)
            raise FileError(item.paths[bad], f"part mask {item.paths[bad]} is {masks[bad].shape}: expected the same "
                            f"size as the other masks of id {item.key}")
        seg = resize_crop_labels(merge_parts(masks), self.resolution)
        return image_tensor(im), {"seg": torch.from_numpy(seg)}, {}, meta

    def _spec(self, modality: str) -> ConditionSpec:
        return ConditionSpec("seg", NUM_CLASSES) if modality == "seg" else ConditionSpec("edge", 1)


register_dataset("celebamask-hq")(builder(CelebAMaskHQ))
