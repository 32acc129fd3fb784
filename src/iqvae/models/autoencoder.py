"""Encoder / decoder networks of the tokenizer (VQGAN lineage) and the encoders/decoders of sequence conditions.

Image-like data (images, spatial conditions, spectrograms) go through :class:`Encoder` / :class:`Decoder`:
ResNet blocks (GroupNorm + SiLU), one resolution level per entry of ``ch_mult`` (halving / doubling the size between
levels), optional self-attention at the lowest resolution.  With ``L = len(ch_mult)`` levels the latent grid is
``resolution / 2**(L-1)``: ``ch_mult=(1, 2)`` maps 32 px to 16x16, ``(1, 1, 2, 2, 4)`` maps 256 px to 16x16 (the paper).

Sequence conditions get their own small networks that map to / from the same ``h x w`` latent grid:

* :class:`TextEncoder`: token embeddings -> transformer -> ``h*w`` learned queries cross-attend to the tokens.
* :class:`TextDecoder`: ``T`` learned queries cross-attend to the ``h*w`` latent vectors -> vocabulary logits.
* audio (log-mel ``(M, F)``) uses :class:`Encoder` / :class:`Decoder` on a 1-channel "image" with ``out_size``:
  adaptive average pooling to the grid (encoder) and bilinear resizing to ``(M, F)`` (decoder).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError


def num_groups(channels: int) -> int:
    """GroupNorm groups: the largest divisor of ``channels`` that is <= 32 and leaves >= 4 channels per group."""
    cap = max(1, min(32, channels // 4))
    return max(g for g in range(1, cap + 1) if channels % g == 0)


def Normalize(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups(channels), channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = Normalize(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = Normalize(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions, with a residual connection."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = Normalize(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)  # each (B, hw, C)
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(ch: int, attn: bool, dropout: float) -> nn.Sequential:
    return nn.Sequential(ResnetBlock(ch, ch, dropout), AttnBlock(ch) if attn else nn.Identity(),
                         ResnetBlock(ch, ch, dropout))


class ContextBranch(nn.Module):
    """A small U-Net on the latent grid: ``levels`` times (stride-2 conv, ResNet block) down, then as many times
    (nearest x2 + conv, ResNet block) up, each level's input added back on the way up.  With 3 x 3 convolutions a
    cell then sees about ``2**levels`` times its encoder's neighbourhood (at a 16 x 16 grid, 2 levels reach 4 x 4:
    the whole map), so a condition latent can name what only a wider context tells, e.g. the class an edge outline's
    shape implies, for cells inside an object where the outline is far away."""

    def __init__(self, ch: int, levels: int, dropout: float = 0.0):
        super().__init__()
        self.down = nn.ModuleList(nn.Sequential(Downsample(ch), ResnetBlock(ch, ch, dropout)) for _ in range(levels))
        self.up = nn.ModuleList(nn.Sequential(Upsample(ch), ResnetBlock(ch, ch, dropout)) for _ in range(levels))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        skips = []
        for down in self.down:
            skips.append(h)
            h = down(h)
        for up, skip in zip(self.up, reversed(skips)):
            h = up(h)[..., : skip.shape[-2], : skip.shape[-1]] + skip  # odd sizes: crop the upsampled map
        return h


class Encoder(nn.Module):
    """``(B, in_channels, H, W) -> (B, out_channels, H / 2**(L-1), W / 2**(L-1))``.

    ``context_levels > 0`` adds a :class:`ContextBranch` on the latent grid after the middle blocks."""

    def __init__(self, in_channels: int, out_channels: int, ch: int = 32, ch_mult: Sequence[int] = (1, 2),
                 num_res_blocks: int = 1, attn: bool = True, dropout: float = 0.0, context_levels: int = 0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.downsample_factor = 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        levels = []
        block_in = ch
        for i, mult in enumerate(ch_mult):
            last = i == len(ch_mult) - 1
            blocks: list[nn.Module] = []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, ch * mult, dropout))
                block_in = ch * mult
                if attn and last:
                    blocks.append(AttnBlock(block_in))
            if not last:
                blocks.append(Downsample(block_in))
            levels.append(nn.Sequential(*blocks))
        self.levels = nn.Sequential(*levels)
        self.mid = _mid(block_in, attn, dropout)
        self.context = ContextBranch(block_in, context_levels, dropout) if context_levels > 0 else nn.Identity()
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """``out_size``: adaptively average-pool the features to this grid before the middle blocks."""
        h = self.levels(self.conv_in(x))
        if out_size is not None:
            h = F.adaptive_avg_pool2d(h, out_size)
        h = self.context(self.mid(h))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """``(B, z_channels [+ cond_channels], h, w) -> (B, out_channels, h * 2**(L-1), w * 2**(L-1))``.

    ``cond_channels > 0``: ``forward`` requires ``cond`` (B, cond_channels, h, w), concatenated to ``z`` at the input.
    """

    def __init__(self, out_channels: int, z_channels: int, ch: int = 32, ch_mult: Sequence[int] = (1, 2),
                 num_res_blocks: int = 1, attn: bool = True, dropout: float = 0.0, cond_channels: int = 0):
        super().__init__()
        self.z_channels, self.cond_channels = z_channels, cond_channels
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels + cond_channels, block_in, 3, padding=1)
        self.mid = _mid(block_in, attn, dropout)
        levels = []
        for i in reversed(range(len(ch_mult))):
            blocks: list[nn.Module] = []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, ch * ch_mult[i], dropout))
                block_in = ch * ch_mult[i]
                if attn and i == len(ch_mult) - 1:
                    blocks.append(AttnBlock(block_in))
            if i != 0:
                blocks.append(Upsample(block_in))
            levels.append(nn.Sequential(*blocks))
        self.levels = nn.Sequential(*levels)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the output convolution (for the adaptive GAN weight)."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None,
                out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """``out_size``: bilinearly resize the features to this size before the output layers."""
        if self.cond_channels:
            if cond is None or cond.shape != (z.shape[0], self.cond_channels, *z.shape[2:]):
                got = None if cond is None else tuple(cond.shape)
                raise DataError(f"decoder condition features must be ({z.shape[0]}, {self.cond_channels}, "
                                f"{z.shape[2]}, {z.shape[3]}); got {got}")
            z = torch.cat([z, cond.to(z.dtype)], dim=1)
        elif cond is not None:
            raise DataError("this decoder takes no condition features (cond_channels=0); got a tensor")
        h = self.levels(self.mid(self.conv_in(z)))
        if out_size is not None:
            h = F.interpolate(h, size=out_size, mode="bilinear", align_corners=False)
        return self.conv_out(F.silu(self.norm_out(h)))


# ----------------------------------------------------------------------------------------------- sequence conditions


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mem: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, W) attends to mem (B, S, W); ``pad`` (B, S) bool marks keys to ignore."""
        b, n, w = x.shape
        hd = w // self.heads
        q = self.q(x).reshape(b, n, self.heads, hd).transpose(1, 2)
        k, v = self.kv(mem).reshape(b, mem.shape[1], 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        mask = None if pad is None else (~pad)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, w))


class _Block(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention to ``mem``, MLP."""

    def __init__(self, width: int, heads: int, cross: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = _Attention(width, heads)
        self.ln_x = nn.LayerNorm(width) if cross else None
        self.cross = _Attention(width, heads) if cross else None
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None, mem: torch.Tensor | None = None,
                mem_pad: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, pad)
        if self.cross is not None:
            x = x + self.cross(self.ln_x(x), mem, mem_pad)
        return x + self.mlp(self.ln2(x))


class TextEncoder(nn.Module):
    """Token ids (B, T) (0 = padding) -> (B, out_dim, h, w): transformer over tokens, then h*w learned queries
    (``spatial_queries``: initialised with the 2-D sin/cos code of their cell, so neighbouring cells start alike and
    a word like "left" can be matched to a region from the first step)."""

    def __init__(self, vocab_size: int, length: int, out_dim: int, grid: tuple[int, int], width: int = 128,
                 layers: int = 2, heads: int = 4, spatial_queries: bool = False):
        super().__init__()
        self.grid = grid
        n = grid[0] * grid[1]
        self.tok_emb = nn.Embedding(vocab_size, width)
        self.pos_emb = nn.Parameter(torch.randn(length, width) * 0.02)
        self.blocks = nn.ModuleList(_Block(width, heads, cross=False) for _ in range(layers))
        if spatial_queries:  # start each cell's query from the 2-D sin/cos code of its (row, col); still learned
            from .gpt import grid_codes

            i = torch.arange(n)
            init = grid_codes(i // grid[1], i % grid[1], None, width).float()
        else:
            init = torch.randn(n, width) * 0.02
        self.queries = nn.Parameter(init)
        self.query_blocks = nn.ModuleList(_Block(width, heads, cross=True) for _ in range(layers))
        self.ln_out = nn.LayerNorm(width)
        self.proj = nn.Linear(width, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pad = tokens == 0
        pad[pad.all(dim=1), 0] = False  # an all-padding caption still attends to its first (pad) embedding
        x = self.tok_emb(tokens) + self.pos_emb
        for blk in self.blocks:
            x = blk(x, pad)
        q = self.queries.expand(tokens.shape[0], -1, -1)
        for blk in self.query_blocks:
            q = blk(q, None, x, pad)
        out = self.proj(self.ln_out(q))  # (B, n, D)
        return out.transpose(1, 2).reshape(tokens.shape[0], -1, *self.grid)


class TextDecoder(nn.Module):
    """Latent grid (B, D, h, w) -> vocabulary logits (B, vocab, T) via T learned queries."""

    def __init__(self, vocab_size: int, length: int, in_dim: int, grid: tuple[int, int], width: int = 128,
                 layers: int = 2, heads: int = 4):
        super().__init__()
        n = grid[0] * grid[1]
        self.in_proj = nn.Linear(in_dim, width)
        self.grid_pos = nn.Parameter(torch.randn(n, width) * 0.02)
        self.queries = nn.Parameter(torch.randn(length, width) * 0.02)
        self.blocks = nn.ModuleList(_Block(width, heads, cross=True) for _ in range(layers))
        self.ln_out = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        mem = self.in_proj(z.flatten(2).transpose(1, 2)) + self.grid_pos
        q = self.queries.expand(z.shape[0], -1, -1)
        for blk in self.blocks:
            q = blk(q, None, mem)
        return self.head(self.ln_out(q)).transpose(1, 2)
