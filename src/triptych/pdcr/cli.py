"""``triptych pdcr``: train segmentation models and explain them causally (ATE maps and component rankings).

A thin layer over :mod:`triptych.pdcr`; heavy imports happen inside commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from triptych.core.batch_options import RayAddressOpt, ThreadsPerWorkerOpt, WorkersOpt
from triptych.core.trainer_flags import MaxTimeOpt, TrainerFlags, trainer_options
from triptych.pdcr.registry import ESTIMATORS, INTERVENTIONS, OUTCOMES  # light: names and help only

app = typer.Typer(help="PdCR: causal (ATE) explanations of segmentation models.", no_args_is_help=True)


def _floats(text: str | None, name: str) -> tuple[float, ...] | None:
    from triptych.core.errors import InputError

    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"{name} {text!r}: give comma-separated numbers, one per channel") from None


def _ints(text: str, name: str) -> tuple[int, ...]:
    from triptych.core.errors import InputError

    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"{name} {text!r}: give comma-separated integers") from None


@app.command()
@trainer_options()
def train(
    data: Annotated[
        str, typer.Option(help="DRIVE root, a folder with images/ and masks/, or 'synthetic'.")
    ] = "synthetic",
    out: Annotated[
        Path, typer.Option(help="Run folder (checkpoints/best.safetensors, metrics.json).")
    ] = Path("runs/pdcr"),
    arch: Annotated[
        str, typer.Option(help="unet, attention_unet, unetpp, segresnet or swin_unetr.")
    ] = "unet",
    patch: Annotated[int, typer.Option(help="Training patch side at the working resolution.")] = 128,
    image_size: Annotated[
        int | None, typer.Option(help="Resize images to this side first (default: native).")
    ] = None,
    features: Annotated[str, typer.Option(help="Channels per level, comma-separated.")] = "16,32,64,128,256",
    res_units: Annotated[int, typer.Option(help="Residual units per U-Net level (unet only).")] = 2,
    batch_size: Annotated[int, typer.Option(help="Patches per step.")] = 8,
    patches_per_epoch: Annotated[int, typer.Option(help="Random patches per epoch.")] = 160,
    epochs: Annotated[int, typer.Option(help="Maximum epochs (see also --max-time).")] = 200,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 2e-3,
    val_fraction: Annotated[
        float, typer.Option(help="Share of training images held out for validation.")
    ] = 0.2,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    spatial_dims: Annotated[int, typer.Option(help="2 for images, 3 for volumes.")] = 2,
    classes: Annotated[
        int,
        typer.Option(
            help="1: binary masks, one sigmoid channel (Dice + BCE); K ≥ 2: label maps 0..K−1, "
            "K softmax channels (Dice + cross-entropy)."
        ),
    ] = 1,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's choice).")] = None,
    max_cpu_time: Annotated[
        float | None,
        typer.Option(
            help="Stop after this many CPU minutes of this process (all threads): 30 = 15 min on 2 cores."
        ),
    ] = None,
    flags: TrainerFlags = TrainerFlags(),  # the scale-out options, from @trainer_options
) -> None:
    """Train a MONAI segmentation network (Dice + BCE, or Dice + CE for --classes K) on random patches; keep the
    best validation checkpoint.

    Example: triptych pdcr train --data ../shared/data/drive --arch unet --out runs/drive_unet --max-time 00:00:15:00

    Multi-class (label-map masks 0..2): triptych pdcr train --data DATA --classes 3 --out runs/three_class
    """
    import torch

    from triptych.pdcr.train import train_run

    if threads:
        torch.set_num_threads(threads)
    # trains in OUT.partial/, replaces OUT when done
    result = train_run(
        data,
        out,
        resume=flags.resume,
        arch=arch,
        patch=patch,
        image_size=image_size,
        features=_ints(features, "--features"),
        batch_size=batch_size,
        patches_per_epoch=patches_per_epoch,
        epochs=epochs,
        lr=lr,
        val_fraction=val_fraction,
        seed=seed,
        flags=flags,
        spatial_dims=spatial_dims,
        res_units=res_units,
        max_cpu_minutes=max_cpu_time,
        classes=classes,
    )
    checkpoint = result.checkpoint
    typer.echo(f"checkpoint: {checkpoint}")
    typer.echo(f"validation Dice: {result.val_dice:.4f}")
    if result.test_dice is not None:
        typer.echo(f"test Dice: {result.test_dice:.4f} ({result.metrics['test_images']} images)")
    typer.echo(
        f"training: {result.metrics['train_wall_seconds']:.0f} s wall, "
        f"{result.metrics['train_cpu_seconds'] / 60:.1f} CPU-min; metrics: {out / 'metrics.json'}"
    )


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="Model checkpoint from `triptych pdcr train`.")],
    data: Annotated[str, typer.Option(help="DRIVE root, images/masks folder or 'synthetic'.")] = "synthetic",
    split: Annotated[str, typer.Option(help="Which split to score (test, training).")] = "test",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
) -> None:
    """Dice of a trained model on a split (inside the field of view when the data has one).

    Example: triptych pdcr evaluate --checkpoint runs/drive/checkpoints/best.safetensors --data ../shared/data/drive
    """
    import numpy as np
    import torch

    from triptych.pdcr.data import load_dataset, resize_sample
    from triptych.pdcr.models import load_model
    from triptych.pdcr.train import evaluate as score

    if threads:
        torch.set_num_threads(threads)
    model = load_model(checkpoint)
    samples = [
        s
        for s in load_dataset(data, split, spatial_dims=model.spatial_dims, classes=model.classes)
        if s.mask is not None
    ]
    if model.spec.input_size:
        samples = [resize_sample(s, model.spec.input_size) for s in samples]
    scores = score(model, samples)
    typer.echo(f"{split} Dice (FOV): {np.mean(scores):.4f} ± {np.std(scores):.4f} over {len(scores)} images")


@app.command()
def explain(
    image: Annotated[
        Path,
        typer.Option(
            help="Image to explain (PNG/JPEG/TIFF/GIF, NIfTI/DICOM, .npy); with "
            "--roi-file also a folder of images named by the file's stems."
        ),
    ],
    out: Annotated[
        Path, typer.Option(help="Output folder (with --roi-file: one subfolder per RoI and rois.csv).")
    ],
    checkpoint: Annotated[
        Path | None, typer.Option(help="Model checkpoint from `triptych pdcr train` (or give --model).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Your own network instead of --checkpoint: an entry point 'package.module:factory' "
            "(or 'file.py:factory') with --weights, or a TorchScript file; needs --activation."
        ),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="--model entry point: its state dict (.pt, .pth or .safetensors).")
    ] = None,
    preprocess: Annotated[
        str | None,
        typer.Option(
            help="--model: 'module:function' applied to each batch (B, C, *S) of [0, 1] images "
            "before the network (after --mean/--std)."
        ),
    ] = None,
    mean: Annotated[
        str | None, typer.Option(help="--model: per-channel normalisation mean, e.g. 0.485,0.456,0.406.")
    ] = None,
    std: Annotated[
        str | None, typer.Option(help="--model: per-channel normalisation std, e.g. 0.229,0.224,0.225.")
    ] = None,
    spatial_dims: Annotated[int, typer.Option(help="--model: 2 for images, 3 for volumes.")] = 2,
    in_channels: Annotated[
        int | None, typer.Option(help="--model: input channels (default: its first convolution's).")
    ] = None,
    roi: Annotated[
        str | None, typer.Option(help="RoI box x,y,w,h (or x,y for a pixel; 6 values in 3D).")
    ] = None,
    roi_mask: Annotated[
        Path | None, typer.Option(help="RoI as a binary mask file (instead of --roi).")
    ] = None,
    roi_file: Annotated[
        Path | None,
        typer.Option(
            help="The authors' coordinate file: one 'stem,row,col' (or "
            "'row,col') per line, the RoI's top-left corner, row first; "
            "every listed RoI is explained."
        ),
    ] = None,
    roi_size: Annotated[
        int | None,
        typer.Option(
            help="--roi-file: RoI side in pixels (default: from the file name, e.g. coords_block8_roi32.txt)."
        ),
    ] = None,
    mask: Annotated[
        Path | None,
        typer.Option(
            help="Ground-truth mask of the image (enables --outcome dice_gt); a folder with --roi-file."
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Dataset for the patch bank and activation swaps: DRIVE root, "
            "images/masks folder or 'synthetic'."
        ),
    ] = None,
    bank: Annotated[
        Path | None, typer.Option(help="A saved patch bank (.safetensors) instead of --data.")
    ] = None,
    save_bank: Annotated[bool, typer.Option(help="Also write the patch bank to OUT for reuse.")] = False,
    outcome: Annotated[
        str | None, typer.Option(help=f"{OUTCOMES.describe()}. Default: dice_gt with --mask, else dice_self.")
    ] = None,
    intervention: Annotated[str, typer.Option(help=INTERVENTIONS.describe())] = "patch_bank",
    block: Annotated[
        int | None,
        typer.Option(
            help="Finest block side in pixels (default 8, as the paper at 256², "
            "or the --roi-file name's block)."
        ),
    ] = None,
    coarse_block: Annotated[
        int | None, typer.Option(help="Adaptive: first block side (default 4·block).")
    ] = None,
    estimator: Annotated[str, typer.Option(help=ESTIMATORS.describe())] = "adaptive",
    components: Annotated[
        str, typer.Option(help="stages, blocks, skips, channels, none, or comma-separated names.")
    ] = "stages",
    component_intervention: Annotated[
        str, typer.Option(help="swap (another input's activation), mean or zero.")
    ] = "swap",
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same result).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Perturbed images per forward batch.")] = 32,
    full_image: Annotated[
        bool,
        typer.Option(
            help="Patch-trained models: explain the whole image (tiled), not "
            "the model's window around the RoI."
        ),
    ] = False,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    device: Annotated[
        str,
        typer.Option(
            help="Where the forward passes run: cpu, cuda, mps or auto (the same "
            "seed gives the same draws on any device)."
        ),
    ] = "cpu",
    activation: Annotated[
        str | None,
        typer.Option(
            help="Output activation: sigmoid, softmax or none (the raw "
            "output is the score). Default: the checkpoint's."
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Prediction = score > threshold (default: the "
            "checkpoint's, 0.5). A network predicting raw output > 0.5, "
            "as the authors' demo: --activation none --threshold 0.5."
        ),
    ] = None,
    empty_dice: Annotated[
        float,
        typer.Option(
            help="Dice of an empty prediction and empty reference in the RoI: 1 "
            "(agreement, default) or 0 (the paper's code)."
        ),
    ] = 1.0,
    target_class: Annotated[
        int | None,
        typer.Option(
            help="Multi-class models: the class (output channel) whose segmentation of the RoI is "
            "explained; --mask is then a label map. Default: the checkpoint's (1, the first "
            "foreground class, for `train --classes K`)."
        ),
    ] = None,
) -> None:
    """Explain why the model segments a RoI as it does: ATE map of input blocks and ranking of components.

    Example: triptych pdcr explain --checkpoint runs/drive/checkpoints/best.safetensors --image im.tif --mask gt.gif --roi 200,200,32,32 --data ../shared/data/drive --out expl

    The authors' settings: --roi-file coords_block8_roi32.txt --estimator reference --empty-dice 0
    (and --activation none --threshold 0.5 for a network without a sigmoid).

    A multi-class model: --target-class 2 --outcome dice_gt (class 2's Dice) or --outcome mean_dice.

    Your own network: --model mypkg.nets:build_unet --weights unet.pt --activation sigmoid
    [--mean 0.5 --std 0.25 | --preprocess mypkg.nets:normalise], or --model scripted.pt (TorchScript).
    """
    import torch

    from triptych.core.device import choose_device
    from triptych.core.errors import InputError
    from triptych.pdcr.explain import explain_roi_list, explain_to_folder, load_inputs, roi_file_jobs
    from triptych.pdcr.models import load_model, with_output
    from triptych.pdcr.roi import read_roi_file

    if threads:
        torch.set_num_threads(threads)
    if (checkpoint is None) == (model is None):
        raise InputError("give exactly one of --checkpoint FILE and --model ENTRY_POINT|TORCHSCRIPT")
    if checkpoint is not None:
        if any(v is not None for v in (weights, preprocess, mean, std, in_channels)):
            raise InputError(
                "--weights, --preprocess, --mean, --std and --in-channels go with --model; a "
                "--checkpoint holds its own"
            )
        net = with_output(load_model(checkpoint), activation, threshold, target_class)
    else:
        from triptych.pdcr.external import load_torch_model

        if activation is None:
            raise InputError(
                "--model needs --activation sigmoid, softmax or none: a network's output is stated, never guessed"
            )
        net = load_torch_model(
            model,
            activation=activation,
            weights=weights,
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            threshold=0.5 if threshold is None else threshold,
            target_class=target_class,
            preprocess=preprocess,
            mean=_floats(mean, "--mean"),
            std=_floats(std, "--std"),
        )
    model = net.to(choose_device(device))
    options = dict(
        data=data,
        bank=bank,
        save_bank=save_bank,
        outcome=outcome,
        intervention=intervention,
        coarse_block=coarse_block,
        estimator=estimator,
        seed=seed,
        batch_size=batch_size,
        components=components,
        component_intervention=component_intervention,
        full_image=full_image,
        empty_dice=empty_dice,
    )
    if roi_file is not None:
        if roi is not None or roi_mask is not None:
            raise InputError("give exactly one of --roi x,y,w,h, --roi-mask FILE and --roi-file FILE")
        coords = read_roi_file(roi_file, roi_size, block)
        jobs = roi_file_jobs(model, image, mask, coords)
        rows = explain_roi_list(model, jobs, out, block=coords.block or 8, **options)
        for r in rows:
            typer.echo(
                f"{r['name']}: base {r['base_outcome']:.2f}; significant -{r['significant_negative']} "
                f"+{r['significant_positive']}; {r['forward_passes']} passes in {r['seconds']:.1f} s"
            )
        typer.echo(f"outputs: {out}/<roi>/ for {len(rows)} RoIs; index {out}/rois.csv")
        return
    inputs = load_inputs(model, image, mask, roi, roi_mask)
    summary = explain_to_folder(model, inputs, out, block=block or 8, title=f"PdCR: {image.name}", **options)
    typer.echo(
        f"base outcome {summary['outcome']} = {summary['base_outcome']:.2f}; blocks significantly supporting "
        f"(red) {summary['significant_negative']}, hurting (blue) {summary['significant_positive']}, not "
        f"significant {summary['not_significant']}, zero {summary['called_zero']}; "
        f"{summary['forward_passes']} forward passes in {summary['seconds']:.1f} s"
    )
    typer.echo(f"outputs: {out}/ (ate.npy, se.npy, summary.json, overlay.png, report.html)")


@app.command()
def demo(out: Annotated[Path, typer.Option(help="Output folder.")] = Path("demo_out/pdcr")) -> None:
    """Train a small U-Net on MONAI's synthetic images and explain one RoI (also run by `triptych demo`).

    Example: triptych pdcr demo --out demo_out/pdcr
    """
    from triptych.pdcr.demo import run_demo

    run_demo(out)
    typer.echo(f"Report: {out / 'report.html'}")


@app.command("components")
def list_components_cmd(
    checkpoint: Annotated[Path, typer.Option(help="Model checkpoint from `triptych pdcr train`.")],
    granularity: Annotated[str, typer.Option(help="blocks, skips, stages or channels.")] = "stages",
) -> None:
    """List the candidate network components of a model (names usable in `explain --components`).

    Example: triptych pdcr components --checkpoint runs/drive/checkpoints/best.safetensors --granularity stages
    """
    import torch

    from triptych.pdcr.components import list_components
    from triptych.pdcr.models import load_model

    model = load_model(checkpoint)
    side = model.spec.patch_size or model.spec.input_size or (64,) * model.spatial_dims
    probe = torch.zeros((model.spec.in_channels, *side))
    for comp in list_components(model, probe, granularity):
        typer.echo(f"{comp.name}\t{comp.kind}")


# ---------------------------------------------------------------- part 2: evaluation (benchmark, compare)


@app.command()
def benchmark(
    data: Annotated[
        str,
        typer.Option(
            help="drive:PATH (DRIVE layout) or folder:PATH (training/ and test/ with images/ and masks/)."
        ),
    ],
    out: Annotated[
        Path, typer.Option(help="Output folder (results.json, results.md, details.json, maps_*.npz).")
    ],
    archs: Annotated[
        str, typer.Option(help="Comma-separated architectures.")
    ] = "unet,attention_unet,segresnet",
    rois: Annotated[
        int, typer.Option(help="RoIs sampled on test-image foreground (the same for every model).")
    ] = 20,
    models_dir: Annotated[
        Path,
        typer.Option(
            help="Reuse <dir>/pdcr_<data>_<arch>/checkpoints/best.safetensors; train there when missing."
        ),
    ] = Path("runs"),
    train_time: MaxTimeOpt = "00:00:15:00",
    crop: Annotated[
        int, typer.Option(help="Side of the native-resolution crop explained around each RoI.")
    ] = 64,
    roi_size: Annotated[int, typer.Option(help="Side of each RoI box.")] = 12,
    block: Annotated[int, typer.Option(help="PdCR's finest block = the faithfulness unit.")] = 8,
    max_draws: Annotated[int, typer.Option(help="Cap on PdCR's sequential draws per block.")] = 20,
    steps: Annotated[int, typer.Option(help="Points per deletion/insertion curve (+1).")] = 8,
    rise_masks: Annotated[int, typer.Option(help="RISE masks per explanation.")] = 200,
    misure_steps: Annotated[int, typer.Option(help="MiSuRe optimisation steps.")] = 40,
    workers: Annotated[int, typer.Option(help="Architectures run at once, one process each.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed for RoIs, patch banks and random draws.")] = 0,
) -> None:
    """Faithfulness of PdCR against Seg-Grad-CAM, occlusion, RISE, IG and MiSuRe (deletion/insertion AUC).

    Example: triptych pdcr benchmark --data drive:../shared/data/drive --archs unet,attention_unet,segresnet --rois 20 --out bench_out/pdcr
    """
    from triptych.pdcr.benchmark import BenchConfig, run_benchmark

    config = BenchConfig(
        crop=crop,
        roi=roi_size,
        block=block,
        coarse_block=2 * block,
        max_draws=max_draws,
        seed=seed,
        steps=steps,
        rise_masks=rise_masks,
        misure_steps=misure_steps,
    )
    names = [a.strip() for a in archs.split(",") if a.strip()]
    results = run_benchmark(
        data, names, rois, out, models_dir=models_dir, train_time=train_time, config=config, workers=workers
    )
    for arch, entry in results["models"].items():
        pd = entry["methods"]["pdcr"]["deletion_auc"]
        typer.echo(
            f"{arch}: test Dice {entry['test_dice']:.3f}; PdCR deletion AUC "
            + ", ".join(f"{op} {v:.3f}" for op, v in pd.items())
        )
    typer.echo(f"results: {out}/results.json, {out}/results.md")


@app.command()
def compare(
    out: Annotated[Path, typer.Option(help="Output folder (report.html, results.json, results.md).")],
    archs: Annotated[
        str, typer.Option(help="Comma-separated architectures (models) to compare.")
    ] = "unet,attention_unet,segresnet",
    maps: Annotated[
        Path | None, typer.Option(help="Reuse the PdCR maps of a `triptych pdcr benchmark` output folder.")
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="Without --maps: drive:PATH or folder:PATH to explain.")
    ] = None,
    rois: Annotated[int, typer.Option(help="Without --maps: RoIs sampled on test-image foreground.")] = 20,
    models_dir: Annotated[
        Path, typer.Option(help="Without --maps: <dir>/pdcr_<data>_<arch>/checkpoints/best.safetensors.")
    ] = Path("runs"),
    distance: Annotated[float, typer.Option(help="d of 'share of |ATE| within d px of the RoI'.")] = 16.0,
    quantile: Annotated[float, typer.Option(help="Share of |ATE| that the support radius holds.")] = 0.9,
    outcome: Annotated[str, typer.Option(help=f"Without --maps: {OUTCOMES.describe()}.")] = "dice_gt",
    seed: Annotated[int, typer.Option(help="Seed for RoIs and draws (without --maps).")] = 0,
    crop: Annotated[
        int, typer.Option(help="Without --maps: side of the crop explained around each RoI.")
    ] = 64,
    roi_size: Annotated[int, typer.Option(help="Without --maps: side of each RoI box.")] = 12,
    block: Annotated[int, typer.Option(help="Without --maps: PdCR's finest block.")] = 8,
    max_draws: Annotated[int, typer.Option(help="Without --maps: cap on PdCR's draws per block.")] = 20,
    empty_dice: Annotated[
        float, typer.Option(help="Dice of two empty sets: 1 (default) or 0 (the paper's code).")
    ] = 1.0,
) -> None:
    """Compare the perceptual strategies of several models: locality, sign and concentration of their ATEs, with tests.

    Example: triptych pdcr compare --maps bench_out/pdcr --archs unet,attention_unet,segresnet --out bench_out/pdcr_compare
    """
    from triptych.core.errors import InputError
    from triptych.pdcr.compare import compute_maps, load_maps, run_compare

    names = [a.strip() for a in archs.split(",") if a.strip()]
    if maps is not None:
        all_maps, source = load_maps(maps, names), f"maps of {maps}"
    elif data is not None:
        from triptych.pdcr.benchmark import BenchConfig

        config = BenchConfig(
            seed=seed, crop=crop, roi=roi_size, block=block, coarse_block=2 * block, max_draws=max_draws
        )
        all_maps = compute_maps(data, names, rois, models_dir, config, outcome=outcome, empty_dice=empty_dice)
        source = f"{data}, outcome {outcome}"
    else:
        raise InputError("give --maps (a benchmark output folder) or --data drive:PATH|folder:PATH")
    results = run_compare(all_maps, out, d=distance, q=quantile, source=source)
    for t in results["between_models"]:
        typer.echo(f"{t['statistic']}: {t['test']} p = {t['p']:.3g}")
    typer.echo(f"report: {out}/report.html")


# ---------------------------------------------------------------- part 3: audit (a whole dataset, on Ray)


@app.command()
def audit(
    checkpoint: Annotated[Path, typer.Option(help="Model checkpoint from `triptych pdcr train`.")],
    data: Annotated[
        str,
        typer.Option(
            help="drive:PATH (its test split), folder:PATH (test/ or images/+masks/), "
            "or a CSV with columns image[,mask]."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="Output folder (results.parquet/.csv, maps/*.npz, report.html, "
            "shards/); rerun with the same folder to resume."
        ),
    ],
    rois: Annotated[
        str,
        typer.Option(
            help="gt / pred: the largest connected components of the ground truth / "
            "prediction; sample: seeded boxes on the foreground; or a CSV of "
            "boxes image,x,y,w,h."
        ),
    ] = "gt",
    rois_per_image: Annotated[
        int, typer.Option(help="Components (largest first) or sampled boxes per image.")
    ] = 10,
    roi_size: Annotated[int, typer.Option(help="Side of a sampled box (--rois sample).")] = 12,
    outcome: Annotated[
        str | None, typer.Option(help="dice_gt (default with a ground truth), dice_self or soft_mass.")
    ] = None,
    block: Annotated[int, typer.Option(help="Finest block side in pixels.")] = 8,
    coarse_block: Annotated[
        int | None, typer.Option(help="Adaptive: first block side (default 2·block).")
    ] = None,
    estimator: Annotated[
        str, typer.Option(help="adaptive (default) or reference (the paper's rule).")
    ] = "adaptive",
    max_draws: Annotated[int, typer.Option(help="Cap on the draws per block.")] = 20,
    window: Annotated[
        int | None,
        typer.Option(
            help="Side of the window explained around each RoI (default: the "
            "model's training patch, or the whole image)."
        ),
    ] = None,
    multi_roi: Annotated[
        bool,
        typer.Option(
            "--multi-roi/--one-roi-at-a-time",
            help="Explain all RoIs of an image together (shared draws, tile-by-tile inference); "
            "--one-roi-at-a-time: each RoI alone with --estimator.",
        ),
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed for sampled RoIs, patch banks and draws.")] = 0,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
    threads_per_worker: ThreadsPerWorkerOpt = 1,
) -> None:
    """Explain every RoI of a dataset: one results table, per-RoI ATE/SE maps and a dataset report; resumable.

    Example: triptych pdcr audit --checkpoint runs/drive/checkpoints/best.safetensors --data drive:../shared/data/drive --rois sample --rois-per-image 10 --out audit_out --workers 2
    """
    from triptych.pdcr.audit import AuditConfig
    from triptych.pdcr.audit import audit as run_audit

    config = AuditConfig(
        rois=rois,
        rois_per_image=rois_per_image,
        roi_size=roi_size,
        outcome=outcome,
        block=block,
        coarse_block=coarse_block,
        estimator=estimator,
        max_draws=max_draws,
        window=window,
        multi_roi=multi_roi,
        seed=seed,
    )
    result = run_audit(
        checkpoint,
        data,
        out,
        config,
        workers=workers,
        ray_address=ray_address,
        threads_per_worker=threads_per_worker,
    )
    t = result.table
    typer.echo(
        f"{len(t)} RoIs on {result.images} images ({result.reused} images already done); "
        f"{int(t['forward_passes'].sum())} forward passes; median support radius "
        f"{t['support_radius'].median():.1f} px"
    )
    typer.echo(f"results: {out}/results.parquet, {out}/results.csv, {out}/report.html")
