"""The "why" sections of ablation.md: a verdict per Table 3 step, the probes of every system
(:mod:`iqvae.bench.ablation_probes`), Gumbel sampling's replaced share and exposure gap, and the λ1 / ``sgw_on``
sweep.  Each function returns markdown lines (none when its numbers were not measured)."""

from __future__ import annotations

from typing import Any

from .ablation_stats import _cell, direction, mean_std, noise_sentence

# The paper's Table 3 (FID on ADE20K), the direction each step claims
PAPER_FID = {"vqgan-pair": 35.50, "iq-none": 31.88, "iq-vr": 31.41, "iq-vr+gs": 29.77}
# (key, title, higher is better?) of the probes
PROBES = [
    ("sgw_pre", "SGW(c, x) pre", False), ("sgw_pre_scaled", "SGW pre, scale-free", False),
    ("rms_cond", "RMS z_c", None), ("rms_img", "RMS z_x", None), ("sgw_post", "SGW(c, x) post", False),
    ("img_usage", "image codes used", True), ("cond_usage", "cond. codes used", True),
    ("img_perplexity", "image code perplexity", True), ("recon_palette", "recon. palette acc.", True),
    ("code_colour_purity", "image code colour purity", True), ("codes_per_colour", "image codes per colour", False),
    ("nll_tf", "NLL TF prefix", False), ("nll_sampled", "NLL sampled prefix", False),
    ("exposure_gap", "exposure gap (bits)", False), ("prefix_error", "prefix tokens changed", None),
    ("gs_replaced", "GS replaced share", None), ("gs_candidates", "GS candidate share", None),
]
SWEEP_COLUMNS = [("sgw_pre", "SGW pre"), ("sgw_pre_scaled", "SGW pre, scale-free"), ("sgw_post", "SGW post"),
                 ("img_usage", "image codes used"), ("cond_usage", "cond. codes used"),
                 ("recon_palette", "recon. palette acc."), ("code_colour_purity", "image code colour purity"),
                 ("codes_per_colour", "image codes per colour"), ("nll_bits", "NLL bits/token"),
                 ("fd", "FD"), ("palette_accuracy", "palette acc."), ("mask_miou", "mask mIoU"),
                 ("mode_coverage", "mode coverage")]
HEADLINE = [("fd", False), ("palette_accuracy", True), ("mask_miou", True), ("mode_coverage", True)]


def step_verdicts(rows3: list[str], summary: dict[str, Any], titles: dict[str, str],
                  sweep: list[dict[str, Any]]) -> list[str]:
    """One line per Table 3 step: on which headline metrics the paper's direction holds above the noise."""
    if len(rows3) < 2:
        return []
    out = ["**Verdict per step** (paper: FID on ADE20K; here the headline metrics, ordering rule as above):", ""]
    for a, b in zip(rows3, rows3[1:]):
        by: dict[str, list[str]] = {"holds": [], "reversed": [], "noise": [], None: []}
        for key, better in HEADLINE:
            by[direction(a, b, summary, key, better)].append(titles.get(key, key))
        parts = [f"holds on {', '.join(by['holds']) or 'no metric'}"]
        if by["reversed"]:
            parts.append(f"reversed on {', '.join(by['reversed'])}")
        if by["noise"]:
            parts.append(f"within the noise on {', '.join(by['noise'])}")
        if by[None]:
            parts.append(f"not decidable on {', '.join(by[None])} (one seed or missing)")
        line = f"- {a} → {b} (paper FID {PAPER_FID[a]:.2f} → {PAPER_FID[b]:.2f}): " + "; ".join(parts) + "."
        if by["reversed"] or by["noise"] or not by["holds"]:
            if (a, b) == ("iq-none", "iq-vr"):
                line += (" Why: see the λ1 / sgw_on sweep below." if sweep else
                         " Why: not swept in this run (`--sweep-sgw 0.1,0.3,1,3,10` trains it at seed 0).")
            elif (a, b) == ("vqgan-pair", "iq-none"):
                line += (" Why: compare the probes' reconstruction palette accuracy, image code colour purity and "
                         "codes per colour: a joint decoder also sees the condition, so its image codes need not "
                         "name absolute colours, which the transformer must then learn per condition.")
            elif (a, b) == ("iq-vr", "iq-vr+gs"):
                line += " Why: see the replaced share and the exposure gap below."
        out.append(line)
    return out


def _has(per_seed: dict[str, list[dict[str, Any]]], key: str) -> bool:
    return any(r.get(key) is not None for rows in per_seed.values() for r in rows)


def probe_lines(per_seed: dict[str, list[dict[str, Any]]], summary: dict[str, Any], settings: Any) -> list[str]:
    if not _has(per_seed, "sgw_pre"):
        return []
    cols = [(k, t) for k, t, _ in PROBES if _has(per_seed, k)]
    scenes = max(int(r.get("probe_scenes") or 0) for rows in per_seed.values() for r in rows)
    seqs = max(int(r.get("probe_sequences") or 0) for rows in per_seed.values() for r in rows)
    lines = ["## Probes: what the regulariser did to the latents, and exposure to the model's own samples", "",
             f"Latents: the first {scenes} test scenes; sliced GW (Eq. 2) between each scene's "
             f"condition and image latents on {settings.probe_projections} fixed directions, before (pre) and after "
             "(post) quantization; GW shrinks with the latents' scale (degree 4), so RMS (distance to the scene's "
             "centroid) and the value after dividing each set by its RMS (scale-free) are given too.  Code usage and "
             "perplexity: the evaluation's reconstructions; so are the reconstructions' palette accuracy (the "
             "samples' ceiling), the share of object cells whose image code's most frequent colour is their own "
             "(colour purity) and the effective number of codes per object colour.  Exposure: NLL (bits/token) of the first "
             f"{seqs} validation sequences with teacher-forced prefixes vs prefixes in which every "
             "token is the model's own draw from its teacher-forced prediction; the gap is their difference.  GS "
             "shares: on the steps that applied Gumbel sampling, over the whole run (transformer.csv).", "",
             "| system | " + " | ".join(t for _, t in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in per_seed:
        lines.append(f"| {name} | " + " | ".join(_cell(summary[name].get(k, {"mean": None, "std": None}))
                                              for k, _ in cols) + " |")
    return lines + [""]


def gs_lines(per_seed: dict[str, list[dict[str, Any]]], summary: dict[str, Any]) -> list[str]:
    a, b = "iq-vr", "iq-vr+gs"
    if a not in per_seed or b not in per_seed or not _has({b: per_seed[b]}, "exposure_gap"):
        return []
    rep = summary[b].get("gs_replaced", {"mean": None, "std": None})
    last = mean_std([r.get("gs_replaced_last") for r in per_seed[b]])
    cand = summary[b].get("gs_candidates", {"mean": None, "std": None})
    lines = ["## +GS: replaced positions and the exposure gap", "",
             f"On its Gumbel steps, iq-vr+gs replaced {_cell(rep)} of the image positions (candidates, R > threshold: "
             f"{_cell(cand)}; in the last logged window {_cell({'mean': last[0], 'std': last[1]})}).  Gumbel "
             "sampling trains the model on prefixes holding its own samples, so its direction is a smaller exposure "
             "gap and a lower NLL under sampled prefixes:", ""]
    for key, title, better in (("exposure_gap", "exposure gap (bits/token)", False),
                               ("nll_sampled", "NLL under sampled prefixes", False),
                               ("nll_tf", "NLL under teacher-forced prefixes", False)):
        lines.append(f"- {noise_sentence(a, b, summary, key, title, better)}.")
    return lines + [""]


def _rank(v: list[float]) -> list[float]:
    order = sorted(range(len(v)), key=lambda i: v[i])
    r = [0.0] * len(v)
    i = 0
    while i < len(order):  # ties share their mean rank
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2
        i = j + 1
    return r


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson on ranks, ties averaged); None for fewer than 3 points or no spread."""
    if len(x) < 3 or len(x) != len(y):
        return None
    rx, ry = _rank(x), _rank(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / (sxx * syy) ** 0.5


def sweep_lines(sweep: list[dict[str, Any]], per_seed: dict[str, list[dict[str, Any]]], summary: dict[str, Any],
                titles: dict[str, str]) -> list[str]:
    if not sweep:
        return []
    ref = next((r for r in per_seed.get("iq-none", []) if r["seed"] == 0), None)
    rows = ([{"name": "iq-none (seed 0)", "sgw_weight": 0.0, "sgw_on": "—", **ref}] if ref else []) \
        + sorted(sweep, key=lambda r: (r["sgw_on"], r["sgw_weight"]))
    cols = [(k, titles.get(k, t)) for k, t in SWEEP_COLUMNS]
    lines = ["## Why IQ(None) → IQ(VR): the λ1 / sgw_on sweep (seed 0)", "",
             "iq-vr with λ1 = `loss.sgw_weight` and `model.sgw_on` varied, stage 2 teacher-forced as in the iq-vr row, "
             "one seed; the probes as above.  iq-none is λ1 = 0 without the regulariser's computation.", "",
             "| run | λ1 | sgw_on | " + " | ".join(t for _, t in cols) + " |", "|---" * (len(cols) + 3) + "|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['sgw_weight']:g} | {r['sgw_on']} | "
                     + " | ".join("n/a" if r.get(k) is None else f"{r[k]:.4g}" for k, _ in cols) + " |")
    lines += ["", "What the sweep found (rank correlation ρ with λ1 over the points of each sgw_on; the best point "
              "against iq-none's mean ± std over the bench's seeds):", ""]
    for on in sorted({r["sgw_on"] for r in sweep}):
        pts = [r for r in sweep if r["sgw_on"] == on]
        parts = []
        for key in ("sgw_pre", "sgw_pre_scaled", "img_usage", "code_colour_purity", "nll_bits", "palette_accuracy",
                    "fd"):
            xy = [(r["sgw_weight"], r[key]) for r in pts if r.get(key) is not None]
            rho = spearman([x for x, _ in xy], [y for _, y in xy])
            parts.append(f"{titles.get(key, dict(SWEEP_COLUMNS).get(key, key))} ρ = "
                         + ("n/a" if rho is None else f"{rho:+.2f}"))
        lines.append(f"- sgw_on = {on} ({len(pts)} points): " + "; ".join(parts) + ".")
    for key, better in (("palette_accuracy", True), ("fd", False)):
        pts = [r for r in sweep if r.get(key) is not None]
        base = summary.get("iq-none", {}).get(key)
        if not pts:
            continue
        best = (max if better else min)(pts, key=lambda r: r[key])
        text = (f"- best {titles.get(key, key)}: {best[key]:.4g} at λ1 = {best['sgw_weight']:g}, sgw_on = "
                f"{best['sgw_on']}")
        if base and base.get("mean") is not None:
            if base.get("std") is None:
                text += f"; iq-none {base['mean']:.4g} (one seed: no comparison claimed)"
            else:
                d = best[key] - base["mean"]
                above = abs(d) > base["std"]
                good = (d > 0) == better
                text += (f"; iq-none {base['mean']:.4g} ± {base['std']:.2g}: "
                         + ("better than iq-none beyond its seed std" if above and good else
                            "worse than iq-none beyond its seed std" if above else "within iq-none's seed std"))
        lines.append(text + ".")
    return lines + [""]
