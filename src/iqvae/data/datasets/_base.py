"""The base class of the real-dataset loaders: indexing, bad-file policy, ``limit``, ``check()``.

A loader subclasses :class:`FolderDataset` and implements

* ``_index()`` -> ``{"train": [...], "val": [...], "test": [...]}`` of :class:`Item` (every split, sorted by key),
  calling ``self._problem(path, reason, kind)`` for each missing pair / malformed annotation it meets;
* ``_load(item)`` -> ``(image, cond, extra, meta)`` for ``self.cond``, raising :class:`~._io.FileError` naming the
  file when something cannot be read;
* ``_spec(modality)`` -> the :class:`~iqvae.modalities.ConditionSpec` of a supported modality.

Bad files.  Without ``skip_bad`` the first problem is a :class:`~iqvae.errors.DataError` naming the file (at
construction for missing pairs, at ``__getitem__`` for files that do not decode).  With ``skip_bad`` the item is
dropped (missing pairs) or replaced by the next readable item (undecodable files, found lazily); every such file is
listed in :attr:`FolderDataset.bad_files`, logged as a warning, and written by
:meth:`FolderDataset.write_bad_files` (one ``path<TAB>reason`` line each), e.g. by the trainer to
``<run folder>/bad_files.txt``; files found later are appended to that file.

``limit`` keeps the first ``limit`` items (in key order) of each split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import torch

from ...errors import DataError
from ..config import SPLITS, DataConfig
from ...modalities import ConditionSpec
from ..record import PairDataset, Sample
from ._io import VAL_FRACTION, FileError, find_subroot, require_dir, split_train_pool

log = logging.getLogger("iqvae.data")
K = TypeVar("K")


@dataclass
class Item:
    """One indexed example: a key (stable name), the files it reads, and parsed annotations."""

    key: str
    paths: dict[str, Path]
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Problem:
    """A bad file: ``kind`` is "missing" (a missing pair / referenced file) or "unreadable"."""

    path: str
    reason: str
    kind: str = "unreadable"

    def __str__(self) -> str:
        return f"{self.path}\t{self.reason}"


LoadResult = tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]


class FolderDataset(PairDataset):
    """A real dataset read from ``root`` as laid out on disk (see each subclass's docstring).

    ``cond`` is one of :attr:`supported` (default :attr:`default_cond`); ``val_fraction`` is the hash carve-out share;
    ``allow_empty`` lets this split be empty (``iqvae data check`` reports empty splits instead of failing).
    """

    name = "folder"
    supported: tuple[str, ...] = ()
    default_cond: str = ""
    layout_help: str = ""
    subroot: str = ""  # a folder below ``root`` that holds the data when present (users may point at either)

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        cond: str | None = None,
        resolution: int = 256,
        limit: int | None = None,
        skip_bad: bool = False,
        val_fraction: float = VAL_FRACTION,
        allow_empty: bool = False,
    ):
        if split not in SPLITS:
            raise DataError(f"split must be one of {list(SPLITS)}, got {split!r}")
        cond = cond or self.default_cond
        if cond not in self.supported:
            raise DataError(
                f"dataset '{self.name}' has no condition '{cond}'; it provides: {', '.join(self.supported)}"
            )
        if resolution < 8:
            raise DataError(f"resolution must be at least 8 pixels, got {resolution}")
        if limit is not None and limit < 1:
            raise DataError(f"limit must be positive, got {limit}")
        self.root = Path(root).expanduser()
        require_dir(self.root, f"the {self.name} dataset folder ({self.layout_help})")
        self.split = split
        self.cond = cond
        self.modalities = (cond,)
        self.resolution = int(resolution)
        self.limit = limit
        self.skip_bad = skip_bad
        self.val_fraction = val_fraction
        self.bad_files_path: Path | None = None
        self._problems: list[Problem] = []
        self._seen: set[str] = set()

        splits = self._index()
        if self._problems and not skip_bad:
            first = self._problems[0]
            more = f" (and {len(self._problems) - 1} more)" if len(self._problems) > 1 else ""
            raise DataError(f"{first.reason}{more}; `iqvae data check {self.name} {self.root}` lists every bad "
                            "file, --skip-bad (data.skip_bad) skips them")
        if self._problems:
            log.warning("%s: skipping %d bad file(s): %s", self.name, len(self._problems),
                        ", ".join(p.path for p in self._problems[:5]))
        self.splits: dict[str, list[Item]] = {s: list(splits.get(s, []))[:limit] for s in SPLITS}
        self.items = self.splits[split]
        if not self.items and not allow_empty:
            raise DataError(f"no {split} items found under {self.root} for dataset '{self.name}': expected "
                            f"{self.layout_help}")
        self._prepare()

    # ------------------------------------------------------------------------------------------------ subclass hooks
    def _index(self) -> dict[str, list[Item]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load(self, item: Item) -> LoadResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def _prepare(self) -> None:
        """Called once the items are known (e.g. to build a vocabulary)."""

    def _spec(self, modality: str) -> ConditionSpec:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ helpers of _index
    @property
    def base(self) -> Path:
        """The folder that holds the data: ``root/subroot`` when it exists, else ``root``."""
        return find_subroot(self.root, self.subroot) if self.subroot else self.root

    def _paired(self, a: dict[K, Any], b: dict[K, Any], a_alone: Callable[[K], tuple[Path | str, str]],
                b_alone: Callable[[K], tuple[Path | str, str]]) -> list[K]:
        """The keys found in both ``a`` and ``b``, sorted.  A key found in one only is a "missing pair" problem
        whose file and description ``a_alone(key)`` / ``b_alone(key)`` give (first ``a``'s, then ``b``'s)."""
        for alone, other, describe in ((a, b, a_alone), (b, a, b_alone)):
            for key in sorted(set(alone) - set(other)):
                path, what = describe(key)
                self._problem(path, f"missing pair: {what}", "missing")
        return sorted(set(a) & set(b))

    def _official_splits(self, train: Iterable[Item], test: list[Item]) -> dict[str, list[Item]]:
        """train / val carved from the official training list (:func:`~._io.split_train_pool`), test = the
        official held-out list."""
        pool = {it.key: it for it in train}
        return {
            "train": [pool[k] for k in split_train_pool(pool, "train", self.val_fraction)],
            "val": [pool[k] for k in split_train_pool(pool, "val", self.val_fraction)],
            "test": test,
        }

    def condition_spec(self, modality: str) -> ConditionSpec:
        """The ConditionSpec of ``modality`` (one of :attr:`supported`)."""
        if modality not in self.supported:
            raise DataError(f"dataset '{self.name}' has no condition '{modality}'; it provides: "
                            f"{', '.join(self.supported)}")
        return self._spec(modality)

    # ----------------------------------------------------------------------------------------------------- bad files
    def _problem(self, path: Path | str, reason: str, kind: str = "unreadable") -> None:
        if str(path) in self._seen:
            return
        self._seen.add(str(path))
        problem = Problem(str(path), reason, kind)
        self._problems.append(problem)
        if self.bad_files_path is not None:  # append: DataLoader workers each add their own finds
            with open(self.bad_files_path, "a", encoding="utf-8") as f:
                f.write(f"{problem}\n")

    @property
    def bad_files(self) -> list[str]:
        """Every bad file met so far (paths; reasons in :attr:`problems`)."""
        return [p.path for p in self._problems]

    @property
    def problems(self) -> list[Problem]:
        return list(self._problems)

    def write_bad_files(self, path: Path | str) -> Path:
        """Write ``path<TAB>reason`` per bad file to ``path`` (created even when empty); bad files found later (while
        training with ``skip_bad``) are appended to it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{p}\n" for p in self._problems), encoding="utf-8")
        self.bad_files_path = path
        return path

    # ------------------------------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        n = len(self.items)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        index %= n
        for step in range(n):
            item = self.items[(index + step) % n]
            try:
                image, cond, extra, meta = self._load(item)
            except FileError as e:
                if not self.skip_bad:
                    raise
                if e.path not in self._seen:
                    log.warning("%s: skipping unreadable file: %s", self.name, e)
                self._problem(e.path, str(e))
                continue
            meta = {"dataset": self.name, "split": self.split, "index": index, "key": item.key, **meta}
            return Sample(image=image, cond=cond, extra=extra, meta=meta)
        raise DataError(f"every {self.split} item of '{self.name}' under {self.root} is unreadable; "
                        f"bad files: {len(self._problems)} (see bad_files)")

    # -------------------------------------------------------------------------------------------------------- check
    def check(self, decode: bool = True) -> dict[str, Any]:
        """A report of the whole dataset: item counts per split, missing pairs and unreadable files.

        With ``decode`` every item of every split (after ``limit``) is fully read, so files that do not decode show
        up as unreadable.  Keys: dataset, root, cond, resolution, counts (per split), empty_splits, missing_pairs,
        unreadable (lists of ``{"path", "reason"}``), ok.
        """
        unreadable = [p for p in self._problems if p.kind != "missing"]
        missing = [p for p in self._problems if p.kind == "missing"]
        seen = {p.path for p in self._problems}
        if decode:
            for items in self.splits.values():
                for item in items:
                    try:
                        self._load(item)
                    except FileError as e:
                        if e.path not in seen:
                            seen.add(e.path)
                            unreadable.append(Problem(e.path, str(e)))
        return {
            "dataset": self.name,
            "root": str(self.root),
            "cond": self.cond,
            "resolution": self.resolution,
            "counts": {s: len(v) for s, v in self.splits.items()},
            "empty_splits": [s for s, v in self.splits.items() if not v],
            "missing_pairs": [{"path": p.path, "reason": p.reason} for p in missing],
            "unreadable": [{"path": p.path, "reason": p.reason} for p in unreadable],
            "ok": not missing and not unreadable and all(self.splits.values()),
        }


def builder(cls: type[FolderDataset]) -> Callable[[DataConfig, str], FolderDataset]:
    """A ``register_dataset`` builder ``(cfg, split) -> cls`` that reads the common DataConfig fields."""

    def build(cfg: DataConfig, split: str) -> FolderDataset:
        if not cfg.root:
            raise DataError(f"dataset '{cls.name}' reads files from disk: set data.root (--data-root PATH) to the "
                            f"folder holding {cls.layout_help}")
        return cls(cfg.root, split, cond=cfg.cond, resolution=cfg.resolution, limit=cfg.limit, skip_bad=cfg.skip_bad)

    build.__doc__ = f"Build the '{cls.name}' dataset for one split from a DataConfig."
    return build
