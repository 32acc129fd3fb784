"""``IQVAEPipeline``: condition in, diverse images out (Fig. 1 of the paper, inference path).

condition --E_c + quantize--> condition tokens --transformer, top-k sampling--> image tokens
          --codebook lookup, concat with condition features, D_x--> images

A pipeline folder holds ``tokenizer/`` and ``transformer/`` checkpoints (safetensors + JSON constructor arguments),
so loading needs no config file::

    pipe = IQVAEPipeline.from_pretrained("runs/demo/seg")
    images = pipe(condition, num_images=4, top_k=100, generator=torch.Generator().manual_seed(0))

``guidance_scale`` (as in diffusers) samples with classifier-free guidance when the transformer has a null condition
(trained with ``model.cfg_dropout > 0``); 1 (the default) is plain conditional sampling.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

import torch

from .errors import CheckpointError, DataError, IQVAEError
from .models.gpt import GPT
from .models.tokenizer import IQVAE
from .models.weights import checkpoint_folder
from .sampling import check_guidance, generate, validate_sampling_args


class IQVAEPipeline:
    def __init__(self, tokenizer: IQVAE, transformer: GPT, device: str | torch.device = "cpu"):
        self.tokenizer = tokenizer.to(device).eval()
        self.transformer = transformer.to(device).eval()
        self.device = torch.device(device)
        n_cond = transformer.config.n_cond
        n_image = transformer.config.n_image
        expect = int(torch.tensor(tokenizer.tokens_shape).prod())
        if n_image != expect:
            raise CheckpointError(
                f"transformer expects {n_image} image tokens but the tokenizer makes {expect} ({tokenizer.tokens_shape})"
            )
        if transformer.config.image_vocab != tokenizer.num_image_codes:
            raise CheckpointError("transformer and tokenizer disagree on the image vocabulary size "
                                  f"({transformer.config.image_vocab} vs {tokenizer.num_image_codes})")
        if transformer.config.cond_vocab != tokenizer.transformer_cond_vocab:
            raise CheckpointError("transformer and tokenizer disagree on the condition vocabulary size "
                                  f"({transformer.config.cond_vocab} vs {tokenizer.transformer_cond_vocab}, "
                                  f"tokenizer.transformer_cond={tokenizer.config.transformer_cond!r})")
        self.n_cond = n_cond

    # ---- loading / saving -------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "IQVAEPipeline":
        path = Path(path)
        if (path / "transformer").is_dir() and not (path / "tokenizer").is_dir():
            # a `train-transformer` run folder: its codes name the tokenizer they were encoded with
            transformer = GPT.from_pretrained(path)
            tok = (transformer.codes_meta or {}).get("tokenizer")
            if not tok or not Path(tok).is_dir():
                raise CheckpointError(f"'{path}' holds a transformer whose tokenizer is not found (its codes name "
                                      f"{tok!r}); pass a pipeline folder with tokenizer/ and transformer/")
            return cls(IQVAE.from_pretrained(tok), transformer, device)
        for sub in ("tokenizer", "transformer"):
            if not (path / sub).is_dir():
                raise CheckpointError(f"'{path}' is not a pipeline folder: '{sub}/' is missing")
        return cls(IQVAE.from_pretrained(path), GPT.from_pretrained(path), device)

    def save_pretrained(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(path / "tokenizer")
        self.transformer.save_pretrained(path / "transformer")
        return path

    # ---- inference ---------------------------------------------------------------------------------------------
    @property
    def cond_spec(self):
        return self.tokenizer.cond_spec

    @property
    def has_null_condition(self) -> bool:
        """Whether the transformer can be guided (``guidance_scale`` != 1): it was trained with a null condition."""
        return bool(self.transformer.config.null_cond)

    @property
    def resolution(self) -> int:
        return int(self.tokenizer.config.resolution)

    def _batch_condition(self, condition: torch.Tensor) -> torch.Tensor:
        if not isinstance(condition, torch.Tensor):
            raise DataError(f"condition must be a tensor for modality '{self.cond_spec.modality}', got {type(condition).__name__}")
        single_ndim = len(self.cond_spec.modality_obj.item_shape(self.cond_spec, self.resolution))
        if condition.ndim == single_ndim:
            condition = condition.unsqueeze(0)
        if condition.ndim != single_ndim + 1:
            self.cond_spec.check(condition, self.resolution, "condition")  # raises with the expected shape
        for i in range(condition.shape[0]):
            self.cond_spec.check(condition[i].cpu(), self.resolution, f"condition {i}")
        return condition.to(self.device)

    @torch.inference_mode()
    def condition_tokens(self, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the transformer's condition tokens (B, n_cond): the flattened condition codes, or with the tokenizer's
        ``transformer_cond='input'`` the condition's own ids; the condition indices in the tokenizer's grid shape,
        which D_x decodes with)."""
        cond = self._batch_condition(condition)
        cond_idx = self.tokenizer.encode_condition(cond)[0]
        return self.tokenizer.transformer_condition(cond, cond_idx), cond_idx

    @torch.inference_mode()
    def __call__(self, condition: torch.Tensor, num_images: int = 4, *, top_k: int | None = 100,
                 top_p: float | None = None, temperature: float = 1.0, generator: torch.Generator | None = None,
                 output_type: Literal["pil", "pt"] = "pil", guidance_scale: float = 1.0,
                 min_p: float | None = None) -> Any:
        """Sample ``num_images`` images for each condition.

        ``guidance_scale`` s: classifier-free guidance, each token drawn from ``l_u + s * (l_c - l_u)`` (before
        temperature, top-k and top-p); 1 is unguided; other values need a transformer with a null condition.
        ``min_p``: keep only tokens at least ``min_p`` times as likely as the most likely one (None: off; see
        :mod:`iqvae.sampling`).

        Returns a list (one per condition) of lists of PIL images, or with ``output_type="pt"`` a tensor
        (B, num_images, 3, H, W) in [-1, 1].
        """
        if num_images < 1:
            raise IQVAEError(f"num_images must be at least 1, got {num_images}")
        if output_type not in ("pil", "pt"):
            raise IQVAEError(f"output_type must be 'pil' or 'pt', got {output_type!r}")
        validate_sampling_args(top_k, top_p, temperature, min_p)
        check_guidance(self.transformer, guidance_scale)
        cond_tokens, cond_idx = self.condition_tokens(condition)
        b = cond_tokens.shape[0]
        cond_tokens = cond_tokens.repeat_interleave(num_images, 0)
        cond_idx = cond_idx.repeat_interleave(num_images, 0)
        tokens = generate(self.transformer, cond_tokens, top_k=top_k, top_p=top_p, temperature=temperature,
                          generator=generator, guidance_scale=guidance_scale, min_p=min_p)
        img_idx = tokens.reshape(tokens.shape[0], *self.tokenizer.tokens_shape)
        images = self.tokenizer.decode_indices(img_idx, cond_idx).clamp(-1, 1)
        images = images.reshape(b, num_images, *images.shape[1:]).float().cpu()
        if output_type == "pt":
            return images
        from .viz import to_pil

        return [to_pil(images[i]) for i in range(b)]


def copy_pipeline(src_tokenizer: str | Path, src_transformer: str | Path, dest: str | Path) -> Path:
    """Assemble a pipeline folder from a tokenizer and a transformer checkpoint folder (copies the files)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for src, name in ((src_tokenizer, "tokenizer"), (src_transformer, "transformer")):
        src = checkpoint_folder(src, name)
        if not (src / "config.json").is_file():
            raise CheckpointError(f"'{src}' is not a {name} checkpoint folder")
        if (dest / name).exists():
            shutil.rmtree(dest / name)
        shutil.copytree(src, dest / name)
    return dest
