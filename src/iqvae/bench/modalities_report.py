"""Outputs of ``iqvae bench modalities``: modalities.json / .md, one sample grid per condition and guidance.png.

Every number is read back from the per-run files the evaluation wrote (``<runs>/<cond>/eval-T<t>-s<s>/metrics.json``)
and the worker's ``timings.json``; nothing is recomputed here.  ✓ / ✗ follow :data:`~.modalities.QUALITY_BARS`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .quality import METRICS, QUALITY_BARS, STAGES, diversity_metric, fidelity_metric, grid_rows, meets

TITLES = {"palette_accuracy": "palette accuracy", "mask_miou": "mask mIoU", "scene_accuracy": "scene accuracy",
          "mode_coverage": "mode coverage", "scene_mode_coverage": "scene mode coverage"}


def _read(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _metrics(path: str | Path) -> dict[str, float | None]:
    m = _read(path)["metrics"]["shapes"]
    return {k: (m["samples"].get(k) if m.get("available") else None) for k in METRICS}


def modality_entry(plan: Any, result: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """One condition's record of modalities.json."""
    from ..config import additions

    q, cond = plan.quality, plan.cond
    main_path = result["evals"][str(q.cfg_scale)]
    main = _read(main_path)
    values = _metrics(main_path)
    bars = QUALITY_BARS[cond]
    passed = {k: meets(values[k], b) for k, b in bars.items()}
    t = result["timings"]
    stage_seconds = {s: t[s]["seconds"] for s in STAGES if s in t}
    sweep = list(dict.fromkeys(q.guidance_sweep))
    guidance = [{"cfg_scale": s, "temperature": q.temperature, "min_p": q.min_p, **_metrics(result["evals"][str(s)]),
                 "eval": result["evals"][str(s)]} for s in sweep]
    p = main["protocol"]
    tok, gpt = plan.tok, plan.gpt
    settings = {
        "preset": plan.preset,
        "additions": [f"tokenizer.{a}" for a in additions(tok)] + [f"transformer.{a}" for a in additions(gpt)],
        "temperature": q.temperature, "cfg_scale": q.cfg_scale, "guidance_sweep": sweep, "top_k": p["top_k"],
        "min_p": p.get("min_p"),
        "conditions": p["conditions"], "samples": p["samples_per_condition"], "eval_seed": p["seed"],
        "split": p["split"], "resolution": p["resolution"],
        "tokenizer": {"steps": tok.train.steps, "batch_size": tok.train.batch_size, "lr": tok.train.lr,
                      "train_size": tok.data.train_size, "sgw_weight": tok.loss.sgw_weight},
        "transformer": {"steps": gpt.train.steps, "batch_size": gpt.train.batch_size, "lr": gpt.train.lr,
                        "n_layer": gpt.model.n_layer, "n_embd": gpt.model.n_embd, "cfg_dropout": gpt.model.cfg_dropout},
        # the threads each stage trained with (timings.json): a --resume invocation with another --jobs reuses them
        "threads": plan.threads, "train_threads": {s: t[s].get("threads") for s in STAGES if s in t},
        "jobs": info["jobs"], "set": info["set"], "commit": info["machine"].get("commit"),
        "machine": info["machine"],
    }
    per_image = main["metrics"]["shapes"].get("samples", {}).get("mask_miou_per_image")
    return {
        **values, "mask_miou_per_image": per_image,
        "bars": dict(bars), "passed": passed, "meets_bar": all(passed.values()),
        "train_seconds": sum(stage_seconds.values()) if len(stage_seconds) == len(STAGES) else None,
        "train_stage_seconds": stage_seconds,
        "train_resumed": [s for s in STAGES if t.get(s, {}).get("resumed")],
        "sample_seconds": p["sample_seconds"],
        "settings": settings, "eval": main_path, "guidance": guidance, "grid": f"modalities_{cond}.png",
        "grid_rows": min(grid_rows(q)[1], p["conditions"]),
    }


def cell(cond: str, key: str, value: float | None) -> str:
    """A table cell: ``value ≥ bar ✓|✗`` where the condition has a bar on ``key``, else ``(value)``.

    Three decimals, more where three would round a missed bar up to it (0.6995 shows as 0.6995, not 0.700)."""
    bar = QUALITY_BARS[cond].get(key)
    if value is None:
        v = "n/a"
    else:
        digits = 3
        while bar is not None and digits < 8 and not meets(value, bar) and round(value, digits) >= bar:
            digits += 1
        v = f"{value:.{digits}f}"
    if bar is None:
        return f"({v})"
    return f"{v} ≥ {bar:g} {'✓' if meets(value, bar) else '✗'}"


def _min_p(v: float | None) -> str:
    return "–" if not v else f"{v:g}"


def _secs(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def _protocol(s: dict[str, Any]) -> str:
    return (f"the first {s['conditions']} {s['split']} conditions × {s['samples']} samples (top-k {s['top_k']}, "
            f"seed {s['eval_seed']})")


def invocations_sentence(entries: list[dict[str, Any]]) -> str:
    """Every invocation on the work folder, oldest first, with the conditions it trained and its wall time (a later
    ``--resume`` invocation reuses them), and the sum of those wall times; empty for a single invocation."""
    if len(entries) < 2:
        return ""
    parts = []
    for i, e in enumerate(entries, 1):
        trained = ", ".join(e.get("trained") or []) or "none (all reused)"
        parts.append(f"{i}. {e['wall_seconds'] / 60:.1f} min, trained {trained} ({e['jobs']} worker(s) × "
                     f"{e.get('threads', '?')} thread(s), commit {e.get('commit')}, finished {e.get('finished')})")
    total = sum(float(e["wall_seconds"]) for e in entries)
    return (f"  Every invocation on this work folder ({total / 60:.1f} min in all), oldest first: "
            + "; ".join(parts) + ".")


def render_markdown(entries: dict[str, dict[str, Any]], info: dict[str, Any], guidance_png: bool) -> str:
    m = info["machine"]
    protocols = {_protocol(e["settings"]) for e in entries.values()}
    res = sorted({e["settings"]["resolution"] for e in entries.values()})
    lines = [
        "# Quality bar per condition modality (issue 14)", "",
        f"Shapes world at {'/'.join(map(str, res))} px. Each condition's preset (`{info['preset_prefix']}-<cond>`) is "
        "trained end to end (tokenizer, token codes, transformer) and evaluated by the code of `iqvae evaluate` on "
        + (next(iter(protocols)) if len(protocols) == 1 else "the test conditions of its preset (settings below)")
        + " at the temperature T, guidance scale s and min-p (– : none) of its preset.", "",
        f"Written by `{info['command']}` on commit {m.get('commit')}: {info['cpu_count']} CPU core(s), GPU "
        f"{m.get('cuda') or 'none'}, torch {m.get('torch')}; {info['jobs']} worker(s) × {info['threads']} torch "
        f"thread(s); wall time {info['wall_seconds'] / 60:.1f} min." + invocations_sentence(
            info.get("invocations") or []), "",
        "| condition | " + " | ".join(TITLES[k] for k in METRICS) + " | bar met | train s | T | s | min-p |",
        "|---" * (len(METRICS) + 6) + "|",
    ]
    resumed = False
    for cond, e in entries.items():
        star = "*" if e["train_resumed"] else ""
        resumed = resumed or bool(star)
        lines.append(f"| {cond} | " + " | ".join(cell(cond, k, e[k]) for k in METRICS)
                     + f" | {'✓' if e['meets_bar'] else '✗'} | {_secs(e['train_seconds'])}{star} | "
                     f"{e['settings']['temperature']:g} | {e['settings']['cfg_scale']:g} | "
                     f"{_min_p(e['settings'].get('min_p'))} |")
    lines += [
        "",
        "A cell reads: measured value ≥ bar, ✓ met or ✗ missed. A value in parentheses has no bar: the metric does not "
        "judge that condition (seg, layout, keypoints and edge fix each object's pixels, so palette accuracy and mask "
        "mIoU judge them; text and audio name class, size and 3 × 3 cell only, so scene accuracy does, and their "
        "diversity is scene mode coverage: the palette colours drawn among a condition's samples, read on the "
        "objects found right rather than over the true object's pixels, which mode coverage reads). Mask mIoU "
        "sums each class's intersection and union over all samples before the mean over classes (the segmentation "
        "benchmarks' protocol); the mean of per-image mIoUs is `mask_miou_per_image` in modalities.json. "
        "Train s: wall "
        "seconds of tokenizer + codes + transformer, measured in the worker that trained the condition while "
        f"{info['jobs']} worker(s) shared the machine (the 20-minute bar is for a run alone on 2 cores: "
        "`scripts/quality-run COND`).",
    ]
    if resumed:
        lines += ["", "\\* a stage resumed from a checkpoint: its time counts only the session that finished it."]
    lines += ["", "## Settings", "",
              "| condition | preset | evaluation | tokenizer | transformer | train s (tokenizer / codes / transformer) "
              "| our additions |", "|---|---|---|---|---|---|---|"]
    for cond, e in entries.items():
        s, ts = e["settings"], e["train_stage_seconds"]
        tok, gpt = s["tokenizer"], s["transformer"]
        lines.append(
            f"| {cond} | `{s['preset']}` | {s['conditions']} × {s['samples']}, top-k {s['top_k']}, seed "
            f"{s['eval_seed']} | {tok['steps']} steps × {tok['batch_size']}, lr {tok['lr']:g}"
            + f", λ1 {tok['sgw_weight']:g} | "
            f"{gpt['steps']} steps × {gpt['batch_size']}, lr {gpt['lr']:g}, GPT {gpt['n_layer']} × {gpt['n_embd']}, "
            f"cfg_dropout {gpt['cfg_dropout']:g} | " + " / ".join(_secs(ts.get(k)) for k in STAGES)
            + "".join(f" ({n} thread(s))" for n in sorted(set(s.get("train_threads", {}).values())
                                                                  - {None, info["threads"]}))
            + " | " + (", ".join(f"`{a}`" for a in s["additions"]) or "none") + " |")
    lines += ["", "Our additions: options that add to the paper's model (docs/design.md, \"Options: the paper's and "
                  "ours\"); the `paper` preset uses none of them. `cond_cell_head=spatial` acts on seg, edge, "
                  "keypoints and layout only. λ1: the weight of the sliced-GW regulariser "
                  "(`tokenizer.loss.sgw_weight`; the paper gives no value, so it is a setting, not an addition)."]
    if info["set"]:
        lines += ["", "Overrides on every preset: " + ", ".join(f"`{x}`" for x in info["set"]) + "."]
    swept = {c: e for c, e in entries.items() if e["guidance"]}
    if swept:
        lines += ["", "## Guidance: fidelity against diversity", ""]
        if guidance_png:
            lines += ["![fidelity against diversity over the guidance scale](guidance.png)", ""]
        lines += ["| condition | s | T | min-p | " + " | ".join(TITLES[k] for k in METRICS) + " |",
                  "|---" * (len(METRICS) + 4) + "|"]
        for cond, e in swept.items():
            for g in e["guidance"]:
                lines.append(f"| {cond} | {g['cfg_scale']:g} | {g['temperature']:g} | {_min_p(g.get('min_p'))} | "
                             + " | ".join("n/a" if g[k] is None else f"{g[k]:.3f}" for k in METRICS) + " |")
        lines += ["", "Fidelity is palette accuracy for spatial conditions and scene accuracy for text and audio; "
                      "diversity is mode coverage (scene mode coverage for text and audio). s = 1 is unguided sampling."]
    lines += ["", "## Samples", ""]
    for cond, e in entries.items():
        st = e["settings"]
        lines += [f"`{cond}`: the first {e['grid_rows']} test conditions (condition, then {st['samples']} samples at "
                  f"T = {st['temperature']:g}, s = {st['cfg_scale']:g}"
                  + (f", min-p {st['min_p']:g}" if st.get("min_p") else "") + "; the evaluation's own draws)", "",
                  f"![{cond} samples]({e['grid']})", ""]
    return "\n".join(lines).rstrip() + "\n"


def guidance_figure(path: Path, entries: dict[str, dict[str, Any]]) -> Path:
    """x: mode coverage (diversity), y: the condition's fidelity metric; one line per condition, points labelled
    with their guidance scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=110)
    for cond, e in entries.items():
        fid, div = fidelity_metric(cond), diversity_metric(cond)
        pts = [g for g in e["guidance"] if g[div] is not None and g[fid] is not None]
        if not pts:
            continue
        xs, ys = [g[div] for g in pts], [g[fid] for g in pts]
        (line,) = ax.plot(xs, ys, marker="o", label=f"{cond} ({TITLES[fid]}, {TITLES[div]})")
        for g, x, y in zip(pts, xs, ys):
            ax.annotate(f"s={g['cfg_scale']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8,
                        color=line.get_color())
    for get, setter in ((ax.get_xlim, ax.set_xlim), (ax.get_ylim, ax.set_ylim)):  # metrics lie in [0, 1]
        lo, hi = get()
        mid, half = (lo + hi) / 2, max((hi - lo) / 2, 0.05)
        setter(max(-0.02, mid - half), min(1.02, mid + half))
    ax.set_xlabel("diversity (mode coverage; scene mode coverage for text, audio)")
    ax.set_ylabel("fidelity (palette accuracy; scene accuracy for text, audio)")
    ax.set_title("Classifier-free guidance: fidelity against diversity")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_outputs(out: Path, plans: list[Any], results: dict[str, dict[str, Any]],
                  info: dict[str, Any]) -> list[Path]:
    from ..errors import IQVAEError
    from ..train.common import write_json

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise IQVAEError(f"--out '{out}': cannot create the folder: {e.strerror or e}") from None
    entries = {}
    written = []
    for plan in plans:
        e = modality_entry(plan, results[plan.cond], info)
        shutil.copyfile(results[plan.cond]["grid"], out / e["grid"])
        written.append(out / e["grid"])
        entries[plan.cond] = e
    swept = {c: e for c, e in entries.items() if e["guidance"]}
    if swept:
        written.append(guidance_figure(out / "guidance.png", swept))
    write_json(out / "modalities.json", entries)
    (out / "modalities.md").write_text(render_markdown(entries, info, bool(swept)), encoding="utf-8")
    return [out / "modalities.md", out / "modalities.json", *written]
