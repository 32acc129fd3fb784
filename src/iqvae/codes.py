"""Token codes on disk: the boundary between stage 1 and stage 2.

``iqvae encode`` runs the trained tokenizer once over each split and writes::

    codes.json               vocabulary sizes, token counts, tokens_shape, the tokenizer's data config, split sizes
    codebooks.safetensors    image (K_x, D) and cond (K_c, D) codebooks (the Gumbel reliability of Eq. 5 needs them)
    {split}.safetensors      image: int32 (N, n_image), cond: int32 (N, n_cond), index: int64 (N,)

``cond`` holds the transformer's condition tokens (:meth:`IQVAE.transformer_condition`): the condition codes, or with
``tokenizer.transformer_cond='input'`` the caption's own token ids (``codes.json`` says which, and ``cond_vocab`` is
then the caption vocabulary).

Image tokens are in raster order (row-major over the h x w grid); with residual quantization the depth index is
innermost, so one position's D codes are consecutive.  The transformer reads only these files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import DataError

CODES_VERSION = 1


@dataclass
class CodeSet:
    image: torch.Tensor  # int64 (N, n_image)
    cond: torch.Tensor  # int64 (N, n_cond)
    index: torch.Tensor  # int64 (N,)
    meta: dict[str, Any]

    def __len__(self) -> int:
        return self.image.shape[0]


def flatten_tokens(indices: torch.Tensor) -> torch.Tensor:
    """(B, h, w) or (B, h, w, D) -> (B, h*w[*D]) in raster order, depth innermost."""
    return indices.reshape(indices.shape[0], -1)


@torch.no_grad()
def encode_dataset(tokenizer: Any, dataset: Any, cond_name: str, *, batch_size: int = 64,
                   device: Any = "cpu", progress: bool = True, desc: str = "encode") -> dict[str, torch.Tensor]:
    """Token codes of every item of ``dataset``."""
    from tqdm.auto import tqdm

    from .viz import bar_options

    from .data.record import collate

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    imgs, conds = [], []
    for batch in tqdm(loader, desc=desc, disable=not progress, **bar_options()):
        enc = tokenizer.encode(batch.image.to(device), batch.cond[cond_name].to(device))
        imgs.append(flatten_tokens(enc.img_indices).to(torch.int32).cpu())
        cond = batch.cond[cond_name].to(device)
        conds.append(tokenizer.transformer_condition(cond, enc.cond_indices).to(torch.int32).cpu())
    return {"image": torch.cat(imgs), "cond": torch.cat(conds), "index": torch.arange(len(dataset), dtype=torch.int64)}


def write_codes(out_dir: str | Path, tokenizer: Any, tokenizer_path: str | Path, splits: dict[str, dict[str, torch.Tensor]],
                data_config: dict[str, Any]) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, tensors in splits.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"{split}.safetensors"))
    save_file({"image": tokenizer.image_codebook.detach().cpu().contiguous().clone(),
               "cond": tokenizer.cond_codebook.detach().cpu().contiguous().clone()}, str(out / "codebooks.safetensors"))
    first = next(iter(splits.values()))
    meta = {
        "version": CODES_VERSION,
        "tokenizer": str(Path(tokenizer_path).resolve()),
        "image_vocab": int(tokenizer.num_image_codes),
        "cond_vocab": int(tokenizer.transformer_cond_vocab),
        "transformer_cond": str(tokenizer.config.transformer_cond),
        "n_image": int(first["image"].shape[1]),
        "n_cond": int(first["cond"].shape[1]),
        "tokens_shape": list(tokenizer.tokens_shape),
        "data": data_config,
        "splits": {s: int(t["image"].shape[0]) for s, t in splits.items()},
    }
    (out / "codes.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return out


def read_codes_meta(codes_dir: str | Path) -> dict[str, Any]:
    p = Path(codes_dir) / "codes.json"
    if not p.is_file():
        raise DataError(f"'{codes_dir}' holds no token codes ({p.name} is missing): run `iqvae encode` first")
    return json.loads(p.read_text())


def load_codes(codes_dir: str | Path, split: str) -> CodeSet:
    meta = read_codes_meta(codes_dir)
    f = Path(codes_dir) / f"{split}.safetensors"
    if not f.is_file():
        raise DataError(f"'{codes_dir}' has no codes for split '{split}' ({f.name} is missing); "
                        f"it has: {', '.join(meta.get('splits', {}))}")
    t = load_file(str(f))
    for key, n in (("image", meta["n_image"]), ("cond", meta["n_cond"])):
        if key not in t or t[key].ndim != 2 or t[key].shape[1] != n:
            raise DataError(f"'{f}' lacks a valid '{key}' tensor of shape (N, {n})")
    image, cond = t["image"].long(), t["cond"].long()
    if int(image.max()) >= meta["image_vocab"] or int(image.min()) < 0:
        raise DataError(f"'{f}' has image tokens outside [0, {meta['image_vocab']})")
    if int(cond.max()) >= meta["cond_vocab"] or int(cond.min()) < 0:
        raise DataError(f"'{f}' has condition tokens outside [0, {meta['cond_vocab']})")
    return CodeSet(image, cond, t.get("index", torch.arange(image.shape[0])).long(), meta)


def load_codebooks(codes_dir: str | Path) -> dict[str, torch.Tensor]:
    f = Path(codes_dir) / "codebooks.safetensors"
    if not f.is_file():
        raise DataError(f"'{codes_dir}' lacks codebooks.safetensors")
    return load_file(str(f))
