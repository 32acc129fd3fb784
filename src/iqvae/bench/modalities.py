"""``iqvae bench modalities``: issue 14's quality bar per condition modality on the Shapes world.

For each condition (``--conds``, default all six) the preset ``<prefix>-<cond>`` (``quality-seg``, ...) is trained end
to end (tokenizer, token codes, transformer) and its pipeline is evaluated by
:func:`iqvae.evaluation.evaluate.evaluate_model` (the code of ``iqvae evaluate``) on the first ``quality.conditions``
test conditions x ``quality.samples`` samples at the preset's ``quality.temperature`` and ``quality.cfg_scale``; the
conditions whose preset lists a ``quality.guidance_sweep`` are evaluated again at each of its guidance scales (the
fidelity-diversity curve).  The bars are :data:`QUALITY_BARS` (their one home).

Work is split by condition: ``--jobs N`` workers (spawned processes, cores / N torch threads each; default 2 on a
CPU-only machine, where two one-thread workers do more than one two-thread run) each take a whole condition, the
slowest first (:func:`schedule`).  The training wall time of each condition (tokenizer + codes + transformer) is
measured in its worker.

Work folder (``--runs-dir``; with ``--resume`` finished stages and evaluations are reused, an interrupted stage
resumes from its last checkpoint)::

    <runs>/<cond>/{stage1, codes, stage2}            the tokenizer run, the token codes, the transformer run
    <runs>/<cond>/{tokenizer, transformer}           the pipeline (``iqvae sample --model <runs>/<cond>``)
    <runs>/<cond>/timings.json                       wall seconds of each training stage
    <runs>/<cond>/eval-T<t>-s<s>[-p<min_p>]/metrics.json  ``iqvae evaluate``'s files, one per (T, scale, min-p)
    <runs>/<cond>/samples.png                        the sample grid

Outputs (``--out``): modalities.md / .json, modalities_<cond>.png, guidance.png (:mod:`.modalities_report`).
Overrides: ``--set SECTION.KEY=VALUE`` with sections ``tokenizer.``, ``transformer.`` and ``quality.``, applied to
every condition's preset (tests shrink the runs this way).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import apply_overrides, build_config, split_overrides
from ..errors import IQVAEError
from ..machine import usable_cores
from .quality import QUALITY_BARS, QualitySettings, grid_rows, quality_settings

_HINT = "pass another --runs-dir or delete the folder"



@dataclass
class ModalityPlan:
    """What one worker does for one condition (picklable: it crosses to a spawned worker)."""

    cond: str
    preset: str
    tok: Any  # TokenizerRunConfig
    gpt: Any  # TransformerRunConfig (its codes are set by the worker)
    quality: QualitySettings
    run: Path
    threads: int
    progress: bool


def say(msg: str) -> None:
    print(f"[modalities] {msg}", flush=True)


def parse_conds(text: str | None) -> list[str]:
    """``--conds``: comma-separated condition names (default: all, in the bar table's order)."""
    if text is None:
        return list(QUALITY_BARS)
    conds = [c.strip() for c in text.split(",") if c.strip()]
    for c in conds:
        if c not in QUALITY_BARS:
            raise IQVAEError(f"--conds: unknown condition '{c}'; choose from {', '.join(QUALITY_BARS)}")
    if not conds:
        raise IQVAEError(f"--conds names no condition; choose from {', '.join(QUALITY_BARS)}")
    if len(set(conds)) != len(conds):
        raise IQVAEError(f"--conds names a condition twice: {text!r}")
    return conds


def make_plan(cond: str, prefix: str, over: dict[str, list[str]], runs: Path, threads: int,
              progress: bool) -> ModalityPlan:
    """Every setting of one condition, checked before any work (configs, quality section, guidance)."""
    from ..train.tokenizer import TokenizerRunConfig
    from ..train.transformer import TransformerRunConfig

    preset = f"{prefix}-{cond}"
    thr = [f"train.threads={threads}"]  # cores / workers, unless --set names a stage's train.threads (it wins)
    tok = build_config(TokenizerRunConfig, "tokenizer", preset=preset,
                       overrides=[f"data.cond={cond}", *thr, *over["tokenizer"]])
    if tok.data.dataset != "shapes":
        raise IQVAEError(f"preset '{preset}': the modalities bench needs the Shapes world (its exact metrics); "
                         f"got data.dataset={tok.data.dataset!r}")
    gpt = build_config(TransformerRunConfig, "transformer", preset=preset, overrides=[*thr, *over["transformer"]])
    q = quality_settings(preset, over["quality"])
    guided = [s for s in q.scales() if s != 1]
    if guided and not gpt.model.cfg_dropout > 0:
        raise IQVAEError(f"preset '{preset}': quality.cfg_scale / quality.guidance_sweep ask for guidance scale "
                         f"{guided[0]:g}, which needs transformer.model.cfg_dropout > 0 (a null condition)")
    return ModalityPlan(cond, preset, tok, gpt, q, runs / cond, threads, progress)


# Costs on the idle 2-core machine, from the `small` seg run of docs/performance.md (tokenizer 1000 x 16 samples of
# 32 px in 283 s; transformer 900 x 16 sequences of 512 tokens, 4 x 128, in about 800 s; `iqvae evaluate` of 64 x 8
# samples of 256 image tokens in 30 s; guidance: about 1.7 x the unguided sampling time): only used to order the work.
_TOK_S_PER_PIXEL_SAMPLE = 283 / (1000 * 16 * 32 * 32)
_GPT_S_PER_TOKEN_SAMPLE = 800 / (900 * 16 * 512 * 4 * 128)
_SAMPLE_S_PER_TOKEN = 30 / (64 * 8 * 256 * 4 * 128)
_GUIDED = 1.7


def estimated_seconds(plan: ModalityPlan, previous: dict[str, Any]) -> float:
    """The condition's training time measured before (``previous``: an earlier modalities.json), else a proxy from
    its steps, batch and sizes; plus a proxy of its evaluations (one per guidance scale)."""
    t, g, m, gm = plan.tok.train, plan.gpt.train, plan.tok.model, plan.gpt.model
    grid = m.resolution // 2 ** (len(m.ch_mult) - 1)
    n_image = grid * grid * (m.rq_depth if m.quantizer == "rq" else 1)
    q = plan.quality
    evals = sum(_GUIDED if s != 1 else 1.0 for s in q.scales())
    sampling = evals * q.conditions * q.samples * n_image * gm.n_layer * gm.n_embd * _SAMPLE_S_PER_TOKEN
    known = (previous.get(plan.cond) or {}).get("train_seconds")
    if isinstance(known, (int, float)) and known > 0:
        return float(known) + sampling
    return (t.steps * t.batch_size * m.resolution ** 2 * _TOK_S_PER_PIXEL_SAMPLE
            + g.steps * g.batch_size * (grid * grid + n_image) * gm.n_layer * gm.n_embd * _GPT_S_PER_TOKEN_SAMPLE
            + sampling)


def schedule(plans: list[ModalityPlan], previous: dict[str, Any]) -> list[ModalityPlan]:
    """Longest first (the order workers take them in): the slowest conditions start at once, the short ones fill
    the gaps at the end (ties keep the given order)."""
    return sorted(plans, key=lambda p: -estimated_seconds(p, previous))


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def eval_dir(run: Path, temperature: float, scale: float, min_p: float | None = None) -> Path:
    return run / (f"eval-T{temperature:g}-s{scale:g}" + (f"-p{min_p:g}" if min_p else ""))


def run_modality(plan: ModalityPlan) -> dict[str, Any]:
    """Train (or reuse / resume) one condition's pipeline, evaluate it at every guidance scale and draw its grid.
    Returns the paths and timings :mod:`.modalities_report` reads."""
    import torch

    from ..pipeline import copy_pipeline
    from ..stages import (check_same_config, ensure_codes, ensure_pipeline, ensure_tokenizer, ensure_transformer,
                          stage_done)
    from ..train.common import write_json

    torch.set_num_threads(plan.threads)
    c, d, q = plan.cond, plan.run, plan.quality
    d.mkdir(parents=True, exist_ok=True)
    s1, codes, s2 = d / "stage1", d / "codes", d / "stage2"
    gpt = apply_overrides(plan.gpt, [f"codes={codes.resolve()}"])
    check_same_config(s1, plan.tok, _HINT)
    check_same_config(s2, gpt, _HINT, own_paths=("codes",))  # always d / "codes": a moved folder is reusable
    timings: dict[str, Any] = _read_json(d / "timings.json")
    log = lambda msg: say(f"{c}: {msg}")  # noqa: E731
    tok = _resume_threads(s1, "tokenizer", plan.tok, log)
    gpt = _resume_threads(s2, "transformer", gpt, log)
    trained = False

    def timed(stage: str, done: bool, fn) -> None:
        nonlocal trained
        if done:
            return
        ckpt = (s1 if stage == "tokenizer" else s2) / "checkpoints" / "last"
        resumed = stage != "encode" and ckpt.is_dir()
        t0 = time.perf_counter()
        fn()
        threads = (tok if stage != "transformer" else gpt).train.threads
        timings[stage] = {"seconds": time.perf_counter() - t0, "threads": threads, "resumed": resumed}
        write_json(d / "timings.json", timings)
        trained = True
        log(f"{stage} {'resumed and finished' if resumed else 'done'} in {timings[stage]['seconds']:.0f} s")

    timed("tokenizer", stage_done(s1 / "tokenizer") and (s1 / "report.json").is_file(),
          lambda: ensure_tokenizer(tok, s1, progress=plan.progress, say=log))
    timed("encode", (codes / "codes.json").is_file(),
          lambda: ensure_codes(plan.tok, s1, codes, progress=plan.progress, say=log))
    timed("transformer", stage_done(s2 / "transformer") and (s2 / "report.json").is_file(),
          lambda: ensure_transformer(gpt, s2, progress=plan.progress, say=log))
    torch.set_num_threads(plan.threads)  # a resumed stage may have set its own
    if trained:
        copy_pipeline(s1 / "tokenizer", s2 / "transformer", d)
    else:
        ensure_pipeline(s1, s2, d)
        log("training reused (finished before)")
    weights = _stamp(d / "transformer" / "model.safetensors")
    evals = {}
    for s in q.scales():
        evals[s] = _evaluate(plan, d, codes, s, weights, log)
    grid = _grid(plan, d, weights, log)
    return {"cond": c, "timings": timings, "evals": {str(s): str(p) for s, p in evals.items()}, "grid": str(grid),
            "trained": trained}


def _resume_threads(run_dir: Path, stage: str, cfg: Any, log) -> Any:
    """``cfg`` with the thread count an unfinished run in ``run_dir`` was started with: a resumed run must keep its
    configuration (thread counts change float sums), even when this session has another number of workers."""
    import yaml

    from ..stages import stage_done

    saved = run_dir / "config.yaml"
    if stage_done(run_dir / stage) or not (run_dir / "checkpoints" / "last").is_dir() or not saved.is_file():
        return cfg
    threads = (yaml.safe_load(saved.read_text()).get("train") or {}).get("threads")
    if threads != cfg.train.threads:
        log(f"{stage} resumes with the {threads} thread(s) it was started with")
        cfg = apply_overrides(cfg, [f"train.threads={threads if threads is not None else 'null'}"])
    return cfg


def _request(q: QualitySettings, scale: float, weights: list[int]) -> dict[str, Any]:
    return {"conditions": q.conditions, "samples": q.samples, "seed": q.eval_seed, "top_k": q.top_k,
            "temperature": q.temperature, "guidance_scale": scale, "recon_items": q.recon_items, "weights": weights,
            **({"min_p": q.min_p} if q.min_p else {})}


def _evaluate(plan: ModalityPlan, d: Path, codes: Path, scale: float, weights: list[int], log) -> Path:
    """``iqvae evaluate`` of the pipeline at one guidance scale, reused when done before with the same settings on
    the same weights."""
    from ..evaluation.evaluate import evaluate_model
    from ..evaluation.results import write_results
    from ..train.common import write_json

    q = plan.quality
    out = eval_dir(d, q.temperature, scale, q.min_p)
    want = _request(q, scale, weights)
    if (out / "metrics.json").is_file() and _read_json(out / "request.json") == want:
        log(f"evaluation T={q.temperature:g} s={scale:g} reused")
        return out / "metrics.json"
    log(f"evaluating T={q.temperature:g} s={scale:g} on {q.conditions} test conditions x {q.samples}")
    t0 = time.perf_counter()
    res = evaluate_model(d, split="test", conditions=q.conditions, samples=q.samples, seed=q.eval_seed,
                         top_k=q.top_k, min_p=q.min_p, temperature=q.temperature, guidance_scale=scale,
                         extractor=None,
                         extractor_source="not computed: `iqvae bench modalities` reports the Shapes world's exact "
                                          "metrics only", codes=str(codes), recon_items=q.recon_items,
                         progress=plan.progress)
    write_results(res, out)
    write_json(out / "request.json", want)
    m = res["metrics"]["shapes"]["samples"]
    log(f"T={q.temperature:g} s={scale:g}: " + ", ".join(f"{k} {m[k]:.3f}" for k in QUALITY_BARS[plan.cond])
        + f" ({time.perf_counter() - t0:.0f} s)")
    return out / "metrics.json"


def _grid(plan: ModalityPlan, d: Path, weights: list[int], log) -> Path:
    """``samples.png``: one row per test condition: the condition (rendered as `iqvae sample` does) and its samples
    at the evaluation's temperature and guidance scale."""
    from ..data.config import build_dataset
    from ..evaluation.samples import draw_samples
    from ..pipeline import IQVAEPipeline
    from ..sample_commands import condition_preview
    from ..train.common import write_json
    from ..viz import save_image_grid, to_pil

    q = plan.quality
    path = d / "samples.png"
    want = {**_request(q, q.cfg_scale, weights), "grid_conditions": q.grid_conditions}
    if path.is_file() and _read_json(d / "samples.json") == want:
        return path
    pipe = IQVAEPipeline.from_pretrained(d)
    data = pipe.tokenizer.data_config
    drawn, shown = grid_rows(q)
    s = draw_samples(pipe, build_dataset(data, "test"), data.cond, num_conditions=drawn,
                     samples_per_condition=q.samples, seed=q.eval_seed, top_k=q.top_k, min_p=q.min_p,
                     temperature=q.temperature, guidance_scale=q.cfg_scale)
    rows, labels = [], []
    for i in range(min(shown, s.images.shape[0])):
        imgs = to_pil(s.images[i])
        rows.append([condition_preview(s.conds[i], pipe.cond_spec, pipe.resolution).resize(imgs[0].size), *imgs])
        labels.append(f"test[{s.indices[i]}]")
    save_image_grid(path, rows, labels=labels)
    write_json(d / "samples.json", want)
    log(f"sample grid {path}")
    return path


def pinned_threads(plans: list[ModalityPlan], threads: int) -> list[str]:
    """'STAGE N' for each stage whose train.threads a --set made differ from the workers' share (for the plan line)."""
    return sorted({f"{stage} {cfg.train.threads}" for p in plans
                   for stage, cfg in (("tokenizer", p.tok), ("transformer", p.gpt)) if cfg.train.threads != threads})


def run_modalities_bench(args: argparse.Namespace) -> int:
    from ..machine import machine_info
    from .modalities_report import write_outputs

    started = time.perf_counter()
    conds = parse_conds(getattr(args, "conds", None))
    over = split_overrides(getattr(args, "set", None) or [], ("tokenizer", "transformer", "quality"))
    jobs = getattr(args, "jobs", None)
    if jobs is None:
        import torch

        jobs = 1 if torch.cuda.is_available() else min(2, usable_cores())
    if jobs < 1:
        raise IQVAEError(f"--jobs must be at least 1; got {jobs}")
    workers = min(jobs, len(conds))
    threads = max(1, usable_cores() // workers)
    runs, out = Path(args.runs_dir), Path(args.out)
    progress = workers == 1 and not getattr(args, "no_progress", False)
    plans = [make_plan(c, args.preset_prefix, over, runs, threads, progress) for c in conds]
    if not getattr(args, "resume", False):
        taken = [str(p.run) for p in plans if p.run.is_dir() and any(p.run.iterdir())]
        if taken:
            raise IQVAEError(f"run folder(s) not empty: {', '.join(taken)}; pass --resume to reuse their finished "
                             "stages and evaluations (an interrupted stage resumes), or delete them")
    previous = _read_json(out / "modalities.json")
    order = schedule(plans, previous)
    pinned = pinned_threads(plans, threads)
    say(f"{len(order)} condition(s) on {workers} worker(s) x {threads} torch thread(s)"
        + (f" (--set: {', '.join(pinned)} thread(s) in training)" if pinned else "") + ", slowest first: "
        + ", ".join(f"{p.cond} (~{_duration(estimated_seconds(p, previous))})" for p in order))
    results: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}

    def finished(cond: str, get) -> None:
        try:
            r = get()
        except Exception as e:  # noqa: BLE001 -- one condition's failure does not stop the others
            failed[cond] = f"{type(e).__name__}: {e}"
            say(f"{cond} FAILED: {failed[cond]}")
            return
        results[cond] = r
        secs = sum(t["seconds"] for t in r["timings"].values())
        say(f"{len(results) + len(failed)}/{len(order)} done: {cond} ({secs:.0f} s of training)")

    if workers == 1:
        for p in order:
            finished(p.cond, lambda p=p: run_modality(p))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(run_modality, p): p.cond for p in order}  # taken in this order
            for fut in as_completed(futures):
                finished(futures[fut], fut.result)
    info = {"machine": machine_info(), "jobs": workers, "threads": threads, "cpu_count": os.cpu_count(),
            "usable_cores": usable_cores(),
            "runs_dir": str(runs), "preset_prefix": args.preset_prefix,
            "set": list(getattr(args, "set", None) or []), "wall_seconds": time.perf_counter() - started,
            "command": command_line(args, conds, jobs)}
    info["invocations"] = record_invocation(runs, info, conds, results, failed)
    if results:
        written = write_outputs(out, [p for p in plans if p.cond in results], results, info)
        say(f"wrote {', '.join(str(p) for p in written)}")
    if failed:
        raise IQVAEError("failed: " + "; ".join(f"{c} ({m})" for c, m in failed.items())
                         + (f"; the others' results are in {out}" if results else "")
                         + "; re-run with --resume to reuse what finished")
    return 0


def record_invocation(runs: Path, info: dict[str, Any], conds: list[str], results: dict[str, dict[str, Any]],
                      failed: dict[str, str]) -> list[dict[str, Any]]:
    """Append this invocation to ``<runs>/invocations.json`` and return every invocation on the work folder, oldest
    first: a later invocation with ``--resume`` that reuses the trained conditions takes minutes, so the report
    lists the wall time of the ones that trained them (and which conditions each one trained)."""
    from ..train.common import write_json

    path = runs / "invocations.json"
    entries = json.loads(path.read_text()) if path.is_file() else []
    trained = [c for c in conds if c in results and results[c].get("trained")]
    entries.append({"wall_seconds": info["wall_seconds"], "conds": conds, "trained": trained,
                    "failed": sorted(failed), "jobs": info["jobs"], "threads": info["threads"],
                    "set": info["set"], "commit": info["machine"].get("commit"),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    runs.mkdir(parents=True, exist_ok=True)
    write_json(path, entries)
    return entries


def command_line(args: argparse.Namespace, conds: list[str], jobs: int) -> str:
    """The command that reproduces this run (for the report)."""
    import shlex

    parts = ["iqvae", "bench", "modalities", "--conds", ",".join(conds), "--jobs", str(jobs), "--runs-dir",
             str(args.runs_dir), "--out", str(args.out)]
    if args.preset_prefix != "quality":
        parts += ["--preset-prefix", args.preset_prefix]
    for item in getattr(args, "set", None) or []:
        parts += ["--set", item]
    return " ".join(shlex.quote(p) for p in parts)


def options_epilog() -> str:
    from ..config import format_options

    return ("options of a preset's `quality:` section (override with --set quality.KEY=VALUE):\n"
            + format_options(QualitySettings, "quality."))


def register(bsub: argparse._SubParsersAction) -> None:
    m = bsub.add_parser("modalities", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=options_epilog(),
                        help="issue 14's quality bar per condition modality: train each preset quality-<cond> end "
                             "to end, evaluate, write modalities.md / .json, sample grids and guidance.png")
    m.add_argument("--conds", default=None, help="comma-separated conditions (default: all: "
                                                 + ", ".join(QUALITY_BARS) + ")")
    m.add_argument("--jobs", type=int, default=None,
                   help="conditions trained side by side in worker processes, each with cores/jobs torch threads "
                        "(a --set tokenizer.train.threads / transformer.train.threads wins for its stage; "
                        "default: 2 without a GPU, 1 with one)")
    m.add_argument("--runs-dir", default="runs/modalities", help="folder for the runs (default runs/modalities)")
    m.add_argument("--out", default="results", help="folder for modalities.md / .json / *.png (default results)")
    m.add_argument("--preset-prefix", default="quality", help="preset of a condition: PREFIX-COND (default quality)")
    m.add_argument("--resume", action="store_true",
                   help="reuse the finished stages and evaluations in --runs-dir and resume interrupted ones "
                        "(without it, a condition whose run folder is not empty is an error)")
    m.add_argument("--set", dest="set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override an option of every condition's preset, e.g. tokenizer.train.steps=500, "
                        "transformer.model.n_layer=2, quality.conditions=16 (repeatable)")
    m.add_argument("--no-progress", action="store_true", help="no progress bars (they show only with one worker)")
    m.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return run_modalities_bench(args)
