"""Molecules per second of each chemistry step of the library screen, on N MOSES SMILES, one process, one thread.

Steps: parse (MolFromSmiles), standardise (parent; tautomers off and on), PAINS+Brenk alerts,
applicability domain (max Tanimoto to a reference of R molecules), and plan+read of a
gzipped .smi library as shards. The machine is shared: the load average is recorded.

    python benchmarks/matic_chemchecks_speed.py --n 5000 --ref 5000
"""

from __future__ import annotations

import argparse
import gzip
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MOSES = Path("/work/shared/data/moses/train.csv.gz")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--ref", type=int, default=5000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "matic_chemchecks_speed")
    args = ap.parse_args()
    from rdkit import Chem

    from triptych.core.results import markdown_table, write_results
    from triptych.matic.alerts import alert_columns
    from triptych.matic.domain import Domain
    from triptych.matic.library import iter_library
    from triptych.matic.standardize import Standardizer

    with gzip.open(MOSES, "rt") as src:
        next(src)
        lines = [next(src).strip() for _ in range(args.n + args.ref)]
    smiles, ref = lines[: args.n], lines[args.n :]
    rows, load = [], os.getloadavg()[0]

    def timed(name, fn, n=args.n):
        t = time.perf_counter()
        out = fn()
        s = time.perf_counter() - t
        rows.append({"step": name, "molecules": n, "seconds": round(s, 3), "mol_per_s": round(n / s, 1)})
        return out

    mols = timed("parse (MolFromSmiles)", lambda: [Chem.MolFromSmiles(s) for s in smiles])
    std = Standardizer()
    parents = timed("standardise (parent, no tautomers)", lambda: [std(m) for m in mols])
    taut = Standardizer(tautomers=True)
    k = min(1000, args.n)
    timed("standardise (parent + canonical tautomer)", lambda: [taut(m) for m in mols[:k]], k)
    timed("PAINS + Brenk alerts", lambda: alert_columns(parents))
    domain = timed(
        f"domain: fingerprint {args.ref} reference molecules",
        lambda: Domain([Chem.MolFromSmiles(s) for s in ref]),
        args.ref,
    )
    timed(f"domain: max Tanimoto to {args.ref} references", lambda: domain.max_similarity(parents))
    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp) / "lib.smi.gz"
        with gzip.open(lib, "wt") as f:
            f.write("".join(f"{s} m{i}\n" for i, s in enumerate(smiles)))
        timed(
            "plan + read shards (.smi.gz, shards of 1000)",
            lambda: sum(1 for _ in iter_library(lib, shard_size=1000)),
        )
    md = (
        f"# MATIC chemistry checks: molecules per second\n\n{args.n} MOSES SMILES, one process, one thread, "
        f"on a shared {os.cpu_count()}-CPU machine (load average {load:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end).\n\n" + markdown_table(rows)
    )
    write_results(
        args.out,
        {
            "n": args.n,
            "ref": args.ref,
            "load_avg_start": load,
            "load_avg_end": os.getloadavg()[0],
            "steps": rows,
        },
        md,
    )
    print(md)


if __name__ == "__main__":
    main()
