"""Issue 16: a user's own split folder of PNGs, the authors' coordinate files, raw-output models, empty Dice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from triptych.core.errors import InputError
from triptych.pdcr.cli import app
from triptych.pdcr.data import load_dataset, synthetic
from triptych.pdcr.interventions import PatchBank
from triptych.pdcr.models import build_model, save_model, wrap_model
from triptych.pdcr.regions import explain_regions
from triptych.pdcr.roi import RoI, dice, read_roi_file

SIDE = 48


def write_split_folder(root: Path, n_train: int = 4, n_test: int = 2, ext: str = "png") -> None:
    """DATA/{training,test}/{images,masks}/<stem>.png, as a user's own data set (not DRIVE)."""
    for split, seed, n in (("training", 0, n_train), ("test", 1, n_test)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i, s in enumerate(synthetic(n, SIDE, seed=seed)):
            stem = f"{split[:2]}{i}"
            Image.fromarray((s.image[0].numpy() * 255).astype(np.uint8)).save(
                root / split / "images" / f"{stem}.{ext}"
            )
            Image.fromarray(s.mask.astype(np.uint8) * 255).save(root / split / "masks" / f"{stem}.png")


def run(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


TINY_TRAIN = (
    "--patch",
    "32",
    "--features",
    "4,8,16",
    "--epochs",
    "1",
    "--patches-per-epoch",
    "8",
    "--batch-size",
    "4",
    "--accelerator",
    "cpu",
    "--devices",
    "1",
)


def test_png_split_folder_trains_explains_benchmarks_and_compares(tmp_path):
    torch.set_num_threads(1)
    data = tmp_path / "mydata"
    write_split_folder(data)
    models = tmp_path / "runs"
    for arch in ("unet", "attention_unet"):  # the benchmark's naming: <models-dir>/pdcr_<folder>_<arch>
        run("train", "--data", data, "--arch", arch, "--out", models / f"pdcr_mydata_{arch}", *TINY_TRAIN)
    metrics = json.loads((models / "pdcr_mydata_unet" / "metrics.json").read_text())
    assert (
        metrics["train_images"] + metrics["val_images"] == 4 and metrics["test_images"] == 2
    )  # the test split
    ckpt = metrics["checkpoint"]
    ev = run("evaluate", "--checkpoint", ckpt, "--data", f"folder:{data}")
    assert "over 2 images" in ev.output
    image, mask = data / "test" / "images" / "te0.png", data / "test" / "masks" / "te0.png"
    run(
        "explain",
        "--checkpoint",
        ckpt,
        "--image",
        image,
        "--mask",
        mask,
        "--roi",
        "16,16,8,8",
        "--data",
        data,
        "--components",
        "stages",
        "--seed",
        "0",
        "--out",
        tmp_path / "expl",
    )
    assert np.load(tmp_path / "expl" / "ate.npy").shape == (32, 32)  # the model's 32² window
    # the options benchmark and compare share
    shared = ["--data", f"folder:{data}", "--rois", "2", "--models-dir", models, "--crop", "32"]
    shared += ["--roi-size", "8", "--max-draws", "4"]
    bench = run(
        "benchmark",
        *shared,
        "--archs",
        "unet",
        "--steps",
        "4",
        "--rise-masks",
        "20",
        "--misure-steps",
        "3",
        "--out",
        tmp_path / "bench",
    )
    assert "unet: test Dice" in bench.output
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert set(results["models"]) == {"unet"} and "pdcr" in results["models"]["unet"]["methods"]
    details = json.loads((tmp_path / "bench" / "details.json").read_text())
    assert {r["image"] for r in details["rois"]} <= {"te0", "te1"}  # RoIs only on test images
    run(
        "compare",
        *shared,
        "--archs",
        "unet,attention_unet",
        "--out",
        tmp_path / "compare",
    )
    assert json.loads((tmp_path / "compare" / "results.json").read_text())["config"]["rois"] == 2


def test_split_folder_is_not_drive_and_stems_must_match(tmp_path):
    data = tmp_path / "d"
    write_split_folder(data, 2, 1, ext="tif")  # .tif images, but no 1st_manual/: a generic folder
    assert [s.name for s in load_dataset(str(data), "training")] == ["tr0", "tr1"]
    assert [s.name for s in load_dataset(f"folder:{data}", "test")] == ["te0"]
    (data / "training" / "masks" / "extra.png").write_bytes(
        (data / "training" / "masks" / "tr0.png").read_bytes()
    )
    with pytest.raises(InputError, match="extra.png match no image"):
        load_dataset(str(data), "training")
    (data / "training" / "masks" / "extra.png").unlink()
    (data / "training" / "masks" / "tr1.png").rename(data / "training" / "masks" / "tr1_mask.png")
    assert load_dataset(str(data), "training")[1].mask is not None  # <stem>_mask matches by stem
    (data / "training" / "masks" / "tr1_mask.png").unlink()
    with pytest.raises(InputError, match="no mask with the stem of image.*tr1"):
        load_dataset(str(data), "training")
    # an unsplit images/masks folder has training images and no test split (no metric on training data)
    flat = tmp_path / "flat"
    (flat / "images").mkdir(parents=True)
    (flat / "masks").mkdir()
    with pytest.raises(InputError, match="no test/ split"):
        load_dataset(str(flat), "test")


def test_drive_is_recognised_by_its_own_marks(tmp_path):
    base = tmp_path / "drive" / "training"
    for sub in ("images", "1st_manual", "mask"):
        (base / sub).mkdir(parents=True)
    s = synthetic(1, 32, seed=0)[0]
    rgb = np.repeat((s.image[0].numpy() * 255).astype(np.uint8)[..., None], 3, -1)
    Image.fromarray(rgb).save(base / "images" / "21_training.tif")
    Image.fromarray(s.mask.astype(np.uint8) * 255).save(base / "1st_manual" / "21_manual1.gif")
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(base / "mask" / "21_training_mask.gif")
    (sample,) = load_dataset(str(tmp_path / "drive"), "training")
    assert sample.fov is not None and sample.image.shape == (3, 32, 32) and sample.mask.any()


def test_authors_coordinate_file_runs_every_roi_end_to_end(tmp_path):
    torch.manual_seed(0)
    ckpt = save_model(build_model("unet", in_channels=1, features=(4, 8, 16)), tmp_path / "m.safetensors")
    data = tmp_path / "data"
    write_split_folder(data, 3, 2)
    # their format: image stem, row, column of the top-left corner; block and RoI side in the file name
    coords = tmp_path / "coords_block8_roi8.txt"
    coords.write_text("name,row,col\nte0,4,24\nte0,24,4\nte1,16,16\n")
    parsed = read_roi_file(coords)
    assert (parsed.roi_size, parsed.block, len(parsed.entries)) == (8, 8, 3)
    out = tmp_path / "expl"
    common = (
        "--checkpoint",
        ckpt,
        "--data",
        data,
        "--components",
        "none",
        "--estimator",
        "reference",
        "--empty-dice",
        "0",
        "--roi-file",
        coords,
    )
    run(
        "explain",
        *common,
        "--image",
        data / "test" / "images" / "te0.png",
        "--mask",
        data / "test" / "masks" / "te0.png",
        "--out",
        out,
    )
    rows = json.loads((out / "rois.json").read_text())
    assert [r["name"] for r in rows] == ["te0_r4_c24", "te0_r24_c4"]  # te1's line belongs to another image
    assert "x=24 y=4 w=8 h=8" in rows[0]["roi"]  # row 4, column 24 = x 24, y 4
    summary = json.loads((out / "te0_r4_c24" / "summary.json").read_text())
    assert summary["estimator"] == "reference" and summary["block"] == 8 and summary["empty_dice"] == 0
    # the same RoI through the API (x = column, y = row) gives the same map with the same seed
    from triptych.pdcr.data import read_image, read_mask
    from triptych.pdcr.models import load_model
    from triptych.pdcr.roi import make_outcome

    model = load_model(ckpt)
    image, gt = (
        read_image(data / "test" / "images" / "te0.png"),
        read_mask(data / "test" / "masks" / "te0.png"),
    )
    roi = RoI.box(24, 4, 8, 8, (SIDE, SIDE))
    bank = PatchBank.from_images([s.image for s in load_dataset(str(data), "training")], 8, seed=0)
    direct = explain_regions(
        model,
        image,
        roi,
        outcome=make_outcome("dice_gt", model, image, roi, gt, 0),
        intervention=bank,
        block=8,
        estimator="reference",
        seed=0,
        show_progress=False,
    )
    np.testing.assert_array_equal(np.load(out / "te0_r4_c24" / "ate.npy"), direct.ate)
    assert np.load(out / "te0_r4_c24" / "ate.npy")[4:12, 24:32].sum() == 0  # the RoI itself is not explained
    # a folder of images: every listed RoI of every image
    run(
        "explain",
        *common,
        "--image",
        data / "test" / "images",
        "--mask",
        data / "test" / "masks",
        "--out",
        tmp_path / "all",
    )
    assert len(json.loads((tmp_path / "all" / "rois.json").read_text())) == 3
    bad = tmp_path / "coords.txt"
    bad.write_text("te0,4,24\n")
    result = CliRunner().invoke(
        app,
        [
            "explain",
            "--checkpoint",
            str(ckpt),
            "--image",
            str(data / "test" / "images"),
            "--roi-file",
            str(bad),
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert isinstance(result.exception, InputError) and "--roi-size" in str(result.exception)


class Raw(torch.nn.Module):
    """A network whose prediction is its raw output > 0.5 (no sigmoid), as the authors' demo."""

    def __init__(self, net: torch.nn.Module, shift: float) -> None:
        super().__init__()
        self.net, self.shift = net, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + self.shift


def test_raw_output_network_matches_its_logits_twin():
    torch.manual_seed(0)
    net = build_model("unet", in_channels=1, features=(4, 8, 16)).net.eval()
    raw, logits = Raw(net, 0.5), Raw(net, 0.0)  # raw > 0.5  ⇔  logits > 0  ⇔  sigmoid(logits) > 0.5
    kw = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1}
    as_raw = wrap_model(raw, activation="none", threshold=0.5, **kw)
    as_logits = wrap_model(logits, emits="logits", activation="sigmoid", threshold=0.5, **kw)
    wrong = wrap_model(raw, emits="logits", activation="sigmoid", threshold=0.5, **kw)  # thresholds raw at 0
    samples = synthetic(4, 32, seed=5)
    image, gt = samples[0].image, samples[0].mask
    with torch.no_grad():
        ref = as_logits.predict(image[None])
        assert torch.equal(as_raw.predict(image[None]), ref) and not torch.equal(
            wrong.predict(image[None]), ref
        )
    bank = PatchBank.from_images([s.image for s in samples[1:]], 8, seed=0)
    roi = RoI.box(12, 12, 8, 8, (32, 32))
    maps = [
        explain_regions(
            m,
            image,
            roi,
            outcome="dice_gt",
            ground_truth=gt,
            intervention=bank,
            block=8,
            estimator="reference",
            seed=0,
            show_progress=False,
        ).ate
        for m in (as_raw, as_logits, wrong)
    ]
    np.testing.assert_array_equal(maps[0], maps[1])
    assert np.abs(maps[1]).sum() > 0 and not np.array_equal(maps[1], maps[2])


def test_empty_dice_convention():
    empty = torch.zeros(1, 4, dtype=torch.bool)
    assert dice(empty, empty).item() == 1.0 and dice(empty, empty, empty=0).item() == 0.0
    model = build_model("unet", in_channels=1, features=(4, 8, 16))
    from triptych.pdcr.roi import make_outcome

    with pytest.raises(InputError, match="--empty-dice"):
        make_outcome(
            "dice_self", model, torch.zeros(1, 16, 16), RoI.box(0, 0, 4, 4, (16, 16)), empty_dice=0.5
        )
