"""Speed benchmarks for the transformer stage (run by hand; never timed in tests).

* :func:`bench_sampling`: tokens/s of the KV-cached sampler (:func:`iqvae.sampling.generate`) and of the cache-free
  reference (:func:`iqvae.sampling.generate_reference`), measured interleaved in one run, plus the cached sampler's
  share of the matmul bound: achieved ``2 * N_nonembedding`` FLOP/s (2 FLOPs per matmul parameter per token)
  divided by the measured FLOP/s of a square ``n_embd x n_embd`` matmul on the same device and dtype; its share of
  the weight-reading bound (every decode step reads all matmul weights once: ``bytes / measured read bandwidth``);
  and the *roofline ratio*, the speed-up both samplers would show at their bounds (the reference's
  ``sum_j 2 N B (n_cond + j)`` FLOPs at the matmul rate against the cached sampler's
  ``n_image * max(weight bytes / bandwidth, 2 N B / matmul rate)``).  At batch 1 this is about
  ``mean sequence length * bandwidth / (2 * matmul rate * bytes per weight)``, a property of the device, not of the
  sampler: a cached sampler cannot beat it without reading fewer weight bytes per token.
  With ``guidance_scale`` != 1 it also times classifier-free guided sampling (the conditional and the unconditional
  rows as one batch of 2B through the same cached sampler) interleaved with the unguided runs, and reports the
  guided tokens/s and the time ratio guided / unguided (goal: <= 1.6).
* :func:`bench_train`: training iterations/s of Gumbel sampling (applied every ``every`` steps) vs teacher forcing,
  interleaved step by step; the paper reports 2.8 vs 3.0 it/s (ratio 0.93) for every=4.

Models are randomly initialised; only speed is measured.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import torch

from ..models.gpt import GPT, GPTConfig
from ..sampling import generate, generate_reference
from ..train.gumbel import GumbelConfig, training_loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def matmul_flops(n: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, repeats: int = 5):
    """Measured FLOP/s of an ``n x n @ n x n`` matmul (2 n^3 FLOPs), best of ``repeats``."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)  # warm-up
    best = min(_timed(lambda: torch.matmul(a, b), device) for _ in range(repeats))
    return 2.0 * n**3 / best


def memory_bandwidth(device: torch.device | str = "cpu", mbytes: int = 256, repeats: int = 5) -> float:
    """Measured read bandwidth in bytes/s: ``x.sum()`` over a ``mbytes`` MiB float32 tensor, best of ``repeats``."""
    device = torch.device(device)
    x = torch.ones(mbytes * 2**20 // 4, device=device)
    x.sum()  # warm-up
    best = min(_timed(lambda: x.sum(), device) for _ in range(repeats))
    return x.numel() * 4 / best


def roofline_ratio(config: GPTConfig, n_matmul: int, batch: int, flops: float, bandwidth: float,
                   bytes_per_weight: int) -> float:
    """Speed-up of the cached sampler over the full-recompute reference when both run at their roofline bound
    (see the module docstring); attention FLOPs are left out (they only raise the reference's cost)."""
    m, n = config.n_image, config.n_cond
    ref = sum(2.0 * n_matmul * batch * (n + j) for j in range(m)) / flops
    step = max(n_matmul * bytes_per_weight / bandwidth, 2.0 * n_matmul * batch / flops)
    cached = 2.0 * n_matmul * batch * n / flops + m * step
    return ref / cached


def bench_sampling(
    config: GPTConfig,
    batch_sizes=(1, 32),
    n_tokens: int | None = None,
    device: torch.device | str = "cpu",
    repeats: int = 3,
    dtype: torch.dtype = torch.float32,
    reference: bool = True,
    top_k: int | None = 100,
    guidance_scale: float = 1.0,
) -> list[dict]:
    """Rows ``{batch, tokens, cached_tok_s, reference_tok_s, speedup, mm_share, bw_share, roofline}`` per batch size,
    with ``guided_tok_s`` and ``guidance_cost`` (unguided tok/s / guided tok/s: the time ratio) when
    ``guidance_scale`` != 1 (the model then gets a null condition, which the unguided runs never read).

    ``n_tokens`` image tokens are generated per sample (default ``config.n_image``; the model is built with
    ``n_image = n_tokens``).  Each repeat times the cached and the reference sampler back to back; medians are
    reported.  ``reference=False`` skips the O(n^2)-per-token reference path.
    """
    device = torch.device(device)
    if n_tokens is not None:
        config = dataclasses.replace(config, n_image=n_tokens)
    guided = guidance_scale != 1
    if guided and not config.null_cond:
        config = dataclasses.replace(config, cfg_dropout=0.1)
    model = GPT(config).to(device=device, dtype=dtype).eval()
    n_matmul = model.num_params(non_embedding=True)
    peak = matmul_flops(config.n_embd, device, dtype)
    bandwidth = memory_bandwidth(device)
    wbytes = torch.empty((), dtype=dtype).element_size()
    rows = []
    for B in batch_sizes:
        cond = torch.randint(0, config.cond_vocab, (B, config.n_cond), device=device)
        gen = torch.Generator(device=device).manual_seed(0)
        generate(model, cond, top_k=top_k, generator=gen)  # warm-up
        if guided:
            generate(model, cond, top_k=top_k, generator=gen, guidance_scale=guidance_scale)
        cached, ref, guide = [], [], []
        for _ in range(repeats):
            cached.append(_timed(lambda: generate(model, cond, top_k=top_k, generator=gen), device))
            if guided:
                guide.append(_timed(lambda: generate(model, cond, top_k=top_k, generator=gen,
                                                     guidance_scale=guidance_scale), device))
            if reference:
                ref.append(_timed(lambda: generate_reference(model, cond, top_k=top_k, generator=gen), device))
        n = B * config.n_image
        c_tok_s = n / statistics.median(cached)
        r_tok_s = n / statistics.median(ref) if ref else float("nan")
        rows.append(
            {
                "kind": "sampling",
                "batch": B,
                "tokens": config.n_image,
                "cached_tok_s": c_tok_s,
                "reference_tok_s": r_tok_s,
                "speedup": c_tok_s / r_tok_s if ref else float("nan"),
                "mm_share": 2.0 * n_matmul * c_tok_s / peak,
                "bw_share": n_matmul * wbytes * (c_tok_s / B) / bandwidth,  # one decode step per B tokens
                "roofline": roofline_ratio(config, n_matmul, B, peak, bandwidth, wbytes),
                "matmul_flops": peak,
                "bandwidth": bandwidth,
            }
        )
        if guided:
            g_tok_s = n / statistics.median(guide)
            rows[-1].update(guidance_scale=guidance_scale, guided_tok_s=g_tok_s, guidance_cost=c_tok_s / g_tok_s)
    return rows


def bench_train(
    config: GPTConfig,
    steps: int = 8,
    batch: int = 4,
    device: torch.device | str = "cpu",
    every: int = 4,
    gumbel: GumbelConfig | None = None,
    dtype: torch.dtype = torch.float32,
) -> list[dict]:
    """One row ``{teacher_it_s, gumbel_it_s, ratio}``: AdamW steps with teacher forcing vs Gumbel sampling.

    Steps interleave (teacher, Gumbel with the token fast path, Gumbel with straight-through embeddings, each at step s)
    so all see the same machine state; Gumbel sampling runs
    its two passes on steps with ``s % every == 0``.  Unless ``gumbel`` is given, threshold is -1 and max_rate 1
    with a constant schedule, so every position is replaced on Gumbel steps (worst case for the mixing cost).
    """
    device = torch.device(device)
    gcfg = gumbel or GumbelConfig(mode="gumbel", every=every, threshold=-1.0, schedule="constant", max_rate=1.0)
    tcfg = dataclasses.replace(gcfg, mode="teacher")
    cfgs = {"teacher": tcfg, "gumbel": gcfg, "gumbel_embed": gcfg}  # gumbel_embed: without the token fast path
    models = {}
    for name in cfgs:
        torch.manual_seed(0)
        m = GPT(config).to(device=device, dtype=dtype).train()
        models[name] = (m, m.configure_optimizer(1.5e-4))
    codebook = torch.randn(config.image_vocab, 256, device=device, dtype=dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    cond = torch.randint(0, config.cond_vocab, (batch, config.n_cond), device=device)
    image = torch.randint(0, config.image_vocab, (batch, config.n_image), device=device)

    def step_fn(name, s):
        model, optim = models[name]
        optim.zero_grad(set_to_none=True)
        fast = name != "gumbel_embed"  # gumbel_embed: straight-through embeddings over the whole vocabulary
        loss, _ = training_loss(model, cond, image, s, cfgs[name], codebook, gen, token_fast_path=fast)
        loss.backward()
        optim.step()

    for name in cfgs:  # warm-up, a Gumbel step for the two Gumbel variants
        step_fn(name, 0)
    times = dict.fromkeys(cfgs, 0.0)
    for s in range(steps):
        for name in cfgs:
            times[name] += _timed(lambda: step_fn(name, s), device)
    its = {name: steps / t for name, t in times.items()}
    return [
        {
            "kind": "train",
            "batch": batch,
            "steps": steps,
            "every": gcfg.every,
            "teacher_it_s": its["teacher"],
            "gumbel_it_s": its["gumbel"],
            "ratio": its["gumbel"] / its["teacher"],
            "gumbel_embed_it_s": its["gumbel_embed"],
            "embed_ratio": its["gumbel_embed"] / its["teacher"],
        }
    ]


def format_rows(rows: list[dict]) -> str:
    """Plain-text table of benchmark rows (sampling and/or training)."""
    lines = []
    samp = [r for r in rows if r.get("kind") == "sampling"]
    train = [r for r in rows if r.get("kind") == "train"]
    if samp:
        header = (f"{'batch':>5} {'tokens':>6} {'cached tok/s':>13} {'ref tok/s':>11} {'speedup':>8} {'mm share':>10}"
                  f" {'bw share':>9} {'roofline':>9}")
        lines.append(header)
        for r in samp:
            lines.append(
                f"{r['batch']:>5} {r['tokens']:>6} {r['cached_tok_s']:>13.1f} {r['reference_tok_s']:>11.1f} "
                f"{r['speedup']:>7.2f}x {100 * r['mm_share']:>9.3f}% {100 * r['bw_share']:>8.1f}% "
                f"{r['roofline']:>8.1f}x"
            )
        lines.append(f"(matmul bound: {samp[0]['matmul_flops'] / 1e9:.1f} GFLOP/s, square matmul at model width; "
                     f"read bandwidth {samp[0]['bandwidth'] / 1e9:.1f} GB/s; bw share: decode steps/s x matmul-weight "
                     "bytes / bandwidth; roofline: the speed-up if both samplers ran at their bound)")
        guided = [r for r in samp if "guided_tok_s" in r]
        if guided:
            lines.append(f"classifier-free guidance, scale {guided[0]['guidance_scale']:g} (conditional + "
                         "unconditional rows as one batch of 2B through the cached sampler), timed interleaved with "
                         "the unguided runs:")
            lines.append(f"{'batch':>5} {'tokens':>6} {'unguided tok/s':>15} {'guided tok/s':>13} {'time ratio':>11}")
            for r in guided:
                lines.append(f"{r['batch']:>5} {r['tokens']:>6} {r['cached_tok_s']:>15.1f} {r['guided_tok_s']:>13.1f} "
                             f"{r['guidance_cost']:>10.2f}x")
            lines.append("(time ratio: unguided tok/s / guided tok/s, the time guidance costs; goal <= 1.6x)")
    if train:
        lines.append(f"{'batch':>5} {'every':>5} {'teacher it/s':>13} {'gumbel it/s':>12} {'ratio':>6} "
                     f"{'embedding-path it/s':>20} {'ratio':>6}")
        for r in train:
            lines.append(
                f"{r['batch']:>5} {r['every']:>5} {r['teacher_it_s']:>13.2f} {r['gumbel_it_s']:>12.2f} "
                f"{r['ratio']:>6.3f} {r['gumbel_embed_it_s']:>20.2f} {r['embed_ratio']:>6.3f}"
            )
        lines.append("(gumbel: the token fast path, the default; embedding path: training_loss(token_fast_path=False), "
                     "straight-through embeddings over the vocabulary; paper, every=4: 2.8 vs 3.0 it/s, ratio 0.933)")
    return "\n".join(lines)
