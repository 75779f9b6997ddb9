"""Screening and training speed of MATIC's paper PLE against chemprop 2.x, both as whole processes.

Screening: ``triptych matic screen`` and ``chemprop predict`` on the same 10,000 MOSES
SMILES (the MOSES subset embedded with the generator), each with its defaults, from the
shell as a user runs them (interpreter start, imports, reading, featurising, predicting,
writing). Training: ``triptych matic train`` (the paper's PLE, full gates) and
``chemprop train`` (multi-task D-MPNN, defaults) on the MATIC paper split, each run for
1 and for E epochs; seconds per epoch = (t_E - t_1) / (E - 1), which removes start-up,
featurisation and test evaluation from the per-epoch figure (whole-run times are
reported too). The two tools alternate run by run (A B B A ...) so that load from other
processes on a shared machine hits both alike; the summary is the median over pairs of
the per-pair ratio. CPU seconds are the children's user + system time (``getrusage``),
which includes featurising worker processes.

chemprop 2.3.1 pins RDKit 2026.3.6 (through ``cuik_molmaker_pin``), so it lives in its
own virtual environment; pass its executable with ``--chemprop``.

Example:
    python benchmarks/matic_screen_speed.py --chemprop .venv-chemprop/bin/chemprop \\
        --out benchmarks/results/matic_screen_speed
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
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


def timed(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` to completion; wall seconds, CPU seconds (user + sys, with its children) and peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("w") as handle:
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "max_rss_mb_children_so_far": after.ru_maxrss / 1024}


# Both tools run with their own thread defaults: the per-test single-thread settings are removed.
ENV = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
ENV["TRIPTYCH_QUIET"] = "1"  # no progress bar redraws in a log file; chemprop's bar is left on (its default)


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


def triptych_screen(model: Path, lib: Path, out: Path) -> list[str]:
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


def ranking_agreement(model: Path, lib: Path, n: int = 2000) -> dict:
    """The batched (stacked) pass against PyG's per-network forward on ``n`` library SMILES: same ranking?"""
    import torch
    from scipy.stats import spearmanr

    from triptych.matic.predictor import load_predictor

    torch.set_num_threads(1)
    smiles = lib.read_text().split()[1 : n + 1]
    p = load_predictor(model)
    p.model.stacked = True
    fast = p.predict_proba(smiles, 64).prod(axis=1)
    p.model.stacked = False
    ref = p.predict_proba(smiles, 64).prod(axis=1)
    ok = np.isfinite(ref)
    return {
        "n": int(ok.sum()),
        "max_abs_diff_dual": float(np.abs(fast[ok] - ref[ok]).max()),
        "spearman_dual": float(spearmanr(fast[ok], ref[ok]).statistic),
    }


def report(
    args: argparse.Namespace,
    screen_pairs: list[dict],
    train_pairs: list[dict],
    runs: list[dict],
    agreement: dict | None,
) -> None:
    """Write results.json and results.md from what has been measured so far (called after every pair)."""

    def med(values) -> float | None:
        values = list(values)
        return statistics.median(values) if values else None

    summary = {
        "screen_throughput_ratio_median": med(p["throughput_ratio"] for p in screen_pairs),
        "screen_cpu_ratio_median": med(p["cpu_ratio"] for p in screen_pairs),
        "triptych_mol_per_s_median": med(p["triptych_mol_per_s"] for p in screen_pairs),
        "chemprop_mol_per_s_median": med(p["chemprop_mol_per_s"] for p in screen_pairs),
        "train_s_per_epoch_ratio_median": med(p["ratio_s_per_epoch"] for p in train_pairs),
        "train_cpu_per_epoch_ratio_median": med(p["ratio_cpu_per_epoch"] for p in train_pairs),
        "train_whole_run_ratio_median": med(p["ratio_whole_run_E"] for p in train_pairs),
        "triptych_s_per_epoch_median": med(p["s_per_epoch"]["triptych"] for p in train_pairs),
        "chemprop_s_per_epoch_median": med(p["s_per_epoch"]["chemprop"] for p in train_pairs),
    }
    results = {
        "summary": summary,
        "screen_pairs": screen_pairs,
        "train_pairs": train_pairs,
        "runs": runs,
        "stacked_vs_pyg": agreement,
        "settings": {
            "n": args.n,
            "train_pairs": args.train_pairs,
            "epochs": args.epochs,
            "screen_pairs": args.screen_pairs,
            "chemprop": args.chemprop,
            "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "load_avg_at_end": os.getloadavg(),
        },
    }
    md = [
        "# MATIC screening and training speed against chemprop\n",
        f"{args.n} MOSES SMILES screened; training on the MATIC paper split. Whole processes, defaults, "
        f"alternating A/B, {len(train_pairs)} training pairs and {len(screen_pairs)} screening pairs; medians of per-pair "
        f"ratios. {os.cpu_count()} cores shared with other jobs (load average at the end: "
        f"{os.getloadavg()[0]:.1f}), so absolute numbers are noisy; the ratios are the result.\n",
        markdown_table(
            [
                {
                    "measure": "screen throughput, triptych / chemprop (wall)",
                    "median": summary["screen_throughput_ratio_median"],
                    "target": ">= 1.5",
                },
                {
                    "measure": "screen, chemprop CPU s / triptych CPU s",
                    "median": summary["screen_cpu_ratio_median"],
                    "target": "",
                },
                {
                    "measure": "triptych screen, mol/s",
                    "median": summary["triptych_mol_per_s_median"],
                    "target": "",
                },
                {
                    "measure": "chemprop predict, mol/s",
                    "median": summary["chemprop_mol_per_s_median"],
                    "target": "",
                },
                {
                    "measure": "train s/epoch, triptych / chemprop (wall)",
                    "median": summary["train_s_per_epoch_ratio_median"],
                    "target": "<= 1.5",
                },
                {
                    "measure": "train CPU s/epoch, triptych / chemprop",
                    "median": summary["train_cpu_per_epoch_ratio_median"],
                    "target": "",
                },
                {
                    "measure": f"train whole run of {args.epochs} epochs, triptych / chemprop",
                    "median": summary["train_whole_run_ratio_median"],
                    "target": "",
                },
                {
                    "measure": "triptych s/epoch",
                    "median": summary["triptych_s_per_epoch_median"],
                    "target": "",
                },
                {
                    "measure": "chemprop s/epoch",
                    "median": summary["chemprop_s_per_epoch_median"],
                    "target": "",
                },
            ],
            floatfmt="{:.2f}",
        ),
        "\n## Runs\n",
        markdown_table(
            [{k: v for k, v in r.items() if k != "max_rss_mb_children_so_far"} for r in runs],
            floatfmt="{:.1f}",
        ),
    ]
    if agreement:
        md.append(
            f"\nStacked (batched) PLE pass against PyG's per-network forward on {agreement['n']} library SMILES: "
            f"max |dual score difference| {agreement['max_abs_diff_dual']:.2e}, "
            f"Spearman {agreement['spearman_dual']:.6f}.\n"
        )
    write_results(args.out, results, "\n".join(md))


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
    ap.add_argument("--n", type=int, default=10_000, help="SMILES to screen")
    ap.add_argument("--screen-pairs", type=int, default=3, help="alternating A/B screening pairs")
    ap.add_argument(
        "--train-pairs", type=int, default=2, help="alternating A/B training pairs (1 and E epochs each)"
    )
    ap.add_argument(
        "--reuse-models",
        action="store_true",
        help="screen with 1-epoch models already in --work (from an earlier, interrupted run)",
    )
    ap.add_argument(
        "--epochs", type=int, default=2, help="E: the longer training run (the shorter is 1 epoch)"
    )
    args = ap.parse_args()
    if not (args.data / "multi_train.csv").is_file():
        sys.exit(f"{args.data}: no multi_train.csv; pass --data with the MATIC paper split")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    lib = library(args.n, work / "library.csv")
    files = split_files(args.data.resolve(), work)
    runs: list[dict] = []

    def run(tool: str, what: str, cmd: list[str], tag: str, **extra) -> dict:
        r = {"tool": tool, "what": what, **extra, **timed(cmd, work / f"{tag}.log")}
        runs.append(r)
        print(f"{tool:9s} {what:14s} {extra} wall {r['wall_s']:.1f} s  cpu {r['cpu_s']:.1f} s", flush=True)
        return r

    def train(tool: str, ep: int, k: int) -> dict:
        out = work / f"train_{tool}_{ep}ep_{k}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = (
            triptych_train(args.data.resolve(), out, ep)
            if tool == "triptych"
            else chemprop_train(args.chemprop, files, out, ep)
        )
        return run(tool, "train", cmd, f"train_{tool}_{ep}_{k}", epochs=ep, pair=k)

    # 1. One-epoch training of both (the first half of training pair 0; these models are screened:
    #    screening speed does not depend on how long a model was trained).
    trained = {}
    for t in ("triptych", "chemprop"):
        done = work / f"train_{t}_1ep_0"
        if args.reuse_models and any(done.rglob("model.safetensors" if t == "triptych" else "best*.pt")):
            print(
                f"{t}: reusing the 1-epoch model in {done} (its training is not timed in this run)",
                flush=True,
            )
            continue
        trained[(t, 1, 0)] = train(t, 1, 0)
    our_model = work / "train_triptych_1ep_0" / "model.safetensors"
    cp_model = next((work / "train_chemprop_1ep_0").rglob("best*.pt"))

    # 2. Screening pairs, alternating which tool goes first.
    screen_pairs = []
    for k in range(args.screen_pairs):
        order = ["triptych", "chemprop"] if k % 2 == 0 else ["chemprop", "triptych"]
        pair = {}
        for tool in order:
            out = work / f"preds_{tool}_{k}.csv"
            cmd = (
                triptych_screen(our_model, lib, out)
                if tool == "triptych"
                else chemprop_predict(args.chemprop, cp_model, lib, out)
            )
            pair[tool] = run(tool, "screen", cmd, f"screen_{tool}_{k}", pair=k)
        screen_pairs.append(
            {
                "pair": k,
                "throughput_ratio": pair["chemprop"]["wall_s"] / pair["triptych"]["wall_s"],
                "cpu_ratio": pair["chemprop"]["cpu_s"] / pair["triptych"]["cpu_s"],
                "triptych_mol_per_s": args.n / pair["triptych"]["wall_s"],
                "chemprop_mol_per_s": args.n / pair["chemprop"]["wall_s"],
            }
        )
        report(args, screen_pairs, [], runs, None)

    # 3. Training pairs: 1 and E epochs of both, alternating.
    train_pairs = []
    for k in range(args.train_pairs if len(trained) == 2 else 0):
        order = [("chemprop", args.epochs), ("triptych", args.epochs)]
        if k > 0:
            order = (
                [("triptych", 1), ("chemprop", 1), *order]
                if k % 2 == 0
                else [("chemprop", 1), ("triptych", 1), *order[::-1]]
            )
        for tool, ep in order:
            trained[(tool, ep, k)] = train(tool, ep, k)
        pair = {(t, e): trained[(t, e, k)] for t in ("triptych", "chemprop") for e in (1, args.epochs)}
        per_epoch = {
            t: (pair[(t, args.epochs)]["wall_s"] - pair[(t, 1)]["wall_s"]) / (args.epochs - 1)
            for t in ("triptych", "chemprop")
        }
        per_epoch_cpu = {
            t: (pair[(t, args.epochs)]["cpu_s"] - pair[(t, 1)]["cpu_s"]) / (args.epochs - 1)
            for t in ("triptych", "chemprop")
        }
        train_pairs.append(
            {
                "pair": k,
                "s_per_epoch": per_epoch,
                "cpu_s_per_epoch": per_epoch_cpu,
                "ratio_s_per_epoch": per_epoch["triptych"] / per_epoch["chemprop"],
                "ratio_cpu_per_epoch": per_epoch_cpu["triptych"] / per_epoch_cpu["chemprop"],
                "ratio_whole_run_E": pair[("triptych", args.epochs)]["wall_s"]
                / pair[("chemprop", args.epochs)]["wall_s"],
            }
        )
        report(args, screen_pairs, train_pairs, runs, None)

    report(args, screen_pairs, train_pairs, runs, ranking_agreement(our_model, lib))
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
