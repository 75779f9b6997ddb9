"""Fixtures shared by the MATIC tests: twelve small molecules with two partly-missing labels."""

import numpy as np
import pytest

from triptych.matic.data import MolTable, Splits

NAN = np.nan
_SMILES = (
    "CCO",
    "c1ccccc1O",
    "CC(=O)Nc1ccc(O)cc1",
    "C1CCNCC1",
    "c1ccncc1",
    "CCN(CC)CC",
    "O=C(O)c1ccccc1",
    "CC(C)Cc1ccc(C(C)C(=O)O)cc1",
    "c1ccc2[nH]ccc2c1",
    "CCCCCCO",
    "Clc1ccc(Cl)cc1",
    "N#Cc1ccccc1",
)
# Tasks a, b; NaN = not measured (the masked loss must skip it).
_LABELS = (
    (1, 0),
    (0, NAN),
    (1, 1),
    (0, 0),
    (NAN, 1),
    (0, 0),
    (1, NAN),
    (1, 1),
    (0, 1),
    (0, 0),
    (1, 0),
    (NAN, 0),
)


@pytest.fixture(scope="session")
def smiles12() -> list[str]:
    """Twelve small drug-like SMILES (tests build new lists from it, never change it)."""
    return list(_SMILES)


@pytest.fixture(scope="session")
def splits12() -> Splits:
    """The twelve molecules labelled for tasks a and b; train = all twelve, val = the first 6, test = the last 6."""
    t = MolTable(list(_SMILES), np.array(_LABELS, dtype=float), ["a", "b"])
    return Splits(t, t.subset(range(6)), t.subset(range(6, 12)))
