"""Threshold-free view of the generation benchmark's two judges, from its molecules_<method>_seed<k>.csv files.

The success rate needs p >= 0.5 from a judge; a judge fit on screening data with few actives
rarely says that of anything, so this also reports each judge's mean probability per task and
the share of molecules each task alone passes, per method (mean over seeds).

Usage: python benchmarks/matic_generate_judge_means.py [--results benchmarks/results/matic_generate]
       [--out benchmarks/results/matic_generate_judge_means]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

from triptych.core.results import markdown_table, mean_sd, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/matic_generate"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/matic_generate_judge_means"))
    args = ap.parse_args()
    per: dict[str, dict[str, list[float]]] = {}
    for path in sorted(args.results.glob("molecules_*_seed*.csv")):
        method = re.match(r"molecules_(.+)_seed\d+\.csv", path.name).group(1)
        t = pd.read_csv(path)
        row = per.setdefault(method, {})
        for who, a, b in (("oracle", "p_a", "p_b"), ("judge", "judge_p_a", "judge_p_b")):
            row.setdefault(f"{who}_mean_p_a", []).append(float(t[a].mean()))
            row.setdefault(f"{who}_mean_p_b", []).append(float(t[b].mean()))
            row.setdefault(f"{who}_share_p_a>=0.5", []).append(float((t[a] >= 0.5).mean()))
            row.setdefault(f"{who}_share_p_b>=0.5", []).append(float((t[b] >= 0.5).mean()))
    if not per:
        sys.exit(f"no molecules_*_seed*.csv in {args.results}; run `triptych matic benchmark-generate` first")
    rows = [{"method": m, **{k: mean_sd(v) for k, v in r.items()}} for m, r in per.items()]
    md = (
        "# MATIC generation: mean probabilities by the oracle and by the independent judge\n\n"
        f"Command: `python benchmarks/matic_generate_judge_means.py --results {args.results} --out {args.out}`"
        f" (from the molecules of `{args.results}/results.md`; mean ± sd over seeds).\n\n"
        + markdown_table(rows)
    )
    write_results(args.out, {"methods": per}, md)
    print(md)


if __name__ == "__main__":
    main()
