"""Real-dataset loaders read back tiny fixtures written in the exact on-disk layouts (tests/_dataset_fixtures.py).

Values are asserted against what the fixtures wrote (label ids, colours, keypoints, boxes, captions, tones).
"""

from __future__ import annotations

import math
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import _dataset_fixtures as F  # noqa: E402

from iqvae.data.config import DataConfig, build_dataset, dataset_names  # noqa: E402
from iqvae.data.conditions import LOG_MEL_FLOOR, mel_centres  # noqa: E402
from iqvae.data.datasets import ADE20K, CUB200, CelebAMaskHQ, CocoStuff, DeepFashion, Pairs, SubURMP  # noqa: E402
from iqvae.data.datasets import safe_unpickle  # noqa: E402
from iqvae.data.datasets._io import split_three_way, split_train_pool  # noqa: E402
from iqvae.data.datasets.celebamask import PARTS  # noqa: E402
from iqvae.data.record import collate  # noqa: E402
from iqvae.errors import DataError  # noqa: E402

RES = 8


def colour(t: torch.Tensor) -> tuple[int, int, int]:
    """A (3,) tensor in [-1, 1] back to 0..255."""
    return tuple(int(round(v)) for v in ((t + 1) * 127.5).tolist())


def near(t: torch.Tensor, rgb: tuple[int, int, int], tol: int = 12) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(colour(t), rgb))


def keys(ds) -> list[str]:
    return [it.key for it in ds.items]


# -------------------------------------------------------------------------------------------------------- registry
def test_all_seven_datasets_are_registered():
    assert {"ade20k", "celebamask-hq", "deepfashion", "coco-stuff", "cub200", "sub-urmp", "pairs"} <= set(
        dataset_names())


def test_build_dataset_ade20k_fixture_collates(tmp_path):
    root = F.make_ade20k(tmp_path)
    cfg = DataConfig(dataset="ade20k", root=str(root), cond="seg", resolution=RES)
    ds = build_dataset(cfg, "train")
    spec = ds.condition_spec("seg")
    assert (spec.modality, spec.channels) == ("seg", 151)
    batch = collate([ds[0], ds[1]])
    assert batch.image.shape == (2, 3, RES, RES) and batch.cond["seg"].shape == (2, RES, RES)
    for i in range(len(ds)):
        spec.check(ds[i].cond["seg"], RES)
    assert len(build_dataset(cfg, "val")) >= 1 and len(build_dataset(cfg, "test")) == 2
    with pytest.raises(DataError, match="data.root"):
        build_dataset(DataConfig(dataset="ade20k", root=None), "train")


# ---------------------------------------------------------------------------------------------------------- ADE20K
def test_ade20k_labels_image_and_centre_crop(tmp_path):
    ds = ADE20K(F.make_ade20k(tmp_path), "train", resolution=RES)
    for idx in range(len(ds)):
        s = ds[idx]
        i = int(s.meta["key"].rsplit("_", 1)[1]) - 1
        tl, tr, bl, br = F.ade_ids(i)
        expected = torch.empty(RES, RES, dtype=torch.int64)
        expected[:4, :4], expected[:4, 4:], expected[4:, :4], expected[4:, 4:] = tl, tr, bl, br
        assert torch.equal(s.cond["seg"], expected)  # the 8-px borders (id 0) are cropped away exactly
    img = ds[0].image
    assert img.shape == (3, RES, RES) and img.dtype == torch.float32
    assert near(img[:, 1, 1], F.RED) and near(img[:, 1, 6], F.GREEN)
    assert near(img[:, 6, 1], F.BLUE) and near(img[:, 6, 6], F.WHITE)


def test_ade20k_edge_is_label_boundary(tmp_path):
    s = ADE20K(F.make_ade20k(tmp_path), "train", cond="edge", resolution=RES)[0]
    expected = torch.zeros(1, RES, RES)
    expected[0, 4, :] = 1  # between top and bottom quadrants (on the larger-id side)
    expected[0, :, 4] = 1  # between left and right quadrants
    assert torch.equal(s.cond["edge"], expected)


def test_splits_are_disjoint_deterministic_and_limited(tmp_path):
    root = F.make_ade20k(tmp_path, n_train=12, n_val=3)
    split = {s: keys(ADE20K(root, s, resolution=RES)) for s in ("train", "val", "test")}
    stems = {f"ADE_train_{i + 1:08d}" for i in range(12)}
    assert set(split["train"]) | set(split["val"]) == stems and not set(split["train"]) & set(split["val"])
    assert split["val"] and split["test"] == [f"ADE_val_{i + 1:08d}" for i in range(3)]
    assert keys(ADE20K(root, "val", resolution=RES)) == split["val"]  # same again
    limited = ADE20K(root, "train", resolution=RES, limit=3)
    assert len(limited) == 3 and keys(limited) == split["train"][:3]
    # Adding files never moves existing ones between train and val (hash per name).
    pool = [f"img_{k:04d}" for k in range(300)]
    before = set(split_train_pool(pool, "val"))
    after = set(split_train_pool(pool + [f"new_{k:04d}" for k in range(100)], "val"))
    assert before and before == {k for k in after if k.startswith("img_")}


def test_corrupt_image_names_the_file_and_skip_bad_lists_it(tmp_path):
    root = F.make_ade20k(tmp_path)
    ds = ADE20K(root, "train", resolution=RES)
    bad = ds.items[1].paths["image"]
    F.write_garbage(bad)
    with pytest.raises(DataError, match=str(bad).replace("\\", "\\\\")):
        ds[1]
    lenient = ADE20K(root, "train", resolution=RES, skip_bad=True)
    listing = lenient.write_bad_files(tmp_path / "run" / "bad_files.txt")  # what the trainer does at start
    assert listing.read_text() == ""
    s = lenient[1]
    assert s.meta["key"] == lenient.items[2].key  # replaced by the next readable item
    assert lenient.bad_files == [str(bad)]
    lenient[1]  # met again: listed once
    assert [line.split("\t")[0] for line in listing.read_text().splitlines()] == [str(bad)]


def test_missing_pair_is_an_error_naming_the_file(tmp_path):
    root = F.make_ade20k(tmp_path)
    ann = root / "ADEChallengeData2016" / "annotations" / "training"
    (ann / "ADE_train_00000002.png").unlink()
    orphan = F.write_png(ann / "ADE_train_00000099.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match=r"ADE_train_00000002\.jpg has no label map"):
        ADE20K(root, "train", resolution=RES)
    ds = ADE20K(root, "train", resolution=RES, skip_bad=True)
    assert len(ds.bad_files) == 2 and str(orphan) in ds.bad_files
    assert all("00000002" not in k and "00000099" not in k for k in keys(ds))


def test_label_out_of_range_is_an_error(tmp_path):
    root = F.make_ade20k(tmp_path)
    ds = ADE20K(root, "test", resolution=RES)
    F.write_png(ds.items[0].paths["seg"], np.full((32, 48), 200, np.uint8))
    with pytest.raises(DataError, match="id 200: expected ids 0..150"):
        ds[0]


# ---------------------------------------------------------------------------------------------------- CelebAMask-HQ
def test_celebamask_part_order_merge_and_split(tmp_path):
    # The order of CelebAMask-HQ's face_parsing/Data_preprocessing/g_mask.py.
    assert PARTS == ("skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth",
                     "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")
    root = F.make_celebamask(tmp_path)
    train, val, test = (CelebAMaskHQ(root, s, resolution=RES) for s in ("train", "val", "test"))
    assert keys(test) == ["28000", "28001"]
    assert sorted(keys(train) + keys(val)) == ["00000", "00001", "00002", "00003"]
    assert train.condition_spec("seg").channels == 19
    s = train[0]
    assert torch.equal(s.cond["seg"], torch.from_numpy(F.celeba_expected()))
    assert near(s.image[:, 4, 4], (200, 150, 100))


def test_celebamask_edge_is_canny_of_the_image(tmp_path):
    root = F.make_celebamask(tmp_path, ids=(0, 1, 2))
    flat = CelebAMaskHQ(root, "train", cond="edge", resolution=RES)[0]
    assert flat.cond["edge"].shape == (1, RES, RES) and flat.cond["edge"].sum() == 0  # a flat image has no edges
    arr = np.zeros((16, 16, 3), np.uint8)
    arr[:, 8:] = 255
    F.write_jpg(root / "CelebAMask-HQ" / "CelebA-HQ-img" / "1.jpg", F.Image.fromarray(arr))
    ds = CelebAMaskHQ(root, "train", cond="edge", resolution=RES)
    edge = ds[keys(ds).index("00001")].cond["edge"][0]
    assert edge[:, 3:5].sum() >= RES and edge[:, :2].sum() == 0 and edge[:, 6:].sum() == 0


def test_celebamask_image_without_masks_is_a_missing_pair(tmp_path):
    root = F.make_celebamask(tmp_path)
    lonely = F.write_jpg(root / "CelebAMask-HQ" / "CelebA-HQ-img" / "5.jpg", F.Image.new("RGB", (16, 16)))
    with pytest.raises(DataError, match=r"5\.jpg has no part mask"):
        CelebAMaskHQ(root, "train", resolution=RES)
    assert CelebAMaskHQ(root, "train", resolution=RES, skip_bad=True).bad_files == [str(lonely)]


# ------------------------------------------------------------------------------------------------------ DeepFashion
def test_deepfashion_heatmaps_follow_the_letterbox(tmp_path):
    ds = DeepFashion(F.make_deepfashion(tmp_path), "train", resolution=RES)
    assert ds.condition_spec("keypoints").channels == 18
    s = ds[0]
    heat = s.cond["keypoints"]
    assert heat.shape == (18, RES, RES) and heat.dtype == torch.float32
    # x=5, y=7 in a 12 x 16 image -> scale 0.5, pad left 1: ((5 + .5) * .5 + 1, (7 + .5) * .5) = (3.75, 3.75).
    assert torch.allclose(s.extra["keypoints"][0], torch.tensor([3.75, 3.75]))
    assert divmod(int(heat[0].argmax()), RES) == (3, 3)
    assert heat[0, 3, 3].item() == pytest.approx(math.exp(-(0.25**2 * 2) / 2), abs=1e-5)  # sigma 1 px at 8 px
    assert heat[1].abs().sum() == 0  # keypoint 1 is missing (-1)
    assert torch.allclose(s.extra["keypoints"][2], torch.tensor([2.25, 1.75]))
    img = s.image
    assert near(img[:, 4, 0], F.WHITE) and near(img[:, 4, 7], F.WHITE) and near(img[:, 4, 4], F.BLUE)
    assert len(DeepFashion(tmp_path, "test", resolution=RES)) == 2


def test_deepfashion_malformed_row_names_csv_line(tmp_path):
    root = F.make_deepfashion(tmp_path)
    csv = root / "fashion" / "fashion-resize-annotation-train.csv"
    csv.write_text(csv.read_text() + "broken.jpg: [1, 2]: [3, 4]\n")
    with pytest.raises(DataError, match=r"annotation-train\.csv:6"):
        DeepFashion(root, "train", resolution=RES)


# ------------------------------------------------------------------------------------------------------- COCO-Stuff
def test_cocostuff_seg_maps_255_to_unlabeled(tmp_path):
    ds = CocoStuff(F.make_cocostuff(tmp_path), "train", cond="seg", resolution=RES)
    assert ds.condition_spec("seg").channels == 183
    seg = ds[0].cond["seg"]
    expected = torch.zeros(RES, RES, dtype=torch.int64)
    expected[:4] = 1  # png 0 (person) -> category id 1
    expected[4:, :4] = 182  # png 181 -> 182
    assert torch.equal(seg, expected)  # png 255 -> 0 (unlabeled)
    assert len(CocoStuff(tmp_path, "test", cond="seg", resolution=RES)) == 3


def test_cocostuff_layout_filters_objects_and_draws_boxes(tmp_path):
    root = F.make_cocostuff(tmp_path)
    split = {s: keys(CocoStuff(root, s, cond="layout", resolution=RES)) for s in ("train", "val", "test")}
    # 2 objects (image 1) and 9 objects (image 2) are excluded; "other" and a 1.6 % box do not count.
    assert sorted(split["train"] + split["val"]) == ["000000000003", "000000000004", "000000000005"]
    assert split["test"] == ["000000001003"]
    s = CocoStuff(root, "test", cond="layout", resolution=RES)[0]
    lay = s.cond["layout"]
    assert lay.shape == (183, RES, RES)
    expected = torch.zeros_like(lay)
    expected[1, :4, :4] = 1  # person [0, 0, 8, 8] at half scale
    expected[3, 4:, 4:] = 1  # car [8, 8, 8, 8]
    expected[92, 4:, :4] = 1  # banner [0, 8, 8, 8]
    assert torch.equal(lay, expected)
    assert sorted(s.meta["objects"]) == ["banner", "car", "person"]


# ---------------------------------------------------------------------------------------------------------- CUB-200
def test_cub_bbox_crop_captions_and_vocab(tmp_path):
    root = F.make_cub(tmp_path)
    train, val, test = (CUB200(root, s, resolution=RES) for s in ("train", "val", "test"))
    assert sorted(keys(train) + keys(val)) == sorted(F.CUB_TRAIN) and keys(test) == F.CUB_TEST
    spec = train.condition_spec("text")
    assert spec.length == 32 and spec.vocab[:2] == ("<pad>", "<unk>") and "bird" in spec.vocab
    assert "zebra" not in spec.vocab and test.condition_spec("text") == spec  # vocabulary from train captions only
    for i in range(len(train)):
        s = train[i]
        assert s.extra["caption"] == f"caption {i % 10} of this small bird"
        assert train.vocab.decode(s.cond["text"]) == "caption of this small bird"  # digits are not words
        assert s.cond["text"].shape == (32,) and int(s.cond["text"][5:].abs().sum()) == 0
        # The crop of box (10, 10, 10, 10) is (8, 8, 22, 22), painted red: no green may remain.
        assert all(near(s.image[:, r, c], F.RED, 16) for r in range(RES) for c in range(RES))
    assert test.vocab.decode(test[0].cond["text"]) == "caption of this small <unk>"


def test_cub_restricted_unpickler_refuses_code(tmp_path):
    root = F.make_cub(tmp_path, pickle_protocol=0)
    assert safe_unpickle(root / "train" / "filenames.pickle") == F.CUB_TRAIN  # protocol 0 (Python 2 era) is fine
    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(target),))

    evil = root / "train" / "filenames.pickle"
    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(DataError, match=r"refusing to load .*filenames\.pickle"):
        CUB200(root, "train", resolution=RES)
    assert not target.exists()  # nothing was executed
    (root / "test" / "filenames.pickle").write_bytes(pickle.dumps({1, 2}))
    with pytest.raises(DataError, match="expected only lists, dicts and strings"):
        safe_unpickle(root / "test" / "filenames.pickle")


def test_cub_missing_caption_file_is_a_missing_pair(tmp_path):
    root = F.make_cub(tmp_path)
    gone = root / "text" / f"{F.CUB_TRAIN[0]}.txt"
    gone.unlink()
    with pytest.raises(DataError, match="no caption file"):
        CUB200(root, "train", resolution=RES)
    assert CUB200(root, "train", resolution=RES, skip_bad=True).bad_files == [str(gone)]


# --------------------------------------------------------------------------------------------------------- Sub-URMP
def test_suburmp_log_mel_peaks_at_the_tone(tmp_path):
    root = F.make_suburmp(tmp_path)
    train, val, test = (SubURMP(root, s, resolution=RES) for s in ("train", "val", "test"))
    assert len(train) + len(val) == 5 and keys(test) == ["cello/cello_09_0001", "violin/violin_09_0001"]
    spec = train.condition_spec("audio")
    band_1khz = int(np.argmin(np.abs(mel_centres(16000, spec.channels) - 1000)))
    for ds in (train, val):
        for i in range(len(ds)):  # 16 kHz violin files and 8 kHz cello files (resampled) alike
            s = ds[i]
            spec.check(s.cond["audio"], RES)
            assert int(s.cond["audio"].mean(dim=1).argmax()) == band_1khz
            assert s.extra["waveform"].shape == (8000,) and s.meta["instrument"] in ("violin", "cello")
    silent = test[0].cond["audio"]
    assert torch.allclose(silent, torch.full_like(silent, LOG_MEL_FLOOR))
    assert near(train[0].image[:, 4, 4], F.RED)


def test_suburmp_rejects_non_16bit_wav(tmp_path):
    root = F.make_suburmp(tmp_path)
    ds = SubURMP(root, "test", resolution=RES)
    path = ds.items[1].paths["audio"]
    F.write_wav(path, F.tone(1000, 16000), 16000, width=1)
    with pytest.raises(DataError, match=r"violin_09_0001\.wav has 8-bit samples: expected 16-bit PCM"):
        ds[1]


# ------------------------------------------------------------------------------------------------------------ pairs
def test_pairs_seg_values_and_hash_split(tmp_path):
    root = F.make_pairs(tmp_path)
    split = {s: Pairs(root, s, cond="seg", resolution=RES) for s in ("train", "val", "test")}
    names = [k for ds in split.values() for k in keys(ds)]
    assert sorted(names) == F.PAIR_NAMES and len(set(names)) == len(names)
    assert all(len(ds) >= 1 for ds in split.values())
    assert keys(Pairs(root, "test", cond="seg", resolution=RES)) == keys(split["test"])
    ds = split["train"]
    assert ds.condition_spec("seg").channels == 4  # largest id 3 + 1
    for i in range(len(ds)):
        k = F.PAIR_NAMES.index(ds[i].meta["key"])
        assert torch.equal(ds[i].cond["seg"], torch.full((RES, RES), k % 4, dtype=torch.int64))
        assert near(ds[i].image[:, 2, 2], (10 * k,) * 3, 2)
    (root / "classes.txt").write_text("\n".join(f"class{c}" for c in range(10)) + "\n")
    assert Pairs(root, "train", cond="seg", resolution=RES).condition_spec("seg").channels == 10
    assert set(split_three_way(F.PAIR_NAMES, "test")) == set(keys(split["test"]))


def test_pairs_edge_and_missing_condition(tmp_path):
    root = tmp_path
    for k, name in enumerate(F.PAIR_NAMES[:4]):
        F.write_png(root / "images" / f"{name}.png", F.Image.new("RGB", (16, 16)))
        edge = np.zeros((16, 16), np.uint8)
        edge[:, 5] = 255  # a 1-px vertical line survives the 2x downscale
        F.write_png(root / "conditions" / f"{name}.png", edge)
    e = Pairs(root, "train", cond="edge", resolution=RES)[0].cond["edge"]
    expected = torch.zeros(1, RES, RES)
    expected[0, :, 2] = 1
    assert torch.equal(e, expected)
    lonely = F.write_png(root / "images" / "lonely.png", F.Image.new("RGB", (16, 16)))
    with pytest.raises(DataError, match=r"lonely\.png has no condition"):
        Pairs(root, "train", cond="edge", resolution=RES)
    with pytest.raises(DataError, match="'pairs' has no condition 'depth'"):
        Pairs(root, "train", cond="depth")
    assert Pairs(root, "train", cond="edge", resolution=RES, skip_bad=True).bad_files == [str(lonely)]


def test_pairs_keypoints_text_and_audio(tmp_path):
    names = F.PAIR_NAMES[:5]
    (tmp_path / "conditions").mkdir()
    for k, name in enumerate(names):
        F.write_png(tmp_path / "images" / f"{name}.png", F.Image.new("RGB", (16, 16)))
        heat = np.zeros((3, 16, 16), np.float32)
        heat[1, 4:12, 0:8] = 1.0
        np.save(tmp_path / "conditions" / f"{name}.npy", heat)
        (tmp_path / "conditions" / f"{name}.txt").write_text(f"a bird number {k}\n")
        F.write_wav(tmp_path / "conditions" / f"{name}.wav", F.tone(1000, 16000), 16000, channels=1)
    kp = Pairs(tmp_path, "train", cond="keypoints", resolution=RES)
    assert kp.condition_spec("keypoints").channels == 3
    got = kp[0].cond["keypoints"]  # the 8 x 8 block at half scale: rows 2-5, cols 0-3 (bilinear blurs its rim)
    assert got.shape == (3, RES, RES) and got[0].abs().sum() == 0 and got[2].abs().sum() == 0
    assert torch.allclose(got[1, 3:5, 0:3], torch.ones(2, 3)) and got[1, :, 5:].abs().sum() == 0
    assert got[1, 0].abs().sum() == 0 and got[1, 7].abs().sum() == 0
    txt = Pairs(tmp_path, "train", cond="text", resolution=RES)
    assert txt.vocab.decode(txt[0].cond["text"]) == "a bird number"
    assert txt.condition_spec("text").vocab == txt.vocab.words
    aud = Pairs(tmp_path, "test", cond="audio", resolution=RES)
    aud.condition_spec("audio").check(aud[0].cond["audio"], RES)
    np.save(tmp_path / "conditions" / f"{names[0]}.npy", np.zeros((2, 16, 16), np.float32))
    with pytest.raises(DataError, match="different channel counts"):
        Pairs(tmp_path, "train", cond="keypoints", resolution=RES)


# ----------------------------------------------------------------------------------------------------- data check
@pytest.fixture
def cli_main(monkeypatch):
    """``iqvae.cli.main`` with only the data commands loaded (other engineers' commands are not under test here)."""
    import iqvae.cli as cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ["iqvae.data.commands"])
    return cli.main


def test_data_check_reports_counts_missing_pairs_and_unreadable(tmp_path, cli_main, capsys):
    root = F.make_ade20k(tmp_path / "ade")
    assert cli_main(["data", "check", "ade20k", str(root), "--resolution", str(RES)]) == 0
    assert "OK" in capsys.readouterr().out
    corrupt = F.write_garbage(root / "ADEChallengeData2016" / "images" / "validation" / "ADE_val_00000001.jpg")
    lonely = root / "ADEChallengeData2016" / "images" / "training" / "ADE_train_00000003.jpg"
    (root / "ADEChallengeData2016" / "annotations" / "training" / "ADE_train_00000003.png").unlink()
    run = tmp_path / "run"
    rc = cli_main(["data", "check", "ade20k", str(root), "--resolution", str(RES), "--out", str(run)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "test         2 items" in out and "missing pairs: 1" in out and "unreadable files: 1" in out
    assert str(corrupt) in out and str(lonely) in out
    listed = [line.split("\t")[0] for line in (run / "bad_files.txt").read_text().splitlines()]
    assert listed == [str(lonely), str(corrupt)]
    assert cli_main(["data", "check", "ade20k", str(root), "--resolution", str(RES), "--skip-bad"]) == 0
    capsys.readouterr()
    assert cli_main(["data", "check", "ade20k", str(tmp_path / "nowhere")]) == 2
    assert "missing folder" in capsys.readouterr().err


def test_check_report_of_every_loader(tmp_path):
    from iqvae.data.datasets.commands import check_dataset

    cases = [("celebamask-hq", F.make_celebamask, "seg"), ("deepfashion", F.make_deepfashion, None),
             ("coco-stuff", F.make_cocostuff, "layout"), ("cub200", F.make_cub, None),
             ("sub-urmp", F.make_suburmp, None), ("pairs", F.make_pairs, "seg")]
    for name, make, cond in cases:
        report = check_dataset(name, make(tmp_path / name), cond=cond, resolution=RES, limit=2)
        assert report["ok"], report
        assert all(1 <= n <= 2 for n in report["counts"].values()), report
