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
from typing import Any, Iterator

import torch

from ..codes import load_codebooks, load_codes, read_codes_meta
from ..config import opt, to_dict
from ..errors import ConfigError
from ..metrics.nll import validation_nll
from ..models.gpt import GPT, GPTConfig, GPTOptions
from .common import LoopConfig, StepBatches, set_lr, shard
from .gumbel import GumbelConfig, training_loss
from .loop import Run, fit, guarded_step, open_run, restore

TRAIN_KIND = "iqvae-transformer-train"
MODEL_KIND = GPT.checkpoint_kind


@dataclass
class TransformerTrainConfig(LoopConfig):
    """The transformer's loop options."""

    grad_accum: int = opt(1, "gradient accumulation (accelerate): each step is then one micro-batch and the "
                             "optimizer steps every grad_accum steps")
    val_every: int = opt(0, "validate every N steps (0: only at the end)")

    def validate(self) -> None:
        super().validate()
        if self.grad_accum < 1:
            raise ConfigError(f"option 'train.grad_accum' must be at least 1, got {self.grad_accum}")
        if self.val_every < 0:
            raise ConfigError(f"option 'train.val_every' must be >= 0, got {self.val_every}")


@dataclass
class TransformerRunConfig:
    codes: str = opt("", "folder written by `iqvae encode` (set by --codes)")
    model: GPTOptions = field(default_factory=GPTOptions)
    gumbel: GumbelConfig = field(default_factory=GumbelConfig)
    train: TransformerTrainConfig = field(default_factory=TransformerTrainConfig)
    val_batches: int = opt(8, "validation batches for the NLL (0: the whole split)")

    def validate(self) -> None:
        if self.val_batches < 0:
            raise ConfigError(f"option 'val_batches' must be >= 0, got {self.val_batches}")


def train_transformer(cfg: TransformerRunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
                      stop_after: int | None = None) -> Path:
    """Train stage 2 in ``run_dir`` on the codes in ``cfg.codes``; returns the path of the final ``transformer/``
    checkpoint.  ``stop_after`` ends the session after that many steps without finishing (as in the tokenizer)."""
    t = cfg.train
    if not cfg.codes:
        raise ConfigError("no token codes given: pass --codes DIR (written by `iqvae encode`)")
    run = open_run("transformer", t, to_dict(cfg), run_dir, resume=resume, grad_accum=t.grad_accum)
    meta = read_codes_meta(cfg.codes)
    train = load_codes(cfg.codes, "train")
    val = load_codes(cfg.codes, "val") if "val" in meta["splits"] else None
    codebook = load_codebooks(cfg.codes)["image"]
    torch.manual_seed(t.seed)
    mcfg = GPTConfig.from_options(cfg.model, meta)
    model = GPT(mcfg)
    optimizer = model.configure_optimizer(t.lr, (t.beta1, t.beta2), t.weight_decay)
    parts = {"model": model, "opt": optimizer}
    total = t.total_steps(len(train))
    restore(run, TRAIN_KIND, parts, total)
    header = {"model": to_dict(mcfg), "codes": {**meta, "dir": str(Path(cfg.codes).resolve())}}
    stage = _TransformerStage(cfg, run, parts, total, header, train, val, codebook)
    return fit(run, stage, progress=progress, stop_after=stop_after)


def null_condition_mask(step: int, rate: float, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                        device: torch.device | str = "cpu") -> torch.Tensor | None:
    """Classifier-free guidance dropout: this process's ``(batch_size // world,)`` bool mask of the samples of step
    ``step`` whose condition is replaced by the null condition (each with probability ``rate``); None when ``rate`` is 0
    (no draw at all, so a run without guidance is unchanged).

    Like the batch itself (:func:`~iqvae.train.common.batch_indices`) the coins are a pure function of (seed, step): one
    per sample of the global batch from a generator seeded for that step, sharded like the batch.  So a resumed run
    draws the same coins, N processes drop the same samples as one, and torch's global RNG (Gumbel's draws) is not
    touched."""
    if not rate:
        return None
    g = torch.Generator().manual_seed(seed * 1_000_003 + step + 0x5EEDC0DE * 2**32)  # a stream apart from the batches'
    coins = (torch.rand(batch_size, generator=g) < rate).tolist()
    return torch.tensor(shard(coins, rank, world), dtype=torch.bool, device=device)


class _TransformerStage:
    """Stage 2's part of the loop (see :class:`~iqvae.train.loop.Stage`): one step of the training loss of
    ``gumbel.mode``; the log rows average the loss and the Gumbel statistics over the steps since the last row."""

    kind, model_kind = TRAIN_KIND, MODEL_KIND

    def __init__(self, cfg: TransformerRunConfig, run: Run, parts: dict[str, Any], total: int,
                 header: dict[str, Any], train: Any, val: Any, codebook: torch.Tensor):
        self.cfg, self.run, self.parts, self.total, self._header = cfg, run, parts, total, header
        self.train, self.val = train, val
        self.model, self.optimizer = run.acc.prepare(parts["model"], parts["opt"])
        self.raw: GPT = run.acc.unwrap_model(self.model)
        self.codebook = codebook.to(run.acc.device)
        self.window: dict[str, float] = {}  # running sums of the logged values since the last log row
        self.counts: dict[str, int] = {}

    def header(self) -> dict[str, Any]:
        return self._header

    def batches(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        t, acc = self.cfg.train, self.run.acc
        self.model.train()
        sampler = StepBatches(start, self.total, t.batch_size, len(self.train), t.seed, acc.process_index,
                              acc.num_processes)
        return ((self.train.cond[idx].to(acc.device), self.train.image[idx].to(acc.device)) for idx in sampler)

    def step(self, step: int, batch: tuple[torch.Tensor, torch.Tensor], lr: float) -> None:
        acc, (cond, image) = self.run.acc, batch
        set_lr(self.optimizer, lr)
        t = self.cfg.train
        null = null_condition_mask(step, self.cfg.model.cfg_dropout, t.batch_size, t.seed, acc.process_index,
                                   acc.num_processes, acc.device)
        with acc.accumulate(self.model):
            with acc.autocast():
                dropped = {} if null is None else {"null": null}  # without guidance the call is as before
                loss, stats = training_loss(self.model, cond, image, step, self.cfg.gumbel, self.codebook, **dropped)
            acc.backward(loss)
            guarded_step(acc, self.optimizer, self.model, {"loss": loss}, part="transformer",
                         clip=self.cfg.train.grad_clip)
            self.optimizer.zero_grad(set_to_none=True)
        self.loss = loss.item()
        self.window["loss"] = self.window.get("loss", 0.0) + self.loss
        for k, v in stats.items():  # Gumbel statistics are averaged over the steps that apply it
            if k.startswith("gs_") and k not in ("gs_applied", "gs_rate", "gs_tau") and not stats.get("gs_applied"):
                continue
            self.window[k] = self.window.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1
        self.counts["loss"] = self.counts.get("loss", 0) + 1

    def log_row(self, step: int, done: int, lr: float) -> dict[str, float]:
        values = {"lr": lr, **{k: v / self.counts[k] for k, v in self.window.items()}}
        self.window.clear()
        self.counts.clear()
        if self.cfg.train.val_every and self.val is not None and done % self.cfg.train.val_every == 0:
            values["val_nll_bits"] = self._val_nll()
        return values

    def bar_loss(self) -> str:
        return f"{self.loss:.3f}"

    def report(self, base: dict[str, Any]) -> dict[str, Any]:
        report = {**base, "params": self.raw.num_params()}
        if self.val is not None:
            report["val_nll_bits_per_token"] = self._val_nll()
            self.run.say(f"validation NLL: {report['val_nll_bits_per_token']:.4f} bits/token")
        return report

    def _val_nll(self) -> float:
        return validation_nll(self.raw, self.val.cond, self.val.image, batch_size=self.cfg.train.batch_size,
                              max_batches=self.cfg.val_batches, device=self.run.acc.device)
