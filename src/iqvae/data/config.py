"""Dataset options (one section of every training config) and the dataset registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..config import opt
from ..errors import ConfigError
from ..modalities import MODALITIES, modality_names
from .record import PairDataset

SPLITS = ("train", "val", "test")


@dataclass
class DataConfig:
    dataset: str = opt("shapes", "dataset: shapes (built in) or a real layout, see `iqvae data check --help`")
    root: str | None = opt(None, "dataset folder on disk (real datasets; unused by shapes)")
    cond: str = opt("seg", "condition modality the models are trained on: " + ", ".join(MODALITIES))
    resolution: int = opt(32, "image resolution in pixels (square)")
    limit: int | None = opt(None, "use at most this many items of each split")
    train_size: int = opt(20000, "shapes: number of training scenes")
    val_size: int = opt(512, "shapes: number of validation scenes")
    test_size: int = opt(512, "shapes: number of test scenes")
    skip_bad: bool = opt(False, "real datasets: skip unreadable files (listed in the run folder) instead of failing")
    num_workers: int = opt(0, "DataLoader worker processes")

    def validate(self) -> None:
        if self.cond not in modality_names():
            raise ConfigError(f"option 'data.cond' must be one of {list(modality_names())}, got {self.cond!r}")
        if self.resolution < 8:
            raise ConfigError(f"option 'data.resolution' must be at least 8, got {self.resolution}")
        for name in ("train_size", "val_size", "test_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"option 'data.{name}' must be positive, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"option 'data.limit' must be positive, got {self.limit}")


Builder = Callable[[DataConfig, str], PairDataset]
_REGISTRY: dict[str, Builder] = {}


def register_dataset(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        _REGISTRY[name] = fn
        return fn

    return deco


def _load_builtin() -> None:
    # Importing the modules registers their builders.
    import importlib

    for mod in ("iqvae.data.shapes", "iqvae.data.datasets"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def dataset_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def build_dataset(cfg: DataConfig, split: str) -> PairDataset:
    """The dataset ``cfg.dataset`` for ``split`` (train / val / test)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}")
    _load_builtin()
    if cfg.dataset not in _REGISTRY:
        raise ConfigError(f"unknown dataset '{cfg.dataset}'; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[cfg.dataset](cfg, split)
