"""``iqvae demo``: the whole pipeline on the built-in Shapes world, then a self-contained HTML report.

For each condition modality (default: seg, edge, keypoints): train the tokenizer, write token codes, train the
transformer, assemble a pipeline folder, sample held-out test conditions, score them with the world's exact metrics.
Finished stages are reused (from their checkpoints) unless ``--fresh``; an interrupted stage resumes.

Output: ``runs/demo/<cond>/{stage1,codes,stage2,tokenizer,transformer}`` and ``runs/demo/report.html``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

DEFAULT_CONDS = ("seg", "edge", "keypoints")  # text fails its bar at every budget tried (docs/performance.md)


def demo_preset(base: str, cond: str) -> str:
    """The preset the demo trains ``cond`` with: ``<base>-<cond>`` where the package has one (a condition's own
    settings on top of ``base``, e.g. ``demo-edge``), else ``base``."""
    from .config import list_presets

    own = f"{base}-{cond}"
    return own if own in list_presets() else base


def run_pipeline_for(cond: str, root: Path, *, preset: str, fresh: bool, progress: bool, say,
                     overrides: list[str] = ()) -> dict[str, Any]:
    """Train (or reuse / resume) stage 1, codes and stage 2 for one condition; returns timings and paths.

    ``overrides``: ``tokenizer.KEY=VALUE`` / ``transformer.KEY=VALUE`` strings applied over the preset.
    """
    from .config import build_config
    from .stages import ensure_codes, ensure_pipeline, ensure_tokenizer, ensure_transformer, stage_done
    from .train.tokenizer import TokenizerRunConfig
    from .train.transformer import TransformerRunConfig

    d = root / cond
    if fresh and d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = json.loads((d / "timings.json").read_text()) if (d / "timings.json").exists() else {}

    def section(name: str) -> list[str]:
        return [o.split(".", 1)[1] for o in overrides if o.startswith(name + ".")]

    def timed(key: str, done: bool, fn) -> None:
        t0 = time.perf_counter()
        fn()
        if not done:
            timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0

    say = (lambda msg, _say=say: _say(f"[{cond}] {msg}"))
    tok_cfg = build_config(TokenizerRunConfig, "tokenizer", preset=preset,
                           overrides=[f"data.cond={cond}", *section("tokenizer")])
    s1, codes, s2 = d / "stage1", d / "codes", d / "stage2"
    timed("tokenizer", stage_done(s1 / "tokenizer"), lambda: ensure_tokenizer(tok_cfg, s1, progress=progress, say=say))
    timed("encode", (codes / "codes.json").is_file(),
          lambda: ensure_codes(tok_cfg, s1, codes, progress=progress, say=say))
    gpt_cfg = build_config(TransformerRunConfig, "transformer", preset=preset,
                           overrides=[f"codes={codes}", *section("transformer")])
    timed("transformer", stage_done(s2 / "transformer"),
          lambda: ensure_transformer(gpt_cfg, s2, progress=progress, say=say))
    ensure_pipeline(s1, s2, d)
    (d / "timings.json").write_text(json.dumps(timings, indent=2))
    return {"dir": d, "timings": timings, "tok_cfg": tok_cfg, "gpt_cfg": gpt_cfg, "preset": preset}


def sampling_preset(cond: str, base: str = "demo") -> str:
    """The preset whose ``quality:`` section says how the demo samples ``cond``: the condition's demo preset
    (:func:`demo_preset`) where it has one (settings chosen on the val split for the demo's smaller models, e.g.
    ``demo-seg``), else ``quality-<cond>`` (issue 14's bar settings, :mod:`iqvae.bench.quality`)."""
    from .config import load_preset

    own = demo_preset(base, cond)
    return own if isinstance(load_preset(own).get("quality"), dict) else f"quality-{cond}"


def sampling_settings(cond: str, temperature: float | None = None, cfg_scale: float | None = None,
                      min_p: float | None = None, *, base: str = "demo") -> dict[str, float | None]:
    """How the demo samples ``cond``: the temperature, guidance scale and min-p of :func:`sampling_preset`'s
    ``quality:`` section unless given (``min_p`` 0: off)."""
    from .bench.quality import quality_settings
    from .sampling import ArgNames, validate_sampling_args

    validate_sampling_args(None, None, 1.0 if temperature is None else temperature, min_p,
                           names=ArgNames(temperature="--temperature", min_p="--min-p", min_p_off="0"))
    q = quality_settings(sampling_preset(cond, base))
    return {"temperature": q.temperature if temperature is None else temperature,
            "cfg_scale": q.cfg_scale if cfg_scale is None else cfg_scale,
            "min_p": q.min_p if min_p is None else (min_p or None)}


def bar_marks(cond: str, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Each metric of ``cond``'s quality bar (:data:`iqvae.bench.quality.QUALITY_BARS`) with its value and whether
    it meets the bar."""
    from .bench.quality import QUALITY_BARS, meets

    return [{"metric": k, "value": metrics.get(k), "bar": bar, "meets": meets(metrics.get(k), bar)}
            for k, bar in QUALITY_BARS[cond].items()]


def evaluate_demo(cond: str, d: Path, *, num_conditions: int, samples: int, seed: int, progress: bool,
                  temperature: float = 1.0, cfg_scale: float = 1.0, min_p: float | None = None) -> dict[str, Any]:
    import torch

    from .data.config import build_dataset
    from .evaluation.samples import draw_samples, shapes_metrics
    from .pipeline import IQVAEPipeline

    pipe = IQVAEPipeline.from_pretrained(d)
    data = pipe.tokenizer.data_config
    test = build_dataset(data, "test")
    t0 = time.perf_counter()
    s = draw_samples(pipe, test, cond, num_conditions=num_conditions, samples_per_condition=samples, seed=seed,
                     progress=progress, temperature=temperature, guidance_scale=cfg_scale, min_p=min_p)
    sample_seconds = time.perf_counter() - t0
    seg = [test[i].cond["seg"] for i in s.indices]
    metrics = shapes_metrics(s, seg)
    metrics["sample_seconds_per_image"] = sample_seconds / (s.images.shape[0] * s.images.shape[1])
    return {"metrics": metrics, "bars": bar_marks(cond, metrics), "temperature": temperature, "cfg_scale": cfg_scale,
            "min_p": min_p,
            "samples": s, "spec": pipe.cond_spec, "resolution": pipe.resolution,
            "captions": [test[i].extra.get("caption") for i in s.indices], "torch": torch.__version__}


def _mark(b: dict[str, Any]) -> str:
    v = "n/a" if b["value"] is None else f"{b['value']:.3f}"
    return f"{b['metric']} {v} ({'meets' if b['meets'] else 'below'} {b['bar']:g})"


def build_report(root: Path, results: dict[str, dict[str, Any]], total_seconds: float) -> Path:
    from .machine import machine_info
    from .report import Section, loss_curve_image, write_html
    from .sample_commands import condition_preview
    from .train.common import read_log
    from .viz import grid_image, to_pil

    sections = []
    summary_rows = []
    for cond, r in results.items():
        ev = r["eval"]
        m = ev["metrics"]
        t = r["timings"]
        summary_rows.append([cond, r.get("preset", ""), ev["temperature"], ev["cfg_scale"], ev["min_p"] or "–",
                             "; ".join(_mark(b) for b in ev["bars"]),
                             t.get("tokenizer", 0.0), t.get("transformer", 0.0)])
        s = ev["samples"]
        rows, labels = [], []
        for i in range(min(6, s.images.shape[0])):
            imgs = to_pil(s.images[i])
            cprev = condition_preview(s.conds[i], ev["spec"], ev["resolution"]).resize(imgs[0].size)
            rows.append([cprev, to_pil(s.real[i:i + 1])[0], *imgs])
            labels.append(f"test[{s.indices[i]}]")
        sec = Section(f"Condition: {cond}")
        if ev["spec"].modality_obj.typed:
            sec.text = "Captions: " + "; ".join(f"<b>test[{s.indices[i]}]</b> “{ev['captions'][i]}”"
                                                for i in range(min(6, len(ev["captions"]))))
        sec.images.append((f"condition | real image | samples (top-k 100, T = {ev['temperature']:g}, "
                           f"guidance s = {ev['cfg_scale']:g}" + (f", min-p {ev['min_p']:g}" if ev["min_p"] else "")
                           + ")", grid_image(rows, labels=labels)))
        d = r["dir"]
        for name, path, keys in (("tokenizer", d / "stage1" / "tokenizer.csv", None),
                                 ("transformer", d / "stage2" / "transformer.csv", ["loss"])):
            if path.exists():
                log = read_log(path)
                keys = keys or [k for k in ("recon_l1", "quant", "sgw", "cond_recon", "perceptual", "g_loss")
                                if any(k in row for row in log)]
                series = {k: ([row["step"] for row in log if k in row], [row[k] for row in log if k in row])
                          for k in keys}
                sec.images.append((f"{name} losses", loss_curve_image(series, f"{cond}: {name}")))
        sec.tables.append(("exact metrics on held-out test conditions", ["metric", "value"],
                           [[k, v] for k, v in m.items()]))
        sec.tables.append(("time per stage (s)", ["stage", "seconds"], [[k, v] for k, v in t.items()]))
        sections.append(sec)
    head = Section("Summary")
    head.tables.append(("", ["condition", "preset", "T", "guidance s", "min-p", "metric: value (bar)", "tokenizer s",
                             "transformer s"], summary_rows))
    info = machine_info()
    head.text = (f"Total wall time {total_seconds:.0f} s on {info['cpu_count']} CPU core(s), torch {info['torch']}, "
                 f"commit {info.get('commit')}. Palette accuracy: share of sampled objects whose mean colour is "
                 "nearest to an allowed colour of their class; mask mIoU: segmentation recovered from each sample vs the "
                 "condition's; scene accuracy (text, audio): share of described objects found with their class's "
                 "colour in their 3 x 3 cell; mode coverage: share of each object's allowed colours seen among a "
                 "condition's samples. The bars are issue 14's quality bars, set for the larger quality-&lt;cond&gt; "
                 "presets (<code>iqvae bench modalities</code>, results/modalities.md); the demo trains smaller "
                 "models for fewer steps and samples with the temperature, guidance scale and min-p of the "
                 "condition's demo preset where it sets them (chosen on the val split: demo-seg, demo-edge), else "
                 "of its quality preset.")
    return write_html(root / "report.html", "IQ-VAE demo on the Shapes world", [head, *sections],
                      intro="Generated by <code>iqvae demo</code>. Everything in this file is inline; no network needed.")


def _train_in_subprocesses(conds: list[str], root: Path, args: argparse.Namespace, preset: str) -> None:
    """Train the conditions' stages as parallel one-thread processes (two 1-thread processes do more work on a
    2-core machine than one 2-thread process); one progress bar follows their logs."""
    import os
    import subprocess
    import sys

    from tqdm.auto import tqdm

    from .config import build_config
    from .train.tokenizer import TokenizerRunConfig
    from .train.transformer import TransformerRunConfig
    from .viz import bar_options

    steps = {c: (build_config(TokenizerRunConfig, "tokenizer", preset=demo_preset(preset, c)).train.steps,
                 build_config(TransformerRunConfig, "transformer", preset=demo_preset(preset, c)).train.steps)
             for c in conds}
    total = sum(a + b for a, b in steps.values())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {}
    for cond in conds:
        cmd = [sys.executable, "-m", "iqvae.cli", "demo", "--conds", cond, "--out", str(root), "--train-only",
               "--no-progress", "--threads", "1"] + (["--quick"] if args.quick else []) + (["--fresh"] if args.fresh else [])
        log = open(root / f"{cond}.train.log", "w")
        procs[cond] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log)

    def done_steps() -> int:
        n = 0
        for cond in conds:
            for stage, name, n_steps in zip(("stage1", "stage2"), ("tokenizer", "transformer"), steps[cond]):
                d = root / cond / stage
                if (d / name / "config.json").is_file():
                    n += n_steps
                elif (d / f"{name}.csv").is_file():
                    lines = (d / f"{name}.csv").read_text().strip().splitlines()
                    if len(lines) > 1:
                        n += int(float(lines[-1].split(",")[0])) + 1
        return n

    bar = tqdm(total=total, desc=f"training {', '.join(conds)}", disable=args.no_progress, **bar_options())
    try:
        while any(p.poll() is None for p, _ in procs.values()):
            time.sleep(2)
            bar.update(min(done_steps(), total) - bar.n)  # respects mininterval (unlike refresh)
    except KeyboardInterrupt:
        for p, _ in procs.values():
            p.terminate()
        raise
    bar.update(min(done_steps(), total) - bar.n)
    bar.close()
    failed = []
    for cond, (p, log) in procs.items():
        log.close()
        if p.returncode != 0:
            failed.append(cond)
    if failed:
        from .errors import IQVAEError

        tails = "\n".join(f"--- {c}: {root / f'{c}.train.log'} ---\n"
                          + "\n".join((root / f"{c}.train.log").read_text().splitlines()[-15:]) for c in failed)
        raise IQVAEError(f"training failed for {', '.join(failed)}:\n{tails}")


def run_demo(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .data.record import check_modalities
    from .errors import IQVAEError

    conds = check_modalities([c.strip() for c in args.conds.split(",") if c.strip()])
    if args.conditions < 1 or args.samples < 1:
        raise IQVAEError("--conditions and --samples must be at least 1")
    root = Path(args.out)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise IQVAEError(f"--out {root}: cannot create the folder ({e.strerror})") from None
    preset = "demo-quick" if args.quick else "demo"
    sampling = {c: sampling_settings(c, args.temperature, args.cfg_scale, args.min_p, base=preset)
                for c in conds}  # errors before training
    say = tqdm.write
    t0 = time.perf_counter()
    threads = [f"tokenizer.train.threads={args.threads}", f"transformer.train.threads={args.threads}"] if args.threads else []
    if args.train_only or len(conds) == 1 or args.sequential:
        for cond in conds:
            run_pipeline_for(cond, root, preset=demo_preset(preset, cond), fresh=args.fresh,
                             progress=not args.no_progress, say=say,
                             overrides=threads)
        if args.train_only:
            return 0
    else:
        _train_in_subprocesses(conds, root, args, preset)
    results = {}
    for cond in conds:
        r = run_pipeline_for(cond, root, preset=demo_preset(preset, cond), fresh=False, progress=False,
                             say=say)  # reuses the stages
        say(f"[{cond}] sampling {args.conditions} held-out test conditions x {args.samples}")
        r["eval"] = evaluate_demo(cond, r["dir"], num_conditions=args.conditions, samples=args.samples,
                                  seed=args.seed, progress=not args.no_progress, **sampling[cond])
        results[cond] = r
    report = build_report(root, results, time.perf_counter() - t0)
    from .train.common import write_json

    write_json(root / "metrics.json", {c: {"metrics": r["eval"]["metrics"], "bars": r["eval"]["bars"],
                                           "timings": r["timings"], "conditions": args.conditions,
                                           "samples": args.samples, "seed": args.seed, **sampling[c],
                                           "sampling_preset": sampling_preset(c, preset)}
                                       for c, r in results.items()})
    print("\nIQ-VAE demo finished in {:.0f} s".format(time.perf_counter() - t0))
    for cond, r in results.items():
        marks = "  ".join(_mark(b) for b in r["eval"]["bars"])
        mp = sampling[cond]["min_p"]
        print(f"  {cond:9s} T {sampling[cond]['temperature']:g} s {sampling[cond]['cfg_scale']:g}"
              + (f" min-p {mp:g}" if mp else "") + f"  {marks}   "
              f"model: {r['dir']}")
    print(f"report: {report.resolve()}")
    print(f"web demo: iqvae serve --model {root}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train and sample the whole pipeline on the Shapes world; write an HTML report")
    p.add_argument("--quick", action="store_true", help="a much smaller run (about 3 minutes) for tests")
    p.add_argument("--fresh", action="store_true", help="retrain every stage instead of reusing finished ones")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--conds", default=",".join(DEFAULT_CONDS), help="condition modalities, comma-separated")
    p.add_argument("--conditions", type=int, default=16, help="held-out test conditions to sample")
    p.add_argument("--samples", type=int, default=8, help="samples per condition")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default: each condition's demo-<cond> preset where it has a "
                        "quality section, else its quality-<cond> preset; `iqvae presets` shows them)")
    p.add_argument("--cfg-scale", type=float, default=None,
                   help="classifier-free guidance scale (default: as --temperature)")
    p.add_argument("--min-p", type=float, default=None,
                   help="min-p filter of the sampler, in [0, 1], 0: off (default: as --temperature; none unless "
                        "that preset sets one)")
    p.add_argument("--sequential", action="store_true", help="train the conditions one after another in this process")
    p.add_argument("--threads", type=int, default=None, help="torch threads per training process")
    p.add_argument("--train-only", action="store_true", help="only train (used by the parallel training processes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_demo)
