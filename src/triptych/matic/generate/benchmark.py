"""Generation benchmark: MATIC vs graph GA vs best-of-dataset at equal oracle calls, on two judges.

Every method talks to the same predictor (the oracle). Per seed, the baselines get exactly
the oracle calls that MATIC with filtered MLE used (rationale search included) and return
as many molecules as MATIC generates. Each set is then scored twice with the same metrics:
by the oracle, and by an independent :class:`~triptych.matic.generate.judge.ForestJudge`
(another architecture, fit on other data) that no method ever called.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from triptych.core.io import atomic_output_dir, write_text
from triptych.core.results import json_text, markdown_table, mean_sd, write_results
from triptych.matic.chem import fingerprints
from triptych.matic.generate.baselines import BaselineResult, best_of_dataset, graph_ga
from triptych.matic.generate.completion import CompletionModel, default_checkpoint, embedded_corpus
from triptych.matic.generate.judge import ForestJudge
from triptych.matic.generate.metrics import generation_metrics, novel_flags
from triptych.matic.generate.pipeline import Actives, GenerateConfig, config_dict, dual_rationales, generate
from triptych.matic.generate.scoring import CountingOracle, Oracle, Scores

METRICS = ("success", "novelty", "diversity", "validity", "uniqueness")
ABLATIONS = {"matic_policy_gradient": "pg", "matic_no_rl": None}


def _one_seed(
    predictor: Oracle,
    tasks: tuple[int, int],
    actives: Actives,
    completion: Path,
    cfg: GenerateConfig,
    corpus: list[str],
    ablations: bool,
) -> tuple[dict[str, tuple[Scores, list[str], dict[str, Any]]], dict[str, Any]]:
    """Every method's molecules for ``cfg.seed``: name -> (oracle scores, rationales, run info)."""
    base = CountingOracle(predictor)
    t0 = time.perf_counter()
    rationales = dual_rationales(actives, base, tasks, cfg, None, "")
    search = {
        "seconds": time.perf_counter() - t0,
        "oracle_calls": base.calls,
        "n_single_rationales": [len(rationales[0][0]), len(rationales[0][1])],
        "n_dual_rationales": len(rationales[1]),
    }
    variants = {"matic_filtered_mle": "filtered", **(ABLATIONS if ablations else {})}
    runs: dict[str, tuple[Scores, list[str], dict[str, Any]]] = {}
    for name, method in variants.items():
        ft = replace(cfg.finetune, method=method or "filtered", rounds=cfg.finetune.rounds if method else 0)
        t = time.perf_counter()
        result = generate(
            CompletionModel.load(completion),
            base.fork(),  # each variant pays for the shared search once
            tasks,
            actives,
            replace(cfg, finetune=ft),
            rationales=rationales,
        )
        scores = Scores(
            list(result.table["smiles"]),
            result.table["p_a"].to_numpy(),
            result.table["p_b"].to_numpy(),
            result.table["qed"].to_numpy(),
            result.table["sa"].to_numpy(),
        )
        info = {
            "oracle_calls": result.metrics["oracle_calls"],
            "seconds": time.perf_counter() - t + search["seconds"],
            "rounds": [asdict(r) for r in result.rounds],
        }
        runs[name] = (scores, list(result.table["rationale"]), info)
    budget = runs["matic_filtered_mle"][2]["oracle_calls"]
    search["share"] = search["oracle_calls"] / budget
    th = cfg.finetune.thresholds
    baselines = {
        "graph_ga": lambda o: graph_ga(actives.all, o, tasks, budget, cfg.n, seed=cfg.seed, thresholds=th),
        "best_of_dataset": lambda o: best_of_dataset(
            corpus, o, tasks, budget, cfg.n, seed=cfg.seed, thresholds=th
        ),
    }
    for name, run in baselines.items():
        t = time.perf_counter()
        res: BaselineResult = run(CountingOracle(predictor, budget=budget))
        info = {"oracle_calls": res.oracle_calls, "seconds": time.perf_counter() - t}
        runs[name] = (res.scores, [""] * len(res.scores.smiles), info)
    return runs, search


def run_benchmark(
    predictor: Oracle,
    tasks: tuple[int, int],
    names: tuple[str, str],
    actives: Actives,
    completion: Path | None,
    cfg: GenerateConfig,
    out: Path,
    *,
    seeds: Sequence[int] = (0,),
    judge: ForestJudge | None = None,
    judge_info: dict[str, Any] | None = None,
    ablations: bool = True,
    corpus: list[str] | None = None,
    command: str = "",
) -> dict:
    """Run every method for every seed; write results.json / results.md / details.json / molecules CSVs to ``out``.

    results.json: ``{"methods": {name: {"oracle": {metric: [per seed]}, "judge": {...},
    "oracle_calls": [...], "seconds": [...]}}, "search": {...}, "judge": {...}, "seeds": [...]}``.
    """
    from triptych.matic.generate.pipeline import scored_table

    completion = completion or default_checkpoint()
    corpus = corpus or embedded_corpus()
    th = cfg.finetune.thresholds
    reference = [fp for fp in fingerprints(actives.all) if fp is not None]
    methods: dict[str, dict[str, Any]] = {}
    search: dict[str, list] = {}
    details: dict[str, Any] = {"tasks": list(names), "config": config_dict(cfg), "seeds": {}}
    tables = {}
    for seed in seeds:
        runs, info = _one_seed(
            predictor, tasks, actives, completion, replace(cfg, seed=seed), corpus, ablations
        )
        for k, v in info.items():
            search.setdefault(k, []).append(v)
        details["seeds"][seed] = {"search": info}
        for name, (scores, rats, run) in runs.items():
            row = methods.setdefault(name, {"oracle": {}, "judge": {}, "oracle_calls": [], "seconds": []})
            novel = novel_flags(scores.smiles, reference)
            judged = {"oracle": generation_metrics(scores, th, novel)}
            table = scored_table(scores, rats, novel, th)
            if judge is not None:
                js = judge.score(scores.smiles)
                judged["judge"] = generation_metrics(js, th, novel)
                table["judge_p_a"], table["judge_p_b"] = js.p_a, js.p_b
                table["judge_success"] = js.success(th)
            for who, m in judged.items():
                for k in METRICS:
                    row[who].setdefault(k, []).append(m[k])
            row["oracle_calls"].append(run["oracle_calls"])
            row["seconds"].append(run["seconds"])
            details["seeds"][seed][name] = {**run, **{f"{w}_metrics": m for w, m in judged.items()}}
            tables[f"{name}_seed{seed}"] = table
        if judge is None:
            for row in methods.values():
                row.pop("judge", None)
    results = {
        "methods": methods,
        "search": search,
        "judge": judge_info or {},
        "seeds": list(seeds),
        "command": command,
    }
    with atomic_output_dir(out) as stage:
        write_results(stage, results, _markdown(results, names, cfg, judge is not None))
        write_text(stage / "details.json", json_text(details, indent=1, default=_plain))
        for name, table in tables.items():
            table.to_csv(stage / f"molecules_{name}.csv", index=False)
    return results


def _markdown(results: dict, names: tuple[str, str], cfg: GenerateConfig, judged: bool) -> str:
    th = cfg.finetune.thresholds
    s = results["search"]
    rows = []
    for name, m in results["methods"].items():
        for who in ("oracle", "judge") if judged else ("oracle",):
            rows.append(
                {
                    "method": name,
                    "judged by": who,
                    **{k: mean_sd(m[who][k]) for k in METRICS},
                    "oracle calls": mean_sd(m["oracle_calls"], "{:.0f}"),
                    "seconds": mean_sd(m["seconds"], "{:.0f}"),
                }
            )
    judge = results["judge"]
    return (
        f"# MATIC generation benchmark\n\nCommand: `{results['command']}`\n\n"
        f"Tasks: A = {names[0]}, B = {names[1]}; success = p_A >= {th.p_a}, p_B >= {th.p_b}, QED >= {th.qed}, "
        f"SA <= {th.sa}. Seeds {results['seeds']} (mean ± sd). Per seed, the baselines get the oracle calls "
        f"MATIC (filtered MLE) used and return its {cfg.n} molecules' count of their best distinct ones; "
        f"novelty is over successful molecules (max Tanimoto to the known actives < 0.4); diversity among "
        f"successful molecules.\n\n"
        f"Rationale search: {mean_sd(s['oracle_calls'], '{:.0f}')} oracle calls, "
        f"{mean_sd(s['share'])} of MATIC's total; dual rationales {mean_sd(s['n_dual_rationales'], '{:.0f}')}.\n\n"
        + (f"Independent judge: {judge.get('description', '')}\n\n" if judged else "")
        + markdown_table(rows)
    )


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)
