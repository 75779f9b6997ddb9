"""The independent judge: a fingerprint forest fit once, usable as an oracle, separate from the generator."""

import numpy as np

from triptych.matic.data import MolTable
from triptych.matic.generate.judge import ForestJudge, overlap

QUINOLINES = ["Cc1ccc2ncccc2c1", "Oc1ccc2ncccc2c1", "Nc1ccc2ncccc2c1", "Clc1ccc2ncccc2c1", "CCc1ccc2ncccc2c1"]
OTHERS = ["CCCCO", "CCOCC", "CCCCCN", "OCCCCO", "CC(C)CCO"]


def _table() -> MolTable:
    labels = np.array([[1.0, 0.0]] * 5 + [[0.0, np.nan]] * 4 + [[0.0, 1.0]])
    return MolTable(QUINOLINES + OTHERS, labels, ["a", "b"])


def test_forest_judge_learns_its_own_data_and_fits_once():
    judge = ForestJudge(_table(), n_trees=50)
    p = judge.predict_proba(["COc1ccc2ncccc2c1", "CCCCCCO", "not a smiles"])
    assert p.shape == (3, 2) and judge.tasks == ["a", "b"]
    assert p[0, 0] > 0.5 > p[1, 0]  # an unseen quinoline is judged active on task a, an alcohol is not
    assert np.isnan(p[2]).all()
    forests = judge._forests
    judge.predict_proba(["CCO"])
    assert judge._forests is forests and len(forests) == 2  # fit once, on first use


def test_overlap_counts_shared_molecules_by_canonical_smiles():
    assert overlap(["OCC", "c1ccccc1", "CCN"], ["CCO", "C1=CC=CC=C1"]) == 2 / 3
