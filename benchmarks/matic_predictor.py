"""MATIC predictors against the Morgan random forest and chemprop, early-stopped on validation, over seeds.

Models (``--models``): the paper's PLE (Attentive FP experts, light gate), MMoE and
single-task Attentive FP (early stopping on validation loss, the best epoch tested),
``fp_ple`` (ours: the PLE/CGC structure over Morgan-count experts,
:mod:`triptych.matic.fingerprint_model`), the Morgan RF and chemprop 2.3.1 (defaults;
its own best-validation epoch). Deep ensembles (``*_ensemble``, paper split) average the
probabilities of the seeds' models (one ensemble, one number, no sd). ``*+rf`` (ours): the
forest as an extra expert, its logit and the network's mixed per task by a logistic
regression fitted on the validation set. Calibration:
temperature and isotonic maps fitted on the VALIDATION predictions, ECE (10 bins) on the
test set before/after, and a reliability diagram.

Each (dataset, model, seed) run stores its validation and test probabilities under
``--work`` (a finished run is skipped, so the script resumes, and several processes can
share the work folder), and the report is rebuilt from all stored runs after each one.

    nice -n 19 python benchmarks/matic_predictor.py --data matic:../shared/data/matic \\
        --datasets paper,ncats --models fp_ple,rf --seeds 5 --out benchmarks/results/matic_predictor
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from triptych.core.results import markdown_table, mean_sd, write_results
from triptych.matic.baselines import chemprop_probs, morgan_fingerprints, random_forest_probs
from triptych.matic.calibration import Calibrator, expected_calibration_error, plot_reliability, reliability
from triptych.matic.data import EMBEDDED, MolTable, Splits, load_splits
from triptych.matic.fingerprint_model import FitConfig, fingerprint_logits, fit_fingerprint_ple
from triptych.matic.metrics import evaluate

GRAPH = ("ple", "mmoe", "single")
BLENDS = (
    "ple+rf",
    "fp_ple+rf",
    "ple+fp_ple+rf",
)  # ours: a network and the forest as experts, mixed on validation
ORDER = (
    "ple",
    "ple_ensemble",
    "mmoe",
    "single",
    "fp_ple",
    "fp_ple_ensemble",
    "ple+rf",
    "fp_ple+rf",
    "ple+fp_ple+rf",
    "rf",
    "chemprop",
)


def log_counts(smiles: list[str]) -> np.ndarray:
    """log(1 + Morgan counts), radius 2, 2048 folds: the input of :class:`FingerprintPLE`."""
    return np.log1p(morgan_fingerprints(smiles, counts=True).astype(np.float32))


def stack(*tables: MolTable) -> MolTable:
    """Several tables as one (predict val and test with one fitted model)."""
    return MolTable(
        [s for t in tables for s in t.smiles], np.vstack([t.labels for t in tables]), list(tables[0].tasks)
    )


def run_graph(arch: str, splits: Splits, seed: int, args: argparse.Namespace) -> tuple[np.ndarray, dict]:
    """Train one Attentive FP model (early stopping on validation loss); ``(n_val + n_test, T)`` probabilities."""
    import torch

    from triptych.matic.predictor import load_predictor
    from triptych.matic.train import TrainConfig, train_predictor

    torch.set_num_threads(1)
    both = stack(splits.val, splits.test)
    tasks_list = [splits.tasks] if arch != "single" else [[t] for t in splits.tasks]
    probs = np.full((len(both), len(splits.tasks)), np.nan)
    meta: dict = {}
    for tasks in tasks_list:
        cols = [splits.tasks.index(t) for t in tasks]
        sub = splits.select(tasks)
        cfg = TrainConfig(
            tasks=list(tasks),
            arch=arch,
            gate=args.gate,
            lr=args.lr,
            max_epochs=args.epochs,
            patience=args.patience,
            seed=seed,
        )
        with tempfile.TemporaryDirectory(prefix="matic-pred-") as tmp:
            path = train_predictor(sub, cfg, tmp, progress=False)
            from triptych.core.checkpoint import load_checkpoint

            _, header = load_checkpoint(path, kind="matic.predictor")
            probs[:, cols] = load_predictor(path).predict_proba(both.smiles)
            meta["/".join(tasks)] = {k: header["extra"].get(k) for k in ("epochs_run", "best_val_loss")}
    meta["budget"] = {"max_epochs": args.epochs, "patience": args.patience, "lr": args.lr, "gate": args.gate}
    return probs, meta


def run_fp_ple(splits: Splits, seed: int, args: argparse.Namespace, members: int) -> tuple[np.ndarray, dict]:
    """Mean probability of ``members`` fingerprint PLEs (seeds ``seed*1000 + m``)."""
    import torch

    torch.set_num_threads(1)
    from scipy.special import expit

    both = stack(splits.val, splits.test)
    xt, xb = log_counts(splits.train.smiles), log_counts(both.smiles)
    xv = xb[: len(splits.val)]
    probs, meta = [], []
    for m in range(members):
        cfg = FitConfig(seed=seed * 1000 + m, patience=args.fp_patience, max_epochs=args.fp_epochs)
        model, info = fit_fingerprint_ple(xt, splits.train.labels, xv, splits.val.labels, cfg)
        probs.append(expit(fingerprint_logits(model, xb)))
        meta.append(info)
    return np.mean(probs, axis=0), {"members": meta}


def run_one(model: str, splits: Splits, seed: int, args: argparse.Namespace) -> tuple[np.ndarray, dict]:
    """``(n_val + n_test, T)`` probabilities of one model and seed (chemprop: test rows only, val NaN)."""
    if model == "rf":
        return random_forest_probs(splits.train, stack(splits.val, splits.test), seed, args.rf_trees), {}
    if model == "fp_ple":
        return run_fp_ple(splits, seed, args, 1)
    if model == "chemprop":
        test = chemprop_probs(splits, seed, epochs=args.chemprop_epochs)
        return np.vstack([np.full((len(splits.val), len(splits.tasks)), np.nan), test]), {}
    return run_graph(model, splits, seed, args)


def make_splits(dataset: str, seed: int, data: str) -> Splits:
    if dataset == "paper":
        return load_splits(data)  # the same given split for every seed
    return load_splits(EMBEDDED, "scaffold", seed)  # a different scaffold split per seed


# ------------------------------------------------------------------ report


def _load_runs(work: Path) -> dict:
    runs: dict = {}
    for f in sorted(work.glob("*.npz")):
        z = np.load(f, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        runs.setdefault(meta["dataset"], {}).setdefault(meta["model"], {})[meta["seed"]] = {
            "probs": z["probs"],
            "meta": meta,
        }
    return runs


def _scores(labels: np.ndarray, probs: np.ndarray, tasks: list[str]) -> dict:
    return {t: {k: m[k] for k in ("roc_auc", "pr_auc")} for t, m in evaluate(labels, probs, tasks).items()}


def blend(members: list[np.ndarray], sp: Splits) -> np.ndarray:
    """Test probabilities of ``sigmoid(sum_m a_tm logit(p_m) + c_t)``, the weights fitted on validation.

    Each member's array holds validation rows, then test rows (as stored per run).
    """
    from scipy.special import logit
    from sklearn.linear_model import LogisticRegression

    n_val = len(sp.val)
    out = np.full((len(sp.test), len(sp.tasks)), np.nan)
    for j in range(len(sp.tasks)):
        z = logit(np.clip(np.stack([m[:, j] for m in members], axis=1), 1e-4, 1 - 1e-4))
        y = sp.val.labels[:, j]
        keep = ~np.isnan(y) & ~np.isnan(z[:n_val]).any(axis=1)
        lr = LogisticRegression(C=1.0).fit(z[:n_val][keep], y[keep].astype(int))
        ok = ~np.isnan(z[n_val:]).any(axis=1)
        out[ok, j] = lr.predict_proba(z[n_val:][ok])[:, 1]
    return out


def _graph_budgets(runs: dict) -> str:
    """The graph models' training budgets and the epochs they ran, from the stored runs."""
    parts = []
    for ds, models in runs.items():
        for model in GRAPH:
            by_seed = models.get(model, {})
            if not by_seed:
                continue
            b = next(iter(by_seed.values()))["meta"].get("budget", {})
            ran = [
                v["epochs_run"]
                for r in by_seed.values()
                for k, v in r["meta"].items()
                if isinstance(v, dict) and "epochs_run" in v
            ]
            parts.append(
                f"{ds} {model}: at most {b.get('max_epochs')} epochs, patience {b.get('patience')}, lr {b.get('lr')}, "
                f"{b.get('gate')} gate, ran {', '.join(str(e) for e in ran)} epochs"
            )
    return "; ".join(parts) or "none run"


def build_report(work: Path, out: Path, args: argparse.Namespace, command: str) -> None:
    """Aggregate every stored run into ``out/results.json``, ``results.md`` and reliability diagrams."""
    runs = _load_runs(work)
    commands = sorted(
        {r["meta"]["command"] for m in runs.values() for s in m.values() for r in s.values()} | {command}
    )
    results: dict = {"datasets": {}, "calibration": {}, "settings": vars(args).copy(), "commands": commands}
    results["machine"] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load": os.getloadavg(),
        "cpu": platform.processor() or platform.machine(),
    }
    md = [
        "# MATIC predictors against the Morgan RF and chemprop (early stopping on validation)",
        "",
        "Commands (processes sharing one work folder, then a `--report-only` pass):",
        "",
        *[f"    {c}" for c in commands],
        "",
        f"Date {results['machine']['date']}; load average {results['machine']['load'][0]:.1f} "
        "(shared 2-core CPU, every process `nice -n 19`, 1 thread).",
        "",
        "Test ROC-AUC / PR-AUC per task, mean ± sd over seeds (n = number of seeds). Paper split: the "
        "given train/val/test files, seeds vary initialisation and batches; NCATS: a different "
        "Bemis–Murcko scaffold split per seed. Early stopping on validation loss everywhere, the best "
        f"epoch tested (graph models: {_graph_budgets(runs)}; fp_ple: at most {args.fp_epochs} epochs, "
        f"patience {args.fp_patience}; chemprop {args.chemprop_epochs} epochs, its best validation epoch). `*_ensemble`: mean "
        "probability of the seeds' models (one deep ensemble, one number). `*+rf` (ours): the network's "
        "and the forest's logits mixed per task by a logistic regression fitted on VALIDATION.",
        "",
    ]
    for ds, models in sorted(runs.items(), key=lambda kv: kv[0] != "paper"):  # the paper's split first
        splits_by_seed = {s: make_splits(ds, s, args.data) for s in {s for m in models.values() for s in m}}
        any_split = next(iter(splits_by_seed.values()))
        tasks = any_split.tasks
        table: dict = {}
        for model, by_seed in models.items():
            for seed, run in sorted(by_seed.items()):
                sp = splits_by_seed[seed]
                test_probs = run["probs"][len(sp.val) :]
                for t, m in _scores(sp.test.labels, test_probs, tasks).items():
                    e = table.setdefault(model, {}).setdefault(t, {"roc_auc": [], "pr_auc": []})
                    e["roc_auc"].append(m["roc_auc"])
                    e["pr_auc"].append(m["pr_auc"])
                table[model]["seconds"] = table[model].get("seconds", 0.0) + run["meta"]["seconds"]
                table[model].setdefault("seeds", []).append(seed)
        # Deep ensembles: a model's seeds pooled (the paper split only: one fixed test set).
        for base in ("ple", "fp_ple"):
            if ds == "paper" and len(models.get(base, {})) >= 2:
                sp = any_split
                mean = np.mean([r["probs"][len(sp.val) :] for r in models[base].values()], axis=0)
                table[f"{base}_ensemble"] = {
                    t: {"roc_auc": [m["roc_auc"]], "pr_auc": [m["pr_auc"]]}
                    for t, m in _scores(sp.test.labels, mean, tasks).items()
                }
                table[f"{base}_ensemble"]["members"] = len(models[base])
        # Ours: the forest as one more expert beside the network, the two logits mixed per task by
        # weights fitted on VALIDATION (logistic regression), then applied to the test set.
        for combo in BLENDS:
            parts = combo.split("+")
            for seed in sorted(set.intersection(*(set(models.get(m, {})) for m in parts))):
                sp = splits_by_seed[seed]
                mixed = blend([models[m][seed]["probs"] for m in parts], sp)
                table.setdefault(combo, {}).setdefault("seeds", []).append(seed)
                for t, m in _scores(sp.test.labels, mixed, tasks).items():
                    e = table.setdefault(combo, {}).setdefault(t, {"roc_auc": [], "pr_auc": []})
                    e["roc_auc"].append(m["roc_auc"])
                    e["pr_auc"].append(m["pr_auc"])
        results["datasets"][ds] = table
        rows = []
        for model in [m for m in ORDER if m in table] + [m for m in table if m not in ORDER]:
            row: dict = {"model": model}
            for t in tasks:
                e = table[model].get(t)
                n = len([v for v in e["roc_auc"] if v is not None]) if e else 0
                row[f"{t} ROC-AUC"] = mean_sd(e["roc_auc"]) if e else ""
                row[f"{t} PR-AUC"] = mean_sd(e["pr_auc"]) if e else ""
            row["n"] = n
            if model.endswith("_ensemble"):
                row["n"] = f"1 ({table[model]['members']} members)"
            row["s / seed"] = round(table[model]["seconds"] / max(n, 1)) if "seconds" in table[model] else ""
            rows.append(row)
        missing = [m for m in ("ple", "mmoe", "single", "fp_ple", "rf", "chemprop") if m not in models]
        md += [f"## {ds}", "", markdown_table(rows), ""]
        if missing:
            md += [f"Not run on {ds} (no CPU time left on the shared machine): {', '.join(missing)}.", ""]
        rf = table.get("rf")
        if rf:
            verdict = []
            for m, e in table.items():  # each model against the forest on the same seeds (paired)
                if m in ("rf", "chemprop") or "seeds" not in e:
                    continue
                rf_at = dict(zip(rf["seeds"], range(len(rf["seeds"])), strict=True))
                common = [i for i, sd in enumerate(e["seeds"]) if sd in rf_at]
                cells = []
                for t in tasks:
                    if t not in e or not common:
                        continue
                    ours = float(np.mean([e[t]["roc_auc"][i] for i in common]))
                    bar = float(np.mean([rf[t]["roc_auc"][rf_at[e["seeds"][i]]] for i in common]))
                    cells.append(f"{t} {ours:.3f} vs RF {bar:.3f} ({'above' if ours > bar else 'not above'})")
                verdict.append(f"- {m} (seeds {[e['seeds'][i] for i in common]}): " + "; ".join(cells))
            md += ["Against the forest on the same seeds (mean test ROC-AUC):", "", *verdict, ""]
        md += _calibration(ds, models, splits_by_seed, tasks, out, results)
    write_results(out, results, "\n".join(md))


def _calibration(
    ds: str, models: dict, splits_by_seed: dict, tasks: list[str], out: Path, results: dict
) -> list[str]:
    """Temperature / isotonic maps fitted on validation, ECE on test (mean over seeds), one diagram per task."""
    rows, cal = [], {}
    for model in ("fp_ple", "ple", "rf"):
        if model not in models:
            continue
        ece: dict = {}
        pooled: dict = {}
        for seed, run in sorted(models[model].items()):
            sp = splits_by_seed[seed]
            val, test = run["probs"][: len(sp.val)], run["probs"][len(sp.val) :]
            variants = {"raw": test}
            for method in ("temperature", "isotonic"):
                variants[method] = Calibrator(method).fit(sp.val.labels, val).apply(test)
            for name, p in variants.items():
                for j, t in enumerate(tasks):
                    ece.setdefault(name, {}).setdefault(t, []).append(
                        expected_calibration_error(sp.test.labels[:, j], p[:, j])
                    )
                    py = pooled.setdefault(name, {}).setdefault(t, ([], []))
                    py[0].append(sp.test.labels[:, j])
                    py[1].append(p[:, j])
        cal[model] = ece
        for name in ("raw", "temperature", "isotonic"):
            rows.append(
                {"model": model, "probabilities": name} | {f"{t} ECE": mean_sd(ece[name][t]) for t in tasks}
            )
        if model == next(m for m in ("fp_ple", "ple", "rf") if m in models):
            for t in tasks:  # the reliability diagram of the first (our main) model, test seeds pooled
                curves = {
                    name: reliability(np.concatenate(pooled[name][t][0]), np.concatenate(pooled[name][t][1]))
                    for name in pooled
                }
                plot_reliability(curves, str(out / f"reliability_{ds}_{t}.png"), f"{ds} {model} {t} (test)")
                cal[f"{model}_reliability_{t}"] = curves
    results["calibration"][ds] = cal
    if not rows:
        return []
    return [
        f"### {ds}: calibration (fitted on validation, ECE on test, 10 bins, mean ± sd over seeds)",
        "",
        markdown_table(rows),
        f"Reliability diagrams: `reliability_{ds}_<task>.png`.",
        "",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="matic:../shared/data/matic", help="the paper split, matic:DIR")
    p.add_argument("--datasets", default="paper,ncats")
    p.add_argument("--models", default="rf,fp_ple,ple,mmoe,single,chemprop")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=60, help="graph models: most epochs")
    p.add_argument("--patience", type=int, default=8, help="graph models: early-stopping patience")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--gate", default="light")
    p.add_argument("--fp-epochs", type=int, default=200)
    p.add_argument("--fp-patience", type=int, default=10)
    p.add_argument("--rf-trees", type=int, default=500)
    p.add_argument("--chemprop-epochs", type=int, default=50)
    p.add_argument("--work", default="runs/matic_predictor", help="per-run probabilities (resume)")
    p.add_argument("--out", default="benchmarks/results/matic_predictor")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    command = "nice -n 19 python " + " ".join([sys.argv[0], *sys.argv[1:]])
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for ds in args.datasets.split(","):
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                for model in args.models.split(","):
                    f = work / f"{ds}_{model}_s{seed}.npz"
                    if f.exists():
                        continue
                    splits = make_splits(ds, seed, args.data)
                    start = time.perf_counter()
                    try:
                        probs, meta = run_one(model, splits, seed, args)
                    except subprocess.CalledProcessError as exc:
                        print(f"[{ds}] {model} seed {seed} failed: {exc.stderr[-500:]!r}", flush=True)
                        continue
                    secs = time.perf_counter() - start
                    meta = {
                        "dataset": ds,
                        "model": model,
                        "seed": seed,
                        "seconds": round(secs, 1),
                        "command": command,
                    } | meta
                    np.savez(f, probs=probs, meta=json.dumps(meta))
                    s = _scores(splits.test.labels, probs[len(splits.val) :], splits.tasks)
                    print(
                        f"[{ds}] seed {seed} {model}: "
                        + ", ".join(f"{t} ROC {m['roc_auc']:.3f} PR {m['pr_auc']:.3f}" for t, m in s.items())
                        + f" ({secs:.0f} s) {meta}",
                        flush=True,
                    )
                    build_report(work, out, args, command)
    build_report(work, out, args, command)


if __name__ == "__main__":
    main()
