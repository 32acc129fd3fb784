"""Probes of ``iqvae bench ablation``: what a system's regulariser and training mode did, beyond its samples.

* **Latent probe** (stage 1, the first ``probe_items`` test scenes): the sliced Gromov-Wasserstein value between the
  condition latents and the image latents of each scene (Eq. 2, the quantity ``iq-vr`` minimises), before
  quantization (``sgw_pre``: what ``sgw_on=pre`` regularises) and after (``sgw_post``), on ``probe_projections``
  fixed directions (seeded: the same for every system).  GW compares distances, so it shrinks with the latents' scale
  (degree 4): ``rms_cond`` / ``rms_img`` are the latents' root-mean-square distance to their scene's centroid, and
  ``sgw_pre_scaled`` is the value after dividing each scene's latent sets by those, i.e. the structural mismatch that
  shrinking cannot buy.  Code usage and perplexity come from the evaluation's reconstruction report.
* **Exposure probe** (stage 2, the first ``probe_items`` validation sequences): the NLL of the gold image tokens
  under teacher-forced prefixes (``nll_tf``) and under prefixes in which every token is the model's own sample from
  its teacher-forced prediction at that position (``nll_sampled``; one seeded categorical draw per position, no
  top-k); ``exposure_gap`` is their difference in bits per token and ``prefix_error`` the share of prefix tokens the
  draw changed.  It measures how much the model's predictions suffer from its own mistakes in the prefix, which
  Gumbel sampling (Sec. 3.3) trains against.
* **Gumbel share** (the transformer's ``transformer.csv``): on the steps that applied Gumbel sampling, the share of
  image positions that were candidates (R > threshold) and that were replaced, over the run and in the last logged
  window.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

PROBE_SEED = 1234  # directions of the latent probe and draws of the exposure probe


@torch.no_grad()
def latent_probe(tokenizer: Any, dataset: Any, cond_name: str, n: int, projections: int,
                 batch_size: int = 64) -> dict[str, float]:
    """Sliced GW between condition and image latents, per scene, averaged over the first ``n`` scenes."""
    from ..data.record import collate
    from ..models.sgw import random_projections, sliced_gromov_wasserstein

    tokenizer.eval()
    d = tokenizer.config.embed_dim
    dirs = random_projections(d, projections, generator=torch.Generator().manual_seed(PROBE_SEED))
    sums = {"sgw_pre": 0.0, "sgw_post": 0.0, "sgw_pre_scaled": 0.0, "rms_cond": 0.0, "rms_img": 0.0}
    n = min(n, len(dataset))
    for i in range(0, n, batch_size):
        b = collate([dataset[j] for j in range(i, min(n, i + batch_size))])
        enc = tokenizer.encode(b.image, b.cond[cond_name])
        sets = {k: getattr(enc, k).flatten(2).transpose(1, 2).float() for k in ("z_cond", "z_img", "zq_cond", "zq_img")}
        m = sets["z_cond"].shape[0]
        for pre, (c, x) in (("sgw_pre", ("z_cond", "z_img")), ("sgw_post", ("zq_cond", "zq_img"))):
            # one call per scene: the mean over scenes is then a plain sum, whatever the batch split
            sums[pre] += sum(float(sliced_gromov_wasserstein(sets[c][k], sets[x][k], projections=dirs)) for k in range(m))
        rc, rx = _rms(sets["z_cond"]), _rms(sets["z_img"])
        sums["rms_cond"] += float(rc.sum())
        sums["rms_img"] += float(rx.sum())
        zc = sets["z_cond"] / rc.clamp_min(1e-12)[:, None, None]
        zx = sets["z_img"] / rx.clamp_min(1e-12)[:, None, None]
        sums["sgw_pre_scaled"] += sum(float(sliced_gromov_wasserstein(zc[k], zx[k], projections=dirs)) for k in range(m))
    return {**{k: v / n for k, v in sums.items()}, "probe_scenes": n}


def _rms(z: torch.Tensor) -> torch.Tensor:
    """Per scene (B, n, d): root-mean-square distance of the n vectors to their centroid, (B,)."""
    return (z - z.mean(dim=1, keepdim=True)).pow(2).sum(-1).mean(-1).sqrt()


@torch.no_grad()
def exposure_probe(transformer: Any, cond: torch.Tensor, image: torch.Tensor, *, batch_size: int = 32,
                   seed: int = PROBE_SEED) -> dict[str, float]:
    """NLL (bits per token) of ``image`` under teacher-forced vs model-sampled prefixes; see the module docstring."""
    transformer.eval()
    gen = torch.Generator().manual_seed(seed)
    tf = sampled = changed = 0.0
    count = 0
    for i in range(0, image.shape[0], batch_size):
        c, x = cond[i:i + batch_size], image[i:i + batch_size]
        logits = transformer(c, x).float()
        tf += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x.reshape(-1), reduction="sum").item()
        u = torch.rand(logits.shape, generator=gen).clamp(1e-12, 1 - 1e-7)
        draw = (logits - torch.log(-torch.log(u))).argmax(-1)  # Gumbel-max: a sample of softmax(logits)
        changed += float((draw != x).sum())
        logits2 = transformer(c, draw).float()
        sampled += F.cross_entropy(logits2.reshape(-1, logits2.shape[-1]), x.reshape(-1), reduction="sum").item()
        count += x.numel()
    bits = 1.0 / max(count, 1) / math.log(2)
    return {"nll_tf": tf * bits, "nll_sampled": sampled * bits, "exposure_gap": (sampled - tf) * bits,
            "prefix_error": changed / max(count, 1), "probe_sequences": int(image.shape[0])}


def gumbel_share(csv_path: Path) -> dict[str, float | None]:
    """Candidate and replaced shares on Gumbel steps; None without any.  A ``transformer.csv`` row holds, for its
    window of steps, ``gs_applied`` = the share of the window's steps that applied Gumbel sampling and ``gs_replaced``
    / ``gs_candidates`` = their means over those steps only (the trainer averages Gumbel statistics over the steps
    that apply it), so each row weighs by its number of Gumbel steps."""
    none = {"gs_replaced": None, "gs_candidates": None, "gs_replaced_last": None}
    if not csv_path.is_file():
        return none
    rows = list(csv.DictReader(csv_path.open()))
    if not rows or "gs_applied" not in rows[0]:
        return none
    applied = replaced = cand = 0.0
    last: float | None = None
    prev = -1
    for r in rows:
        step = int(float(r["step"]))
        w = step - prev  # steps in this row's window
        prev = step
        a = float(r["gs_applied"]) * w  # Gumbel steps in the window
        if a > 0:
            applied += a
            replaced += float(r["gs_replaced"]) * a
            cand += float(r["gs_candidates"]) * a
            last = float(r["gs_replaced"])
    if applied == 0:
        return none
    return {"gs_replaced": replaced / applied, "gs_candidates": cand / applied, "gs_replaced_last": last}


def probe_run(out: Path, pipe: Path, codes: Path, gpt_run: Path, settings: Any) -> dict[str, Any]:
    """All probes of one system and seed: the model probes cached in ``out/probes.json`` (recomputed when the
    protocol changed), the Gumbel shares read afresh from the run's log."""
    from ..codes import load_codes
    from ..data.config import build_dataset
    from ..pipeline import IQVAEPipeline

    want = {"items": settings.probe_items, "projections": settings.probe_projections, "seed": PROBE_SEED}
    f = out / "probes.json"
    if f.is_file():
        res = json.loads(f.read_text())
        if res.get("protocol") == want:
            return {**{k: v for k, v in res["values"].items() if not k.startswith("gs_")},
                    **gumbel_share(gpt_run / "transformer.csv")}
    p = IQVAEPipeline.from_pretrained(pipe)
    data = p.tokenizer.data_config
    values: dict[str, Any] = latent_probe(p.tokenizer, build_dataset(data, "test"), data.cond, settings.probe_items,
                                          settings.probe_projections)
    val = load_codes(codes, "val")
    k = min(settings.probe_items, len(val))
    values.update(exposure_probe(p.transformer, val.cond[:k], val.image[:k]))
    out.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps({"protocol": want, "values": values}, indent=1))
    return {**values, **gumbel_share(gpt_run / "transformer.csv")}
