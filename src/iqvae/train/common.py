"""What both training loops share: deterministic batches by step, logs, learning-rate schedule, run folders.

Exact resume rests on two facts: the indices of the batch of step ``s`` are a pure function of (seed, s) (see
:func:`batch_indices`), and every other source of randomness is the global torch RNG whose state goes into the
checkpoint.  A run killed at any moment and resumed from its last checkpoint therefore replays the same steps.

Multi-process training (``accelerate launch``) shards the *global* batch of each step by rank, so ``batch_size``
means the global batch and N processes compute the same step as one process on the concatenated batch.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config import opt
from ..errors import ConfigError


@dataclass
class LoopConfig:
    """Options both training commands read; each stage's config adds its own (``train.image_every`` for the
    tokenizer, ``train.grad_accum`` and ``train.val_every`` for the transformer)."""

    steps: int = opt(2000, "optimizer steps in all (the paper trains by epochs: set `epochs` to use that instead)")
    epochs: float | None = opt(None, "if set, steps = ceil(epochs * train items / batch_size)")
    batch_size: int = opt(32, "global batch size (split across processes)")
    lr: float = opt(1.5e-4, "peak learning rate (paper: 1.5e-4)")
    beta1: float = opt(0.9, "AdamW beta1 (paper: 0.9)")
    beta2: float = opt(0.95, "AdamW beta2 (paper: 0.95)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    warmup_steps: int = opt(0, "linear learning-rate warm-up steps")
    lr_schedule: str = opt("constant", "constant | cosine (decay to lr_min after warm-up)")
    lr_min: float = opt(0.0, "final learning rate of the cosine schedule")
    grad_clip: float | None = opt(None, "clip the global gradient norm to this value")
    max_bad_steps: int = opt(0, "steps with a non-finite (NaN/Inf) loss term or gradient that are skipped (no "
                                "optimizer step, no checkpoint) before the run stops with an error naming the step")
    mixed_precision: str = opt("no", "no | bf16 | fp16 autocast (GPU)")
    seed: int = opt(0, "seed of the batch order and of torch's RNG")
    log_every: int = opt(10, "write a CSV / TensorBoard row every N steps")
    checkpoint_every: int = opt(200, "save a resumable checkpoint every N steps (and at the end)")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N (cuda:N: that GPU, for a single process; under "
                              "`accelerate launch` each process gets its own GPU)")
    threads: int | None = opt(None, "torch CPU threads (default: torch's choice)")
    tensorboard: bool = opt(True, "also write TensorBoard logs when the tensorboard package is installed")

    def validate(self) -> None:
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"option 'train.{name}' must be at least 1, got {getattr(self, name)}")
        if self.max_bad_steps < 0:
            raise ConfigError(f"option 'train.max_bad_steps' must be >= 0, got {self.max_bad_steps}")
        if self.lr <= 0:
            raise ConfigError(f"option 'train.lr' must be positive, got {self.lr}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"option 'train.lr_schedule' must be constant or cosine, got {self.lr_schedule!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ConfigError(f"option 'train.mixed_precision' must be no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"option 'train.epochs' must be positive, got {self.epochs}")
        cuda_index(self.device)  # checks the spelling

    def total_steps(self, num_items: int) -> int:
        if self.epochs is None:
            return self.steps
        return max(1, math.ceil(self.epochs * num_items / self.batch_size))


def batch_indices(step: int, batch_size: int, num_items: int, seed: int) -> list[int]:
    """Indices of the global batch of ``step``: consecutive slices of one seeded permutation per epoch."""
    if num_items < 1:
        raise ConfigError("the training split is empty")
    out: list[int] = []
    pos = step * batch_size
    perm_epoch, perm = -1, None
    while len(out) < batch_size:
        epoch, offset = divmod(pos, num_items)
        if epoch != perm_epoch:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perm = torch.randperm(num_items, generator=g).tolist()
            perm_epoch = epoch
        take = min(batch_size - len(out), num_items - offset)
        out.extend(perm[offset:offset + take])  # type: ignore[index]
        pos += take
    return out


def shard(indices: list[int], rank: int, world: int) -> list[int]:
    """This process's part of a global batch (contiguous, equal sizes)."""
    if len(indices) % world:
        raise ConfigError(f"batch_size {len(indices)} is not divisible by the number of processes ({world})")
    per = len(indices) // world
    return indices[rank * per:(rank + 1) * per]


class StepBatches(torch.utils.data.Sampler[list[int]]):
    """A batch sampler yielding this process's share of the global batch of steps start, start+1, ... end-1."""

    def __init__(self, start: int, end: int, batch_size: int, num_items: int, seed: int, rank: int = 0, world: int = 1):
        self.start, self.end = start, end
        self.batch_size, self.num_items, self.seed = batch_size, num_items, seed
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.end):
            yield shard(batch_indices(step, self.batch_size, self.num_items, self.seed), self.rank, self.world)

    def __len__(self) -> int:
        return max(0, self.end - self.start)


def lr_at(step: int, cfg: LoopConfig, total: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        span = max(1, total - cfg.warmup_steps)
        t = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * t))
    return cfg.lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class RunLog:
    """CSV log (always) and TensorBoard (if installed and enabled); appends on resume, truncating later rows."""

    def __init__(self, run_dir: Path, name: str, *, resume_step: int | None, tensorboard: bool, enabled: bool = True):
        self.enabled = enabled
        self.path = run_dir / f"{name}.csv"
        self.fields: list[str] | None = None
        self.rows: list[dict[str, Any]] = []
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or [])
                self.rows = [r for r in reader if int(r["step"]) < resume_step]
            self._rewrite()
        elif self.path.exists():
            self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb" / name), purge_step=resume_step)
            except ImportError:
                self.tb = None

    def _rewrite(self) -> None:
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields or ["step"], extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: float(v) for k, v in values.items()}}
        if self.fields is None or any(k not in self.fields for k in row):
            self.fields = list(dict.fromkeys((self.fields or []) + list(row)))
            self.rows.append(row)
            self._rewrite()
        else:
            self.rows.append(row)
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, float(v), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_log(path: str | Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:(\d+))$")


def cuda_index(device: str) -> int | None:
    """The N of ``cuda:N`` (None for auto, cpu and cuda); any other spelling is a :class:`ConfigError`."""
    m = _DEVICE.match(device)
    if m is None:
        raise ConfigError(f"option 'train.device' must be auto, cpu, cuda or cuda:N, got {device!r}")
    return None if m.group(2) is None else int(m.group(2))


def resolve_device(device: str) -> tuple[bool, int | None]:
    """``train.device`` on this machine: (run on the CPU, the GPU index of ``cuda:N`` or None).  Asking for a GPU
    that is not there is a :class:`ConfigError`; ``cuda:N`` is for a single process (under ``accelerate launch`` or
    ``torchrun`` each process gets its own GPU)."""
    index = cuda_index(device)
    if device == "auto":
        return not torch.cuda.is_available(), None
    if device == "cpu":
        return True, None
    if not torch.cuda.is_available():
        raise ConfigError(f"option 'train.device' is {device!r} but CUDA is not available on this machine")
    if index is not None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(f"option 'train.device' is {device!r}, which picks the GPU of a single process; with "
                              "several processes (accelerate launch / torchrun) use train.device=cuda or auto")
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"option 'train.device' is {device!r} but this machine has {count} GPU(s) "
                              f"(cuda:0 .. cuda:{count - 1})")
    return False, index


def make_accelerator(cfg: LoopConfig, grad_accum: int = 1):
    """An accelerate Accelerator for this run (one process unless started with ``accelerate launch``)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    cpu, index = resolve_device(cfg.device)
    if index is not None:
        torch.cuda.set_device(index)  # a single process: accelerate then places everything on the current GPU
    mp = cfg.mixed_precision if not cpu else "no"
    return Accelerator(
        cpu=cpu,
        mixed_precision=mp,
        gradient_accumulation_steps=grad_accum,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


# Machine settings that do not change what is trained: a run may resume on another device or thread count.
RESUME_FREE = ("train.threads", "train.device")


def config_differences(saved: Any, config: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two config dicts differ, except :data:`RESUME_FREE`."""
    if not (isinstance(saved, dict) and isinstance(config, dict)):
        return [] if saved == config or prefix in RESUME_FREE else [prefix or "<top level>"]
    out = []
    for k in sorted(set(saved) | set(config), key=str):
        key = f"{prefix}.{k}" if prefix else str(k)
        if key in RESUME_FREE:
            continue
        if k not in saved or k not in config:
            out.append(key)
        else:
            out += config_differences(saved[k], config[k], key)
    return out


def prepare_run_dir(run_dir: Path, config: dict[str, Any], *, resume: bool, main: bool) -> Path:
    """Check ``--resume`` against the folder (a checkpoint exists, the configuration is the saved one) or refuse to
    overwrite a run; write ``config.yaml``.  Returns the path of the resumable checkpoint ``checkpoints/last``."""
    import yaml

    from ..errors import CheckpointError

    last = run_dir / "checkpoints" / "last"
    if resume:
        if not last.is_dir():
            raise CheckpointError(f"--resume: no checkpoint at '{last}'")
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        diff = config_differences(saved, config)
        if diff:
            raise ConfigError(f"--resume: the configuration differs from the one saved in '{run_dir / 'config.yaml'}' "
                              f"at {', '.join(diff[:6])}{' ...' if len(diff) > 6 else ''} (only "
                              f"{' and '.join(RESUME_FREE)} may change on resume)")
    elif last.exists():
        raise ConfigError(f"'{run_dir}' already holds a run; pass --resume to continue it or choose another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    if main:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return last


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0
