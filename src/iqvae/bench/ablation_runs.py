"""What ``iqvae bench ablation`` trains: the systems compared (:data:`SYSTEMS`, Table 3's rows :data:`TABLE3`, the
paper's full model with our additions :data:`OURS_SYSTEM`), the λ1 / ``sgw_on`` sweep (:func:`sweep_systems`), the
preset's ``ablation:`` settings, and the train-or-reuse of one tokenizer / transformer run of a system and seed
(also the Fig. 6 latent-size sweep).  The command is :mod:`iqvae.bench.ablation`, its outputs
:mod:`iqvae.bench.ablation_report`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import apply_overrides, opt
from ..errors import IQVAEError
from ..stages import check_same_config, ensure_codes, ensure_tokenizer, ensure_transformer


@dataclass(frozen=True)
class System:
    label: str
    tokenizer: str  # key of the tokenizer run (systems with equal keys share it)
    tok_overrides: tuple[str, ...]
    gpt_overrides: tuple[str, ...]


SYSTEMS: dict[str, System] = {
    "vqgan-pair": System("VQGAN pair + T (teacher forcing)", "vqgan-pair", ("model.variant=vqgan-pair",),
                         ("gumbel.mode=teacher",)),
    "iq-none": System("IQ-VAE w/o VR + T", "iq-none", ("model.variant=iq-none",), ("gumbel.mode=teacher",)),
    "iq-vr": System("IQ-VAE w/ VR + T", "iq-vr", ("model.variant=iq-vr",), ("gumbel.mode=teacher",)),
    "iq-vr+gs": System("IQ-VAE w/ VR + T + GS", "iq-vr", ("model.variant=iq-vr",), ("gumbel.mode=gumbel",)),
    "svq": System("sVQ + T (teacher forcing)", "svq", ("model.variant=svq",), ("gumbel.mode=teacher",)),
    "iq-vr+gs+rq": System("IQ-VAE w/ VR + RQ + T + GS", "iq-vr-rq",
                          ("model.variant=iq-vr", "model.quantizer=rq", "model.rq_depth=2"), ("gumbel.mode=gumbel",)),
}
_HINT = "choose another --work folder or delete it"
TABLE3 = ("vqgan-pair", "iq-none", "iq-vr", "iq-vr+gs")

# The `small` preset's additions (docs/design.md, "Options: the paper's and ours"), on top of the paper's full model
# (iq-vr+gs), at the bench's budget: tests/test_ablation.py checks they are exactly what `iqvae presets` lists for
# `small`.  Additions every system already has (the ablation preset's own, e.g. model.pos_init=spatial) stay as they are.
OURS_TOKENIZER = ("model.colour_head=true", "model.colour_head_cond=true", "model.cond_cell_head=spatial")
OURS_TRANSFORMER = ("model.pos_init=spatial", "model.cond_align=true", "model.above_input=true",
                    "model.above_window=3")
OURS_SYSTEM = "iq-vr+gs+ours"
SYSTEMS[OURS_SYSTEM] = System("IQ-VAE w/ VR + T + GS + our additions (the small preset's)", "iq-vr-ours",
                              ("model.variant=iq-vr", *OURS_TOKENIZER), ("gumbel.mode=gumbel", *OURS_TRANSFORMER))
SWEEP_BASE = "iq-vr"  # the system whose λ1 (loss.sgw_weight) and model.sgw_on the sweep varies (stage 2: teacher forcing)


def sweep_name(weight: float, sgw_on: str) -> str:
    return f"sgw{weight:g}-{sgw_on}"


def sweep_systems(weights: list[float], ons: list[str], tok_base: Any) -> dict[str, System]:
    """One system per (λ1, sgw_on) of the sweep, as ``iq-vr`` with those two options; the point equal to the
    preset's own setting is ``iq-vr`` itself (same tokenizer and transformer runs, reused)."""
    base = SYSTEMS[SWEEP_BASE]
    out: dict[str, System] = {}
    for on in ons:
        for w in weights:
            if w == tok_base.loss.sgw_weight and on == tok_base.model.sgw_on:
                out[SWEEP_BASE] = base
                continue
            name = sweep_name(w, on)
            out[name] = System(f"IQ-VAE w/ VR (λ1 = {w:g}, sgw_on = {on}) + T", f"iq-vr-{name}",
                               (*base.tok_overrides, f"loss.sgw_weight={w!r}", f"model.sgw_on={on}"),
                               base.gpt_overrides)
    return out


def parse_sweep(weights: str | None, ons: str | None) -> tuple[list[float], list[str]]:
    """``--sweep-sgw 0.1,0.3,1`` and ``--sweep-sgw-on pre,post``, checked; ([], []) without a sweep."""
    if not weights:
        if ons:
            raise IQVAEError("--sweep-sgw-on needs --sweep-sgw (the λ1 values to sweep)")
        return [], []
    try:
        ws = [float(w) for w in weights.split(",") if w.strip()]
    except ValueError:
        raise IQVAEError(f"--sweep-sgw expects comma-separated numbers (λ1 values), got {weights!r}") from None
    if not ws or any(not math.isfinite(w) or w < 0 for w in ws) or len(set(ws)) != len(ws):
        raise IQVAEError(f"--sweep-sgw expects distinct finite λ1 values >= 0, got {weights!r}")
    on_list = [o.strip() for o in (ons or "pre,post").split(",") if o.strip()]
    if not on_list or any(o not in ("pre", "post") for o in on_list) or len(set(on_list)) != len(on_list):
        raise IQVAEError(f"--sweep-sgw-on expects distinct values among pre, post; got {ons!r}")
    return ws, on_list


@dataclass
class BenchSettings:
    """The preset's ``ablation:`` section: evaluation protocol and the Fig. 6 sweep."""

    conditions: int = opt(16, "held-out test conditions per system")
    samples: int = opt(4, "samples per condition")
    eval_seed: int = opt(0, "sampling seed of the evaluation (the same for every system and seed)")
    top_k: int | None = opt(100, "top-k of the sampler (null: none)")
    temperature: float = opt(1.0, "sampling temperature of the evaluation and the grids (the same for every system)")
    real_images: int | None = opt(None, "reference reals for FD/SWD (default: the conditions' real images)")
    recon_items: int = opt(128, "items for the reconstruction metrics")
    extractor_steps: int = opt(1000, "training steps of the cached Shapes feature classifier")
    fig6_grids: list[int] = opt(factory=lambda: [4, 8, 16], help="latent grid sizes of the Fig. 6 sweep (empty: none)")
    fig6_system: str = opt("iq-vr", "system whose latent size is swept")
    fig6_seeds: int = opt(1, "seeds of the sweep (the first N of the bench's seeds)")
    grid_conditions: int = opt(4, "conditions shown per system in ablation.png")
    probe_items: int = opt(128, "test scenes for the latent probe (sliced GW between condition and image latents) "
                                "and validation sequences for the exposure probe (0: no probes)")
    probe_projections: int = opt(64, "directions of the probe's sliced GW (fixed, seeded: the same for every system)")

    def validate(self) -> None:
        for name in ("conditions", "samples", "recon_items", "extractor_steps", "grid_conditions",
                     "probe_projections"):
            if getattr(self, name) < 1:
                raise IQVAEError(f"option 'ablation.{name}' must be at least 1, got {getattr(self, name)}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise IQVAEError(f"option 'ablation.temperature' must be a number > 0, got {self.temperature!r}")
        if self.probe_items < 0:
            raise IQVAEError(f"option 'ablation.probe_items' must be at least 0, got {self.probe_items}")
        if self.fig6_system not in SYSTEMS:
            raise IQVAEError(f"option 'ablation.fig6_system' must be one of {list(SYSTEMS)}, got {self.fig6_system!r}")


@dataclass
class Plan:
    work: Path
    tok_base: Any
    gpt_base: Any
    settings: BenchSettings
    progress: bool
    tok_configs: dict[str, Any] = field(default_factory=dict)
    systems: dict[str, System] = field(default_factory=lambda: dict(SYSTEMS))  # with the sweep's points

    def system(self, name: str) -> System:
        return self.systems[name]


def _grid_ch_mult(ch_mult: tuple[int, ...], resolution: int, grid: int) -> tuple[int, ...]:
    levels = int(round(math.log2(resolution / grid))) + 1
    if grid < 1 or resolution % grid or 2 ** (levels - 1) != resolution // grid:
        raise IQVAEError(f"option 'ablation.fig6_grids': {grid} does not divide {resolution} px by a power of 2")
    return tuple(ch_mult[:levels]) + (ch_mult[-1],) * max(0, levels - len(ch_mult))


def tokenizer_run(plan: Plan, system: System, seed: int, grid: int | None = None) -> tuple[Path, Any, Path]:
    """(tokenizer run folder, its config, codes folder), trained / encoded when missing."""
    cfg = apply_overrides(plan.tok_base, [*system.tok_overrides, f"train.seed={seed}"])
    key = system.tokenizer
    if grid is not None and grid != cfg.model.grid:
        cfg = apply_overrides(cfg, [f"model.ch_mult={list(_grid_ch_mult(cfg.model.ch_mult, cfg.model.resolution, grid))}"])
        key = f"{key}-g{grid}"
    run = plan.work / "tok" / f"{key}-s{seed}"
    check_same_config(run, cfg, _HINT)
    ensure_tokenizer(cfg, run, progress=plan.progress, say=say)
    codes = ensure_codes(cfg, run, run / "codes", progress=plan.progress, say=say)
    return run, cfg, codes


def transformer_run(plan: Plan, name: str, system: System, seed: int, codes: Path, tag: str = "") -> Path:
    cfg = apply_overrides(plan.gpt_base, [f"codes={codes.resolve()}", *system.gpt_overrides, f"train.seed={seed}"])
    run = plan.work / "gpt" / f"{name}{tag}-s{seed}"
    check_same_config(run, cfg, _HINT)
    ensure_transformer(cfg, run, progress=plan.progress, say=say)
    return run


def say(msg: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(f"[ablation] {msg}")


def fig6_points(plan: Any, seeds: list[int]) -> list[dict[str, Any]]:
    """Train / reuse the latent-size sweep; one point per (grid, seed)."""
    s = plan.settings
    system = SYSTEMS[s.fig6_system]
    base = plan.tok_base.model.grid
    points = []
    for grid in s.fig6_grids:
        for seed in seeds:
            tok_run, cfg, codes = tokenizer_run(plan, system, seed, grid)
            gpt_run = transformer_run(plan, s.fig6_system, system, seed, codes, tag="" if grid == base else f"-g{grid}")
            tok, gpt = json.loads((tok_run / "report.json").read_text()), json.loads((gpt_run / "report.json").read_text())
            depth = cfg.model.rq_depth if cfg.model.quantizer == "rq" else 1
            points.append({"grid": grid, "seed": seed, "tokens": grid * grid * depth, "ssim": tok["ssim"],
                           "one_minus_ssim": 1.0 - tok["ssim"], "psnr": tok["psnr"],
                           "nll_bits": gpt.get("val_nll_bits_per_token")})
    return points
