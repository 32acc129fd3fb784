"""Train the condition predictor (:class:`iqvae.models.predictor.ConditionPredictor`) on a dataset's own train
split, cache it, and find the one ``iqvae evaluate`` needs.

Objective: the modality's condition-decoder loss (:meth:`iqvae.modalities.Modality.predictor_loss`: cross-entropy
for seg, binary cross-entropy for edge and layout, weighted squared error for keypoints) of the dense output
against the item's condition, plus ``thumb_weight`` x the squared error of the predicted colour thumbnail against
the image average-pooled to ``thumb`` x ``thumb``.  Text and audio conditions (not pixel maps): the thumbnail alone,
a self-supervised objective, so any dataset gets a feature space for FD.  Adam at ``lr`` with a cosine decay to 0;
the batch of step ``s`` is drawn uniformly with replacement from the first ``train_items`` items of the train split
by a generator seeded with ``seed``; initialisation is seeded too, so a recipe gives the same weights every time
(on one machine and torch build).  No augmentation.

Cache: ``$IQVAE_CACHE/predictors/<dataset>-<cond>-<res>-<hash>/`` (default cache ``~/.cache/iqvae``), the hash over
the recipe and the data's identity: dataset name, folder (absolute), condition, resolution, ``limit``, the Shapes
world's train size, and the number of train items (adding files to a folder trains a new predictor).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..errors import IQVAEError

DEFAULT_STEPS = 1000


@dataclass
class PredictorRecipe:
    """Everything the predictor's weights depend on besides the data."""

    steps: int = DEFAULT_STEPS
    batch_size: int = 32
    seed: int = 0
    width: int = 16
    feature_dim: int = 64
    thumb: int = 8
    thumb_weight: float = 1.0
    lr: float = 3e-3
    train_items: int = 4096

    def check(self) -> None:
        for k in ("steps", "batch_size", "width", "feature_dim", "thumb", "train_items"):
            if getattr(self, k) < 1:
                raise IQVAEError(f"condition predictor: {k} must be at least 1; got {getattr(self, k)}")
        if not (self.lr > 0 and self.thumb_weight >= 0):
            raise IQVAEError(f"condition predictor: lr must be > 0 and thumb_weight >= 0; got {self.lr}, "
                             f"{self.thumb_weight}")


def objective(data: Any) -> str:
    """The condition the predictor reads back for ``data`` (a DataConfig): its condition when it is a pixel map,
    else ``thumb`` (the thumbnail alone)."""
    from ..modalities import get_modality

    return data.cond if get_modality(data.cond).kind == "spatial" else "thumb"


def data_identity(data: Any, num_train: int) -> dict[str, Any]:
    root = getattr(data, "root", None)
    return {"dataset": data.dataset, "root": str(Path(root).expanduser().resolve()) if root else None,
            "cond": data.cond, "resolution": int(data.resolution), "limit": data.limit,
            "train_size": int(data.train_size) if data.dataset == "shapes" else None, "train_items": int(num_train)}


def predictor_key(data: Any, recipe: PredictorRecipe, num_train: int) -> str:
    blob = json.dumps({"data": data_identity(data, num_train), "recipe": asdict(recipe)}, sort_keys=True).encode()
    return f"{data.dataset}-{data.cond}-{int(data.resolution)}-{hashlib.sha256(blob).hexdigest()[:10]}"


def train_condition_predictor(dataset: Any, data: Any, recipe: PredictorRecipe, *, device: str = "cpu",
                              progress: bool = False, log: Callable[[str], None] = lambda m: None) -> Any:
    """A :class:`ConditionPredictor` trained on ``dataset`` (the train split of the DataConfig ``data``)."""
    from tqdm.auto import tqdm

    from ..models.predictor import ConditionPredictor
    from ..viz import bar_options

    recipe.check()
    if len(dataset) < 1:
        raise IQVAEError(f"condition predictor: the train split of '{data.dataset}' is empty")
    target = objective(data)
    spec = dataset.condition_spec(data.cond) if target != "thumb" else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = ConditionPredictor(spec.to_dict() if spec is not None else None, int(data.resolution),
                                   recipe.width, recipe.feature_dim, recipe.thumb,
                                   name=f"{data.dataset}-{target}-cnn").to(device)
    pool = min(len(dataset), recipe.train_items)
    cache: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def item(i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if i not in cache:
            s = dataset[i]
            cache[i] = (s.image.float(), s.cond[data.cond] if spec is not None else None)
        return cache[i]

    log(f"training the condition predictor '{model.name}' ({recipe.steps} steps, batch {recipe.batch_size}, "
        f"{pool} train items at {data.resolution} px, objective: {target}"
        + (" + thumbnail)" if target != "thumb" else ")"))
    g = torch.Generator().manual_seed(recipe.seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / recipe.steps)))
    model.train()
    bar = tqdm(range(recipe.steps), desc="predictor", disable=not progress, **bar_options())
    for _ in bar:
        idx = torch.randint(pool, (recipe.batch_size,), generator=g).tolist()
        xs, cs = zip(*(item(i) for i in idx))
        x = torch.stack(xs).to(device)
        dense, thumb = model.outputs(x)
        loss = recipe.thumb_weight * F.mse_loss(thumb, F.adaptive_avg_pool2d(x, recipe.thumb))
        if spec is not None:
            loss = loss + model.modality.predictor_loss(spec, dense, torch.stack(cs).to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if not math.isfinite(loss.item()):
            raise IQVAEError(f"condition predictor: the loss is {float(loss)}; lower --predictor-lr")
    model.final_loss = loss.item()  # type: ignore[attr-defined]
    return model.eval().requires_grad_(False)


def train_predictor_into(out: str | Path, data: Any, recipe: PredictorRecipe, *, progress: bool = False,
                         log: Callable[[str], None] = lambda m: None) -> Path:
    """Train on the train split of ``data`` and save to the folder ``out`` (safetensors + JSON)."""
    from ..config import to_dict
    from ..data.config import build_dataset

    ds = build_dataset(data, "train")
    model = train_condition_predictor(ds, data, recipe, progress=progress, log=log)
    meta = {"recipe": asdict(recipe), "data": data_identity(data, len(ds)), "data_config": to_dict(data),
            "objective": objective(data), "final_loss": model.final_loss}
    return model.save_pretrained(out, meta=meta)


def cached_predictor(data: Any, recipe: PredictorRecipe, cache: str | Path | None = None, *, progress: bool = False,
                     log: Callable[[str], None] = lambda m: None) -> Path:
    """The cached predictor folder for (``data``, ``recipe``), trained first when it is not there yet."""
    from ..data.config import build_dataset
    from ..metrics.extractor import cached_folder

    recipe.check()
    key = predictor_key(data, recipe, len(build_dataset(data, "train")))
    return cached_folder("predictors", key,
                         lambda tmp: train_predictor_into(tmp, data, recipe, progress=progress, log=log),
                         cache, log=log, what="condition predictor")


def check_predictor(model: Any, data: Any, source: str) -> None:
    """A clear error when the predictor does not read ``data``'s condition at its resolution."""
    want = objective(data)
    have = model.spec.modality if model.spec is not None else "thumb"
    if have != want:
        raise IQVAEError(f"{source} was trained to read '{have}', but this model's condition is '{data.cond}' "
                         f"(expected a predictor of '{want}')")
    if model.resolution != int(data.resolution):
        raise IQVAEError(f"{source} was trained at {model.resolution} px; this model's data is at {data.resolution} px")


def resolve_predictor(data: Any, *, predictor: str | None = None, cache: str | None = None,
                      recipe: PredictorRecipe | None = None, need_features: bool = False, progress: bool = False,
                      log: Callable[[str], None] = lambda m: None) -> tuple[Any | None, str]:
    """(predictor or None, a sentence saying where it comes from / why there is none) for ``iqvae evaluate``.

    ``predictor``: a folder written by ``iqvae train-extractor``.  Otherwise the cached one for ``data`` is used
    (trained first if needed) when the condition is judged by a predictor (seg, layout, keypoints) or when
    ``need_features`` (no other FD extractor); else None.
    """
    from ..models.predictor import ConditionPredictor
    from ..modalities import get_modality

    if predictor:
        model = ConditionPredictor.from_pretrained(predictor)
        check_predictor(model, data, f"--predictor '{predictor}'")
        return model, f"condition predictor '{predictor}' ({model.name})"
    judged = get_modality(data.cond).control_judge == "predictor"
    if not (judged or need_features):
        return None, f"no condition predictor needed for '{data.cond}'"
    recipe = recipe or PredictorRecipe()
    path = cached_predictor(data, recipe, cache, progress=progress, log=log)
    model = ConditionPredictor.from_pretrained(path)
    return model, (f"condition predictor trained on the '{data.dataset}' train split ({recipe.steps} steps, "
                   f"objective: {objective(data)}), cached at '{path}'")
