"""Rerun every benchmark quoted in the README, on ../shared/data, into bench_out/.

Usage: python benchmarks/run_all.py [--only pdcr,matic,m3jepa] [--list]

Each step is the exact command the README quotes; steps whose data is absent are skipped.
Expect hours on 2 CPU cores: models are trained, datasets encoded and explanations estimated.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CLI = [sys.executable, "-m", "triptych.cli"]

# (system, name, data folder it needs, command)
STEPS: list[tuple[str, str, str, list[str]]] = [
    (
        "pdcr",
        "pdcr_train_unet",
        "drive",
        CLI
        + [
            "pdcr",
            "train",
            "--data",
            f"{DATA}/drive",
            "--arch",
            "unet",
            "--features",
            "16,32,64,128",
            "--res-units",
            "1",
            "--patch",
            "128",
            "--batch-size",
            "8",
            "--patches-per-epoch",
            "400",
            "--val-fraction",
            "0.15",
            "--threads",
            "2",
            "--max-time",
            "00:00:15:00",
            "--out",
            "runs/pdcr_drive_unet",
        ],
    ),
    *[
        (
            "pdcr",
            f"pdcr_train_small_{arch}",
            "drive",
            CLI
            + [
                "pdcr",
                "train",
                "--data",
                f"{DATA}/drive",
                "--arch",
                arch,
                "--features",
                "8,16,32,64",
                "--patch",
                "128",
                "--threads",
                "1",
                "--max-time",
                "00:00:12:00",
                "--out",
                f"runs/small/pdcr_drive_{arch}",
            ],
        )
        for arch in ("unet", "attention_unet", "segresnet")
    ],
    (
        "pdcr",
        "pdcr",
        "drive",
        CLI
        + [
            "pdcr",
            "benchmark",
            "--data",
            f"drive:{DATA}/drive",
            "--archs",
            "unet,attention_unet,segresnet",
            "--rois",
            "20",
            "--models-dir",
            "runs/small",
            "--out",
            "bench_out/pdcr",
            "--workers",
            "3",
            "--rise-masks",
            "150",
            "--misure-steps",
            "30",
            "--max-draws",
            "16",
        ],
    ),
    (
        "pdcr",
        "pdcr_compare_gt",
        "drive",
        CLI
        + [
            "pdcr",
            "compare",
            "--data",
            f"drive:{DATA}/drive",
            "--archs",
            "unet,attention_unet,segresnet",
            "--rois",
            "20",
            "--models-dir",
            "runs/small",
            "--outcome",
            "dice_gt",
            "--out",
            "bench_out/pdcr_compare_gt",
        ],
    ),
    (
        "pdcr",
        "pdcr_speed",
        "drive",
        [
            sys.executable,
            "benchmarks/pdcr_speed.py",
            "--checkpoint",
            "runs/small/pdcr_drive_unet/checkpoints/best.safetensors",
            "--data",
            f"drive:{DATA}/drive",
            "--out",
            "bench_out/pdcr_speed",
            "--crop",
            "128",
            "--roi",
            "16",
            "--profile",
            "--truth-cache",
            "bench_out/pdcr_speed_truth128.npz",
        ],
    ),
    (
        "matic",
        "matic",
        "matic",
        CLI
        + [
            "matic",
            "benchmark",
            "--data",
            f"matic:{DATA}/matic",
            "--seeds",
            "5",
            "--epochs",
            "5",
            "--patience",
            "2",
            "--out",
            "bench_out/matic",
        ],
    ),
    (
        "matic",
        "matic_diagnosis",
        "matic",
        [
            sys.executable,
            "benchmarks/matic_diagnosis.py",
            "--data",
            f"matic:{DATA}/matic",
            "--seeds",
            "3",
            "--configs",
            "ple_bench_budget:1,ple_focal_long:2,ple_bce_long:1",
            "--out",
            "bench_out/matic_diagnosis",
        ],
    ),
    (
        "matic",
        "matic_diagnosis_single",
        "matic",
        [
            sys.executable,
            "benchmarks/matic_diagnosis.py",
            "--data",
            f"matic:{DATA}/matic",
            "--seeds",
            "3",
            "--configs",
            "single_long:2",
            "--out",
            "bench_out/matic_diagnosis_single",
        ],
    ),
    (
        "matic",
        "matic_ncats",
        "",
        CLI
        + [
            "matic",
            "benchmark",
            "--models",
            "ple,single,rf",
            "--ncats-seeds",
            "1",
            "--ncats-epochs",
            "10",
            "--patience",
            "3",
            "--out",
            "bench_out/matic_ncats",
        ],
    ),
    (
        "matic",
        "matic_oracle",
        "matic",
        CLI
        + [
            "matic",
            "train",
            "--data",
            f"matic:{DATA}/matic",
            "--out",
            "runs/matic_ple",
            "--epochs",
            "60",
            "--patience",
            "15",
        ],
    ),
    (
        "matic",
        "matic_generate",
        "matic",
        CLI
        + [
            "matic",
            "benchmark-generate",
            "--checkpoint",
            "runs/matic_ple/model.safetensors",
            "--actives",
            f"{DATA}/matic/multi_train.csv",
            "--max-actives",
            "12",
            "--pool",
            "150",
            "--out",
            "bench_out/matic_generate",
        ],
    ),
    (
        "m3jepa",
        "m3jepa_encode",
        "flickr8k",
        CLI
        + [
            "m3jepa",
            "encode",
            "--data",
            f"flickr8k:{DATA}/flickr8k",
            "--split",
            "train,dev,test",
            "--out",
            "cache/flickr8k",
        ],
    ),
    (
        "m3jepa",
        "m3jepa",
        "flickr8k",
        CLI
        + [
            "m3jepa",
            "benchmark",
            "--data",
            f"flickr8k:{DATA}/flickr8k",
            "--cache",
            "cache/flickr8k",
            "--seeds",
            "3",
            "--epochs",
            "3",
            "--patience",
            "1",
            "--jobs",
            "2",
            "--out",
            "bench_out/m3jepa",
        ],
    ),
    (
        "m3jepa",
        "m3jepa_e8",
        "flickr8k",
        CLI
        + [
            "m3jepa",
            "benchmark",
            "--data",
            f"flickr8k:{DATA}/flickr8k",
            "--cache",
            "cache/flickr8k",
            "--seeds",
            "3",
            "--epochs",
            "8",
            "--patience",
            "2",
            "--out",
            "bench_out/m3jepa_e8",
        ],
    ),
    (
        "m3jepa",
        "m3jepa_e16",
        "flickr8k",
        CLI
        + [
            "m3jepa",
            "benchmark",
            "--data",
            f"flickr8k:{DATA}/flickr8k",
            "--cache",
            "cache/flickr8k",
            "--seeds",
            "3",
            "--epochs",
            "16",
            "--patience",
            "3",
            "--work-dir",
            "bench_out/m3jepa_e16/runs",
            "--out",
            "bench_out/m3jepa_e16",
        ],
    ),
    (
        "m3jepa",
        "m3jepa_h256",
        "flickr8k",
        CLI
        + [
            "m3jepa",
            "benchmark",
            "--data",
            f"flickr8k:{DATA}/flickr8k",
            "--cache",
            "cache/flickr8k",
            "--seeds",
            "1",
            "--methods",
            "m3jepa",
            "--hidden",
            "256",
            "--epochs",
            "16",
            "--patience",
            "3",
            "--out",
            "bench_out/m3jepa_h256",
        ],
    ),
    (
        "m3jepa",
        "m3jepa_speed",
        "",
        [
            sys.executable,
            "benchmarks/m3jepa_speed.py",
            "--hidden",
            "256",
            "--batch",
            "64",
            "--steps",
            "2",
            "--rounds",
            "3",
            "--out",
            "bench_out/m3jepa_speed",
        ],
    ),
    *[
        (
            "m3jepa",
            f"m3jepa_alpha{tag}",
            "flickr8k",
            CLI
            + [
                "m3jepa",
                "benchmark",
                "--data",
                f"flickr8k:{DATA}/flickr8k",
                "--cache",
                "cache/flickr8k",
                "--seeds",
                "3",
                "--methods",
                "m3jepa",
                "--epochs",
                "16",
                "--patience",
                "3",
                "--alpha",
                alpha,
                "--jobs",
                "2",
                "--out",
                f"bench_out/m3jepa_alpha{tag}",
            ],
        )
        for tag, alpha in (("025", "0.25"), ("1", "1.0"))
    ],
    (
        "m3jepa",
        "m3jepa_search_qb",
        "flickr8k",
        [
            sys.executable,
            "benchmarks/m3jepa_search.py",
            "--cache",
            "cache/flickr8k",
            *[
                a
                for s in (1, 0, 2)
                for a in (
                    "--checkpoint",
                    f"bench_out/m3jepa_e16/runs/m3jepa/seed{s}/checkpoints/best.safetensors",
                )
            ],
            "--out",
            "bench_out/m3jepa_search_qb",
        ],
    ),
]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="pdcr,matic,m3jepa", help="comma-separated systems")
    parser.add_argument("--list", action="store_true", help="print the commands and exit")
    args = parser.parse_args()
    systems = set(args.only.split(","))
    failed = []
    for system, name, needs, cmd in STEPS:
        if system not in systems:
            continue
        printable = " ".join(cmd).replace(sys.executable, "python")
        if args.list:
            print(f"[{name}] {printable}", flush=True)
            continue
        if needs and not (DATA / needs).is_dir():
            print(f"[{name}] skipped: {DATA / needs} is absent")
            continue
        print(f"[{name}] {printable}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(cmd, cwd=ROOT)
        print(f"[{name}] exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(name)
        elif (ROOT / "bench_out" / name / "results.json").exists():
            dest = ROOT / "benchmarks" / "results" / name
            dest.mkdir(parents=True, exist_ok=True)
            for f in ("results.json", "results.md"):
                shutil.copy2(ROOT / "bench_out" / name / f, dest / f)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
