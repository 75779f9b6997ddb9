"""Start-up time of the CLI: ``triptych --help`` and each system's ``--help``, as whole processes.

Usage: python benchmarks/cli_startup.py [--runs 10] [--out benchmarks/results/cli_startup]

Each command is run ``--runs`` times, interleaved (one of each per round, so that machine load
hits every command alike), and the median wall time is reported. Also records the ten slowest
imports of ``import triptych.cli`` (``python -X importtime``, cumulative) and which heavy
libraries that import loads (it should load none). The target is a median below 1.5 s on an
idle 2-core machine; results.md states the machine's load average while measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "lightning", "rdkit", "transformers", "ray", "faiss", "monai", "torch_geometric", "sklearn")
TARGET_S = 1.5


def commands() -> dict[str, list[str]]:
    """The console script when installed (what users run), else ``python -m triptych.cli``."""
    script = Path(sys.executable).with_name("triptych")
    base = [str(script)] if script.is_file() else [sys.executable, "-m", "triptych.cli"]
    return {
        " ".join(["triptych", *args]): base + args
        for args in (["--help"], ["pdcr", "--help"], ["matic", "--help"], ["m3jepa", "--help"])
    }


def time_once(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + system) of one run of ``cmd``.

    On a busy machine the wall time mostly measures waiting for a core; the CPU time does not,
    and with the files cached it is close to what the wall time would be on an idle machine.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def import_profile(top: int = 10) -> tuple[list[dict], list[str], float]:
    """(slowest imports by cumulative time, heavy modules loaded, total import seconds) of ``import triptych.cli``."""
    code = f"import json, sys, triptych.cli; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, cwd=ROOT
    )
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            rows.append(
                {
                    "module": m.group(4),
                    "self_ms": int(m.group(1)) / 1000,
                    "cumulative_ms": int(m.group(2)) / 1000,
                    "depth": (len(m.group(3)) - 1) // 2,
                }
            )
    total = sum(r["self_ms"] for r in rows) / 1000
    slowest = sorted(rows, key=lambda r: -r["cumulative_ms"])[:top]
    return slowest, json.loads(proc.stdout.strip().splitlines()[-1]), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each command")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cli_startup")
    args = parser.parse_args()

    cmds = commands()
    for cmd in cmds.values():  # warm the file cache once: the measured runs are warm starts
        time_once(cmd)
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {name: [] for name in cmds}
    cpu: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(args.runs):
        for name, cmd in cmds.items():
            wall, used = time_once(cmd)
            times[name].append(wall)
            cpu[name].append(used)
    load_after = os.getloadavg()
    slowest, heavy, import_total = import_profile()

    results = {
        "runs": args.runs,
        "target_median_s": TARGET_S,
        "commands": {
            name: {
                "median_s": round(statistics.median(t), 3),
                "min_s": round(min(t), 3),
                "max_s": round(max(t), 3),
                "median_cpu_s": round(statistics.median(cpu[name]), 3),
                "times_s": [round(x, 3) for x in t],
                "cpu_s": [round(x, 3) for x in cpu[name]],
            }
            for name, t in times.items()
        },
        "import_triptych_cli": {
            "heavy_modules_loaded": heavy,
            "total_import_s": round(import_total, 3),
            "slowest_cumulative": slowest,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_1min_before": round(load_before[0], 2),
            "loadavg_1min_after": round(load_after[0], 2),
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    busy = load_before[0] > 0.5 * (os.cpu_count() or 1)
    lines = [
        "# CLI start-up time",
        "",
        f"`python benchmarks/cli_startup.py --runs {args.runs}`: each command run {args.runs} times as a whole "
        "process (interleaved), after one warm-up run each.",
        "",
        f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, 1-min load average "
        f"{load_before[0]:.1f} before and {load_after[0]:.1f} after"
        + (" (a busy machine: the idle target cannot be judged from these numbers alone)." if busy else "."),
        "",
        "Wall time is what a user waits for; on a busy machine it is mostly waiting for a core. CPU time "
        "(user + system of the process) is not, and with the files cached it is close to the wall time on "
        "an idle machine.",
        "",
        "| command | median wall (s) | min wall (s) | max wall (s) | median CPU (s) | wall vs target |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results["commands"].items():
        lines.append(
            f"| `{name}` | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['max_s']:.2f} | "
            f"{r['median_cpu_s']:.2f} | {'below' if r['median_s'] < TARGET_S else 'above'} {TARGET_S} s |"
        )
    lines += [
        "",
        f"`import triptych.cli`: {import_total:.2f} s of imports (`python -X importtime`); heavy libraries loaded: "
        f"{', '.join(heavy) if heavy else 'none'} (checked: {', '.join(HEAVY)}).",
        "",
        "Slowest imports (cumulative, including what each imports):",
        "",
        "| module | cumulative (ms) | self (ms) |",
        "|---|---|---|",
        *[f"| `{r['module']}` | {r['cumulative_ms']:.0f} | {r['self_ms']:.0f} |" for r in slowest],
        "",
    ]
    (args.out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))
    if shutil.which("triptych") is None and not Path(sys.executable).with_name("triptych").is_file():
        print(
            "note: the triptych console script is not installed; timed `python -m triptych.cli`",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
