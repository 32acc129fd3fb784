"""FD / KD arithmetic against closed forms, naming, and the small feature classifier."""

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from iqvae.checkpoint import save_checkpoint
from iqvae.errors import IQVAEError
from iqvae.metrics.fd import (
    FlatFeatures,
    frechet_distance,
    kid,
    load_feature_classifier,
    metric_name,
    objects_target_builder,
    save_feature_classifier,
    train_feature_classifier,
)


def _gaussian_images(n, mean, scale, seed):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, 6, generator=g) @ scale + mean  # correlated 6-d Gaussian features
    return f.view(n, 3, 1, 2)


def closed_form_fd(fa, fb):
    m1, m2 = fa.mean(0), fb.mean(0)
    s1, s2 = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def unbiased_mmd2(fa, fb):
    d = fa.shape[1]
    k = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    m = fa.shape[0]
    kxx, kyy, kxy = k(fa, fa), k(fb, fb), k(fa, fb)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.sum() / m ** 2)


def test_fd_matches_closed_form_with_scipy_sqrtm():
    scale = torch.eye(6) + 0.3 * torch.ones(6, 6)
    a = _gaussian_images(300, 0.0, scale, 1)
    b = _gaussian_images(200, torch.tensor([0.5, 0, 0, -0.2, 0, 1.0]), 0.7 * scale.T, 2)
    ext = FlatFeatures((3, 1, 2))
    ours = frechet_distance(a, b, ext, batch_size=64)
    ref = closed_form_fd(a.flatten(1).double().numpy(), b.flatten(1).double().numpy())
    assert ours == pytest.approx(ref, rel=1e-7, abs=1e-9)
    assert ref > 0.5
    # same set -> 0 (up to round-off); batches given as an iterable give the same number
    assert abs(frechet_distance(a, a.clone(), ext)) < 1e-9
    assert frechet_distance(iter(a.split(37)), iter(b.split(50)), ext) == pytest.approx(ours, rel=1e-9)
    assert metric_name(ext) == "FD-pixels" and metric_name(ext, kernel=True) == "KD-pixels"


def test_kid_matches_unbiased_mmd_and_is_near_zero_for_same_distribution():
    scale = torch.eye(6)
    a = _gaussian_images(120, 0.0, scale, 1)
    b = _gaussian_images(120, 0.4, scale, 2)
    ext = FlatFeatures((3, 1, 2))
    # subset_size = N: every subset is the whole set in another order, so the value is the full-set MMD^2
    mean, std = kid(a, b, ext, subset_size=120, subsets=3)
    ref = unbiased_mmd2(a.flatten(1).double().numpy(), b.flatten(1).double().numpy())
    assert mean == pytest.approx(ref, rel=1e-6) and std == pytest.approx(0.0, abs=1e-9)
    assert ref > 0.05
    # an independent draw of the same distribution: close to 0 (unbiased estimator), far below the shifted set
    a2 = _gaussian_images(120, 0.0, scale, 3)
    same, _ = kid(a, a2, ext, subset_size=60, subsets=20, seed=1)
    shifted, _ = kid(a, b, ext, subset_size=60, subsets=20, seed=1)
    assert abs(same) < shifted / 5
    # seeded: the same seed gives the same subsets
    assert kid(a, b, ext, subset_size=60, subsets=5, seed=4) == kid(a, b, ext, subset_size=60, subsets=5, seed=4)


def test_errors():
    ext = FlatFeatures((3, 1, 2))
    a = _gaussian_images(10, 0.0, torch.eye(6), 1)
    with pytest.raises(IQVAEError, match="at least 2"):
        frechet_distance(a, a[:1], ext)
    with pytest.raises(IQVAEError, match="subset_size 20"):
        kid(a, a, ext, subset_size=20)

    class NoDim(nn.Module):
        def forward(self, x):
            return x.flatten(1)

    with pytest.raises(IQVAEError, match="num_features"):
        frechet_distance(a, a, NoDim())


# ---- the small feature classifier on the Shapes world -------------------------------------------------------------

shapes = pytest.importorskip("iqvae.data.shapes")


@pytest.fixture(scope="module")
def trained():
    ds = shapes.ShapesDataset("train", 256, 32, modalities=("seg",))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny CNN trains faster on one thread when the cores are shared
    try:
        model = train_feature_classifier(ds, steps=150, batch_size=32, seed=0, width=16, feature_dim=16)
    finally:
        torch.set_num_threads(threads)
    return ds, model


def _images(world, metas):
    return torch.stack([world.sample_from_meta(m, ("seg",)).image for m in metas])


def test_classifier_learns_classes_and_colours(trained):
    _, model = trained
    val = shapes.ShapesDataset("val", 96, 32, modalities=("seg",))
    target = objects_target_builder(6, 3)
    assert target.num_outputs == 24 and model.config["num_outputs"] == 24  # 6 classes + 6 x 3 (class, colour)
    items = [val[i] for i in range(len(val))]
    x = torch.stack([s.image for s in items])
    y = torch.stack([target(s) for s in items])
    with torch.no_grad():
        logits = model.logits(x)
    # the best image-blind predictor outputs the per-entry prevalence (measured on these very targets); its BCE is
    # the mean binary entropy of the prevalences.  A trained model must beat it clearly on unseen scenes.
    p = y.mean(0).clamp(1e-6, 1 - 1e-6)
    blind = float(-(p * p.log() + (1 - p) * (1 - p).log()).mean())
    assert float(F.binary_cross_entropy_with_logits(logits, y)) < 0.92 * blind
    assert model.num_features == 16 and model(x[:4]).shape == (4, 16)


def test_classifier_features_see_colour(trained):
    ds, model = trained
    world = ds.world
    metas_a = [world.meta("val", i) for i in range(128)]
    metas_b = [world.meta("val", 128 + i) for i in range(128)]
    real_a, real_b = _images(world, metas_a), _images(world, metas_b)
    # same scenes as real_b, every object in its first palette colour: a colour-only distribution shift
    one_colour = _images(world, [shapes.resample_colours(m, 0, [0] * len(m["objects"])) for m in metas_b])
    fd_same = frechet_distance(real_a, real_b, model)
    fd_colour = frechet_distance(real_a, one_colour, model)
    assert fd_colour > 2 * fd_same
    assert metric_name(model) == "FD-shapes-cnn"


def test_classifier_checkpoint_roundtrip(trained, tmp_path):
    _, model = trained
    save_feature_classifier(model, tmp_path / "clf", meta={"dataset": "shapes"})
    loaded = load_feature_classifier(tmp_path / "clf")
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(loaded(x), model(x))
    assert loaded.config == model.config and "class, colour" in loaded.target
    save_checkpoint(tmp_path / "other", kind="tokenizer", config={}, model_state={})
    with pytest.raises(IQVAEError, match="feature-classifier"):
        load_feature_classifier(tmp_path / "other")


def test_training_is_deterministic_and_takes_a_target_fn():
    ds = shapes.ShapesDataset("train", 16, 16, modalities=("seg",))
    count = lambda s: torch.tensor([float(len(s.meta["objects"]) >= 2)])  # noqa: E731
    a = train_feature_classifier(ds, steps=3, batch_size=4, seed=5, target_fn=count, width=4, feature_dim=8)
    b = train_feature_classifier(ds, steps=3, batch_size=4, seed=5, target_fn=count, width=4, feature_dim=8)
    assert a.config["num_outputs"] == 1
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k
