"""Exact Shapes metrics: ~1 on true samples of the world, clearly lower on corrupted ones."""

import copy

import numpy as np
import pytest
import torch

from iqvae.data.record import collate
from iqvae.data.shapes import (
    CLASS_NAMES,
    COLOURS,
    OBJECT_CLASSES,
    PALETTES,
    ShapesDataset,
    image_to_tensor,
    render_scene,
    resample_colours,
    scene_meta,
)
from iqvae.errors import DataError
from iqvae.metrics.shapes import (
    code_colour_purity,
    iou_per_class,
    mask_adherence,
    miou_of_maps,
    mode_coverage,
    nearest_colour,
    object_colours,
    palette_accuracy,
    recover_segmentation,
)


@pytest.fixture(scope="module")
def batch32():
    ds = ShapesDataset("val", 120, 32, ("seg",))
    return collate([ds[i] for i in range(120)])


def _render(metas):
    return torch.stack([image_to_tensor(render_scene(m)[0]) for m in metas])


def _wrong_class_colours(meta):
    """Each object painted with a colour of the next class's palette (a colour it is never allowed)."""
    out = copy.deepcopy(meta)
    for o in out["objects"]:
        other = OBJECT_CLASSES[o["class"] % len(OBJECT_CLASSES)]  # class c -> class c + 1 (cross -> circle)
        assert other != o["class_name"]
        o["rgb"] = list(COLOURS[PALETTES[other][o["colour"]]])
    return out


def test_nearest_colour_oracle():
    for c in OBJECT_CLASSES:
        for i, name in enumerate(PALETTES[c]):
            cls, idx = nearest_colour(torch.tensor(COLOURS[name], dtype=torch.float32))
            assert (int(cls), int(idx)) == (CLASS_NAMES.index(c), i)
    cls, idx = nearest_colour(torch.tensor([[40.0, 40, 40], [128, 128, 128], [215, 215, 215]]))
    assert cls.tolist() == [0, 0, 0] and idx.tolist() == [-1, -1, -1]
    # 45 units away from red towards grey is still red; the margin is documented as >= 52.
    cls, _ = nearest_colour(torch.tensor([255.0 - 30, 26, 26]))
    assert int(cls) == CLASS_NAMES.index("circle")


def test_iou_per_class_small_example():
    pred = torch.tensor([[0, 1], [1, 2]])
    tgt = torch.tensor([[0, 1], [2, 2]])
    assert iou_per_class(pred, tgt) == {0: 1.0, 1: 0.5, 2: 0.5}


def test_miou_protocols_on_a_stray_pixel():
    """A map with one stray pixel of a class the target lacks: the per-image protocol gives that class IoU 0 in the
    map's mean, the dataset protocol weighs it by its one pixel (closed forms)."""
    tgt = torch.zeros(2, 4, 4, dtype=torch.long)
    tgt[:, :2, :2] = 1  # a 4-pixel object of class 1 in both maps
    pred = tgt.clone()
    pred[0, 3, 3] = 2  # one stray pixel of class 2 in map 0
    assert miou_of_maps(pred, tgt, "image") == pytest.approx(((11 / 12 + 1 + 0) / 3 + 1) / 2)
    assert miou_of_maps(pred, tgt, "dataset") == pytest.approx((23 / 24 + 1 + 0) / 3)  # class 2: union 1, inter 0
    # a set whose targets hold every class somewhere (as any real evaluation set does): the stray pixel of class 2
    # in map 0 costs map 0 a third of its per-image mIoU, but only 1 pixel of class 2's summed union of 257
    big = torch.zeros(2, 64, 64, dtype=torch.long)
    big[:, :32, :32] = 1
    big[1, 48:64, 48:64] = 2
    big_pred = big.clone()
    big_pred[0, 63, 63] = 2
    assert miou_of_maps(big_pred, big, "image") == pytest.approx(((3071 / 3072 + 1 + 0) / 3 + 1) / 2)
    assert miou_of_maps(big_pred, big, "dataset") == pytest.approx((5887 / 5888 + 1 + 256 / 257) / 3)
    with pytest.raises(DataError, match="protocol"):
        miou_of_maps(pred, tgt, "pixels")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="label maps"):
        miou_of_maps(pred.float(), tgt)


def test_true_samples_score_one(batch32):
    assert palette_accuracy(batch32.image, batch32.meta) == pytest.approx(1.0, abs=0.02)
    assert mask_adherence(batch32.image, batch32.cond["seg"]) >= 0.98
    rec = recover_segmentation(batch32.image)
    assert rec.dtype == torch.int64 and rec.shape == (120, 32, 32)
    assert (rec == batch32.cond["seg"]).float().mean() >= 0.999


def test_true_samples_score_one_at_64_and_resampled_colours():
    ds = ShapesDataset("test", 20, 64, ("seg",))
    b = collate([ds[i] for i in range(20)])
    assert palette_accuracy(b.image, b.meta) >= 0.98 and mask_adherence(b.image, b.cond["seg"]) >= 0.98
    alt = [resample_colours(m, seed=7) for m in b.meta]
    imgs = _render(alt)
    assert palette_accuracy(imgs, alt) >= 0.98 and mask_adherence(imgs, b.cond["seg"]) >= 0.98


def test_wrong_colours_score_low(batch32):
    wrong = [_wrong_class_colours(m) for m in batch32.meta]
    imgs = _render(wrong)
    assert palette_accuracy(imgs, batch32.meta) <= 0.05
    assert mask_adherence(imgs, batch32.cond["seg"]) < 0.7
    # Channel-shuffled images (R, G, B) -> (G, B, R) are wrong too.
    assert palette_accuracy(batch32.image[:, [1, 2, 0]], batch32.meta) <= 0.1


def test_shifted_masks_score_low(batch32):
    shifted = torch.roll(batch32.image, shifts=(5, 5), dims=(2, 3))
    assert mask_adherence(shifted, batch32.cond["seg"]) < 0.6
    assert palette_accuracy(shifted, batch32.meta) < 0.6
    # Shifting the condition instead of the image gives the same verdict.
    assert mask_adherence(batch32.image, torch.roll(batch32.cond["seg"], 5, dims=2)) < 0.6


def test_blank_grey_image_scores_zero(batch32):
    grey = torch.zeros_like(batch32.image)
    assert palette_accuracy(grey, batch32.meta) == 0.0
    assert mask_adherence(grey, batch32.cond["seg"]) < 0.6


def test_mode_coverage_many_samples_of_one_condition():
    meta = scene_meta("val", 3)
    metas = [resample_colours(meta, seed=s) for s in range(24)]
    assert mode_coverage(_render(metas), meta) == 1.0
    # All samples with one colour: 1 / len(palette) = 1/3; two colours: 2/3.
    n = len(meta["objects"])
    one = [resample_colours(meta, seed=s, colours=[1] * n) for s in range(6)]
    assert mode_coverage(_render(one), meta) == pytest.approx(1 / 3)
    two = [resample_colours(meta, seed=s, colours=[s % 2] * n) for s in range(6)]
    assert mode_coverage(_render(two), meta) == pytest.approx(2 / 3)
    # Wrong-class colours do not count as covered modes.
    assert mode_coverage(_render([_wrong_class_colours(m) for m in metas]), meta) == 0.0


def test_object_colours_report():
    meta = scene_meta("train", 2)
    img = _render([meta])
    rows = object_colours(img, [meta])[0]
    assert len(rows) == len(meta["objects"])
    for r, o in zip(rows, meta["objects"]):
        assert r["correct"] and r["nearest_colour"] == o["colour"] and r["pixels"] > 0
        assert np.linalg.norm(np.array(r["mean_rgb"]) - np.array(o["rgb"])) < 25


def test_metrics_reject_bad_input(batch32):
    with pytest.raises(DataError, match=r"\(B, 3, H, H\)"):
        palette_accuracy(batch32.image[:, :2], batch32.meta)
    with pytest.raises(DataError, match="scene descriptions"):
        palette_accuracy(batch32.image[:3], batch32.meta[:2])
    with pytest.raises(DataError, match="seg must be"):
        mask_adherence(batch32.image, batch32.cond["seg"][:, :16])


def _cells_by_brute_force(metas, res, h):
    """(b, row, col, colour id) of every latent cell whose f x f pixel patch lies inside one object, by loops."""
    from iqvae.data.shapes import render_instance_map

    f, names, out = res // h, list(COLOURS), []
    for b, meta in enumerate(metas):
        inst = render_instance_map(meta, res)
        for r in range(h):
            for c in range(h):
                patch = set(inst[r * f : (r + 1) * f, c * f : (c + 1) * f].ravel().tolist())
                if len(patch) == 1 and 0 not in patch:
                    out.append((b, r, c, names.index(meta["objects"][patch.pop() - 1]["colour_name"])))
    return out


def test_code_colour_purity_against_brute_force(batch32):
    metas, h = batch32.meta[:40], 16
    cells = _cells_by_brute_force(metas, 32, h)
    colours = sorted({k for *_, k in cells})
    # codes = colour id: purity 1, one code per colour
    idx = torch.full((40, h, h), 99, dtype=torch.long)
    for b, r, c, k in cells:
        idx[b, r, c] = k
    assert code_colour_purity(idx, metas, 32) == pytest.approx({"code_colour_purity": 1.0, "codes_per_colour": 1.0})
    # each colour split evenly over two codes by column parity: still pure; exp(H) = 2 where both codes occur
    for b, r, c, k in cells:
        idx[b, r, c] = 2 * k + (c % 2)
    got = code_colour_purity(idx, metas, 32)
    per = []
    for k in colours:
        n = np.bincount([c % 2 for _, _, c, kk in cells if kk == k], minlength=2)
        p = n[n > 0] / n.sum()
        per.append(np.exp(-(p * np.log(p)).sum()))
    assert got["code_colour_purity"] == pytest.approx(1.0)
    assert got["codes_per_colour"] == pytest.approx(float(np.mean(per)))
    # one code for everything: purity = share of the most frequent colour
    counts = np.bincount([k for *_, k in cells])
    got = code_colour_purity(torch.zeros(40, h, h, dtype=torch.long), metas, 32)
    assert got == pytest.approx({"code_colour_purity": counts.max() / counts.sum(), "codes_per_colour": 1.0})
    with pytest.raises(DataError, match="multiple of the token grid"):
        code_colour_purity(idx[:, :12, :12], metas, 32)
    with pytest.raises(DataError, match="one scene description"):
        code_colour_purity(idx, metas[:3], 32)
