"""Does the faster training path learn the same model? Old (fp32) vs new (bf16 default, and fp32) on the paper split.

Each variant trains the paper's PLE (full gates) with ``train_predictor`` for ``--epochs``
epochs (no early stop) from the same seed, and records the validation loss after every
epoch and the chosen model's validation and test ROC-AUC / PR-AUC. Variants:

- ``old``: the code of ``--old-ref`` (a git revision: the training path before this change,
  fp32), extracted with ``git archive`` and put first on ``PYTHONPATH``;
- ``fp32``: this tree, ``precision="fp32"`` (differs from ``old`` only in the dropout's
  random numbers and the order of floating-point sums);
- ``bf16``: this tree, ``precision="bf16"`` (the default on a CPU with native bfloat16).

Each run is a subprocess with one thread (``OMP_NUM_THREADS=1``). Seeds differ between
repeats, not between variants; the variants' dropout masks differ, so compare against the
seed-to-seed spread.

Example:
    python benchmarks/matic_train_accuracy.py --data ../shared/data/matic --epochs 6 --seeds 0 1 \\
        --out benchmarks/results/matic_train_accuracy
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    """One training run in this process; prints a JSON line."""
    import torch

    torch.set_num_threads(1)
    import lightning as L

    import triptych.matic.train as T
    from triptych.matic.data import load_splits
    from triptych.matic.evaluation import evaluate_checkpoint

    curve: list[dict] = []

    class Curve(L.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                m = trainer.callback_metrics
                curve.append({"epoch": trainer.current_epoch, "val_loss": float(m["val_loss"])})

    make = T.make_trainer

    def make_trainer(*a, **kw):  # the same trainer, plus the per-epoch validation loss
        kw["callbacks"] = [*(kw.get("callbacks") or []), Curve()]
        return make(*a, **kw)

    T.make_trainer = make_trainer
    splits = load_splits(f"matic:{args.data}", "given", 0)
    extra = {} if args.variant == "old" else {"precision": args.variant}
    config = T.TrainConfig(
        tasks=splits.tasks, max_epochs=args.epochs, patience=args.epochs + 1, seed=args.seed, **extra
    )
    t0 = time.process_time()
    model = T.train_predictor(splits, config, Path(args.work), progress=False)
    cpu = time.process_time() - t0
    out = {
        "variant": args.variant,
        "seed": args.seed,
        "curve": curve,
        "val": evaluate_checkpoint(model, splits.val),
        "test": evaluate_checkpoint(model, splits.test),
        "train_cpu_s": cpu,
    }
    print("RESULT " + json.dumps(out), flush=True)


def commit(ref: str) -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def snapshot(ref: str, dest: Path) -> Path:
    """The ``src`` tree of git revision ``ref`` under ``dest``."""
    blob = subprocess.run(["git", "archive", ref, "src"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/matic"))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variants", nargs="+", default=["old", "fp32", "bf16"])
    ap.add_argument("--old-ref", default="main", help="git revision of the old training path")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/matic_train_accuracy"))
    ap.add_argument("--work", type=Path, default=Path("bench_out/matic_train_accuracy"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    # Both packages are snapshots (git archive), put ahead of this tree's editable install: edits made
    # while the runs go on do not leak into them.
    srcs = {"old": snapshot(args.old_ref, work / "old_src"), "new": snapshot("HEAD", work / "new_src")}
    old_commit, new_commit = commit(args.old_ref), commit("HEAD")  # the snapshots' revisions
    runs = []
    for seed in args.seeds:
        for variant in args.variants:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TRIPTYCH_QUIET": "1"}
            env["PYTHONPATH"] = str(srcs["old" if variant == "old" else "new"] / "src")
            cmd = [sys.executable, __file__, "--child", "--variant", variant, "--seed", str(seed)]
            cmd += ["--data", str(args.data.resolve()), "--epochs", str(args.epochs)]
            cmd += ["--work", str(work / f"{variant}_{seed}")]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                sys.exit(f"{variant} seed {seed} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(line[0][7:])
            runs.append(r)
            print(variant, seed, [round(c["val_loss"], 4) for c in r["curve"]], flush=True)
    write(args, runs, old_commit, new_commit)


def write(args: argparse.Namespace, runs: list[dict], old_commit: str, head: str) -> None:
    from triptych.core.results import markdown_table, write_results

    rows = []
    for r in runs:
        row = {"variant": r["variant"], "seed": r["seed"]}
        for split in ("val", "test"):
            for task, m in r[split].items():
                row[f"{split} {task} ROC-AUC"] = round(m["roc_auc"], 3)
        row["best val loss"] = round(min(c["val_loss"] for c in r["curve"]), 4)
        row["val loss by epoch"] = " ".join(f"{c['val_loss']:.4f}" for c in r["curve"])
        row["train CPU s"] = round(r["train_cpu_s"], 1)
        rows.append(row)
    summary = []
    for v in args.variants:
        mine = [row for row in rows if row["variant"] == v]
        s = {"variant": v}
        for key in [k for k in rows[0] if "ROC-AUC" in k] + ["best val loss", "train CPU s"]:
            s[key] = round(statistics.mean(row[key] for row in mine), 4)
        summary.append(s)
    md = [
        "# MATIC training: does the fast path learn the same model?\n",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, new = {head}; old = {old_commit} (git snapshots). "
        f"Paper split, the paper's PLE (full gates), {args.epochs} epochs, seeds {args.seeds}, one thread each, "
        f"run niced on the shared 2-core machine (load average at the end {os.getloadavg()[0]:.1f}; CPU seconds "
        "are only indicative).\n",
        f"Command: `python benchmarks/matic_train_accuracy.py --data {args.data} --epochs {args.epochs} "
        f"--seeds {' '.join(map(str, args.seeds))} --old-ref {args.old_ref}`\n",
        "## Mean over seeds\n",
        markdown_table(summary),
        "\n## Runs\n",
        markdown_table(rows),
    ]
    write_results(
        args.out,
        {
            "settings": vars(args) | {"data": str(args.data), "out": str(args.out), "work": str(args.work)},
            "runs": runs,
        },
        "\n".join(md) + "\n",
    )


if __name__ == "__main__":
    main()
