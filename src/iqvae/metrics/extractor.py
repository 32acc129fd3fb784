"""Feature extractors for FD / KD: choose one from the options, or train and cache the Shapes classifier.

* ``--inception-weights PATH``: the FID Inception (:mod:`iqvae.models.inception`); the metric is called "FID" only
  when that file is the published pytorch-fid file (checked by hash), else "FD-inception[<hash>]".
* ``--extractor PATH``: a feature classifier folder written by ``iqvae train-extractor`` (metric "FD-shapes-cnn").
* neither, on the Shapes world: the classifier trained on the world's train split, cached once under
  ``$IQVAE_CACHE/extractors/shapes-<res>-<hash>/`` (default cache ``~/.cache/iqvae``); the hash covers everything
  the weights depend on (world sizes, resolution, training steps, batch, seed, width, feature size).
* neither, on another dataset: no extractor (FD / KD reported as unavailable, with the reason).
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


def cached_shapes_extractor(recipe: ExtractorRecipe, cache: str | Path | None = None, *,
                            log: Callable[[str], None] = lambda m: None) -> Path:
    """The cached classifier folder for ``recipe``, training it first when it is not there yet."""
    path = cache_root(cache) / "extractors" / recipe.key()
    if (path / "model.safetensors").is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise IQVAEError(f"cannot create the extractor cache folder '{path.parent}' (set IQVAE_CACHE or "
                         f"--cache): {e.strerror or e}") from None
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    train_shapes_extractor(recipe, tmp, log=log)
    if (path / "model.safetensors").is_file():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, path)
    log(f"cached the feature classifier in {path}")
    return path


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
        from .fd import load_feature_classifier

        return load_feature_classifier(extractor), f"feature classifier '{extractor}'"
    if getattr(data, "dataset", None) == "shapes":
        from .fd import load_feature_classifier

        recipe = ExtractorRecipe(resolution=int(data.resolution), train_size=int(data.train_size), steps=steps)
        path = cached_shapes_extractor(recipe, cache, log=log)
        return load_feature_classifier(path), (f"Shapes feature classifier trained on the world's train split "
                                               f"({recipe.steps} steps), cached at '{path}'")
    return None, (f"no feature extractor for dataset '{getattr(data, 'dataset', '?')}': pass --inception-weights "
                  "(FID) or --extractor")
