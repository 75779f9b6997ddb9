"""Faithfulness benchmark: PdCR against the baselines on sampled vessel RoIs, per architecture.

For each architecture the benchmark reuses (or trains) a model, samples RoIs on
ground-truth foreground pixels of the *test* images with a seed, explains each RoI
with PdCR (adaptive estimator, patch bank) and every baseline on a crop around it (the
models are trained on patches, so a crop is in distribution and keeps the cost down),
and scores every map by deletion/insertion AUC under three removal operators, leakage,
seconds and forward passes. The patch bank PdCR samples and the patch bank the metric
removes with are cut from disjoint halves of the training images.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from triptych.core.errors import InputError
from triptych.core.progress import progress
from triptych.core.results import json_text, markdown_table, write_results
from triptych.pdcr.baselines import Saliency, Target, explain_baseline, explain_with
from triptych.pdcr.data import Sample, load_dataset
from triptych.pdcr.estimate import SequentialRule
from triptych.pdcr.explainer import PdCR
from triptych.pdcr.faithfulness import Faithfulness, evaluate, grid_units, removed_image
from triptych.pdcr.interventions import Blur, PatchBank, Zero
from triptych.pdcr.models import SegmentationModel, load_model
from triptych.pdcr.roi import RoI

OPERATORS = ("zero", "blur", "patch_bank")
BASELINES = ("seg_grad_cam", "zero_occlusion", "rise", "integrated_gradients", "misure")


@dataclass
class BenchConfig:
    """Sizes of one benchmark run (defaults sized for a shared 2-core CPU)."""

    crop: int = 64  # side of the explained crop around each RoI, native resolution
    roi: int = 12  # side of the RoI box, centred on a foreground pixel
    block: int = 8  # PdCR's finest block = the faithfulness unit
    coarse_block: int = 16  # PdCR's adaptive coarse-to-fine start
    max_draws: int = 20  # cap on PdCR's sequential draws per block
    tol: float = 1.0  # PdCR stops when the 95% CI half-width < tol (Dice points)
    steps: int = 8  # points per deletion/insertion curve (+1)
    rise_masks: int = 200
    misure_steps: int = 40
    ig_steps: int = 16
    blur_sigma: float = 4.0
    leakage_distance: float = 16.0
    seed: int = 0
    baselines: tuple[str, ...] = BASELINES
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Case:
    """One RoI: the crop (C, crop, crop) of test image ``image_name`` at ``origin`` (row, col)."""

    image_name: str
    image: torch.Tensor
    roi: RoI
    origin: tuple[int, int]
    truth: np.ndarray | None = None  # the ground-truth mask of the crop


def parse_data(spec: str) -> tuple[str, Path]:
    """``drive:PATH`` or ``folder:PATH`` -> (kind, path)."""
    kind, _, path = spec.partition(":")
    if kind not in ("drive", "folder") or not path:
        raise InputError(
            f"--data {spec!r}: give drive:PATH (DRIVE layout) or folder:PATH (training/ and test/ "
            "folders with images/ and masks/)"
        )
    if not Path(path).is_dir():
        raise InputError(f"--data {spec!r}: {path} is not a folder")
    return kind, Path(path)


def load_split(kind: str, root: Path, split: str) -> list[Sample]:
    """The ``training`` or ``test`` split of a DRIVE root or of a split folder (``<root>/<split>/{images,masks}``)."""
    if kind == "folder" and not (root / split / "images").is_dir():
        raise InputError(
            f"--data folder:{root}: needs {root / split}/images and masks/ (a training and a test "
            "split, so that RoIs never come from training images)"
        )
    return load_dataset(f"{kind}:{root}", split)


def sample_cases(
    samples: Sequence[Sample], n: int, crop: int, roi: int, seed: int = 0, per_image: int = 2
) -> list[Case]:
    """``n`` RoIs, ``per_image`` on each of the first ⌈n/per_image⌉ test images, each a box on a random
    foreground (in-FOV) pixel; several RoIs per image allow the across-inputs test of ``compare``."""
    rng = np.random.default_rng(seed)
    usable = [s for s in samples if s.mask is not None and s.mask.any()]
    if not usable:
        raise InputError("no test image has a non-empty ground-truth mask to place RoIs on")
    usable = usable[: max(1, -(-n // per_image))]
    cases = []
    for k in range(n):
        s = usable[k % len(usable)]
        h, w = s.mask.shape
        if min(h, w) < crop:
            raise InputError(f"image {s.name} ({h}×{w}) is smaller than the crop {crop}; lower --crop")
        fg = s.mask & (s.fov if s.fov is not None else True)
        margin = np.zeros_like(fg)
        margin[roi : h - roi, roi : w - roi] = True
        ys, xs = np.nonzero(fg & margin)
        i = int(rng.integers(len(ys)))
        cy, cx = int(ys[i]), int(xs[i])
        y0 = int(np.clip(cy - crop // 2, 0, h - crop))
        x0 = int(np.clip(cx - crop // 2, 0, w - crop))
        ry = int(np.clip(cy - y0 - roi // 2, 0, crop - roi))
        rx = int(np.clip(cx - x0 - roi // 2, 0, crop - roi))
        image = s.image[:, y0 : y0 + crop, x0 : x0 + crop].contiguous()
        cases.append(
            Case(
                s.name,
                image,
                RoI.box(rx, ry, roi, roi, (crop, crop)),
                (y0, x0),
                s.mask[y0 : y0 + crop, x0 : x0 + crop].copy(),
            )
        )
    return cases


def patch_banks(train: Sequence[Sample], config: BenchConfig) -> tuple[PatchBank, PatchBank]:
    """(PdCR's bank, the metric's bank) from disjoint halves (even / odd) of the training images."""
    images = [s.image for s in train]
    if len(images) < 2:
        raise InputError("the benchmark needs at least 2 training images for two disjoint patch banks")
    pdcr = PatchBank.from_images(images[0::2], config.coarse_block, seed=config.seed)
    metric = PatchBank.from_images(images[1::2], config.block, seed=config.seed + 1)
    return pdcr, metric


def pdcr_explanation(
    model: SegmentationModel, case: Case, bank: PatchBank, config: BenchConfig, target: Target
):
    """PdCR's input-region explanation of one RoI (adaptive estimator, patch bank, capped draws)."""
    return pdcr_explainer(target, bank, config).explain(case.image)


def pdcr_explainer(target: Target, bank: PatchBank, config: BenchConfig) -> PdCR:
    """PdCR as the benchmark runs it: adaptive estimator, patch bank, capped draws."""
    rule = SequentialRule(tau=0.02, tol=config.tol, max_draws=config.max_draws)
    return PdCR(
        target,
        bank,
        block=config.block,
        coarse_block=config.coarse_block,
        estimator="adaptive",
        rule=rule,
        seed=config.seed,
        batch_size=64,
    )


def component_effects(
    model: SegmentationModel, case: Case, dataset: Sequence[torch.Tensor], config: BenchConfig, target: Target
) -> dict[str, float]:
    """Component name -> raw mean effect of swapping in another input's activation, per network stage."""
    from triptych.pdcr.components import explain_components

    rule = SequentialRule(tau=0.02, tol=config.tol, max_draws=config.max_draws)
    exp = explain_components(
        model,
        case.image,
        case.roi,
        components="stages",
        outcome=target.outcome_fn,
        intervention="swap",
        dataset=dataset,
        pool_size=8,
        seed=config.seed,
        rule=rule,
    )
    return {r["component"]: float(r["mean"]) for r in exp.rows}


def explain_case(
    model: SegmentationModel, case: Case, bank: PatchBank, config: BenchConfig
) -> tuple[list[Saliency], Any, Target]:
    """PdCR, every baseline and a random map for one RoI; the PdCR Explanation; the Target."""
    target = Target.build(model, case.image, case.roi, "dice_self")
    pdcr = pdcr_explainer(target, bank, config)
    maps = [
        explain_with("pdcr", pdcr, target, case.image)
    ]  # PdCR like any other method: −ATE, higher = support
    exp = pdcr.explanations[-1]
    options = {
        "rise": {"n_masks": config.rise_masks, "seed": config.seed},
        "misure": {"steps": config.misure_steps},
        "integrated_gradients": {"n_steps": config.ig_steps},
        "zero_occlusion": {"block": config.block},
    }
    for method in config.baselines:
        maps.append(explain_baseline(method, target, case.image, **options.get(method, {})))
    noise = np.random.default_rng(config.seed).random(case.image.shape[1:])
    maps.append(Saliency("random", noise, 0.0, 0))
    return maps, exp, target


def evaluate_model(
    model: SegmentationModel,
    cases: Sequence[Case],
    banks: tuple[PatchBank, PatchBank],
    config: BenchConfig,
    desc: str = "RoIs",
    dataset: Sequence[torch.Tensor] | None = None,
) -> tuple[dict[str, list[Faithfulness]], list[Any]]:
    """Faithfulness of every method on every case (method -> per-RoI scores) and PdCR's explanations.

    With ``dataset`` (training images) each explanation also gets its component effects, for ``compare``.
    """
    scores: dict[str, list[Faithfulness]] = {}
    explanations = []
    ops = {"zero": Zero(), "blur": Blur(config.blur_sigma), "patch_bank": banks[1]}
    for k, case in enumerate(progress(cases, desc, unit="RoI")):
        maps, exp, target = explain_case(model, case, banks[0], config)
        if dataset is not None:
            exp.config["components"] = component_effects(model, case, dataset, config, target)
        explanations.append(exp)
        units = grid_units(case.image.shape[1:], config.block, case.roi.mask)
        removed = {
            name: removed_image(op, case.image, units, seed=config.seed + k) for name, op in ops.items()
        }
        for sal in maps:
            f = evaluate(
                target,
                case.image,
                sal,
                removed,
                units,
                steps=config.steps,
                distance=config.leakage_distance,
                seed=config.seed + k,
            )
            scores.setdefault(sal.method, []).append(f)
    return scores, explanations


def aggregate(scores: dict[str, list[Faithfulness]]) -> dict[str, dict[str, Any]]:
    """Per method: mean deletion/insertion AUC per operator, leakage, seconds, forward passes."""
    out = {}
    for method, rows in scores.items():
        out[method] = {
            "deletion_auc": {
                op: float(np.mean([r.deletion_auc[op] for r in rows])) for op in rows[0].deletion_auc
            },
            "insertion_auc": {
                op: float(np.mean([r.insertion_auc[op] for r in rows])) for op in rows[0].insertion_auc
            },
            "leakage": float(np.mean([r.leakage for r in rows])),
            "seconds": float(np.mean([r.seconds for r in rows])),
            "forward_passes": float(np.mean([r.forward_passes for r in rows])),
        }
    return out


def pdcr_versus(scores: dict[str, list[Faithfulness]]) -> list[dict[str, Any]]:
    """Paired comparison of PdCR's deletion AUC with each other method's, per operator (Wilcoxon)."""
    from scipy.stats import wilcoxon

    rows = []
    pd = scores["pdcr"]
    for method, other in scores.items():
        if method == "pdcr":
            continue
        for op in pd[0].deletion_auc:
            a = np.array([r.deletion_auc[op] for r in pd])
            b = np.array([r.deletion_auc[op] for r in other])
            diff = a - b
            p = float(wilcoxon(a, b).pvalue) if len(a) >= 3 and np.any(diff != 0) else float("nan")
            rows.append(
                {
                    "vs": method,
                    "operator": op,
                    "pdcr_lower_share": float((diff < 0).mean()),
                    "median_diff": float(np.median(diff)),
                    "p_wilcoxon": p,
                }
            )
    return rows


def save_maps(path: Path, cases: Sequence[Case], explanations: Sequence[Any]) -> None:
    """PdCR's ATE/SE maps, RoIs, finest-block ATEs and image names, for ``triptych pdcr compare --maps``."""
    np.savez_compressed(path, **maps_arrays(cases, explanations))


def maps_arrays(cases: Sequence[Case], explanations: Sequence[Any]) -> dict[str, np.ndarray]:
    """The arrays ``compare`` analyses: ate, se, roi (R, H, W); block_ate (R, n) nan-padded; components."""
    cells = [e.finest_cells() for e in explanations]
    width = max(len(c) for c in cells)
    padded = np.full((len(cells), width), np.nan)
    for i, c in enumerate(cells):
        padded[i, : len(c)] = c
    names = sorted({n for e in explanations for n in e.config.get("components", {})})
    comps = np.array([[e.config.get("components", {}).get(n, np.nan) for n in names] for e in explanations])
    return {
        "ate": np.stack([e.ate for e in explanations]),
        "se": np.stack([e.se for e in explanations]),
        "roi": np.stack([c.roi.mask for c in cases]),
        "block_ate": padded,
        "component_names": np.array(names, dtype=str),
        "component_ate": comps.reshape(len(cases), -1),
        "image_name": np.array([c.image_name for c in cases]),
        "image": np.stack([c.image for c in cases]),
        "forward_passes": np.array([e.forward_passes for e in explanations]),
    }


def model_for(
    arch: str, kind: str, root: Path, models_dir: Path, train_time: str | None, seed: int
) -> tuple[SegmentationModel, float, Path]:
    """Reuse ``<models_dir>/pdcr_<data>_<arch>/checkpoints/best.safetensors`` or train it; (model, test Dice, path)."""
    from triptych.pdcr.train import evaluate as dice_per_image

    run = models_dir / f"pdcr_{root.name if kind == 'folder' else 'drive'}_{arch}"
    ckpt = run / "checkpoints" / "best.safetensors"
    if not ckpt.is_file():
        from triptych.core.training import TrainerFlags
        from triptych.pdcr.train import train_run

        train_run(  # into <run>.partial/, moved into place only when training finished
            f"{kind}:{root}",
            run,
            arch=arch,
            seed=seed,
            flags=TrainerFlags(accelerator="cpu", max_time=train_time),
            progress=False,
        )
    model = load_model(ckpt)
    metrics = run / "metrics.json"
    if (
        metrics.is_file()
        and Path(json.loads(metrics.read_text()).get("checkpoint", "")).resolve() == ckpt.resolve()
    ):
        test_dice = json.loads(metrics.read_text())["test_dice_fov"]
    else:  # the checkpoint's own test Dice, recomputed on the test split (never training images)
        test_dice = float(np.mean(dice_per_image(model, load_split(kind, root, "test"))))
    return model, float(test_dice), ckpt


def _benchmark_arch(
    arch: str,
    kind: str,
    root: Path,
    models_dir: Path,
    train_time: str | None,
    cases: Sequence[Case],
    banks: tuple[PatchBank, PatchBank],
    config: BenchConfig,
    threads: int,
) -> tuple[float, Path, dict[str, list[Faithfulness]], list[Any]]:
    """One architecture's part of the benchmark (runs in its own process when workers > 1)."""
    torch.set_num_threads(threads)
    model, test_dice, ckpt = model_for(arch, kind, root, models_dir, train_time, config.seed)
    dataset = [s.image for s in load_split(kind, root, "training")]
    scores, explanations = evaluate_model(model, cases, banks, config, desc=arch, dataset=dataset)
    return test_dice, ckpt, scores, explanations


def run_benchmark(
    data: str,
    archs: Sequence[str],
    n_rois: int,
    out: Path,
    *,
    models_dir: Path = Path("runs"),
    train_time: str | None = "00:00:15:00",
    config: BenchConfig | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """The whole benchmark; writes results.json, results.md, details.json and maps_<arch>.npz into ``out``.

    ``workers`` > 1 runs that many architectures at once, each in its own process.
    """
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    from triptych.core.io import atomic_output_dir

    config = config or BenchConfig()
    kind, root = parse_data(data)
    torch.manual_seed(config.seed)
    test = load_split(kind, root, "test")
    cases = sample_cases(test, n_rois, config.crop, config.roi, config.seed)
    banks = patch_banks(load_split(kind, root, "training"), config)
    results: dict[str, Any] = {"models": {}}
    details: dict[str, Any] = {
        "config": asdict(config),
        "data": data,
        "rois": [{"image": c.image_name, "origin": list(c.origin), "roi": c.roi.description} for c in cases],
        "models": {},
    }
    workers = max(1, min(workers, len(archs)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    args = [(a, kind, root, models_dir, train_time, cases, banks, config, threads) for a in archs]
    with atomic_output_dir(out) as stage:
        if workers == 1:
            outputs = [_benchmark_arch(*a) for a in args]
        else:
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                outputs = list(pool.map(_benchmark_arch, *zip(*args, strict=True)))
        for arch, (test_dice, ckpt, scores, explanations) in zip(archs, outputs, strict=True):
            results["models"][arch] = {"test_dice": test_dice, "methods": aggregate(scores)}
            details["models"][arch] = {
                "checkpoint": str(ckpt),
                "pdcr_versus": pdcr_versus(scores),
                "per_roi": {m: [f.row() for f in rows] for m, rows in scores.items()},
                "sd": {
                    m: {
                        "deletion_auc": {
                            op: float(np.std([r.deletion_auc[op] for r in rows], ddof=1))
                            for op in rows[0].deletion_auc
                        }
                    }
                    for m, rows in scores.items()
                },
            }
            save_maps(stage / f"maps_{arch}.npz", cases, explanations)
        write_results(stage, results, results_markdown(results, details))
        (stage / "details.json").write_text(json_text(details, default=float))
    return results


def results_markdown(results: dict[str, Any], details: dict[str, Any]) -> str:
    """results.md: one row per (model, method), then PdCR's paired comparisons."""
    rows = []
    for arch, entry in results["models"].items():
        for method, m in entry["methods"].items():
            row: dict[str, Any] = {"model": arch, "test Dice": entry["test_dice"], "method": method}
            row.update({f"del {op}": v for op, v in m["deletion_auc"].items()})
            row.update({f"ins {op}": v for op, v in m["insertion_auc"].items()})
            row.update(
                {
                    "leakage": m["leakage"],
                    "seconds": m["seconds"],
                    "forward passes": round(m["forward_passes"]),
                }
            )
            rows.append(row)
    cfg = details["config"]
    text = [
        "# PdCR faithfulness benchmark\n",
        f"Data `{details['data']}`, {len(details['rois'])} RoIs ({cfg['roi']}×{cfg['roi']} boxes on test-image "
        f"foreground, seed {cfg['seed']}), each explained on a {cfg['crop']}×{cfg['crop']} native-resolution crop. "
        f"Outcome: RoI Dice against the model's own prediction (/100). Units: {cfg['block']}×{cfg['block']} blocks "
        f"outside the RoI. PdCR: adaptive estimator from {cfg['coarse_block']}-px blocks, patch bank, at most "
        f"{cfg['max_draws']} draws per block, CI tolerance {cfg['tol']} Dice points. Deletion AUC: lower is better; "
        "insertion AUC: higher is better; leakage: share of |map| farther than "
        f"{cfg['leakage_distance']:g} px from the RoI. Seconds are wall time per explanation on a shared, loaded "
        "CPU. `random` is a random block order, for reference.\n",
        markdown_table(rows),
        "\n## PdCR against each method (deletion AUC, paired over RoIs)\n",
    ]
    for arch, d in details["models"].items():
        text.append(f"\n### {arch}\n")
        text.append(
            markdown_table(
                [
                    {
                        "vs": r["vs"],
                        "operator": r["operator"],
                        "PdCR lower (share of RoIs)": r["pdcr_lower_share"],
                        "median Δ": r["median_diff"],
                        "p (Wilcoxon)": r["p_wilcoxon"],
                    }
                    for r in d["pdcr_versus"]
                ]
            )
        )
    return "\n".join(text)
