"""``iqvae bench ablation``: the paper's Table 3 (plus sVQ and residual quantization) at equal compute, several seeds.

Every system trains with the same preset (``ablation-small`` / ``ablation-full``): same data, tokenizer size,
steps and batch, same transformer size, steps and batch; systems differ only in the options listed in
:data:`~iqvae.bench.ablation_runs.SYSTEMS`.  Rows 3 and 4 (``iq-vr`` and ``iq-vr+gs``) share the tokenizer of
each seed: only stage 2 differs.
Every system is then evaluated by :func:`iqvae.evaluation.evaluate.evaluate_model` on the same held-out test
conditions with the same sampler settings and the same feature extractor.

A sweep of latent grid sizes (``fig6_grids``, via the number of ``model.ch_mult`` levels) gives the NLL vs
reconstruction-error trade-off of the paper's Fig. 6.  ``--sweep-sgw`` (with ``--sweep-sgw-on``) trains, at seed 0,
``iq-vr`` with each λ1 (``loss.sgw_weight``) and ``model.sgw_on``, to find out why IQ(None) → IQ(VR) does or does not
hold.  Every evaluated run also gets the probes of :mod:`iqvae.bench.ablation_probes` (sliced GW between the
latents, exposure gap, Gumbel share).  Work groups run longest first, so the workers finish close together.

Work folder (``--work``; finished runs are reused, interrupted ones resume)::

    <work>/<budget>/tok/<tokenizer>-s<seed>/{tokenizer, codes, report.json, ...}
    <work>/<budget>/gpt/<system>-s<seed>/{transformer, report.json, ...}
    <work>/<budget>/pipe/<system>-s<seed>/          pipeline folders
    <work>/<budget>/eval/<system>-s<seed>/metrics.json

Overrides: ``args.set`` (a list of ``section.key=value``; sections ``tokenizer.``, ``transformer.``, ``ablation.``)
is applied on top of the preset, e.g. ``tokenizer.train.steps=3`` for a smoke run.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import apply_overrides, build_config, from_dict, load_preset, split_overrides, to_dict
from ..errors import IQVAEError
from ..machine import usable_cores
from ..stages import ensure_pipeline
from .ablation_runs import (OURS_SYSTEM, SYSTEMS, BenchSettings, Plan, System, fig6_points, parse_sweep, say,
                            sweep_systems, tokenizer_run, transformer_run)


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def evaluate_run(plan: Plan, name: str, seed: int, pipe: Path, codes: Path, extractor: Any, source: str,
                 lpips: Any, lpips_reason: str) -> dict[str, Any]:
    from ..evaluation.evaluate import evaluate_model
    from ..evaluation.results import write_results

    s = plan.settings
    out = plan.work / "eval" / f"{name}-s{seed}"
    want = {"conditions": s.conditions, "samples_per_condition": s.samples, "seed": s.eval_seed, "top_k": s.top_k,
            "temperature": s.temperature,
            "extractor": getattr(extractor, "name", None), "lpips": getattr(lpips, "label", None)}
    if (out / "metrics.json").is_file():
        res = _read(out / "metrics.json")
        if all(res["protocol"].get(k) == v for k, v in want.items()):
            return res
    say(f"evaluating {name} seed {seed}")
    res = evaluate_model(pipe, split="test", conditions=s.conditions, samples=s.samples, seed=s.eval_seed,
                         top_k=s.top_k, temperature=s.temperature, extractor=extractor, extractor_source=source, lpips=lpips,
                         lpips_reason=lpips_reason, codes=str(codes), real_images=s.real_images,
                         recon_items=s.recon_items, progress=plan.progress)
    write_results(res, out)
    return res


def row_numbers(res: dict[str, Any], tok_run: Path, gpt_run: Path) -> dict[str, float | None]:
    """The per-seed numbers of one system that the table reports."""
    m = res["metrics"]
    rec = m["reconstruction"]

    def get(entry: dict, key: str) -> float | None:
        return float(entry[key]) if entry.get("available") else None

    shapes = m["shapes"]["samples"] if m["shapes"].get("available") else {}
    tok_s = _read(tok_run / "report.json").get("train_seconds", float("nan"))
    gpt_s = _read(gpt_run / "report.json").get("train_seconds", float("nan"))
    return {
        "fd": get(m["fd"], "value"), "kid": get(m["kid"], "mean"), "swd": get(m["swd"], "mean"),
        "lpips_diversity": get(m["lpips_diversity"], "mean"), "nll_bits": get(m["nll"], "bits_per_token"),
        "palette_accuracy": shapes.get("palette_accuracy"), "mask_miou": shapes.get("mask_miou"),
        "mode_coverage": shapes.get("mode_coverage"), "recon_psnr": rec["psnr"], "recon_ssim": rec["ssim"],
        "img_usage": rec.get("image_codebook_usage"), "cond_usage": rec.get("cond_codebook_usage"),
        "img_perplexity": rec.get("image_codebook_perplexity"), "cond_perplexity": rec.get("cond_codebook_perplexity"),
        # how well the image codes name colours (the samples' ceiling and the GPT's task): the reconstructions'
        # palette accuracy, the share of object cells whose code's majority colour is theirs, codes per colour
        "recon_palette": rec.get("palette_accuracy"), "code_colour_purity": rec.get("code_colour_purity"),
        "codes_per_colour": rec.get("codes_per_colour"),
        "tokenizer_seconds": float(tok_s), "transformer_seconds": float(gpt_s),
        "train_seconds": float(tok_s) + float(gpt_s),
    }


def run_ablation_bench(args: argparse.Namespace) -> int:
    from ..evaluation.commands import build_lpips_from_args
    from ..machine import machine_info
    from ..metrics.extractor import resolve_extractor
    from ..metrics.fd import metric_name
    from ..train.tokenizer import TokenizerRunConfig
    from ..train.transformer import TransformerRunConfig
    from .ablation_report import write_outputs

    started = time.perf_counter()
    if args.world != "shapes":
        raise IQVAEError(f"--world must be 'shapes' (the only world with exact metrics and a built-in extractor); "
                         f"got {args.world!r}")
    if args.seeds < 1:
        raise IQVAEError(f"--seeds must be at least 1; got {args.seeds}")
    names = list(SYSTEMS) if not args.systems else [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [n for n in names if n not in SYSTEMS]
    if bad or not names:
        raise IQVAEError(f"--systems: unknown system {bad[0] if bad else '(none)'!r}; choose from {', '.join(SYSTEMS)}")
    sweep_w, sweep_on = parse_sweep(getattr(args, "sweep_sgw", None), getattr(args, "sweep_sgw_on", None))
    over = split_overrides(getattr(args, "set", None) or [], ("tokenizer", "transformer", "ablation"))
    preset = f"ablation-{args.budget}"
    tok_base = build_config(TokenizerRunConfig, "tokenizer", preset=preset, overrides=[f"data.cond={args.cond}",
                                                                                      *over["tokenizer"]])
    gpt_base = build_config(TransformerRunConfig, "transformer", preset=preset, overrides=over["transformer"])
    settings = apply_overrides(from_dict(BenchSettings, load_preset(preset).get("ablation") or {}), over["ablation"])
    progress = not args.no_progress
    plan = Plan(Path(args.work) / args.budget, tok_base, gpt_base, settings, progress)
    sweep = sweep_systems(sweep_w, sweep_on, tok_base)
    plan.systems.update(sweep)
    lpips, lpips_reason = build_lpips_from_args(_lpips_ns(args))
    extractor, source = resolve_extractor(data=tok_base.data, extractor=getattr(args, "extractor", None),
                                          inception_weights=getattr(args, "inception_weights", None),
                                          cache=getattr(args, "cache", None), steps=settings.extractor_steps, log=say)
    seeds = list(range(args.seeds))
    jobs = getattr(args, "jobs", None)
    if jobs is None:
        import torch

        jobs = 1 if torch.cuda.is_available() else min(2, usable_cores())
    if jobs < 1:
        raise IQVAEError(f"--jobs must be at least 1; got {jobs}")
    if jobs > 1:  # one torch thread per worker unless the preset / --set says otherwise for a single job
        threads = max(1, usable_cores() // jobs)
        plan.tok_base = apply_overrides(plan.tok_base, [f"train.threads={threads}"])
        plan.gpt_base = apply_overrides(plan.gpt_base, [f"train.threads={threads}"])
        plan.progress = False
    tasks = work_groups(names, seeds, plan, list(sweep))
    ev = (extractor, source, lpips, lpips_reason)
    done: list[tuple[str, int, dict[str, Any], Path]] = []
    if jobs == 1:
        for task in tasks:
            done.extend(run_group(plan, task, ev))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        say(f"{len(tasks)} work groups on {jobs} worker processes")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(run_group, plan, task, ev) for task in tasks]
            for fut in as_completed(futures):
                done.extend(fut.result())
    per_seed: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    pipes: dict[str, Path] = {}
    sweep_rows: dict[str, dict[str, Any]] = {}
    for name, seed, row, pipe in sorted(done, key=lambda d: (d[1], d[0])):
        if name in per_seed:
            per_seed[name].append({"seed": seed, **row})
            pipes.setdefault(name, pipe)
        if name in sweep and seed == 0:
            sweep_rows[name] = row
    per_seed = {n: sorted(per_seed[n], key=lambda r: r["seed"]) for n in names}
    pipes = {n: pipes[n] for n in names}
    fig6 = fig6_points(plan, seeds[:settings.fig6_seeds])
    sweep_out = [{"name": n, "label": plan.system(n).label, "sgw_weight": _tok_value(plan, n, "loss", "sgw_weight"),
                  "sgw_on": _tok_value(plan, n, "model", "sgw_on"), **sweep_rows[n]} for n in sweep]
    info = {"machine": machine_info(), "budget": args.budget, "preset": preset, "seeds": seeds, "systems": names,
            "jobs": jobs, "world": args.world, "cond": args.cond, "set": list(getattr(args, "set", None) or []),
            "settings": to_dict(settings), "tokenizer_config": to_dict(tok_base), "transformer_config": to_dict(gpt_base),
            "extractor": getattr(extractor, "name", None), "extractor_source": source,
            "fd_name": metric_name(extractor) if extractor is not None else None,
            "lpips": getattr(lpips, "label", None), "lpips_reason": lpips_reason,
            "shared_additions": _additions(tok_base, gpt_base),
            "ours_additions": _additions(*_configs(plan, plan.system(OURS_SYSTEM))),
            "sweep_sgw": sweep_w, "sweep_sgw_on": sweep_on,
            "wall_seconds": time.perf_counter() - started}
    info["invocations"] = record_invocation(plan.work, info)
    out = write_outputs(Path(args.out), info, per_seed, pipes, fig6, settings, sweep_out)
    print(f"wrote {', '.join(str(p) for p in out)}")
    return 0


def record_invocation(work: Path, info: dict[str, Any]) -> list[dict[str, Any]]:
    """Append this invocation to ``work/invocations.json`` and return every invocation on the work folder, oldest
    first, so the report can state the wall time of the command that trained the table's runs even when a later
    invocation (a sweep, a re-plot) reused them."""
    from ..train.common import write_json

    path = work / "invocations.json"
    entries = json.loads(path.read_text()) if path.is_file() else []
    entries.append({"wall_seconds": info["wall_seconds"], "systems": info["systems"], "seeds": len(info["seeds"]),
                    "jobs": info["jobs"], "sweep_sgw": info["sweep_sgw"], "sweep_sgw_on": info["sweep_sgw_on"],
                    "set": info["set"], "commit": info["machine"].get("commit"),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    write_json(path, entries)
    return entries


def _configs(plan: Plan, system: System) -> tuple[Any, Any]:
    return (apply_overrides(plan.tok_base, list(system.tok_overrides)),
            apply_overrides(plan.gpt_base, list(system.gpt_overrides)))


def _additions(tok: Any, gpt: Any) -> list[str]:
    from ..config import additions

    return [f"tokenizer.{a}" for a in additions(tok)] + [f"transformer.{a}" for a in additions(gpt)]


def _tok_value(plan: Plan, name: str, section: str, key: str) -> Any:
    return getattr(getattr(_configs(plan, plan.system(name))[0], section), key)


@dataclass(frozen=True)
class Task:
    """One unit of parallel work: a tokenizer (system key, seed, grid) and the transformers trained on its codes."""

    seed: int
    systems: tuple[str, ...]  # systems sharing the tokenizer (evaluated); empty for a Fig. 6-only tokenizer
    fig6_grid: int | None = None  # set for a Fig. 6 tokenizer of another latent size
    cost: float = 0.0  # relative estimate (tokenizer + transformer steps), for the longest-first order


def _system_cost(system: System, grid: int, gpt_base: Any) -> float:
    """Relative cost of one transformer: sequence length squared (attention and the measured RQ factor), x1.2 with
    Gumbel sampling (a second pass every 4 steps); 1.0 = a 16 x 16-token teacher-forced run."""
    opts = dict(o.split("=", 1) for o in system.tok_overrides)
    depth = int(opts.get("model.rq_depth", 1)) if opts.get("model.quantizer") == "rq" else 1
    mode = dict(o.split("=", 1) for o in system.gpt_overrides).get("gumbel.mode", gpt_base.gumbel.mode)
    return (grid * grid * (1 + depth) / 512) ** 2 * (1.2 if mode == "gumbel" else 1.0)


def work_groups(names: list[str], seeds: list[int], plan: Plan, sweep: list[str] | None = None) -> list[Task]:
    """One task per (seed, tokenizer key), plus the sweep's points at seed 0 and the extra Fig. 6 latent sizes;
    longest first (estimated cost; ties keep the order seed, system), so two workers end close together."""
    settings, base_grid, gpt = plan.settings, plan.tok_base.model.grid, plan.gpt_base
    sweep = [n for n in (sweep or []) if n not in names]
    tasks = []
    for seed in seeds:
        keys: dict[str, list[str]] = {}
        for n in names + (sweep if seed == 0 else []):
            keys.setdefault(plan.system(n).tokenizer, []).append(n)
        tasks += [Task(seed, tuple(group), None, 0.5 + sum(_system_cost(plan.system(n), base_grid, gpt) for n in group))
                  for group in keys.values()]
    for grid in settings.fig6_grids:
        if grid != base_grid:
            cost = 0.5 + _system_cost(plan.system(settings.fig6_system), grid, gpt)
            tasks += [Task(seed, (), grid, cost) for seed in seeds[: settings.fig6_seeds]]
    return sorted(tasks, key=lambda t: -t.cost)


def run_group(plan: Plan, task: Task, ev: tuple[Any, str, Any, str]) -> list[tuple[str, int, dict[str, Any], Path]]:
    """Train (or reuse) one tokenizer and its transformers, evaluate its systems; returns (name, seed, row, pipe)."""
    import torch

    threads = plan.tok_base.train.threads
    if threads:
        torch.set_num_threads(int(threads))
    extractor, source, lpips, lpips_reason = ev
    if task.fig6_grid is not None:
        system = plan.system(plan.settings.fig6_system)
        _, _, codes = tokenizer_run(plan, system, task.seed, task.fig6_grid)
        transformer_run(plan, plan.settings.fig6_system, system, task.seed, codes, tag=f"-g{task.fig6_grid}")
        return []
    out = []
    for name in task.systems:
        system = plan.system(name)
        tok_run, _, codes = tokenizer_run(plan, system, task.seed)
        gpt_run = transformer_run(plan, name, system, task.seed, codes)
        pipe = ensure_pipeline(tok_run, gpt_run, plan.work / "pipe" / f"{name}-s{task.seed}")
        res = evaluate_run(plan, name, task.seed, pipe, codes, extractor, source, lpips, lpips_reason)
        row = row_numbers(res, tok_run, gpt_run)
        if plan.settings.probe_items:
            from .ablation_probes import probe_run

            row.update(probe_run(plan.work / "eval" / f"{name}-s{task.seed}", pipe, codes, gpt_run, plan.settings))
        out.append((name, task.seed, row, pipe))
        say(f"done {name} seed {task.seed}")
    return out


def _lpips_ns(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(lpips_backbone=getattr(args, "lpips_backbone", None),
                              lpips_lin=getattr(args, "lpips_lin", None), lpips_net=getattr(args, "lpips_net", "vgg"))
