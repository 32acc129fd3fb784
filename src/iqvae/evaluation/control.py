"""Controllability and the FD floor of ``iqvae evaluate`` (see :mod:`iqvae.metrics.control` for the scores).

* controllability: every sample is judged against the condition it was drawn for (C x N images), and the real image
  of each condition (C images) is judged the same way: the oracle row, i.e. what a generator whose samples were the
  real images would score.  The judge is the modality's (:attr:`iqvae.modalities.Modality.control_judge`): Canny
  for edges (exact, and with 1 pixel of tolerance), a condition predictor trained on the dataset's train split for
  seg / layout / keypoints, the Shapes world's scene accuracy for text and audio.
* FD floor: FD between two disjoint sets of *real* images of the evaluated split under the same extractor, of the
  sizes the FD compares when the split holds them: the M reference reals against the next min(C x N, rest) items;
  when fewer than 2 items are left, the split's two halves.  A sampler that drew real images would score about this.
"""

from __future__ import annotations

from typing import Any

import torch

from .samples import SampleSet


def unavailable(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason}


def control_entry(cond: str, samples: SampleSet, *, predictor: Any = None, predictor_reason: str = "",
                  shapes: dict[str, Any] | None = None, dataset: str = "") -> dict[str, Any]:
    """The controllability entry of a sample set (see the module docstring)."""
    from ..metrics.control import HIGHER_IS_BETTER, canny_f1, predictor_score
    from ..modalities import get_modality

    mod = get_modality(cond)
    name, judge = mod.control, mod.control_judge
    c, n = samples.images.shape[:2]
    fake = samples.images.reshape(c * n, *samples.images.shape[2:])
    conds = torch.stack(samples.conds) if judge in ("canny", "predictor") else None
    base = {"available": True, "metric": name, "judge": judge, "higher_is_better": HIGHER_IS_BETTER.get(name, True),
            "conditions": c, "samples_per_condition": n}
    if judge == "canny":
        rep = conds.repeat_interleave(n, 0)
        out = {**base, "samples": canny_f1(fake, rep)["mean"], "real": canny_f1(samples.real, conds)["mean"],
               "samples_tol1": canny_f1(fake, rep, tolerance=1)["mean"],
               "real_tol1": canny_f1(samples.real, conds, tolerance=1)["mean"],
               "protocol": "OpenCV Canny 100/200 of each image vs its input edge map, F1 per image (exact pixels; "
                           "tol1: within 1 pixel), mean over images"}
        return out
    if judge == "predictor":
        if predictor is None:
            return unavailable(predictor_reason or "no condition predictor given")
        rep = conds.repeat_interleave(n, 0)
        return {**base, "samples": predictor_score(name, predictor.predict(fake), rep),
                "real": predictor_score(name, predictor.predict(samples.real), conds),
                "predictor": predictor.name,
                "protocol": f"{predictor.name} (trained on the dataset's train split) reads the condition back; "
                            f"{name} against the input condition"}
    if judge == "scene":
        if shapes is None or not shapes.get("available"):
            return unavailable(f"'{cond}' names objects, not pixels: it is judged by the Shapes world's object-level "
                               f"scene accuracy, which needs the world's scene descriptions; '{dataset}' has none, "
                               "and no captioner / audio tagger is trained here")
        return {**base, "samples": shapes["samples"]["scene_accuracy"], "real": shapes["real"]["scene_accuracy"],
                "protocol": "the Shapes world's scene accuracy (objects found with their class's colour in their "
                            "cell)"}
    return unavailable(f"no controllability score for condition '{cond}'")


def floor_indices(n_split: int, n_real: int, n_fake: int) -> tuple[range, range] | None:
    """(set A, set B) item indices of the FD floor (see the module docstring); None when the split has < 4 items."""
    if n_real >= 2 and n_split - n_real >= 2:
        return range(n_real), range(n_real, n_real + min(n_fake, n_split - n_real))
    h = n_split // 2
    return (range(h), range(h, 2 * h)) if h >= 2 else None


def fd_floor(dataset: Any, real: torch.Tensor, n_fake: int, extractor: Any) -> dict[str, Any]:
    """FD of real vs real images of ``dataset`` (``real``: the reference reals, its first items)."""
    from ..metrics.fd import frechet_distance

    sets = floor_indices(len(dataset), real.shape[0], n_fake)
    if sets is None:
        return unavailable(f"the split holds {len(dataset)} items; the FD floor needs at least 4")
    a, b = sets

    def images(idx: range) -> torch.Tensor:
        return real[idx.start:idx.stop] if idx.stop <= real.shape[0] else torch.stack([dataset[i].image for i in idx])

    return {"available": True, "value": frechet_distance(images(a), images(b), extractor), "set_a": len(a),
            "set_b": len(b), "protocol": f"FD of real items [{a.start}, {a.stop}) vs real items [{b.start}, {b.stop}) "
                                         "of the split, same extractor"}
