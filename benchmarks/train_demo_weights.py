"""Train the small models that ``triptych demo`` ships, from embedded data only, and write their weights.

Usage: python benchmarks/train_demo_weights.py [--only pdcr,matic] [--accelerator cpu|gpu] [--work runs/demo_weights]

- PdCR: a MONAI U-Net on MONAI's synthetic blobs (``pdcr.data.synthetic``; seeds 0 train, 1000 test),
  at most 30 epochs, 12 CPU-minutes or 25 minutes
  -> ``src/triptych/pdcr/weights/demo_unet.safetensors``.
- MATIC: a PLE (light gates) on the embedded NCATS 3CLpro + CPE table, random split seed 0
  (80/10/10, the paper's protocol; the test molecules are never trained on nor used for early stopping),
  trained on every training active plus 1,500 training inactives, at most 16 minutes
  -> ``src/triptych/matic/weights/demo_predictor.safetensors``. Stored in float16 (half the size; the
  loader casts back to float32).

Nothing here reads ../shared/data: DRIVE and Flickr8k may not be shipped. The held-out metrics
of both models go to ``benchmarks/results/demo_weights/results.{json,md}``; the demo recomputes them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
PDCR_WEIGHTS = ROOT / "src/triptych/pdcr/weights/demo_unet.safetensors"
MATIC_WEIGHTS = ROOT / "src/triptych/matic/weights/demo_predictor.safetensors"
RESULTS = ROOT / "benchmarks/results/demo_weights"

# The settings the demo modules rely on; changing them means retraining.
PDCR = {
    "arch": "unet",
    "patch": 96,
    "features": (8, 16, 32, 64),
    "res_units": 1,
    "batch_size": 8,
    "patches_per_epoch": 64,
    "epochs": 30,
    "lr": 3e-3,
    "seed": 0,
    "max_cpu_minutes": 12,
    "max_time": "00:00:25:00",
}
MATIC = {
    "hidden": 64,
    "layers": 2,
    "gate": "light",
    "max_epochs": 12,
    "patience": 4,
    "lr": 1e-3,
    "alpha": 0.75,
    "inactives": 1500,
    "max_time": "00:00:16:00",
}


def train_pdcr(work: Path, accelerator: str) -> dict[str, Any]:
    from triptych.core.training import TrainerFlags
    from triptych.pdcr.demo import heldout_dice
    from triptych.pdcr.models import load_model, save_model
    from triptych.pdcr.train import train_model

    p = dict(PDCR)
    result = train_model(
        "synthetic",
        work / "pdcr",
        arch=p["arch"],
        patch=p["patch"],
        features=p["features"],
        res_units=p["res_units"],
        batch_size=p["batch_size"],
        patches_per_epoch=p["patches_per_epoch"],
        epochs=p["epochs"],
        lr=p["lr"],
        seed=p["seed"],
        max_cpu_minutes=p["max_cpu_minutes"],
        flags=TrainerFlags(accelerator=accelerator, devices="1", max_time=p["max_time"]),
        progress=False,
    )
    model = load_model(result.checkpoint)
    save_model(model, PDCR_WEIGHTS)  # weights and spec only, no optimiser state
    dice = heldout_dice(load_model(PDCR_WEIGHTS))
    return {
        "system": "pdcr",
        "weights": str(PDCR_WEIGHTS.relative_to(ROOT)),
        "bytes": PDCR_WEIGHTS.stat().st_size,
        "held-out": "8 synthetic images, seed 1000 (train: 24, seed 0)",
        "test_dice": dice,
        "train_seconds": result.seconds,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in p.items()},
    }


def train_matic(work: Path, accelerator: str) -> dict[str, Any]:
    import numpy as np

    from triptych.core.checkpoint import load_checkpoint, save_checkpoint
    from triptych.core.training import TrainerFlags
    from triptych.matic.data import Splits
    from triptych.matic.demo import SPLIT, SPLIT_SEED, demo_splits, heldout_metrics
    from triptych.matic.predictor import load_predictor
    from triptych.matic.train import KIND, TrainConfig, train_predictor

    m = dict(MATIC)
    splits = demo_splits()
    # every training active, and a seeded sample of the training inactives: an epoch costs a quarter of the
    # full table's, which a shared 2-core machine can afford; the test split is untouched
    labels = splits.train.labels
    active = np.flatnonzero(np.nansum(labels, axis=1) > 0)
    rest = np.setdiff1d(np.arange(len(splits.train)), active)
    keep = np.random.default_rng(SPLIT_SEED).choice(rest, min(m["inactives"], len(rest)), replace=False)
    full_train = len(splits.train)
    splits = Splits(
        splits.train.subset(np.sort(np.concatenate([active, keep]))), splits.val, splits.test, splits.name
    )
    config = TrainConfig(
        tasks=splits.tasks,
        gate=m["gate"],
        hidden=m["hidden"],
        layers=m["layers"],
        max_epochs=m["max_epochs"],
        patience=m["patience"],
        lr=m["lr"],
        alpha=m["alpha"],
        seed=SPLIT_SEED,
    )
    start = time.perf_counter()
    exported = train_predictor(
        splits,
        config,
        work / "matic",
        TrainerFlags(accelerator=accelerator, devices="1", max_time=m["max_time"]),
        progress=False,
    )
    seconds = time.perf_counter() - start
    full, meta = load_checkpoint(exported, kind=KIND)
    state = {k: v.half() if v.is_floating_point() else v for k, v in full["state_dict"].items()}
    save_checkpoint(
        MATIC_WEIGHTS,
        {"state_dict": state, "hyper_parameters": full["hyper_parameters"]},
        kind=KIND,
        config=meta["config"],
        extra={**meta["extra"], "split": f"{SPLIT} seed {SPLIT_SEED}"},
    )
    metrics = heldout_metrics(load_predictor(MATIC_WEIGHTS), splits.test)
    return {
        "system": "matic",
        "weights": str(MATIC_WEIGHTS.relative_to(ROOT)),
        "bytes": MATIC_WEIGHTS.stat().st_size,
        "held-out": f"embedded NCATS table, {SPLIT} split seed {SPLIT_SEED}: test = {len(splits.test)} "
        f"molecules (trained on {len(splits.train)} of the {full_train} training molecules: every active and "
        f"{m['inactives']} inactives; val {len(splits.val)})",
        **{f"test_roc_auc_{t}": v["roc_auc"] for t, v in metrics.items()},
        **{f"test_n_{t}": v["n"] for t, v in metrics.items()},
        "epochs_run": meta["extra"].get("epochs_run"),
        "train_seconds": seconds,
        "settings": m,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="pdcr,matic", help="comma-separated: pdcr, matic")
    ap.add_argument("--accelerator", default="cpu", help="cpu or gpu (the weights are loaded on the CPU)")
    ap.add_argument(
        "--work", type=Path, default=Path("runs/demo_weights"), help="training folders (not shipped)"
    )
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    trainers = {"pdcr": train_pdcr, "matic": train_matic}
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    new = {}
    for name in wanted:
        if args.work.joinpath(name).exists():
            shutil.rmtree(args.work / name)
        new[name] = trainers[name](args.work, args.accelerator)
        print(json.dumps(new[name], indent=1))
    # merged with the other system's row from an earlier run (read now: runs may overlap)
    previous = (
        json.loads((RESULTS / "results.json").read_text()) if (RESULTS / "results.json").is_file() else {}
    )
    rows = {**previous.get("rows", {}), **new}
    from triptych.core.results import markdown_table, write_results

    flat = [{k: v for k, v in r.items() if k != "settings"} for r in rows.values()]
    write_results(
        RESULTS,
        {"rows": rows, "command": "python benchmarks/train_demo_weights.py"},
        "# Demo weights\n\nHeld-out metrics of the models `triptych demo` ships "
        "(`python benchmarks/train_demo_weights.py`).\n\n" + markdown_table(flat),
    )


if __name__ == "__main__":
    main()
