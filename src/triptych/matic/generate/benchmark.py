"""Generation benchmark: MATIC (filtered MLE, policy gradient, no RL) vs graph GA vs best-of-dataset.

All methods use the same predictor as oracle. The baselines get exactly the oracle-call
budget that MATIC with filtered MLE used (rationale search included) and return as many
molecules as MATIC generates; every method is scored by the same metrics.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from triptych.core.io import atomic_output_dir, write_text
from triptych.core.results import json_text, markdown_table, write_results
from triptych.matic.chem import fingerprints
from triptych.matic.generate.baselines import BaselineResult, best_of_dataset, graph_ga
from triptych.matic.generate.completion import CompletionModel, default_checkpoint, embedded_corpus
from triptych.matic.generate.metrics import generation_metrics, novel_flags
from triptych.matic.generate.pipeline import (
    Actives,
    GenerateConfig,
    config_dict,
    dual_rationales,
    generate,
    scored_table,
)
from triptych.matic.generate.scoring import CountingOracle, Oracle

KEYS = ("success", "novelty", "diversity", "validity", "uniqueness", "oracle_calls", "seconds")


def _row(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in KEYS}


def run_benchmark(
    predictor: Oracle,
    oracle_id: str,
    tasks: tuple[int, int],
    names: tuple[str, str],
    actives: Actives,
    completion: Path | None,
    cfg: GenerateConfig,
    out: Path,
    corpus: list[str] | None = None,
) -> dict:
    """Run every method, write results.json / results.md / details.json / molecules_<method>.csv into ``out``."""
    completion = completion or default_checkpoint()
    base = CountingOracle(predictor)
    t0 = time.perf_counter()
    rationales = dual_rationales(actives, base, tasks, cfg, None, oracle_id)
    search_seconds = time.perf_counter() - t0
    reference = [fp for fp in fingerprints(actives.all) if fp is not None]
    methods: dict[str, dict[str, Any]] = {}
    tables = {}
    details: dict[str, Any] = {
        "tasks": list(names),
        "config": config_dict(cfg),
        "search_seconds": search_seconds,
        "search_oracle_calls": base.calls,
        "n_dual_rationales": len(rationales[1]),
    }
    variants = {"matic_filtered_mle": "filtered", "matic_policy_gradient": "pg", "matic_no_rl": None}
    for name, method in variants.items():
        ft = replace(cfg.finetune, method=method or "filtered", rounds=cfg.finetune.rounds if method else 0)
        oracle = base.fork()  # each variant pays for the shared search once
        result = generate(
            CompletionModel.load(completion),
            oracle,
            tasks,
            actives,
            replace(cfg, finetune=ft),
            rationales=rationales,
        )
        result.metrics["seconds"] += search_seconds
        methods[name] = _row(result.metrics)
        tables[name] = result.table
        details[name] = {"metrics": result.metrics, "rounds": [asdict(r) for r in result.rounds]}
    budget = methods["matic_filtered_mle"]["oracle_calls"]
    thresholds = cfg.finetune.thresholds
    baselines = {
        "graph_ga": lambda o: graph_ga(
            actives.all, o, tasks, budget, cfg.n, seed=cfg.seed, thresholds=thresholds
        ),
        "best_of_dataset": lambda o: best_of_dataset(
            corpus or embedded_corpus(), o, tasks, budget, cfg.n, seed=cfg.seed, thresholds=thresholds
        ),
    }
    for name, run in baselines.items():
        t = time.perf_counter()
        res: BaselineResult = run(CountingOracle(predictor, budget=budget))
        novel = novel_flags(res.scores.smiles, reference)
        metrics = generation_metrics(res.scores, thresholds, novel)
        metrics.update({"oracle_calls": res.oracle_calls, "seconds": time.perf_counter() - t})
        methods[name] = _row(metrics)
        tables[name] = scored_table(res.scores, [""] * len(res.scores.smiles), novel, thresholds)
        details[name] = {"metrics": metrics}
    results = {"methods": methods}
    rows = [{"method": k, **v} for k, v in methods.items()]
    md = (
        f"# MATIC generation benchmark\n\nTasks: A = {names[0]}, B = {names[1]}; success = p_A >= {thresholds.p_a}, "
        f"p_B >= {thresholds.p_b}, QED >= {thresholds.qed}, SA <= {thresholds.sa}. Baselines get MATIC (filtered MLE)'s "
        f"{budget} oracle calls; novelty is over successful molecules (max Tanimoto to the known actives < 0.4); "
        f"diversity among successful molecules. Baselines return their {cfg.n} best distinct molecules.\n\n"
        + markdown_table(rows)
    )
    with atomic_output_dir(out) as stage:
        write_results(stage, results, md)
        write_text(stage / "details.json", json_text(details, indent=1, default=_plain))
        for name, table in tables.items():
            table.to_csv(stage / f"molecules_{name}.csv", index=False)
    return results


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)
