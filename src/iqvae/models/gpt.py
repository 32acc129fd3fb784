"""Conditional GPT for IQ-VAE's auto-regressive stage (paper Sec. 3.3, Eq. 4; Table 2).

One readable model file in the spirit of nanoGPT's ``model.py``: a dataclass config, a GPT-2 style decoder (pre-LN,
GELU MLP, learned absolute positions, ``scaled_dot_product_attention``) and no trainer imports.

Sequence layout
---------------
The transformer sees ``[c_1 .. c_n, x_1 .. x_m]`` with ``n = n_cond`` condition tokens and ``m = n_image`` image
tokens (paper preset: 256 + 256 = 512 = ``block_size``).  Condition and image tokens have separate embedding tables
(``wte_cond``, ``wte_image``) because they index different codebooks; positions are shared (``wpe``).  The output head
predicts image tokens only (``image_vocab`` classes): the hidden state at sequence position ``n_cond - 1 + j``
predicts image token ``x_{j+1}`` (0-based: image token ``j``).  The last image token is never an input, so the
longest sequence actually processed has ``block_size - 1`` positions; ``wpe`` still has ``block_size`` rows (the last
row is unused; kept so the table size equals the paper's sequence length).

Classifier-free guidance (``cfg_dropout > 0``, our addition): rows marked by a ``null`` ``(B,)`` bool mask get the
learned null condition ``wte_null`` (its own ``(n_cond, n_embd)`` table) in place of the condition token embeddings,
and no aligned condition input; :func:`iqvae.sampling.generate` runs them next to the conditional rows to guide.

Training contract
-----------------
``logits = model(cond, image)`` has shape ``(B, t, image_vocab)`` and ``logits[:, j]`` is the distribution of
``image[:, j]`` given ``cond`` and ``image[:, :j]``.  Internally the model consumes ``cond`` and ``image[:, :t-1]``
(the last column of ``image`` is only a target), so the training loss is simply::

    F.cross_entropy(logits.reshape(-1, V), image.reshape(-1))

and no loss is ever computed on condition tokens.

Sampling entry points (used by :mod:`iqvae.sampling`)
-----------------------------------------------------
``prefill(cond, cache)`` runs the condition prefix and returns the logits of the first image token; ``decode(token,
pos, cache)`` feeds one image token placed at absolute sequence position ``pos`` and returns the logits of the next
image token; both are thin wrappers over ``forward_cached(embeds, start_pos, cache)``.  :class:`KVCache` preallocates
``(n_layer, 2, B, n_head, block_size, head_dim)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import check_bounds, from_dict, opt, to_dict
from ..errors import ConfigError, IQVAEError
from .weights import checkpoint_folder, load_checkpoint_weights


@dataclass
class GPTOptions:
    """The transformer's options a user sets (the ``model`` section of ``train-transformer``); defaults are the
    paper preset (Table 2, GPT-2 medium shape).  :class:`GPTConfig` adds what the token codes fix."""

    n_layer: int = opt(24, "transformer blocks (Table 2: 24)")
    n_head: int = opt(16, "attention heads per block (not in the paper; GPT-2 medium uses 16 at width 1024)")
    n_embd: int = opt(1024, "model width (Table 2 'embedding number': 1024)")
    dropout: float = opt(0.0, "dropout on embeddings, attention weights and residual branches")
    bias: bool = opt(True, "use biases in Linear and LayerNorm layers (GPT-2: true)")
    pos_init: str = opt("normal", "initialisation of the learned position table: 'normal' (GPT-2: N(0, 0.02)) or "
                        "'spatial' (2-D sin/cos of each token's grid location, see spatial_position_table)", ours=True)
    cond_align: bool = opt(False, "also add, to the input of the slot that predicts image token j, an embedding "
                           "(wte_align) of the condition token at j's grid location (needs n_image to be a multiple "
                           "of n_cond); see aligned_cond_index", ours=True)
    above_input: bool = opt(False, "also add, to the input of the slot that predicts image token j, a learned linear "
                            "map (above_proj) of the embedding of the image token one grid row above j (already "
                            "generated); needs image_grid; see GPT.above_offset", ours=True)
    above_window: int = opt(1, "with above_input: how many tokens of the row above feed the slot predicting j, "
                            "starting directly above j and going right (1: the token above only; each further one "
                            "has its own map above_right[d-1]; positions past the row's end are left out); at most "
                            "the grid width", ours=True)
    cfg_dropout: float = opt(0.0, "classifier-free guidance: probability that a training sample's condition is "
                             "replaced by a learned null condition (wte_null, its own (n_cond, n_embd) table; created "
                             "only when > 0), so the model can also sample unconditionally and `--cfg-scale` can "
                             "guide; 0: no null condition (the paper's model)", ours=True)

    def validate(self) -> None:
        check_bounds(self, ("n_layer", "n_head", "n_embd"), low=1, integer=True)
        if self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"option 'n_embd' ({self.n_embd}) must be divisible by 'n_head' ({self.n_head}) so every head has "
                "the same width"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"option 'dropout' must be in [0, 1), got {self.dropout!r}")
        if self.pos_init not in POS_INITS:
            raise ConfigError(f"option 'pos_init' must be one of {', '.join(POS_INITS)}, got {self.pos_init!r}")
        K = self.above_window
        if K != 1 and not self.above_input:
            raise ConfigError(f"option above_window={K!r} needs above_input=true (it widens the row-above input)")
        if isinstance(K, bool) or not isinstance(K, int) or K < 1:
            raise ConfigError(f"option 'above_window' must be an integer in [1, grid width], got {K!r}")
        p = self.cfg_dropout
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) < 1.0:
            raise ConfigError(f"option 'cfg_dropout' must be a probability in [0, 1) (0: no null condition), got {p!r}")

    @property
    def null_cond(self) -> bool:
        """Whether the model has a learned null condition (``cfg_dropout > 0``): needed to sample with guidance."""
        return float(self.cfg_dropout) > 0.0


@dataclass
class GPTConfig(GPTOptions):
    """Every constructor argument of :class:`GPT`: the options plus the vocabularies, sequence lengths and token grid
    of the token codes (``iqvae encode`` writes them; :meth:`from_options` joins the two)."""

    cond_vocab: int = opt(1024, "number of condition codes (size of the condition codebook)")
    image_vocab: int = opt(1024, "number of image codes (size of the image codebook; Table 2: 1024)")
    n_cond: int = opt(256, "condition tokens per sample (16x16 condition code map = 256)")
    n_image: int = opt(256, "image tokens per sample (16x16 image code map = 256)")
    image_grid: list[int] = opt(help="image token grid [h, w] or [h, w, depth] (from the token codes); "
                                "pos_init=spatial and above_input need it", factory=list)

    @classmethod
    def from_options(cls, options: GPTOptions, meta: dict[str, Any]) -> "GPTConfig":
        """The model config for ``options`` on the token codes described by ``meta`` (``codes.json``: cond_vocab,
        image_vocab, n_cond, n_image, tokens_shape); the grid is kept only where an option reads it."""
        grid = [int(g) for g in meta.get("tokens_shape", [])] if options.pos_init == "spatial" or options.above_input \
            else []
        derived = {"cond_vocab": meta["cond_vocab"], "image_vocab": meta["image_vocab"], "n_cond": meta["n_cond"],
                   "n_image": meta["n_image"], "image_grid": grid}
        return cls(**{f.name: getattr(options, f.name) for f in dataclasses.fields(GPTOptions)}, **derived)

    @property
    def block_size(self) -> int:
        """Full sequence length n_cond + n_image (paper: 512)."""
        return self.n_cond + self.n_image

    def validate(self) -> None:
        check_bounds(self, ("cond_vocab", "image_vocab", "n_cond", "n_image"), low=1, integer=True)
        super().validate()
        grid = list(self.image_grid)
        if grid and (len(grid) not in (2, 3) or any(not isinstance(g, int) or g < 1 for g in grid)
                     or math.prod(grid) != self.n_image):
            raise ConfigError(f"option 'image_grid' must be [h, w] or [h, w, depth] of positive integers whose product "
                              f"is n_image={self.n_image}, got {grid!r}")
        if self.cond_align and self.n_image % self.n_cond:
            raise ConfigError(f"option cond_align=true needs n_image ({self.n_image}) to be a multiple of n_cond "
                              f"({self.n_cond}): every image token must have one aligned condition token")
        if self.above_input and not grid:
            raise ConfigError("option above_input=true needs 'image_grid' (the image token grid [h, w])")
        if grid and self.above_window > grid[1]:
            raise ConfigError(f"option 'above_window' must be an integer in [1, grid width = {grid[1]}], "
                              f"got {self.above_window!r}")
        if self.pos_init == "spatial" and not grid:
            raise ConfigError("option pos_init='spatial' needs 'image_grid' (the image token grid [h, w])")


POS_INITS = ("normal", "spatial")


def aligned_cond_index(config: "GPTConfig") -> torch.Tensor:
    """``(n_image,)`` int64: the condition token aligned with each image token (``cond_align``).

    Image token ``j`` (raster order, RQ depth innermost) sits at grid location ``j // r`` with
    ``r = n_image // n_cond`` (the RQ depth, else 1); a condition map of the same grid has its token for that location
    at index ``j // r``.  A design choice of this implementation, not of the paper: the sequence and the model's
    distribution ``p(x_j | C, x_<j)`` are unchanged (all of C is still in the prefix); the slot predicting ``x_j``
    merely gets the aligned condition code as a second input embedding, so "which condition token is mine" need not
    be learned through attention.  For conditions that are not maps (text, audio: their ``h*w`` latent tokens come
    from learned queries) the alignment is only positional; the option is off by default.
    """
    r = config.n_image // config.n_cond
    return torch.arange(config.n_image) // r


def _sincos(coord: torch.Tensor, dim: int, base: float = 100.0) -> torch.Tensor:
    """``(N,)`` coordinates -> ``(N, dim)`` [sin | cos] features (``dim`` even) at geometric frequencies."""
    freqs = base ** (-torch.arange(dim // 2, dtype=torch.float64) / max(dim // 2, 1))
    ang = coord.double()[:, None] * freqs[None]
    return torch.cat([ang.sin(), ang.cos()], dim=1)


def grid_codes(rows: torch.Tensor, cols: torch.Tensor, depth: torch.Tensor | None, n_embd: int) -> torch.Tensor:
    """2-D (or 3-D with RQ depth) sin/cos codes; the feature dimensions are split between the coordinates."""
    parts = 3 if depth is not None else 2
    size = (n_embd // parts) // 2 * 2
    sizes = [size] * (parts - 1) + [n_embd - size * (parts - 1)]
    coords = [rows, cols] + ([depth] if depth is not None else [])
    feats = [_sincos(c, d) if d >= 2 else torch.zeros(len(c), d, dtype=torch.float64) for c, d in zip(coords, sizes)]
    return torch.cat([f[:, : d] for f, d in zip(feats, sizes)], dim=1)


def spatial_position_table(config: "GPTConfig") -> torch.Tensor:
    """The ``pos_init='spatial'`` initial value of ``wpe``: ``(block_size, n_embd)``.

    A design choice of this implementation, not of the paper (whose minGPT code base initialises the learned position
    table with zeros; GPT-2 with N(0, 0.02)).  The table stays learned; only its starting point carries geometry:

    * the image slot at sequence position ``n_cond - 1 + j`` (the slot whose output predicts image token ``j``) gets the
      sin/cos code of token ``j``'s grid location ``(row, col[, depth])``: the location it predicts;
    * a condition token gets the code of its own location when the condition is a grid of the same ``h x w`` as the image
      (``n_cond == h * w``: seg, edge, keypoints, layout maps), so a slot and the condition token at the location it
      predicts start with equal position vectors; otherwise (text, audio) a 1-D sin/cos code of its index;
    * position ``n_cond - 1`` is both the last condition token and the slot predicting image token 0; it keeps the
      condition token's code (the last row, never fed, repeats the last image code).

    Sin/cos codes make a fixed spatial offset a fixed linear map, so "look at the aligned condition token" and "look at
    the token above / to the left" are the same function at every location; on the CPU presets this is what lets a
    small transformer learn aligned, colour-consistent images in minutes (docs/performance.md).  Rows are scaled to
    RMS 0.02, the scale of the token embeddings.
    """
    grid = list(config.image_grid)
    if not grid:
        raise ConfigError("spatial_position_table needs config.image_grid")
    h, w = grid[0], grid[1]
    d = grid[2] if len(grid) == 3 else 1
    j = torch.arange(config.n_image)
    img = grid_codes(j // (w * d), (j // d) % w, (j % d) if d > 1 else None, config.n_embd)
    i = torch.arange(config.n_cond)
    if config.n_cond == h * w:
        cond = grid_codes(i // w, i % w, torch.zeros_like(i) if d > 1 else None, config.n_embd)
    else:
        cond = _sincos(i, config.n_embd // 2 * 2, base=1000.0)
        cond = torch.cat([cond, torch.zeros(len(i), config.n_embd - cond.shape[1], dtype=cond.dtype)], dim=1)
    table = torch.zeros(config.block_size, config.n_embd, dtype=torch.float64)
    table[config.n_cond - 1 : config.n_cond - 1 + config.n_image] = img
    table[-1] = img[-1]  # never fed (the last image token is only a target); kept so every row has the same scale
    table[: config.n_cond] = cond
    rms = table.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-12)
    return (table / rms * 0.02).float()


class KVCache:
    """Preallocated key/value cache: ``kv[layer, 0|1]`` has shape ``(B, n_head, block_size, head_dim)``.

    The cache holds no position counter: callers pass the absolute ``start_pos`` of what they feed (pure-function style,
    as in LlamaGen).  Entries at positions ``>= start_pos + T`` are never read by a call that writes ``[start_pos,
    start_pos + T)``.
    """

    def __init__(self, config: GPTConfig, batch_size: int, device=None, dtype: torch.dtype = torch.float32):
        if batch_size < 1:
            raise IQVAEError(f"KVCache batch_size must be >= 1, got {batch_size}")
        self.config = config
        self.batch_size = batch_size
        head_dim = config.n_embd // config.n_head
        self.kv = torch.zeros(
            (config.n_layer, 2, batch_size, config.n_head, config.block_size, head_dim), device=device, dtype=dtype
        )

    def layer(self, i: int) -> torch.Tensor:
        return self.kv[i]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, layer_cache: torch.Tensor | None = None, start_pos: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        dropout_p = self.dropout if self.training else 0.0
        if layer_cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            end = start_pos + T
            layer_cache[0, :, :, start_pos:end] = k
            layer_cache[1, :, :, start_pos:end] = v
            keys, values = layer_cache[0, :, :, :end], layer_cache[1, :, :, :end]
            if T == 1 and dropout_p == 0.0:
                # decode: one query sees every cached key.  Two small batched matmuls; on CPU the fused SDPA kernel
                # costs ~10x more per call for a single query (docs/performance.md, `iqvae bench sampling`)
                att = torch.softmax((q @ keys.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1])), dim=-1)
                y = att @ values
            elif T == 1:
                y = F.scaled_dot_product_attention(q, keys, values, dropout_p=dropout_p)
            elif start_pos == 0:
                y = F.scaled_dot_product_attention(q, keys, values, dropout_p=dropout_p, is_causal=True)
            else:  # T queries at positions start_pos.. attend to keys at positions <= their own
                qpos = torch.arange(start_pos, end, device=x.device)[:, None]
                kpos = torch.arange(end, device=x.device)[None, :]
                y = F.scaled_dot_product_attention(q, keys, values, attn_mask=kpos <= qpos, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, layer_cache: torch.Tensor | None = None, start_pos: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), layer_cache, start_pos)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Conditional decoder-only transformer over ``[condition tokens, image tokens]``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.wte_cond = nn.Embedding(config.cond_vocab, config.n_embd)
        self.wte_image = nn.Embedding(config.image_vocab, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.wte_align = nn.Embedding(config.cond_vocab, config.n_embd) if config.cond_align else None
        if config.cond_align:
            self.register_buffer("align_index", aligned_cond_index(config), persistent=False)
        self.above_proj = nn.Linear(config.n_embd, config.n_embd, bias=False) if config.above_input else None
        K = config.above_window if config.above_input else 1
        self.above_right = (nn.ModuleList(nn.Linear(config.n_embd, config.n_embd, bias=False) for _ in range(K - 1))
                            if K > 1 else None)
        if K > 1:  # column of each image token (the row-end mask of the up-right inputs)
            w, depth = self._grid_width_depth()
            self.register_buffer("image_col", (torch.arange(config.n_image) // depth) % w, persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.image_vocab, bias=False)
        self.apply(self._init_weights)
        # GPT-2: scale residual output projections by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.pos_init == "spatial":
            with torch.no_grad():
                self.wpe.weight.copy_(spatial_position_table(config))
        # classifier-free guidance: created last, so every other weight starts as without it (same seed)
        self.wte_null = None
        if config.null_cond:
            self.wte_null = nn.Embedding(config.n_cond, config.n_embd)
            nn.init.normal_(self.wte_null.weight, mean=0.0, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # ------------------------------------------------------------------ bookkeeping
    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count; ``non_embedding=True`` leaves out the lookup tables (wte_cond, wte_image, wpe, wte_align,
        wte_null).

        The non-embedding count is the one whose ``2 * N`` approximates matmul FLOPs per token (it includes lm_head).
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(m.weight.numel() for m in self._embedding_tables())
        return n

    def _embedding_tables(self) -> list[nn.Embedding]:
        return [m for m in (self.wte_cond, self.wte_image, self.wpe, self.wte_align, self.wte_null) if m is not None]

    def param_groups(self, weight_decay: float, decay_embeddings: bool = False) -> list[dict]:
        """AdamW groups: decay every >=2-D weight of a Linear layer; never biases or LayerNorm gains.

        Embedding tables are >=2-D but NOT decayed by default, as in minGPT (the paper's code base, footnote 4) and
        taming-transformers; ``decay_embeddings=True`` gives nanoGPT's rule (decay every >=2-D parameter).
        """
        embedding_ids = {id(m.weight) for m in self._embedding_tables()}
        decay, no_decay = [], []
        for p in self.parameters():
            if not p.requires_grad:
                continue
            if p.dim() >= 2 and (decay_embeddings or id(p) not in embedding_ids):
                decay.append(p)
            else:
                no_decay.append(p)
        return [
            {"params": decay, "weight_decay": float(weight_decay)},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def configure_optimizer(
        self,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.01,
        *,
        decay_embeddings: bool = False,
    ) -> torch.optim.AdamW:
        """AdamW (paper Sec. 4.1: lr 1.5e-4, betas (0.9, 0.95)) with the groups of :meth:`param_groups`."""
        if not lr > 0:
            raise IQVAEError(f"configure_optimizer: lr must be > 0, got {lr!r}")
        if weight_decay < 0:
            raise IQVAEError(f"configure_optimizer: weight_decay must be >= 0, got {weight_decay!r}")
        return torch.optim.AdamW(self.param_groups(weight_decay, decay_embeddings), lr=lr, betas=tuple(betas),
                                 foreach=True)

    @property
    def above_offset(self) -> int:
        """Tokens between an image token and the one a grid row above it (``w * depth``); 0 without ``above_input``.

        ``above_input`` is a design choice of this implementation, not of the paper: the slot predicting ``x_j`` is
        fed ``x_{j-1}`` (as in any GPT) plus ``above_proj(e(x_{j-w}))``, the token above the one it predicts, which
        is already generated.  The model is still the causal ``p(x_j | C, x_<j)`` of Eq. 4 and raster order is kept;
        the slot simply gets its vertical neighbour as an input instead of having to find it by attention (the
        horizontal one is its ordinary input).
        """
        if not self.config.above_input:
            return 0
        w, depth = self._grid_width_depth()
        return w * depth

    def _grid_width_depth(self) -> tuple[int, int]:
        """Width of the image token grid and its RQ depth (1 without one)."""
        g = self.config.image_grid
        return g[1], (g[2] if len(g) == 3 else 1)

    def above_offsets(self) -> list[int]:
        """Offsets (tokens back from the predicted token j) of the row-above inputs: ``W - d * depth`` for
        ``d = 0 .. above_window - 1`` (directly above, then to its right); empty without ``above_input``."""
        W = self.above_offset
        if not W:
            return []
        depth = self._grid_width_depth()[1]
        return [W - d * depth for d in range(self.config.above_window)]

    def _above(self, embeds: torch.Tensor, t: int, lead: int) -> torch.Tensor | None:
        """The row-above inputs of the slots of image tokens ``0 .. t-1`` from image embeddings ``embeds``
        ``(B, >= t - 1, C)``, left-padded with ``lead`` zero rows (the slots before them); None when no slot has a
        row above.  Slot j gets ``sum_d map_d(embeds[j - W + d*depth])`` over the window tokens in j's row above
        (``j >= W``, column of j + d < w)."""
        W = self.above_offset
        if not W or t <= W:
            return None
        out = F.pad(self.above_proj(embeds[:, : t - W]), (0, 0, W, 0))
        w = self._grid_width_depth()[0]
        for d, (off, proj) in enumerate(zip(self.above_offsets()[1:], self.above_right or []), start=1):
            # token j - off feeds slot j for j >= W (the row above exists) and col(j) + d < w (no wrap-around)
            part = F.pad(proj(embeds[:, W - off : t - off]), (0, 0, W, 0))
            keep = (self.image_col[:t] + d < w).to(part.dtype)
            out = out + part * keep[None, :, None]
        return F.pad(out, (0, 0, lead, 0))

    # ------------------------------------------------------------------ input checks
    def _check_tokens(self, name: str, ids: torch.Tensor, shape: tuple, vocab: int) -> None:
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            got = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise IQVAEError(f"'{name}' must be an integer tensor of token ids, got {got}")
        if ids.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, ids.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise IQVAEError(f"'{name}' must have shape {want}, got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise IQVAEError(
                f"'{name}' ids must lie in [0, {vocab - 1}] (vocabulary of {vocab}), got range "
                f"[{int(ids.min())}, {int(ids.max())}]"
            )

    def check_cond(self, cond: torch.Tensor) -> None:
        self._check_tokens("cond", cond, (None, self.config.n_cond), self.config.cond_vocab)

    def _check_null(self, null: torch.Tensor | None, batch: int) -> None:
        if null is None:
            return
        if self.wte_null is None:
            raise IQVAEError("this transformer has no null condition (trained with model.cfg_dropout=0), so it cannot "
                             "sample unconditionally: use --cfg-scale 1 (no guidance) or train with cfg_dropout > 0")
        if not isinstance(null, torch.Tensor) or null.dtype != torch.bool or tuple(null.shape) != (batch,):
            got = tuple(null.shape) if isinstance(null, torch.Tensor) else type(null).__name__
            raise IQVAEError(f"'null' must be a bool tensor of shape ({batch},) (rows given the null condition), "
                             f"got {got}")

    # ------------------------------------------------------------------ condition inputs (classifier-free guidance)
    def _cond_embeds(self, cond: torch.Tensor, null: torch.Tensor | None) -> torch.Tensor:
        """``(B, n_cond, C)``: the condition token embeddings; rows with ``null[b]`` get the null condition
        ``wte_null`` instead (a table of its own: no condition code stands for "no condition")."""
        x = self.wte_cond(cond)
        if null is None:
            return x
        return torch.where(null[:, None, None], self.wte_null.weight[None].to(x.dtype), x)

    def _align_embeds(self, cond: torch.Tensor, index: torch.Tensor, null: torch.Tensor | None) -> torch.Tensor:
        """``cond_align`` input ``wte_align(cond[:, index])``; zero for null rows (the unconditional model sees no
        condition anywhere: its prefix is ``wte_null`` and its slots get no aligned condition code)."""
        e = self.wte_align(cond[:, index])
        return e if null is None else e.masked_fill(null[:, None, None], 0.0)

    # ------------------------------------------------------------------ embeddings
    def embed_image_soft(self, probs: torch.Tensor) -> torch.Tensor:
        """Embedding of a (soft or one-hot) distribution over image codes: ``probs @ wte_image.weight``."""
        if probs.shape[-1] != self.config.image_vocab:
            raise IQVAEError(
                f"'probs' last dimension must be image_vocab={self.config.image_vocab}, got {tuple(probs.shape)}"
            )
        return probs.to(self.wte_image.weight.dtype) @ self.wte_image.weight

    def _trunk(self, x: torch.Tensor, start_pos: int, cache: KVCache | None) -> torch.Tensor:
        """Add positions [start_pos, start_pos + T), run the blocks and the final LayerNorm."""
        T = x.shape[1]
        x = self.drop(x + self.wpe.weight[start_pos : start_pos + T])
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache.layer(i), start_pos)
        return self.ln_f(x)

    # ------------------------------------------------------------------ training path
    def forward(
        self, cond: torch.Tensor, image: torch.Tensor, image_embeds: torch.Tensor | None = None,
        null: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``(B, t, image_vocab)``; ``logits[:, j]`` predicts ``image[:, j]`` from cond and ``image[:, :j]``.

        ``image`` is ``(B, t)`` with ``1 <= t <= n_image``; only ``image[:, :t-1]`` is fed to the network.
        ``image_embeds`` ``(B, t, n_embd)``, if given, replaces the image token embeddings (again only the first
        ``t - 1`` rows are used); Gumbel sampling passes soft / straight-through sample embeddings this way.
        ``null`` ``(B,)`` bool, if given, marks the rows that get the null condition instead of ``cond`` (needs
        ``cfg_dropout > 0``; see :meth:`_cond_embeds`).
        """
        cfg = self.config
        self.check_cond(cond)
        B = cond.shape[0]
        self._check_null(null, B)
        self._check_tokens("image", image, (B, None), cfg.image_vocab)
        t = image.shape[1]
        if not 1 <= t <= cfg.n_image:
            raise IQVAEError(f"'image' must have between 1 and n_image={cfg.n_image} tokens, got {t}")
        if image_embeds is None:
            img = self.wte_image(image[:, : t - 1])
        else:
            if tuple(image_embeds.shape) != (B, t, cfg.n_embd):
                raise IQVAEError(
                    f"'image_embeds' must have shape ({B}, {t}, {cfg.n_embd}) to match 'image', "
                    f"got {tuple(image_embeds.shape)}"
                )
            img = image_embeds[:, : t - 1]
        x = torch.cat([self._cond_embeds(cond, null), img], dim=1)
        if self.wte_align is not None:  # slots n_cond-1 .. n_cond+t-2 predict image tokens 0 .. t-1
            x = x + F.pad(self._align_embeds(cond, self.align_index[:t], null), (0, 0, cfg.n_cond - 1, 0))
        above = self._above(img, t, cfg.n_cond - 1)
        if above is not None:
            x = x + above
        h = self._trunk(x, 0, None)
        return self.lm_head(h[:, cfg.n_cond - 1 :])

    # ------------------------------------------------------------------ cached path (sampling)
    def forward_cached(self, embeds: torch.Tensor, start_pos: int, cache: KVCache) -> torch.Tensor:
        """Run ``embeds`` ``(B, T, n_embd)`` at positions ``[start_pos, start_pos+T)``; returns logits ``(B, T, V)``.

        Keys/values of those positions are written into ``cache``; earlier positions are read from it.
        """
        B, T, _ = embeds.shape
        if cache.batch_size != B:
            raise IQVAEError(f"KV cache was allocated for batch {cache.batch_size}, got a batch of {B}")
        if start_pos < 0 or start_pos + T > self.config.block_size:
            raise IQVAEError(
                f"cached positions [{start_pos}, {start_pos + T}) must lie within block_size={self.config.block_size}"
            )
        return self.lm_head(self._trunk(embeds, start_pos, cache))

    def prefill(self, cond: torch.Tensor, cache: KVCache, null: torch.Tensor | None = None) -> torch.Tensor:
        """Feed the condition prefix; returns the logits ``(B, V)`` of the first image token.  ``null`` ``(B,)``
        bool: rows given the null condition (as in :meth:`forward`)."""
        self.check_cond(cond)
        self._check_null(null, cond.shape[0])
        x = self._cond_embeds(cond, null)
        if self.wte_align is not None:  # the last condition slot predicts image token 0
            x = x + F.pad(self._align_embeds(cond, self.align_index[:1], null), (0, 0, self.config.n_cond - 1, 0))
        h = self._trunk(x, 0, self._checked_cache(cache, cond.shape[0]))
        return self.lm_head(h[:, -1])

    def decode(self, token: torch.Tensor, pos: int, cache: KVCache, cond: torch.Tensor | None = None,
               above: torch.Tensor | None = None, null: torch.Tensor | None = None) -> torch.Tensor:
        """Feed one image token ``(B, 1)`` at absolute sequence position ``pos`` (``n_cond + j`` for image token j);
        returns the logits ``(B, V)`` of the image token at position ``pos + 1``.  ``cond`` ``(B, n_cond)`` (the
        prefilled condition) is needed with ``cond_align``: the slot gets the aligned condition token's embedding.
        ``above`` ``(B, above_window)``, the image tokens :meth:`above_offsets` before the predicted one (any value
        where a window position lies past the row's end: it is left out), is needed with ``above_input`` once the
        predicted token has a row above it.  ``null`` ``(B,)`` bool: the rows prefilled with the null condition (their
        aligned condition input is zero, as in :meth:`forward`).

        Hot path: shape and position are checked but ids are not range-checked (that would sync a GPU every token).
        """
        if token.dim() != 2 or token.shape[1] != 1:
            raise IQVAEError(f"'token' must have shape (B, 1), got {tuple(token.shape)}")
        if not self.config.n_cond <= pos < self.config.block_size - 1:
            raise IQVAEError(
                f"decode position must be in [{self.config.n_cond}, {self.config.block_size - 2}], got {pos}"
            )
        x = self.wte_image(token)
        j = pos - self.config.n_cond + 1  # the image token this slot predicts
        if self.wte_align is not None:
            if cond is None or cond.shape[0] != token.shape[0]:
                raise IQVAEError("decode needs the condition tokens (cond=, shape (B, n_cond)) when cond_align is on")
            x = x + self._align_embeds(cond, self.align_index[j : j + 1], null)
        W = self.above_offset
        if W and j >= W:
            K = self.config.above_window
            if above is None or tuple(above.shape) != (token.shape[0], K):
                raise IQVAEError(f"decode needs the image tokens of the row above the predicted one (above=, shape "
                                 f"({token.shape[0]}, {K})) when above_input is on")
            e = self.wte_image(above)
            x = x + self.above_proj(e[:, :1])
            w, depth = self._grid_width_depth()
            col = (j // depth) % w  # in Python: reading image_col[j] would sync a GPU every token
            for d, proj in enumerate(self.above_right or [], start=1):
                if col + d < w:
                    x = x + proj(e[:, d : d + 1])
        return self.forward_cached(x, pos, cache)[:, -1]

    def _checked_cache(self, cache: KVCache, batch: int) -> KVCache:
        if cache.batch_size != batch:
            raise IQVAEError(f"KV cache was allocated for batch {cache.batch_size}, got a batch of {batch}")
        return cache

    # ------------------------------------------------------------------ checkpoint folders
    # A ``transformer/`` folder: {"model": the GPTConfig, "codes": the codes.json of its training codes + "dir"}.
    checkpoint_kind = "iqvae-transformer"
    codes_meta: dict[str, Any] | None = None  # metadata of the token codes it was trained on (names its tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> GPT:
        """The trained transformer in ``path`` (a ``transformer/`` folder or a run folder holding one), in eval
        mode, with its :attr:`codes_meta`."""
        path = checkpoint_folder(path, "transformer")
        ck = load_checkpoint(path, cls.checkpoint_kind)
        model = load_checkpoint_weights(cls(from_dict(GPTConfig, ck.config["model"])), ck.model_state, path)
        model.codes_meta = ck.config.get("codes", {})
        return model.to(device).eval()

    def save_pretrained(self, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
        """Write this transformer (config, :attr:`codes_meta`, weights) as a checkpoint folder ``path``."""
        header = {"model": to_dict(self.config), "codes": self.codes_meta or {}}
        return save_checkpoint(path, kind=self.checkpoint_kind, config=header, model_state=self.state_dict(), meta=meta)
