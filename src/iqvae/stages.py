"""Train-or-reuse building blocks of the commands that run the whole pipeline (``iqvae demo``, ``iqvae bench
ablation``): tokenizer, token codes, transformer, pipeline folder.

Each function returns at once when its output is complete, resumes an interrupted run from its last checkpoint,
and otherwise trains from scratch; so an interrupted demo or bench continues where it stopped.  Several
transformers can share one tokenizer and its codes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

Say = Callable[[str], None]


def check_same_config(run_dir: Path, cfg: Any, hint: str, own_paths: tuple[str, ...] = ()) -> None:
    """Refuse to reuse or resume ``run_dir`` when its saved ``config.yaml`` differs from ``cfg`` (the thread count
    aside: it does not change what is trained); ``hint`` says what to do instead.  The saved config is read through
    ``cfg``'s dataclass, so an option added since then counts as its default (which keeps the old behaviour); an
    option that no longer exists is a difference.  ``own_paths``: top-level keys naming a folder that the caller
    always places at the same spot of its work folder (the modalities bench's ``codes``: ``RUN/codes``), which are
    not compared, so that a work folder moved or copied elsewhere can still be reused."""
    import yaml

    from .config import from_dict, to_dict
    from .errors import ConfigError, IQVAEError

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return

    def comparable(d: dict[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in d.items() if k not in own_paths},
                "train": {k: v for k, v in d.get("train", {}).items() if k != "threads"}}

    try:
        old = comparable(to_dict(from_dict(type(cfg), yaml.safe_load(saved.read_text()))))
    except ConfigError:
        old = None
    if old != comparable(to_dict(cfg)):
        raise IQVAEError(f"'{run_dir}' holds a run with another configuration (preset, --set or code changed); {hint}")


def stage_done(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def _ensure_trained(stage: str, train: Callable[..., Path], cfg: Any, run_dir: Path, *, progress: bool,
                    say: Say) -> Path:
    """``run_dir/stage``, after ``train(cfg, run_dir, ...)`` unless that run finished (final model and report)."""
    if not (stage_done(run_dir / stage) and (run_dir / "report.json").is_file()):
        resume = (run_dir / "checkpoints" / "last").is_dir()
        say(f"{'resuming' if resume else 'training'} {stage} {run_dir}")
        train(cfg, run_dir, resume=resume, progress=progress)
    return run_dir / stage


def ensure_tokenizer(cfg: Any, run_dir: Path, *, progress: bool, say: Say) -> Path:
    from .train.tokenizer import train_tokenizer

    return _ensure_trained("tokenizer", train_tokenizer, cfg, run_dir, progress=progress, say=say)


def ensure_codes(tok_cfg: Any, tok_run: Path, codes_dir: Path, *, progress: bool, say: Say,
                 splits: tuple[str, ...] = ("train", "val")) -> Path:
    from .codes import encode_dataset, write_codes
    from .config import to_dict
    from .data.config import build_dataset
    from .models.tokenizer import IQVAE

    if not (codes_dir / "codes.json").is_file():
        say(f"encoding {', '.join(splits)} with {tok_run}")
        tok = IQVAE.from_pretrained(tok_run)
        enc = {s: encode_dataset(tok, build_dataset(tok_cfg.data, s), tok_cfg.data.cond, progress=progress,
                                 desc=f"encode {s}") for s in splits}
        write_codes(codes_dir, tok, tok_run / "tokenizer", enc, to_dict(tok_cfg.data))
    return codes_dir


def ensure_transformer(cfg: Any, run_dir: Path, *, progress: bool, say: Say) -> Path:
    from .train.transformer import train_transformer

    return _ensure_trained("transformer", train_transformer, cfg, run_dir, progress=progress, say=say)


def ensure_pipeline(tok_run: Path, gpt_run: Path, dest: Path) -> Path:
    from .pipeline import copy_pipeline

    if not (stage_done(dest / "tokenizer") and stage_done(dest / "transformer")):
        copy_pipeline(tok_run / "tokenizer", gpt_run / "transformer", dest)
    return dest
