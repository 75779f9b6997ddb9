"""Image encoding throughput: the old single-process path against DataLoader workers and Ray workers.

The same Flickr8k images are encoded into a fresh feature cache by each path, in alternating
rounds (A, B, C, A, B, C, ...), with the bundled EfficientNet-Lite0 at 224 x 224:

- ``old``: the previous ``write_features`` (``git show <ref>:src/triptych/m3jepa/features.py``):
  decode, resize and the network in one process, torch on ``--threads`` threads;
- ``loader``: the current ``write_features`` with ``--loader-workers`` DataLoader processes
  decoding and resizing while the network runs (torch on ``--threads`` threads);
- ``ray``: the current ``write_features`` on ``--ray-workers`` Ray worker processes of one thread
  each, one shard at a time each (the Ray session is started before the rounds; its start-up
  is reported apart).

Every path's cache is checked equal to the old path's (same float16 tokens).

Example (under the shared timing lock):
    flock /work/wt/timing.lock python benchmarks/m3jepa_encode_speed.py --images 256 --rounds 2 \\
        --out benchmarks/results/m3jepa_encode_speed
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np


def old_features(ref: str) -> Any:
    """The ``features`` module as it was at git ``ref`` (the old single-process path)."""
    source = subprocess.run(
        ["git", "show", f"{ref}:src/triptych/m3jepa/features.py"], capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "old_features.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_features", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_features"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="/work/shared/data/flickr8k")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loader-workers", type=int, default=1)
    parser.add_argument("--ray-workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--ref", default="main", help="git ref of the old path")
    parser.add_argument("--paths", default="old,loader,ray")
    parser.add_argument("--out", type=Path, default=Path("bench_out/m3jepa_encode_speed"))
    args = parser.parse_args()

    import torch

    from triptych.core import batch
    from triptych.core.results import markdown_table, write_results
    from triptych.m3jepa.data import load_dataset
    from triptych.m3jepa.encoders import EfficientNetLite0, make_encoder
    from triptych.m3jepa.features import RayPlan, load_features, write_features

    torch.set_num_threads(args.threads)
    old = old_features(args.ref)
    data = load_dataset(f"flickr8k:{args.data}")
    ids = data.images[: args.images]
    encoder = EfficientNetLite0()
    paths = args.paths.split(",")
    ray_start = None
    if "ray" in paths:
        t = time.perf_counter()
        batch.init_ray(workers=args.ray_workers)
        import ray

        ray_start = time.perf_counter() - t
    plan = RayPlan(partial(make_encoder, "efficientnet-lite0", modality="image"), args.ray_workers)
    work = Path(tempfile.mkdtemp(prefix="encode_speed_"))
    runs: dict[str, Any] = {
        "old": lambda out: old.write_features(
            out, ids, data.load_item, encoder, shard_size=args.shard_size, batch_size=32
        ),
        "loader": lambda out: write_features(
            out,
            ids,
            data.load_item,
            encoder,
            shard_size=args.shard_size,
            batch_size=32,
            loader_workers=args.loader_workers,
        ),
        "ray": lambda out: write_features(
            out, ids, data.load_item, encoder, shard_size=args.shard_size, batch_size=32, ray=plan
        ),
    }
    seconds: dict[str, list[float]] = {p: [] for p in paths}
    loads = []
    for r in range(args.rounds):
        for p in paths:
            out = work / f"{p}{r}"
            t = time.perf_counter()
            runs[p](out)
            seconds[p].append(time.perf_counter() - t)
            loads.append(os.getloadavg()[0])
            print(p, r, f"{seconds[p][-1]:.1f} s", flush=True)
    reference = np.asarray(load_features(work / f"{paths[0]}0").tokens)
    equal = {
        p: bool(np.array_equal(np.asarray(load_features(work / f"{p}0").tokens), reference)) for p in paths
    }
    if ray_start is not None:
        ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    rows = []
    base = float(np.median(seconds[paths[0]]))
    for p in paths:
        med = float(np.median(seconds[p]))
        rows.append(
            {
                "path": p,
                "median s": med,
                "images/s": len(ids) / med,
                "speed-up vs old": base / med,
                "runs (s)": ", ".join(f"{s:.1f}" for s in seconds[p]),
                "cache equal to old": equal[p],
            }
        )
    record = {
        "images": len(ids),
        "rounds": args.rounds,
        "threads": args.threads,
        "loader_workers": args.loader_workers,
        "ray_workers": args.ray_workers,
        "ray_start_seconds": ray_start,
        "seconds": seconds,
        "rows": rows,
        "load_average_1min": loads,
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    md = (
        f"# Image encoding throughput, {len(ids)} Flickr8k images (EfficientNet-Lite0, 224²)\n\n"
        f"Command: `{record['command']}` on {record['date']}; 2 cores, alternating rounds; 1-min load "
        f"average during the rounds {min(loads):.1f}–{max(loads):.1f} (a shared machine: other jobs niced).\n"
        f"old = the single-process path of `{args.ref}` (torch {args.threads} threads); loader = "
        f"{args.loader_workers} DataLoader worker(s) decoding + torch {args.threads} threads; ray = "
        f"{args.ray_workers} Ray workers x 1 thread (session start {ray_start or 0:.1f} s, not counted).\n\n"
        + markdown_table(rows, floatfmt="{:.2f}")
    )
    write_results(args.out, record, md)
    print(md)


if __name__ == "__main__":
    main()
