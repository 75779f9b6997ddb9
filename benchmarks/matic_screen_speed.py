"""Screening and training speed of MATIC's paper PLE against chemprop 2.x, both as whole processes.

Screening: ``triptych matic screen`` (the paper's PLE, full gates; and the ``--prefilter``
cascade) and ``chemprop predict`` on the same 10,000 MOSES SMILES (the first SMILES of the
MOSES subset embedded with the generator), each with its defaults, from the shell as a
user runs them (interpreter start, imports, reading, featurising, predicting, writing).
chemprop runs twice per pair, with its default threads and with one thread
(``OMP_NUM_THREADS=1``), and the faster of the two is the reference: on a loaded machine
two intra-op threads can be much slower than one. The prefilter is fitted (untimed) on the
last 25,000 SMILES of the same embedded subset, disjoint from the screened ones; its top-1%
recall is measured against the full PLE's ranking of the same pair.

Training: ``triptych matic train`` (the paper's PLE, full gates) and ``chemprop train``
(multi-task D-MPNN, defaults) on the MATIC paper split, each for 1 and for E epochs, both
with ``OMP_NUM_THREADS=1`` (one core each: the same thread setting for both); seconds per
epoch = (t_E - t_1) / (E - 1) removes start-up, featurisation and test evaluation (whole-run
times are reported too).

The tools alternate within a pair (A B / B A ...), every pair runs inside the shared timing
lock (``flock`` on ``--lock``), and the summary is the median over pairs of the per-pair
ratio. CPU seconds are the children's user + system time (``getrusage``), which includes
worker processes. chemprop 2.3.1 pins its own RDKit, so it lives in its own virtual
environment; pass its executable with ``--chemprop``.

Example:
    python benchmarks/matic_screen_speed.py --chemprop .venv-chemprop/bin/chemprop \\
        --out benchmarks/results/matic_screen_speed
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np

from triptych.core.results import markdown_table, write_results

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["label_3cl", "label_cell"]


def library(n: int, path: Path) -> Path:
    """The first ``n`` SMILES of the embedded MOSES subset, as a CSV with a ``smiles`` column."""
    src = resources.files("triptych.matic.generate") / "data" / "moses_train_50k.csv.gz"
    with gzip.open(src.open("rb"), "rt") as handle:
        smiles = [line.strip() for line in handle][1 : n + 1]
    path.write_text("smiles\n" + "\n".join(smiles) + "\n")
    return path


@contextlib.contextmanager
def timing_lock(path: Path | None):
    """Hold the machine-wide timing lock (``flock``) around one timed pair, so no other timing overlaps it.

    Under ``/work/wt/timed`` (``TRIPTYCH_TIMED=1``) the lock is held already, for the whole run.
    """
    if path is None or os.environ.get("TRIPTYCH_TIMED"):
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def timed(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` to completion; wall seconds, CPU seconds (user + sys, with its children) and peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("w") as handle:
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env or ENV, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "max_rss_mb_children_so_far": after.ru_maxrss / 1024}


# Both tools run with their own thread defaults: the per-test single-thread settings are removed.
ENV = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
ENV["TRIPTYCH_QUIET"] = "1"  # no progress bar redraws in a log file; chemprop's bar is left on (its default)
ONE_THREAD = {**ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def split_files(data_dir: Path, work: Path) -> list[Path]:
    """The MATIC paper split, as chemprop reads it (train, val, test CSVs with the same columns)."""
    out = []
    for name in ("train", "val", "test"):
        dst = work / f"multi_{name}.csv"
        shutil.copy(data_dir / f"multi_{name}.csv", dst)
        out.append(dst)
    return out


def triptych_train(data_dir: Path, out: Path, epochs: int) -> list[str]:
    return [
        str(Path(sys.executable).parent / "triptych"),
        "matic",
        "train",
        "--data",
        f"matic:{data_dir}",
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        "--patience",
        str(epochs + 1),
        "--seed",
        "0",
    ]


def chemprop_train(chemprop: str, files: list[Path], out: Path, epochs: int) -> list[str]:
    # chemprop refuses fewer epochs than its 2 warm-up epochs; warm-up only shapes the learning-rate
    # schedule (not the cost of an epoch), so the 1-epoch run turns it off.
    warmup = ["--warmup-epochs", "0"] if epochs <= 2 else []
    return [
        chemprop,
        "train",
        "--data-path",
        *map(str, files),
        "--task-type",
        "classification",
        "--epochs",
        str(epochs),
        *warmup,
        "--save-dir",
        str(out),
        "--smiles-columns",
        "smiles",
        "--target-columns",
        *TASKS,
        "--data-seed",
        "0",
        "--pytorch-seed",
        "0",
    ]


def triptych_screen(model: Path, lib: Path, out: Path, prefilter: float | None = None) -> list[str]:
    cascade = ["--prefilter", str(prefilter)] if prefilter else []
    return [
        str(Path(sys.executable).parent / "triptych"),
        "matic",
        "screen",
        "--checkpoint",
        str(model),
        "--input",
        str(lib),
        "--out",
        str(out),
        *cascade,
    ]


def chemprop_predict(chemprop: str, model: Path, lib: Path, out: Path) -> list[str]:
    return [
        chemprop,
        "predict",
        "--test-path",
        str(lib),
        "--model-paths",
        str(model),
        "--preds-path",
        str(out),
        "--smiles-columns",
        "smiles",
    ]


def ranking_agreement(model: Path, lib: Path, n: int) -> dict:
    """The screen's model pass (stacked, bf16 and fp32) against PyG's per-network fp32 forward on ``n`` library SMILES.

    Agreement of the dual score: max absolute difference, Spearman, and the overlap of the top 1%.
    """
    import torch
    from scipy.stats import spearmanr

    from triptych.matic.predictor import load_predictor

    torch.set_num_threads(1)
    smiles = lib.read_text().split()[1 : n + 1]
    ref = load_predictor(model)
    ref.model.stacked = False
    base = ref.predict_proba(smiles, 64).prod(axis=1)
    ok = np.flatnonzero(np.isfinite(base))
    top = max(1, round(0.01 * len(ok)))
    best = set(ok[np.argsort(-base[ok], kind="stable")[:top]])
    out = {"n": len(ok)}
    for precision in ("fp32", "bf16"):
        dual = load_predictor(model, pyg=False, precision=precision).predict_proba(smiles, 16).prod(axis=1)
        mine = set(ok[np.argsort(-dual[ok], kind="stable")[:top]])
        out[precision] = {
            "max_abs_diff_dual": float(np.abs(dual[ok] - base[ok]).max()),
            "spearman_dual": float(spearmanr(dual[ok], base[ok]).statistic),
            "top1pct_overlap": len(mine & best) / top,
        }
    return out


# Lightning's progress bar (both tools use it): "Epoch 1/1 ━━━ 33/33 0:00:31 ..." once an epoch's batches are done.
EPOCH_BAR = re.compile(r"Epoch (\d+)/\d+\s+\S+\s+(\d+)/(\d+)\s+(\d+):(\d\d):(\d\d)")


def last_epoch_seconds(log: Path) -> float | None:
    """Seconds of the last training epoch's batches, as the run's own progress bar timed them.

    In-process and per epoch: no start-up, featurisation, validation or test; 1 s resolution.
    """
    done = [
        m
        for m in EPOCH_BAR.finditer(log.read_text(errors="replace").replace("\r", "\n"))
        if m.group(2) == m.group(3)
    ]
    if not done:
        return None
    h, mnt, sec = (int(done[-1].group(i)) for i in (4, 5, 6))
    return float(h * 3600 + mnt * 60 + sec)


def cascade_recall(full: Path, cascade: Path, top: float = 0.01) -> float:
    """Share of the full PLE's top ``top`` (by dual score) that the cascade sent to the PLE."""
    import pandas as pd

    f, c = pd.read_csv(full), pd.read_csv(cascade)
    best = set(f.nsmallest(max(1, round(top * len(f))), "rank")["line"])
    return len(best & set(c.loc[c["dual_score"].notna(), "line"])) / len(best)


LOCKED = (
    "the whole run under `/work/wt/timed` (the shared timing lock held, every other process at autogroup nice 19)"
    if os.environ.get("TRIPTYCH_TIMED")
    else "each pair inside the shared timing lock"
)


def med(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def report(
    args: argparse.Namespace,
    screen_pairs: list[dict],
    train_pairs: list[dict],
    runs: list[dict],
    agreement: dict | None,
) -> None:
    """Write results.json and results.md from what has been measured so far (called after every pair)."""
    summary = {
        "screen_throughput_ratio_median": med(p["throughput_ratio"] for p in screen_pairs),
        "screen_cpu_ratio_median": med(p["cpu_ratio"] for p in screen_pairs),
        "prefilter_throughput_ratio_median": med(p.get("prefilter_throughput_ratio") for p in screen_pairs),
        "prefilter_top1pct_recall_median": med(p.get("prefilter_top1pct_recall") for p in screen_pairs),
        "triptych_mol_per_s_median": med(p["triptych_mol_per_s"] for p in screen_pairs),
        "prefilter_mol_per_s_median": med(p.get("prefilter_mol_per_s") for p in screen_pairs),
        "chemprop_mol_per_s_median": med(p["chemprop_mol_per_s"] for p in screen_pairs),
        "train_s_per_epoch_ratio_median": med(p["ratio_s_per_epoch"] for p in train_pairs),
        "train_cpu_per_epoch_ratio_median": med(p["ratio_cpu_per_epoch"] for p in train_pairs),
        "train_whole_run_ratio_median": med(p["ratio_whole_run_E"] for p in train_pairs),
        "train_in_process_epoch_ratio_median": med(p.get("ratio_in_process_epoch") for p in train_pairs),
        "triptych_s_per_epoch_median": med(p["s_per_epoch"]["triptych"] for p in train_pairs),
        "chemprop_s_per_epoch_median": med(p["s_per_epoch"]["chemprop"] for p in train_pairs),
    }
    load = os.getloadavg()
    results = {
        "summary": summary,
        "screen_pairs": screen_pairs,
        "train_pairs": train_pairs,
        "runs": runs,
        "stacked_vs_pyg": agreement,
        "prefilter_fit": args.prefilter_fit,
        "settings": {
            "n": args.n,
            "train_pairs": args.train_pairs,
            "epochs": args.epochs,
            "train_threads": getattr(args, "train_threads", "one"),
            "screen_pairs": args.screen_pairs,
            "prefilter_fraction": args.fraction,
            "chemprop": args.chemprop,
            "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "load_avg_at_end": load,
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "command": " ".join(sys.argv),
        },
    }

    def row(measure: str, key: str, target: str = "") -> dict:
        return {"measure": measure, "median": summary[key], "target": target}

    md = [
        "# MATIC screening and training speed against chemprop\n",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. {args.n} MOSES SMILES screened; training on the "
        f"MATIC paper split. Whole processes, alternating A/B, {LOCKED} while the other jobs on the machine "
        f"ran niced; training with {getattr(args, 'train_threads', 'one')} thread(s) per tool; {len(train_pairs)} training "
        f"pairs and {len(screen_pairs)} screening pairs; medians of per-pair ratios. {os.cpu_count()} cores "
        f"shared with other jobs (load average at the end: {load[0]:.1f}, and per run in the table below), so "
        "absolute numbers are noisy; the ratios are the result. chemprop's reference in each screening pair "
        "is the faster of its default threads and one thread.\n",
        f"Command: `{' '.join(sys.argv)}`\n",
        markdown_table(
            [
                row(
                    "screen throughput, triptych PLE / chemprop (wall)",
                    "screen_throughput_ratio_median",
                    ">= 1.5",
                ),
                row("screen, chemprop CPU s / triptych CPU s", "screen_cpu_ratio_median"),
                row(
                    f"screen throughput, triptych --prefilter {args.fraction} / chemprop (wall)",
                    "prefilter_throughput_ratio_median",
                    ">= 5",
                ),
                row(
                    "--prefilter: recall of the full PLE's top 1%",
                    "prefilter_top1pct_recall_median",
                    ">= 0.95",
                ),
                row("triptych screen (PLE), mol/s", "triptych_mol_per_s_median"),
                row("triptych screen --prefilter, mol/s", "prefilter_mol_per_s_median"),
                row("chemprop predict, mol/s", "chemprop_mol_per_s_median"),
                row("train s/epoch, triptych / chemprop (wall)", "train_s_per_epoch_ratio_median", "<= 1.5"),
                row(
                    "train s/epoch from each run's own progress bar (last epoch), triptych / chemprop",
                    "train_in_process_epoch_ratio_median",
                    "<= 1.5",
                ),
                row("train CPU s/epoch, triptych / chemprop", "train_cpu_per_epoch_ratio_median"),
                row(
                    f"train whole run of {args.epochs} epochs, triptych / chemprop",
                    "train_whole_run_ratio_median",
                ),
                row("triptych s/epoch", "triptych_s_per_epoch_median"),
                row("chemprop s/epoch", "chemprop_s_per_epoch_median"),
            ],
            floatfmt="{:.2f}",
        ),
        "\n## Runs\n",
        markdown_table(
            [{k: v for k, v in r.items() if k != "max_rss_mb_children_so_far"} for r in runs],
            floatfmt="{:.1f}",
        ),
    ]
    if args.prefilter_fit:
        md.append(
            f"\nPrefilter fit (distilled from the 1-epoch PLE, held-out molecules): {args.prefilter_fit}\n"
        )
    if agreement:
        md.append(
            f"\nThe screen's model pass (stacked, PyG-free) against PyG's per-network fp32 forward on "
            f"{agreement['n']} library SMILES (dual score):\n"
        )
        md.append(
            markdown_table(
                [{"precision": k, **v} for k, v in agreement.items() if k != "n"], floatfmt="{:.6f}"
            )
        )
    write_results(args.out, results, "\n".join(md))


def add_epoch_times(pair: dict, work: Path, epochs: int) -> None:
    """Add each tool's last-epoch seconds (its own progress bar, E-epoch run) and their ratio to a training pair."""
    k = pair["pair"]
    t = {
        tool: last_epoch_seconds(work / f"train_{tool}_{epochs}_{k}.log") for tool in ("triptych", "chemprop")
    }
    pair["in_process_last_epoch_s"] = t
    pair["ratio_in_process_epoch"] = t["triptych"] / t["chemprop"] if all(t.values()) else None


def rewrite_report(args: argparse.Namespace) -> None:
    """Re-render results.json/md from an earlier run's results and logs (see ``--report-only``)."""
    import json

    old = json.loads((args.out / "results.json").read_text())
    work = args.work.resolve()
    for pair in old["train_pairs"]:
        add_epoch_times(pair, work, old["settings"]["epochs"])
    settings = old["settings"]
    args.n, args.epochs, args.fraction = settings["n"], settings["epochs"], settings["prefilter_fraction"]
    args.screen_pairs, args.train_pairs, args.chemprop = (
        settings["screen_pairs"],
        settings["train_pairs"],
        settings["chemprop"],
    )
    args.prefilter_fit = old.get("prefilter_fit")
    sys.argv = settings["command"].split()  # the command that measured, not this rewrite
    report(args, old["screen_pairs"], old["train_pairs"], old["runs"], old.get("stacked_vs_pyg"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/matic_screen_speed"))
    ap.add_argument("--work", type=Path, default=Path("bench_out/matic_screen_speed"))
    ap.add_argument(
        "--data",
        type=Path,
        default=ROOT.parent / "shared" / "data" / "matic",
        help="folder with multi_{train,val,test}.csv (the MATIC paper split)",
    )
    ap.add_argument("--chemprop", default=shutil.which("chemprop") or ".venv-chemprop/bin/chemprop")
    ap.add_argument("--n", type=int, default=10_000, help="SMILES to screen (at most 25,000)")
    ap.add_argument("--screen-pairs", type=int, default=3, help="alternating A/B screening pairs")
    ap.add_argument(
        "--train-pairs", type=int, default=2, help="alternating A/B training pairs (1 and E epochs each)"
    )
    ap.add_argument(
        "--epochs", type=int, default=2, help="E: the longer training run (the shorter is 1 epoch)"
    )
    ap.add_argument(
        "--train-threads",
        choices=["one", "default"],
        default="one",
        help="training runs with OMP_NUM_THREADS=1 (one), or each tool's default threads (default)",
    )
    ap.add_argument("--fraction", type=float, default=0.05, help="--prefilter fraction screened")
    ap.add_argument("--prefilter-n", type=int, default=25_000, help="SMILES the prefilter is distilled on")
    ap.add_argument(
        "--lock",
        type=Path,
        default=Path("/work/wt/timing.lock") if Path("/work/wt").is_dir() else None,
        help="file to flock around every timed pair (the machine's shared timing lock)",
    )
    ap.add_argument(
        "--screens-only",
        action="store_true",
        help="keep the training pairs of --out's results.json and screen with their models in --work",
    )
    ap.add_argument(
        "--train-only",
        action="store_true",
        help="run the training pairs only, keeping the screening pairs of --out's results.json",
    )
    ap.add_argument(
        "--agreement-n", type=int, default=10_000, help="SMILES for the bf16/fp32 vs PyG ranking check"
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite --out's results from its results.json and the logs in --work (no runs; adds the "
        "progress-bar epoch times to results written before they were parsed)",
    )
    args = ap.parse_args()
    if args.report_only:
        rewrite_report(args)
        return
    if not (args.data / "multi_train.csv").is_file():
        sys.exit(f"{args.data}: no multi_train.csv; pass --data with the MATIC paper split")
    if args.n > 25_000:
        sys.exit(
            "--n: at most 25,000 (the prefilter is fitted on the other half of the 50,000 embedded SMILES)"
        )
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    lib = library(args.n, work / "library.csv")
    files = split_files(args.data.resolve(), work)
    runs: list[dict] = []
    args.prefilter_fit = None

    def run(tool: str, what: str, cmd: list[str], tag: str, env: dict | None = None, **extra) -> dict:
        r = {
            "tool": tool,
            "what": what,
            **extra,
            **timed(cmd, work / f"{tag}.log", env),
            "load1": os.getloadavg()[0],
        }
        runs.append(r)
        print(f"{tool:18s} {what:8s} {extra} wall {r['wall_s']:.1f} s  cpu {r['cpu_s']:.1f} s", flush=True)
        return r

    def train(tool: str, ep: int, k: int) -> dict:
        out = work / f"train_{tool}_{ep}ep_{k}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = (
            triptych_train(args.data.resolve(), out, ep)
            if tool == "triptych"
            else chemprop_train(args.chemprop, files, out, ep)
        )
        env = ONE_THREAD if args.train_threads == "one" else ENV  # "default": each tool's own thread count
        return run(tool, "train", cmd, f"train_{tool}_{ep}_{k}", env, epochs=ep, pair=k)

    # 1. Training pairs: 1 and E epochs of both, alternating which tool goes first; one lock per pair.
    #    Pair 0's 1-epoch models are the ones screened (the speed of a screen does not depend on training length).
    train_pairs = []

    def train_pair(k: int) -> None:
        order = [("triptych", 1), ("chemprop", 1), ("chemprop", args.epochs), ("triptych", args.epochs)]
        with timing_lock(args.lock):
            trained = {(t, e): train(t, e, k) for t, e in (order if k % 2 == 0 else order[::-1])}
        per_epoch = {
            t: (trained[(t, args.epochs)]["wall_s"] - trained[(t, 1)]["wall_s"]) / (args.epochs - 1)
            for t in ("triptych", "chemprop")
        }
        per_epoch_cpu = {
            t: (trained[(t, args.epochs)]["cpu_s"] - trained[(t, 1)]["cpu_s"]) / (args.epochs - 1)
            for t in ("triptych", "chemprop")
        }
        train_pairs.append(
            {
                "pair": k,
                "s_per_epoch": per_epoch,
                "cpu_s_per_epoch": per_epoch_cpu,
                "ratio_s_per_epoch": per_epoch["triptych"] / per_epoch["chemprop"],
                "ratio_cpu_per_epoch": per_epoch_cpu["triptych"] / per_epoch_cpu["chemprop"],
                "ratio_whole_run_E": trained[("triptych", args.epochs)]["wall_s"]
                / trained[("chemprop", args.epochs)]["wall_s"],
            }
        )
        add_epoch_times(train_pairs[-1], work, args.epochs)
        report(args, screen_pairs, train_pairs, runs, None)

    screen_pairs: list[dict] = []
    if args.train_only:  # screening pairs (and the ranking check) from an earlier run of this script
        import json

        earlier_path = args.out / "results.json"
        earlier = (  # a fresh --out: training pairs only
            json.loads(earlier_path.read_text())
            if earlier_path.is_file()
            else {"screen_pairs": [], "runs": [], "settings": {"prefilter_fraction": args.fraction}}
        )
        screen_pairs += earlier["screen_pairs"]
        runs += [r for r in earlier["runs"] if r["what"] == "screen"]
        args.prefilter_fit = earlier.get("prefilter_fit")
        args.screen_pairs = len(screen_pairs)
        args.fraction = earlier["settings"]["prefilter_fraction"]  # the fraction those screens ran
        for k in range(args.train_pairs):
            train_pair(k)
        report(args, screen_pairs, train_pairs, runs, earlier.get("stacked_vs_pyg"))
        print(f"wrote {args.out / 'results.json'}")
        return
    if args.screens_only:  # training pairs (and their models in --work) from an earlier run of this script
        import json

        earlier = json.loads((args.out / "results.json").read_text())
        train_pairs += earlier["train_pairs"]
        args.epochs = earlier["settings"]["epochs"]  # the E those training pairs ran
        for pair in train_pairs:
            add_epoch_times(pair, work, args.epochs)
        runs += [r for r in earlier["runs"] if r["what"] == "train"]
        args.train_pairs = len(train_pairs)
    else:
        train_pair(0)  # then the screens (which need pair 0's models), then the other training pairs
    our_model = work / "train_triptych_1ep_0" / "model.safetensors"
    cp_model = next((work / "train_chemprop_1ep_0").rglob("best*.pt"))

    # 2. The prefilter of the screened model (untimed, niced): distilled on SMILES the screen never sees.
    prefilter = our_model.parent / "prefilter.safetensors"
    fit = (
        subprocess.CompletedProcess([], 0)
        if args.screens_only and prefilter.is_file()
        else subprocess.run(
            [
                "nice",
                "-n",
                "19",
                str(Path(sys.executable).parent / "triptych"),
                "matic",
                "prefilter",
                "--checkpoint",
                str(our_model),
                "--n",
                str(args.prefilter_n),
            ],
            env=ONE_THREAD,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    )
    if fit.returncode:
        sys.exit(f"prefilter fit failed:\n{fit.stdout}\n{fit.stderr}")
    from triptych.core.checkpoint import read_header

    args.prefilter_fit = read_header(prefilter)["extra"]

    # 3. Screening pairs: PLE, chemprop (default threads, one thread), cascade; the order flips every pair.
    for k in range(args.screen_pairs):
        order = ["triptych", "chemprop", "chemprop-1thread", "triptych-prefilter"]
        pair = {}
        with timing_lock(args.lock):
            for tool in order if k % 2 == 0 else order[::-1]:
                out = work / f"preds_{tool}_{k}.csv"
                if tool.startswith("triptych"):
                    cmd = triptych_screen(our_model, lib, out, args.fraction if "prefilter" in tool else None)
                else:
                    cmd = chemprop_predict(args.chemprop, cp_model, lib, out)
                env = ONE_THREAD if tool == "chemprop-1thread" else ENV
                pair[tool] = run(tool, "screen", cmd, f"screen_{tool}_{k}", env, pair=k)
        chemprop = min(pair["chemprop"]["wall_s"], pair["chemprop-1thread"]["wall_s"])
        chemprop_cpu = min(pair["chemprop"]["cpu_s"], pair["chemprop-1thread"]["cpu_s"])
        screen_pairs.append(
            {
                "pair": k,
                "throughput_ratio": chemprop / pair["triptych"]["wall_s"],
                "cpu_ratio": chemprop_cpu / pair["triptych"]["cpu_s"],
                "prefilter_throughput_ratio": chemprop / pair["triptych-prefilter"]["wall_s"],
                "prefilter_top1pct_recall": cascade_recall(
                    work / f"preds_triptych_{k}.csv", work / f"preds_triptych-prefilter_{k}.csv"
                ),
                "triptych_mol_per_s": args.n / pair["triptych"]["wall_s"],
                "prefilter_mol_per_s": args.n / pair["triptych-prefilter"]["wall_s"],
                "chemprop_mol_per_s": args.n / chemprop,
            }
        )
        report(args, screen_pairs, train_pairs, runs, None)

    agreement = ranking_agreement(our_model, lib, args.agreement_n)
    report(args, screen_pairs, train_pairs, runs, agreement)
    for k in range(1 if not args.screens_only else args.train_pairs, args.train_pairs):
        train_pair(k)
    report(args, screen_pairs, train_pairs, runs, agreement)
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
