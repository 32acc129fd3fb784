"""``iqvae evaluate``: every metric of a trained pipeline on one split, as ``metrics.json`` and ``metrics.md``.

Protocol (also written into both files):

* conditions: the first C items of the split; the pipeline draws N samples for each from one generator seeded
  with ``seed`` (:func:`iqvae.evaluation.samples.draw_samples`), with the given top-k / top-p / temperature.
* reference reals: the first M = max(C, ``real_images``) items of the split (by default M = C: the real images of
  the evaluated conditions).
* FD / KD: reals vs all C x N samples under one extractor; named "FID" / "KID" only with the standard Inception
  weights, else "FD-<extractor>" / "KD-<extractor>".  KD: 100 subsets of min(1000, M, C x N) features, seed ``seed``.
* SWD (x1e3, Karras; mean over Laplacian levels down to 16 px): n = min(M, C x N) reals vs n samples taken
  sample-major (sample 0 of every condition, then sample 1, ...), so with M = C it is reals vs one sample per
  condition.  Needs images of at least 16 px.
* LPIPS diversity: all pairs of the N samples of each condition (C x N(N-1)/2 distances); only with both LPIPS
  weight files (otherwise unavailable, with the reason).
* NLL: bits per image token of the transformer on token codes (``--codes``, else the ``codes/`` folder next to
  the pipeline's checkpoints); the codes of the evaluated split when present, else of ``val``.
* reconstruction: the tokenizer on the first ``recon_items`` items: PSNR, SSIM, codebook usage / perplexity,
  condition reconstruction (:mod:`iqvae.metrics.tokenizer_report`) and rFD = FD(reals, reconstructions).
* FD floor: FD of real vs real images of the split under the same extractor (:mod:`iqvae.evaluation.control`).
* Shapes world: palette accuracy, mask mIoU, mode coverage, scene accuracy / precision / recall of the samples;
  all but mode coverage of the C real images (the ceiling); ``fit`` names the ones that judge the condition
  (:attr:`iqvae.modalities.base.Modality.fit_metrics`: masks for spatial conditions, scene accuracy for text and
  audio).
* controllability, on any dataset: each sample's condition read back by the modality's judge (Canny for edges, a
  condition predictor trained on the train split for seg / layout / keypoints, scene accuracy for text and audio on
  the Shapes world) against its input condition, beside the same judge's score on the C real images (the oracle);
  :mod:`iqvae.evaluation.control`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ..errors import IQVAEError
from .control import unavailable

KID_SUBSETS = 100


def fd_kid(real: torch.Tensor, fake: torch.Tensor, extractor: Any, seed: int = 0) -> tuple[dict, dict]:
    """FD and KD entries of ``real`` vs ``fake`` (``(N, 3, H, W)`` in [-1, 1]) under ``extractor``."""
    from ..metrics.fd import frechet_distance, kid, metric_name

    if real.shape[0] < 2 or fake.shape[0] < 2:
        why = f"FD needs at least 2 images per set (got {real.shape[0]} real, {fake.shape[0]} generated)"
        return unavailable(why), unavailable(why)
    fd = {"available": True, "name": metric_name(extractor), "value": frechet_distance(real, fake, extractor),
          "real": int(real.shape[0]), "fake": int(fake.shape[0])}
    size = min(1000, real.shape[0], fake.shape[0])
    mean, std = kid(real, fake, extractor, subset_size=size, subsets=KID_SUBSETS, seed=seed)
    kd = {"available": True, "name": metric_name(extractor, kernel=True), "mean": mean, "std": std,
          "subset_size": size, "subsets": KID_SUBSETS}
    return fd, kd


def swd_entry(real: torch.Tensor, samples: torch.Tensor, seed: int = 0) -> dict[str, Any]:
    """SWD of the reference reals vs the samples ``(C, N, 3, H, W)`` taken sample-major (see the module docstring)."""
    from ..metrics.swd import MIN_RESOLUTION, sliced_wasserstein_distance

    if real.shape[-1] < MIN_RESOLUTION:
        return unavailable(f"SWD needs images of at least {MIN_RESOLUTION} px; these are {real.shape[-1]} px")
    fake = samples.transpose(0, 1).reshape(-1, *samples.shape[2:])
    n = min(real.shape[0], fake.shape[0])
    r = sliced_wasserstein_distance(real[:n], fake[:n], seed=seed)
    return {"available": True, "name": "SWDx1e3", "mean": r["mean"], "per_level": r["per_level"],
            "resolutions": r["resolutions"], "images": n, "protocol": r["protocol"]}


def find_codes(model_dir: Path, codes: str | None, transformer: Any) -> Path | None:
    if codes:
        p = Path(codes)
        if not (p / "codes.json").is_file():
            raise IQVAEError(f"--codes '{p}' holds no token codes (codes.json is missing)")
        return p
    cands = [model_dir / "codes"]
    recorded = (transformer.codes_meta or {}).get("dir")  # the codes folder it was trained on
    if recorded:
        cands.append(Path(recorded))
    return next((c for c in cands if (c / "codes.json").is_file()), None)


def nll_entry(transformer: Any, codes_dir: Path | None, split: str, batch_size: int = 64) -> dict[str, Any]:
    from ..codes import load_codes, read_codes_meta
    from ..metrics.nll import validation_nll

    if codes_dir is None:
        return unavailable("no token codes: pass --codes DIR (written by `iqvae encode`) or keep a codes/ folder "
                           "next to the pipeline's checkpoints")
    meta = read_codes_meta(codes_dir)
    c = transformer.config
    for key, want in (("n_image", c.n_image), ("n_cond", c.n_cond), ("image_vocab", c.image_vocab),
                      ("cond_vocab", c.cond_vocab)):
        if int(meta.get(key, -1)) != int(want):
            raise IQVAEError(f"--codes '{codes_dir}': {key} is {meta.get(key)} but the transformer expects {want}; "
                             "these codes come from another tokenizer")
    use = split if split in meta["splits"] else "val"
    if use not in meta["splits"]:
        return unavailable(f"'{codes_dir}' has no codes for split '{split}' or 'val'")
    cs = load_codes(codes_dir, use)
    dev = next(transformer.parameters()).device
    bits = validation_nll(transformer, cs.cond, cs.image, batch_size=batch_size, device=dev)
    transformer.eval()
    return {"available": True, "bits_per_token": bits, "split": use, "sequences": len(cs), "codes": str(codes_dir)}


@torch.no_grad()
def reconstructions(tokenizer: Any, dataset: Any, cond_name: str, n: int, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(reals, reconstructions) of the first ``n`` items."""
    from ..data.record import collate

    dev = next(tokenizer.parameters()).device
    reals, recs = [], []
    for i in range(0, n, batch_size):
        b = collate([dataset[j] for j in range(i, min(n, i + batch_size))])
        out = tokenizer(b.image.to(dev), b.cond[cond_name].to(dev))
        reals.append(b.image)
        recs.append(out.recon.clamp(-1, 1).float().cpu())
    return torch.cat(reals), torch.cat(recs)


def evaluate_model(model_dir: str | Path, *, split: str = "test", conditions: int = 16, samples: int = 8,
                   seed: int = 0, top_k: int | None = 100, top_p: float | None = None, temperature: float = 1.0,
                   extractor: Any = None, extractor_source: str = "", lpips: Any = None, lpips_reason: str = "",
                   codes: str | None = None, real_images: int | None = None, recon_items: int = 256,
                   progress: bool = False, guidance_scale: float = 1.0, predictor: Any = None,
                   predictor_source: str = "", min_p: float | None = None) -> dict[str, Any]:
    """Every metric of the pipeline in ``model_dir``; see the module docstring.  ``extractor`` None: no FD.
    ``guidance_scale``: classifier-free guidance of the sampler (1: none); ``min_p``: its min-p filter (None: off).
    ``predictor``: the condition predictor that judges controllability
    (:func:`iqvae.train.predictor.resolve_predictor`); None: the conditions it judges are reported unavailable with
    ``predictor_source`` as the reason."""
    from ..data.config import build_dataset
    from ..machine import machine_info
    from ..metrics.tokenizer_report import reconstruction_metrics
    from ..modalities import get_modality
    from ..pipeline import IQVAEPipeline
    from .control import control_entry, fd_floor
    from .samples import draw_samples, real_shapes_metrics, shapes_metrics

    if conditions < 1 or samples < 1:
        raise IQVAEError(f"--conditions and --samples must be at least 1; got {conditions} and {samples}")
    if recon_items < 1:
        raise IQVAEError(f"--recon-items must be at least 1; got {recon_items}")
    model_dir = Path(model_dir)
    pipe = IQVAEPipeline.from_pretrained(model_dir)
    data = pipe.tokenizer.data_config
    if data is None:
        raise IQVAEError(f"the tokenizer in '{model_dir}' records no data config; cannot find its dataset")
    cond = data.cond
    ds = build_dataset(data, split)
    t0 = time.perf_counter()
    s = draw_samples(pipe, ds, cond, num_conditions=conditions, samples_per_condition=samples, seed=seed,
                     top_k=top_k, top_p=top_p, temperature=temperature, progress=progress,
                     guidance_scale=guidance_scale, min_p=min_p)
    sample_seconds = time.perf_counter() - t0
    c, n = s.images.shape[:2]
    m = min(len(ds), max(c, real_images or c))
    real = s.real if m == c else torch.stack([ds[i].image for i in range(m)])
    fake = s.images.reshape(c * n, *s.images.shape[2:])
    out: dict[str, Any] = {}
    if extractor is not None:
        out["fd"], out["kid"] = fd_kid(real, fake, extractor, seed)
        if out["fd"].get("available"):
            out["fd"]["floor"] = fd_floor(ds, real, fake.shape[0], extractor)
    else:
        out["fd"], out["kid"] = unavailable(extractor_source), unavailable(extractor_source)
    out["swd"] = swd_entry(real, s.images, seed)
    if lpips is None:
        out["lpips_diversity"] = unavailable(lpips_reason or "no LPIPS weights given (--lpips-backbone and --lpips-lin)")
    elif n < 2:
        out["lpips_diversity"] = unavailable("LPIPS diversity needs at least 2 samples per condition")
    else:
        from ..metrics.diversity import lpips_diversity

        d = lpips_diversity(s.images, lpips, pairs="all", seed=seed)
        out["lpips_diversity"] = {"available": True, "name": getattr(lpips, "label", "LPIPS"),
                                  "calibrated": bool(getattr(lpips, "is_calibrated", False)), **d}
    out["nll"] = nll_entry(pipe.transformer, find_codes(model_dir, codes, pipe.transformer), split)
    k = min(recon_items, len(ds))
    rec = reconstruction_metrics(pipe.tokenizer, ds, cond, limit=k)
    if extractor is not None:
        r_real, r_rec = reconstructions(pipe.tokenizer, ds, cond, k)
        rfd, _ = fd_kid(r_real, r_rec, extractor, seed)
        if rfd.get("available"):
            rfd["name"] = "r" + rfd["name"]
        rec["rfd"] = rfd
    else:
        rec["rfd"] = unavailable(extractor_source)
    out["reconstruction"] = {"available": True, **rec}
    if data.dataset == "shapes":
        seg = [ds[i].cond["seg"] for i in s.indices]
        out["shapes"] = {"available": True, "samples": shapes_metrics(s, seg), "real": real_shapes_metrics(ds, c),
                         "fit": list(get_modality(cond).fit_metrics)}
    else:
        out["shapes"] = unavailable(f"exact metrics exist only for the Shapes world, not '{data.dataset}'")
    out["control"] = control_entry(cond, s, predictor=predictor, predictor_reason=predictor_source,
                                   shapes=out["shapes"], dataset=data.dataset)
    protocol = {
        "model": str(model_dir), "dataset": data.dataset, "split": split, "condition": cond,
        "resolution": pipe.resolution, "conditions": c, "samples_per_condition": n, "seed": seed,
        "top_k": top_k, "top_p": top_p, "min_p": min_p, "temperature": temperature,
        "guidance_scale": guidance_scale,
        "reference_reals": m,
        "extractor": getattr(extractor, "name", None), "extractor_source": extractor_source,
        "predictor": getattr(predictor, "name", None), "predictor_source": predictor_source,
        "lpips": getattr(lpips, "label", None), "lpips_calibrated": bool(getattr(lpips, "is_calibrated", False)),
        "recon_items": k, "sample_seconds": sample_seconds, "machine": machine_info(),
    }
    return {"protocol": protocol, "metrics": out}
