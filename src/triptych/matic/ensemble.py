"""Deep ensembles (Lakshminarayanan et al. 2017): N predictors trained with different seeds.

Each member gives probabilities ``p_m [n, T]``; the ensemble reports per task

    mean = (1/N) sum_m p_m,     sd = sqrt((1/(N-1)) sum_m (p_m - mean)^2)

(sd 0 for one member), the spread between members standing in for model uncertainty.
An optional :class:`~triptych.matic.calibration.Calibrator` (fitted on validation, saved
beside the members as ``calibration.json``) maps each member's probabilities first.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from triptych.core.errors import InputError
from triptych.core.trainer_flags import TrainerFlags
from triptych.matic.calibration import Calibrator
from triptych.matic.data import Splits
from triptych.matic.predictor import Predictor, load_predictor

if TYPE_CHECKING:
    from triptych.matic.train import TrainConfig

MEMBERS = "member_{k}"  # member k's folder inside an ensemble folder


def member_stats(member_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``member_probs [N, n, T]`` -> per-task ``(mean, sd)``, each ``[n, T]`` (sample sd; 0 for N = 1)."""
    member_probs = np.asarray(member_probs, dtype=np.float64)
    if member_probs.ndim != 3 or member_probs.shape[0] == 0:
        raise ValueError(f"member probabilities must be [N >= 1, n, T], got {member_probs.shape}")
    mean = member_probs.mean(axis=0)
    sd = member_probs.std(axis=0, ddof=1) if member_probs.shape[0] > 1 else np.zeros_like(mean)
    return mean, sd


def save_calibration(path: Path, calibrator: Calibrator) -> None:
    """A temperature calibrator as JSON (isotonic maps are kept as their fitted thresholds)."""
    body: dict = {"method": calibrator.method, "temperatures": calibrator.temperatures}
    if calibrator.method == "isotonic":
        body["isotonic"] = [
            None if iso is None else {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
            for iso in calibrator.isotonic
        ]
    path.write_text(json.dumps(body, indent=1))


def load_calibration(path: Path) -> Calibrator:
    """The calibrator written by :func:`save_calibration`."""
    from sklearn.isotonic import IsotonicRegression

    try:
        body = json.loads(path.read_text())
        cal = Calibrator(body["method"], [float(t) for t in body.get("temperatures", [])])
        for m in body.get("isotonic", []):
            if m is None:
                cal.isotonic.append(None)
                continue
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
            cal.isotonic.append(iso.fit(np.asarray(m["x"]), np.asarray(m["y"])))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a calibration file ({exc}); re-run matic train --calibrate") from None
    return cal


@dataclass
class Ensemble:
    """Several predictors for the same tasks; ``predict`` gives per-task mean and sd."""

    members: list[Predictor]
    calibrator: Calibrator | None = None

    @property
    def tasks(self) -> list[str]:
        return self.members[0].tasks

    def member_probs(self, smiles: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """``[N, n, T]`` member probabilities (calibrated when a calibrator is set)."""
        probs = [m.predict_proba(smiles, batch_size) for m in self.members]
        if self.calibrator is not None:
            probs = [self.calibrator.apply(p) for p in probs]
        return np.stack(probs)

    def predict(self, smiles: Sequence[str], batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Per-task ``(mean, sd)`` over members, each ``[n, T]``; NaN rows for unparsable SMILES."""
        return member_stats(self.member_probs(smiles, batch_size))

    def predict_proba(self, smiles: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """The ensemble mean (drop-in for :meth:`Predictor.predict_proba`)."""
        return self.predict(smiles, batch_size)[0]


def load_ensemble(path: str | Path, tasks: Sequence[str] | None = None, device: str = "cpu") -> Ensemble:
    """An ensemble folder (``member_*/model.safetensors``) or one checkpoint, with the ``calibration.json``
    beside them if there is one."""
    path = Path(path)
    if path.is_dir() and (path / "model.safetensors").is_file():
        path = path / "model.safetensors"
    if path.is_file():
        cal = path.parent / "calibration.json"
        return Ensemble(
            [load_predictor(path, tasks, device)], load_calibration(cal) if cal.is_file() else None
        )
    files = sorted(path.glob("member_*/model.safetensors"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not files:
        raise InputError(f"{path}: no member_*/model.safetensors; train one with matic train --ensemble N")
    members = [load_predictor(f, tasks, device) for f in files]
    if any(m.tasks != members[0].tasks for m in members):
        raise InputError(f"{path}: the members predict different tasks; re-train the ensemble")
    cal = path / "calibration.json"
    return Ensemble(members, load_calibration(cal) if cal.is_file() else None)


def train_ensemble(
    splits: Splits,
    config: TrainConfig,
    out: Path,
    n: int,
    calibrate: str | None = None,
    flags: TrainerFlags | None = None,
) -> tuple[Path, dict]:
    """Train ``n`` members (seeds ``config.seed + k``) into ``out`` (``out/member_k`` when ``n > 1``).

    With ``calibrate`` a :class:`Calibrator` is fitted on the members' VALIDATION
    probabilities and saved as ``out/calibration.json``. Returns the ensemble's path and
    its test metrics (the mean's ROC-AUC etc. per task, plus the mean member sd and the
    test ECE before and after calibration).
    """
    from dataclasses import replace

    from triptych.matic.calibration import expected_calibration_error
    from triptych.matic.metrics import evaluate
    from triptych.matic.train import train_predictor

    for k in range(n):
        folder = out if n == 1 else out / MEMBERS.format(k=k)
        train_predictor(splits, replace(config, seed=config.seed + k), folder, flags)
    ens = load_ensemble(out)
    if calibrate is not None:
        val = ens.member_probs(splits.val.smiles)  # [N, n_val, T], pooled over members to fit one map
        labels = np.concatenate([splits.val.labels] * len(ens.members))
        save_calibration(
            out / "calibration.json", Calibrator(calibrate).fit(labels, val.reshape(-1, val.shape[2]))
        )
    raw = member_stats(Ensemble(ens.members).member_probs(splits.test.smiles))[0]
    ens = load_ensemble(out)
    mean, sd = ens.predict(splits.test.smiles)
    metrics = evaluate(splits.test.labels, mean, ens.tasks)
    for j, t in enumerate(ens.tasks):
        metrics[t]["members"] = len(ens.members)
        metrics[t]["mean_sd"] = float(np.nanmean(sd[:, j]))
        metrics[t]["ece_raw"] = expected_calibration_error(splits.test.labels[:, j], raw[:, j])
        if calibrate is not None:
            metrics[t][f"ece_{calibrate}"] = expected_calibration_error(splits.test.labels[:, j], mean[:, j])
    return (out if n > 1 else out / "model.safetensors"), metrics
