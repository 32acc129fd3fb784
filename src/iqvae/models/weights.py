"""Weight files of the models: third-party ``.pth`` / ``.safetensors`` files read and loaded with checks (the feature
networks: LPIPS, FID Inception, the Shapes feature classifier), and the weights of this project's checkpoint folders
(:meth:`IQVAE.from_pretrained <iqvae.models.tokenizer.IQVAE.from_pretrained>`,
:meth:`GPT.from_pretrained <iqvae.models.gpt.GPT.from_pretrained>`)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, TypeVar

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, IQVAEError

M = TypeVar("M", bound=nn.Module)


def read_weights_file(path: str | Path, what: str) -> dict[str, Tensor]:
    """Read a ``.pth``/``.pt`` (``torch.load(weights_only=True)``) or ``.safetensors`` file into a flat state dict."""
    p = Path(path)
    if not p.is_file():
        raise IQVAEError(f"{what} weights file '{p}' does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # torch / safetensors raise many error types for unreadable files
        raise IQVAEError(f"cannot read {what} weights file '{p}': {e}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise IQVAEError(f"{what} weights file '{p}' does not hold a flat state dict of tensors")
    return dict(state)


def load_state_checked(
    module: nn.Module,
    state: dict[str, Tensor],
    path: str | Path,
    what: str,
    ignore_prefixes: Iterable[str] = (),
) -> None:
    """Load ``state`` into ``module`` requiring exactly its keys and shapes.

    Keys starting with one of ``ignore_prefixes`` are dropped first; BatchNorm ``num_batches_tracked`` counters are
    optional (old files lack them).  A mismatch raises :class:`IQVAEError` naming the file and the first offending key.
    """
    ignore = tuple(ignore_prefixes)
    given = {k: v for k, v in state.items() if not (ignore and k.startswith(ignore))}
    expected = module.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in given and k not in optional]
    unexpected = [k for k in given if k not in expected]
    if missing:
        raise IQVAEError(
            f"{what} weights file '{path}' does not match the architecture: missing key '{missing[0]}'"
            f" ({len(missing)} missing in all)"
        )
    if unexpected:
        raise IQVAEError(
            f"{what} weights file '{path}' does not match the architecture: unexpected key '{unexpected[0]}'"
            f" ({len(unexpected)} unexpected in all)"
        )
    for k, v in given.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise IQVAEError(
                f"{what} weights file '{path}': key '{k}' has shape {tuple(v.shape)},"
                f" expected {tuple(expected[k].shape)}"
            )
    full = dict(expected)
    full.update({k: torch.zeros_like(expected[k]) for k in optional if k not in given})
    full.update({k: v.to(expected[k].dtype) for k, v in given.items()})
    module.load_state_dict(full, strict=True)


def checkpoint_folder(path: str | Path, name: str) -> Path:
    """``path/name`` when ``path`` holds such a folder (a run or pipeline folder), else ``path`` itself."""
    path = Path(path)
    return path / name if (path / name).is_dir() else path


def load_checkpoint_weights(model: M, state: dict[str, Tensor], path: str | Path) -> M:
    """``model`` with the weights of the checkpoint folder ``path``; weights that do not fit raise CheckpointError."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"weights in '{path}' do not fit its config: {str(e).splitlines()[0]}") from None
    return model
