"""How much of the PLE's top 1% the ``--prefilter`` cascade keeps, per fraction (untimed; an accuracy check).

Screens a library once with the full PLE and once per fraction with the cascade (the
prefilter saved beside the checkpoint), and reports the recall of the full PLE's top 1%
among the molecules the cascade sent to the PLE, and the Spearman correlation of the
prefilter score with the PLE's log dual score over the whole library.

    python benchmarks/matic_prefilter_recall.py --checkpoint bench_out/matic_screen_speed/train_triptych_1ep_0/model.safetensors \\
        --library bench_out/matic_screen_speed/library.csv --out benchmarks/results/matic_prefilter_recall
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from scipy.stats import spearmanr

from triptych.core.results import markdown_table, write_results
from triptych.matic.predictor import load_predictor
from triptych.matic.prefilter import FILENAME, load_prefilter, log_dual
from triptych.matic.screen import screen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--library", type=Path, required=True)
    ap.add_argument("--fractions", default="0.05,0.1,0.2")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/matic_prefilter_recall"))
    ap.add_argument("--work", type=Path, default=Path("bench_out/matic_prefilter_recall"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    predictor = load_predictor(args.checkpoint)
    prefilter = load_prefilter(args.checkpoint.parent / FILENAME)
    full = pd.read_csv(screen(predictor, args.library, args.work / "full.csv").out)
    k = max(1, round(0.01 * len(full)))
    best = set(full.nsmallest(k, "rank")["line"])
    rows = []
    scores = None
    for fraction in (float(f) for f in args.fractions.split(",")):
        cas = pd.read_csv(
            screen(
                predictor,
                args.library,
                args.work / f"cascade_{fraction}.csv",
                prefilter=prefilter,
                fraction=fraction,
            ).out
        )
        kept = set(cas.loc[cas["dual_score"].notna(), "line"])
        rows.append(
            {"fraction": fraction, "ple_scored": len(kept), "top1pct_recall": len(best & kept) / len(best)}
        )
        scores = cas.set_index("line")["prefilter_score"]
        print(rows[-1], flush=True)
    probs = full.set_index("line")[[f"p_{t}" for t in predictor.tasks]]
    rho = float(spearmanr(scores.loc[probs.index], log_dual(probs.to_numpy())).statistic)
    results = {
        "n": len(full),
        "top1pct_size": k,
        "rows": rows,
        "spearman_prefilter_vs_ple_log_dual": rho,
        "checkpoint": str(args.checkpoint),
        "library": str(args.library),
        "command": " ".join(sys.argv),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "load_avg": os.getloadavg(),
    }
    md = (
        f"# Recall of the PLE's top 1% under the --prefilter cascade\n\n{results['date_utc']} UTC, "
        f"`{results['command']}`.\n\n{len(full)} library molecules; the full PLE's top 1% = {k} molecules. "
        f"Spearman of the prefilter score with the PLE's log dual score over the library: {rho:.3f}.\n\n"
        + markdown_table(rows, floatfmt="{:.3f}")
        + "\n"
    )
    write_results(args.out, results, md)


if __name__ == "__main__":
    main()
