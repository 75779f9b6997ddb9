"""Why does (or doesn't) PdCR win the deletion metric? Estimator, units or metric, on a few DRIVE RoIs.

For each RoI of the benchmark's sampling, PdCR is run in several variants and scored by
the same deletion/insertion code as the benchmark:

- estimator: the benchmark's capped ``adaptive`` against the paper's ``reference``
  (S=3, N=50) on the same 8-px blocks;
- operator match: PdCR with the blur or zero intervention instead of the patch bank
  (does a map win the metric whose operator it shares?);
- outcome: soft probability mass in the RoI instead of the quantised hard Dice;
- additivity: the effect of removing the top-k blocks together against the sum of
  their single-block ATEs (deletion curves remove blocks cumulatively; PdCR measures
  them one at a time).

Example:
    .venv/bin/python benchmarks/pdcr_faithfulness_diagnosis.py \\
        --checkpoint runs/small/pdcr_drive_unet/checkpoints/best.safetensors --rois 6 --out bench_out/pdcr_diagnosis
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from triptych.core.results import markdown_table, write_results
from triptych.pdcr.baselines import Target, explain_baseline, saliency_from_ate
from triptych.pdcr.benchmark import BenchConfig, load_split, parse_data, patch_banks, sample_cases
from triptych.pdcr.estimate import SequentialRule
from triptych.pdcr.faithfulness import evaluate, grid_units, importance_order, removed_image
from triptych.pdcr.interventions import Blur, Zero
from triptych.pdcr.models import load_model
from triptych.pdcr.regions import explain_regions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--data", default="drive:../shared/data/drive")
    ap.add_argument("--rois", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path("bench_out/pdcr_diagnosis"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = BenchConfig()
    kind, root = parse_data(args.data)
    model = load_model(args.checkpoint)
    cases = sample_cases(load_split(kind, root, "test"), args.rois, cfg.crop, cfg.roi, cfg.seed)
    bank, metric_bank = patch_banks(load_split(kind, root, "training"), cfg)
    ops = {"zero": Zero(), "blur": Blur(cfg.blur_sigma), "patch_bank": metric_bank}
    rows: dict[str, list] = {}
    additivity = []
    capped = SequentialRule(tau=0.02, tol=cfg.tol, max_draws=cfg.max_draws)
    variants = {
        "pdcr adaptive (benchmark)": dict(estimator="adaptive", coarse_block=cfg.coarse_block, rule=capped),
        "pdcr reference N=50": dict(estimator="reference"),
        "pdcr adaptive, blur do()": dict(
            estimator="adaptive",
            coarse_block=cfg.coarse_block,
            rule=capped,
            intervention=Blur(cfg.blur_sigma),
        ),
        "pdcr adaptive, zero do()": dict(
            estimator="adaptive", coarse_block=cfg.coarse_block, rule=capped, intervention=Zero()
        ),
        "pdcr adaptive, soft-mass outcome": dict(
            estimator="adaptive", coarse_block=cfg.coarse_block, rule=capped, outcome="soft_mass"
        ),
    }
    for k, case in enumerate(cases):
        target = Target.build(model, case.image, case.roi, "dice_self")
        units = grid_units(case.image.shape[1:], cfg.block, case.roi.mask)
        removed = {name: removed_image(op, case.image, units, seed=cfg.seed + k) for name, op in ops.items()}
        maps = []
        for name, opts in variants.items():
            opts = {"intervention": bank, "outcome": target.outcome_fn, **opts}
            exp = explain_regions(
                model,
                case.image,
                case.roi,
                block=cfg.block,
                seed=cfg.seed,
                batch_size=64,
                show_progress=False,
                **opts,
            )
            maps.append(saliency_from_ate(exp.ate, exp.seconds, exp.forward_passes, method=name))
            if name == "pdcr reference N=50":
                additivity += additivity_check(target, case.image, removed["patch_bank"], exp.ate, units, k)
        maps.append(explain_baseline("zero_occlusion", target, case.image, block=cfg.block))
        maps.append(explain_baseline("integrated_gradients", target, case.image, n_steps=cfg.ig_steps))
        for sal in maps:
            f = evaluate(target, case.image, sal, removed, units, steps=cfg.steps, seed=cfg.seed + k)
            rows.setdefault(sal.method, []).append(f)
        print(f"RoI {k + 1}/{len(cases)} done", flush=True)
    table = []
    for method, fs in rows.items():
        row = {"method": method}
        for op in ops:
            row[f"del {op}"] = float(np.mean([f.deletion_auc[op] for f in fs]))
        for op in ops:
            row[f"ins {op}"] = float(np.mean([f.insertion_auc[op] for f in fs]))
        row["forward passes"] = float(np.mean([f.forward_passes for f in fs]))
        table.append(row)
    add = np.array([(a["sum_of_ates"], a["joint_effect"]) for a in additivity])
    corr = float(np.corrcoef(add[:, 0], add[:, 1])[0, 1]) if len(add) > 2 else float("nan")
    ratio = (
        float(np.median(add[:, 1] / np.where(add[:, 0] == 0, np.nan, add[:, 0])))
        if len(add)
        else float("nan")
    )
    md = "\n".join(
        [
            "# Why PdCR does or does not win the deletion metric\n",
            f"{len(cases)} DRIVE test RoIs, model `{args.checkpoint}`, the benchmark's crops, units and operators "
            "(deletion AUC: lower is better).\n",
            markdown_table(table),
            "\n## Additivity (patch-bank removal of the top-k blocks of the reference map)\n",
            f"Correlation of the sum of the k single-block ATEs with the joint effect of removing them together: "
            f"{corr:.3f}; median joint/sum ratio {ratio:.2f} (1 = additive).\n",
            markdown_table(additivity),
        ]
    )
    write_results(
        args.out,
        {
            "methods": table,
            "additivity": additivity,
            "additivity_corr": corr,
            "additivity_median_ratio": ratio,
        },
        md,
    )
    print(md)


def additivity_check(target, image, removed, ate, units, case_index: int) -> list[dict]:
    """Joint effect (Dice points) of removing the top-k blocks together against the sum of their ATEs."""
    order = importance_order(-ate, units, 0)
    base = float(target.outcome(image[None])[0]) * 100
    out = []
    for k in (1, 2, 4, 8, 16):
        x = image.clone()
        for i in order[:k]:
            x[(slice(None), *units[i])] = removed[(slice(None), *units[i])]
        joint = float(target.outcome(x[None])[0]) * 100 - base
        out.append(
            {
                "roi": case_index,
                "k": k,
                "sum_of_ates": float(sum(ate[units[i]].flat[0] for i in order[:k])),
                "joint_effect": joint,
            }
        )
    return out


if __name__ == "__main__":
    main()
