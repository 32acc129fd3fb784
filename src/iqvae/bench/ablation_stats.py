"""Aggregation and the ordering rule of ``iqvae bench ablation``: mean and sample standard deviation (n - 1
denominator) over seeds (with one seed the std is undefined and no ordering is claimed); an ordering of two rows is
claimed only when the difference of their means exceeds the combined std ``sqrt(std_a^2 + std_b^2)``, and it is the
paper's direction or against it."""

from __future__ import annotations

import math
from typing import Any


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return None, None
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def _cell(e: dict[str, float | None]) -> str:
    if e["mean"] is None:
        return "n/a"
    return f"{e['mean']:.4g}" + (f" ± {e['std']:.2g}" if e["std"] is not None else "")


def direction(a: str, b: str, summary: dict[str, Any], key: str, higher_better: bool | None) -> str | None:
    """``holds`` (b better than a above the noise), ``reversed`` (worse above the noise), ``noise`` (within it), or
    None (a value is missing or a std is undefined).  ``higher_better=None``: ``holds`` means b > a."""
    ea, eb = summary[a].get(key), summary[b].get(key)
    if not ea or not eb or ea["mean"] is None or eb["mean"] is None or ea["std"] is None or eb["std"] is None:
        return None
    diff = eb["mean"] - ea["mean"]
    if abs(diff) <= math.sqrt(ea["std"] ** 2 + eb["std"] ** 2):
        return "noise"
    return "holds" if (diff > 0) == (higher_better is not False) else "reversed"


VERDICT = {"holds": "exceeds the noise, the paper's direction", "reversed": "exceeds the noise, AGAINST the paper's "
           "direction", "noise": "within the noise, no ordering claimed"}


def noise_sentence(a: str, b: str, summary: dict[str, Any], key: str, title: str,
                   higher_better: bool | None = None) -> str:
    ea, eb = summary[a].get(key), summary[b].get(key)
    if not ea or not eb or ea["mean"] is None or eb["mean"] is None:
        return f"{title}: n/a"
    diff = eb["mean"] - ea["mean"]
    if ea["std"] is None or eb["std"] is None:
        return f"{title}: {ea['mean']:.4g} → {eb['mean']:.4g} (one seed: no ordering claimed)"
    noise = math.sqrt(ea["std"] ** 2 + eb["std"] ** 2)
    verdict = ("exceeds the noise" if abs(diff) > noise else VERDICT["noise"]) if higher_better is None else \
        VERDICT[direction(a, b, summary, key, higher_better) or "noise"]
    return f"{title}: {ea['mean']:.4g} → {eb['mean']:.4g} (Δ {diff:+.3g}, combined std {noise:.2g}: {verdict})"
