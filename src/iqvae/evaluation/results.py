"""What ``iqvae evaluate`` writes: the metrics of :func:`iqvae.evaluation.evaluate.evaluate_model` as ``metrics.json``
and a Markdown table with the protocol (``metrics.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import IQVAEError


def _f(v: Any, digits: int = 4) -> str:
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def metric_rows(res: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, value) rows for the Markdown table, unavailable metrics with their reason."""
    m = res["metrics"]
    rows: list[tuple[str, str]] = []

    def add(label: str, entry: dict, fmt) -> None:
        rows.append((label, fmt(entry) if entry.get("available") else f"n/a ({entry['reason']})"))

    add(m["fd"].get("name", "FD"), m["fd"], lambda e: _f(e["value"]))
    floor = m["fd"].get("floor")
    if floor is not None:
        add(f"{m['fd']['name']} floor (real vs real)", floor,
            lambda e: f"{_f(e['value'])} ({e['set_a']} vs {e['set_b']} real images)")
    add(m["kid"].get("name", "KD"), m["kid"], lambda e: f"{_f(e['mean'])} ± {_f(e['std'])}")
    add("SWD x1e3 (mean over levels)", m["swd"], lambda e: _f(e["mean"]))
    add(m["lpips_diversity"].get("name", "LPIPS") + " diversity", m["lpips_diversity"],
        lambda e: f"{_f(e['mean'])} ± {_f(e['std'])}")
    add("NLL (bits / image token)", m["nll"], lambda e: f"{_f(e['bits_per_token'])} ({e['split']} codes)")
    r = m["reconstruction"]
    for key in ("psnr", "ssim", "image_codebook_usage", "image_codebook_perplexity", "cond_codebook_usage",
                "cond_codebook_perplexity", "cond_pixel_acc", "cond_miou", "cond_code_class_purity", "cond_f1",
                "cond_token_acc", "cond_mse", "palette_accuracy", "mask_miou", "mask_miou_per_image",
                "code_colour_purity", "codes_per_colour", "recon_scene_accuracy", "recon_scene_precision",
                "recon_scene_recall"):
        if key in r:
            rows.append((f"reconstruction {key}", _f(r[key])))
    add(r["rfd"].get("name", "rFD"), r["rfd"], lambda e: _f(e["value"]))
    control = m.get("control")
    if control is not None:
        rows += control_rows(control)
    if m["shapes"].get("available"):
        fit = m["shapes"].get("fit", [])
        for key, v in m["shapes"]["samples"].items():
            real = m["shapes"]["real"].get(key)
            label = f"{key} (samples; real ceiling)" + (" [fits the condition]" if key in fit else "")
            rows.append((label, f"{_f(v)}" + (f"; {_f(real)}" if real is not None else "")))
    else:
        rows.append(("Shapes exact metrics", f"n/a ({m['shapes']['reason']})"))
    return rows


def control_rows(c: dict[str, Any]) -> list[tuple[str, str]]:
    """Controllability rows: samples beside the oracle (the judge on the real images)."""
    if not c.get("available"):
        return [("controllability", f"n/a ({c['reason']})")]
    arrow = "higher is better" if c["higher_is_better"] else "lower is better"
    judge = f", {c['predictor']}" if c.get("predictor") else ""
    rows = [(f"control: {c['metric']} (samples; real oracle; {arrow}{judge})", f"{_f(c['samples'])}; {_f(c['real'])}")]
    if "samples_tol1" in c:
        rows.append((f"control: {c['metric']} within 1 px (samples; real oracle)",
                     f"{_f(c['samples_tol1'])}; {_f(c['real_tol1'])}"))
    return rows


def render_markdown(res: dict[str, Any]) -> str:
    p = res["protocol"]
    sampler = f"top-k {p['top_k']}, top-p {p['top_p']}, " + (f"min-p {p['min_p']}, " if p.get("min_p") else "") + \
        f"temperature {p['temperature']}"
    lp = p["lpips"] or "none"
    lines = [
        f"# Evaluation of `{p['model']}`", "",
        "## Protocol", "",
        f"- data: {p['dataset']} / split `{p['split']}` / condition `{p['condition']}` at {p['resolution']} px",
        f"- conditions: the first {p['conditions']} items of the split; {p['samples_per_condition']} samples each; "
        f"sampling seed {p['seed']}; sampler: {sampler}",
        f"- reference reals: the first {p['reference_reals']} items of the split",
        f"- feature extractor: {p['extractor'] or 'none'} — {p['extractor_source']}",
        f"- condition predictor: {p.get('predictor') or 'none'} — {p.get('predictor_source') or 'not used'}",
        f"- LPIPS: {lp} ({'calibrated' if p['lpips_calibrated'] else 'not calibrated / not used'})",
        f"- reconstruction metrics over the first {p['recon_items']} items",
        f"- sampling took {p['sample_seconds']:.1f} s; commit {p['machine'].get('commit')}, "
        f"{p['machine'].get('cpu_count')} CPU core(s), CUDA {p['machine'].get('cuda')}", "",
        "## Metrics", "", "| metric | value |", "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in metric_rows(res)]
    lines += ["", "FD/KD are named after their extractor: \"FID\" only with the standard Inception weights; the FD "
              "floor is the same FD between two sets of real images of the split (what a sampler of real images "
              "would score; smaller sets give larger values). SWD: "
              "Karras et al.'s protocol, see metrics.json for the per-level values. LPIPS diversity: "
              + (res["metrics"]["lpips_diversity"].get("protocol", "n/a")) + "."]
    c = res["metrics"].get("control") or {}
    if c.get("available"):
        lines += ["", f"Controllability: {c['protocol']}; each of the {c['conditions']} x "
                  f"{c['samples_per_condition']} samples against its condition, and the real image of each "
                  "condition through the same judge (the oracle: the judge's own ceiling on this data)."]
    if res["metrics"]["shapes"].get("available"):
        lines += ["", "Shapes world: \"[fits the condition]\" marks the exact metrics that judge this condition: "
                  "palette accuracy / mask mIoU / mode coverage for spatial conditions (they fix each object's "
                  "pixels), scene accuracy / mode coverage for text and audio (they name class, size and 3 x 3 cell "
                  "only). "
                  "Scene accuracy: share of described objects found with their class's colour in their cell (mean "
                  "over images); scene precision / recall: right objects / found / described objects (pooled)."]
    return "\n".join(lines) + "\n"


def write_results(res: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    from ..train.common import write_json

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise IQVAEError(f"--out '{out}': cannot create the folder: {e.strerror or e}") from None
    write_json(out / "metrics.json", res)
    (out / "metrics.md").write_text(render_markdown(res), encoding="utf-8")
    return out / "metrics.json", out / "metrics.md"
