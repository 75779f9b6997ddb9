"""Test-set evaluation of a trained predictor (the metrics of :mod:`triptych.matic.metrics`)."""

from __future__ import annotations

from pathlib import Path

from triptych.matic.data import MolTable
from triptych.matic.metrics import evaluate
from triptych.matic.predictor import Predictor, load_predictor


def evaluate_checkpoint(model: Predictor | str | Path, table: MolTable) -> dict[str, dict[str, float]]:
    """Per-task metrics of ``model`` on ``table`` (labelled molecules only)."""
    predictor = model if isinstance(model, Predictor) else load_predictor(model, tasks=table.tasks)
    return evaluate(table.labels, predictor.predict_proba(table.smiles), table.tasks)
