"""Exploration: recall of the ANN kinds on folded vectors at 10⁵ synthetic items (IVF-PQ against HNSW).

Synthetic fused keys (two unit blocks of 128 dims) as ``m3jepa_search_scale.py --synthetic-only``
makes them (6,000 anisotropic-Gaussian seed vectors, the rest a smoothed bootstrap around them with
bandwidth 0.5), QB-norm biases from a 3,000-vector bank (β 20), 300 seed vectors plus noise as
queries. Each spec (AnnConfig keywords) is built with ``build_ann`` and swept (IVF: nprobe;
HNSW: efSearch); Recall@10 is against exact search over the same folded vectors. Run niced on
a loaded machine, so only recall and the relative build times mean anything; the latencies
printed are not timings.

Example:
    python benchmarks/m3jepa_ann_kinds.py --n 100000 --work bench_out/ann_kinds \\
        --spec "kind='IVF',storage='PQ',rerank=500" --spec "kind='HNSW',storage='Flat',ef_construction=64" \\
        > bench_out/ann_kinds.log
    python benchmarks/m3jepa_ann_kinds.py --report bench_out/ann_kinds.log --out benchmarks/results/m3jepa_ann_kinds_100k
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def collection(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Folded vectors of n synthetic items and folded queries near the seed vectors."""
    import torch

    from m3jepa_search_scale import synthetic_blocks
    from triptych.m3jepa.ann import fold, fold_queries
    from triptych.m3jepa.querybank import hubness

    rng, dim = np.random.default_rng(seed), 256
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    scales, mean = np.sqrt(1.0 / np.arange(1, dim + 1)), 0.5 * basis[:, 0]

    def draw(count: int) -> np.ndarray:
        x = (mean + (rng.standard_normal((count, dim)) * scales) @ basis.T).reshape(count, 2, dim // 2)
        return (x / np.linalg.norm(x, axis=2, keepdims=True)).reshape(count, dim).astype(np.float32)

    real, bank = draw(6000), torch.from_numpy(draw(3000))
    keys = np.concatenate([real, *synthetic_blocks(real, 1, True, n - len(real), 50000, 0, 0.5)])
    bias = hubness(bank, lambda s, e: torch.from_numpy(keys[s:e]), len(keys), 20.0, 2.0).numpy()
    own = rng.integers(0, len(real), 300)
    noisy = (real[own] + 0.6 * rng.standard_normal((len(own), dim)) / np.sqrt(dim)).reshape(len(own), 2, -1)
    queries = (noisy / np.linalg.norm(noisy, axis=2, keepdims=True)).reshape(len(own), dim)
    return fold(keys, bias, 2.0), fold_queries(queries)


def run(n: int, work: Path, specs: list[str]) -> None:
    import faiss
    import torch

    from triptych.m3jepa.ann import AnnConfig, AnnIndex, blocks_of, build_ann

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    folded, queries = collection(n)
    truth = np.argsort(-(queries @ folded.T), 1)[:, :10]
    for spec in specs:
        config = AnnConfig(**{k: ast.literal_eval(v) for k, v in re.findall(r"(\w+)=([^,]+)", spec)})
        start = time.perf_counter()
        record = build_ann(folded[:: max(1, n // 100000)], blocks_of(folded, 50000), n, work, "x", config)
        built = time.perf_counter() - start
        index = AnnIndex(work, "x")
        sweep = (
            [{"ef_search": e} for e in (32, 64, 128, 256)]
            if config.kind == "HNSW"
            else [{"nprobe": p} for p in (16, 32, 64, 128, 256)]
        )
        for setting in sweep:
            start = time.perf_counter()
            rows = np.concatenate(
                [index.search(q[None], 10, vectors=lambda r: folded[r], **setting)[1] for q in queries]
            )
            per_query = (time.perf_counter() - start) / len(queries)
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, truth, strict=True)])
            print(
                spec,
                record["kind"],
                f"build {built:.0f}s",
                setting,
                f"recall {recall:.3f}",
                f"{1000 * per_query:.2f} ms",
                flush=True,
            )


def report(log: Path, out: Path) -> None:
    from triptych.core.results import markdown_table, write_results

    pattern = re.compile(r"^(.*) (\S+) build (\d+)s (\{.*\}) recall ([\d.]+) ([\d.]+) ms$")
    rows = []
    for line in log.read_text().splitlines():
        m = pattern.match(line)
        if m:
            setting = ast.literal_eval(m.group(4))
            rows.append(
                {
                    "spec": m.group(1),
                    "faiss": m.group(2),
                    "build s (niced, loaded)": int(m.group(3)),
                    "nprobe / efSearch": next(iter(setting.values())),
                    "Recall@10 vs exact": float(m.group(5)),
                }
            )
    md = (
        "# ANN kinds at 10⁵ synthetic items (exploration)\n\n"
        + (__doc__ or "").split("Example:")[0]
        + "\n"
        + markdown_table(rows, floatfmt="{:.3f}")
    )
    write_results(out, {"rows": rows, "log": str(log)}, md)
    print(md)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100000)
    parser.add_argument("--work", type=Path, default=Path("bench_out/ann_kinds"))
    parser.add_argument("--spec", action="append", default=[])
    parser.add_argument("--report", type=Path, help="a log of this script: write results.json/.md from it")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/m3jepa_ann_kinds_100k"))
    args = parser.parse_args()
    if args.report:
        report(args.report, args.out)
    else:
        run(args.n, args.work, args.spec)


if __name__ == "__main__":
    main()
