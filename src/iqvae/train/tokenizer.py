"""Stage 1: train the IQ-VAE tokenizer (Eq. 3), read top to bottom.

Run folder layout::

    config.yaml            the resolved run configuration
    checkpoints/last/      resumable: model, discriminator, optimizers, RNG state, step
    tokenizer/             the final model (safetensors + JSON constructor arguments), what later stages load
    tokenizer.csv, tb/     per-step logs (every loss term separately, codebook usage / perplexity)
    images/                reconstruction grids (image | reconstruction | condition reconstruction)
    report.json            the final reconstruction report on the validation split
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config import opt, to_dict
from ..data.config import DataConfig, build_dataset
from ..data.record import collate
from ..errors import ConfigError
from ..losses.vqgan import LossConfig, VQGANLoss
from ..models.tokenizer import IQVAE, IQVAEConfig
from .common import LoopConfig, StepBatches, set_lr
from .loop import Run, fit, guarded_step, open_run, restore

TRAIN_KIND = "iqvae-tokenizer-train"
MODEL_KIND = IQVAE.checkpoint_kind


@dataclass
class PerceptualConfig:
    net: str = opt("vgg", "LPIPS backbone: vgg | alex")
    backbone_weights: str | None = opt(None, "torchvision-layout backbone weights file (vgg16-397923af.pth / alexnet-owt-7be5be79.pth)")
    lin_weights: str | None = opt(None, "LPIPS calibration weights file (the lpips package's weights/v0.1/vgg.pth / alex.pth)")

    def validate(self) -> None:
        if self.net not in ("vgg", "alex"):
            raise ConfigError(f"option 'perceptual.net' must be vgg or alex, got {self.net!r}")


@dataclass
class TokenizerTrainConfig(LoopConfig):
    """The tokenizer's loop options (its generator and discriminator steps alternate: no gradient accumulation; use
    a larger batch_size or more processes)."""

    image_every: int = opt(500, "save an image grid every N steps (0: never)")

    def validate(self) -> None:
        super().validate()
        if self.image_every < 0:
            raise ConfigError(f"option 'train.image_every' must be >= 0, got {self.image_every}")


@dataclass
class TokenizerRunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: IQVAEConfig = field(default_factory=IQVAEConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)
    train: TokenizerTrainConfig = field(default_factory=TokenizerTrainConfig)

    def validate(self) -> None:
        if self.model.resolution != self.data.resolution:
            raise ConfigError(
                f"option 'model.resolution' ({self.model.resolution}) must equal 'data.resolution' ({self.data.resolution})"
            )


def _build_lpips(cfg: PerceptualConfig, say) -> torch.nn.Module | None:
    if cfg.backbone_weights is None and cfg.lin_weights is None:
        say("perceptual loss is off: no LPIPS weights given (set perceptual.backbone_weights and perceptual.lin_weights)")
        return None
    from ..models.lpips import build_lpips

    return build_lpips(cfg.backbone_weights, cfg.lin_weights, cfg.net)


def _model_header(cfg: TokenizerRunConfig, model: IQVAE) -> dict[str, Any]:
    return {"model": model.config_dict(), "data": to_dict(cfg.data)}


def train_tokenizer(cfg: TokenizerRunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
                    stop_after: int | None = None) -> Path:
    """Train stage 1 in ``run_dir``; returns the path of the final ``tokenizer/`` checkpoint.

    ``stop_after`` ends the session after that many steps without finishing (tests use it to emulate a kill).
    """
    t = cfg.train
    run = open_run("tokenizer", t, to_dict(cfg), run_dir, resume=resume)
    torch.manual_seed(t.seed)
    train_ds = build_dataset(cfg.data, "train")
    model = IQVAE(cfg.model, train_ds.condition_spec(cfg.data.cond))
    loss_fn = VQGANLoss(cfg.loss, _build_lpips(cfg.perceptual, run.say))
    opt_g = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay,
                              foreach=True)
    opt_d = torch.optim.AdamW(loss_fn.discriminator.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), foreach=True)
    parts = {"model": model, "disc": loss_fn.discriminator, "opt_g": opt_g, "opt_d": opt_d}
    total = t.total_steps(len(train_ds))
    restore(run, TRAIN_KIND, parts, total)
    stage = _TokenizerStage(cfg, run, train_ds, loss_fn, parts, total)
    return fit(run, stage, progress=progress, stop_after=stop_after)


class _TokenizerStage:
    """Stage 1's part of the loop (see :class:`~iqvae.train.loop.Stage`): a generator step (the IQ-VAE, Eq. 3), then
    a discriminator step once the adversarial terms are on."""

    kind, model_kind = TRAIN_KIND, MODEL_KIND

    def __init__(self, cfg: TokenizerRunConfig, run: Run, train_ds: Any, loss_fn: VQGANLoss, parts: dict[str, Any],
                 total: int):
        self.cfg, self.run, self.train_ds, self.parts, self.total = cfg, run, train_ds, parts, total
        # The tokenizer goes through DDP (its forward is called); the discriminator is called through VQGANLoss's
        # methods, so its gradients are averaged across processes by hand (see _sync_grads).
        self.model, self.opt_g, self.opt_d = run.acc.prepare(parts["model"], parts["opt_g"], parts["opt_d"])
        self.loss_fn = loss_fn.to(run.acc.device)
        self.raw_model: IQVAE = run.acc.unwrap_model(self.model)

    def header(self) -> dict[str, Any]:
        return _model_header(self.cfg, self.raw_model)

    def batches(self, start: int) -> Iterator[Any]:
        t, acc = self.cfg.train, self.run.acc
        sampler = StepBatches(start, self.total, t.batch_size, len(self.train_ds), t.seed, acc.process_index,
                              acc.num_processes)
        loader = torch.utils.data.DataLoader(self.train_ds, batch_sampler=sampler, collate_fn=collate,
                                             num_workers=self.cfg.data.num_workers)
        self.model.train()
        return iter(loader)

    def step(self, step: int, batch: Any, lr: float) -> None:
        acc, t, loss_fn = self.run.acc, self.cfg.train, self.loss_fn
        image = batch.image.to(acc.device)
        cond = batch.cond[self.cfg.data.cond].to(acc.device)
        set_lr(self.opt_g, lr)
        set_lr(self.opt_d, lr)

        with acc.autocast():
            out = self.model(image, cond)
            g_loss, logs = loss_fn.generator_loss(out, image, step, self.raw_model.last_layer)
        self.opt_g.zero_grad(set_to_none=True)
        acc.backward(g_loss)
        guarded_step(acc, self.opt_g, self.model, logs, part="generator", clip=t.grad_clip)

        if loss_fn.disc_active(step):
            with acc.autocast():
                d_loss, d_logs = loss_fn.discriminator_loss(image, out.recon.detach(), step)
            self.opt_d.zero_grad(set_to_none=True)
            acc.backward(d_loss)
            _sync_grads(acc, loss_fn.discriminator)
            guarded_step(acc, self.opt_d, loss_fn.discriminator, d_logs, part="discriminator")
            logs.update(d_logs)

        self.logs, self.stats, self.g_loss = logs, out.stats, g_loss.detach()
        done = step + 1
        if self.run.main and t.image_every and (done % t.image_every == 0 or done == self.total):
            _save_grid(self.run.run_dir / "images" / f"recon_{done:07d}.png", image, out.recon)

    def log_row(self, step: int, done: int, lr: float) -> dict[str, float]:
        values = {k: float(v) for k, v in self.logs.items()}
        values.update({k: float(v) for k, v in self.stats.items()})
        values["lr"] = lr
        return values

    def bar_loss(self) -> str:
        return f"{self.g_loss.item():.4f}"

    def report(self, base: dict[str, Any]) -> dict[str, Any]:
        self.raw_model.eval()
        report = reconstruction_report(self.raw_model, self.cfg.data, split="val", device=self.run.acc.device)
        report.update(base)
        self.run.say("reconstruction report: " + ", ".join(f"{k}={v:.4g}" for k, v in report.items()
                                                            if isinstance(v, float)))
        return report


def _sync_grads(acc: Any, module: torch.nn.Module) -> None:
    """Average the gradients of ``module`` over processes (no-op in a single process)."""
    if acc.num_processes == 1:
        return
    import torch.distributed as dist

    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= acc.num_processes


def _save_grid(path: Path, image: torch.Tensor, recon: torch.Tensor) -> None:
    from ..viz import save_image_grid

    n = min(8, image.shape[0])
    rows = [image[:n].detach().float().cpu(), recon[:n].detach().float().cpu().clamp(-1, 1)]
    save_image_grid(path, rows, labels=["image", "reconstruction"])


@torch.no_grad()
def reconstruction_report(model: IQVAE, data: DataConfig, *, split: str = "val", device: Any = "cpu",
                          batch_size: int = 64, limit: int | None = 512) -> dict[str, Any]:
    """PSNR, SSIM, codebook usage of both codebooks, condition reconstruction accuracy / mIoU, and (on the Shapes
    world) palette accuracy and mask adherence of the reconstructions."""
    from ..metrics.tokenizer_report import reconstruction_metrics

    ds = build_dataset(data, split)
    return reconstruction_metrics(model, ds, data.cond, device=device, batch_size=batch_size, limit=limit)
