"""The sliced-GW regularizer's share of a tokenizer training step, measured side by side.

Two identical tokenizers (same weights, same batch) differ only in the variant: ``iq-vr`` computes the sliced-GW
term, ``iq-none`` does not.  Their training steps (forward, Eq. 3 loss, backward, AdamW) are timed interleaved, so
machine noise hits both alike; the regularizer's forward + backward is also timed on its own.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time

import torch


def _step_fn(model, loss_fn, opt, batch, cond_name):
    def step():
        out = model(batch.image, batch.cond[cond_name])
        loss, _ = loss_fn.generator_loss(out, batch.image, 0, model.last_layer)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def bench_regularizer_share(preset: str = "small", cond: str = "seg", steps: int = 10, batch: int | None = None) -> str:
    from ..config import build_config
    from ..data.config import build_dataset
    from ..data.record import collate
    from ..models.sgw import sliced_gromov_wasserstein
    from ..losses.vqgan import VQGANLoss
    from ..models.tokenizer import IQVAE
    from ..train.tokenizer import TokenizerRunConfig

    cfg = build_config(TokenizerRunConfig, "tokenizer", preset=preset, overrides=[f"data.cond={cond}"])
    bs = batch or cfg.train.batch_size
    ds = build_dataset(dataclasses.replace(cfg.data, train_size=max(bs, 8)), "train")
    b = collate([ds[i] for i in range(bs)])
    spec = ds.condition_spec(cond)
    torch.manual_seed(0)
    vr = IQVAE(dataclasses.replace(cfg.model, variant="iq-vr"), spec)
    none = IQVAE(dataclasses.replace(cfg.model, variant="iq-none"), spec)
    none.load_state_dict(copy.deepcopy(vr.state_dict()))
    loss_fn = VQGANLoss(cfg.loss, None)
    runs = {}
    for name, model in (("iq-vr", vr), ("iq-none", none)):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        runs[name] = _step_fn(model, loss_fn, opt, b, cond)
        runs[name]()  # warm-up
    times = {k: [] for k in runs}
    for _ in range(steps):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    # the regularizer alone, on latents of the same shape
    with torch.no_grad():
        enc = vr.encode(b.image, b.cond[cond])
    zc = enc.z_cond.flatten(2).transpose(1, 2).detach().requires_grad_(True)
    zx = enc.z_img.flatten(2).transpose(1, 2).detach().requires_grad_(True)
    alone = []
    for _ in range(steps):
        t0 = time.perf_counter()
        sliced_gromov_wasserstein(zc, zx, num_projections=cfg.model.sgw_projections).backward()
        alone.append(time.perf_counter() - t0)
    t_vr, t_none, t_sgw = (statistics.median(times["iq-vr"]), statistics.median(times["iq-none"]),
                           statistics.median(alone))
    n = zc.shape[1]
    return "\n".join([
        f"preset {preset}, condition {cond}, batch {bs}, {n} latent positions, dim {zc.shape[2]}, "
        f"L = {cfg.model.sgw_projections} projections; median of {steps} interleaved steps",
        f"  training step, iq-vr (with sliced GW):   {t_vr * 1e3:9.2f} ms",
        f"  training step, iq-none (without):        {t_none * 1e3:9.2f} ms",
        f"  sliced GW forward+backward alone:        {t_sgw * 1e3:9.2f} ms",
        f"  share of the step (alone / iq-vr step):  {t_sgw / t_vr:9.2%}",
        f"  step-time ratio iq-vr / iq-none:         {t_vr / t_none:9.3f}",
    ])
