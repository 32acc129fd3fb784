"""The IQ-VAE objective, Eq. 3: L = l1*L_reg + l2*L_recon + l3*L_quan + l4*L_perc + l5*L_dis.

* ``L_reg``: sliced Gromov-Wasserstein regulariser (``TokenizerOutput.sgw``; 0 for variants without it).
* ``L_recon``: L1 image reconstruction, plus ``cond_recon_weight`` times the condition reconstruction loss (the paper
  counts "reconstruction loss ... of the conditional input and real image" in L_recon; a separate weight lets the
  sVQ lambda be reproduced).
* ``L_quan``: codebook + beta * commitment loss of both quantizers.
* ``L_perc``: LPIPS(image, reconstruction), averaged over the batch.
* ``L_dis``: generator adversarial term ``-mean D(x_hat)``, scaled by ``disc_weight`` and (taming) by the adaptive
  weight ``||grad_last L_rec|| / (||grad_last L_G|| + 1e-4)`` (clamped to [0, adaptive_max], detached), where
  ``L_rec = recon_weight * L1 + perceptual_weight * L_perc`` is the image-reconstruction part (the only terms, besides
  L_G, that reach the decoder's last layer) and ``last`` is the image decoder's output-conv weight.  It is 0 before
  ``disc_start``, and 0 when gradients are disabled (evaluation), as in taming.

The discriminator is trained with ``discriminator_loss``; hinge: ``0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))``,
vanilla: ``0.5 * (mean softplus(-D(x)) + mean softplus(D(x_hat)))``; multiplied by 0 before ``disc_start``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_bounds, opt
from ..models.discriminator import NLayerDiscriminator

if TYPE_CHECKING:  # no runtime import of the model package's tokenizer
    from ..models.tokenizer import TokenizerOutput


@dataclass
class LossConfig:
    sgw_weight: float = opt(1.0, "lambda_1: weight of the sliced-GW variational regulariser L_reg")
    recon_weight: float = opt(1.0, "lambda_2: weight of the L1 image reconstruction loss")
    quant_weight: float = opt(1.0, "lambda_3: weight of the quantization (codebook + commitment) loss")
    perceptual_weight: float = opt(1.0, "lambda_4: weight of the LPIPS perceptual loss (0 or no LPIPS: off)")
    disc_weight: float = opt(0.8, "lambda_5: weight of the generator's adversarial loss")
    cond_recon_weight: float = opt(1.0, "weight of the condition reconstruction loss (sVQ's lambda)")
    colour_weight: float = opt(1.0, "weight of the colour-head L1 loss (only with tokenizer.model.colour_head)",
                               ours=True)
    cond_cell_weight: float = opt(1.0, "weight of the condition cell-head loss (only with "
                                       "tokenizer.model.cond_cell_head)", ours=True)
    disc_start: int = opt(10000, "training step from which the adversarial terms are switched on")
    disc_loss: Literal["hinge", "vanilla"] = opt("hinge", "discriminator loss")
    adaptive_weight: bool = opt(True, "scale the adversarial term by the taming adaptive weight")
    adaptive_max: float = opt(1e4, "upper clamp of the adaptive weight")
    disc_layers: int = opt(3, "PatchGAN stride-2 layers (inputs must be >= 3 * 2**layers px)")
    disc_ch: int = opt(64, "PatchGAN base channels")
    disc_norm: Literal["group", "batch"] = opt("group", "PatchGAN normalisation: group (batch-size independent) or "
                                                        "batch (pix2pix/taming)")

    def validate(self) -> None:
        check_bounds(self, ("sgw_weight", "recon_weight", "quant_weight", "perceptual_weight", "disc_weight",
                            "cond_recon_weight", "colour_weight", "cond_cell_weight", "disc_start", "adaptive_max"),
                     where="loss.")
        check_bounds(self, ("disc_layers", "disc_ch"), low=1, integer=True, where="loss.")


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_value: float = 1e4) -> torch.Tensor:
    """taming's ``||grad_last rec|| / (||grad_last g|| + 1e-4)``, clamped to [0, max_value] and detached."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    w = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return w.clamp(0.0, max_value).detach()


class VQGANLoss(nn.Module):
    """Holds the discriminator and (optionally) a frozen LPIPS module; computes both players' losses."""

    def __init__(self, config: LossConfig, lpips: nn.Module | None = None, in_channels: int = 3):
        super().__init__()
        config.validate()
        self.config = config
        self.discriminator = NLayerDiscriminator(in_channels, config.disc_ch, config.disc_layers, config.disc_norm)
        self.lpips = lpips
        if lpips is not None:
            lpips.eval().requires_grad_(False)

    @property
    def perceptual_active(self) -> bool:
        return self.lpips is not None and self.config.perceptual_weight > 0

    def disc_active(self, step: int) -> bool:
        """Whether the adversarial terms count at ``step`` (a trainer may skip the discriminator update before)."""
        return step >= self.config.disc_start and self.config.disc_weight > 0

    def train(self, mode: bool = True) -> VQGANLoss:
        super().train(mode)
        if self.lpips is not None:
            self.lpips.eval()  # a fixed metric: never in training mode
        return self

    def generator_loss(self, out: TokenizerOutput, image: torch.Tensor, step: int,
                       last_layer: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total tokenizer loss (Eq. 3) and every term separately (detached) for logging."""
        c = self.config
        zero = torch.zeros((), device=image.device)
        perc = self.lpips(image.contiguous(), out.recon.contiguous()).mean() if self.perceptual_active else zero
        rec = c.recon_weight * out.recon_l1 + c.perceptual_weight * perc
        if self.disc_active(step):
            g_loss = -self.discriminator(out.recon.contiguous()).mean()
            if not c.adaptive_weight:
                d_weight = torch.ones((), device=image.device)
            elif torch.is_grad_enabled() and rec.requires_grad and g_loss.requires_grad:
                d_weight = adaptive_weight(rec, g_loss, last_layer, c.adaptive_max)
            else:  # evaluation: no gradients to compare (taming uses 0 there as well)
                d_weight = zero
            disc_factor = 1.0
        else:
            g_loss, d_weight, disc_factor = zero, zero, 0.0
        gan = disc_factor * c.disc_weight * d_weight * g_loss
        # optional terms of our additions (None or absent: the head is off)
        colour, cond_cell = (zero if getattr(out, k, None) is None else getattr(out, k)
                             for k in ("colour", "cond_cell"))
        total = (c.sgw_weight * out.sgw + rec + c.quant_weight * out.quant + c.cond_recon_weight * out.cond_recon
                 + c.colour_weight * colour + c.cond_cell_weight * cond_cell + gan)
        logs = {"total": total, "recon_l1": out.recon_l1, "perceptual": perc, "rec": rec, "quant": out.quant,
                "sgw": out.sgw, "cond_recon": out.cond_recon, "colour": colour,
                "cond_cell": cond_cell, "g_loss": g_loss,
                "adaptive_weight": d_weight, "disc_factor": torch.tensor(disc_factor), "gan": gan}
        return total, {k: torch.as_tensor(v).detach() for k, v in logs.items()}

    def discriminator_loss(self, image: torch.Tensor, recon: torch.Tensor, step: int
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits_real = self.discriminator(image.detach().contiguous())
        logits_fake = self.discriminator(recon.detach().contiguous())
        fn = hinge_d_loss if self.config.disc_loss == "hinge" else vanilla_d_loss
        d_loss = fn(logits_real, logits_fake)
        factor = 1.0 if self.disc_active(step) else 0.0
        loss = factor * d_loss
        logs = {"disc_loss": loss, "disc_loss_unweighted": d_loss, "logits_real": logits_real.mean(),
                "logits_fake": logits_fake.mean(), "disc_factor": torch.tensor(factor)}
        return loss, {k: v.detach() for k, v in logs.items()}
