"""The one training loop of both stages, read top to bottom.

A stage (``tokenizer.py``, ``transformer.py``) builds its models and optimizers and hands :func:`fit` a
:class:`Stage`: its step function and what goes into its checkpoints.  Everything else lives here::

    open_run       the accelerator, CPU threads, the run folder (``--resume`` checks, config.yaml)
    restore        on --resume: the stage's models and optimizers, the step and torch's RNG state from checkpoints/last
    fit            for each step: learning rate, stage.step, log row, checkpoint; stop_after; the final model and
                   report.json
    guarded_step   the non-finite guard, called by each stage in place of ``optimizer.step()``

The non-finite guard: after backward, every logged loss term of the update and the total gradient norm (the one
``train.grad_clip`` clips; only read when clipping is off) are checked before ``optimizer.step()``.  A NaN or Inf drops
the gradients, skips the optimizer step, writes neither a log row nor a checkpoint for that step, and either skips
the step (up to ``train.max_bad_steps`` of them in one session) or stops the run with a :class:`NonFiniteError`
naming the step and the terms.  ``checkpoints/last`` is then the last good one and no final model is written.
With ``mixed_precision=fp16`` the gradient is left to the loss scaler (an overflow there is routine: it skips the
step and lowers the scale); the loss terms are still checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch

from ..checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ..errors import NonFiniteError
from ..machine import machine_info
from .common import LoopConfig, RunLog, Timer, lr_at, make_accelerator, prepare_run_dir, write_json


@dataclass
class Run:
    """One training session: its accelerator and run folder, and the step it starts at."""

    name: str  # "tokenizer" | "transformer": the log file, the progress bar and the final model's folder
    cfg: LoopConfig
    acc: Any
    run_dir: Path
    last: Path  # checkpoints/last
    resume: bool
    start: int = 0
    rng: Any = None  # on --resume: torch's RNG state, restored right before the first step

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    def say(self, msg: str) -> None:
        if self.main:
            from tqdm.auto import tqdm

            tqdm.write(f"[{self.name}] {msg}")


class Stage(Protocol):
    """What a training stage hands the loop."""

    kind: str  # checkpoint kind of checkpoints/last
    model_kind: str  # checkpoint kind of the final model
    parts: dict[str, Any]  # checkpoints/last besides "rng" and "step": name -> model / optimizer ("model": the weights)
    total: int  # steps in all

    def header(self) -> dict[str, Any]:
        """The ``config`` of both checkpoints (what rebuilds the model)."""

    def batches(self, start: int) -> Iterator[Any]:
        """Put the models in training mode; the batches of steps start, start+1, ... total-1."""

    def step(self, step: int, batch: Any, lr: float) -> None:
        """One training step: forward, backward and :func:`guarded_step` for each optimizer."""

    def log_row(self, step: int, done: int, lr: float) -> dict[str, float]:
        """The values of the log row written after ``step``."""

    def bar_loss(self) -> str:
        """The loss shown next to the progress bar."""

    def report(self, base: dict[str, Any]) -> dict[str, Any]:
        """``base`` (timings, steps, machine) completed with the stage's evaluation: report.json."""


def open_run(name: str, cfg: LoopConfig, config: dict[str, Any], run_dir: str | Path, *, resume: bool,
             grad_accum: int = 1) -> Run:
    """Create the accelerator, set torch's threads, check or create the run folder and write config.yaml."""
    acc = make_accelerator(cfg, grad_accum)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(run_dir)
    last = prepare_run_dir(run_dir, config, resume=resume, main=acc.is_main_process)
    return Run(name, cfg, acc, run_dir, last, resume)


def restore(run: Run, kind: str, parts: dict[str, Any], total: int) -> None:
    """On --resume: load each part (model, optimizer) from checkpoints/last, before ``acc.prepare`` wraps them."""
    if not run.resume:
        return
    state = load_checkpoint(run.last, kind, with_train_state=True).train_state
    for key, part in parts.items():
        part.load_state_dict(state[key])
    run.start, run.rng = int(state["step"]), state["rng"]
    run.say(f"resumed at step {run.start} of {total}")


def fit(run: Run, stage: Stage, *, progress: bool = True, stop_after: int | None = None) -> Path:
    """Train steps ``run.start`` .. ``stage.total - 1``, then write the final model and report.json; returns the
    final model's folder (``checkpoints/last`` when ``stop_after`` steps ended the session first: tests use it to
    emulate a kill)."""
    from tqdm.auto import tqdm

    from ..viz import bar_options

    log = RunLog(run.run_dir, run.name, resume_step=run.start if run.resume else None,
                 tensorboard=run.cfg.tensorboard, enabled=run.main)
    timer = Timer()
    bar = tqdm(total=stage.total, initial=run.start, desc=run.name, disable=not (progress and run.main),
               **bar_options())
    try:
        finished = _steps(run, stage, log, bar, stop_after)
    finally:
        bar.close()
        log.close()
    if not finished:
        return run.last
    run.acc.wait_for_everyone()
    final = run.run_dir / run.name
    if run.main:
        save_checkpoint(final, kind=stage.model_kind, config=stage.header(),
                        model_state=stage.parts["model"].state_dict(),
                        meta={"steps": stage.total, "train_seconds": timer.elapsed()})
        report = stage.report({"train_seconds": timer.elapsed(), "steps": stage.total, "machine": machine_info()})
        write_json(run.run_dir / "report.json", report)
    return final


def _steps(run: Run, stage: Stage, log: RunLog, bar: Any, stop_after: int | None) -> bool:
    """The loop proper; False when ``stop_after`` ended it before the last step."""
    t, total, bad = run.cfg, stage.total, 0
    batches = stage.batches(run.start)  # a DataLoader iterator draws from torch's RNG: create it before restoring
    if run.rng is not None:
        set_rng_state(run.rng)
    for step, batch in zip(range(run.start, total), batches):
        done = step + 1
        lr = lr_at(step, t, total)
        try:
            stage.step(step, batch, lr)
        except BadUpdate as e:
            bad += 1
            if bad > t.max_bad_steps:
                raise NonFiniteError(e.message(step, bad - 1, t.max_bad_steps, run.last)) from None
            run.say(f"step {step}: {e}; step skipped ({bad} of train.max_bad_steps={t.max_bad_steps})")
        else:
            if run.main and (done % t.log_every == 0 or done == total):
                log.log(step, stage.log_row(step, done, lr))
                bar.set_postfix(loss=stage.bar_loss())
            if done % t.checkpoint_every == 0 or done == total:
                _save(run, stage, done)
        bar.update(1)
        if stop_after is not None and done - run.start >= stop_after:
            return False
    return True


def _save(run: Run, stage: Stage, step: int) -> None:
    """Write checkpoints/last (atomically): the parts' states, torch's RNG state and the step."""
    run.acc.wait_for_everyone()
    if not run.main:
        return
    state = {key: part.state_dict() for key, part in stage.parts.items()}
    state.update(rng=rng_state(), step=step)
    save_checkpoint(run.last, kind=stage.kind, config=stage.header(), model_state=stage.parts["model"].state_dict(),
                    meta={"step": step, "total": stage.total}, train_state=state)


class BadUpdate(Exception):
    """An update whose loss terms or gradient were not finite (raised by :func:`guarded_step`, caught by the loop)."""

    def __init__(self, part: str, terms: list[str]):
        super().__init__(f"non-finite {', '.join(terms)} in the {part} update")
        self.part, self.terms = part, terms

    def message(self, step: int, skipped: int, allowed: int, last: Path) -> str:
        before = f" after skipping {skipped} bad step(s) (train.max_bad_steps={allowed})" if skipped else ""
        return (f"training stopped at step {step}{before}: {self} (not applied); '{last}' holds the last good "
                f"checkpoint (if any) and no final model was written. Lower train.lr, set train.grad_clip, or let "
                f"train.max_bad_steps skip that many bad steps")


def guarded_step(acc: Any, optimizer: Any, module: torch.nn.Module, terms: dict[str, Any], *, part: str,
                 clip: float | None = None) -> None:
    """``optimizer.step()`` for the gradients of ``module`` if the loss ``terms`` and the gradient norm are finite.

    Called after backward.  With ``clip`` the norm is clipped to it first (as ``train.grad_clip`` asks); without, the
    norm is only read, so the arithmetic of a good step is unchanged.  On accumulation micro-steps (accelerate's
    ``sync_gradients`` false) nothing is clipped and only the loss terms are checked.  A non-finite value drops the
    module's gradients and raises :class:`BadUpdate` instead of stepping.
    """
    sync = acc.sync_gradients  # false on accumulation micro-steps, where accelerate's optimizer step is a no-op
    norm = acc.clip_grad_norm_(module.parameters(), clip) if sync and clip else None
    if acc.scaler is not None:
        norm = None  # fp16: the loss scaler skips steps whose gradients overflow itself
    elif sync and norm is None:
        norm = grad_norm(module)
    values = {k: torch.as_tensor(v).detach().float().reshape(-1) for k, v in terms.items()}
    if norm is not None:
        values["gradient norm"] = torch.as_tensor(norm).detach().float().reshape(-1)
    bad = ~torch.isfinite(torch.cat([v.to(acc.device) for v in values.values()])).all()
    if acc.num_processes > 1:  # a NaN on one process stops (or skips on) all of them
        bad = acc.reduce(bad.float(), "sum") > 0
    if bool(bad):
        module.zero_grad(set_to_none=True)
        names = [k for k, v in values.items() if not torch.isfinite(v).all()]
        raise BadUpdate(part, names or ["values on another process"])
    optimizer.step()


def grad_norm(module: torch.nn.Module) -> torch.Tensor:
    """The total 2-norm of the gradients of ``module`` (what clipping would measure); reads them only."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if total_norm is not None:
        return total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads]))
