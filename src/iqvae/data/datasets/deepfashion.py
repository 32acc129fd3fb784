"""DeepFashion In-shop, pose-transfer layout (Zhu et al. 2019 / PATN); dataset name ``"deepfashion"``.

Layout (``root`` may be the ``fashion`` folder or the folder that contains it; the CSVs are looked up in both)::

    fashion/{train,test}/*.jpg                      # 176 x 256 person images
    fashion-resize-annotation-{train,test}.csv      # name:keypoints_y:keypoints_x, ':'-separated, header line

Each CSV row holds two JSON-style lists of 18 OpenPose (COCO-18) coordinates in image pixels, ``-1`` = missing.

Condition: ``keypoints`` -> 18 Gaussian heatmaps (shared ``gaussian_heatmaps``; sigma = 6 px at 256 px, scaled with
the resolution, at least 1 px).  The CSV gives integer pixel indices; they become continuous coordinates (+0.5, the
convention of :mod:`iqvae.data.conditions`) and are mapped with the image transform; a point that falls outside the
output is treated as missing.  ``extra["keypoints"]`` holds the mapped (18, 2) xy coordinates (-1 = missing).

Resize (exception to the short-side crop policy): the images are portrait (176 x 256) and a centre crop would cut
off heads and feet, so the long side is resized to ``resolution`` and the image padded left / right with white (the
studio background) — a letterbox.

Splits: ``test`` = the official test folder; ``val`` = a ~5 % hash carve-out of train; ``train`` = the rest.  An
image without a CSV row, a CSV row without an image, or a malformed row (line number given) is an error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..config import register_dataset
from ...modalities import ConditionSpec
from ._base import FolderDataset, Item, LoadResult, builder
from ._io import image_tensor, letterbox, letterbox_box, list_files, read_rgb, read_text, \
    require_dir, require_file

NUM_KEYPOINTS = 18
BASE_SIGMA = 6.0  # pixels at 256 px


def keypoint_sigma(resolution: int) -> float:
    return max(1.0, BASE_SIGMA * resolution / 256)


class DeepFashion(FolderDataset):
    name = "deepfashion"
    supported = ("keypoints",)
    default_cond = "keypoints"
    layout_help = "fashion/{train,test}/*.jpg and fashion-resize-annotation-{train,test}.csv"
    subroot = "fashion"

    def _find_csv(self, base: Path, split: str) -> Path:
        name = f"fashion-resize-annotation-{split}.csv"
        for folder in (base, self.root, base.parent):
            if (folder / name).is_file():
                return folder / name
        return require_file(base / name, "the pose-transfer keypoint CSV (name:keypoints_y:keypoints_x)")

    def _read_csv(self, path: Path) -> dict[str, np.ndarray]:
        """{image name: float (18, 2) xy}; malformed rows are reported as problems of ``path``."""
        out: dict[str, np.ndarray] = {}
        lines = read_text(path).splitlines()
        for lineno, line in enumerate(lines, start=1):
            if not line.strip() or (lineno == 1 and line.replace(" ", "").startswith("name:")):
                continue
            fields = line.split(":")
            try:
                if len(fields) != 3:
                    raise ValueError(f"{len(fields)} ':'-separated fields")
                ys, xs = json.loads(fields[1]), json.loads(fields[2])
                coords = np.stack([np.asarray(xs, dtype=np.float32), np.asarray(ys, dtype=np.float32)], axis=1)
                if coords.shape != (NUM_KEYPOINTS, 2):
                    raise ValueError(f"{len(ys)} y and {len(xs)} x values")
            except (ValueError, TypeError) as e:
                self._problem(f"{path}:{lineno}", f"malformed row {path}:{lineno} ({e}): expected "
                              f"name:[{NUM_KEYPOINTS} y values]:[{NUM_KEYPOINTS} x values], -1 = missing")
                continue
            out[fields[0].strip()] = coords
        return out

    def _index(self) -> dict[str, list[Item]]:
        base = self.base
        pools: dict[str, list[Item]] = {}
        for split in ("train", "test"):
            img_dir = require_dir(base / split, f"DeepFashion {split} images (*.jpg)")
            csv = self._find_csv(base, split)
            coords = self._read_csv(csv)
            images = {p.name: p for p in list_files(img_dir, (".jpg", ".jpeg", ".png"))}
            both = self._paired(
                images, coords,
                lambda k: (images[k], f"image {images[k]} has no row in {csv}"),
                lambda k: (img_dir / k, f"{csv} lists {k} but {img_dir / k} does not exist"))
            pools[split] = [Item(name, {"image": images[name]}, {"coords": coords[name]}) for name in both]
        return self._official_splits(pools["train"], pools["test"])

    def _load(self, item: Item) -> LoadResult:
        from ..conditions import gaussian_heatmaps

        im = read_rgb(item.paths["image"])
        res = self.resolution
        scale, _, _, left, top = letterbox_box(im.width, im.height, res)
        src = item.data["coords"]
        xy = np.full_like(src, -1.0)
        present = (src >= 0).all(axis=1)
        # integer pixel indices -> continuous coordinates (pixel centres at +0.5), then the letterbox transform
        xy[present] = (src[present] + 0.5) * scale + np.array([left, top], dtype=np.float32)
        xy[(xy < 0).any(axis=1) | (xy >= res).any(axis=1)] = -1.0
        heat = gaussian_heatmaps(torch.from_numpy(xy), res, keypoint_sigma(res))
        extra = {"keypoints": torch.from_numpy(xy)}
        return image_tensor(letterbox(im, res)), {"keypoints": heat}, extra, {"image": str(item.paths["image"])}

    def _spec(self, modality: str) -> ConditionSpec:
        return ConditionSpec("keypoints", NUM_KEYPOINTS)


register_dataset("deepfashion")(builder(DeepFashion))
