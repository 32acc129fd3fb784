"""Checkpoints: a folder of safetensors files plus JSON, written atomically; never pickle.

Layout of a checkpoint folder::

    config.json              {"kind": ..., "format_version": 1, "config": {constructor arguments}, "meta": {...}}
    model.safetensors        the model's state_dict
    train_state.safetensors  (optional) tensors of the training state: optimizer, RNG states, ...
    train_state.json         (optional) the rest of the training state, with tensors replaced by references

Writes go to a sibling temporary folder that is renamed into place, so a run killed at any moment leaves either the
previous checkpoint or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import CheckpointError

FORMAT_VERSION = 1
_TENSOR_REF = "__tensor__"
_TUPLE = "__tuple__"


def flatten_state(tree: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested structure into {key: tensor} and a JSON-able skeleton that refers to the keys."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            key = path or "root"
            tensors[key] = node.detach().cpu().contiguous().clone()
            return {_TENSOR_REF: key}
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if not isinstance(k, (str, int)):
                    raise TypeError(f"state key {k!r} at '{path}' is not a str or int")
                tag = f"i:{k}" if isinstance(k, int) else f"s:{k}"
                out[tag] = walk(v, f"{path}.{k}" if path else str(k))
            return out
        if isinstance(node, tuple):
            return {_TUPLE: [walk(v, f"{path}.{i}") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(node)]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"cannot store {type(node).__name__} at '{path}' in a checkpoint")

    skeleton = walk(tree, prefix)
    return tensors, skeleton


def unflatten_state(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if _TENSOR_REF in node:
                return tensors[node[_TENSOR_REF]]
            if _TUPLE in node:
                return tuple(walk(v) for v in node[_TUPLE])
            out = {}
            for tag, v in node.items():
                kind, key = tag.split(":", 1)
                out[int(key) if kind == "i" else key] = walk(v)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(skeleton)


@dataclass
class Checkpoint:
    kind: str
    config: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    train_state: Any = None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(
    path: str | Path,
    *,
    kind: str,
    config: dict[str, Any],
    model_state: dict[str, torch.Tensor],
    meta: dict[str, Any] | None = None,
    train_state: Any = None,
) -> Path:
    """Write a checkpoint folder atomically (replacing one that is there)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        header = {"kind": kind, "format_version": FORMAT_VERSION, "config": config, "meta": meta or {}}
        (tmp / "config.json").write_text(json.dumps(header, indent=2, sort_keys=True))
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model_state.items()}
        save_file(state, str(tmp / "model.safetensors"))
        if train_state is not None:
            tensors, skeleton = flatten_state(train_state)
            save_file(tensors, str(tmp / "train_state.safetensors"))
            (tmp / "train_state.json").write_text(json.dumps(skeleton))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_header(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    cfg = path / "config.json"
    if not cfg.is_file():
        raise CheckpointError(f"'{path}' is not a checkpoint folder: {cfg.name} is missing")
    try:
        header = json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"'{cfg}' is not valid JSON: {e}") from None
    for key in ("kind", "format_version", "config"):
        if key not in header:
            raise CheckpointError(f"'{cfg}' lacks the '{key}' entry")
    if header["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' was written by a newer iqvae (format {header['format_version']} > {FORMAT_VERSION})"
        )
    return header


def load_checkpoint(path: str | Path, kind: str | None = None, *, with_train_state: bool = False) -> Checkpoint:
    """Read a checkpoint folder; ``kind`` (if given) must match the stored kind."""
    path = Path(path)
    header = read_header(path)
    if kind is not None and header["kind"] != kind:
        raise CheckpointError(f"'{path}' holds a '{header['kind']}' checkpoint, expected '{kind}'")
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"checkpoint '{path}' lacks model.safetensors")
    try:
        model_state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read '{weights}': {e}") from None
    train_state = None
    if with_train_state:
        ts, tj = path / "train_state.safetensors", path / "train_state.json"
        if not (ts.is_file() and tj.is_file()):
            raise CheckpointError(f"checkpoint '{path}' has no training state to resume from")
        train_state = unflatten_state(load_file(str(ts)), json.loads(tj.read_text()))
    return Checkpoint(header["kind"], header["config"], model_state, header.get("meta", {}), train_state)


def rng_state() -> dict[str, Any]:
    """The global RNG states that a training loop consumes (torch CPU, CUDA if present)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
