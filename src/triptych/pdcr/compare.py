"""``triptych pdcr compare``: the input-ATE analysis of several models on the same RoIs, with tests.

Maps come from a benchmark run (``maps_<model>.npz``) or are computed here with the same
sampling and estimator. Writes results.json, results.md and report.html (table, figures,
tests) into the output folder.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from triptych.core.errors import InputError
from triptych.core.report import Report
from triptych.core.results import markdown_table, write_results
from triptych.pdcr.analysis import (
    STATISTICS,
    TestResult,
    across_inputs,
    between_models,
    explanation_statistics,
    radial_profile,
    summarise,
)

Maps = Mapping[str, np.ndarray]


def load_maps(folder: Path, names: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """``maps_<name>.npz`` of a benchmark run for each model name."""
    out = {}
    for name in names:
        path = Path(folder) / f"maps_{name}.npz"
        if not path.is_file():
            raise InputError(
                f"--maps {folder}: no maps_{name}.npz; run `triptych pdcr benchmark` with --archs {name}"
            )
        try:
            with np.load(path, allow_pickle=False) as z:
                out[name] = {k: z[k] for k in z.files}
        except Exception as exc:  # numpy / zipfile raise many types for a corrupt .npz
            raise InputError(
                f"--maps {folder}: maps_{name}.npz is corrupt ({type(exc).__name__}); run "
                f"`triptych pdcr benchmark` again"
            ) from None
    return out


def compute_maps(
    data: str,
    archs: Sequence[str],
    n_rois: int,
    models_dir: Path,
    config: Any,
    train_time: str | None = None,
    outcome: str = "dice_gt",
    empty_dice: float = 1.0,
) -> dict[str, dict[str, np.ndarray]]:
    """PdCR maps and component effects of each model on the same seeded RoIs (no baselines).

    The default outcome is the paper's RoI Dice against the ground truth: against the model's
    own prediction the base outcome is the maximum, 100, so no block can have a positive ATE.
    """
    from triptych.core.progress import progress
    from triptych.pdcr.baselines import Target
    from triptych.pdcr.benchmark import (
        component_effects,
        load_split,
        maps_arrays,
        model_for,
        parse_data,
        patch_banks,
        pdcr_explanation,
        sample_cases,
    )

    kind, root = parse_data(data)
    cases = sample_cases(load_split(kind, root, "test"), n_rois, config.crop, config.roi, config.seed)
    train = load_split(kind, root, "training")
    bank = patch_banks(train, config)[0]
    dataset = [s.image for s in train]
    out = {}
    for arch in archs:
        model = model_for(arch, kind, root, models_dir, train_time, config.seed)[0]
        explanations = []
        for case in progress(cases, arch, unit="RoI"):
            target = Target.build(model, case.image, case.roi, outcome, case.truth, empty_dice)
            exp = pdcr_explanation(model, case, bank, config, target)
            exp.config["components"] = component_effects(model, case, dataset, config, target)
            explanations.append(exp)
        out[arch] = maps_arrays(cases, explanations)
    return out


def model_statistics(maps: Maps, d: float, q: float) -> list[dict[str, float]]:
    """The statistics of every RoI of one model."""
    records = []
    for i in range(maps["ate"].shape[0]):
        blocks = maps["block_ate"][i]
        comps = maps["component_ate"][i] if maps["component_ate"].size else None
        records.append(
            explanation_statistics(
                maps["ate"][i], maps["roi"][i], blocks[np.isfinite(blocks)], comps, d=d, q=q
            )
        )
    return records


def _figures(per_model: dict[str, list[dict[str, float]]], all_maps: Mapping[str, Maps], edges: np.ndarray):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_model)
    box, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, stat in zip(axes.ravel(), STATISTICS, strict=True):
        values = [[r[stat] for r in per_model[m] if np.isfinite(r[stat])] for m in names]
        ax.boxplot(values, tick_labels=names, showmeans=True)
        ax.set_title(stat)
        ax.tick_params(axis="x", labelrotation=20)
    box.tight_layout()
    prof, ax = plt.subplots(figsize=(6, 4))
    centres = (edges[:-1] + edges[1:]) / 2
    for m in names:
        rows = np.array(
            [radial_profile(a, r, edges) for a, r in zip(all_maps[m]["ate"], all_maps[m]["roi"], strict=True)]
        )
        with warnings.catch_warnings():  # rings beyond the crop are empty for every RoI
            warnings.simplefilter("ignore", RuntimeWarning)
            ax.plot(centres, np.nanmean(rows, 0), marker="o", label=m)
    ax.set_xlabel("distance from the RoI (px)")
    ax.set_ylabel("mean |ATE| (Dice points)")
    ax.set_yscale("log")
    ax.legend()
    prof.tight_layout()
    field, axs = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
    for ax, m in zip(axs[0], names, strict=True):
        mean = np.abs(all_maps[m]["ate"]).mean(0)
        ax.imshow(mean, cmap="magma")
        ax.contour(all_maps[m]["roi"].mean(0), levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set_title(f"{m}: mean |ATE|")
        ax.axis("off")
    field.tight_layout()
    return box, prof, field


def run_compare(
    all_maps: Mapping[str, Maps],
    out: Path,
    *,
    d: float = 16.0,
    q: float = 0.9,
    alpha: float = 0.05,
    source: str = "",
) -> dict[str, Any]:
    """Statistics per model, between-model and across-input tests; results.json/.md and report.html in ``out``."""
    from triptych.core.io import atomic_output_dir

    if len(all_maps) < 2:
        raise InputError("compare needs at least two models")
    per_model = {m: model_statistics(maps, d, q) for m, maps in all_maps.items()}
    n = {len(v) for v in per_model.values()}
    if len(n) != 1:
        raise InputError(
            f"the models were explained on different numbers of RoIs ({sorted(n)}); use the same run"
        )
    between = [
        between_models({m: [r[s] for r in rows] for m, rows in per_model.items()}, s) for s in STATISTICS
    ]
    within: dict[str, list[TestResult]] = {
        m: [across_inputs([r[s] for r in rows], all_maps[m]["image_name"].tolist(), s) for s in STATISTICS]
        for m, rows in per_model.items()
    }
    table = summarise(per_model)
    results = {
        "config": {
            "distance": d,
            "support_quantile": q,
            "alpha": alpha,
            "source": source,
            "rois": next(iter(n)),
        },
        "models": {
            m: {
                s: float(np.nanmean([r[s] for r in rows]))
                if np.isfinite([r[s] for r in rows]).any()
                else None
                for s in STATISTICS
            }
            for m, rows in per_model.items()
        },
        "per_roi": per_model,
        "between_models": [t.__dict__ for t in between],
        "across_inputs": {m: [t.__dict__ for t in tests] for m, tests in within.items()},
    }
    between_rows = [t.row(alpha) for t in between]
    within_rows = [{"model": m, **t.row(alpha)} for m, tests in within.items() for t in tests]
    for r in within_rows:
        r.pop("different pairs (Holm)")
    md = "\n".join(
        [
            "# PdCR multi-model analysis\n",
            f"{next(iter(n))} RoIs per model ({source}); median [IQR] over RoIs. share_within: share of |ATE| within "
            f"{d:g} px of the RoI; support_radius: radius holding {q:.0%} of |ATE| (px); positive/negative/zero: shares "
            "of blocks; concentration: 1 − normalised entropy of the stage-level component effects.\n",
            markdown_table(table),
            "\n## Between models (Friedman over RoIs; Wilcoxon pairs, Holm)\n",
            markdown_table(between_rows, floatfmt="{:.3g}"),
            "\n## Across inputs of one model (Kruskal–Wallis over images)\n",
            markdown_table(within_rows, floatfmt="{:.3g}"),
        ]
    )
    edges = np.array([0, 4, 8, 16, 24, 32, 48, 64, 96])
    report = Report(
        "PdCR: perceptual strategies of segmentation models",
        intro=f"Input-region ATE analysis of {', '.join(all_maps)} on the same {next(iter(n))} RoIs.",
    )
    sec = report.section("Statistics per model")
    sec.table(table, caption="median [IQR] over RoIs")
    box, prof, field = _figures(per_model, all_maps, edges)
    sec.figure(box, "each statistic per model (box: quartiles; triangle: mean)")
    sec.figure(prof, "mean |ATE| against distance from the RoI")
    sec.figure(field, "mean |ATE| map over RoIs (RoIs outlined in cyan)")
    report.section("Between models").table(
        between_rows, caption="Friedman test over RoIs, Wilcoxon pairs with Holm"
    )
    report.section("Across inputs of one model").table(
        within_rows, caption="Kruskal–Wallis over input images"
    )
    with atomic_output_dir(out) as stage:
        write_results(stage, results, md)
        report.write(stage / "report.html")
    return results
