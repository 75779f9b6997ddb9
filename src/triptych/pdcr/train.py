"""Training MONAI segmentation networks with Lightning: Dice + BCE (one channel) or Dice + CE.

Binary masks train one sigmoid channel (Dice + BCE); label maps of K > 1 classes train K
softmax channels (Dice + cross-entropy), never softmax over one channel (the reference's
identically-zero loss). Multi-class scores are the mean Dice over the foreground classes.

Training uses random patches at the working resolution and validates whole held-out
images with sliding-window inference, keeping the checkpoint with the best validation
Dice (inside the field of view when the data has one). The test Dice is measured on a
separate split, never on training data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from triptych.core.errors import InputError
from triptych.core.io import write_text
from triptych.core.results import json_text
from triptych.core.training import TrainerFlags, best_checkpoint, fit, make_trainer
from triptych.pdcr.data import RandomPatches, Sample, WholeImages, load_dataset, resize_sample
from triptych.pdcr.models import (
    MODEL_KIND,
    ModelSpec,
    SegmentationModel,
    build_network,
    in_eval_mode,
    load_model,
    spec_from_dict,
)
from triptych.pdcr.roi import dice


class SegmentationModule(L.LightningModule):
    """Lightning wrapper: ``model`` is a :class:`SegmentationModel`; batches (B, C, *patch)."""

    def __init__(self, spec: dict[str, Any], lr: float = 2e-3, kind: str = MODEL_KIND) -> None:
        super().__init__()
        self.save_hyperparameters()
        from monai.losses import DiceCELoss

        s = spec_from_dict(spec)
        self.model = SegmentationModel(build_network(s), s)
        one = s.out_channels == 1
        # one channel: Dice + BCE on sigmoid; several: Dice + CE on softmax (never softmax on one channel)
        self.loss = DiceCELoss(sigmoid=one, softmax=not one, to_onehot_y=not one)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        image, mask = batch
        loss = self.loss(self.model(image), mask)
        self.log("train_loss", loss, prog_bar=True, batch_size=image.shape[0])
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, ...], _: int) -> None:
        image, mask, fov = batch
        self.log(
            "val_dice",
            float(segmentation_dice(self.model, image, mask[:, 0], fov[:, 0] > 0).mean()),
            prog_bar=True,
            batch_size=image.shape[0],
        )

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=1e-4)
        return opt


class CpuBudget(L.Callback):
    """Stop training once this process has used ``minutes`` of CPU time (all threads together).

    On shared machines wall time says little; "15 minutes on 2 cores" is 30 core-minutes.
    """

    def __init__(self, minutes: float) -> None:
        self.budget = minutes * 60.0
        self.start = time.process_time()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if time.process_time() - self.start > self.budget:
            trainer.should_stop = True


def region_dice(pred: torch.Tensor, truth: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Dice(ŷ ∧ FOV, y ∧ FOV) per image for boolean (B, *S) tensors -> (B,)."""
    b = pred.shape[0]
    return dice((pred & region).reshape(b, -1), (truth & region).reshape(b, -1))


def segmentation_dice(
    model: SegmentationModel, image: torch.Tensor, truth: torch.Tensor, region: torch.Tensor
) -> torch.Tensor:
    """Dice per image inside ``region``: of the target class for a binary model, the mean over the foreground
    classes 1..K−1 for a K-class softmax model (``truth`` a label map then); (B,)."""
    prob = model.probabilities(image)
    if model.classes < 2:
        return region_dice(model.binarise(prob), truth > 0, region)
    labels, truth = model.labels(prob), truth.round().long()
    return torch.stack([region_dice(labels == c, truth == c, region) for c in range(1, model.classes)]).mean(
        0
    )


@dataclass
class TrainResult:
    checkpoint: Path
    test_dice: float | None
    val_dice: float | None
    seconds: float
    metrics: dict[str, Any]


@in_eval_mode
def evaluate(model: SegmentationModel, samples: list[Sample]) -> list[float]:
    """Dice inside the FOV (whole image when none) per sample, at the model's working resolution (mean over
    the foreground classes for a multi-class model)."""
    scores = []
    with torch.no_grad():
        for s in samples:
            fov = s.fov if s.fov is not None else np.ones(s.mask.shape, dtype=bool)
            truth, region = torch.from_numpy(s.mask)[None], torch.from_numpy(fov)[None]
            scores.append(float(segmentation_dice(model, s.image[None], truth, region)[0]))
    return scores


def train_model(
    data: str,
    out: Path,
    *,
    arch: str = "unet",
    patch: int = 128,
    image_size: int | None = None,
    features: tuple[int, ...] = (16, 32, 64, 128, 256),
    batch_size: int = 8,
    patches_per_epoch: int = 160,
    epochs: int = 200,
    lr: float = 2e-3,
    val_fraction: float = 0.2,
    seed: int = 0,
    flags: TrainerFlags | None = None,
    spatial_dims: int = 2,
    progress: bool = True,
    res_units: int = 2,
    max_cpu_minutes: float | None = None,
    evaluate_test: bool = True,
    classes: int = 1,
) -> TrainResult:
    """Train ``arch`` on ``data`` (DRIVE root, images/masks folder, or 'synthetic'); evaluate on its test split.

    ``classes`` = 1: binary masks, one sigmoid channel (Dice + BCE). ``classes`` = K ≥ 2: masks are label
    maps 0..K−1 and the network has K softmax channels (Dice + CE); the target class defaults to 1.
    """
    if classes < 1:
        raise InputError(f"--classes {classes}: give 1 (binary masks) or the number of classes K ≥ 2")
    from triptych.core.seed import seed_everything

    seed_everything(seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    train_all = load_dataset(data, "training", spatial_dims=spatial_dims, seed=seed, classes=classes)
    if any(s.mask is None for s in train_all):
        raise InputError(f"--data {data}: every training image needs a ground-truth mask")
    if image_size:
        train_all = [resize_sample(s, (image_size,) * spatial_dims) for s in train_all]
    n_val = max(1, int(round(len(train_all) * val_fraction)))
    if len(train_all) - n_val < 1:
        raise InputError(f"--data {data}: need at least 2 training images to hold out validation")
    order = np.random.default_rng(seed).permutation(len(train_all))
    val = [train_all[i] for i in order[:n_val]]
    train = [train_all[i] for i in order[n_val:]]
    shape = train[0].image.shape[1:]
    patch_size = tuple(min(patch, d) for d in shape)
    spec = ModelSpec(
        arch=arch,
        spatial_dims=spatial_dims,
        in_channels=int(train[0].image.shape[0]),
        out_channels=classes,
        activation="softmax" if classes > 1 else "sigmoid",
        target_class=1 if classes > 1 else 0,  # the first foreground class, not the background
        features=features,
        patch_size=patch_size,
        input_size=(image_size,) * spatial_dims if image_size else None,
        extra={"num_res_units": res_units} if arch == "unet" else {},
    )
    module = SegmentationModule(spec.to_dict(), lr=lr)
    trainer = make_trainer(
        flags,
        max_epochs=epochs,
        default_root_dir=out,
        monitor="val_dice",
        mode="max",
        enable_progress_bar=progress,
        log_every_n_steps=5,
        num_sanity_val_steps=0,
        callbacks=[CpuBudget(max_cpu_minutes)] if max_cpu_minutes else None,
    )
    fit(
        trainer,
        module,
        DataLoader(
            RandomPatches(train, patch_size, patches_per_epoch, seed), batch_size=batch_size, shuffle=False
        ),
        DataLoader(WholeImages(val), batch_size=1),
        resume=flags.resume if flags else None,
    )
    best = best_checkpoint(trainer)
    if best is None or not best.is_file():
        raise InputError(f"training wrote no checkpoint in {out}; give more --epochs or --max-time")
    train_seconds, train_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    model = load_model(best)
    val_scores = evaluate(model, val)
    test: list[Sample] = []
    if evaluate_test:
        try:
            test = [
                s
                for s in load_dataset(data, "test", spatial_dims=spatial_dims, seed=seed, classes=classes)
                if s.mask is not None
            ]
        except InputError:
            test = []
    if image_size:
        test = [resize_sample(s, (image_size,) * spatial_dims) for s in test]
    test_scores = evaluate(model, test) if test else []
    metrics = {
        "arch": arch,
        "data": str(data),
        "classes": classes,
        "checkpoint": str(best),
        "epochs_run": trainer.current_epoch,
        "patch": list(patch_size),
        "resolution": list(shape),
        "train_images": len(train),
        "val_images": len(val),
        "val_dice_fov": float(np.mean(val_scores)),
        "test_images": len(test),
        "test_dice_fov": float(np.mean(test_scores)) if test_scores else None,
        "train_wall_seconds": train_seconds,
        "train_cpu_seconds": train_cpu,
        "steps": trainer.global_step,
        "torch_threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - start,
        "seed": seed,
    }
    write_text(Path(out) / "metrics.json", json_text(metrics))
    return TrainResult(best, metrics["test_dice_fov"], metrics["val_dice_fov"], metrics["seconds"], metrics)


def train_run(data: str, out: Path, *, resume: str | Path | None = None, **kwargs: Any) -> TrainResult:
    """:func:`train_model` into ``OUT.partial/``, moved to ``out`` only once training has finished.

    An interrupted run never leaves a half-trained model where a finished one is expected (the
    benchmark reuses any ``best.safetensors`` it finds); ``metrics.json`` names the final path.
    """
    from triptych.core.runs import final_path, training_run_dir

    with training_run_dir(out, resume) as run:
        result = train_model(data, run, **kwargs)
        result.checkpoint = final_path(
            result.checkpoint, run, out
        )  # where it will be, not where it was trained
        result.metrics["checkpoint"] = str(result.checkpoint)
        write_text(run / "metrics.json", json_text(result.metrics))
    return result
