"""Search quality of `triptych m3jepa index/search`: ensembles and querybank normalisation (QB-norm).

Takes trained aligner checkpoints (e.g. the benchmark's seeds) and an encoded image-caption
dataset with train / dev / test splits, then

1. chooses the QB-norm inverse temperature β on the **dev** split (querybank: training captions),
   for one checkpoint and for the ensemble of all;
2. reports, on the **test** split, each caption's rank of its own image (all captions, offline
   from the index's stored vectors) for: one checkpoint, one + QB-norm, the ensemble, the
   ensemble + QB-norm (the chosen β);
3. builds the final test index (ensemble + QB-norm) and runs the live self-test on it: each of
   ``--queries`` captions is encoded by the text encoder and searched alone, timed.

Example:
    python benchmarks/m3jepa_search.py --cache cache/flickr8k \\
        --checkpoint runs/m3jepa/seed0/checkpoints/best.safetensors \\
        --checkpoint runs/m3jepa/seed1/checkpoints/best.safetensors --out bench_out/m3jepa_search
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from triptych.core.results import markdown_table, write_results
from triptych.m3jepa.aligner import load_aligners
from triptych.m3jepa.features import load_cache
from triptych.m3jepa.search import (
    Searcher,
    add_querybank,
    bank_queries,
    index_cache,
    index_ranks,
    self_test,
)


def summary(ranks: np.ndarray) -> dict[str, float]:
    """Recall@K (%) of caption -> own image, median rank and quartiles, from each caption's rank."""
    out = {f"r{k}": 100.0 * float(np.mean(ranks <= k)) for k in (1, 5, 10)}
    out["median_rank"] = float(np.median(ranks))
    out["rank_quartiles"] = [float(q) for q in np.percentile(ranks, [25, 75])]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cache", type=Path, required=True, help="encoded dataset (triptych m3jepa encode)")
    parser.add_argument(
        "--checkpoint", type=Path, action="append", required=True, help="repeat for an ensemble"
    )
    parser.add_argument("--betas", default="5,10,20,30,50", help="QB-norm β values tried on dev")
    parser.add_argument(
        "--bank-size", type=int, default=10000, help="training captions (and images) in the bank"
    )
    parser.add_argument("--queries", type=int, default=1000, help="captions in the live, timed self-test")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cache = load_cache(args.cache)
    betas = [float(b) for b in args.betas.split(",")]
    variants = {"one checkpoint": args.checkpoint[:1], f"ensemble of {len(args.checkpoint)}": args.checkpoint}
    rows, record = (
        [],
        {
            "cache": str(args.cache),
            "checkpoints": [str(c) for c in args.checkpoint],
            "bank_size": args.bank_size,
            "betas": betas,
            "variants": {},
        },
    )
    final = None
    for name, checkpoints in variants.items():
        aligner = load_aligners(checkpoints)
        bank = bank_queries(aligner, cache, "train", args.bank_size)
        dev = index_cache(aligner, args.cache, "dev")
        dev_r5 = {0.0: summary(index_ranks(dev))["r5"]}
        for beta in betas:
            dev_r5[beta] = summary(index_ranks(add_querybank(dev, bank, beta)))["r5"]
        best = max(betas, key=lambda b: dev_r5[b])
        test = index_cache(aligner, args.cache, "test", checkpoints=[str(c) for c in checkpoints])
        plain = summary(index_ranks(test))
        normalised = summary(
            index_ranks(add_querybank(test, bank, best, source=str(args.cache), split="train"))
        )
        record["variants"][name] = {
            "dev_r5_by_beta": dev_r5,
            "beta": best,
            "test": plain,
            "test_qb": normalised,
        }
        for label, res in ((name, plain), (f"{name} + QB-norm (β {best:g})", normalised)):
            rows.append(
                {
                    "search": label,
                    "R@1": res["r1"],
                    "R@5": res["r5"],
                    "R@10": res["r10"],
                    "median rank": res["median_rank"],
                }
            )
        final = (test, aligner)
        print(rows[-2], rows[-1], flush=True)
    test, aligner = final
    start = time.perf_counter()
    live = self_test(Searcher(test, aligner), queries=args.queries, k=5)
    live["seconds"] = time.perf_counter() - start
    record["live_self_test"] = live
    lat = live["latency_ms"]
    md = (
        f"# M3-JEPA search: ensembles and querybank normalisation\n\n"
        f"Test split of `{args.cache}`: {len(test.images)} images, {len(test.captions)} captions; each caption "
        f"searches all test images and its own image's rank is counted (offline, from the index's vectors). "
        f"β chosen on the dev split from {betas}; querybank: {args.bank_size} training captions.\n\n"
        + markdown_table(rows, floatfmt="{:.1f}")
        + f"\n\nLive self-test of the last index ({live['queries']} captions encoded and searched one by one): "
        f"own image in the top 5 for {live['hit_rate']:.1f}%, median rank {live['median_rank']:g}, quartiles "
        f"{live['rank_quartiles'][0]:g}-{live['rank_quartiles'][1]:g}; latency p50 / p95 "
        f"{lat['total']['p50']:.0f} / {lat['total']['p95']:.0f} ms (encode {lat['encode']['p50']:.1f}, "
        f"predict {lat['predict']['p50']:.1f}, score {lat['score']['p50']:.2f} ms p50).\n"
    )
    write_results(args.out, record, md)
    print(md)


if __name__ == "__main__":
    main()
