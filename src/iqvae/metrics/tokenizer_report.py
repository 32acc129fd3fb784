"""The tokenizer's reconstruction report: image fidelity, codebook health, condition reconstruction.

* PSNR / SSIM of reconstructions (``iqvae.metrics.recon``);
* usage (fraction of codes used at least once) and perplexity of both codebooks over the evaluated items;
* condition reconstruction through D_c: pixel accuracy and mIoU (seg), F1 at 0.5 (edge, layout), MSE (keypoints,
  audio), token accuracy on non-padding tokens (text); how well condition codes name a class
  (:func:`iqvae.metrics.recon.cond_code_class_purity`) against the condition's class map (seg) or, where the items
  carry one (the Shapes world, any condition), the scene's segmentation;
* on the Shapes world (when items carry object metadata): palette accuracy and mask adherence of reconstructions,
  and how well the image codes name object colours (:func:`iqvae.metrics.shapes.code_colour_purity`); and the
  object-level scene accuracy / precision / recall of reconstructions (:func:`iqvae.metrics.scene.scene_scores`),
  the ceiling of what a text or audio pipeline can score with this tokenizer (its reconstructions as samples),
  reported as ``recon_scene_accuracy`` / ``recon_scene_precision`` / ``recon_scene_recall``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.record import collate
from ..modalities import get_modality
from .recon import codebook_usage, cond_code_class_purity, psnr_per_image, ssim_per_image


def condition_scores(model: Any, preds: torch.Tensor, conds: torch.Tensor) -> dict[str, float]:
    """The condition-reconstruction metrics that fit the model's modality (its ``recon_scores``)."""
    return get_modality(model.cond_spec.modality).recon_scores(model.cond_spec, preds, conds)


@torch.no_grad()
def reconstruction_metrics(model: Any, dataset: Any, cond_name: str, *, device: Any = "cpu", batch_size: int = 64,
                           limit: int | None = 512) -> dict[str, Any]:
    model.eval()
    n = len(dataset) if limit is None else min(limit, len(dataset))
    psnrs, ssims, img_idx, cond_idx, preds, conds, recons, metas, segs = [], [], [], [], [], [], [], [], []
    seg_conds: list[torch.Tensor] = []  # the condition itself when it is a class map (code class purity)
    class_map = get_modality(model.cond_spec.modality).class_map
    for i in range(0, n, batch_size):
        batch = collate([dataset[j] for j in range(i, min(n, i + batch_size))])
        image, cond = batch.image.to(device), batch.cond[cond_name].to(device)
        out = model(image, cond)
        psnrs.append(psnr_per_image(out.recon.clamp(-1, 1), image).cpu())
        ssims.append(ssim_per_image(out.recon.clamp(-1, 1), image).cpu())
        img_idx.append(out.encoding.img_indices.cpu())
        cond_idx.append(out.encoding.cond_indices.cpu())
        if out.cond_out is not None:
            preds.append(model.condition_prediction(out.cond_out).cpu())
            conds.append(cond.cpu())
        recons.append(out.recon.clamp(-1, 1).cpu())
        if class_map:
            seg_conds.append(cond.cpu())
        metas.extend(batch.meta)
        if "seg" in batch.cond:  # the Shapes world also yields its class map for the exact metrics
            segs.append(batch.cond["seg"])
    report: dict[str, Any] = {
        "items": n,
        "psnr": float(torch.cat(psnrs).mean()),
        "ssim": float(torch.cat(ssims).mean()),
    }
    for name, idx, k in (("image", img_idx, model.num_image_codes), ("cond", cond_idx, model.num_cond_codes)):
        u = codebook_usage(torch.cat(idx), k)
        report[f"{name}_codebook_usage"] = float(u["fraction"])
        report[f"{name}_codebook_perplexity"] = float(u["perplexity"])
    if preds:
        report.update(condition_scores(model, torch.cat(preds), torch.cat(conds)))
    def first_level(maps: list[torch.Tensor]) -> torch.Tensor:
        m = torch.cat(maps)
        return m[..., 0] if m.ndim == 4 else m  # residual quantization: the first depth level

    if seg_conds or segs:  # the condition's own class map, else the scene's (Shapes: edge, keypoints, text, ...)
        report.update(cond_code_class_purity(first_level(cond_idx), torch.cat(seg_conds or segs)))
    if metas and "objects" in metas[0] and segs:
        from .shapes import code_colour_purity, mask_adherence, palette_accuracy

        rec = torch.cat(recons)
        report["palette_accuracy"] = float(palette_accuracy(rec, metas))
        seg = torch.cat(segs)
        report["mask_miou"] = float(mask_adherence(rec, seg))
        report["mask_miou_per_image"] = float(mask_adherence(rec, seg, "image"))
        report.update(code_colour_purity(first_level(img_idx), metas, rec.shape[-1]))
        from .scene import scene_scores

        report.update({f"recon_{k}": v for k, v in scene_scores(rec, metas).items()})
    return report
