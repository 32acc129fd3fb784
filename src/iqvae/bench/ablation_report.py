"""Outputs of ``iqvae bench ablation``: ablation.md / .json / .png and the Fig. 6 trade-off (ablation_fig6.png).

Aggregation and the ordering rule: :mod:`iqvae.bench.ablation_stats`; the verdicts, probes and sweep sections:
:mod:`iqvae.bench.ablation_why`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .ablation_stats import _cell, mean_std, noise_sentence

# (key in the per-seed numbers, column title, higher is better?)
COLUMNS = [
    ("fd", "{fd}", False), ("swd", "SWD x1e3", False), ("lpips_diversity", "{lpips} diversity", True),
    ("nll_bits", "NLL bits/token (val)", False), ("palette_accuracy", "palette acc.", True),
    ("mask_miou", "mask mIoU", True), ("mode_coverage", "mode coverage", True),
    ("train_seconds", "train s (tok + T)", None),
]


def summarize(per_seed: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, float | None]]]:
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for name, rows in per_seed.items():
        keys = [k for k in rows[0] if k != "seed"] if rows else []
        out[name] = {}
        for k in keys:
            m, s = mean_std([r.get(k) for r in rows])
            out[name][k] = {"mean": m, "std": s, "n": sum(r.get(k) is not None for r in rows)}
    return out


def fig6_plot(points: list[dict[str, Any]], path: Path, system: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=110)
    for grid in sorted({p["grid"] for p in points}):
        ps = [p for p in points if p["grid"] == grid and p["nll_bits"] is not None]
        if not ps:
            continue
        (xm, xs), (ym, ys) = mean_std([p["one_minus_ssim"] for p in ps]), mean_std([p["nll_bits"] for p in ps])
        ax.errorbar([xm], [ym], xerr=[xs or 0], yerr=[ys or 0], fmt="o", capsize=3)
        ax.annotate(f"{grid}x{grid}", (xm, ym), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("reconstruction error: 1 - SSIM (val)")
    ax.set_ylabel("transformer NLL, bits/token (val)")
    ax.set_title(f"latent size trade-off ({system}; cf. Fig. 6)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def samples_grid(pipes: dict[str, Path], settings: Any, path: Path) -> Path:
    """condition | samples for the first ``grid_conditions`` test conditions, one row per system (seed 0)."""
    from ..data.config import build_dataset
    from ..data.preview import image_tile, render_tile, tile_size
    from ..evaluation.samples import draw_samples
    from ..pipeline import IQVAEPipeline
    from ..viz import grid_image

    rows, labels = [], []
    for name, d in pipes.items():
        pipe = IQVAEPipeline.from_pretrained(d)
        data = pipe.tokenizer.data_config
        test = build_dataset(data, "test")
        s = draw_samples(pipe, test, data.cond, num_conditions=settings.grid_conditions,
                         samples_per_condition=settings.samples, seed=settings.eval_seed, top_k=settings.top_k,
                         temperature=settings.temperature)
        tile = tile_size(pipe.resolution)
        row = []
        for i, c in enumerate(s.conds):
            row.append(render_tile(data.cond, c, pipe.cond_spec, tile))
            row.extend(image_tile(x, tile) for x in s.images[i])
        rows.append(row)
        labels.append(name)
    img = grid_image(rows, labels=labels, scale=1)
    img.save(path)
    return path


def invocations_sentence(entries: list[dict[str, Any]]) -> str:
    """The wall time of every invocation on the work folder (the first one trained the table's runs)."""
    if len(entries) < 2:
        return ""
    parts = []
    for i, e in enumerate(entries, 1):
        what = f"{len(e['systems'])} system(s) x {e['seeds']} seed(s)"
        if e.get("sweep_sgw"):
            what += f", sweep λ1 {e['sweep_sgw']} x sgw_on {e['sweep_sgw_on']}"
        parts.append(f"{i}. {e['wall_seconds'] / 60:.1f} min ({what}, {e['jobs']} worker(s), commit {e.get('commit')}, "
                     f"finished {e.get('finished')})")
    return "  Every invocation on this work folder, oldest first: " + "; ".join(parts) + "."


def write_outputs(out: Path, info: dict[str, Any], per_seed: dict[str, list[dict[str, Any]]],
                  pipes: dict[str, Path], fig6: list[dict[str, Any]], settings: Any,
                  sweep: list[dict[str, Any]] | None = None) -> list[Path]:
    from ..errors import IQVAEError
    from ..train.common import write_json
    from .ablation_runs import OURS_SYSTEM, SYSTEMS, TABLE3
    from .ablation_why import gs_lines, probe_lines, step_verdicts, sweep_lines

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise IQVAEError(f"--out '{out}': cannot create the folder: {e.strerror or e}") from None
    summary = summarize(per_seed)
    sweep = sweep or []
    write_json(out / "ablation.json", {"info": info, "per_seed": per_seed, "summary": summary, "fig6": fig6,
                                       "sweep": sweep})
    png = samples_grid(pipes, settings, out / "ablation.png")
    fig6_png = fig6_plot(fig6, out / "ablation_fig6.png", settings.fig6_system) if fig6 else None
    fd_name = info.get("fd_name")
    lp = info["lpips"] or "LPIPS"
    titles = {k: t.format(fd=fd_name or "FD", lpips=lp) for k, t, _ in COLUMNS}
    m = info["machine"]
    tok, gpt = info["tokenizer_config"], info["transformer_config"]
    lines = [
        f"# Ablation (Table 3 + sVQ + RQ) on the {info['world']} world, condition `{info['cond']}`", "",
        f"Budget `{info['budget']}` (preset `{info['preset']}`{'; overrides ' + ', '.join(info['set']) if info['set'] else ''}), "
        f"seeds {info['seeds']}, commit {m.get('commit')}, {m.get('cpu_count')} CPU core(s), CUDA {m.get('cuda')}, "
        f"torch {m.get('torch')}.  Wall time of the command: {info.get('wall_seconds', float('nan')) / 60:.1f} min "
        f"with {info.get('jobs', 1)} worker process(es) (runs reused from an earlier invocation count as 0)."
        + invocations_sentence(info.get("invocations") or []), "",
        f"Equal compute: every tokenizer {tok['train']['steps']} steps × batch {tok['train']['batch_size']} "
        f"(ch {tok['model']['ch']}, ch_mult {tok['model']['ch_mult']}, {tok['model']['num_codes']} codes × "
        f"{tok['model']['embed_dim']}), every transformer {gpt['train']['steps']} steps × batch "
        f"{gpt['train']['batch_size']} ({gpt['model']['n_layer']} × {gpt['model']['n_embd']}); "
        f"{tok['data']['train_size']} train scenes at {tok['data']['resolution']} px.  iq-vr and iq-vr+gs share each "
        "seed's tokenizer (only stage 2 differs); the RQ row has rq_depth codes per position, so a longer sequence.",
        "",
        "Our additions (docs/design.md): every system has "
        + (", ".join(f"`{a}`" for a in info.get("shared_additions", [])) or "none of them")
        + " (the preset's, identical for all) and no other"
        + (f"; the row `{OURS_SYSTEM}` is the paper's full model (iq-vr+gs) with the `small` preset's additions: "
           + ", ".join(f"`{a}`" for a in info.get("ours_additions", []) if a not in info.get("shared_additions", []))
           + ", at the same sizes, steps and batch." if OURS_SYSTEM in per_seed else "."),
        "",
        f"Evaluation: the first {settings.conditions} test conditions × {settings.samples} samples, sampling seed "
        f"{settings.eval_seed}, top-k {settings.top_k}, temperature {settings.temperature:g}; FD/KD extractor: {info['extractor_source']}; "
        + (f"LPIPS: {info['lpips']}." if info["lpips"] else f"LPIPS diversity: n/a — {info['lpips_reason']}."),
        "Cells: mean ± sample std over seeds.  Train time = tokenizer + transformer seconds of the run (a shared "
        "tokenizer counts for each system using it).", "",
        "| system | " + " | ".join(titles[k] for k, _, _ in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for name in per_seed:
        lines.append(f"| {name} ({SYSTEMS[name].label}) | "
                     + " | ".join(_cell(summary[name].get(k, {"mean": None, "std": None})) for k, _, _ in COLUMNS) + " |")
    lines += ["", "## Is the ordering of Table 3 above the noise?", "",
              "An ordering is claimed only when the difference of means exceeds the combined std "
              "sqrt(std_a² + std_b²) over seeds.", ""]
    rows3 = [n for n in TABLE3 if n in per_seed]
    for a, b in zip(rows3, rows3[1:]):
        parts = [noise_sentence(a, b, summary, k, titles[k], better) for k, _, better in COLUMNS if better is not None]
        lines.append(f"- **{a} → {b}**: " + "; ".join(parts) + ".")
    if len(rows3) < 2:
        lines.append("- fewer than two Table-3 rows were run; nothing to compare.")
    lines += ["", *step_verdicts(rows3, summary, titles, sweep), ""]
    lines += [f"Samples: `{png.name}` (condition | {settings.samples} samples, per system, seed 0, the first "
              f"{settings.grid_conditions} test conditions).", ""]
    lines += probe_lines(per_seed, summary, settings)
    lines += gs_lines(per_seed, summary)
    lines += sweep_lines(sweep, per_seed, summary, titles)
    if fig6:
        lines += ["## NLL vs reconstruction error (cf. Fig. 6)", "",
                  f"System `{settings.fig6_system}`, latent grids {settings.fig6_grids} (number of ch_mult levels), "
                  f"seeds {sorted({p['seed'] for p in fig6})}; x = 1 − SSIM of the tokenizer's validation "
                  f"reconstructions, y = the transformer's validation NLL. Plot: `{fig6_png.name}`.", "",
                  "| grid | tokens | 1 − SSIM | PSNR | NLL bits/token |", "|---|---|---|---|---|"]
        for grid in settings.fig6_grids:
            ps = [p for p in fig6 if p["grid"] == grid]
            cells = [mean_std([p[k] for p in ps]) for k in ("one_minus_ssim", "psnr", "nll_bits")]
            lines.append(f"| {grid}x{grid} | {ps[0]['tokens']} | "
                         + " | ".join(_cell({"mean": mv, "std": sv}) for mv, sv in cells) + " |")
    (out / "ablation.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [out / "ablation.md", out / "ablation.json", png] + ([fig6_png] if fig6_png else [])
