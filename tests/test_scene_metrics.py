"""Scene accuracy (iqvae.metrics.scene): 1 on true images of every kind, known lower values on hand-corrupted ones,
and the exact assignment against brute force (all permutations) and scipy."""

import copy
import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from iqvae.data import shapes as S
from iqvae.errors import DataError
from iqvae.metrics.scene import (
    FoundObject,
    assign,
    cell_of,
    default_min_pixels,
    described_objects,
    find_objects,
    match,
    scene_metrics,
    scene_mode_coverage,
    scene_report,
    scene_scores,
)

MID = (1 / 6, 1 / 2, 5 / 6)  # the middles of the three thirds


def obj(name, col, row, r=0.12, colour=0):
    """An object of class ``name`` centred in the middle of cell (row, col)."""
    cls = S.CLASS_NAMES.index(name)
    return {"class": cls, "class_name": name, "rgb": list(S.COLOURS[S.PALETTES[name][colour]]),
            "geom": {"cx": MID[col], "cy": MID[row], "r": r}, "shade": {"angle": 0.3, "amp": 6.0}}


def scene(objects, kind="stripes", res=32):
    bg = {"kind": kind, "grey": [70.0, 150.0], "angle": 0.7, "period": 0.12, "phase": 0.3}
    return {"resolution": res, "background": bg, "noise_seed": 5, "objects": objects}


def image(meta):
    return S.image_to_tensor(S.render_scene(meta)[0])


def scores(rendered, described):
    return scene_scores(torch.stack([image(rendered)]), [described])


THREE = [obj("circle", 0, 0), obj("square", 2, 1), obj("ring", 1, 2)]


@pytest.mark.parametrize("res", [32, 16, 64])
def test_true_images_score_one(res):
    n = {32: 600, 16: 100, 64: 60}[res]
    metas = [S.scene_meta(split, i, res) for split in ("train", "val", "test") for i in range(n)]
    kinds = Counter(m["background"]["kind"] for m in metas)
    assert set(kinds) == set(S.BACKGROUNDS) and min(kinds.values()) > len(metas) / 5
    assert {len(m["objects"]) for m in metas} == {1, 2, 3, 4}
    imgs = torch.stack([S.image_to_tensor(S.render_scene(m)[0]) for m in metas])
    assert scene_scores(imgs, metas) == {"scene_accuracy": 1.0, "scene_precision": 1.0, "scene_recall": 1.0}
    # recoloured copies (other palette colours, shading and noise) too
    recol = [S.resample_colours(m, seed=3) for m in metas[:60]]
    imgs = torch.stack([S.image_to_tensor(S.render_scene(m)[0]) for m in recol])
    assert scene_scores(imgs, recol)["scene_accuracy"] == 1.0


def test_cells_are_the_caption_positions():
    for i in range(40):
        m = S.scene_meta("test", i)
        words = [S.POSITION_WORDS[d.cell[0]][d.cell[1]] for d in described_objects(m)]
        cap = S.caption(m)
        for o, w in zip(m["objects"], words):
            assert f"{o['class_name']} at the {w}" in cap


def test_backgrounds_alone_have_no_objects():
    for kind in S.BACKGROUNDS:
        for res in (16, 32, 64):
            assert find_objects(image(scene([], kind, res))) == []
    # an image with no object at all: nothing found, nothing right
    assert scores(scene([]), scene(THREE)) == {"scene_accuracy": 0.0, "scene_precision": 0.0, "scene_recall": 0.0}


@pytest.mark.parametrize("kind", S.BACKGROUNDS)
def test_corruptions_score_known_values(kind):
    true = scene(THREE, kind)
    assert scores(true, true) == {"scene_accuracy": 1.0, "scene_precision": 1.0, "scene_recall": 1.0}
    # repainted in another class's colour (the square painted as a cross): 2 of 3 right, 2 of 3 found objects right
    repaint = copy.deepcopy(true)
    repaint["objects"][1]["rgb"] = list(S.COLOURS["lime"])
    assert scores(repaint, true) == pytest.approx({"scene_accuracy": 2 / 3, "scene_precision": 2 / 3,
                                                   "scene_recall": 2 / 3})
    # repainted in another colour of its own class: still right
    own = copy.deepcopy(true)
    own["objects"][1]["rgb"] = list(S.COLOURS["teal"])
    assert scores(own, true)["scene_accuracy"] == 1.0
    # moved to another cell (circle from top left to top centre)
    moved = copy.deepcopy(true)
    moved["objects"][0]["geom"]["cx"] = MID[1]
    assert scores(moved, true) == pytest.approx({"scene_accuracy": 2 / 3, "scene_precision": 2 / 3,
                                                 "scene_recall": 2 / 3})
    # erased: 2 of 3 described objects right, both found objects right
    erased = scene(THREE[:1] + THREE[2:], kind)
    assert scores(erased, true) == pytest.approx({"scene_accuracy": 2 / 3, "scene_precision": 1.0,
                                                  "scene_recall": 2 / 3})
    # an extra object painted: every described object right, 3 of 4 found objects right
    extra = scene(THREE + [obj("cross", 0, 2)], kind)
    assert scores(extra, true) == pytest.approx({"scene_accuracy": 1.0, "scene_precision": 3 / 4,
                                                 "scene_recall": 1.0})


def test_accuracy_averages_images_recall_pools_objects():
    one = scene(THREE[:1])
    three = scene(THREE)
    imgs = torch.stack([image(one), image(scene(THREE[:1]))])
    # image 1: 1 of 1 right; image 2: 1 of 3 right (only the circle is painted)
    got = scene_scores(imgs, [one, three])
    assert got == pytest.approx({"scene_accuracy": (1 + 1 / 3) / 2, "scene_precision": 1.0, "scene_recall": 2 / 4})


def test_occluded_object_cut_in_pieces_is_one_object():
    # a large square behind a large cross whose horizontal arm cuts it in two
    square = obj("square", 1, 1, r=0.2)
    cross = obj("cross", 1, 1, r=0.24)
    meta = scene([square, cross])
    _, inst = S.render_scene(meta)
    import cv2

    n, _ = cv2.connectedComponents((inst == 1).astype(np.uint8), connectivity=8)
    assert n - 1 >= 2  # the square's visible part really is in pieces
    found = find_objects(image(meta))
    assert sorted(f.cls for f in found) == [2, 6]
    assert scores(meta, meta)["scene_accuracy"] == 1.0


def test_noise_pixels_are_not_objects():
    meta = scene(THREE)
    img = image(meta)
    img[:, 30, 1] = torch.tensor([1.0, -1.0, 1.0])  # one magenta pixel (a triangle colour) far from the objects
    img[:, 31, 30:32] = torch.tensor([-1.0, 1.0, 1.0])[:, None]  # two cyan (ring) pixels
    assert default_min_pixels(32) == 4
    assert len(find_objects(img)) == 3
    assert len(find_objects(img, min_pixels=1)) == 5
    assert scene_scores(img[None], [meta])["scene_precision"] == 1.0


def test_found_object_geometry():
    meta = scene([obj("triangle", 2, 0, r=0.15)], "flat")
    (f,) = find_objects(image(meta))
    assert f.cls == 3 and f.colour == 0 and f.cell == (0, 2)
    # box centre = the world's centre within half a pixel; size = r within a pixel; triangle centroid lies r/3 lower
    x0, y0, x1, y1 = f.box
    assert abs((x0 + x1) / 2 - MID[2]) <= 0.5 / 32 and abs((y0 + y1) / 2 - MID[0]) <= 0.5 / 32
    assert abs(f.size - 0.15) <= 1 / 32
    assert f.centroid[1] - MID[0] == pytest.approx(0.15 / 3, abs=1 / 32)
    assert f.centre_range[0][0] == f.centre_range[0][1]  # nothing touches it: a single centre


def _brute_force(cost):
    k, n = cost.shape
    if k <= n:
        return min(sum(cost[i, p[i]] for i in range(k)) for p in itertools.permutations(range(n), k))
    return min(sum(cost[p[j], j] for j in range(n)) for p in itertools.permutations(range(k), n))


def test_assign_is_exact():
    rng = np.random.default_rng(0)
    for _ in range(300):
        k, n = (int(v) for v in rng.integers(0, 6, 2))
        cost = rng.integers(0, 5, (k, n)).astype(float) + rng.random((k, n)) * (rng.random() < 0.5)
        pairs = assign(cost)
        assert len(pairs) == min(k, n)
        assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs)
        if pairs:
            assert sum(cost[i, j] for i, j in pairs) == pytest.approx(_brute_force(cost), abs=1e-12)
    with pytest.raises(DataError, match="matrix"):
        assign(np.zeros(3))


def test_assign_agrees_with_scipy():
    linear_sum_assignment = pytest.importorskip("scipy.optimize").linear_sum_assignment
    rng = np.random.default_rng(1)
    for _ in range(100):
        k, n = int(rng.integers(1, 5)), int(rng.integers(1, 12))
        cost = rng.random((k, n)) if rng.random() < 0.5 else rng.random((n, k))
        r, c = linear_sum_assignment(cost)
        assert sum(cost[i, j] for i, j in assign(cost)) == pytest.approx(cost[r, c].sum(), abs=1e-12)


def _random_found(rng, cls):
    lo = rng.random(2) * 0.9
    hi = lo + rng.random(2) * 0.2 * (rng.random() < 0.5)
    return FoundObject(cls, 0, 10, (0, 0), (0, 0, 0, 0), ((lo[0], hi[0]), (lo[1], hi[1])), 0.1)


def test_match_finds_the_most_right_pairs():
    """Against all one-to-one pairings: the number of right pairs is the largest there is."""
    rng = np.random.default_rng(2)
    for _ in range(300):
        described = [described_objects({"objects": [{"class": int(c), "geom": {"cx": x, "cy": y, "r": 0.15}}]})[0]
                     for c, x, y in zip(rng.choice(6, int(rng.integers(1, 5)), replace=False) + 1,
                                        rng.random(4), rng.random(4))]
        found = [_random_found(rng, int(rng.integers(1, 7))) for _ in range(int(rng.integers(0, 6)))]
        tol = 1 / 32
        ok = [[f.cls == d.cls and f.cell_distance(d.cell, tol) <= 0 for f in found] for d in described]
        k = min(len(described), len(found))
        best = max((sum(ok[i][p[i]] for i in range(len(described)) if p[i] is not None)
                    for p in _injections(len(described), len(found))), default=0)
        got = match(described, found, tol)
        assert sum(p["right"] for p in got) == best
        assert sum(p["found"] is not None for p in got) == k
        assert all(p["right"] == ok[i][p["found"]] for i, p in enumerate(got) if p["found"] is not None)


def _injections(k, n):
    """Every partial one-to-one map of k described objects into n found objects (None: unmatched)."""
    for p in itertools.permutations(list(range(n)) + [None] * k, k):
        yield p


def test_cell_of_and_errors():
    assert cell_of(0.1, 0.9) == (2, 0) and cell_of(0.5, 0.5) == (1, 1) and cell_of(0.34, 0.2) == (0, 1)
    with pytest.raises(DataError, match="scene descriptions"):
        scene_scores(torch.zeros(2, 3, 32, 32), [scene(THREE)])
    with pytest.raises(DataError, match="meta"):
        described_objects({"objects": [{"class": 1}]})
    with pytest.raises(DataError, match="no object"):
        scene_scores(torch.zeros(1, 3, 32, 32), [scene([])])
    r = scene_report(image(scene(THREE)), scene(THREE))
    assert r["right"] == 3 and [p["found"] is not None for p in r["pairs"]] == [True] * 3


def test_modalities_declare_their_fit_metrics():
    from iqvae.modalities import get_modality

    for m in ("seg", "edge", "keypoints", "layout"):
        assert get_modality(m).fit_metrics == ("palette_accuracy", "mask_miou", "mode_coverage")
    for m in ("text", "audio"):
        assert get_modality(m).fit_metrics == ("scene_accuracy", "scene_mode_coverage")


def _renders(metas):
    return torch.stack([image(m) for m in metas])


def test_scene_mode_coverage_agrees_with_mode_coverage_on_true_images():
    from iqvae.metrics.shapes import mode_coverage

    for i in range(30):
        meta = S.scene_meta("test", i)
        n = len(meta["objects"])
        for k, colours in enumerate(([0] * n, [2] * n, None)):  # one colour, another, drawn at random
            metas = [S.resample_colours(meta, seed=s, colours=colours) for s in range(2 + 4 * k)]
            imgs = _renders(metas)
            assert scene_mode_coverage(imgs, meta) == pytest.approx(mode_coverage(imgs, meta))
        if i < 5:  # enough draws see every colour
            assert scene_mode_coverage(_renders([S.resample_colours(meta, seed=s) for s in range(40)]), meta) == 1


def test_scene_mode_coverage_counts_right_objects_anywhere_in_their_cell():
    from iqvae.metrics.shapes import mode_coverage

    described = scene(THREE)
    moved = copy.deepcopy(described)
    for o, (dx, dy) in zip(moved["objects"], ((0.04, 0.03), (-0.04, 0.02), (0.05, -0.04))):
        o["geom"]["cx"] += dx
        o["geom"]["cy"] += dy
    assert [d.cell for d in described_objects(moved)] == [d.cell for d in described_objects(described)]
    # circle in colours 0, 1, 1; square 0, 0, 0; ring 2, 1, 0 (brute force: 2/3, 1/3, 3/3)
    plans = [(0, 0, 2), (1, 0, 1), (1, 0, 0)]
    metas = [S.resample_colours(moved, seed=s, colours=c) for s, c in enumerate(plans)]
    imgs = _renders(metas)
    assert scene_mode_coverage(imgs, described) == pytest.approx((2 / 3 + 1 / 3 + 1) / 3)
    assert mode_coverage(imgs, described) < scene_mode_coverage(imgs, described)  # the pixels moved, not the cells
    # an object of the wrong class, or in the wrong cell, adds no colour; a missing one adds nothing either
    wrong = copy.deepcopy(metas[2])
    wrong["objects"][0] = {**obj("cross", 0, 0, colour=2), "geom": dict(wrong["objects"][0]["geom"])}  # circle -> cross
    far = copy.deepcopy(metas[2])
    far["objects"][2]["geom"]["cx"] = MID[2]  # the ring leaves the left column
    missing = copy.deepcopy(metas[1])
    del missing["objects"][1]
    imgs = _renders([metas[0], wrong, far, missing])
    # circle: 0 (image 0), 1 (far, missing; `wrong` has a cross there) -> 2/3; square 0 -> 1/3; ring 2 (image 0),
    # 0 (wrong), 1 (missing; `far` moved it out of its cell) -> 3/3
    assert scene_mode_coverage(imgs, described) == pytest.approx((2 / 3 + 1 / 3 + 1) / 3)
    # without the one right ring of colour 0 (`wrong`), the ring has 2 of its 3 colours
    imgs = _renders([metas[0], far, missing])
    assert scene_mode_coverage(imgs, described) == pytest.approx((2 / 3 + 1 / 3 + 2 / 3) / 3)
    with pytest.raises(DataError, match="no object"):
        scene_mode_coverage(imgs, scene([]))
    with pytest.raises(DataError, match="one condition"):
        scene_mode_coverage(imgs[0], described)


def test_scene_metrics_is_scores_and_coverage_in_one_pass():
    metas = [S.scene_meta("val", i) for i in range(4)]
    draws = [[S.resample_colours(m, seed=s) for s in range(3)] for m in metas]
    draws[1][0] = _wrong_cell(draws[1][0])
    imgs = torch.stack([_renders(d) for d in draws])
    flat, flat_metas = imgs.reshape(-1, *imgs.shape[2:]), [m for m in metas for _ in range(3)]
    want = {**scene_scores(flat, flat_metas),
            "scene_mode_coverage": float(np.mean([scene_mode_coverage(x, m) for x, m in zip(imgs, metas)]))}
    assert scene_metrics(imgs, metas) == want and want["scene_accuracy"] < 1
    with pytest.raises(DataError, match="one description per condition"):
        scene_metrics(flat, flat_metas)


def _wrong_cell(meta):
    out = copy.deepcopy(meta)
    g = out["objects"][0]["geom"]
    g["cx"] = 1 - g["cx"] if abs(g["cx"] - 0.5) > 0.2 else (g["cx"] + 0.4) % 1
    return out
