"""Library-scale screening: wall time and peak memory of `triptych matic screen` on N MOSES SMILES.

The library (the first N SMILES of MOSES train, as a gzipped .smi) is screened by the CLI as a
whole process, into a folder (the Ray library path: standardisation, PLE scores, PAINS/Brenk,
applicability domain against the model's training molecules). The process tree's resident
memory (driver + Ray's processes + workers, summed) is sampled every 0.5 s; its peak is the
number to hold under 2 GB. The model is the paper's default PLE (full gates) trained for one
epoch on 256 embedded NCATS molecules: its weights do not change the cost, and no metric of it
is reported. The machine is shared, so the load average is recorded beside every time.

    python benchmarks/matic_screen_scale.py --n 1000000 --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MOSES = ROOT.parent / "shared" / "data" / "moses" / "train.csv.gz"
if not MOSES.is_file():
    MOSES = Path("/work/shared/data/moses/train.csv.gz")


def write_library(n: int, path: Path) -> int:
    with gzip.open(MOSES, "rt") as src, gzip.open(path, "wt", compresslevel=1) as dst:
        next(src)  # header
        k = 0
        for k, line in enumerate(src, start=1):
            dst.write(f"{line.strip()} moses{k}\n")
            if k == n:
                break
    return k


def train_model(folder: Path) -> Path:
    from triptych.matic.data import load_embedded, split_table
    from triptych.matic.train import TrainConfig, train_predictor

    table = load_embedded()
    table = table.subset(np.random.default_rng(0).choice(len(table), 256, replace=False))
    splits = split_table(table, "random", 0)
    config = TrainConfig(tasks=table.tasks, max_epochs=1, patience=1)  # the paper's PLE, full gates
    model = train_predictor(splits, config, folder, progress=False)
    (folder / "train.smi").write_text("\n".join(splits.train.smiles) + "\n")
    return model


def tree_memory(pid: int) -> tuple[int, int, int]:
    """(sum of RSS, sum of PSS, largest single RSS) over the process and its descendants.

    RSS counts shared pages (torch's libraries, Ray's object store) once per process; PSS
    splits them between the processes sharing them, so its sum is the tree's real footprint.
    """
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0, 0
    rss = pss = biggest = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            info = p.memory_full_info()
            rss, pss, biggest = rss + info.rss, pss + info.pss, max(biggest, info.rss)
    return rss, pss, biggest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "matic_screen_scale")
    ap.add_argument("--work", type=Path, default=None, help="Scratch folder (default: a temporary one).")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="matic_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    lib = work / "library.smi.gz"
    n = write_library(args.n, lib)
    model = work / "model" / "model.safetensors"
    if not model.is_file():  # a rerun in the same --work folder reuses the model
        model = train_model(work / "model")
    out = work / f"screen_{n}_{args.workers}"
    cmd = [
        sys.executable,
        "-m",
        "triptych.cli",
        "matic",
        "screen",
        "--checkpoint",
        str(model),
        "--input",
        str(lib),
        "--out",
        str(out),
        "--workers",
        str(args.workers),
        "--shard-size",
        str(args.shard_size),
        "--domain-ref",
        str(work / "model" / "train.smi"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TRIPTYCH_QUIET": "1"}
    load_before = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = np.zeros(3, dtype=np.int64)
    while proc.poll() is None:
        peak = np.maximum(peak, tree_memory(proc.pid))
        time.sleep(0.5)
    wall = time.perf_counter() - start
    output = proc.stdout.read()
    if proc.returncode:
        sys.exit(f"screen failed ({proc.returncode}):\n{output}")
    summary = json.loads((out / "summary.json").read_text())
    result = {
        "n": n,
        "workers": args.workers,
        "shard_size": args.shard_size,
        "wall_s": round(wall, 1),
        "molecules_per_s": round(n / wall, 1),
        "peak_rss_tree_gb": round(peak[0] / 2**30, 3),
        "peak_pss_tree_gb": round(peak[1] / 2**30, 3),
        "peak_rss_one_process_gb": round(peak[2] / 2**30, 3),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "n_valid": summary["n_valid"],
        "n_duplicates": summary["n_duplicates"],
        "command": " ".join(cmd),
        "cli_output": output.strip().splitlines()[-1:],
    }
    from triptych.core.results import write_results

    md = (
        f"# matic screen at library scale\n\n{n} MOSES SMILES (gzipped .smi), `--workers {args.workers}`, "
        f"shards of {args.shard_size}, whole CLI process, on a shared {os.cpu_count()}-CPU machine.\n\n"
        f"| molecules | wall (s) | mol/s | peak PSS, process tree (GB) | peak RSS summed (GB) | "
        f"largest process RSS (GB) | load avg before / after |\n|---|---|---|---|---|---|---|\n"
        f"| {n} | {result['wall_s']} | {result['molecules_per_s']} | {result['peak_pss_tree_gb']} | "
        f"{result['peak_rss_tree_gb']} | {result['peak_rss_one_process_gb']} | "
        f"{result['load_avg_before'][0]} / {result['load_avg_after'][0]} |\n\n"
        "Memory is sampled every 0.5 s over the driver, Ray's own processes and the workers; PSS shares "
        "pages between the processes that map them (the real footprint), summed RSS counts shared "
        "libraries once per process. "
        "The load average counts every helper sharing the machine: throughput is what this run got, "
        "not what the code does on an idle machine.\n"
    )
    out_dir = args.out / f"n{n}_w{args.workers}"
    write_results(out_dir, result, md)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
