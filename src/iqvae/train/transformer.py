"""Stage 2: train the conditional transformer on token codes (Eq. 4), with Gumbel sampling (Sec. 3.3).

Reads only what ``iqvae encode`` wrote (never runs the tokenizer).  Run folder layout::

    config.yaml            the resolved configuration
    checkpoints/last/      resumable: model, optimizer, RNG state, step
    transformer/           the final model (safetensors + JSON with every constructor argument)
    transformer.csv, tb/   per-step loss, lr, Gumbel statistics (candidates, replaced fraction, tau)
    report.json            validation NLL in bits per token, timings
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ..codes import load_codebooks, load_codes, read_codes_meta
from ..config import opt, to_dict
from ..errors import ConfigError
from ..machine import machine_info
from ..metrics.nll import validation_nll
from ..models.gpt import GPT, GPTConfig, GPTOptions
from .common import prepare_run_dir, LoopConfig, RunLog, Timer, batch_indices, lr_at, make_accelerator, set_lr, shard, write_json
from .gumbel import GumbelConfig, training_loss

TRAIN_KIND = "iqvae-transformer-train"
MODEL_KIND = GPT.checkpoint_kind


@dataclass
class TransformerRunConfig:
    codes: str = opt("", "folder written by `iqvae encode` (set by --codes)")
    model: GPTOptions = field(default_factory=GPTOptions)
    gumbel: GumbelConfig = field(default_factory=GumbelConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    val_batches: int = opt(8, "validation batches for the NLL (0: the whole split)")

    def validate(self) -> None:
        if self.val_batches < 0:
            raise ConfigError(f"option 'val_batches' must be >= 0, got {self.val_batches}")


def gpt_config(options: GPTOptions, meta: dict[str, Any]) -> GPTConfig:
    """The GPT's config: the run's ``model`` options on the token codes described by ``meta``."""
    return GPTConfig.from_options(options, meta)


def train_transformer(cfg: TransformerRunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
                      stop_after: int | None = None) -> Path:
    from tqdm.auto import tqdm

    from ..viz import bar_options

    run_dir = Path(run_dir)
    t = cfg.train
    if not cfg.codes:
        raise ConfigError("no token codes given: pass --codes DIR (written by `iqvae encode`)")
    acc = make_accelerator(t)
    main = acc.is_main_process
    say = (lambda msg: tqdm.write(f"[transformer] {msg}")) if main else (lambda msg: None)
    if t.threads:
        torch.set_num_threads(t.threads)
    last = prepare_run_dir(run_dir, to_dict(cfg), resume=resume, main=main)

    meta = read_codes_meta(cfg.codes)
    train = load_codes(cfg.codes, "train")
    val = load_codes(cfg.codes, "val") if "val" in meta["splits"] else None
    codebook = load_codebooks(cfg.codes)["image"]
    torch.manual_seed(t.seed)
    mcfg = gpt_config(cfg.model, meta)
    model = GPT(mcfg)
    optimizer = model.configure_optimizer(t.lr, (t.beta1, t.beta2), t.weight_decay)
    total = t.total_steps(len(train))
    start = 0
    if resume:
        ck = load_checkpoint(last, TRAIN_KIND, with_train_state=True)
        model.load_state_dict(ck.train_state["model"])
        optimizer.load_state_dict(ck.train_state["opt"])
        start = int(ck.train_state["step"])
        say(f"resumed at step {start} of {total}")
    model, optimizer = acc.prepare(model, optimizer)
    raw: GPT = acc.unwrap_model(model)
    codebook = codebook.to(acc.device)
    header = {"model": to_dict(mcfg), "codes": {**meta, "dir": str(Path(cfg.codes).resolve())}}
    log = RunLog(run_dir, "transformer", resume_step=start if resume else None, tensorboard=t.tensorboard, enabled=main)

    def save(step: int) -> None:
        acc.wait_for_everyone()
        if main:
            state = {"model": raw.state_dict(), "opt": optimizer.state_dict(), "rng": rng_state(), "step": step}
            save_checkpoint(last, kind=TRAIN_KIND, config=header, model_state=raw.state_dict(),
                            meta={"step": step, "total": total}, train_state=state)

    timer = Timer()
    bar = tqdm(total=total, initial=start, desc="transformer", disable=not (progress and main), **bar_options())
    window: dict[str, float] = {}  # running sums of the logged values since the last log row
    counts: dict[str, int] = {}
    model.train()
    if resume:  # restore the RNG state last, right before the first step
        set_rng_state(ck.train_state["rng"])
    for step in range(start, total):
        idx = shard(batch_indices(step, t.batch_size, len(train), t.seed), acc.process_index, acc.num_processes)
        cond, image = train.cond[idx].to(acc.device), train.image[idx].to(acc.device)
        lr = lr_at(step, t, total)
        set_lr(optimizer, lr)
        with acc.accumulate(model):
            with acc.autocast():
                loss, stats = training_loss(model, cond, image, step, cfg.gumbel, codebook)
            acc.backward(loss)
            if t.grad_clip and acc.sync_gradients:
                acc.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        done = step + 1
        window["loss"] = window.get("loss", 0.0) + loss.item()
        for k, v in stats.items():  # Gumbel statistics are averaged over the steps that apply it
            if k.startswith("gs_") and k not in ("gs_applied", "gs_rate", "gs_tau") and not stats.get("gs_applied"):
                continue
            window[k] = window.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
        counts["loss"] = counts.get("loss", 0) + 1
        if main and (done % t.log_every == 0 or done == total):
            values = {"lr": lr, **{k: v / counts[k] for k, v in window.items()}}
            window.clear()
            counts.clear()
            if t.val_every and val is not None and done % t.val_every == 0:
                values["val_nll_bits"] = validation_nll(raw, val.cond, val.image, batch_size=t.batch_size,
                                                        max_batches=cfg.val_batches, device=acc.device)
            log.log(step, values)
            bar.set_postfix(loss=f"{loss.item():.3f}")
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
    final = run_dir / "transformer"
    if main:
        save_checkpoint(final, kind=MODEL_KIND, config=header, model_state=raw.state_dict(),
                        meta={"steps": total, "train_seconds": timer.elapsed()})
        report: dict[str, Any] = {"train_seconds": timer.elapsed(), "steps": total, "params": raw.num_params(),
                                  "machine": machine_info()}
        if val is not None:
            report["val_nll_bits_per_token"] = validation_nll(raw, val.cond, val.image, batch_size=t.batch_size,
                                                              max_batches=cfg.val_batches, device=acc.device)
            say(f"validation NLL: {report['val_nll_bits_per_token']:.4f} bits/token")
        write_json(run_dir / "report.json", report)
    return final
