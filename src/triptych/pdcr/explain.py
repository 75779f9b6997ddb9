"""The ``explain`` pipeline: read and validate inputs, explain regions and components, write every output.

Outputs (written through :func:`atomic_output_dir`, so a bad input leaves nothing):
``ate.npy``, ``se.npy``, ``blocks.json``, ``summary.json``, ``components.json``,
``overlay.png``, ``pie_histogram.png``, ``components.png`` and ``report.html``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from triptych.core.errors import InputError
from triptych.core.io import atomic_output_dir
from triptych.core.report import Report, Section
from triptych.core.results import json_text
from triptych.pdcr.components import ComponentExplanation, explain_components
from triptych.pdcr.data import Sample, load_dataset, read_image, read_mask, resize_sample
from triptych.pdcr.estimate import SequentialRule
from triptych.pdcr.interventions import PatchBank, RegionIntervention, make_intervention
from triptych.pdcr.models import SegmentationModel
from triptych.pdcr.regions import Explanation, explain_regions
from triptych.pdcr.roi import RoI, RoIFile, make_outcome


@dataclass
class ExplainInputs:
    """A validated image (C, *S) at the model's working size, its optional mask (a label map for a
    multi-class model) and the RoI."""

    image: torch.Tensor
    mask: np.ndarray | None
    roi: RoI
    affine: np.ndarray | None = None  # voxel -> world (4×4) of this grid, for NIfTI/DICOM inputs


def load_inputs(
    model: SegmentationModel,
    image_path: Path,
    mask_path: Path | None,
    roi_text: str | None,
    roi_mask_path: Path | None,
) -> ExplainInputs:
    """Read, check and resize the inputs; every problem is one clear line naming the input."""
    image, mask, affine = load_image_and_mask(model, image_path, mask_path)
    shape = tuple(image.shape[1:])
    if (roi_text is None) == (roi_mask_path is None):
        raise InputError("give exactly one of --roi x,y,w,h, --roi-mask FILE and --roi-file FILE")
    if roi_text is not None:
        roi = RoI.parse(roi_text, shape)
    else:
        roi = RoI.from_mask(read_mask(roi_mask_path, "--roi-mask"), shape)
    if roi.area == 0:
        raise InputError("--roi-mask is empty (zero area); mark at least one pixel")
    return ExplainInputs(image, mask, roi, affine)


def load_image_and_mask(
    model: SegmentationModel, image_path: Path, mask_path: Path | None
) -> tuple[torch.Tensor, np.ndarray | None, np.ndarray | None]:
    """The image (C, *S) at the model's working size and channels, its ground truth (or None), and its
    voxel-to-world affine for NIfTI/DICOM inputs (kept through any resize)."""
    from triptych.pdcr.data import MONAI_SUFFIXES, read_medical, read_truth

    image = read_image(image_path, model.spatial_dims, "--image")
    affine = read_medical(image_path)[1] if str(image_path).lower().endswith(MONAI_SUFFIXES) else None
    # a binary mask, or a label map for a multi-class (softmax) model
    mask = read_truth(mask_path, model.classes, "--mask") if mask_path else None
    if mask is not None and tuple(mask.shape) != tuple(image.shape[1:]):
        raise InputError(
            f"--mask {mask_path} has shape {tuple(mask.shape)} but --image {image_path} has "
            f"{tuple(image.shape[1:])}; give the mask of this image"
        )
    if image.shape[0] != model.spec.in_channels:
        if model.spec.in_channels == 1:
            image = image.mean(0, keepdim=True)
        else:
            raise InputError(
                f"--image {image_path} has {image.shape[0]} channel(s); the model expects "
                f"{model.spec.in_channels}"
            )
    if model.spec.input_size:
        old = tuple(image.shape[1:])
        resized = resize_sample(Sample(image, mask, image_path.stem), model.spec.input_size)
        image, mask = resized.image, resized.mask
        if affine is not None:  # voxel i of the new grid is old voxel (i + ½)·s − ½, s = old/new per axis
            affine = affine @ grid_map(
                [o / n for o, n in zip(old, image.shape[1:], strict=True)],
                [(o / n - 1) / 2 for o, n in zip(old, image.shape[1:], strict=True)],
            )
    return image, mask, affine


def grid_map(scale: list[float], offset: list[float]) -> np.ndarray:
    """4×4 map from new voxel indices to old ones: old = scale · new + offset (axes beyond 3 ignored)."""
    m = np.eye(4)
    for a, (sc, off) in enumerate(zip(scale[:3], offset[:3], strict=True)):
        m[a, a], m[a, 3] = sc, off
    return m


def _find(folder: Path, stem: str, name: str) -> Path:
    """The file ``<folder>/<stem>.<any image suffix>``."""
    from triptych.pdcr.data import file_stem, image_files

    found = [p for p in image_files(folder) if file_stem(p) == stem]
    if not found:
        raise InputError(f"{name} {folder}: no image file with the stem {stem!r} (listed in --roi-file)")
    return found[0]


def roi_file_jobs(
    model: SegmentationModel, image: Path, mask: Path | None, roi_file: RoIFile
) -> list[tuple[str, ExplainInputs]]:
    """(name, inputs) for every RoI of a coordinate file. ``image``/``mask`` are files (then the file's
    stems must name that image, or be absent) or folders (each stem is looked up there)."""
    from triptych.pdcr.data import file_stem

    jobs = []
    cache: dict[str, tuple[torch.Tensor, np.ndarray | None, np.ndarray | None]] = {}
    for entry in roi_file.entries:
        if image.is_dir():
            if entry.stem is None:
                raise InputError(
                    f"--roi-file: line 'row,col' has no image stem, but --image {image} is a folder"
                )
            image_path = _find(image, entry.stem, "--image")
            mask_path = _find(mask, entry.stem, "--mask") if mask is not None and mask.is_dir() else mask
        else:
            if entry.stem is not None and entry.stem != file_stem(image):
                continue  # a row for another image of the file
            image_path, mask_path = image, mask
        key = str(image_path)
        if key not in cache:
            cache[key] = load_image_and_mask(model, image_path, mask_path)
        im, gt, affine = cache[key]
        jobs.append(
            (
                entry.name if entry.stem or image.is_dir() else f"{file_stem(image)}_{entry.name}",
                ExplainInputs(im, gt, entry.roi(roi_file.roi_size, tuple(im.shape[1:])), affine),
            )
        )
    if not jobs:
        raise InputError(
            f"--roi-file lists no RoI for --image {image.name} (stems: "
            f"{', '.join(sorted({e.stem for e in roi_file.entries if e.stem}))[:80]})"
        )
    return jobs


@functools.lru_cache(maxsize=2)
def _training_samples(
    data: str, spatial_dims: int, size: int, input_size: tuple[int, ...] | None, classes: int = 1
) -> tuple[Sample, ...]:
    """The training split once per process (an explain over many RoIs reuses it)."""
    samples = load_dataset(data, "training", spatial_dims=spatial_dims, size=size, classes=classes)
    return tuple(resize_sample(s, input_size) for s in samples) if input_size else tuple(samples)


def dataset_images(
    data: str | None, model: SegmentationModel, image: torch.Tensor
) -> tuple[list[torch.Tensor], int | None]:
    """Training images of ``data`` at the working size, and the index of the explained image if present."""
    if data is None:
        return [], None
    samples = _training_samples(
        data, model.spatial_dims, int(image.shape[1]), model.spec.input_size, model.classes
    )
    images = [
        s.image if s.image.shape[0] == image.shape[0] else s.image.mean(0, keepdim=True) for s in samples
    ]
    same = next(
        (i for i, im in enumerate(images) if im.shape == image.shape and torch.equal(im, image)), None
    )
    return images, same


def model_window(model: SegmentationModel, image: torch.Tensor, roi: RoI) -> tuple[slice, ...]:
    """The model's window (training patch) centred on the RoI: one forward pass sees all of it."""
    patch = model.spec.patch_size
    if not patch or all(s <= p for s, p in zip(image.shape[1:], patch, strict=True)):
        return tuple(slice(0, s) for s in image.shape[1:])
    box = roi.bounding_box()
    start = [
        min(max((a + b) // 2 - p // 2, 0), s - p)
        for (a, b), p, s in zip(box, patch, image.shape[1:], strict=True)
    ]
    if any(a < s0 or b > s0 + p for (a, b), s0, p in zip(box, start, patch, strict=True)):
        raise InputError(
            f"--roi does not fit in the model's {patch} window; use a smaller RoI or --full-image"
        )
    return tuple(slice(s0, s0 + p) for s0, p in zip(start, patch, strict=True))


def write_outputs(
    out: Path,
    image: torch.Tensor,
    exp: Explanation,
    comps: ComponentExplanation | None,
    title: str,
    notes: list[str] | None = None,
    affine: np.ndarray | None = None,
) -> Section:
    """Write arrays, JSON, figures and report.html into ``out`` (a staging folder); return the report section.

    With an ``affine`` (a NIfTI/DICOM input) the ATE and SE maps are also written as
    ``ate.nii.gz`` / ``se.nii.gz`` on the explained voxels, in the input's world coordinates.
    """
    from triptych.pdcr.plots import ate_overlay, component_bars, pie_histogram

    exp.save(out)
    if affine is not None:
        import nibabel as nib

        for name, arr in (("ate", exp.ate), ("se", exp.se)):
            nib.save(nib.Nifti1Image(arr.astype(np.float32), affine), str(out / f"{name}.nii.gz"))
    summary = exp.summary()
    section = Section(title)
    for note in notes or []:
        section.text(note)
    section.text(
        f"Base outcome {summary['outcome']} = {exp.base:.2f}; {summary['estimated_units']} units estimated "
        f"with {exp.forward_passes} forward passes in {exp.seconds:.1f} s ({summary['estimator']}, "
        f"{summary['intervention']})."
    )
    fig = ate_overlay(image, exp.ate, exp.roi, title)
    fig.savefig(out / "overlay.png", dpi=110, bbox_inches="tight")
    section.figure(
        out / "overlay.png",
        "ATE map: red = replacing the block lowered the RoI outcome (the block "
        "supported the RoI), blue = replacing it raised the outcome (the block hurt it)",
    )
    fig = pie_histogram(summary)
    fig.savefig(out / "pie_histogram.png", dpi=110, bbox_inches="tight")
    section.figure(
        out / "pie_histogram.png",
        "Blocks by significance (Benjamini–Hochberg across blocks) and the "
        "paper's histogram bins; red = supports the RoI, blue = hurts it",
    )
    section.table(
        [
            {
                k: summary[k]
                for k in (
                    "base_outcome",
                    "significant_negative",
                    "significant_positive",
                    "not_significant",
                    "called_zero",
                    "forward_passes",
                    "seconds",
                )
            }
        ],
        caption="blocks outside the RoI: significant (q < α) negative = support, positive = hurt",
    )
    if comps is not None:
        (out / "components.json").write_text(
            json_text(
                {
                    "rows": comps.rows,
                    "base": comps.base,
                    "forward_passes": comps.forward_passes,
                    "seconds": comps.seconds,
                    **comps.config,
                }
            )
        )
        fig = component_bars(comps.rows)
        fig.savefig(out / "components.png", dpi=110, bbox_inches="tight")
        section.figure(out / "components.png", "Network components ranked by |ATE|, with 95% CIs")
        section.table(
            comps.rows[:20], caption=f"component ranking ({comps.config['intervention']} intervention)"
        )
    import matplotlib.pyplot as plt

    plt.close("all")
    report = Report("PdCR explanation", intro="Causal (ATE) explanation of a segmentation model for one RoI.")
    report.add(section)
    report.write(out / "report.html")
    return section


def in_window(model: SegmentationModel, inputs: ExplainInputs) -> tuple[ExplainInputs, tuple[slice, ...]]:
    """The inputs cut to the model's window around the RoI (unchanged for models without one)."""
    win = model_window(model, inputs.image, inputs.roi)
    mask = inputs.mask[win] if inputs.mask is not None else None
    affine = (
        None if inputs.affine is None else inputs.affine @ grid_map([1.0] * len(win), [w.start for w in win])
    )
    return ExplainInputs(
        inputs.image[(slice(None), *win)], mask, RoI(inputs.roi.mask[win], inputs.roi.description), affine
    ), win


def explain_to_folder(
    model: SegmentationModel,
    inputs: ExplainInputs,
    out: Path,
    *,
    data: str | None = None,
    bank: Path | None = None,
    save_bank: bool = False,
    outcome: str | None = None,
    intervention: str = "patch_bank",
    block: int = 8,
    coarse_block: int | None = None,
    estimator: str = "adaptive",
    seed: int = 0,
    batch_size: int = 32,
    components: str | None = "stages",
    component_intervention: str = "swap",
    title: str = "PdCR explanation",
    full_image: bool = False,
    rule: SequentialRule | None = None,
    empty_dice: float = 1.0,
) -> dict[str, Any]:
    """Explain one RoI end to end and write every output atomically into ``out``; return the summary.

    A model trained on patches is explained on its window around the RoI (its working
    input) unless ``full_image``: every forward pass then costs one pass, not one per tile.
    """
    outcome = outcome or ("dice_gt" if inputs.mask is not None else "dice_self")
    images, same = dataset_images(data, model, inputs.image)
    notes = []
    full_shape = tuple(inputs.image.shape[1:])
    window = tuple(slice(0, n) for n in full_shape)
    if not full_image:
        inputs, window = in_window(model, inputs)
        if tuple(inputs.image.shape[1:]) != full_shape:
            notes.append(
                f"Explained on the model's {tuple(inputs.image.shape[1:])} window around the RoI "
                f"(rows/cols {[(w.start, w.stop) for w in window]} of {full_shape})."
            )
    patch = block if estimator == "reference" else (coarse_block or 4 * block)
    iv: RegionIntervention = make_intervention(
        intervention, dataset=images, exclude=same, bank=bank, patch_size=patch, seed=seed
    )
    with atomic_output_dir(out) as stage:
        out_fn = make_outcome(outcome, model, inputs.image, inputs.roi, inputs.mask, empty_dice)
        exp = explain_regions(
            model,
            inputs.image,
            inputs.roi,
            outcome=out_fn,
            ground_truth=inputs.mask,
            intervention=iv,
            block=block,
            coarse_block=coarse_block,
            estimator=estimator,
            seed=seed,
            batch_size=batch_size,
            rule=rule,
        )
        comps = None
        if components and components != "none":
            comp_inputs, _ = in_window(model, inputs)
            if comp_inputs.image.shape != inputs.image.shape:
                notes.append(
                    f"Components were explained on the model's {tuple(comp_inputs.image.shape[1:])} window."
                )
            pool = [im for i, im in enumerate(images) if i != same]
            comp_iv = component_intervention if pool or component_intervention == "zero" else "zero"
            if comp_iv != component_intervention:
                notes.append("No dataset was given (--data), so components were intervened on with zero.")
            spec = (
                components
                if components in ("blocks", "skips", "stages", "channels")
                else components.split(",")
            )
            comp_out = (
                out_fn
                if comp_inputs.image.shape == inputs.image.shape
                else make_outcome(
                    outcome, model, comp_inputs.image, comp_inputs.roi, comp_inputs.mask, empty_dice
                )
            )
            comps = explain_components(
                model,
                comp_inputs.image,
                comp_inputs.roi,
                components=spec,
                outcome=comp_out,
                ground_truth=comp_inputs.mask,
                intervention=comp_iv,
                dataset=pool,
                estimator=estimator,
                seed=seed,
                batch_size=batch_size,
                rule=rule,
            )
        if isinstance(iv, PatchBank) and save_bank:
            iv.save(stage / "patch_bank.safetensors")
        exp.config["window"] = [[w.start, w.stop] for w in window]
        exp.config["empty_dice"] = empty_dice
        exp.config["activation"], exp.config["threshold"] = model.spec.activation, model.spec.threshold
        write_outputs(stage, inputs.image, exp, comps, title, notes, inputs.affine)
        summary = exp.summary()
    return summary


def explain_roi_list(
    model: SegmentationModel, jobs: list[tuple[str, ExplainInputs]], out: Path, **options: Any
) -> list[dict[str, Any]]:
    """Explain every (name, inputs) into ``out/<name>/`` and index them in ``out/rois.csv`` and ``out/rois.json``.

    The training split (patch bank, activation swaps) is read once for all RoIs.
    """
    import csv
    import io

    from triptych.core.io import write_text
    from triptych.core.progress import progress

    names = [n for n, _ in jobs]
    if len(set(names)) != len(names):
        raise InputError("--roi-file lists the same RoI twice; keep one line per RoI")
    rows = []
    for name, inputs in progress(jobs, "RoIs", unit="RoI"):
        summary = explain_to_folder(model, inputs, Path(out) / name, title=f"PdCR: {name}", **options)
        rows.append({"name": name, "roi": inputs.roi.description, **{k: summary[k] for k in INDEX_FIELDS}})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(Path(out) / "rois.csv", buffer.getvalue())
    write_text(Path(out) / "rois.json", json.dumps(rows, indent=2, default=float) + "\n")
    return rows


INDEX_FIELDS = (
    "base_outcome",
    "significant_negative",
    "significant_positive",
    "not_significant",
    "zero_blocks",
    "negative_blocks",
    "positive_blocks",
    "forward_passes",
    "seconds",
)
