"""Library-scale screening: wall time and peak memory of `triptych matic screen` on N MOSES SMILES.

The library (the first N SMILES of MOSES train, as ``--files`` gzipped .smi shards) is screened
by the CLI as a whole process, into a folder (the Ray library path: standardisation, PLE
scores, PAINS/Brenk, applicability domain against the model's training molecules). With
``--prefilter F`` the library is one gzipped .smi screened by the single-file cascade instead
(a fingerprint model ranks every molecule, the PLE scores the top F; no standardisation,
alerts or domain). The process tree's memory (driver + Ray's processes + workers) is sampled
every 0.5 s with psutil (PSS summed: the real footprint; RSS summed; the largest single RSS);
its peak is the number to hold under 2 GB. The command also runs under ``/usr/bin/time -v``
(its maximum RSS: the largest process it waited for). The model is the paper's default PLE
(full gates) trained for one epoch on 256 embedded NCATS molecules: its weights do not change
the cost, and no metric of it is reported. The machine is shared, so the load average is
sampled every 30 s and recorded beside the time.

    python benchmarks/matic_screen_scale.py --n 1000000 --workers 2 --work /tmp/matic_scale
    python benchmarks/matic_screen_scale.py --n 1000000 --prefilter 0.1 --work /tmp/matic_scale
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import re
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


def write_library(n: int, folder: Path, files: int = 1) -> tuple[int, list[Path]]:
    """The first ``n`` MOSES train SMILES as ``files`` gzipped .smi parts (``SMILES mosesK``)."""
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-n // files)
    paths = [folder / f"part-{i:03d}.smi.gz" for i in range(files)]
    done = folder / f"done_{n}_{files}"
    if done.is_file():  # written by an earlier run in the same --work folder
        return n, paths
    dst = None
    k = 0
    with gzip.open(MOSES, "rt") as src:
        next(src)  # header
        for k, line in enumerate(src, start=1):
            if (k - 1) % per == 0:
                if dst is not None:
                    dst.close()
                dst = gzip.open(paths[(k - 1) // per], "wt", compresslevel=1)  # noqa: SIM115
            dst.write(f"{line.strip().split(',')[0]} moses{k}\n")
            if k == n:
                break
    if dst is not None:
        dst.close()
    done.write_text(str(k))
    return k, paths[: -(-k // per)]


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


def fit_prefilter(triptych: list[str], model: Path) -> dict:
    """``prefilter.safetensors`` beside ``model`` (fitted once, untimed); its held-out fit report."""
    from triptych.core.checkpoint import read_header

    path = model.parent / "prefilter.safetensors"
    if not path.is_file():
        subprocess.run([*triptych, "prefilter", "--checkpoint", str(model)], check=True)
    return read_header(path)["extra"]


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
    ap.add_argument("--files", type=int, default=10, help="gzipped .smi parts the library is written as")
    ap.add_argument(
        "--prefilter", type=float, default=None, help="screen one file with the cascade at this fraction"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "matic_screen_scale")
    ap.add_argument("--work", type=Path, default=None, help="Scratch folder (default: a temporary one).")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="matic_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    files = 1 if args.prefilter else args.files
    n, parts = write_library(args.n, work / f"library_{args.n}_{files}", files)
    model = work / "model" / "model.safetensors"
    if not model.is_file():  # a rerun in the same --work folder reuses the model
        model = train_model(work / "model")
    triptych = [sys.executable, "-m", "triptych.cli", "matic"]
    if args.prefilter:
        prefilter_fit = fit_prefilter(triptych, model)
        out = work / f"screen_{n}_prefilter{args.prefilter}.csv"
        cmd = [*triptych, "screen", "--checkpoint", str(model), "--input", str(parts[0])]
        cmd += ["--out", str(out), "--prefilter", str(args.prefilter)]
        label = f"n{n}_prefilter{args.prefilter}"
    else:
        prefilter_fit = None
        out = work / f"screen_{n}_{args.workers}"
        cmd = [
            *triptych,
            "screen",
            "--checkpoint",
            str(model),
            "--input",
            str(parts[0].parent / "part-*.smi.gz"),
        ]
        cmd += ["--out", str(out), "--workers", str(args.workers), "--shard-size", str(args.shard_size)]
        cmd += ["--domain-ref", str(work / "model" / "train.smi")]
        label = f"n{n}_w{args.workers}"
    cmd = ["/usr/bin/time", "-v", *cmd] if Path("/usr/bin/time").is_file() else cmd
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TRIPTYCH_QUIET": "1"}
    load_before = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = np.zeros(3, dtype=np.int64)
    loads, last_load = [os.getloadavg()[0]], time.perf_counter()
    while proc.poll() is None:
        peak = np.maximum(peak, tree_memory(proc.pid))
        if time.perf_counter() - last_load >= 30:
            loads.append(os.getloadavg()[0])
            last_load = time.perf_counter()
        time.sleep(0.5)
    wall = time.perf_counter() - start
    output = proc.stdout.read()
    if proc.returncode:
        sys.exit(f"screen failed ({proc.returncode}):\n{output}")
    if args.prefilter:
        import pandas as pd

        table = pd.read_csv(out, usecols=["dual_score"])
        summary = {
            "n_valid": len(table),
            "n_duplicates": None,
            "n_ple_scored": int(table["dual_score"].notna().sum()),
        }
    else:
        summary = json.loads((out / "summary.json").read_text())
    max_rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", output)
    result = {
        "n": n,
        "workers": args.workers,
        "shard_size": args.shard_size,
        "wall_s": round(wall, 1),
        "molecules_per_s": round(n / wall, 1),
        "peak_rss_tree_gb": round(peak[0] / 2**30, 3),
        "peak_pss_tree_gb": round(peak[1] / 2**30, 3),
        "peak_rss_one_process_gb": round(peak[2] / 2**30, 3),
        "time_v_max_rss_gb": round(int(max_rss.group(1)) / 2**20, 3) if max_rss else None,
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "load1_every_30s": {
            "min": round(min(loads), 2),
            "mean": round(float(np.mean(loads)), 2),
            "max": round(max(loads), 2),
        },
        "cpus": os.cpu_count(),
        "n_valid": summary["n_valid"],
        "n_duplicates": summary["n_duplicates"],
        "n_ple_scored": summary.get("n_ple_scored"),
        "prefilter": args.prefilter,
        "prefilter_fit": prefilter_fit,
        "files": len(parts),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "command": " ".join(cmd),
        "benchmark_command": " ".join(sys.argv),
        "cli_output": [line for line in output.strip().splitlines() if line.startswith("screened")],
    }
    from triptych.core.results import write_results

    how = (
        f"one gzipped .smi, the single-file cascade `--prefilter {args.prefilter}` (2 scoring processes)"
        if args.prefilter
        else f"{len(parts)} gzipped .smi files, the Ray library path `--workers {args.workers}`, "
        f"shards of {args.shard_size}"
    )
    loads_s = result["load1_every_30s"]
    md = (
        f"# matic screen at library scale\n\n{result['date_utc']} UTC. {n} MOSES SMILES ({how}), whole CLI "
        f"process, autogroup-niced on a shared {os.cpu_count()}-CPU machine.\n\n"
        f"Command: `{' '.join(sys.argv)}`\n\n"
        "| molecules | wall (s) | mol/s | peak PSS, process tree (GB) | peak RSS summed (GB) | "
        "largest process RSS (GB) | load1 min / mean / max |\n|---|---|---|---|---|---|---|\n"
        f"| {n} | {result['wall_s']} | {result['molecules_per_s']} | {result['peak_pss_tree_gb']} | "
        f"{result['peak_rss_tree_gb']} | {result['peak_rss_one_process_gb']} | "
        f"{loads_s['min']} / {loads_s['mean']} / {loads_s['max']} |\n\n"
        "Memory is sampled every 0.5 s with psutil over the driver, Ray's own processes and the workers; "
        "PSS shares pages between the processes that map them (the real footprint), summed RSS counts "
        "shared libraries once per process. "
        "The load average (sampled every 30 s) counts every helper sharing the machine: throughput is "
        "what this run got, not what the code does on an idle machine.\n"
    )
    out_dir = args.out / label
    write_results(out_dir, result, md)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
