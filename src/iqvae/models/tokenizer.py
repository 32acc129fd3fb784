"""IQ-VAE tokenizer: image and condition encoders, quantizers and decoders (paper Sec. 3.1-3.2, Fig. 1-2).

``E_x(image) -> z_x`` and ``E_c(cond) -> z_c``, both ``(B, D, h, w)`` with the same ``n = h*w`` positions; each is
quantized with its own codebook (or one shared codebook).  ``D_x`` decodes the image from its quantized features
concatenated with the condition features; ``D_c`` reconstructs the condition from its quantized features.

Variants (``IQVAEConfig.variant``):

* ``vqgan-pair``: the taming-transformers baseline, two independent VQ models; ``D_x`` sees image tokens only.
* ``iq-none``: joint training, ``D_x`` sees the condition features, no regulariser (ablation "None", Table 3).
* ``iq-vr``: ``iq-none`` plus the variational regulariser, the sliced Gromov-Wasserstein distance (Eq. 2) between the
  ``n`` condition vectors and the ``n`` image vectors of each image (the paper's model).
* ``svq``: the semantically coupled VQ model (Alaniz et al.): ONE encoder over ``concat(image, condition map)`` whose
  ``2*D`` output channels are split into the image and condition latents, each with its own codebook; ``D_x`` sees
  ``concat(zq_x, sg[zq_c])`` (stop-gradient), ``D_c`` sees ``zq_c``.  Spatial conditions only.  The condition latent
  is taken from the encoder run on ``concat(mid-grey image, condition map)`` (``svq_cond_image='grey'``, the default),
  in training and at sampling, so it is a function of the condition alone; see below.

Choices where the paper is silent (also in the ``help`` of each option):

* ``decoder_cond="quantized"`` (default): ``D_x`` sees the *quantized* condition features, so an image can be decoded
  from the two token sequences alone (the transformer's output plus the condition tokens).  The paper's wording
  ("concatenated with the encoded condition features") also admits the continuous ``E_c`` output; that is
  ``decoder_cond="continuous"``, which then needs the raw condition at decoding time.
* Image and condition use the same quantizer kind (``vq`` or ``rq`` with the same depth), so both token sequences have
  the same structure.
* svq at sampling time: the shared encoder needs an image to produce the condition latent (the sVQ paper's conclusion:
  "a reference image is required during inference").  With ``svq_cond_image='paired'`` (the paper's training taken
  literally) the condition latent is computed from the paired image, so the token codes the transformer learns from
  carry the image (at 16 px, 29 % of a scene's condition tokens changed when only its image was swapped), and at
  sampling, where no image exists, :meth:`IQVAE.encode_condition` feeds the reference ``image`` if given, else a
  mid-grey one: condition tokens the transformer never saw, and the 16 px ablation's sVQ row drew the same flat grey
  image for every condition.  ``svq_cond_image='grey'`` (the default) feeds the mid-grey image (all zeros in
  [-1, 1]) to the condition half in training too, so the condition tokens of the codes on disk and of sampling are
  the same function of the condition (tested), the paper's "the image latent depends on the semantic latent, but
  not vice versa"; the image latent still comes from the encoder on the real image and the condition.  The encoder
  then runs twice per step (as E_x and E_c do for the other variants).
* Everything that differs per condition type (input, encoder/decoder, losses, checks) is its object in
  :mod:`iqvae.modalities`; the choices:
* Condition reconstruction losses: seg -> cross-entropy over classes; layout -> per-channel binary cross-entropy
  (boxes of different classes overlap, so a pixel can carry several labels); edge -> binary cross-entropy;
  keypoints -> MSE on the heatmaps; audio -> MSE on the log-mel; text -> cross-entropy over the vocabulary, padding
  (id 0) ignored.
* Condition inputs: seg as one-hot maps; edge / keypoints / layout as given (values in [0, 1], checked); audio
  log-mel as given (finite values checked; datasets should standardise them); text as token ids.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import from_dict, opt, to_dict
from ..data.config import DataConfig
from ..errors import CheckpointError, ConfigError, DataError
from ..modalities import ConditionSpec, Modality, Nets, modality_names, spatial_names
from ..modalities.base import conv_kwargs
from .autoencoder import Decoder, Encoder, TextDecoder, TextEncoder
from .quantize import ResidualQuantizer, VectorQuantizer
from .sgw import sliced_gromov_wasserstein
from .weights import checkpoint_folder, load_checkpoint_weights

Variant = Literal["vqgan-pair", "iq-none", "iq-vr", "svq"]


@dataclass
class IQVAEConfig:
    variant: Variant = opt("iq-vr", "vqgan-pair (two independent VQ models, taming baseline) | iq-none (joint, no "
                                    "regulariser) | iq-vr (joint + sliced-GW variational regulariser: the paper) | "
                                    "svq (semantically coupled VQ: one shared encoder; spatial conditions only)")
    resolution: int = opt(256, "image resolution in pixels (square); the paper uses 256")
    ch: int = opt(128, "base channel count of the conv encoders/decoders")
    ch_mult: tuple[int, ...] = opt((1, 1, 2, 2, 4), "channel multiplier per resolution level; the latent grid is "
                                                    "resolution / 2**(len-1) (256 px and 5 levels -> 16x16)")
    num_res_blocks: int = opt(2, "ResNet blocks per level (decoders use one more)")
    attn: bool = opt(True, "self-attention at the lowest resolution and in the middle blocks")
    cond_attn: bool | None = opt(None, "self-attention in the conv condition encoder / decoder (seg, edge, keypoints, "
                                       "layout) at the lowest resolution and in the middle blocks; null: as attn. "
                                       "Attention sees the whole map, so a condition latent can name what only a "
                                       "wider context tells (the class an edge outline's shape implies)")
    cond_context_levels: int = opt(
        0, "our addition, not in the paper: a small U-Net on the latent grid of the conv condition encoder (seg, edge, "
        "keypoints, layout): this many stride-2 levels down and back up, so a condition latent sees the map around "
        "it (2 levels: 16 x 16 -> 4 x 4) and can name what only a wider context tells, e.g. the class an edge "
        "outline's shape implies; 0: none (the paper's E_c)", ours=True)
    dropout: float = opt(0.0, "dropout inside the ResNet blocks")
    embed_dim: int = opt(256, "codebook vector dimension D (paper: 256)")
    num_codes: int = opt(1024, "image codebook size (paper: 1024)")
    cond_num_codes: int | None = opt(None, "condition codebook size; null = num_codes")
    quantizer: Literal["vq", "rq"] = opt("vq", "vq: one code per position; rq: residual quantization, rq_depth codes "
                                               "per position (for both image and condition)")
    rq_depth: int = opt(4, "codes per position when quantizer=rq")
    shared_codebook: bool = opt(False, "image and condition share one codebook (iq variants only)")
    l2_norm_codes: bool = opt(False, "l2-normalise latents and codes before nearest-neighbour search (vq only)")
    kmeans_init: bool = opt(False, "initialise codebooks by k-means on the first training batch")
    kmeans_iters: int = opt(10, "Lloyd iterations of the k-means initialisation")
    dead_code_threshold: float = opt(0.0, "re-seed codes whose running usage falls below this (0 = never)")
    usage_decay: float = opt(0.99, "decay of the running code-usage average used for dead-code restarts")
    beta: float = opt(0.25, "commitment weight inside the quantization loss")
    sgw_projections: int = opt(64, "L, random 1-D projections of the sliced Gromov-Wasserstein regulariser")
    sgw_on: Literal["pre", "post"] = opt("pre", "regularise the encoder outputs before quantization (pre) or the "
                                                "quantized (straight-through) features (post)")
    decoder_cond: Literal["quantized", "continuous"] = opt(
        "quantized", "what D_x sees of the condition: its quantized features (decoding needs tokens only) or the "
                     "continuous E_c output (decoding then needs the raw condition)")
    svq_cond_image: Literal["grey", "paired"] = opt(
        "grey", "svq only: what image the shared encoder sees for the condition latent. grey: a mid-grey image, in "
                "training and at sampling (the condition tokens are a function of the condition alone); paired: the "
                "training pair's image (the sVQ paper; sampling then needs a reference image, mid-grey by default, "
                "whose condition tokens the transformer never saw)")
    cond_decoder: bool = opt(True, "train a condition decoder D_c with a reconstruction loss (required for "
                                   "vqgan-pair and svq)")
    text_width: int = opt(128, "text condition: transformer width")
    text_layers: int = opt(2, "text condition: transformer blocks (encoder and decoder each)")
    text_heads: int = opt(4, "text condition: attention heads")
    text_spatial_queries: bool = opt(
        False, "our addition, not in the paper: the text encoder's h*w learned queries start from the 2-D sin/cos "
        "code of their latent cell instead of N(0, 0.02), so the caption's latent grid can lay the scene out by "
        "position words from the first steps", ours=True)
    audio_ch: int = opt(32, "audio condition: base channels of the spectrogram conv encoder/decoder")
    audio_ch_mult: tuple[int, ...] = opt((1, 2, 2), "audio condition: channel multiplier per level")
    audio_num_res_blocks: int = opt(1, "audio condition: ResNet blocks per level")
    colour_head: bool = opt(False, "our addition, not in the paper: a 1x1 conv head (training only) predicts each "
                                   "latent cell's mean pixel colour from its quantized image feature alone, with an "
                                   "L1 loss (loss.colour_weight), so image codes carry absolute colour instead of a "
                                   "colour relative to the condition features D_x also sees", ours=True)
    colour_head_cond: bool = opt(False, "the colour head also sees the condition features D_x sees at the cell, so "
                                        "codes need carry only what the condition does not say (e.g. which of a "
                                        "class's colours), consistently across cells", ours=True)
    cond_cell_head: bool | Literal["spatial"] = opt(
        False, "our addition, not in the paper: a 1x1 conv head (training only) predicts each latent cell's pooled "
        "condition (seg: its class histogram; edge, layout, keypoints: the mean map) from its quantized condition "
        "feature alone (loss.cond_cell_weight), so a condition code names its own cell's content rather than leaving "
        "it to D_c's context.  true: on (refused for text and audio, whose latents are not pixel patches); "
        "'spatial': on for seg, edge, keypoints and layout, off for text and audio; false: off", ours=True)
    cond_cell_target: Literal["condition", "colour", "both", "colour_bins"] = opt(
        "condition", "what the condition cell head predicts: 'condition' (the cell's pooled condition, above), "
        "'colour' (the cell's mean image colour, squared error: the expected colour given the condition, so a "
        "condition code names what its cell looks like, e.g. the class an edge outline implies, which the GPT then "
        "reads off locally), 'both' (the two losses summed) or 'colour_bins' (cross-entropy against the histogram of "
        "the cell's pixels over 4 x 4 x 4 RGB bins: the likelihood of the cell's colours given the code, so knowing the class "
        "that narrows an object's colours to its palette pays in full, where the mean-colour error pays only for the "
        "palette's mean)", ours=True)
    transformer_cond: Literal["codes", "input"] = opt(
        "codes", "what the transformer's condition prefix C holds: 'codes' (the quantized condition tokens E_c makes, "
        "the paper's C) or 'input' (our addition, not in the paper; sequence conditions only, i.e. text: the "
        "caption's own token ids, as DALL-E's transformer reads the words, so the GPT itself lays the scene out; "
        "the quantized caption latent still feeds D_x and the regulariser).  `iqvae encode` writes these tokens and "
        "the pipeline makes the same ones at sampling", ours=True)
    cond_spec: dict[str, Any] | None = opt(None, "the condition spec (modality, channels, length, vocab); filled in "
                                                 "by the model so a checkpoint rebuilds without a data config")

    @property
    def grid(self) -> int:
        return self.resolution // 2 ** (len(self.ch_mult) - 1)

    def validate(self) -> None:
        def bad(name: str, expect: str) -> ConfigError:
            return ConfigError(f"option 'tokenizer.{name}' must be {expect}, got {getattr(self, name)!r}")

        for name in ("ch", "num_res_blocks", "embed_dim", "rq_depth", "sgw_projections", "text_width",
                     "text_layers", "text_heads", "audio_ch", "audio_num_res_blocks"):
            if getattr(self, name) < 1:
                raise bad(name, "a positive integer")
        for name in ("ch_mult", "audio_ch_mult"):
            if len(getattr(self, name)) < 1 or min(getattr(self, name)) < 1:
                raise bad(name, "a non-empty list of positive integers")
        if self.num_codes < 2:
            raise bad("num_codes", "at least 2")
        if self.cond_num_codes is not None and self.cond_num_codes < 2:
            raise bad("cond_num_codes", "null or at least 2")
        f = 2 ** (len(self.ch_mult) - 1)
        if self.resolution < 8 or self.resolution % f:
            raise bad("resolution", f"at least 8 and divisible by {f} (2**(len(ch_mult)-1))")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", "in [0, 1)")
        if self.kmeans_iters < 0:
            raise bad("kmeans_iters", "a non-negative integer")
        if self.cond_context_levels < 0 or (self.resolution // f) % (2 ** self.cond_context_levels):
            raise bad("cond_context_levels", f"a non-negative integer k with the latent grid ({self.resolution // f}) "
                                             "divisible by 2**k")
        if not 0.0 <= self.usage_decay < 1.0:
            raise bad("usage_decay", "in [0, 1)")
        if self.l2_norm_codes and self.quantizer == "rq":
            raise ConfigError("option 'tokenizer.l2_norm_codes' is only available with quantizer=vq (residuals of "
                              "residual quantization are not unit vectors)")
        if self.beta < 0 or self.dead_code_threshold < 0:
            raise bad("beta" if self.beta < 0 else "dead_code_threshold", "non-negative")
        if self.text_width % self.text_heads:
            raise bad("text_width", f"divisible by text_heads={self.text_heads}")
        if self.shared_codebook:
            if self.variant == "vqgan-pair":
                raise ConfigError("option 'tokenizer.shared_codebook' needs a joint variant (iq-none, iq-vr, svq); "
                                  "vqgan-pair trains two independent VQ models")
            if self.cond_num_codes not in (None, self.num_codes):
                raise ConfigError(f"option 'tokenizer.cond_num_codes' must be null or equal num_codes "
                                  f"({self.num_codes}) with shared_codebook, got {self.cond_num_codes}")
        if self.variant in ("vqgan-pair", "svq") and not self.cond_decoder:
            raise ConfigError(f"option 'tokenizer.cond_decoder' must be true for variant '{self.variant}': the "
                              "condition latent is trained only by the condition decoder")
        if self.svq_cond_image not in ("grey", "paired"):
            raise bad("svq_cond_image", "'grey' or 'paired'")
        if self.variant == "svq" and self.decoder_cond != "quantized":
            raise ConfigError("option 'tokenizer.decoder_cond' must be 'quantized' for variant 'svq' (its condition "
                              "latent comes from the shared encoder, which needs the image)")
        if self.colour_head_cond and (not self.colour_head or self.variant == "vqgan-pair"):
            raise ConfigError("option 'tokenizer.colour_head_cond' needs colour_head=true and a variant whose D_x "
                              "sees the condition (not vqgan-pair)")
        if self.cond_spec is not None:
            check_spec(ConditionSpec.from_dict(self.cond_spec), self)


def check_spec(spec: ConditionSpec, config: IQVAEConfig) -> None:
    names, spatial = modality_names(), spatial_names()
    if spec.modality not in names:
        raise ConfigError(f"unknown condition modality '{spec.modality}'; expected one of: {', '.join(names)}")
    if config.variant == "svq" and spec.modality not in spatial:
        raise ConfigError(f"variant 'svq' needs a spatial condition ({', '.join(spatial)}); got '{spec.modality}'")
    if (config.cond_cell_head is True and spec.modality not in spatial
            and config.cond_cell_target in ("condition", "both")):
        raise ConfigError(f"option 'tokenizer.cond_cell_head' with cond_cell_target='{config.cond_cell_target}' "
                          f"needs a spatial condition ({', '.join(spatial)}) whose latent cells cover pixel patches; "
                          f"got '{spec.modality}' (cond_cell_head='spatial' turns it on for spatial conditions only; "
                          "cond_cell_target='colour' or 'colour_bins' works for every condition: D_x reads its "
                          "latent cells in place)")
    if config.transformer_cond not in ("codes", "input"):
        raise ConfigError(f"option 'tokenizer.transformer_cond' must be 'codes' or 'input', got "
                          f"{config.transformer_cond!r}")
    if config.transformer_cond == "input" and spec.modality_obj.kind != "sequence":
        raise ConfigError(f"option 'tokenizer.transformer_cond=input' needs a condition given as a token sequence "
                          f"(text), whose ids the transformer can read; got '{spec.modality}' (use 'codes')")
    if config.cond_context_levels and spec.modality not in spatial:
        raise ConfigError(f"option 'tokenizer.cond_context_levels' needs a spatial condition ({', '.join(spatial)}), "
                          f"whose conv encoder it extends; got '{spec.modality}'")
    spec.modality_obj.check_spec(spec)


@dataclass
class TokenizerEncoding:
    img_indices: torch.Tensor  # (B, h, w) or (B, h, w, depth), int64
    cond_indices: torch.Tensor  # same layout as img_indices
    z_img: torch.Tensor  # (B, D, h, w) encoder output before quantization
    z_cond: torch.Tensor
    zq_img: torch.Tensor  # quantized, straight-through
    zq_cond: torch.Tensor
    q_loss_img: torch.Tensor  # codebook + beta * commitment
    q_loss_cond: torch.Tensor
    stats: dict[str, torch.Tensor]  # img/cond perplexity and usage (detached)


@dataclass
class TokenizerOutput:
    recon: torch.Tensor  # (B, 3, H, W)
    cond_out: torch.Tensor | None  # raw D_c output (logits / values); class or vocab axis is dim 1; None: no D_c
    recon_l1: torch.Tensor
    quant: torch.Tensor  # image + condition quantization losses
    sgw: torch.Tensor  # 0 (no graph) for variants without the regulariser
    cond_recon: torch.Tensor  # 0 when there is no condition decoder
    stats: dict[str, torch.Tensor]
    encoding: TokenizerEncoding
    colour: torch.Tensor | None = None  # colour-head L1 (config.colour_head); 0 without the head
    cond_cell: torch.Tensor | None = None  # condition cell-head loss (config.cond_cell_head); 0 without the head


COLOUR_BINS = 4  # bins per RGB channel of cond_cell_target='colour_bins'


def colour_bin_histogram(image: torch.Tensor, size: Any) -> torch.Tensor:
    """``(B, COLOUR_BINS**3, h, w)``: each latent cell's share of pixels in each RGB bin (COLOUR_BINS equal bins per
    channel over [-1, 1], index ``(r * COLOUR_BINS + g) * COLOUR_BINS + b``) of ``image`` (B, 3, H, W); the cells
    are the ``size`` grid's pixel patches (average pooling)."""
    k = COLOUR_BINS
    idx = ((image.detach().clamp(-1, 1) + 1) * (k / 2)).long().clamp_(0, k - 1)  # (B, 3, H, W)
    joint = (idx[:, 0] * k + idx[:, 1]) * k + idx[:, 2]
    onehot = F.one_hot(joint, k**3).permute(0, 3, 1, 2).to(image.dtype)
    return F.adaptive_avg_pool2d(onehot, size)


def _zero(ref: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), device=ref.device, dtype=torch.float32)


class IQVAE(nn.Module):
    """The tokenizer of one condition modality.

    ``IQVAE(config, cond_spec)``; the spec is copied into ``model.config.cond_spec`` so that
    ``IQVAE.from_config_dict(to_dict(model.config))`` rebuilds the same architecture.  Main entry points:
    ``forward(image, cond)`` (training), ``encode``, ``encode_condition`` (sampling), ``decode_indices``.
    Images are float (B, 3, H, W) in [-1, 1]; conditions follow :mod:`iqvae.data.record`, batched.
    """

    def __init__(self, config: IQVAEConfig, cond_spec: ConditionSpec | None = None):
        super().__init__()
        if cond_spec is None:
            if config.cond_spec is None:
                raise ConfigError("IQVAE needs a condition spec: pass cond_spec or set config.cond_spec")
            cond_spec = ConditionSpec.from_dict(config.cond_spec)
        elif config.cond_spec is not None and config.cond_spec != cond_spec.to_dict():
            raise ConfigError(f"config.cond_spec {config.cond_spec} differs from the cond_spec given "
                              f"{cond_spec.to_dict()}")
        config = dataclasses.replace(config, cond_spec=cond_spec.to_dict())
        config.validate()
        self.config, self.cond_spec = config, cond_spec
        c, spec, d = config, cond_spec, config.embed_dim
        g = (c.grid, c.grid)
        self.grid = g
        kw = conv_kwargs(c)
        self.modality: Modality = spec.modality_obj
        self.cond_in_channels = self.modality.in_channels(spec)
        nets = Nets(Encoder, Decoder, TextEncoder, TextDecoder)
        if c.variant == "svq":
            self.encoder = Encoder(3 + self.cond_in_channels, 2 * d, **kw)
            self.cond_encoder = None
        else:
            self.encoder = Encoder(3, d, **kw)
            self.cond_encoder = self.modality.build_encoder(spec, c, nets)
        self.quantize = self._make_quantizer(c.num_codes)
        self.cond_quantize = None if c.shared_codebook else self._make_quantizer(c.cond_num_codes or c.num_codes)
        self.decoder = Decoder(3, d, cond_channels=0 if c.variant == "vqgan-pair" else d, **kw)
        self.cond_decoder = self.modality.build_decoder(spec, c, nets) if c.cond_decoder else None
        self.colour_head = nn.Conv2d(2 * d if c.colour_head_cond else d, 3, 1) if c.colour_head else None
        cell_head = c.cond_cell_head is True or (c.cond_cell_head == "spatial" and self.modality.kind == "spatial")
        cell_out = {"condition": self.cond_in_channels, "colour": 3, "both": self.cond_in_channels + 3,
                    "colour_bins": COLOUR_BINS**3}
        self.cond_cell_head = nn.Conv2d(d, cell_out[c.cond_cell_target], 1) if cell_head else None

    # ------------------------------------------------------------------------------------------------ construction
    def _make_quantizer(self, num_codes: int) -> nn.Module:
        c = self.config
        kw = {"beta": c.beta, "kmeans_init": c.kmeans_init, "kmeans_iters": c.kmeans_iters,
              "dead_code_threshold": c.dead_code_threshold, "usage_decay": c.usage_decay}
        if c.quantizer == "rq":
            return ResidualQuantizer(num_codes, c.embed_dim, c.rq_depth, **kw)
        return VectorQuantizer(num_codes, c.embed_dim, l2_norm=c.l2_norm_codes, **kw)

    @classmethod
    def from_config_dict(cls, d: dict[str, Any]) -> IQVAE:
        """Rebuild a model from ``to_dict(model.config)`` (the ``cond_spec`` entry must be present)."""
        config = from_dict(IQVAEConfig, d)
        if config.cond_spec is None:
            raise ConfigError("tokenizer config has no 'cond_spec'; it cannot be rebuilt without a condition spec")
        return cls(config)

    def config_dict(self) -> dict[str, Any]:
        return to_dict(self.config)

    # ------------------------------------------------------------------------------------------------- properties
    @property
    def _cq(self) -> nn.Module:
        return self.quantize if self.cond_quantize is None else self.cond_quantize

    @property
    def image_codebook(self) -> torch.Tensor:
        return self.quantize.codebook

    @property
    def cond_codebook(self) -> torch.Tensor:
        return self._cq.codebook

    @property
    def tokens_shape(self) -> tuple[int, ...]:
        return (*self.grid, self.config.rq_depth) if self.config.quantizer == "rq" else self.grid

    @property
    def num_image_codes(self) -> int:
        return self.config.num_codes

    @property
    def transformer_cond_vocab(self) -> int:
        """Size of the vocabulary of the transformer's condition tokens (:meth:`transformer_condition`): the
        condition codebook, or with ``transformer_cond='input'`` the condition's own vocabulary (text: its words)."""
        return int(self.cond_spec.channels) if self.config.transformer_cond == "input" else self.num_cond_codes

    def transformer_condition(self, cond: torch.Tensor, cond_indices: torch.Tensor) -> torch.Tensor:
        """The transformer's condition tokens ``(B, n_cond)`` int64: the flattened condition codes ``cond_indices``
        (raster order, depth innermost), or with ``transformer_cond='input'`` the condition's own token ids."""
        if self.config.transformer_cond == "input":
            return cond.reshape(cond.shape[0], -1).long()
        return cond_indices.reshape(cond_indices.shape[0], -1).long()

    @property
    def num_cond_codes(self) -> int:
        return self.config.num_codes if self.config.shared_codebook else (self.config.cond_num_codes
                                                                            or self.config.num_codes)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.decoder.last_layer

    # ------------------------------------------------------------------------------------------------- validation
    def check_image(self, image: torch.Tensor) -> None:
        r = self.config.resolution
        if not (isinstance(image, torch.Tensor) and image.is_floating_point() and image.dim() == 4
                and image.shape[1:] == (3, r, r)):
            got = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
            raise DataError(f"image must be float (B, 3, {r}, {r}) in [-1, 1]; got {got}")

    def check_condition(self, cond: torch.Tensor, batch: int | None = None) -> None:
        """Raise a DataError naming the modality, the expected batched shape and range."""
        self.modality.check_batch(self.cond_spec, cond, self.config.resolution, batch)

    def _check_indices(self, idx: torch.Tensor, num_codes: int, what: str) -> None:
        shape = self.tokens_shape
        if idx.dtype != torch.int64 or idx.dim() != len(shape) + 1 or tuple(idx.shape[1:]) != shape:
            raise DataError(f"{what} must be int64 (B, {', '.join(map(str, shape))}); got {idx.dtype} "
                            f"{tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_codes):
            raise DataError(f"{what} must be in [0, {num_codes - 1}]; got [{int(idx.min())}, {int(idx.max())}]")

    # ------------------------------------------------------------------------------------------ condition helpers
    def condition_input(self, cond: torch.Tensor) -> torch.Tensor:
        """The condition as a float network input: one-hot seg (B, C, H, W), (B, 1, M, F) audio, others as is."""
        return self.modality.network_input(self.cond_spec, cond)

    def _encode_cond(self, cond: torch.Tensor) -> torch.Tensor:
        return self.modality.encode(self.cond_encoder, self.condition_input(cond), self.grid)

    def _decode_cond(self, zq_cond: torch.Tensor) -> torch.Tensor:
        return self.modality.decode(self.cond_decoder, zq_cond, self.cond_spec)

    def condition_loss(self, cond_out: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Reconstruction loss of the condition (see the module docstring for the choice per modality)."""
        return self.modality.recon_loss(self.cond_spec, cond_out, cond)

    def condition_prediction(self, cond_out: torch.Tensor) -> torch.Tensor:
        """Map raw D_c output to the condition's own tensor convention (ids, probabilities, heatmaps, log-mel)."""
        return self.modality.prediction(cond_out)

    # ---------------------------------------------------------------------------------------------------- encoding
    def _latents(self, image: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.variant == "svq":
            c_in = self.condition_input(cond)
            z_img, z_cond = self.encoder(torch.cat([image, c_in], dim=1)).split(self.config.embed_dim, dim=1)
            if self.config.svq_cond_image == "grey":
                z_cond = self._svq_cond_latent(c_in)
            return z_img, z_cond
        return self.encoder(image), self._encode_cond(cond)

    def _svq_cond_latent(self, c_in: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """svq: the condition half of the shared encoder's output on ``concat(image, c_in)``; a mid-grey (all-zero)
        image when ``image`` is None.  One call per batch of B, the same in training and at sampling, so the two give
        the same tokens bit for bit."""
        if image is None:
            r = self.config.resolution
            image = torch.zeros(c_in.shape[0], 3, r, r, device=c_in.device, dtype=c_in.dtype)
        return self.encoder(torch.cat([image, c_in], dim=1))[:, self.config.embed_dim:]

    def encode(self, image: torch.Tensor, cond: torch.Tensor) -> TokenizerEncoding:
        self.check_image(image)
        self.check_condition(cond, image.shape[0])
        z_img, z_cond = self._latents(image, cond)
        qi, qc = self.quantize(z_img), self._cq(z_cond)
        stats = {"img_perplexity": qi.perplexity, "img_usage": qi.usage,
                 "cond_perplexity": qc.perplexity, "cond_usage": qc.usage}
        stats = {k: torch.as_tensor(v).detach().float() for k, v in stats.items()}
        return TokenizerEncoding(qi.indices, qc.indices, z_img, z_cond, qi.z_q, qc.z_q, qi.loss, qc.loss, stats)

    @torch.no_grad()
    def encode_condition(self, cond: torch.Tensor, image: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Condition tokens and quantized features, without an image (sampling time).

        svq: the shared encoder needs an image; with ``svq_cond_image='grey'`` it is the mid-grey image training
        used too (``image`` is ignored), with ``'paired'`` the reference ``image`` if given, else a mid-grey one.
        Other variants ignore ``image``.  Quantizer statistics are not updated (the quantizers run in eval mode).
        """
        self.check_condition(cond)
        if self.config.variant == "svq":
            if self.config.svq_cond_image == "grey":
                image = None
            elif image is not None:
                self.check_image(image)
                self.check_condition(cond, image.shape[0])
            z_cond = self._svq_cond_latent(self.condition_input(cond), image)
        else:
            z_cond = self._encode_cond(cond)
        q = self._cq
        was_training = q.training
        q.eval()
        try:
            out = q(z_cond)
        finally:
            q.train(was_training)
        return out.indices, out.z_q

    # ---------------------------------------------------------------------------------------------------- decoding
    def decode(self, zq_img: torch.Tensor, cond_feat: torch.Tensor | None = None) -> torch.Tensor:
        """Image from quantized image features and (for non-pair variants) the condition features D_x sees."""
        if self.config.variant == "vqgan-pair":
            return self.decoder(zq_img)
        if cond_feat is None:
            raise DataError(f"variant '{self.config.variant}' decodes with condition features; got none")
        return self.decoder(zq_img, cond_feat)

    def decode_indices(self, img_indices: torch.Tensor, cond_indices: torch.Tensor | None = None,
                       cond: torch.Tensor | None = None) -> torch.Tensor:
        """Image (B, 3, H, W) from tokens.  ``cond_indices`` is needed unless the variant is vqgan-pair; with
        ``decoder_cond='continuous'`` the raw ``cond`` is needed instead."""
        self._check_indices(img_indices, self.num_image_codes, "image token indices")
        zq_img = self.quantize.embed(img_indices)
        c = self.config
        if c.variant == "vqgan-pair":
            return self.decoder(zq_img)
        if c.decoder_cond == "continuous":
            if cond is None:
                raise DataError("decoder_cond='continuous' decodes with the raw condition; pass cond=")
            self.check_condition(cond, img_indices.shape[0])
            return self.decoder(zq_img, self._encode_cond(cond))
        if cond_indices is None:
            raise DataError(f"variant '{c.variant}' decodes with condition tokens; pass cond_indices=")
        self._check_indices(cond_indices, self.num_cond_codes, "condition token indices")
        if cond_indices.shape[0] != img_indices.shape[0]:
            raise DataError(f"condition token batch {cond_indices.shape[0]} != image token batch "
                            f"{img_indices.shape[0]}")
        return self.decoder(zq_img, self._cq.embed(cond_indices))

    # ----------------------------------------------------------------------------------------------------- forward
    def forward(self, image: torch.Tensor, cond: torch.Tensor, *, sgw_projections: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> TokenizerOutput:
        """Reconstruct image and condition; the loss terms other than perceptual and GAN.

        ``sgw_projections`` / ``generator`` are passed to the sliced GW regulariser (deterministic projections).
        """
        c = self.config
        enc = self.encode(image, cond)
        if c.variant == "vqgan-pair":
            recon = self.decoder(enc.zq_img)
        else:
            feat = enc.zq_cond if c.decoder_cond == "quantized" else enc.z_cond
            if c.variant == "svq":
                feat = feat.detach()  # sg[z_c]: only D_c trains the condition latent
            recon = self.decoder(enc.zq_img, feat)
        cond_out = self._decode_cond(enc.zq_cond) if self.cond_decoder is not None else None
        cond_recon = self.condition_loss(cond_out, cond) if cond_out is not None else _zero(image)
        if c.variant == "iq-vr":
            zc, zx = (enc.z_cond, enc.z_img) if c.sgw_on == "pre" else (enc.zq_cond, enc.zq_img)
            sgw = sliced_gromov_wasserstein(zc.flatten(2).transpose(1, 2), zx.flatten(2).transpose(1, 2),
                                            num_projections=c.sgw_projections, projections=sgw_projections,
                                            generator=generator)
        else:
            sgw = _zero(image)
        return TokenizerOutput(recon=recon, cond_out=cond_out, recon_l1=(image - recon).abs().mean(),
                               quant=enc.q_loss_img + enc.q_loss_cond, sgw=sgw, cond_recon=cond_recon,
                               stats=dict(enc.stats), encoding=enc,
                               colour=self.colour_loss(enc.zq_img, image, feat if c.variant != "vqgan-pair" else None),
                               cond_cell=self.cond_cell_loss(enc.zq_cond, cond, image))

    def colour_loss(self, zq_img: torch.Tensor, image: torch.Tensor, cond_feat: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """L1 between the colour head's output on ``zq_img`` (B, D, h, w) (vq: the quantized features; rq: their
        sum over depth), with ``colour_head_cond`` concatenated with ``cond_feat`` (what D_x sees), and the mean
        colour of each cell's pixel patch; 0 without ``config.colour_head``."""
        if self.colour_head is None:
            return _zero(image)
        inp = zq_img
        if self.config.colour_head_cond:
            if cond_feat is None:
                raise DataError("colour_head_cond needs the condition features D_x sees (not for vqgan-pair)")
            inp = torch.cat([zq_img, cond_feat], dim=1)
        target = F.adaptive_avg_pool2d(image, zq_img.shape[-2:])
        return (self.colour_head(inp) - target).abs().mean()

    def cond_cell_loss(self, zq_cond: torch.Tensor, cond: torch.Tensor, image: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """Loss of the condition cell head on ``zq_cond`` (B, D, h, w).  Target ``condition``: each cell's pooled
        condition input (:meth:`condition_input` averaged over the cell's pixel patch), per modality as
        :meth:`condition_loss`: seg: cross-entropy with the class histogram as soft target; edge, layout: binary
        cross-entropy with the pooled map; keypoints: squared error.  Target ``colour``: squared error against the
        mean colour of each cell's pixel patch of ``image``.  ``both``: the sum.  0 without
        ``config.cond_cell_head``."""
        if self.cond_cell_head is None:
            return _zero(zq_cond)
        pred, target = self.cond_cell_head(zq_cond), self.config.cond_cell_target
        loss = _zero(zq_cond)
        if target in ("condition", "both"):
            k = self.cond_in_channels
            cell = self.modality.cell_target(self.cond_spec, cond, zq_cond.shape[-2:])
            loss = loss + self.modality.cell_loss(pred[:, :k], cell)
        if target in ("colour", "both", "colour_bins") and image is None:
            raise DataError(f"cond_cell_target='{target}' needs the image")
        if target in ("colour", "both"):
            loss = loss + F.mse_loss(pred[:, -3:], F.adaptive_avg_pool2d(image, zq_cond.shape[-2:]))
        if target == "colour_bins":
            hist = colour_bin_histogram(image, zq_cond.shape[-2:])
            loss = loss - (hist * F.log_softmax(pred, dim=1)).sum(1).mean()
        return loss

    # ------------------------------------------------------------------------------------------------ checkpoints
    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):  # type: ignore[override]
        """As nn.Module's, but a mismatching state dict (another variant / config) raises a CheckpointError."""
        if strict:
            own = self.state_dict()
            missing = [k for k in own if k not in state_dict]
            unexpected = [k for k in state_dict if k not in own]
            shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                      if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
            if missing or unexpected or shapes:
                parts = []
                for name, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
                    if items:
                        parts.append(f"{name}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}")
                raise CheckpointError(
                    f"state dict does not match this IQVAE (variant '{self.config.variant}', modality "
                    f"'{self.cond_spec.modality}'); it was probably saved from another variant or config. "
                    + "; ".join(parts))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ------------------------------------------------------------------------------------------ checkpoint folders
    # A ``tokenizer/`` folder: {"model": config_dict(), "data": the DataConfig it was trained on}, plus the weights.
    checkpoint_kind = "iqvae-tokenizer"
    data_config: DataConfig | None = None  # the data it was trained on; read back by from_pretrained

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> IQVAE:
        """The trained tokenizer in ``path`` (a ``tokenizer/`` folder or a run folder holding one), in eval mode,
        with its :attr:`data_config`."""
        path = checkpoint_folder(path, "tokenizer")
        ck = load_checkpoint(path, cls.checkpoint_kind)
        model = load_checkpoint_weights(cls.from_config_dict(ck.config["model"]), ck.model_state, path)
        model.data_config = from_dict(DataConfig, ck.config["data"])
        return model.to(device).eval()

    def save_pretrained(self, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
        """Write this tokenizer (config, :attr:`data_config`, weights) as a checkpoint folder ``path``."""
        header = {"model": self.config_dict(), "data": to_dict(self.data_config)}
        return save_checkpoint(path, kind=self.checkpoint_kind, config=header, model_state=self.state_dict(), meta=meta)
