"""Our fingerprint PLE, deep-ensemble statistics and calibration, on data made here (seconds)."""

import numpy as np
import pytest
import torch
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from triptych.matic.calibration import Calibrator, expected_calibration_error, fit_temperature, reliability
from triptych.matic.ensemble import Ensemble, member_stats
from triptych.matic.fingerprint_model import (
    FingerprintPLE,
    FitConfig,
    fingerprint_logits,
    fit_fingerprint_ple,
)


def test_fingerprint_ple_forward_shapes_and_gates_are_softmax():
    torch.manual_seed(0)
    model = FingerprintPLE(n_tasks=2, in_dim=64, hidden=16).eval()
    logits, gates = model(torch.rand(5, 64))
    assert logits.shape == (5, 2)
    assert len(gates) == 2 and all(g.shape == (5, 2) for g in gates)  # {private, shared} per task
    for g in gates:
        torch.testing.assert_close(g.sum(dim=1), torch.ones(5))
    assert model.gate_experts == [[1, 0], [2, 0]]  # private first, then the shared expert


def test_fingerprint_ple_learns_a_planted_bit_and_ignores_missing_labels():
    rng = np.random.default_rng(0)
    x = (rng.random((300, 32)) < 0.3).astype(np.float32)
    y = np.stack([x[:, 3], 1 - x[:, 7]], axis=1).astype(float)  # task 0: bit 3; task 1: not bit 7
    y[rng.random(y.shape) < 0.3] = np.nan  # a third of the labels unmeasured
    model, info = fit_fingerprint_ple(
        x[:200], y[:200], x[200:250], y[200:250], FitConfig(max_epochs=40, patience=40, seed=1)
    )
    p = expit(fingerprint_logits(model, x[250:]))
    assert info["best_epoch"] >= 1
    assert ((p[:, 0] > 0.5) == (x[250:, 3] > 0)).mean() > 0.9
    assert ((p[:, 1] > 0.5) == (x[250:, 7] == 0)).mean() > 0.9


def test_member_stats_mean_and_sd_shapes_and_values():
    probs = np.array([[[0.2, 0.9]], [[0.4, 0.9]], [[0.6, 0.9]]])  # 3 members, 1 molecule, 2 tasks
    mean, sd = member_stats(probs)
    assert mean.shape == sd.shape == (1, 2)
    np.testing.assert_allclose(mean, [[0.4, 0.9]])
    np.testing.assert_allclose(sd, [[0.2, 0.0]], atol=1e-12)
    one_mean, one_sd = member_stats(probs[:1])
    np.testing.assert_array_equal(one_sd, 0.0)
    np.testing.assert_allclose(one_mean, probs[0])
    with pytest.raises(ValueError):
        member_stats(np.zeros((2, 3)))


class _Fixed:
    """A stand-in member that returns fixed probabilities (``Ensemble`` only calls ``predict_proba``)."""

    def __init__(self, p: np.ndarray) -> None:
        self.p, self.tasks = p, ["a", "b"]

    def predict_proba(self, smiles, batch_size=256):
        return self.p[: len(smiles)]


def test_ensemble_predict_gives_mean_and_sd_per_task():
    rng = np.random.default_rng(0)
    members = [_Fixed(rng.random((4, 2))) for _ in range(5)]
    mean, sd = Ensemble(members).predict(["C"] * 4)
    stacked = np.stack([m.p for m in members])
    assert mean.shape == sd.shape == (4, 2)
    np.testing.assert_allclose(mean, stacked.mean(0))
    np.testing.assert_allclose(sd, stacked.std(0, ddof=1))


def _miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True probabilities ``sigmoid(z)``, reported over-confident as ``sigmoid(3 z)`` (NaN labels mixed in)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < expit(z)).astype(float)
    y[rng.random(n) < 0.1] = np.nan
    return y[:, None], expit(3 * z)[:, None]


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_calibration_fitted_on_validation_reduces_test_ece(method):
    y_val, p_val = _miscalibrated(2000, 0)
    y_test, p_test = _miscalibrated(2000, 1)
    before = expected_calibration_error(y_test[:, 0], p_test[:, 0])
    cal = Calibrator(method).fit(y_val, p_val)
    after = expected_calibration_error(y_test[:, 0], cal.apply(p_test)[:, 0])
    assert before > 0.08 and after < before / 2
    if method == "temperature":
        assert 2.4 < cal.temperatures[0] < 3.6  # the over-confidence factor, recovered
        # temperature scaling is monotone: the ranking (ROC-AUC) cannot change
        keep = ~np.isnan(y_test[:, 0])
        auc = [roc_auc_score(y_test[keep, 0], p[keep, 0]) for p in (p_test, cal.apply(p_test))]
        assert auc[0] == pytest.approx(auc[1], abs=1e-6)


def test_ece_and_reliability_on_known_bins():
    y = np.array([0, 1, 1, 1, np.nan])
    p = np.array([0.05, 0.95, 0.95, 0.95, 0.5])
    rows = reliability(y, p, bins=10)
    assert [r["n"] for r in rows] == [1, 3]
    assert expected_calibration_error(y, p) == pytest.approx(0.05)
    assert fit_temperature(np.array([np.nan]), np.array([0.3])) == 1.0


def test_train_ensemble_writes_members_and_calibration_and_predicts_mean_sd(tmp_path):
    from triptych.matic.data import MolTable, Splits
    from triptych.matic.ensemble import load_ensemble, train_ensemble
    from triptych.matic.train import TrainConfig

    smiles = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "C1CCNCC1", "c1ccncc1", "CCN(CC)CC"] * 2
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [np.nan, 1], [0, 0]] * 2, dtype=float)
    t = MolTable(smiles, labels, ["a", "b"])
    splits = Splits(t, t.subset(range(6)), t.subset(range(6, 12)))
    cfg = TrainConfig(tasks=["a", "b"], gate="light", hidden=8, layers=1, max_epochs=1, batch_size=4)
    path, metrics = train_ensemble(splits, cfg, tmp_path, n=2, calibrate="temperature")
    assert path == tmp_path and (tmp_path / "calibration.json").is_file()
    assert sorted(p.parent.name for p in tmp_path.glob("member_*/model.safetensors")) == [
        "member_0",
        "member_1",
    ]
    assert metrics["a"]["members"] == 2 and metrics["a"]["mean_sd"] >= 0
    ens = load_ensemble(tmp_path)
    assert len(ens.members) == 2 and ens.calibrator is not None and len(ens.calibrator.temperatures) == 2
    mean, sd = ens.predict(["CCO", "not a smiles", "c1ccccc1O"])
    assert mean.shape == sd.shape == (3, 2)
    assert np.isnan(mean[1]).all() and np.isfinite(mean[[0, 2]]).all() and (sd[[0, 2]] >= 0).all()
