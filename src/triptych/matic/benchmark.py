"""The MATIC benchmark: PLE, MMoE, single-task Attentive FP, Morgan RF (and chemprop) over seeds.

Datasets: the paper's own split (``matic:DIR``, the same files every seed) and a seeded
Bemis–Murcko scaffold split of the embedded NCATS 3CLpro + CPE table. Test ROC-AUC and
PR-AUC per task and seed go to ``results.json``; mean ± sd to ``results.md``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from triptych.core.results import markdown_table, mean_sd, write_results
from triptych.matic.baselines import chemprop_available, chemprop_probs, random_forest_probs
from triptych.matic.data import EMBEDDED, MolTable, Splits, load_splits
from triptych.matic.metrics import evaluate
from triptych.matic.predictor import load_predictor
from triptych.matic.train import TrainConfig, train_predictor


@dataclass
class BenchConfig:
    """Budget knobs; the defaults fit a shared 2-core CPU in well under an hour (see README)."""

    seeds: int = 5
    first_seed: int = 0
    epochs: int = 8
    patience: int = 3
    lr: float = 1e-3
    gate: str = "light"
    ncats_seeds: int = 1
    ncats_epochs: int = 3
    rf_trees: int = 500
    models: list[str] = field(default_factory=lambda: ["ple", "mmoe", "single", "rf", "chemprop"])


def _graph_probs(
    splits: Splits, arch: str, seed: int, cfg: BenchConfig, epochs: int, tasks: list[str]
) -> np.ndarray:
    """Train one graph model on ``tasks`` and return its test probabilities ``(n_test, len(tasks))``."""
    sub = splits.select(tasks)
    config = TrainConfig(
        tasks=list(tasks),
        arch=arch,
        gate=cfg.gate,
        lr=cfg.lr,
        max_epochs=epochs,
        patience=cfg.patience,
        seed=seed,
    )
    with tempfile.TemporaryDirectory(prefix="matic-bench-") as tmp:
        model = train_predictor(sub, config, tmp, progress=False)
        return load_predictor(model).predict_proba(sub.test.smiles)


def _model_probs(
    model: str, splits: Splits, seed: int, cfg: BenchConfig, epochs: int, tasks: list[str]
) -> np.ndarray:
    """Test probabilities of one benchmark model trained with ``seed``."""
    if model == "rf":
        return random_forest_probs(splits.train, splits.test, seed, cfg.rf_trees)
    if model == "chemprop":
        return chemprop_probs(splits, seed)
    arch = "single" if model.startswith("single_") else model
    return _graph_probs(splits, arch, seed, cfg, epochs, tasks)


def _add(results: dict, model: str, table: MolTable, probs: np.ndarray, tasks: list[str]) -> dict:
    scores = evaluate(table.labels[:, [table.tasks.index(t) for t in tasks]], probs, tasks)
    for t, m in scores.items():
        entry = results.setdefault(model, {}).setdefault(t, {"roc_auc": [], "pr_auc": []})
        entry["roc_auc"].append(m["roc_auc"])
        entry["pr_auc"].append(m["pr_auc"])
    return scores


def run_dataset(
    name: str,
    make_splits: Callable[[int], Splits],
    seeds: int,
    cfg: BenchConfig,
    epochs: int,
    log: Callable[[str], None],
    results: dict,
    seconds: dict,
    save: Callable[[], None],
) -> None:
    """All models x seeds on one dataset, filling ``results[model][task][metric]`` (per seed) and ``seconds[model]``."""
    for seed in range(cfg.first_seed, cfg.first_seed + seeds):
        splits = make_splits(seed)
        tasks = splits.tasks
        runs: list[tuple[str, list[str]]] = [(m, tasks) for m in ("ple", "mmoe") if m in cfg.models]
        if "single" in cfg.models:
            runs += [(f"single_{t}", [t]) for t in tasks]
        runs += [(m, tasks) for m in ("rf", "chemprop") if m in cfg.models]
        if "chemprop" in cfg.models and not chemprop_available():
            runs.remove(("chemprop", tasks))
        for model, model_tasks in runs:
            start = time.perf_counter()
            probs = _model_probs(model, splits, seed, cfg, epochs, model_tasks)
            seconds[model] = round(seconds.get(model, 0.0) + time.perf_counter() - start, 1)
            scores = _add(results, model, splits.test, probs, model_tasks)
            log(
                f"[{name}] seed {seed} {model}: "
                + ", ".join(
                    f"{t} ROC-AUC {m['roc_auc']:.3f} PR-AUC {m['pr_auc']:.3f}" for t, m in scores.items()
                )
                + f" ({time.perf_counter() - start:.0f} s)"
            )
            save()  # after every model, so an interrupted run keeps what it finished


def results_markdown(results: dict, cfg: BenchConfig) -> str:
    """The results as one Markdown table per dataset, mean ± sd over seeds."""
    lines = [
        "# MATIC benchmark",
        "",
        "Test ROC-AUC / PR-AUC per task, mean ± sd over seeds. Settings: "
        + ", ".join(f"{k}={v}" for k, v in asdict(cfg).items()),
        "",
    ]
    for ds, models in results["datasets"].items():
        tasks: list[str] = []
        for per_task in models.values():
            tasks += [t for t in per_task if t not in tasks]
        rows = []
        for model, per_task in models.items():
            row = {"model": model}
            for t in tasks:
                m = per_task.get(t)
                row[f"{t} ROC-AUC"] = mean_sd(m["roc_auc"]) if m else ""
                row[f"{t} PR-AUC"] = mean_sd(m["pr_auc"]) if m else ""
            row["seconds"] = results["seconds"].get(ds, {}).get(model)
            rows.append(row)
        lines += [f"## {ds}", "", markdown_table(rows), ""]
    return "\n".join(lines)


def merge_results(parts: list[dict]) -> dict:
    """Concatenate the per-seed lists (and add the seconds) of benchmark runs made in parallel, e.g. one per seed."""
    merged: dict = {"datasets": {}, "seconds": {}}
    for part in parts:
        for ds, models in part["datasets"].items():
            for model, tasks in models.items():
                for task, metrics in tasks.items():
                    entry = merged["datasets"].setdefault(ds, {}).setdefault(model, {}).setdefault(task, {})
                    for metric, values in metrics.items():
                        entry.setdefault(metric, []).extend(values)
        for ds, secs in part["seconds"].items():
            for model, v in secs.items():
                tot = merged["seconds"].setdefault(ds, {})
                tot[model] = round(tot.get(model, 0.0) + v, 1)
    return merged


def run_benchmark(
    data: str | None, out: str | Path, cfg: BenchConfig, log: Callable[[str], None] = print
) -> dict:
    """Run every dataset and write ``out/results.json`` and ``out/results.md`` (rewritten after each model)."""
    datasets: list[tuple[str, Callable[[int], Splits], int, int]] = []
    if data:
        given = load_splits(data)  # the same split every seed; seeds vary initialisation and batches
        name = "matic_paper_split" if data.startswith("matic:") else Path(data).stem
        datasets.append((name, lambda seed: given, cfg.seeds, cfg.epochs))
    if cfg.ncats_seeds > 0:
        datasets.append(
            (
                "ncats_scaffold",
                lambda seed: load_splits(EMBEDDED, "scaffold", seed),
                cfg.ncats_seeds,
                cfg.ncats_epochs,
            )
        )
    results: dict = {"datasets": {}, "seconds": {}}
    for name, make, seeds, epochs in datasets:
        results["datasets"][name], results["seconds"][name] = {}, {}
        run_dataset(
            name,
            make,
            seeds,
            cfg,
            epochs,
            log,
            results["datasets"][name],
            results["seconds"][name],
            lambda: write_results(out, results, results_markdown(results, cfg)),
        )
    return results
