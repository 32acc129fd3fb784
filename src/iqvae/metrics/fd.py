"""Fréchet distance (FD / FID) and kernel distance (KD / KID) of image sets under a feature extractor.

Arithmetic is torchmetrics' (``FrechetInceptionDistance`` / ``KernelInceptionDistance`` with ``feature=<module>``):

* FD: features of every image (float64); ``mu``, ``Sigma`` = sample mean and covariance (``N - 1`` denominator) of
  each set; ``FD = ||mu_r - mu_f||^2 + Tr(Sigma_r + Sigma_f) - 2 sum_i sqrt(lambda_i(Sigma_r Sigma_f))``, the last term
  being ``Tr((Sigma_r Sigma_f)^(1/2))`` computed from eigenvalues.  Needs >= 2 images per set.
* KD: unbiased MMD^2 with the cubic polynomial kernel ``k(a, b) = (a.b / d + 1)^3`` between ``subset_size`` random
  features of each set, over ``subsets`` random subsets (drawn with ``torch.randperm`` under a fixed ``seed``);
  reported as mean and population standard deviation over the subsets.

Naming: :func:`metric_name` says "FID" / "KID" only for the standard FID Inception weights (pytorch-fid's
``pt_inception-2015-12-05`` file, checked by hash), and "FD-<extractor name>" / "KD-<extractor name>" otherwise,
e.g. "FD-shapes-cnn" for the small classifier trained here on a dataset, or "FD-inception(random weights)".

Extractors follow the :class:`FeatureExtractor` protocol: an ``nn.Module`` with ``name: str``,
``num_features: int`` and ``forward(images (B, 3, H, W) in [-1, 1]) -> (B, num_features)``.  torchmetrics receives
a thin adapter that runs the extractor without gradients and returns float64 features.

The small CNN (:class:`ShapesClassifier`) is trained to predict, from the image alone, which object classes are
present and which (class, colour) pairs are present (multi-hot, binary cross-entropy), so its penultimate features
respond to both shape and colour.  Targets come from a *target builder* ``Sample -> float tensor``;
:func:`objects_target_builder` builds them from ``Sample.meta["objects"]`` (``class`` in ``1..C``, ``colour`` a
palette index in ``0..P-1``).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import load_checkpoint, save_checkpoint
from ..errors import IQVAEError

Images = Tensor | Iterable[Tensor]


class FeatureExtractor(nn.Module):
    """Protocol (and optional base class) of feature networks for FD / KD; see the module docstring."""

    name: str = "features"
    num_features: int = 0


class FlatFeatures(FeatureExtractor):
    """The flattened pixels as features: pixel-space FD, and an identity extractor to test the arithmetic."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.name = "pixels"
        self.num_features = int(math.prod(shape))

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


class _TorchmetricsAdapter(nn.Module):
    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor
        n = getattr(extractor, "num_features", None)
        if not isinstance(n, int) or n < 1:
            raise IQVAEError(f"feature extractor {type(extractor).__name__} lacks a positive int 'num_features'")
        self.num_features = n

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            f = self.extractor(x)
        if f.dim() != 2 or f.shape[1] != self.num_features:
            raise IQVAEError(f"feature extractor '{getattr(self.extractor, 'name', '?')}' returned shape "
                             f"{tuple(f.shape)}; expected (B, {self.num_features})")
        return f.double()


def metric_name(extractor: nn.Module, kernel: bool = False) -> str:
    """"FID" (or "KID" with ``kernel=True``) only for the standard Inception weights, else "FD-<name>" / "KD-<name>"."""
    if getattr(extractor, "is_standard_fid", False):
        return "KID" if kernel else "FID"
    return f"{'KD' if kernel else 'FD'}-{getattr(extractor, 'name', type(extractor).__name__)}"


def _batches(images: Images, batch_size: int) -> Iterable[Tensor]:
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise IQVAEError(f"expected images as a (N, 3, H, W) tensor; got shape {tuple(images.shape)}")
        for i in range(0, images.shape[0], batch_size):
            yield images[i:i + batch_size]
    else:
        yield from images


def _feed(metric: Any, images: Images, real: bool, batch_size: int, device: torch.device) -> int:
    n = 0
    for b in _batches(images, batch_size):
        metric.update(b.to(device=device, dtype=torch.float32), real=real)
        n += b.shape[0]
    return n


def _device_of(extractor: nn.Module) -> torch.device:
    p = next(iter(extractor.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def frechet_distance(real_images: Images, fake_images: Images, extractor: nn.Module, batch_size: int = 50) -> float:
    """FD between two image sets (tensors ``(N, 3, H, W)`` in ``[-1, 1]`` or iterables of such batches)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    was_training = extractor.training
    extractor.eval()
    try:
        dev = _device_of(extractor)
        metric = FrechetInceptionDistance(feature=_TorchmetricsAdapter(extractor), normalize=True).to(dev)
        n_real = _feed(metric, real_images, True, batch_size, dev)
        n_fake = _feed(metric, fake_images, False, batch_size, dev)
        if n_real < 2 or n_fake < 2:
            raise IQVAEError(f"{metric_name(extractor)} needs at least 2 images per set; got {n_real} real, "
                             f"{n_fake} fake")
        return float(metric.compute())
    finally:
        extractor.train(was_training)


def kid(real: Images, fake: Images, extractor: nn.Module, subset_size: int = 1000, subsets: int = 100,
        seed: int = 0, batch_size: int = 50) -> tuple[float, float]:
    """KD (mean, std over subsets) between two image sets; ``subset_size`` must not exceed either set's size."""
    from torchmetrics.image.kid import KernelInceptionDistance

    was_training = extractor.training
    extractor.eval()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            metric = KernelInceptionDistance(feature=_TorchmetricsAdapter(extractor), subsets=subsets,
                                             subset_size=subset_size, normalize=True)
        dev = _device_of(extractor)
        metric = metric.to(dev)
        n_real = _feed(metric, real, True, batch_size, dev)
        n_fake = _feed(metric, fake, False, batch_size, dev)
        if subset_size > min(n_real, n_fake) or subset_size < 2:
            raise IQVAEError(f"{metric_name(extractor, kernel=True)}: subset_size {subset_size} must be in "
                             f"[2, {min(n_real, n_fake)}] (set sizes: {n_real} real, {n_fake} fake)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mean, std = metric.compute()
        return float(mean), float(std)
    finally:
        extractor.train(was_training)


# --------------------------------------------------------------------------------------------------------------------
# A small CNN feature extractor trained on a dataset's train split.


class ShapesClassifier(FeatureExtractor):
    """Four 3x3 conv stages (widths w, 2w, 4w, 4w; strides 1, 2, 2, 2; BatchNorm + ReLU), global average ⊕ max
    pooling, a linear map to ``feature_dim`` features (the FD features) and a ReLU + linear head of ``num_outputs``
    logits.  BatchNorm runs on its running statistics after training (the extractor is always used in eval mode)."""

    def __init__(self, num_outputs: int, width: int = 32, feature_dim: int = 64, name: str = "shapes-cnn") -> None:
        super().__init__()
        if num_outputs < 1 or width < 1 or feature_dim < 1:
            raise IQVAEError("ShapesClassifier needs positive num_outputs, width and feature_dim")
        w = width
        chans = [3, w, 2 * w, 4 * w, 4 * w]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.BatchNorm2d(chans[i + 1]), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(8 * w, feature_dim)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(feature_dim, num_outputs))
        self.config = {"num_outputs": int(num_outputs), "width": int(width), "feature_dim": int(feature_dim),
                       "name": str(name)}
        self.name = str(name)
        self.num_features = int(feature_dim)

    def features(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise IQVAEError(f"{self.name} expects (B, 3, H, W) images in [-1, 1]; got {tuple(x.shape)}")
        h = self.body(x.float())
        return self.proj(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], 1))

    def logits(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def objects_target_builder(num_classes: int, num_colours: int) -> Callable[[Any], Tensor]:
    """Sample -> multi-hot ``[classes present (C) | (class, colour) pairs present (C * P)]``.

    ``meta["objects"][k]["class"]`` in ``1..C``, ``["colour"]`` in ``0..P-1``.
    """

    def build(sample: Any) -> Tensor:
        t = torch.zeros(num_classes + num_classes * num_colours)
        for o in sample.meta.get("objects", []):
            c, p = int(o["class"]), int(o["colour"])
            if not (1 <= c <= num_classes and 0 <= p < num_colours):
                raise IQVAEError(f"object class {c} / colour {p} outside 1..{num_classes} / 0..{num_colours - 1}")
            t[c - 1] = 1.0
            t[num_classes + (c - 1) * num_colours + p] = 1.0
        return t

    build.num_outputs = num_classes + num_classes * num_colours  # type: ignore[attr-defined]
    build.description = (  # type: ignore[attr-defined]
        f"multi-hot classes ({num_classes}) + (class, colour) pairs ({num_classes}x{num_colours})")
    return build


def _infer_objects_vocab(dataset: Any, scan: int = 256) -> tuple[int, int]:
    n_cls, n_col = 0, 0
    for i in range(min(scan, len(dataset))):
        for o in dataset[i].meta.get("objects", []):
            n_cls, n_col = max(n_cls, int(o["class"])), max(n_col, int(o["colour"]) + 1)
    if n_cls == 0:
        raise IQVAEError("cannot build classifier targets: the dataset's samples have no meta['objects']; "
                         "pass a target_fn")
    return n_cls, n_col


def train_feature_classifier(
    dataset: Any,
    steps: int = 2000,
    batch_size: int = 64,
    seed: int = 0,
    *,
    target_fn: Callable[[Any], Tensor] | None = None,
    num_classes: int | None = None,
    num_colours: int | None = None,
    width: int = 32,
    feature_dim: int = 64,
    lr: float = 5e-3,
    device: str | torch.device = "cpu",
    log: Callable[[int, float], None] | None = None,
) -> ShapesClassifier:
    """Train a :class:`ShapesClassifier` with BCE on ``target_fn(sample)`` (default: objects' classes and colours).

    Adam at ``lr`` with a cosine decay to 0 over ``steps``; minibatches of ``batch_size`` items drawn uniformly with
    replacement.

    Deterministic for a given seed (initialisation and minibatch indices come from seeded generators).  Samples are
    cached after their first use, so the dataset is rendered at most once per item.
    """
    if len(dataset) < 1 or steps < 1 or batch_size < 1:
        raise IQVAEError("train_feature_classifier needs a non-empty dataset, steps >= 1 and batch_size >= 1")
    if target_fn is None:
        if num_classes is None or num_colours is None:
            n_cls, n_col = _infer_objects_vocab(dataset)
            num_classes = num_classes or n_cls
            num_colours = num_colours or n_col
        target_fn = objects_target_builder(num_classes, num_colours)
    cache: dict[int, tuple[Tensor, Tensor]] = {}

    def item(i: int) -> tuple[Tensor, Tensor]:
        if i not in cache:
            s = dataset[i]
            cache[i] = (s.image.float(), target_fn(s).float())
        return cache[i]

    num_outputs = int(item(0)[1].numel())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ShapesClassifier(num_outputs, width, feature_dim).to(device)
    model.target = getattr(target_fn, "description", "custom target_fn")  # type: ignore[attr-defined]
    g = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    for step in range(steps):
        idx = torch.randint(len(dataset), (batch_size,), generator=g).tolist()
        xs, ys = zip(*(item(i) for i in idx))
        x, y = torch.stack(xs).to(device), torch.stack(ys).to(device)
        loss = F.binary_cross_entropy_with_logits(model.logits(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log is not None:
            log(step, float(loss))
    model.eval().requires_grad_(False)
    return model


FEATURE_CLASSIFIER_KIND = "feature-classifier"


def save_feature_classifier(model: ShapesClassifier, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    info = dict(meta or {})
    info.setdefault("target", getattr(model, "target", "unknown"))
    return save_checkpoint(path, kind=FEATURE_CLASSIFIER_KIND, config=dict(model.config),
                           model_state=model.state_dict(), meta=info)


def load_feature_classifier(path: str | Path, device: str | torch.device = "cpu") -> ShapesClassifier:
    ckpt = load_checkpoint(path, kind=FEATURE_CLASSIFIER_KIND)
    try:
        model = ShapesClassifier(**ckpt.config)
    except TypeError as e:
        raise IQVAEError(f"feature classifier checkpoint '{path}' has a bad config: {e}") from None
    from ..models.weights import load_state_checked

    load_state_checked(model, ckpt.model_state, Path(path) / "model.safetensors", "feature classifier")
    model.target = ckpt.meta.get("target", "unknown")  # type: ignore[attr-defined]
    return model.to(device).eval().requires_grad_(False)
