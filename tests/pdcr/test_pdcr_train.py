"""Training on the embedded synthetic data, checkpoints, the data loaders, and the CLI's train/evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from triptych.core.checkpoint import CheckpointError, save_checkpoint
from triptych.core.errors import InputError
from triptych.pdcr.cli import app
from triptych.pdcr.data import RandomPatches, load_drive, load_folder, resize_sample, synthetic
from triptych.pdcr.models import load_model


def test_train_cli_on_synthetic_learns_and_checkpoints(tmp_path, invoke, write_png):
    out = tmp_path / "run"
    result = invoke(
        app,
        [
            "train",
            "--data",
            "synthetic",
            "--out",
            str(out),
            "--patch",
            "64",
            "--features",
            "8,16,32",
            "--epochs",
            "6",
            "--patches-per-epoch",
            "32",
            "--accelerator",
            "cpu",
            "--devices",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_images"] == 8 and metrics["train_images"] + metrics["val_images"] == 24
    assert metrics["test_dice_fov"] > 0.5  # blobs are easy; an untrained net scores far lower
    model = load_model(metrics["checkpoint"])
    assert (
        model.spec.emits == "logits"
        and model.spec.activation == "sigmoid"
        and model.spec.patch_size == (64, 64)
    )
    ev = invoke(app, ["evaluate", "--checkpoint", metrics["checkpoint"], "--data", "synthetic"])
    assert ev.exit_code == 0 and f"{metrics['test_dice_fov']:.4f}" in ev.output
    # a patch-trained model is explained on its 64² window around the RoI of a 96² image
    sample = synthetic(1, 96, seed=77)[0]
    write_png(tmp_path / "im.png", sample.image[0].numpy())
    write_png(tmp_path / "gt.png", sample.mask)
    ex = invoke(
        app,
        [
            "explain",
            "--checkpoint",
            metrics["checkpoint"],
            "--image",
            str(tmp_path / "im.png"),
            "--mask",
            str(tmp_path / "gt.png"),
            "--roi",
            "70,70,12,12",
            "--data",
            "synthetic",
            "--out",
            str(tmp_path / "expl"),
            "--components",
            "blocks",
            "--save-bank",
        ],
    )
    assert ex.exit_code == 0, ex.output
    summary = json.loads((tmp_path / "expl" / "summary.json").read_text())
    assert summary["window"] == [[32, 96], [32, 96]] and summary["outcome"] == "dice_gt"
    assert np.load(tmp_path / "expl" / "ate.npy").shape == (64, 64)
    assert json.loads((tmp_path / "expl" / "components.json").read_text())["rows"][0]["rank"] == 1
    assert (tmp_path / "expl" / "patch_bank.safetensors").is_file()
    # another system's checkpoint fails with one clear line
    save_checkpoint(tmp_path / "other.safetensors", {"state_dict": {}}, kind="matic.model")
    with pytest.raises(CheckpointError, match="not 'pdcr.segmentation'"):
        load_model(tmp_path / "other.safetensors")


def test_folder_loader_resize_and_patches(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((40, 30, 3)) * 255).astype(np.uint8)).save(
            tmp_path / "images" / f"a{i}.jpg"
        )
        mask = np.zeros((40, 30), dtype=np.uint8)
        mask[5:20, 5:15] = 255
        Image.fromarray(mask).save(tmp_path / "masks" / f"a{i}.png")
    samples = load_folder(tmp_path)
    assert [s.name for s in samples] == ["a0", "a1"] and samples[0].image.shape == (3, 40, 30)
    small = resize_sample(samples[0], (20, 15))
    assert small.image.shape == (3, 20, 15) and set(np.unique(small.mask)) == {False, True}
    image, mask = RandomPatches(samples, (32, 32), 4, seed=0)[0]
    assert image.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
    (tmp_path / "masks" / "a1.png").unlink()
    with pytest.raises(InputError, match="no mask"):
        load_folder(tmp_path)


def test_synthetic_is_deterministic_and_binary():
    a, b = synthetic(2, 32, seed=3), synthetic(2, 32, seed=3)
    torch.testing.assert_close(a[1].image, b[1].image)
    assert a[0].mask.dtype == bool and 0 < a[0].mask.mean() < 0.9


@pytest.mark.shared_data
def test_drive_loader(shared_dataset):
    drive = shared_dataset("drive", "test/images")
    test = load_drive(drive, "test")
    assert len(test) == 20 and test[0].image.shape == (3, 584, 565)
    assert test[0].fov is not None and 0.5 < test[0].fov.mean() < 0.8 and 0.05 < test[0].mask.mean() < 0.2
