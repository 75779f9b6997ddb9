"""Multi-model causal analysis: how far from the RoI, with which sign and how concentrated each
model's causal support is, and whether architectures differ.

Per explanation (one model, one RoI):

- ``share_within``: Σ_{dist(p,R) ≤ d} |ATE_p| / Σ_p |ATE_p|, the locality of the support;
- ``support_radius``: the smallest r with share_within(r) ≥ q (q = 0.9), in pixels;
- ``positive`` / ``negative`` / ``zero``: shares of the estimated blocks with ATE > 0, < 0, = 0;
- ``concentration``: 1 − H(p)/log K of the component ranking, p_j = |ATE_j| / Σ|ATE|
  (1 = one component carries all the effect, 0 = all equal).

Between models: a Friedman test per statistic with the RoIs as blocks (the same RoIs are
explained for every model), then pairwise Wilcoxon signed-rank tests with Holm's
correction. Within one model: a Kruskal–Wallis test across input images (RoIs grouped by
the image they lie on).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import stats
from scipy.ndimage import distance_transform_edt

STATISTICS = ("share_within", "support_radius", "positive", "negative", "zero", "concentration")


def roi_distance(roi_mask: np.ndarray) -> np.ndarray:
    """dist(p, R): Euclidean distance of every pixel to the nearest RoI pixel (0 inside)."""
    return distance_transform_edt(~roi_mask)


def share_within(ate: np.ndarray, distance: np.ndarray, d: float) -> float:
    """Σ_{dist ≤ d} |ATE| / Σ |ATE| (nan for an all-zero map)."""
    mass = np.abs(ate)
    total = mass.sum()
    return float(mass[distance <= d].sum() / total) if total > 0 else float("nan")


def support_radius(ate: np.ndarray, distance: np.ndarray, q: float = 0.9) -> float:
    """r_q = min{r : share_within(r) ≥ q}, the radius holding a share q of |ATE| (nan for a zero map)."""
    mass = np.abs(ate).ravel()
    total = mass.sum()
    if total <= 0:
        return float("nan")
    order = np.argsort(distance.ravel(), kind="stable")
    cum = np.cumsum(mass[order]) / total
    return float(distance.ravel()[order][np.searchsorted(cum, q - 1e-12)])


def sign_shares(block_ate: np.ndarray) -> tuple[float, float, float]:
    """(positive, negative, zero) shares of the estimated blocks' ATEs."""
    a = np.asarray(block_ate, dtype=float)
    if a.size == 0:
        return float("nan"), float("nan"), float("nan")
    return float((a > 0).mean()), float((a < 0).mean()), float((a == 0).mean())


def concentration(component_ate: Sequence[float]) -> float:
    """1 − H(p)/log K with p_j = |ATE_j| / Σ|ATE| (nan without effects or with one component)."""
    a = np.abs(np.asarray(component_ate, dtype=float))
    if a.size < 2 or a.sum() <= 0:
        return float("nan")
    p = a / a.sum()
    p = p[p > 0]
    return float(1 + (p * np.log(p)).sum() / np.log(a.size))


def explanation_statistics(
    ate: np.ndarray,
    roi_mask: np.ndarray,
    block_ate: Sequence[float],
    component_ate: Sequence[float] | None = None,
    *,
    d: float = 16.0,
    q: float = 0.9,
) -> dict[str, float]:
    """All statistics of one explanation (see the module docstring)."""
    dist = roi_distance(roi_mask)
    pos, neg, zero = sign_shares(np.asarray(block_ate))
    return {
        "share_within": share_within(ate, dist, d),
        "support_radius": support_radius(ate, dist, q),
        "positive": pos,
        "negative": neg,
        "zero": zero,
        "concentration": concentration(component_ate) if component_ate is not None else float("nan"),
    }


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


@dataclass
class TestResult:
    """One statistic's test: name of the test, its statistic and p-value, and post-hoc pairs."""

    statistic: str
    test: str
    value: float
    p: float
    n: int
    pairs: list[dict[str, float | str]]

    def row(self, alpha: float = 0.05) -> dict[str, float | str | int]:
        sig = [f"{q['a']}≠{q['b']}" for q in self.pairs if q["p_holm"] < alpha]
        return {
            "statistic": self.statistic,
            "test": self.test,
            "value": self.value,
            "p": self.p,
            "n": self.n,
            "significant": self.p < alpha,
            "different pairs (Holm)": ", ".join(sig),
        }


def _complete_rows(table: Mapping[str, Sequence[float]]) -> tuple[list[str], np.ndarray]:
    """Models and an (n_rois, n_models) array without RoIs that have a nan for any model."""
    names = list(table)
    arr = np.column_stack([np.asarray(table[m], dtype=float) for m in names])
    return names, arr[np.isfinite(arr).all(1)]


def between_models(table: Mapping[str, Sequence[float]], statistic: str) -> TestResult:
    """Friedman (≥ 3 models) or Wilcoxon (2) over paired RoIs; Holm-corrected Wilcoxon pairs."""
    names, arr = _complete_rows(table)
    n = arr.shape[0]
    if n < 3 or len(names) < 2 or np.ptp(arr) == 0:
        return TestResult(statistic, "none (too few RoIs or no variation)", float("nan"), float("nan"), n, [])
    pairs, raw = [], []
    for a, b in combinations(range(len(names)), 2):
        diff = arr[:, a] - arr[:, b]
        p = 1.0 if np.all(diff == 0) else float(stats.wilcoxon(arr[:, a], arr[:, b]).pvalue)
        raw.append(p)
        pairs.append({"a": names[a], "b": names[b], "median_diff": float(np.median(diff)), "p": p})
    for pair, adj in zip(pairs, holm(raw), strict=True):
        pair["p_holm"] = adj
    if len(names) == 2:
        return TestResult(statistic, "Wilcoxon signed-rank", float("nan"), pairs[0]["p"], n, pairs)
    res = stats.friedmanchisquare(*arr.T)
    return TestResult(statistic, "Friedman", float(res.statistic), float(res.pvalue), n, pairs)


def across_inputs(values: Sequence[float], groups: Sequence[str], statistic: str) -> TestResult:
    """Kruskal–Wallis over input images (RoIs grouped by image) for one model."""
    v = np.asarray(values, dtype=float)
    g = np.asarray(groups)
    keep = np.isfinite(v)
    samples = [v[keep & (g == name)] for name in dict.fromkeys(g.tolist())]
    samples = [s for s in samples if s.size > 0]
    n = int(sum(s.size for s in samples))
    if len(samples) < 2 or n <= len(samples) or np.ptp(v[keep]) == 0:
        return TestResult(
            statistic, "none (too few images or no variation)", float("nan"), float("nan"), n, []
        )
    res = stats.kruskal(*samples)
    return TestResult(statistic, "Kruskal-Wallis", float(res.statistic), float(res.pvalue), n, [])


def summarise(per_model: Mapping[str, Sequence[Mapping[str, float]]]) -> list[dict[str, float | str]]:
    """Table rows: per model, the median [IQR] of each statistic over its RoIs."""
    rows = []
    for model, records in per_model.items():
        row: dict[str, float | str] = {"model": model, "rois": float(len(records))}
        for s in STATISTICS:
            v = np.array([r[s] for r in records], dtype=float)
            v = v[np.isfinite(v)]
            row[s] = (
                f"{np.median(v):.3g} [{np.percentile(v, 25):.3g}, {np.percentile(v, 75):.3g}]"
                if v.size
                else "n/a"
            )
        rows.append(row)
    return rows


def radial_profile(ate: np.ndarray, roi_mask: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Mean |ATE| per distance ring [e_i, e_{i+1}) from the RoI (nan for an empty ring)."""
    dist = roi_distance(roi_mask)
    mass = np.abs(ate)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        ring = (dist >= lo) & (dist < hi)
        out.append(float(mass[ring].mean()) if ring.any() else float("nan"))
    return np.array(out)
