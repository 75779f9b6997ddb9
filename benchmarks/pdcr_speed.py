"""PdCR speed against the paper's configuration, on one model, image and RoI, in one run.

(a) the paper's rule (S=3 screen, N=50 draws, τ=0.02, 8-px blocks) run as the reference
    code runs it: one block at a time, batching only that block's draws;
(b) our ``reference`` estimator (the same rule, batched across blocks);
(c) our ``adaptive`` default (sequential CIs, coarse-to-fine).

Truth: N=200 draws for every block outside the RoI. For each of (a), (b), (c): forward
passes, wall time, mean absolute error and Spearman over blocks against the truth, and
the ratios (a)/(c). Writes results.json and results.md into --out.

``--volume N`` measures a 3D case at a realistic size instead: a MONAI 3D U-Net (seeded,
untrained: a speed measurement, not an accuracy one) on an N³ synthetic volume (MONAI's
blobs), a 16³ RoI at its centre, cubic blocks of ``--block`` voxels, soft-mass outcome and a
patch bank of other synthetic volumes. The paper's rule (a) runs on a random sample of
``--paper-sample`` blocks and is extrapolated to every block; (c) adaptive runs in full.
No high-draw truth at this size (it would cost 200 passes per block).

Example:
    .venv/bin/python benchmarks/pdcr_speed.py --checkpoint runs/pdcr_drive_unet_tiny/checkpoints/best.safetensors \\
        --data drive:../shared/data/drive --out bench_out/pdcr_speed
    .venv/bin/python benchmarks/pdcr_speed.py --volume 96 --block 16 --out bench_out/pdcr_speed_3d
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from triptych.core.results import markdown_table, write_results
from triptych.pdcr.benchmark import load_split, parse_data, sample_cases
from triptych.pdcr.estimate import SequentialRule, reference_estimate
from triptych.pdcr.interventions import PatchBank
from triptych.pdcr.models import load_model
from triptych.pdcr.regions import RegionProblem, block_grid, block_slices, explain_regions, overlaps
from triptych.pdcr.roi import make_outcome


def block_values(ate: np.ndarray, blocks: list) -> np.ndarray:
    """The ATE of each block (its value at the block's first pixel)."""
    return np.array([float(ate[block_slices(b)].flat[0]) for b in blocks])


def paper_loop(model, image, outcome, bank, blocks, seed: int, tau: float) -> tuple[np.ndarray, int, float]:
    """(a): the reference's loop, one block at a time; returns (block ATEs, forward passes, seconds)."""
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    problem = RegionProblem(model, image, outcome, bank, batch_size=50, show_progress=False)
    ates = [reference_estimate(problem, [b], gen, screen=3, draws=50, tau=tau)[0].ate for b in blocks]
    return np.array(ates), problem.forward_passes, time.perf_counter() - start


def truth_map(
    model, image, outcome, bank, blocks, draws: int, seed: int, cache: Path | None = None
) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Mean and SE of ``draws`` effect draws for every block: the high-sample truth.

    With ``cache``, the raw draws ``[blocks, draws]`` are kept there and reused by a later run
    with the same blocks and draws (the truth costs far more than the methods compared).
    """
    start = time.perf_counter()
    if cache is not None and cache.is_file():
        with np.load(cache) as f:
            d, passes, secs = f["draws"], int(f["passes"]), float(f["seconds"])
        if d.shape != (len(blocks), draws):
            raise SystemExit(f"--truth-cache {cache} holds {d.shape} draws, not {(len(blocks), draws)}")
    else:
        gen = torch.Generator().manual_seed(seed + 1000)
        problem = RegionProblem(model, image, outcome, bank, batch_size=256, show_progress=False)
        d = np.stack(problem.draw(blocks, [draws] * len(blocks), gen))
        passes, secs = problem.forward_passes, time.perf_counter() - start
        if cache is not None:
            np.savez_compressed(cache, draws=d, passes=passes, seconds=secs)
    return d.mean(axis=1), d.std(axis=1, ddof=1) / np.sqrt(draws), passes, secs


def min_passes_for_mae(sd: np.ndarray, mae: float) -> float:
    """Fewest draws B = (2/π)(Σ σ_k^(2/3))³ / (K² m²) for which block means can reach mean absolute error m.

    A lower bound for any unbiased sampler told each block's per-draw SD σ_k in advance: with
    n_k draws, E|mean − ATE_k| ≈ √(2/π)·σ_k/√n_k, and Σ_k σ_k/√n_k under Σ n_k = B is least at
    n_k ∝ σ_k^(2/3). Blocks whose draws never vary (σ_k = 0) cost one pass each.
    """
    k = sd.size
    spread = float((sd[sd > 0] ** (2 / 3)).sum())
    return 2 / np.pi * spread**3 / (k**2 * mae**2) + int((sd == 0).sum())


def errors(est: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {"mae": float(np.abs(est - truth).mean()), "spearman": float(spearmanr(est, truth).statistic)}


def volume_case(args: argparse.Namespace) -> None:
    """(a) sampled and extrapolated vs (c) adaptive on an N³ volume; results.json/results.md into --out."""
    import os

    from triptych.pdcr.data import synthetic
    from triptych.pdcr.models import build_model
    from triptych.pdcr.roi import RoI

    n, blk = args.volume, args.block
    torch.manual_seed(args.seed)
    model = build_model("unet", spatial_dims=3, in_channels=1, features=args.features).eval()
    volumes = synthetic(3, n, spatial_dims=3, seed=args.seed)
    image = volumes[0].image
    c = n // 2 - 8
    roi = RoI.box_nd((c, c, c), (16, 16, 16), (n, n, n))
    outcome = make_outcome("soft_mass", model, image, roi)
    bank = PatchBank.from_images([v.image for v in volumes[1:]], 2 * blk, seed=args.seed)
    blocks = [b for b in block_grid(image.shape[1:], blk) if not overlaps(b, roi.mask)]
    with torch.no_grad():  # one forward pass, warm, at the batch size the estimators use
        model.probabilities(image[None])
        start = time.perf_counter()
        model.probabilities(image[None].expand(4, *image.shape).contiguous())
        per_pass = (time.perf_counter() - start) / 4
    sample = sorted(np.random.default_rng(args.seed).choice(len(blocks), args.paper_sample, replace=False))
    _, a_passes, a_secs = paper_loop(
        model, image, outcome, bank, [blocks[i] for i in sample], args.seed, 0.02
    )
    scale = len(blocks) / len(sample)
    rule = SequentialRule(tau=0.02, tol=args.tol, max_draws=args.max_draws)
    exp = explain_regions(
        model,
        image,
        roi,
        outcome=outcome,
        intervention=bank,
        block=blk,
        coarse_block=2 * blk,
        estimator="adaptive",
        seed=args.seed,
        batch_size=8,
        rule=rule,
        show_progress=False,
    )
    rows = [
        {
            "method": f"(a) paper rule, {len(sample)} sampled blocks",
            "forward_passes": a_passes,
            "seconds": a_secs,
        },
        {
            "method": f"(a) extrapolated to all {len(blocks)} blocks",
            "forward_passes": round(a_passes * scale),
            "seconds": a_secs * scale,
        },
        {
            "method": f"(c) adaptive ({2 * blk}³ → {blk}³, tol {args.tol}, ≤{args.max_draws} draws)",
            "forward_passes": exp.forward_passes,
            "seconds": exp.seconds,
        },
    ]
    summary = exp.summary()
    ratios = {
        "passes_a_over_c": rows[1]["forward_passes"] / exp.forward_passes,
        "seconds_a_over_c": rows[1]["seconds"] / exp.seconds,
    }
    load = os.getloadavg()
    results = {
        "config": {
            "volume": [n, n, n],
            "model": f"MONAI UNet 3D, channels {list(args.features)}, seeded, untrained",
            "roi": roi.description,
            "block": blk,
            "blocks": len(blocks),
            "outcome": "soft_mass",
            "threads": args.threads,
            "seed": args.seed,
            "load_average": list(load),
            "untimed": bool(args.untimed),
        },
        "seconds_per_forward_pass": per_pass,
        "methods": rows,
        "ratios": ratios,
        "adaptive_summary": {
            k: summary[k]
            for k in ("significant_negative", "significant_positive", "not_significant", "called_zero")
        },
    }
    md = [
        f"# PdCR speed on a {n}³ volume\n",
        f"{results['config']['model']}; one {n}³ synthetic volume (MONAI blobs), RoI {roi.description}, "
        f"{len(blocks)} cubic blocks of {blk}³ outside it, soft-mass outcome, patch bank of {2 * blk}³ cells "
        f"from 2 other volumes; {args.threads} torch thread(s), load average {load[0]:.1f} at the end. One "
        f"forward pass: {per_pass:.2f} s. The paper's rule ran on {len(sample)} random blocks and is "
        "extrapolated linearly; no high-draw truth at this size.\n",
        *(
            [
                "\n**Untimed run**: niced on a shared, loaded machine, not under the timing lock; the seconds "
                "say little, compare forward passes.\n"
            ]
            if args.untimed
            else []
        ),
        markdown_table(rows),
        f"\n(a)/(c): {ratios['passes_a_over_c']:.1f}× forward passes, {ratios['seconds_a_over_c']:.1f}× wall "
        f"time (extrapolated (a)). Adaptive blocks: {results['adaptive_summary']}.\n",
    ]
    write_results(args.out, results, "\n".join(md))
    print("\n".join(md[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="the 2D model (required without --volume)")
    ap.add_argument("--data", default="drive:../shared/data/drive")
    ap.add_argument("--out", type=Path, default=Path("bench_out/pdcr_speed"))
    ap.add_argument("--crop", type=int, default=128, help="side of the native-resolution crop explained")
    ap.add_argument("--roi", type=int, default=16)
    ap.add_argument("--block", type=int, default=8)
    ap.add_argument("--truth-draws", type=int, default=200)
    ap.add_argument("--outcome", default="dice_gt")
    ap.add_argument(
        "--truth-cache", type=Path, help="keep (or reuse) the truth's raw draws in this .npz file"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="where the forward passes run: cpu or cuda")
    ap.add_argument("--profile", action="store_true", help="also profile (a) and (c) and write the top calls")
    ap.add_argument(
        "--loose",
        action="store_true",
        help="also run (d): adaptive with a looser rule (CI tolerance 0.5, at most 12 draws per block)",
    )
    ap.add_argument("--volume", type=int, help="run the 3D case on an N³ volume instead (e.g. 96)")
    ap.add_argument("--features", type=lambda t: tuple(int(v) for v in t.split(",")), default=(8, 16, 32, 64))
    ap.add_argument("--paper-sample", type=int, default=6, help="--volume: blocks the paper's rule runs on")
    ap.add_argument("--max-draws", type=int, default=20, help="--volume: adaptive's cap on draws per block")
    ap.add_argument("--tol", type=float, default=1.0, help="--volume: adaptive's CI tolerance (points)")
    ap.add_argument(
        "--untimed", action="store_true", help="--volume: say that the seconds come from a niced, loaded run"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.volume:
        volume_case(args)
        return
    if args.checkpoint is None:
        ap.error("--checkpoint is required (or --volume N for the 3D case)")

    where = (
        f"{torch.cuda.get_device_name(0)} (CUDA)"
        if args.device.startswith("cuda")
        else f"the CPU, {args.threads} torch thread(s)"
    )
    kind, root = parse_data(args.data)
    model = load_model(args.checkpoint).to(args.device)
    test = load_split(kind, root, "test")
    case = sample_cases(test, 1, args.crop, args.roi, args.seed)[0]
    sample = next(s for s in test if s.name == case.image_name)
    y0, x0 = case.origin
    gt = sample.mask[y0 : y0 + args.crop, x0 : x0 + args.crop]
    image, roi = case.image, case.roi
    # one bank of natural 4·block patches from the training images (the explained image is a test image)
    bank = PatchBank.from_images(
        [s.image for s in load_split(kind, root, "training")], 4 * args.block, seed=args.seed
    )
    outcome = make_outcome(args.outcome, model, image, roi, gt)
    blocks = [b for b in block_grid(image.shape[1:], args.block) if not overlaps(b, roi.mask)]
    tau = 0.02

    truth, truth_se, truth_passes, truth_s = truth_map(
        model, image, outcome, bank, blocks, args.truth_draws, args.seed, args.truth_cache
    )
    rows, profiles = [], {}

    def run_a():
        return paper_loop(model, image, outcome, bank, blocks, args.seed, tau)

    def run_explain(estimator, rule=None):
        exp = explain_regions(
            model,
            image,
            roi,
            outcome=outcome,
            intervention=bank,
            block=args.block,
            estimator=estimator,
            seed=args.seed,
            batch_size=64,
            tau=tau,
            rule=rule,
            show_progress=False,
        )
        return block_values(exp.ate, blocks), exp.forward_passes, exp.seconds

    runs = [
        ("(a) paper, per-block batches", run_a),
        ("(b) reference, batched", lambda: run_explain("reference")),
        ("(c) adaptive", lambda: run_explain("adaptive")),
    ]
    if args.loose:
        loose = SequentialRule(tau=tau, tol=0.5, max_draws=12)
        runs.append(("(d) adaptive, tol 0.5, ≤12 draws", lambda: run_explain("adaptive", loose)))
    for name, fn in runs:
        if args.profile and name[1] in "ac":
            prof = cProfile.Profile()
            est, passes, secs = prof.runcall(fn)
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(18)
            profiles[name] = buf.getvalue()
        else:
            est, passes, secs = fn()
        rows.append(
            {"method": name, "forward_passes": int(passes), "seconds": float(secs), **errors(est, truth)}
        )
    a, c = rows[0], rows[2]
    ratios = {
        "passes_a_over_c": a["forward_passes"] / c["forward_passes"],
        "seconds_a_over_c": a["seconds"] / c["seconds"],
        "mae_c_minus_a": c["mae"] - a["mae"],
    }
    # How far could any sampler go? The per-draw SD of each block, from the truth's draws, bounds the passes
    # needed to match (a)'s error (the truth's own noise is part of (a)'s MAE, which makes the bound generous).
    sd = truth_se * np.sqrt(args.truth_draws)
    bound = min_passes_for_mae(sd, a["mae"])
    ratios.update(
        {"min_passes_to_match_a": bound, "max_pass_ratio_at_equal_mae": a["forward_passes"] / bound}
    )
    results = {
        "config": {
            "checkpoint": str(args.checkpoint),
            "data": args.data,
            "image": case.image_name,
            "crop_origin": list(case.origin),
            "crop": args.crop,
            "roi": roi.description,
            "block": args.block,
            "blocks": len(blocks),
            "outcome": args.outcome,
            "tau": tau,
            "truth_draws": args.truth_draws,
            "threads": args.threads,
            "seed": args.seed,
            "device": where,
        },
        "truth": {
            "forward_passes": truth_passes,
            "seconds": truth_s,
            "mean_abs_ate": float(np.abs(truth).mean()),
            "mean_se": float(truth_se.mean()),
            "share_abs_ate_ge_tau": float((np.abs(truth) >= tau).mean()),
        },
        "methods": rows,
        "ratios": ratios,
    }
    md = [
        "# PdCR speed against the paper's configuration\n",
        f"Model `{args.checkpoint}`, {args.crop}×{args.crop} crop of {case.image_name} at {case.origin}, RoI "
        f"{roi.description}, {len(blocks)} blocks of {args.block} px outside the RoI, outcome {args.outcome}. Truth: "
        f"{args.truth_draws} draws per block ({truth_passes} passes, {truth_s:.0f} s; mean |ATE| "
        f"{results['truth']['mean_abs_ate']:.3f}, mean SE {results['truth']['mean_se']:.3f}). "
        f"Forward passes on {where}.\n",
        markdown_table(rows),
        f"\n(a)/(c): {ratios['passes_a_over_c']:.1f}× forward passes, {ratios['seconds_a_over_c']:.1f}× wall time; "
        f"MAE (c) − (a) = {ratios['mae_c_minus_a']:+.4f}.\n",
        f"\nLower bound: with each block's per-draw SD known in advance (median {np.median(sd):.3f} Dice points), "
        f"matching (a)'s MAE needs at least {bound:.0f} forward passes ({bound / len(blocks):.1f} per block), so no "
        f"unbiased sampler can use more than {ratios['max_pass_ratio_at_equal_mae']:.1f}× fewer passes than (a) at "
        f"equal error on this image.\n",
    ]
    for name, text in profiles.items():
        md.append(f"\n## Profile of {name}\n\n```\n{text}\n```\n")
    write_results(args.out, results, "\n".join(md))
    print("\n".join(md[2:4]))


if __name__ == "__main__":
    main()
