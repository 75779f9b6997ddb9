"""Probability calibration per task, fitted on validation molecules: temperature or isotonic; ECE and reliability.

Temperature scaling (Guo et al. 2017) rescales each task's logit by one number fitted by
maximum likelihood on the validation set,

    p' = sigmoid(logit(p) / T_t),   T_t = argmin_T  -sum_i log Bernoulli(y_i | sigmoid(z_i / T)),

which keeps the ranking (ROC-AUC unchanged). Isotonic regression fits a monotone step
map p -> p' per task (scikit-learn), which can tie scores. The expected calibration
error over ``B`` equal-width bins is

    ECE = sum_b (n_b / n) |mean_{i in b} y_i - mean_{i in b} p_i|.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit
from sklearn.isotonic import IsotonicRegression

METHODS = ("temperature", "isotonic")
_EPS = 1e-6


def _labelled(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = ~np.isnan(y) & ~np.isnan(p)
    return y[keep], p[keep]


def fit_temperature(y: np.ndarray, p: np.ndarray) -> float:
    """The temperature ``T`` minimising validation log loss of ``sigmoid(logit(p) / T)`` (NaN labels ignored)."""
    y, p = _labelled(y, p)
    z = logit(np.clip(p, _EPS, 1 - _EPS))

    def nll(log_t: float) -> float:
        q = np.clip(expit(z / np.exp(log_t)), _EPS, 1 - _EPS)
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))

    if len(y) == 0:
        return 1.0
    return float(np.exp(minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded").x))


@dataclass
class Calibrator:
    """Per-task calibration maps fitted on validation predictions; ``apply`` keeps NaN rows NaN."""

    method: str = "temperature"
    temperatures: list[float] = field(default_factory=list)
    isotonic: list[IsotonicRegression | None] = field(default_factory=list)

    def fit(self, labels: np.ndarray, probs: np.ndarray) -> Calibrator:
        """Fit on ``(n, T)`` validation labels (NaN = missing) and the model's probabilities."""
        if self.method not in METHODS:
            raise ValueError(f"calibration {self.method!r} not in {METHODS}")
        self.temperatures, self.isotonic = [], []
        for j in range(labels.shape[1]):
            if self.method == "temperature":
                self.temperatures.append(fit_temperature(labels[:, j], probs[:, j]))
            else:
                y, p = _labelled(labels[:, j], probs[:, j])
                iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
                self.isotonic.append(iso.fit(p, y) if len(np.unique(y)) == 2 else None)
        return self

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated ``(n, T)`` probabilities."""
        out = np.array(probs, dtype=np.float64, copy=True)
        for j in range(out.shape[1]):
            ok = ~np.isnan(out[:, j])
            if self.method == "temperature":
                z = logit(np.clip(out[ok, j], _EPS, 1 - _EPS))
                out[ok, j] = expit(z / self.temperatures[j])
            elif self.isotonic[j] is not None:
                out[ok, j] = self.isotonic[j].predict(out[ok, j])
        return out


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Equal-width bins of predicted probability: ``{lo, hi, n, mean_p, frac_pos}`` for each non-empty bin."""
    y, p = _labelled(y, p)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        m = which == b
        if m.any():
            rows.append(
                {
                    "lo": float(edges[b]),
                    "hi": float(edges[b + 1]),
                    "n": int(m.sum()),
                    "mean_p": float(p[m].mean()),
                    "frac_pos": float(y[m].mean()),
                }
            )
    return rows


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE over ``bins`` equal-width bins (labelled molecules only); NaN when none."""
    rows = reliability(y, p, bins)
    n = sum(r["n"] for r in rows)
    if n == 0:
        return float("nan")
    return float(sum(r["n"] * abs(r["frac_pos"] - r["mean_p"]) for r in rows) / n)


def plot_reliability(curves: dict[str, list[dict[str, float]]], path: str, title: str = "") -> None:
    """A reliability diagram (observed positive rate against mean predicted probability), one line per curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    for name, rows in curves.items():
        ax.plot([r["mean_p"] for r in rows], [r["frac_pos"] for r in rows], marker="o", label=name)
    ax.set(xlabel="mean predicted probability", ylabel="observed fraction active", xlim=(0, 1), ylim=(0, 1))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
