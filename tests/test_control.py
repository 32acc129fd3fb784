"""Controllability metrics (iqvae.metrics.control) against brute force, the condition predictor, its cache and the FD
floor (iqvae.evaluation.control)."""

import itertools
import math

import numpy as np
import pytest
import torch

from iqvae.errors import IQVAEError
from iqvae.metrics.control import box_iou, canny_f1, canny_maps, edge_f1, keypoint_error, miou


def _shapes(cond, n, split="test", res=32):
    from iqvae.data.config import DataConfig, build_dataset

    ds = build_dataset(DataConfig(dataset="shapes", cond=cond, resolution=res, test_size=n, train_size=n), split)
    items = [ds[i] for i in range(n)]
    return torch.stack([s.image for s in items]), torch.stack([s.cond[cond] for s in items])


# ------------------------------------------------------------------------------------------------------- Canny F1
def test_canny_f1_of_an_image_with_itself_is_1_and_with_a_blank_image_0():
    images, _ = _shapes("edge", 6)
    own = torch.from_numpy(canny_maps(images)).float()[:, None]  # the images' own Canny edges as the condition
    assert own.sum() > 0
    assert canny_f1(images, own)["per_image"] == [1.0] * 6
    assert canny_f1(torch.zeros_like(images), own)["per_image"] == [0.0] * 6
    assert canny_f1(torch.zeros_like(images), torch.zeros_like(own))["mean"] == 1.0  # nothing to find, none found


def _f1_brute(p, t, r):
    h, w = p.shape
    near = lambda a, i, j: any(a[y, x] for y in range(max(0, i - r), min(h, i + r + 1))  # noqa: E731
                               for x in range(max(0, j - r), min(w, j + r + 1)))
    pp = [(i, j) for i in range(h) for j in range(w) if p[i, j]]
    tt = [(i, j) for i in range(h) for j in range(w) if t[i, j]]
    if not pp and not tt:
        return 1.0
    if not pp or not tt:
        return 0.0
    prec = sum(near(t, i, j) for i, j in pp) / len(pp)
    rec = sum(near(p, i, j) for i, j in tt) / len(tt)
    return 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)


@pytest.mark.parametrize("r", [0, 1, 2])
def test_edge_f1_matches_brute_force(r):
    rng = np.random.default_rng(r)
    for _ in range(20):
        p, t = rng.random((7, 9)) < 0.2, rng.random((7, 9)) < 0.2
        assert edge_f1(p, t, r) == pytest.approx(_f1_brute(p, t, r), abs=1e-12)


def test_canny_f1_is_per_image_then_mean_and_checks_shapes():
    images, edges = _shapes("edge", 4)
    per = canny_f1(images, edges)["per_image"]
    pred = canny_maps(images)
    assert per == pytest.approx([_f1_brute(pred[i], edges[i, 0].numpy() > 0.5, 0) for i in range(4)])
    assert canny_f1(images, edges)["mean"] == pytest.approx(sum(per) / 4)
    with pytest.raises(IQVAEError, match="same resolution|images' resolution"):
        canny_f1(images, edges[:, :, :16, :16])


# -------------------------------------------------------------------------------- scores of a condition predictor
def test_miou_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    pred, tgt = torch.randint(0, 4, (5, 6, 6), generator=g), torch.randint(0, 3, (5, 6, 6), generator=g)
    per = []
    for b in range(5):
        ious = []
        for c in range(5):
            inter = sum(int(pred[b, i, j] == c and tgt[b, i, j] == c) for i in range(6) for j in range(6))
            union = sum(int(pred[b, i, j] == c or tgt[b, i, j] == c) for i in range(6) for j in range(6))
            if union:
                ious.append(inter / union)
        per.append(sum(ious) / len(ious))
    assert miou(pred, tgt, "image") == pytest.approx(sum(per) / 5, abs=1e-12)
    # the default, the dataset protocol: each class's intersection and union summed over the 5 maps first
    ious = []
    for c in range(5):
        inter = int(((pred == c) & (tgt == c)).sum())
        union = int(((pred == c) | (tgt == c)).sum())
        if union:
            ious.append(inter / union)
    assert miou(pred, tgt) == pytest.approx(sum(ious) / len(ious), abs=1e-12)
    assert miou(pred, tgt) != pytest.approx(miou(pred, tgt, "image"), abs=1e-3)
    assert miou(tgt, tgt) == 1.0 and miou(tgt, tgt, "image") == 1.0


def test_box_iou_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    pred, tgt = torch.rand(4, 3, 5, 5, generator=g), (torch.rand(4, 3, 5, 5, generator=g) > 0.6).float()
    tgt[2] = 0
    pred[2] = 0  # an image with no box in either map is left out
    per = []
    for b in range(4):
        ious = []
        for c in range(3):
            cells = list(itertools.product(range(5), range(5)))
            inter = sum(bool(pred[b, c, i, j] > 0.5) and bool(tgt[b, c, i, j] > 0.5) for i, j in cells)
            union = sum(bool(pred[b, c, i, j] > 0.5) or bool(tgt[b, c, i, j] > 0.5) for i, j in cells)
            if union:
                ious.append(inter / union)
        if ious:
            per.append(sum(ious) / len(ious))
    assert len(per) == 3
    assert box_iou(pred, tgt) == pytest.approx(sum(per) / len(per), abs=1e-12)
    assert math.isnan(box_iou(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3)))


def test_keypoint_error_matches_brute_force():
    from iqvae.data.conditions import gaussian_heatmaps

    res = 16
    true_xy = torch.tensor([[3.5, 4.5], [10.5, 2.5], [-1.0, -1.0]])  # the third keypoint is absent
    pred_xy = torch.tensor([[3.5, 7.5], [13.5, 6.5], [5.5, 5.5]])
    tgt = torch.stack([gaussian_heatmaps(true_xy, res, 1.0), gaussian_heatmaps(true_xy.flip(0), res, 1.0)])
    pred = torch.stack([gaussian_heatmaps(pred_xy, res, 1.0), gaussian_heatmaps(pred_xy.flip(0), res, 1.0)])
    # brute force: arg-max pixels by scanning, distances of the present keypoints / image side
    dists = []
    for b, k in itertools.product(range(2), range(3)):
        t, p = tgt[b, k], pred[b, k]
        if t.max() < 0.5:
            continue
        loc = lambda m: max(((m[i, j].item(), -(i * res + j), j + 0.5, i + 0.5)  # noqa: E731
                             for i in range(res) for j in range(res)))[2:]
        (tx, ty), (px, py) = loc(t), loc(p)
        dists.append(math.hypot(tx - px, ty - py) / res)
    assert len(dists) == 4 and dists[0] == pytest.approx(3 / 16)
    assert keypoint_error(pred, tgt) == pytest.approx(sum(dists) / 4, abs=1e-12)
    assert keypoint_error(tgt, tgt) == 0.0


# ----------------------------------------------------------------------------------------------- the predictor
def _data(tmp_path, cond="seg", n=40):
    from iqvae.data.config import DataConfig
    from iqvae.data.export import export_pairs

    root = export_pairs(tmp_path / f"pairs-{cond}", cond, n, resolution=16)
    return DataConfig(dataset="pairs", root=str(root), cond=cond, resolution=16)


def test_predictor_round_trip_and_cache(tmp_path, monkeypatch):
    import iqvae.train.predictor as tp
    from iqvae.models.predictor import ConditionPredictor
    from iqvae.train.predictor import PredictorRecipe, resolve_predictor

    data = _data(tmp_path)
    recipe = PredictorRecipe(steps=3, batch_size=4, width=4, feature_dim=8, thumb=2)
    model, source = resolve_predictor(data, cache=str(tmp_path / "cache"), recipe=recipe)
    assert model.name == "pairs-seg-cnn" and "cached at" in source
    folder = next((tmp_path / "cache" / "predictors").glob("pairs-seg-16-*"))
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    again = ConditionPredictor.from_pretrained(folder)
    torch.testing.assert_close(again.features(x), model.features(x))
    assert again.predict(x).dtype == torch.int64 and again.predict(x).shape == (3, 16, 16)
    # reused, not retrained; another recipe is another entry
    monkeypatch.setattr(tp, "train_condition_predictor", lambda *a, **k: pytest.fail("retrained"))
    resolve_predictor(data, cache=str(tmp_path / "cache"), recipe=recipe)
    # the same recipe trains the same weights (seeded)
    monkeypatch.undo()
    tp.train_predictor_into(tmp_path / "twin", data, recipe)
    torch.testing.assert_close(ConditionPredictor.from_pretrained(tmp_path / "twin").features(x), model.features(x))
    # edge conditions need no predictor unless features are wanted
    edge = _data(tmp_path, "edge", 12)
    assert resolve_predictor(edge, cache=str(tmp_path / "cache"), recipe=recipe)[0] is None
    # a predictor of another condition or resolution is refused, naming the option
    with pytest.raises(IQVAEError, match="--predictor.*'seg'.*'edge'"):
        resolve_predictor(edge, predictor=str(folder))
    data.resolution = 32
    with pytest.raises(IQVAEError, match="--predictor.*16 px"):
        resolve_predictor(data, predictor=str(folder))


def test_predictor_names_its_fd_and_serves_as_extractor(tmp_path):
    from iqvae.metrics.extractor import resolve_extractor
    from iqvae.metrics.fd import frechet_distance, metric_name
    from iqvae.train.predictor import PredictorRecipe, train_predictor_into

    data = _data(tmp_path, "layout", 12)
    path = train_predictor_into(tmp_path / "p", data, PredictorRecipe(steps=2, batch_size=2, width=4, feature_dim=8))
    ext, source = resolve_extractor(data=data, extractor=str(path))
    assert metric_name(ext) == "FD-pairs-layout-cnn" and metric_name(ext, kernel=True) == "KD-pairs-layout-cnn"
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    assert frechet_distance(x, x, ext) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(IQVAEError, match="--extractor"):
        resolve_extractor(data=data, extractor=str(tmp_path / "pairs-layout"))  # not a checkpoint


def test_a_text_dataset_gets_a_thumbnail_only_feature_network():
    from iqvae.data.config import DataConfig
    from iqvae.models.predictor import ConditionPredictor
    from iqvae.train.predictor import objective

    assert objective(DataConfig(dataset="pairs", cond="text")) == "thumb"
    assert objective(DataConfig(dataset="pairs", cond="layout")) == "layout"
    m = ConditionPredictor(None, 16, width=4, feature_dim=8, thumb=2, name="pairs-thumb-cnn").eval()
    dense, thumb = m.outputs(torch.zeros(2, 3, 16, 16))
    assert dense is None and thumb.shape == (2, 3, 2, 2) and m(torch.zeros(2, 3, 16, 16)).shape == (2, 8)
    with pytest.raises(IQVAEError, match="predicts no condition"):
        m.predict(torch.zeros(1, 3, 16, 16))
    with pytest.raises(IQVAEError, match="spatial conditions only"):
        ConditionPredictor({"modality": "text", "channels": 5, "length": 3, "vocab": None}, 16)


# ------------------------------------------------------------------------------------ evaluation: entry and floor
class _Stub:
    """A 'predictor' that reads back fixed conditions: the entry must score exactly those."""

    name = "stub"

    def __init__(self, fake_answer, real_answer):
        self.answers = {"fake": fake_answer, "real": real_answer}

    def predict(self, x):
        return self.answers["fake" if x.shape[0] == self.answers["fake"].shape[0] else "real"]


def test_control_entry_scores_samples_and_the_oracle():
    from iqvae.evaluation.control import control_entry
    from iqvae.evaluation.samples import SampleSet

    images, seg = _shapes("seg", 3)
    fake = images[:, None].repeat(1, 2, 1, 1, 1)  # 2 "samples" per condition
    s = SampleSet(fake, images, list(seg), [{}] * 3, [0, 1, 2])
    wrong = torch.zeros(6, 32, 32, dtype=torch.int64)
    e = control_entry("seg", s, predictor=_Stub(wrong, seg))
    assert e["metric"] == "miou" and e["real"] == 1.0 and e["higher_is_better"]
    assert e["samples"] == pytest.approx(miou(wrong, seg.repeat_interleave(2, 0)))
    assert control_entry("seg", s)["available"] is False
    _, edges = _shapes("edge", 3)
    s = SampleSet(fake, images, list(edges), [{}] * 3, [0, 1, 2])
    e = control_entry("edge", s)
    assert e["samples"] == pytest.approx(e["real"]) == pytest.approx(canny_f1(images, edges)["mean"])
    assert e["real_tol1"] == pytest.approx(canny_f1(images, edges, tolerance=1)["mean"])
    text = control_entry("text", s, shapes={"available": False, "reason": "x"}, dataset="cub200")
    assert not text["available"] and "cub200" in text["reason"]
    shapes = {"available": True, "samples": {"scene_accuracy": 0.25}, "real": {"scene_accuracy": 1.0}}
    assert control_entry("audio", s, shapes=shapes)["samples"] == 0.25


def test_fd_floor_sets_and_value():
    from iqvae.evaluation.control import fd_floor, floor_indices
    from iqvae.metrics.fd import FlatFeatures, frechet_distance

    assert floor_indices(100, 16, 128) == (range(16), range(16, 100))
    assert floor_indices(100, 16, 8) == (range(16), range(16, 24))
    assert floor_indices(10, 10, 8) == (range(5), range(5, 10))  # no reals left: the split's two halves
    assert floor_indices(3, 3, 8) is None
    ds = [type("S", (), {"image": torch.rand(3, 4, 4) * 2 - 1})() for _ in range(20)]
    real = torch.stack([d.image for d in ds[:6]])
    ext = FlatFeatures((3, 4, 4))
    f = fd_floor(ds, real, 9, ext)
    want = frechet_distance(real, torch.stack([d.image for d in ds[6:15]]), ext)
    assert (f["set_a"], f["set_b"]) == (6, 9) and f["value"] == pytest.approx(want, rel=1e-9)
    assert fd_floor(ds[:3], real[:3], 9, ext)["available"] is False


# ------------------------------------------------------------------------------------------------ the export
@pytest.mark.parametrize("cond", ["seg", "edge", "keypoints", "layout", "text"])
def test_export_reads_back_as_the_worlds_tensors(tmp_path, cond):
    from iqvae.data.config import DataConfig, build_dataset
    from iqvae.data.export import export_pairs
    from iqvae.data.shapes import ShapesWorld

    export_pairs(tmp_path / "d", cond, 24, resolution=16)
    world = ShapesWorld(16)
    for split in ("train", "test"):
        ds = build_dataset(DataConfig(dataset="pairs", root=str(tmp_path / "d"), cond=cond, resolution=16), split)
        for i in range(len(ds)):
            s = ds[i]
            ref = world.sample("train", int(s.meta["key"].split("-")[1]), (cond,))
            torch.testing.assert_close(s.image, ref.image, atol=1e-6, rtol=0)
            if cond == "text":
                assert s.extra["caption"] == ref.extra["caption"]
            else:
                torch.testing.assert_close(s.cond[cond], ref.cond[cond], atol=1e-6, rtol=0)
    with pytest.raises(IQVAEError, match="--out"):
        export_pairs(tmp_path / "d", cond, 2)
    with pytest.raises(IQVAEError, match="--cond"):
        export_pairs(tmp_path / "e", "audio", 2)
