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
from typing import Any

import torch

from ..checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ..config import opt, to_dict
from ..data.config import DataConfig, build_dataset
from ..data.record import collate
from ..errors import ConfigError
from ..losses.vqgan import LossConfig, VQGANLoss
from ..machine import machine_info
from ..models.tokenizer import IQVAE, IQVAEConfig
from .common import prepare_run_dir, LoopConfig, RunLog, StepBatches, Timer, lr_at, make_accelerator, set_lr, write_json

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
class TokenizerRunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: IQVAEConfig = field(default_factory=IQVAEConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)
    train: LoopConfig = field(default_factory=LoopConfig)

    def validate(self) -> None:
        if self.train.grad_accum != 1:
            raise ConfigError("option 'train.grad_accum' is not supported by the tokenizer (its generator and "
                              "discriminator steps alternate); use a larger batch_size or more processes")
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
    from tqdm.auto import tqdm

    from ..viz import bar_options

    run_dir = Path(run_dir)
    t = cfg.train
    acc = make_accelerator(t)
    main = acc.is_main_process
    say = (lambda msg: tqdm.write(f"[tokenizer] {msg}")) if main else (lambda msg: None)
    if t.threads:
        torch.set_num_threads(t.threads)
    last = prepare_run_dir(run_dir, to_dict(cfg), resume=resume, main=main)

    torch.manual_seed(t.seed)
    train_ds = build_dataset(cfg.data, "train")
    spec = train_ds.condition_spec(cfg.data.cond)
    model = IQVAE(cfg.model, spec)
    loss_fn = VQGANLoss(cfg.loss, _build_lpips(cfg.perceptual, say))
    disc = loss_fn.discriminator
    opt_g = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay,
                              foreach=True)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), foreach=True)
    total = t.total_steps(len(train_ds))

    start = 0
    if resume:
        ck = load_checkpoint(last, TRAIN_KIND, with_train_state=True)
        model.load_state_dict(ck.train_state["model"])
        disc.load_state_dict(ck.train_state["disc"])
        opt_g.load_state_dict(ck.train_state["opt_g"])
        opt_d.load_state_dict(ck.train_state["opt_d"])
        start = int(ck.train_state["step"])
        say(f"resumed at step {start} of {total}")

    # The tokenizer goes through DDP (its forward is called); the discriminator is called through VQGANLoss's
    # methods, so its gradients are averaged across processes by hand (see _sync_grads).
    model, opt_g, opt_d = acc.prepare(model, opt_g, opt_d)
    loss_fn.to(acc.device)
    raw_model: IQVAE = acc.unwrap_model(model)
    raw_loss = loss_fn
    loader = torch.utils.data.DataLoader(
        train_ds,
        batch_sampler=StepBatches(start, total, t.batch_size, len(train_ds), t.seed, acc.process_index, acc.num_processes),
        collate_fn=collate,
        num_workers=cfg.data.num_workers,
    )
    log = RunLog(run_dir, "tokenizer", resume_step=start if resume else None, tensorboard=t.tensorboard, enabled=main)

    def save(step: int) -> None:
        acc.wait_for_everyone()
        if not main:
            return
        state = {
            "model": raw_model.state_dict(), "disc": raw_loss.discriminator.state_dict(),
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "rng": rng_state(), "step": step,
        }
        save_checkpoint(last, kind=TRAIN_KIND, config=_model_header(cfg, raw_model), model_state=raw_model.state_dict(),
                        meta={"step": step, "total": total}, train_state=state)

    timer = Timer()
    bar = tqdm(total=total, initial=start, desc="tokenizer", disable=not (progress and main), **bar_options())
    step = start
    model.train()
    batches = iter(loader)  # creating the iterator draws from torch's RNG: do it before restoring the RNG state
    if resume:
        set_rng_state(ck.train_state["rng"])
    for step, batch in zip(range(start, total), batches):
        image = batch.image.to(acc.device)
        cond = batch.cond[cfg.data.cond].to(acc.device)
        lr = lr_at(step, t, total)
        set_lr(opt_g, lr)
        set_lr(opt_d, lr)

        with acc.autocast():
            out = model(image, cond)
            g_loss, logs = raw_loss.generator_loss(out, image, step, raw_model.last_layer)
        opt_g.zero_grad(set_to_none=True)
        acc.backward(g_loss)
        if t.grad_clip:
            acc.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt_g.step()

        if raw_loss.disc_active(step):
            with acc.autocast():
                d_loss, d_logs = raw_loss.discriminator_loss(image, out.recon.detach(), step)
            opt_d.zero_grad(set_to_none=True)
            acc.backward(d_loss)
            _sync_grads(acc, disc)
            opt_d.step()
            logs.update(d_logs)

        done = step + 1
        if main and (done % t.log_every == 0 or done == total):
            values = {k: float(v) for k, v in logs.items()}
            values.update({k: float(v) for k, v in out.stats.items()})
            values["lr"] = lr
            log.log(step, values)
            bar.set_postfix(loss=f"{g_loss.item():.4f}")
        if main and t.image_every and (done % t.image_every == 0 or done == total):
            _save_grid(run_dir / "images" / f"recon_{done:07d}.png", image, out.recon)
        bar.update(1)
        if done % t.checkpoint_every == 0 or done == total:
            save(done)
        if stop_after is not None and done - start >= stop_after:
            bar.close()
            log.close()
            return last
    bar.close()
    log.close()
    acc.wait_for_everyone()
    final = run_dir / "tokenizer"
    if main:
        raw_model.eval()
        save_checkpoint(final, kind=MODEL_KIND, config=_model_header(cfg, raw_model),
                        model_state=raw_model.state_dict(), meta={"steps": total, "train_seconds": timer.elapsed()})
        report = reconstruction_report(raw_model, cfg.data, split="val", device=acc.device)
        report.update({"train_seconds": timer.elapsed(), "steps": total, "machine": machine_info()})
        write_json(run_dir / "report.json", report)
        say("reconstruction report: " + ", ".join(f"{k}={v:.4g}" for k, v in report.items() if isinstance(v, float)))
    return final


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
