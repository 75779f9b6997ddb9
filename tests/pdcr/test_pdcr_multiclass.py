"""Multi-class models: the target class, per-class and mean-Dice outcomes, softmax/CE training (issue 13, item 5)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from triptych.core.errors import InputError
from triptych.pdcr.cli import app
from triptych.pdcr.data import synthetic
from triptych.pdcr.models import save_model, with_output, wrap_model
from triptych.pdcr.regions import explain_regions
from triptych.pdcr.roi import RoI, dice, make_outcome


class Bands(nn.Module):
    """A constructed 3-class model: class c's logit peaks where the 9×9 local mean of the image is c/2
    (background dark, class 1 grey, class 2 bright), so blocks next to a RoI move its labels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = nn.functional.avg_pool2d(x, 9, stride=1, padding=4, count_include_pad=False)
        centres = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1)
        return -40.0 * (local - centres) ** 2


def _bands(target_class: int = 1):
    return wrap_model(
        Bands(),
        spatial_dims=2,
        in_channels=1,
        out_channels=3,
        activation="softmax",
        target_class=target_class,
    )


def _scene() -> tuple[torch.Tensor, np.ndarray]:
    """A 32² image: a grey square (class 1) beside a bright square (class 2) on black; its label map."""
    labels = np.zeros((32, 32), dtype=np.int64)
    labels[8:20, 4:14] = 1
    labels[8:20, 14:26] = 2
    return torch.from_numpy(labels.astype(np.float32) / 2)[None], labels


def test_per_class_and_mean_dice_equal_their_definitions():
    model = _bands()
    image, labels = _scene()
    roi = RoI.box(10, 10, 8, 8, (32, 32))  # straddles the grey/bright edge
    prob = model.probabilities(image[None])
    pred = prob.argmax(1)[0]
    noisy = labels.copy()
    noisy[10:13, 10:18] = 0  # a reference that disagrees with the prediction in part of the RoI
    r = torch.from_numpy(roi.mask)
    ref = torch.from_numpy(noisy)
    for c in (1, 2):
        expected = 100 * float(dice((pred[r] == c)[None], (ref[r] == c)[None])[0])
        got = make_outcome("dice_gt", model, image, roi, noisy, target_class=c)(prob)
        assert float(got[0]) == pytest.approx(expected)
    mean = make_outcome("mean_dice", model, image, roi, noisy)(prob)
    per_class = [
        float(make_outcome("dice_gt", model, image, roi, noisy, target_class=c)(prob)[0]) for c in (1, 2)
    ]
    assert float(mean[0]) == pytest.approx(np.mean(per_class))
    assert 0 < float(mean[0]) < 100  # the disagreement shows
    # against its own labels the unperturbed model scores 100
    assert float(make_outcome("mean_dice_self", model, image, roi)(prob)[0]) == pytest.approx(100.0)


def test_target_class_changes_what_is_explained():
    model = _bands()
    image, labels = _scene()
    roi = RoI.box(10, 10, 8, 8, (32, 32))
    kwargs = {
        "outcome": "dice_gt",
        "ground_truth": labels,
        "intervention": "zero",
        "block": 4,
        "estimator": "reference",
        "show_progress": False,
    }
    grey = explain_regions(model, image, roi, target_class=1, **kwargs)
    bright = explain_regions(model, image, roi, target_class=2, **kwargs)
    mean = explain_regions(model, image, roi, **{**kwargs, "outcome": "mean_dice"})
    # the block right of the RoI (bright square) supports both classes' Dice, class 2's more
    assert bright.ate[12, 21] < grey.ate[12, 21] < -1
    # mean Dice is the mean of the per-class Dice for every draw, so its ATEs are too (up to the dead zone)
    np.testing.assert_allclose(mean.ate, (grey.ate + bright.ate) / 2, atol=0.03)
    # soft mass: zeroing the bright block makes the RoI darker, i.e. less class 2 and more class 1
    soft = {**kwargs, "outcome": "soft_mass"}
    assert explain_regions(model, image, roi, target_class=2, **soft).ate[12, 21] < -1
    assert explain_regions(model, image, roi, target_class=1, **soft).ate[12, 21] > 1
    assert model.spec.target_class == 1  # the caller's model is untouched


def test_bad_target_class_and_labels_are_clear_errors():
    model = _bands()
    image, labels = _scene()
    roi = RoI.box(10, 10, 8, 8, (32, 32))
    with pytest.raises(InputError, match="target_class=3 is outside 0..2"):
        with_output(model, target_class=3)
    bad = labels.copy()
    bad[0, 0] = 7
    with pytest.raises(InputError, match="labels must be integers 0..2"):
        make_outcome("dice_gt", model, image, roi, bad)
    binary = wrap_model(Bands(), spatial_dims=2, in_channels=1, out_channels=3, activation="sigmoid")
    with pytest.raises(InputError, match="mean_dice needs a multi-class softmax model"):
        make_outcome("mean_dice", binary, image, roi, labels)
    with pytest.raises(InputError, match="mean_dice needs a ground-truth --mask"):
        make_outcome("mean_dice", model, image, roi)


def test_softmax_ce_training_on_three_classes_learns(tmp_path):
    from triptych.core.training import TrainerFlags
    from triptych.pdcr.train import evaluate, train_run

    torch.manual_seed(0)
    result = train_run(
        "synthetic",
        tmp_path / "run",
        classes=3,
        patch=64,
        features=(8, 16, 32),
        epochs=6,
        patches_per_epoch=32,
        flags=TrainerFlags(accelerator="cpu", devices="1"),
        progress=False,
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["classes"] == 3 and metrics["checkpoint"] == str(result.checkpoint)
    assert result.checkpoint.is_file() and not (tmp_path / "run.partial").exists()
    from triptych.pdcr.models import build_model, load_model

    model = load_model(result.checkpoint)
    assert (
        model.spec.out_channels == 3 and model.spec.activation == "softmax" and model.spec.target_class == 1
    )
    test = synthetic(8, 96, seed=1000, classes=3)
    assert {int(v) for s in test for v in np.unique(s.mask)} == {0, 1, 2}
    torch.manual_seed(0)
    untrained = build_model("unet", in_channels=1, out_channels=3, features=(8, 16, 32), activation="softmax")
    trained_dice, untrained_dice = np.mean(evaluate(model, test)), np.mean(evaluate(untrained, test))
    assert metrics["test_dice_fov"] == pytest.approx(trained_dice, abs=1e-6)  # mean Dice over classes 1, 2
    assert trained_dice > untrained_dice + 0.2, (trained_dice, untrained_dice)


def test_explain_cli_with_target_class_and_mean_dice(tmp_path, invoke, tiny_unet):
    model = tiny_unet(out_channels=3, activation="softmax", target_class=1)
    ckpt = save_model(model, tmp_path / "m.safetensors")
    sample = synthetic(1, 32, seed=5, classes=3)[0]
    np.save(tmp_path / "im.npy", sample.image[0].numpy())
    np.save(tmp_path / "labels.npy", sample.mask)
    base = [
        "explain",
        "--checkpoint",
        ckpt,
        "--image",
        tmp_path / "im.npy",
        "--mask",
        tmp_path / "labels.npy",
        "--roi",
        "8,8,8,8",
        "--intervention",
        "zero",
        "--block",
        "8",
        "--components",
        "none",
    ]
    for name, extra in {"c2": ["--target-class", "2"], "mean": ["--outcome", "mean_dice"]}.items():
        result = invoke(app, [*base, *extra, "--out", tmp_path / name])
        assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads((tmp_path / "c2" / "summary.json").read_text())["outcome"] == "dice_gt"
    assert json.loads((tmp_path / "mean" / "summary.json").read_text())["outcome"] == "mean_dice"
    bad = invoke(app, [*base, "--target-class", "5", "--out", tmp_path / "bad"])
    assert bad.exit_code != 0 and isinstance(bad.exception, InputError)
    assert "target_class=5 is outside 0..2" in str(bad.exception) and not (tmp_path / "bad").exists()
