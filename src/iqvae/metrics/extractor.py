"""Feature extractors for FD / KD: choose one from the options, or train and cache the Shapes classifier.

* ``--inception-weights PATH``: the FID Inception (:mod:`iqvae.models.inception`); the metric is called "FID" only
  when that file is the published pytorch-fid file (checked by hash), else "FD-inception[<hash>]".
* ``--extractor PATH``: a feature network folder written by ``iqvae train-extractor``: the Shapes classifier (metric
  "FD-shapes-cnn") or a condition predictor (:mod:`iqvae.models.predictor`, "FD-<dataset>-<cond>-cnn").
* neither, on the Shapes world: the classifier trained on the world's train split, cached once under
  ``$IQVAE_CACHE/extractors/shapes-<res>-<hash>/`` (default cache ``~/.cache/iqvae``); the hash covers everything
  the weights depend on (world sizes, resolution, training steps, batch, seed, width, feature size).
* neither, on another dataset: none here; ``iqvae evaluate`` then measures FD with the encoder of the condition
  predictor it trains on the dataset's train split (:func:`iqvae.train.predictor.resolve_predictor`).

:func:`cached_folder` is the cache both use: a folder per key, built under a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import IQVAEError

DEFAULT_STEPS = 2000
DEFAULT_BATCH = 64


@dataclass
class ExtractorRecipe:
    """Everything the cached classifier's weights depend on."""

    resolution: int
    train_size: int
    steps: int = DEFAULT_STEPS
    batch_size: int = DEFAULT_BATCH
    seed: int = 0
    width: int = 32
    feature_dim: int = 64

    def key(self) -> str:
        blob = json.dumps(self.__dict__, sort_keys=True).encode()
        return f"shapes-{self.resolution}-{hashlib.sha256(blob).hexdigest()[:10]}"


def cache_root(cache: str | Path | None = None) -> Path:
    if cache:
        return Path(cache)
    env = os.environ.get("IQVAE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "iqvae"


def train_shapes_extractor(recipe: ExtractorRecipe, out: str | Path, *,
                           log: Callable[[str], None] = lambda m: None) -> Path:
    """Train the Shapes feature classifier on the world's train split and save it to the folder ``out``."""
    from ..data.config import DataConfig, build_dataset
    from .fd import save_feature_classifier, train_feature_classifier

    if recipe.steps < 1 or recipe.batch_size < 1:
        raise IQVAEError(f"extractor training needs steps >= 1 and batch size >= 1; got {recipe.steps}, {recipe.batch_size}")
    data = DataConfig(dataset="shapes", resolution=recipe.resolution, train_size=recipe.train_size)
    ds = build_dataset(data, "train")
    log(f"training the Shapes feature classifier ({recipe.steps} steps, batch {recipe.batch_size}, "
        f"{len(ds)} train scenes at {recipe.resolution} px)")
    model = train_feature_classifier(ds, steps=recipe.steps, batch_size=recipe.batch_size, seed=recipe.seed,
                                     width=recipe.width, feature_dim=recipe.feature_dim)
    return save_feature_classifier(model, out, meta={"recipe": dict(recipe.__dict__), "world": "shapes"})


def cached_folder(subdir: str, key: str, build: Callable[[Path], Any], cache: str | Path | None = None, *,
                  log: Callable[[str], None] = lambda m: None, what: str = "model") -> Path:
    """``<cache>/<subdir>/<key>/``, built first by ``build(tmp_folder)`` when it is not there yet.

    The folder is written under a temporary name and renamed into place, so a killed run leaves no torn entry and
    two processes building the same key keep the first one finished.
    """
    path = cache_root(cache) / subdir / key
    if (path / "model.safetensors").is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise IQVAEError(f"cannot create the {what} cache folder '{path.parent}' (set IQVAE_CACHE or "
                         f"--cache): {e.strerror or e}") from None
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    build(tmp)
    if (path / "model.safetensors").is_file():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, path)
    log(f"cached the {what} in {path}")
    return path


def cached_shapes_extractor(recipe: ExtractorRecipe, cache: str | Path | None = None, *,
                            log: Callable[[str], None] = lambda m: None) -> Path:
    """The cached classifier folder for ``recipe``, training it first when it is not there yet."""
    return cached_folder("extractors", recipe.key(), lambda tmp: train_shapes_extractor(recipe, tmp, log=log),
                         cache, log=log, what="feature classifier")


def load_extractor(path: str | Path) -> Any:
    """A feature network folder for FD / KD: the Shapes feature classifier or a condition predictor (both written by
    ``iqvae train-extractor``), told apart by the checkpoint's kind."""
    from ..checkpoint import read_header
    from ..models.predictor import PREDICTOR_KIND, ConditionPredictor
    from .fd import FEATURE_CLASSIFIER_KIND, load_feature_classifier

    try:
        kind = read_header(path)["kind"]
    except IQVAEError as e:
        raise IQVAEError(f"--extractor: {e} (expected a folder written by `iqvae train-extractor`)") from None
    if kind == PREDICTOR_KIND:
        return ConditionPredictor.from_pretrained(path)
    if kind == FEATURE_CLASSIFIER_KIND:
        return load_feature_classifier(path)
    raise IQVAEError(f"--extractor '{path}' holds a '{kind}' checkpoint; expected a feature network written by "
                     f"`iqvae train-extractor` ({FEATURE_CLASSIFIER_KIND} or {PREDICTOR_KIND})")


def resolve_extractor(*, data: Any, extractor: str | None = None, inception_weights: str | None = None,
                      cache: str | None = None, steps: int = DEFAULT_STEPS,
                      log: Callable[[str], None] = lambda m: None) -> tuple[Any | None, str]:
    """(extractor module or None, a sentence saying where it comes from / why there is none)."""
    if extractor and inception_weights:
        raise IQVAEError("give either --extractor or --inception-weights, not both")
    if inception_weights:
        from ..models.inception import load_fid_inception

        model = load_fid_inception(inception_weights)
        return model, f"FID Inception weights '{inception_weights}' ({model.name})"
    if extractor:
        model = load_extractor(extractor)
        return model, f"feature network '{extractor}' ({model.name})"
    if getattr(data, "dataset", None) == "shapes":
        from .fd import load_feature_classifier

        recipe = ExtractorRecipe(resolution=int(data.resolution), train_size=int(data.train_size), steps=steps)
        path = cached_shapes_extractor(recipe, cache, log=log)
        return load_feature_classifier(path), (f"Shapes feature classifier trained on the world's train split "
                                               f"({recipe.steps} steps), cached at '{path}'")
    return None, (f"no feature extractor for dataset '{getattr(data, 'dataset', '?')}': pass --inception-weights "
                  "(FID) or --extractor (`iqvae train-extractor`)")
