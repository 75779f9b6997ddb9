"""Per-task classification metrics on labelled molecules only: ROC-AUC, PR-AUC, accuracy, precision, recall, MCC."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

METRICS = ("roc_auc", "pr_auc", "accuracy", "precision", "recall", "mcc")


def task_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Metrics of one task, ignoring molecules whose label (NaN) or prediction (NaN) is missing.

    Threshold metrics use ``threshold`` (0.5, as in the paper); ranking metrics are NaN
    when only one class is present.
    """
    keep = ~np.isnan(y_true) & ~np.isnan(prob)
    y, p = y_true[keep].astype(int), prob[keep]
    out = {"n": int(keep.sum()), "n_active": int(y.sum())}
    two_classes = 0 < y.sum() < len(y)
    out["roc_auc"] = float(skm.roc_auc_score(y, p)) if two_classes else float("nan")
    out["pr_auc"] = float(skm.average_precision_score(y, p)) if two_classes else float("nan")
    hard = (p >= threshold).astype(int)
    out["accuracy"] = float(skm.accuracy_score(y, hard)) if len(y) else float("nan")
    out["precision"] = float(skm.precision_score(y, hard, zero_division=0))
    out["recall"] = float(skm.recall_score(y, hard, zero_division=0))
    out["mcc"] = float(skm.matthews_corrcoef(y, hard)) if len(y) else float("nan")
    return out


def evaluate(labels: np.ndarray, probs: np.ndarray, tasks: list[str]) -> dict[str, dict[str, float]]:
    """``{task: metrics}`` for an ``(n, T)`` label matrix (NaN = missing) and matching probabilities."""
    return {t: task_metrics(labels[:, j], probs[:, j]) for j, t in enumerate(tasks)}
