"""Samples of a pipeline on a dataset split, and the Shapes world's exact metrics of them.

Protocol: the first ``num_conditions`` items of the split (in order) are the conditions; for each, the pipeline
draws ``samples_per_condition`` images with the given sampler settings from one seeded generator.

* Shapes world (exact): palette accuracy over every sampled object, mask adherence (mIoU between the condition's
  segmentation and the one recovered from each sample), mode coverage (per condition, over its samples), and the
  object-level scene accuracy / precision / recall (:mod:`iqvae.metrics.scene`: the objects found in each sample
  against the objects the scene description names, by class and 3 x 3 cell; the fair score of text and audio).
FD / KID, SWD, LPIPS diversity and NLL are added on top of these samples by ``iqvae evaluate``
(:mod:`iqvae.evaluation.evaluate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..data.record import PairDataset
from ..errors import IQVAEError


BATCH_CONDITIONS = 8  # conditions per sampler call: the draws of a condition depend on its batch


@dataclass
class SampleSet:
    images: torch.Tensor  # (C, N, 3, H, W) in [-1, 1]
    real: torch.Tensor  # (C, 3, H, W)
    conds: list[torch.Tensor]
    metas: list[dict[str, Any]]
    indices: list[int]


def draw_samples(pipe: Any, dataset: PairDataset, cond_name: str, *, num_conditions: int,
                 samples_per_condition: int, seed: int = 0, top_k: int | None = 100, top_p: float | None = None,
                 temperature: float = 1.0, batch_conditions: int = BATCH_CONDITIONS, progress: bool = False,
                 guidance_scale: float = 1.0, min_p: float | None = None) -> SampleSet:
    from tqdm.auto import tqdm

    from ..viz import bar_options

    if num_conditions < 1 or samples_per_condition < 1:
        raise IQVAEError("num_conditions and samples_per_condition must be at least 1")
    num_conditions = min(num_conditions, len(dataset))
    g = torch.Generator().manual_seed(seed)
    items = [dataset[i] for i in range(num_conditions)]
    out = []
    for i in tqdm(range(0, num_conditions, batch_conditions), desc="sample", disable=not progress, **bar_options()):
        conds = torch.stack([s.cond[cond_name] for s in items[i:i + batch_conditions]])
        out.append(pipe(conds, num_images=samples_per_condition, top_k=top_k, top_p=top_p,
                        temperature=temperature, generator=g, output_type="pt", guidance_scale=guidance_scale,
                        min_p=min_p))
    return SampleSet(torch.cat(out), torch.stack([s.image for s in items]), [s.cond[cond_name] for s in items],
                     [s.meta for s in items], list(range(num_conditions)))


def shapes_metrics(samples: SampleSet, seg: list[torch.Tensor]) -> dict[str, float]:
    """The Shapes world's exact metrics of a sample set (``seg``: the ground-truth segmentation per condition)."""
    from ..metrics.scene import scene_metrics
    from ..metrics.shapes import mask_adherence, mode_coverage, palette_accuracy

    c, n = samples.images.shape[:2]
    flat = samples.images.reshape(c * n, *samples.images.shape[2:])
    metas = [m for m in samples.metas for _ in range(n)]
    segs = torch.stack([s for s in seg for _ in range(n)])
    return {
        "palette_accuracy": float(palette_accuracy(flat, metas)),
        "mask_miou": float(mask_adherence(flat, segs)),
        "mask_miou_per_image": float(mask_adherence(flat, segs, "image")),
        "mode_coverage": float(sum(mode_coverage(samples.images[i], samples.metas[i]) for i in range(c)) / c),
        **scene_metrics(samples.images, samples.metas),
    }


def real_shapes_metrics(dataset: PairDataset, num: int) -> dict[str, float]:
    """The same metrics on true images (the ceiling: 1 for palette accuracy, mask mIoU and the scene scores)."""
    from ..metrics.scene import scene_scores
    from ..metrics.shapes import mask_adherence, palette_accuracy

    items = [dataset[i] for i in range(min(num, len(dataset)))]
    imgs = torch.stack([s.image for s in items])
    metas = [s.meta for s in items]
    seg = torch.stack([s.cond["seg"] for s in items])
    return {"palette_accuracy": float(palette_accuracy(imgs, metas)),
            "mask_miou": float(mask_adherence(imgs, seg)),
            "mask_miou_per_image": float(mask_adherence(imgs, seg, "image")),
            **scene_scores(imgs, metas)}
