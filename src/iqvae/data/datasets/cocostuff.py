"""COCO-Stuff 2017 as distributed; dataset name ``"coco-stuff"``.

Layout::

    images/{train2017,val2017}/*.jpg
    annotations/{train2017,val2017}/*.png            # stuffthingmaps: uint8 0..181, 255 = unlabeled   (seg, edge)
    annotations/{instances,stuff}_{train2017,val2017}.json                                            (layout)

Class ids: COCO-Stuff's PNG value ``v`` is COCO category id ``v + 1``, so we store the category id itself:
``seg`` id = ``v + 1`` (1..182) and 255 (unlabeled) -> 0, giving 183 classes with 0 = unlabeled.  ``layout`` uses the
same ids as channels (183 channels; channel ``c`` = category id ``c``, channel 0 is never set).

Layout condition (LostGAN / sg2im protocol): boxes of the instances and stuff JSON, without the catch-all stuff
class 183 ``other``, without boxes smaller than 2 % of the image area; only images with 3..8 such objects are
kept.  Boxes are mapped with the image transform and clipped; ``extra["boxes"]`` lists the mapped
``(category_id, x0, y0, x1, y1)`` and ``meta["objects"]`` their category names.

Splits: ``test`` = val2017; ``val`` = a ~5 % hash carve-out of train2017; ``train`` = the rest.  Resize: short side to
``resolution``, centre crop (image bicubic, label map NEAREST).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import register_dataset
from ...modalities import ConditionSpec
from ._base import FolderDataset, Item, LoadResult, builder
from ._io import FileError, image_tensor, list_files, read_label_map, read_rgb, require_dir, require_file, \
    resize_crop_box, resize_crop_image, resize_crop_labels
from .ade20k import seg_edge

NUM_CLASSES = 183  # 0 = unlabeled, 1..182 = COCO category ids
UNLABELED = 255
OTHER_CATEGORY = 183
MIN_OBJECTS, MAX_OBJECTS = 3, 8
MIN_OBJECT_AREA = 0.02  # fraction of the image area

OFFICIAL = {"train": "train2017", "test": "val2017"}


def stuff_png_to_ids(values: np.ndarray, path: Path) -> np.ndarray:
    """PNG values (0..181, 255) -> class ids (1..182, 0)."""
    bad = (values > 181) & (values != UNLABELED)
    if bad.any():
        raise FileError(path, f"label map {path} has value {int(values[bad][0])}: expected 0..181 or 255 (unlabeled)")
    return np.where(values == UNLABELED, 0, values + 1).astype(np.int64)


def read_json(path: Path) -> Any:
    require_file(path, "a COCO annotation JSON")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FileError(path, f"unreadable JSON {path}: {e}") from None


def layout_objects(instances: dict, stuff: dict, path: Path) -> tuple[dict[int, dict], dict[int, list], dict[int, str]]:
    """(images by id, kept objects by image id, category names) of one split's JSON files."""
    try:
        images = {int(im["id"]): im for d in (instances, stuff) for im in d["images"]}
        names = {int(c["id"]): str(c["name"]) for d in (instances, stuff) for c in d["categories"]}
        objects: dict[int, list] = {}
        for d in (instances, stuff):
            for a in d["annotations"]:
                cat, iid = int(a["category_id"]), int(a["image_id"])
                x, y, w, h = (float(v) for v in a["bbox"])
                im = images[iid]
                if cat == OTHER_CATEGORY or w * h < MIN_OBJECT_AREA * float(im["width"]) * float(im["height"]):
                    continue
                objects.setdefault(iid, []).append((cat, x, y, x + w, y + h))
    except (KeyError, TypeError, ValueError) as e:
        raise FileError(path, f"malformed COCO JSON {path} ({type(e).__name__}: {e}): expected images, annotations "
                        "(image_id, category_id, bbox) and categories") from None
    return images, objects, names


class CocoStuff(FolderDataset):
    name = "coco-stuff"
    supported = ("seg", "layout", "edge")
    default_cond = "seg"
    layout_help = ("images/{train2017,val2017}/*.jpg with annotations/{train2017,val2017}/*.png (seg) or "
                   "annotations/{instances,stuff}_{train2017,val2017}.json (layout)")

    def _index(self) -> dict[str, list[Item]]:
        self.category_names: dict[int, str] = {}
        pools = {s: (self._index_layout(o) if self.cond == "layout" else self._index_seg(o))
                 for s, o in OFFICIAL.items()}
        return self._official_splits(pools["train"], pools["test"])

    def _index_seg(self, official: str) -> list[Item]:
        img_dir = require_dir(self.root / "images" / official, f"COCO {official} images")
        ann_dir = require_dir(self.root / "annotations" / official, f"COCO-Stuff {official} label maps (*.png)")
        images = {p.stem: p for p in list_files(img_dir, (".jpg", ".jpeg", ".png"))}
        labels = {p.stem: p for p in list_files(ann_dir, (".png",))}
        both = self._paired(images, labels,
                            lambda k: (images[k], f"image {images[k]} has no label map {ann_dir / (k + '.png')}"),
                            lambda k: (labels[k], f"label map {labels[k]} has no image in {img_dir}"))
        return [Item(s, {"image": images[s], "seg": labels[s]}) for s in both]

    def _index_layout(self, official: str) -> list[Item]:
        img_dir = require_dir(self.root / "images" / official, f"COCO {official} images")
        inst_path = self.root / "annotations" / f"instances_{official}.json"
        stuff_path = self.root / "annotations" / f"stuff_{official}.json"
        images, objects, names = layout_objects(read_json(inst_path), read_json(stuff_path), inst_path)
        self.category_names.update(names)
        items = []
        for iid in sorted(objects):
            objs = objects[iid]
            if not MIN_OBJECTS <= len(objs) <= MAX_OBJECTS:
                continue
            path = img_dir / str(images[iid]["file_name"])
            if not path.is_file():
                self._problem(path, f"missing pair: {inst_path.name} lists image {path}, which does not exist",
                              "missing")
                continue
            items.append(Item(path.stem, {"image": path}, {"id": iid, "boxes": objs}))
        return sorted(items, key=lambda it: it.key)

    def _load(self, item: Item) -> LoadResult:
        raw = read_rgb(item.paths["image"])
        res = self.resolution
        image = image_tensor(resize_crop_image(raw, res))
        meta: dict[str, Any] = {"image": str(item.paths["image"])}
        if self.cond == "layout":
            from ..conditions import boxes_to_layout

            scale, _, _, left, top = resize_crop_box(raw.width, raw.height, res)
            boxes = []
            for cat, x0, y0, x1, y1 in item.data["boxes"]:
                bx = [min(max(v * scale - o, 0.0), float(res)) for v, o in ((x0, left), (y0, top), (x1, left),
                                                                             (y1, top))]
                if bx[2] > bx[0] and bx[3] > bx[1]:
                    boxes.append((cat, *bx))
            layout = boxes_to_layout(boxes, NUM_CLASSES, res)
            meta["objects"] = [self.category_names.get(b[0], str(b[0])) for b in boxes]
            return image, {"layout": layout}, {"boxes": boxes}, meta
        seg = resize_crop_labels(stuff_png_to_ids(read_label_map(item.paths["seg"]), item.paths["seg"]), res)
        cond = {"seg": torch.from_numpy(seg)} if self.cond == "seg" else {"edge": seg_edge(seg)}
        return image, cond, {}, meta

    def _spec(self, modality: str) -> ConditionSpec:
        return ConditionSpec(modality, 1 if modality == "edge" else NUM_CLASSES)


register_dataset("coco-stuff")(builder(CocoStuff))
