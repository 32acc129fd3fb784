"""Tiny on-disk fixtures in the exact layouts of the real datasets (see ``iqvae.data.datasets``).

Each ``make_*`` writes a few files under a folder and returns that folder; the values written (label ids, colours,
keypoints, boxes, captions, tones) are module constants or documented here so tests can assert against them.
"""

from __future__ import annotations

import json
import math
import pickle
import wave
from pathlib import Path

import numpy as np
from PIL import Image

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)
QUAD_COLOURS = (RED, GREEN, BLUE, WHITE)  # top-left, top-right, bottom-left, bottom-right
BORDER_COLOUR = BLACK
BORDER_ID = 99


def quad_image(w: int, h: int, border: int, colours=QUAD_COLOURS) -> Image.Image:
    """``w x h`` RGB: ``border`` columns of BORDER_COLOUR each side, then 2 x 2 quadrants of ``colours``."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:] = BORDER_COLOUR
    inner = w - 2 * border
    for q, c in enumerate(colours):
        r0 = (q // 2) * (h // 2)
        c0 = border + (q % 2) * (inner // 2)
        arr[r0:r0 + h // 2, c0:c0 + inner // 2] = c
    return Image.fromarray(arr)


def quad_labels(w: int, h: int, border: int, ids: tuple[int, int, int, int], border_id: int = BORDER_ID) -> np.ndarray:
    """uint8 label map with the layout of :func:`quad_image`."""
    arr = np.full((h, w), border_id, np.uint8)
    inner = w - 2 * border
    for q, v in enumerate(ids):
        r0 = (q // 2) * (h // 2)
        c0 = border + (q % 2) * (inner // 2)
        arr[r0:r0 + h // 2, c0:c0 + inner // 2] = v
    return arr


def write_jpg(path: Path, im: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, quality=98, subsampling=0)
    return path


def write_png(path: Path, arr_or_im) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = arr_or_im if isinstance(arr_or_im, Image.Image) else Image.fromarray(arr_or_im)
    im.save(path)
    return path


def write_garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an image file at all" * 4)
    return path


# ------------------------------------------------------------------------------------------------------------ ADE20K
# Images 48 x 32 with 8-px borders (cropped away at any square output); label ids of item i: (1+i, 2+i, 3+i, 150).
def ade_ids(i: int) -> tuple[int, int, int, int]:
    return (1 + i, 2 + i, 3 + i, 150)


def make_ade20k(root: Path, n_train: int = 6, n_val: int = 2) -> Path:
    base = root / "ADEChallengeData2016"
    for split, n, tag in (("training", n_train, "train"), ("validation", n_val, "val")):
        for i in range(n):
            name = f"ADE_{tag}_{i + 1:08d}"
            write_jpg(base / "images" / split / f"{name}.jpg", quad_image(48, 32, 8))
            write_png(base / "annotations" / split / f"{name}.png", quad_labels(48, 32, 8, ade_ids(i), 0))
    return root


# ----------------------------------------------------------------------------------------------------- CelebAMask-HQ
# Images 16 x 16 (solid colour), masks 8 x 8 (like 1024 vs 512).  Part masks of every id:
#   skin rows 2-7, nose rows 4-7 cols 0-3, hair rows 0-4, cloth row 7 cols 4-7 (cloth saved as an RGB png).
CELEBA_IDS = (0, 1, 2, 3, 28000, 28001)


def celeba_expected() -> np.ndarray:
    """The merged 8 x 8 label map (the oracle, written out by hand)."""
    exp = np.zeros((8, 8), np.int64)
    exp[2:8, :] = 1  # skin
    exp[4:8, 0:4] = 2  # nose
    exp[0:5, :] = 13  # hair overwrites skin and nose
    exp[7, 4:8] = 18  # cloth
    return exp


def make_celebamask(root: Path, ids=CELEBA_IDS) -> Path:
    base = root / "CelebAMask-HQ"
    for i in ids:
        write_jpg(base / "CelebA-HQ-img" / f"{i}.jpg", Image.new("RGB", (16, 16), (200, 150, 100)))
        folder = base / "CelebAMask-HQ-mask-anno" / str(i // 2000)
        masks = {"skin": (slice(2, 8), slice(0, 8)), "nose": (slice(4, 8), slice(0, 4)),
                 "hair": (slice(0, 5), slice(0, 8)), "cloth": (slice(7, 8), slice(4, 8))}
        for part, (rs, cs) in masks.items():
            m = np.zeros((8, 8), np.uint8)
            m[rs, cs] = 255
            im = Image.fromarray(m)
            write_png(folder / f"{i:05d}_{part}.png", im.convert("RGB") if part == "cloth" else im)
    return root


# ------------------------------------------------------------------------------------------------------- DeepFashion
# Images 12 x 16 (w x h), solid BLUE.  Keypoint 0 of every image at x=5, y=7; keypoint 1 missing (-1); the others
# at x=2, y=3.
def make_deepfashion(root: Path, n_train: int = 4, n_test: int = 2) -> Path:
    base = root / "fashion"
    for split, n in (("train", n_train), ("test", n_test)):
        rows = ["name:keypoints_y:keypoints_x"]
        for i in range(n):
            name = f"fashionWOMENTees_Tanksid{i:010d}_1front.jpg"
            write_jpg(base / split / name, Image.new("RGB", (12, 16), BLUE))
            ys = [7, -1] + [3] * 16
            xs = [5, -1] + [2] * 16
            rows.append(f"{name}: {json.dumps(ys)}: {json.dumps(xs)}")
        (base / f"fashion-resize-annotation-{split}.csv").write_text("\n".join(rows) + "\n")
    return root


# -------------------------------------------------------------------------------------------------------- COCO-Stuff
# Images 16 x 16.  Label pngs: rows 0-7 value 0 (person -> id 1), rows 8-15 cols 0-7 value 181 (-> 182), the rest
# 255 (unlabeled -> 0).  Layout JSON: see make_cocostuff.
def make_cocostuff(root: Path, n_train: int = 5, n_val: int = 3) -> Path:
    categories = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 92, "name": "banner"},
                  {"id": 183, "name": "other"}]
    for official, n in (("train2017", n_train), ("val2017", n_val)):
        images, inst, stuff = [], [], []
        for i in range(n):
            iid = i + 1 + (1000 if official == "val2017" else 0)
            name = f"{iid:012d}.jpg"
            write_jpg(root / "images" / official / name, Image.new("RGB", (16, 16), GREEN))
            lab = np.full((16, 16), 255, np.uint8)
            lab[0:8, :] = 0
            lab[8:16, 0:8] = 181
            write_png(root / "annotations" / official / f"{iid:012d}.png", lab)
            images.append({"id": iid, "file_name": name, "width": 16, "height": 16})
            # Every image: person [0,0,8,8], car [8,8,8,8], banner [0,8,8,8] -> 3 objects kept.
            inst += [{"image_id": iid, "category_id": 1, "bbox": [0, 0, 8, 8]},
                     {"image_id": iid, "category_id": 3, "bbox": [8, 8, 8, 8]}]
            stuff += [{"image_id": iid, "category_id": 92, "bbox": [0, 8, 8, 8]},
                      {"image_id": iid, "category_id": 183, "bbox": [0, 0, 16, 16]},  # "other": dropped
                      {"image_id": iid, "category_id": 92, "bbox": [0, 0, 2, 2]}]  # 1.6 % of the area: dropped
            if i == 0:  # image 1 gets only 2 objects -> excluded from the layout task
                inst = [a for a in inst if not (a["image_id"] == iid and a["category_id"] == 3)]
            if i == 1:  # image 2 gets 9 objects -> excluded
                inst += [{"image_id": iid, "category_id": 3, "bbox": [4, 4, 8, 8]}] * 6
        ann = root / "annotations"
        (ann / f"instances_{official}.json").write_text(json.dumps(
            {"images": images, "annotations": inst, "categories": categories[:2]}))
        (ann / f"stuff_{official}.json").write_text(json.dumps(
            {"images": images, "annotations": stuff, "categories": categories[2:]}))
    return root


# ------------------------------------------------------------------------------------------------------------ CUB-200
# Images 40 x 40 GREEN with the crop region of the box (10, 10, 10, 10) -> (8, 8, 22, 22) painted RED.
CUB_TRAIN = ["001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111",
             "001.Black_footed_Albatross/Black_Footed_Albatross_0002_55",
             "002.Laysan_Albatross/Laysan_Albatross_0001_545",
             "002.Laysan_Albatross/Laysan_Albatross_0002_1027"]
CUB_TEST = ["003.Sooty_Albatross/Sooty_Albatross_0001_1071"]


def cub_captions(name: str, train: bool) -> list[str]:
    word = "zebra" if not train else "bird"  # "zebra" occurs only in test captions -> <unk>
    return [f"caption {k} of this small {word}" for k in range(10)]


def make_cub(root: Path, train=CUB_TRAIN, test=CUB_TEST, pickle_protocol: int = 2) -> Path:
    cub = root / "CUB_200_2011"
    lines, boxes = [], []
    for k, name in enumerate(train + test, start=1):
        arr = np.zeros((40, 40, 3), np.uint8)
        arr[:] = GREEN
        arr[8:22, 8:22] = RED
        write_jpg(cub / "images" / f"{name}.jpg", Image.fromarray(arr))
        lines.append(f"{k} {name}.jpg")
        boxes.append(f"{k} 10.0 10.0 10.0 10.0")
        txt = root / "text" / f"{name}.txt"
        txt.parent.mkdir(parents=True, exist_ok=True)
        txt.write_text("\n".join(cub_captions(name, name in train)) + "\n")
    (cub / "images.txt").write_text("\n".join(lines) + "\n")
    (cub / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    for split, names in (("train", train), ("test", test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        with open(root / split / "filenames.pickle", "wb") as f:
            pickle.dump(list(names), f, protocol=pickle_protocol)
    return root


# ----------------------------------------------------------------------------------------------------------- Sub-URMP
def write_wav(path: Path, samples: np.ndarray, rate: int, channels: int = 1, width: int = 2) -> Path:
    """Write float samples in [-1, 1] (shape (N,) or (N, channels)) as PCM of ``width`` bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.asarray(samples, np.float64).reshape(len(samples), -1)
    if width == 2:
        data = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    else:  # 8-bit unsigned
        data = ((np.clip(x, -1, 1) * 127) + 128).astype(np.uint8).tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)
    return path


def tone(freq: float, rate: int, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return 0.5 * np.sin(2 * math.pi * freq * t)


# Train: violin 1 kHz tones at 16 kHz, cello 1 kHz tones at 8 kHz (resampled); validation: one violin, one silence.
def make_suburmp(root: Path) -> Path:
    for official, entries in (("train", [("violin", "violin_01_000%d" % k, 16000) for k in range(3)]
                               + [("cello", "cello_02_000%d" % k, 8000) for k in range(2)]),
                              ("validation", [("violin", "violin_09_0001", 16000), ("cello", "cello_09_0001", 0)])):
        for inst, stem, rate in entries:
            write_jpg(root / "img" / official / inst / f"{stem}.jpg", Image.new("RGB", (24, 16), RED))
            samples = tone(1000, rate) if rate else np.zeros(8000)
            write_wav(root / "chunk" / official / inst / f"{stem}.wav", samples, rate or 16000)
    return root


# ------------------------------------------------------------------------------------------------------------- pairs
PAIR_NAMES = [f"item{k:02d}" for k in range(8)]


def make_pairs(root: Path, names=PAIR_NAMES) -> Path:
    """images/NAME.png (solid grey level 10*k) with conditions/NAME.png seg maps of constant id k % 4."""
    for k, name in enumerate(names):
        write_png(root / "images" / f"{name}.png", Image.new("RGB", (20, 16), (10 * k, 10 * k, 10 * k)))
        write_png(root / "conditions" / f"{name}.png", np.full((16, 20), k % 4, np.uint8))
    return root
