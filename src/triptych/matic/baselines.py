"""Baselines beside the graph models: a Morgan-fingerprint random forest per task, and chemprop when installed."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator
from sklearn.ensemble import RandomForestClassifier

from triptych.matic.data import MolTable, Splits


def morgan_fingerprints(
    smiles: list[str], radius: int = 2, n_bits: int = 2048, counts: bool = False
) -> np.ndarray:
    """``(n, n_bits)`` Morgan (ECFP4 for radius 2) bit vectors (uint8), or folded counts with ``counts``
    (uint32); zero rows for unparsable SMILES."""
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    out = np.zeros((len(smiles), n_bits), dtype=np.uint32 if counts else np.uint8)
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s)
        if mol is not None:
            out[i] = gen.GetCountFingerprintAsNumPy(mol) if counts else gen.GetFingerprintAsNumPy(mol)
    return out


def fit_task_forests(
    x: np.ndarray, labels: np.ndarray, seed: int, n_trees: int = 500, class_weight: str | None = None
) -> list[RandomForestClassifier | None]:
    """One random forest per label column, fit on the rows labelled for it; None where a task has one class."""
    forests: list[RandomForestClassifier | None] = []
    for j in range(labels.shape[1]):
        keep = ~np.isnan(labels[:, j])
        y = labels[keep, j].astype(int)
        if len(np.unique(y)) < 2:
            forests.append(None)
            continue
        rf = RandomForestClassifier(
            n_estimators=n_trees, random_state=seed, n_jobs=1, class_weight=class_weight
        )
        forests.append(rf.fit(x[keep], y))
    return forests


def forest_probs(forests: list[RandomForestClassifier | None], x: np.ndarray) -> np.ndarray:
    """``(n, T)`` positive-class probabilities; NaN for a task without a forest."""
    probs = np.full((len(x), len(forests)), np.nan)
    for j, rf in enumerate(forests):
        if rf is not None:
            probs[:, j] = rf.predict_proba(x)[:, 1]
    return probs


def random_forest_probs(train: MolTable, test: MolTable, seed: int, n_trees: int = 500) -> np.ndarray:
    """Fit one random forest per task on the molecules labelled for it; ``(n_test, T)`` probabilities."""
    forests = fit_task_forests(morgan_fingerprints(train.smiles), train.labels, seed, n_trees)
    return forest_probs(forests, morgan_fingerprints(test.smiles))


def chemprop_available() -> bool:
    """Whether chemprop (the ``[bench]`` extra) and its CLI are installed."""
    return importlib.util.find_spec("chemprop") is not None and shutil.which("chemprop") is not None


def chemprop_probs(splits: Splits, seed: int, epochs: int = 50) -> np.ndarray:
    """Train chemprop's multi-task D-MPNN (defaults) on the same train/val/test; test probabilities."""
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = []
        for name, table in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
            df = pd.DataFrame(table.labels, columns=table.tasks)
            df.insert(0, "smiles", table.smiles)
            paths.append(tmp / f"{name}.csv")
            df.to_csv(paths[-1], index=False)
        subprocess.run(
            [
                "chemprop",
                "train",
                "--data-path",
                *map(str, paths),
                "--task-type",
                "classification",
                "--epochs",
                str(epochs),
                "--data-seed",
                str(seed),
                "--pytorch-seed",
                str(seed),
                "--save-dir",
                str(tmp / "model"),
                "--smiles-columns",
                "smiles",
                "--target-columns",
                *splits.tasks,
            ],
            check=True,
            capture_output=True,
        )
        model = next((tmp / "model").rglob("best*.pt"))
        subprocess.run(
            [
                "chemprop",
                "predict",
                "--test-path",
                str(paths[2]),
                "--model-paths",
                str(model),
                "--preds-path",
                str(tmp / "preds.csv"),
                "--smiles-columns",
                "smiles",
            ],
            check=True,
            capture_output=True,
        )
        preds = pd.read_csv(tmp / "preds.csv")
        return preds[splits.tasks].to_numpy(dtype=float)
