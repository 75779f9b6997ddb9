"""Many RoIs per forward pass against one RoI at a time, on one crop of a test image.

R RoIs (boxes on test-image foreground inside one crop) are explained (a) one at a time
and (b) together by :func:`triptych.pdcr.multiroi.explain_rois`, both with the same
sequential rule on the same block grid and patch bank. Reported: forward passes and
wall time of each (measured side by side in one run), their ratio, and the agreement of
the two maps per RoI (Spearman over blocks; they differ only by the random draws).

Example:
    .venv/bin/python benchmarks/pdcr_multiroi.py --checkpoint runs/pdcr_drive_unet/checkpoints/best.safetensors \\
        --data drive:../shared/data/drive --rois 4 --out bench_out/pdcr_multiroi
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from triptych.core.results import markdown_table, write_results
from triptych.pdcr.data import load_dataset
from triptych.pdcr.estimate import SequentialRule
from triptych.pdcr.interventions import PatchBank
from triptych.pdcr.models import load_model
from triptych.pdcr.multiroi import explain_rois
from triptych.pdcr.regions import block_grid, block_slices, overlaps
from triptych.pdcr.roi import RoI


def rois_in_crop(mask: np.ndarray, n: int, side: int, seed: int) -> list[RoI]:
    """``n`` non-overlapping ``side`` boxes centred on foreground pixels of the crop's mask (or anywhere)."""
    rng = np.random.default_rng(seed)
    h, w = mask.shape
    inner = mask[side : h - side, side : w - side]
    ys, xs = np.nonzero(inner if inner.sum() >= 4 * n else np.ones_like(inner))
    taken = np.zeros_like(mask)
    out = []
    for i in rng.permutation(len(ys)):
        y, x = int(ys[i]) + side - side // 2, int(xs[i]) + side - side // 2
        if not taken[y : y + side, x : x + side].any():
            taken[y : y + side, x : x + side] = True
            out.append(RoI.box(x, y, side, side, mask.shape))
        if len(out) == n:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--data", required=True, help="drive:PATH, folder:PATH or synthetic")
    ap.add_argument("--rois", type=int, default=4)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--roi-size", type=int, default=12)
    ap.add_argument("--block", type=int, default=8)
    ap.add_argument("--max-draws", type=int, default=20)
    ap.add_argument("--tol", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench_out/pdcr_multiroi"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint)
    sample = next(s for s in load_dataset(args.data, "test") if s.mask is not None and s.mask.any())
    h, w = sample.mask.shape
    y0, x0 = (h - args.crop) // 2, (w - args.crop) // 2
    image = sample.image[:, y0 : y0 + args.crop, x0 : x0 + args.crop].contiguous()
    rois = rois_in_crop(
        sample.mask[y0 : y0 + args.crop, x0 : x0 + args.crop], args.rois, args.roi_size, args.seed
    )
    bank = PatchBank.from_images(
        [s.image for s in load_dataset(args.data, "training")], args.block, seed=args.seed
    )
    rule = SequentialRule(tol=args.tol, max_draws=args.max_draws)
    kw = {"intervention": bank, "outcome": "dice_self", "block": args.block, "rule": rule}
    t = time.perf_counter()
    shared = explain_rois(model, image, rois, seed=args.seed, **kw)
    shared_s = time.perf_counter() - t
    t = time.perf_counter()
    single = [explain_rois(model, image, [r], seed=args.seed + 1 + k, **kw)[0] for k, r in enumerate(rois)]
    single_s = time.perf_counter() - t
    # the noise floor: the same single-RoI rule with other draws
    again = [explain_rois(model, image, [r], seed=args.seed + 101 + k, **kw)[0] for k, r in enumerate(rois)]
    rows = []
    for k, (a, b, c) in enumerate(zip(shared, single, again, strict=True)):
        blocks = [u for u in block_grid(image.shape[1:], args.block) if not overlaps(u, rois[k].mask)]
        va, vb, vc = (np.array([e.ate[block_slices(u)].flat[0] for u in blocks]) for e in (a, b, c))
        rows.append(
            {
                "roi": rois[k].description,
                "single passes": b.forward_passes,
                "Spearman shared vs single": float(spearmanr(va, vb).statistic),
                "Spearman single vs single (other draws)": float(spearmanr(vc, vb).statistic),
                "MAE shared vs single": float(np.abs(va - vb).mean()),
                "MAE single vs single": float(np.abs(vc - vb).mean()),
                "non-zero blocks (shared, single)": f"{int((va != 0).sum())}, {int((vb != 0).sum())} of {len(blocks)}",
            }
        )
    passes_single = sum(e.forward_passes for e in single)
    results = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "image": sample.name,
        "crop_origin": [y0, x0],
        "rois": len(rois),
        "shared": {"forward_passes": shared[0].forward_passes, "seconds": shared_s},
        "single": {"forward_passes": passes_single, "seconds": single_s},
        "passes_ratio": passes_single / shared[0].forward_passes,
        "time_ratio": single_s / shared_s,
        "per_roi": rows,
    }
    md = "\n".join(
        [
            "# PdCR: many RoIs per forward pass\n",
            f"{len(rois)} RoIs of {args.roi_size}² on `{sample.name}`, {args.crop}² crop, {args.block}-px blocks, "
            f"sequential rule (tol {args.tol}, ≤ {args.max_draws} draws), outcome dice_self, {args.threads} thread(s). "
            "Shared: one run serves all RoIs (common random numbers); single: one run per RoI (independent draws); "
            "single vs single: the same single-RoI rule run again with other draws (the noise floor).\n",
            markdown_table(
                [
                    {
                        "run": "single (one RoI at a time)",
                        "forward passes": passes_single,
                        "seconds": single_s,
                    },
                    {
                        "run": "shared (all RoIs per pass)",
                        "forward passes": shared[0].forward_passes,
                        "seconds": shared_s,
                    },
                ]
            ),
            f"\nPasses ratio {results['passes_ratio']:.2f}×, wall-time ratio {results['time_ratio']:.2f}×.\n",
            markdown_table(rows),
        ]
    )
    write_results(args.out, results, md)
    print(md)


if __name__ == "__main__":
    main()
