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
    compare_guide: bool,
) -> tuple[dict[str, tuple[Scores, list[str], dict[str, Any]]], dict[str, Any]]:
    """Every method's molecules for ``cfg.seed``: name -> (oracle scores, rationales, run info).

    With ``compare_guide``, the search is also run with the other MCTS guide (search only, its
    calls and rationales reported), to show what scoring only rationale candidates saves.
    """
    other: dict[str, Any] = {}
    if compare_guide:
        alt = replace(
            cfg, mcts=replace(cfg.mcts, guide="all" if cfg.mcts.guide == "candidates" else "candidates")
        )
        probe = CountingOracle(predictor)
        t0 = time.perf_counter()
        (a, b), dual = dual_rationales(actives, probe, tasks, alt, None, "")
        other = {
            "guide": alt.mcts.guide,
            "seconds": time.perf_counter() - t0,
            "oracle_calls": probe.calls,
            "n_single_rationales": [len(a), len(b)],
            "n_dual_rationales": len(dual),
        }
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
    search["guide"] = cfg.mcts.guide
    if other:
        search["other_guide"] = other
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
    compare_guide: bool = False,
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
    for seed in seeds:  # results are rewritten after every seed, so a long run leaves what it finished
        runs, info = _one_seed(
            predictor, tasks, actives, completion, replace(cfg, seed=seed), corpus, ablations, compare_guide
        )
        for k, v in info.items():
            search.setdefault(k, []).append(v)
        details["seeds"][seed] = {"search": info}
        judged_p: dict[str, np.ndarray] = {}
        if judge is not None:  # the judge sees the finished molecules only, after every method has run
            every = sorted({s for sc, _, _ in runs.values() for s in sc.smiles if s})
            judged_p = dict(zip(every, judge.predict_proba(every), strict=True))
        for name, (scores, rats, run) in runs.items():
            row = methods.setdefault(name, {"oracle": {}, "judge": {}, "oracle_calls": [], "seconds": []})
            novel = novel_flags(scores.smiles, reference)
            judged = {"oracle": generation_metrics(scores, th, novel)}
            table = scored_table(scores, rats, novel, th)
            if judge is not None:
                nan = (np.nan, np.nan)
                p = np.array([judged_p.get(s, nan) if s else nan for s in scores.smiles], dtype=float)
                js = Scores(scores.smiles, p[:, 0], p[:, 1], scores.qed, scores.sa)
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
        done = list(seeds)[: list(seeds).index(seed) + 1]
        results = {
            "methods": methods,
            "search": search,
            "judge": judge_info or {},
            "seeds": done,
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
        f"{mean_sd(s['share'])} of MATIC's total (MCTS guide: {s['guide'][0]}); dual rationales "
        f"{mean_sd(s['n_dual_rationales'], '{:.0f}')}."
        + (
            f" The same search with guide {s['other_guide'][0]['guide']} (search only): "
            f"{mean_sd([o['oracle_calls'] for o in s['other_guide']], '{:.0f}')} oracle calls, dual rationales "
            f"{mean_sd([o['n_dual_rationales'] for o in s['other_guide']], '{:.0f}')}."
            if "other_guide" in s
            else ""
        )
        + "\n\n"
        + (f"Independent judge: {judge.get('description', '')}\n\n" if judged else "")
        + markdown_table(rows)
    )


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)
