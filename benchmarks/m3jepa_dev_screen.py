"""Single-seed screens of M3-JEPA recipes on the DEV split (never the test split).

Each run trains one method with the given settings on the train split, selects its epoch by
dev recall (as the benchmark does) and appends the selected epoch's dev Recall@K (both ways,
ranked as the benchmark ranks) to ``OUT/screens.jsonl``. The test split is not read.

    python benchmarks/m3jepa_dev_screen.py --cache cache/f8k --method m3jepa --set hidden=256 --set gates=per_task
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def _value(text: str) -> object:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", default="cache/f8k")
    parser.add_argument("--method", default="m3jepa")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="name=value of M3JepaConfig")
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", default="bench_out/m3jepa_dev_screens")
    args = parser.parse_args()

    import torch

    from triptych.m3jepa.config import DEFAULTS
    from triptych.m3jepa.features import load_cache
    from triptych.m3jepa.tasks import split_tasks
    from triptych.m3jepa.train import train_aligner

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    changes = dict(kv.split("=", 1) for kv in args.set)
    cfg = DEFAULTS.with_(**{k: _value(v) for k, v in changes.items()})
    cache = load_cache(args.cache)
    train, dev = split_tasks(cache, "train"), split_tasks(cache, "dev")
    dims = {cache.modality: int(cache.image.tokens.shape[-1]), "text": int(cache.text.tokens.shape[-1])}
    model_config, tc = cfg.method(args.method, dims, cache.modality, args.seed)
    out = Path(args.out)
    tag = args.tag or f"{args.method}_" + "_".join(f"{k}{v}" for k, v in changes.items())
    start = time.perf_counter()
    result = train_aligner(
        train, dev, model_config, tc, out_dir=out / "runs" / tag, enable_progress_bar=False
    )
    best = max(result.val_history, key=lambda h: h["val_recall"])
    media = cache.modality
    row = {
        "tag": tag,
        "method": args.method,
        "seed": args.seed,
        "changes": changes,
        "best_epoch": best["epoch"],
        "epochs_run": len(result.val_history),
        "dev_recall": round(best["val_recall"], 2),
        "dev_i2t": {k: round(best[f"{media}->text/{k}"], 1) for k in ("r1", "r5", "r10")},
        "dev_t2i": {k: round(best[f"text->{media}/{k}"], 1) for k in ("r1", "r5", "r10")},
        "seconds": round(time.perf_counter() - start),
        "load": os.getloadavg()[0],
        "history_r1": [
            (h["epoch"], round(h[f"{media}->text/r1"], 1), round(h[f"text->{media}/r1"], 1))
            for h in result.val_history
        ],
    }
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "screens.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
