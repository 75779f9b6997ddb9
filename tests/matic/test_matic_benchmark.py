"""Benchmark bookkeeping, the random-forest baseline and the metrics, on tiny data."""

import numpy as np
import pytest

from triptych.matic.baselines import morgan_fingerprints, random_forest_probs
from triptych.matic.benchmark import BenchConfig, merge_results, results_markdown
from triptych.matic.data import MolTable
from triptych.matic.metrics import evaluate, task_metrics


def test_metrics_mask_missing_labels():
    y = np.array([1, 0, np.nan, 1, 0])
    p = np.array([0.9, 0.2, 0.99, 0.4, 0.6])
    m = task_metrics(y, p)
    assert m["n"] == 4 and m["roc_auc"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.5) and m["precision"] == pytest.approx(0.5) and m["recall"] == 0.5
    assert np.isnan(task_metrics(np.array([1.0, 1.0]), np.array([0.2, 0.3]))["roc_auc"])  # one class only


def test_random_forest_learns_a_substructure_rule():
    acids = ["CC(=O)O", "CCC(=O)O", "CCCC(=O)O", "OC(=O)c1ccccc1", "CCCCC(=O)O", "OC(=O)CCc1ccccc1"]
    others = ["CCO", "CCCO", "c1ccccc1", "CCN", "CCCCN", "c1ccccc1CN"]
    train = MolTable(acids[:4] + others[:4], np.array([[1]] * 4 + [[0]] * 4, dtype=float), ["acid"])
    test = MolTable(acids[4:] + others[4:], np.array([[1], [1], [0], [0]], dtype=float), ["acid"])
    probs = random_forest_probs(train, test, seed=0, n_trees=50)
    assert evaluate(test.labels, probs, ["acid"])["acid"]["roc_auc"] == 1.0
    assert (
        morgan_fingerprints(["CCO", "bad("]).shape == (2, 2048) and morgan_fingerprints(["bad("]).sum() == 0
    )


def test_merge_and_markdown():
    a = {
        "datasets": {"d": {"ple": {"t": {"roc_auc": [0.8], "pr_auc": [0.7]}}}},
        "seconds": {"d": {"ple": 10.0}},
    }
    b = {
        "datasets": {"d": {"ple": {"t": {"roc_auc": [0.9], "pr_auc": [0.6]}}}},
        "seconds": {"d": {"ple": 5.0}},
    }
    m = merge_results([a, b])
    assert m["datasets"]["d"]["ple"]["t"] == {"roc_auc": [0.8, 0.9], "pr_auc": [0.7, 0.6]}
    assert m["seconds"]["d"]["ple"] == 15.0
    md = results_markdown(m, BenchConfig())
    assert "| ple | 0.850 ± 0.071 | 0.650 ± 0.071 | 15.000 |" in md
