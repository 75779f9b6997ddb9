"""The Flickr8k benchmark: M3-JEPA against its three baselines, under one protocol.

Every method reads the same cached features of the same frozen encoders, trains on the
training split, is selected (early stopping, best epoch) by validation recall on the dev
split, and is evaluated once on the test split: 1,000 images against their 5,000
captions, Recall@1/5/10 both ways, for each seed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np

from triptych.core.errors import InputError
from triptych.core.io import write_text
from triptych.core.results import json_text, markdown_table, mean_sd, write_results
from triptych.m3jepa.config import DEFAULTS, METHODS, M3JepaConfig
from triptych.m3jepa.features import PairedCache
from triptych.m3jepa.retrieval import direction_metrics, over_seeds
from triptych.m3jepa.search import encoder_record
from triptych.m3jepa.tasks import split_tasks
from triptych.m3jepa.train import train_aligner

__all__ = ["METHODS", "M3JepaConfig", "results_markdown", "run_benchmark", "run_one", "split_tasks"]
# settings added after benchmark runs were recorded, with the value those runs used (the feature off)
ADDED_SINCE: dict[str, dict[str, Any]] = {
    "train": {"ema_decay": 0.0, "fused_contrastive": 0.0, "fused_reverse_grad": False}
}
METHOD_TITLES = {
    "m3jepa": "M3-JEPA (MMoE predictor, AGD)",
    "moe_summed": "MMoE predictor, summed losses (no AGD), as many optimiser steps",
    "mlp": "predictor with one MLP instead of the MoE (AGD)",
    "clip_linear": "CLIP-style linear heads on pooled features",
}


def run_one(
    cache: PairedCache,
    method: str,
    seed: int,
    cfg: M3JepaConfig,
    work: Path,
    enable_progress_bar: bool = False,
) -> dict[str, Any]:
    """Train one method with one seed (selected on dev), evaluate it on test."""
    import torch

    caches = {"image": cache.image, "text": cache.text}
    train, dev, test = (split_tasks(cache, s) for s in ("train", "dev", "test"))
    dims = {cache.modality: int(cache.image.tokens.shape[-1]), "text": int(cache.text.tokens.shape[-1])}
    model_config, tc = cfg.method(method, dims, cache.modality, seed)
    start = time.perf_counter()
    result = train_aligner(
        train,
        dev,
        model_config,
        tc,
        out_dir=work / method / f"seed{seed}",
        encoders={m: encoder_record(f) for m, f in caches.items()},
        enable_progress_bar=enable_progress_bar,
    )
    seconds = time.perf_counter() - start
    with torch.no_grad():
        metrics = direction_metrics(result.model, test, tc.fuse_directions)
    best = max(result.val_history, key=lambda h: h["val_recall"]) if result.val_history else {}
    record = {
        "metrics": metrics,
        "seconds": seconds,
        "checkpoint": str(result.checkpoint),
        "params": sum(p.numel() for p in result.model.parameters())
        + sum(p.numel() for p in result.module.loss.parameters()),
        "selection": {
            "best_epoch": best.get("epoch"),
            "epochs_run": len(result.val_history),
            "best_dev_recall": best.get("val_recall"),
        },
        "expert_usage": None
        if result.module.expert_usage is None
        else [round(u, 4) for u in result.module.expert_usage],
        "model_config": model_config,
        "train_config": asdict(tc),
        "benchmark_config": cfg.as_dict(),
    }
    write_text(work / method / f"seed{seed}" / "result.json", json_text(record, indent=None))
    return record


def _finished(work: Path, method: str, seed: int, cfg: M3JepaConfig) -> dict[str, Any] | None:
    file = work / method / f"seed{seed}" / "result.json"
    if not file.is_file():
        return None
    result = json.loads(file.read_text())
    stored = result.get("benchmark_config") or {}
    # a run recorded before a setting existed ran it at the value that reproduces the old behaviour
    stored = {part: {**ADDED_SINCE.get(part, {}), **values} for part, values in stored.items()}
    return result if stored == cfg.as_dict() else None


def _run_one_from_disk(root: str, method: str, seed: int, cfg: M3JepaConfig, work: str) -> dict[str, Any]:
    """:func:`run_one` in a worker process (one thread), reading the cache from disk."""
    import os

    import torch

    from triptych.m3jepa.features import load_cache

    os.environ["TRIPTYCH_QUIET"] = "1"
    torch.set_num_threads(1)
    return run_one(load_cache(root), method, seed, cfg, Path(work))


def run_benchmark(
    cache: PairedCache,
    out: str | Path,
    seeds: Sequence[int] = (0, 1, 2),
    methods: Sequence[str] = METHODS,
    config: M3JepaConfig | None = None,
    work_dir: str | Path | None = None,
    jobs: int = 1,
    enable_progress_bar: bool = True,
) -> dict[str, Any]:
    """Train and evaluate every method for every seed; write results.json and results.md to ``out``.

    ``jobs`` > 1 runs that many (method, seed) trainings at once in worker processes of
    one thread each (the cache must then be on disk).
    """
    import tempfile
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    cfg = config or DEFAULTS
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise InputError(f"--methods: unknown {sorted(unknown)}; choose from {list(METHODS)}")
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="m3jepa-bench-"))
    runs = [(m, int(s)) for s in seeds for m in methods]  # seed-major: a partial run covers every method
    # A finished run leaves result.json in its folder; rerunning with the same work_dir and
    # config skips it, so an interrupted benchmark resumes where it stopped.
    done = {run: r for run in runs if (r := _finished(work, *run, cfg)) is not None}
    todo = [run for run in runs if run not in done]
    if jobs > 1 and cache.image.path is not None and len(todo) > 1:
        root = str(Path(cache.image.path).parent)
        with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=get_context("spawn")) as pool:
            futures = {run: pool.submit(_run_one_from_disk, root, *run, cfg, str(work)) for run in todo}
            done.update({run: f.result() for run, f in futures.items()})
    else:
        done.update({run: run_one(cache, *run, cfg, work, enable_progress_bar) for run in todo})
    for (method, seed), r in done.items():
        print(
            f"{method} seed {seed}: i2t {r['metrics']['i2t']} t2i {r['metrics']['t2i']} ({r['seconds']:.0f} s, "
            f"best epoch {r['selection']['best_epoch']})",
            flush=True,
        )
    per_method: dict[str, Any] = {}
    diagnostics: dict[str, Any] = {}
    for method in methods:
        rs = [done[(method, int(s))] for s in seeds]
        per_method[method] = {
            **over_seeds([r["metrics"] for r in rs]),
            "train_seconds": float(np.mean([r["seconds"] for r in rs])),
            "params": rs[0]["params"],
        }
        diagnostics[method] = {
            "selection": [r["selection"] for r in rs],
            "expert_usage_last_epoch": [r["expert_usage"] for r in rs if r["expert_usage"]],
            "train_config": rs[0]["train_config"],
            "model_config": rs[0]["model_config"],
        }
    test = split_tasks(cache, "test")
    results = {
        "methods": per_method,
        "encoders": {m: encoder_record(f) for m, f in (("image", cache.image), ("text", cache.text))},
        "protocol": {
            "dataset": cache.data.name,
            "train_images": len(cache.split("train")[0]),
            "dev_images": len(cache.split("dev")[0]),
            "test_images": len(np.unique(test[0].pairs[:, 0])),
            "test_captions": len(test[0].pairs),
            "seeds": [int(s) for s in seeds],
            "selection": "best dev-split recall (mean of R@1/5/10, both ways), early stopping",
            "parallel_jobs": jobs,
        },
        "config": cfg.as_dict(),
        "diagnostics": diagnostics,
        "run": _run_record(),
    }
    write_results(out, results, results_markdown(results))
    return results


def _run_record() -> dict[str, Any]:
    """What made these results: the command, the date (UTC) and the machine's load when it finished."""
    import os
    from datetime import datetime

    from triptych.core.io import command_line

    return {
        "command": command_line(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def results_markdown(results: dict[str, Any]) -> str:
    """The results table for people: mean ± sd over seeds of R@1/5/10 both ways."""
    rows = []
    for name, r in results["methods"].items():
        row = {"method": METHOD_TITLES.get(name, name)}
        for way in ("i2t", "t2i"):
            for k in ("r1", "r5", "r10"):
                row[f"{way.upper().replace('2', '→')} R@{k[1:]}"] = mean_sd(r[way][k], "{:.1f}")
        row["train s"] = f"{r['train_seconds']:.0f}"
        row["params"] = f"{r['params']:,}"
        rows.append(row)
    p = results["protocol"]
    enc = ", ".join(f"{m}: {e['encoder']}" for m, e in results["encoders"].items())
    run = results.get("run")
    footer = (
        f"\n\n`{run['command']}` ({run['date']}; load average {run['load_average_1_5_15']} on this machine)\n"
        if run
        else ""
    )
    return (
        f"# M3-JEPA benchmark on {p['dataset']}\n\n"
        f"Frozen encoders ({enc}); {p['test_images']} test images against their {p['test_captions']} captions; "
        f"Recall@K in %, mean ± sd over seeds {p['seeds']}. Every method is selected on the dev split.\n\n"
        + markdown_table(rows)
        + footer
    )
