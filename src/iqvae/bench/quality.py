"""Issue 14's quality bar per condition modality (:data:`QUALITY_BARS`, its one home) and a preset's ``quality:``
section (:class:`QualitySettings`): what ``iqvae bench modalities`` (:mod:`.modalities`) measures and how."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..config import apply_overrides, check_bounds, from_dict, load_preset, opt
from ..errors import ConfigError

# Issue 14's bar per condition: metric name (as in `iqvae evaluate`'s Shapes metrics) -> the least value that meets
# it.  The metrics named are the condition's `Modality.fit_metrics` (tested); the first one is its fidelity metric.
QUALITY_BARS: dict[str, dict[str, float]] = {
    "seg": {"palette_accuracy": 0.92, "mask_miou": 0.75, "mode_coverage": 0.85},
    "layout": {"palette_accuracy": 0.85, "mask_miou": 0.6, "mode_coverage": 0.8},
    "keypoints": {"palette_accuracy": 0.85, "mask_miou": 0.6, "mode_coverage": 0.8},
    "edge": {"palette_accuracy": 0.75, "mask_miou": 0.6, "mode_coverage": 0.7},
    # a caption or a sound does not fix an object's pixels, so its diversity is read on the objects found right
    # (scene mode coverage, iqvae.metrics.scene) rather than over the true object's pixels (mode coverage)
    "text": {"scene_accuracy": 0.7, "scene_mode_coverage": 0.7},
    "audio": {"scene_accuracy": 0.7, "scene_mode_coverage": 0.7},
}
METRICS = ("palette_accuracy", "mask_miou", "scene_accuracy", "mode_coverage", "scene_mode_coverage")  # columns
STAGES = ("tokenizer", "encode", "transformer")


def fidelity_metric(cond: str) -> str:
    """The metric on the y axis of the guidance curve (a condition's first bar): palette accuracy for spatial
    conditions, scene accuracy for text and audio."""
    return next(iter(QUALITY_BARS[cond]))


def diversity_metric(cond: str) -> str:
    """The metric on the x axis of the guidance curve (a condition's last bar): mode coverage for spatial
    conditions, scene mode coverage for text and audio."""
    return list(QUALITY_BARS[cond])[-1]


def meets(value: float | None, bar: float) -> bool:
    return value is not None and not math.isnan(value) and value >= bar


@dataclass
class QualitySettings:
    """A preset's ``quality:`` section: how ``iqvae bench modalities`` evaluates the condition's pipeline."""

    temperature: float = opt(1.0, "sampling temperature of the evaluation")
    cfg_scale: float = opt(1.0, "classifier-free guidance scale of the evaluation (1: none; other values need "
                                "transformer.model.cfg_dropout > 0)")
    guidance_sweep: list[float] = opt(factory=list, help="guidance scales of the fidelity-diversity curve "
                                      "(guidance.png), each evaluated at `temperature` (empty: none)")
    conditions: int = opt(64, "held-out test conditions: the first N items of the test split")
    samples: int = opt(8, "samples per condition")
    eval_seed: int = opt(0, "sampling seed of the evaluation")
    top_k: int | None = opt(100, "top-k of the sampler (null: none)")
    min_p: float | None = opt(None, "min-p of the sampler, after top-k: keep a token at least min_p times as likely "
                                    "as the most likely one (null: none)")
    recon_items: int = opt(256, "test items for the evaluation's reconstruction metrics")
    grid_conditions: int = opt(8, "conditions (rows) of the sample grid modalities_<cond>.png")

    def validate(self) -> None:
        w = "quality."
        check_bounds(self, ("conditions", "samples", "recon_items", "grid_conditions"), low=1, integer=True, where=w)
        check_bounds(self, ("temperature",), strict=True, where=w)
        check_bounds(self, ("cfg_scale",), where=w)
        if self.top_k is not None:
            check_bounds(self, ("top_k",), low=1, integer=True, where=w)
        if self.min_p is not None and not (math.isfinite(self.min_p) and 0 <= self.min_p <= 1):
            raise ConfigError(f"option 'quality.min_p' must be a number in [0, 1] or null, got {self.min_p!r}")
        for i, s in enumerate(self.guidance_sweep):
            if not (math.isfinite(s) and s >= 0):
                raise ConfigError(f"option 'quality.guidance_sweep[{i}]' must be a number >= 0, got {s!r}")

    def scales(self) -> list[float]:
        """The guidance scales evaluated: ``cfg_scale`` first, then the sweep's others (each once)."""
        out = [self.cfg_scale]
        for s in self.guidance_sweep:
            if s not in out:
                out.append(s)
        return out


def grid_rows(q: QualitySettings) -> tuple[int, int]:
    """(conditions drawn, rows shown): the grid draws whole sampler batches of ``draw_samples`` with the evaluation's
    seed, so its samples are the evaluation's own samples of the first conditions."""
    from ..evaluation.samples import BATCH_CONDITIONS as batch

    shown = min(q.grid_conditions, q.conditions)
    return min(q.conditions, batch * math.ceil(shown / batch)), shown


@dataclass
class _QualitySection:  # so that errors name the option 'quality.KEY'
    quality: QualitySettings = field(default_factory=QualitySettings)


def quality_settings(preset: str, overrides: list[str] = ()) -> QualitySettings:
    """The preset's ``quality:`` section with ``KEY=VALUE`` overrides; an unknown key is a ConfigError naming it."""
    data = load_preset(preset)
    if not isinstance(data.get("quality"), dict):
        raise ConfigError(f"preset '{preset}' has no 'quality' section (the evaluation settings of "
                          "`iqvae bench modalities`)")
    section = from_dict(_QualitySection, {"quality": data["quality"]})
    return apply_overrides(section, [f"quality.{o}" for o in overrides]).quality
