"""Acceptance 6: every bad input fails with one clear line naming it, and leaves no partial output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from triptych.core.errors import InputError, TriptychError
from triptych.pdcr.cli import app
from triptych.pdcr.models import build_model, save_model, wrap_model
from triptych.pdcr.regions import explain_regions
from triptych.pdcr.roi import RoI


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_unet):
    root = tmp_path_factory.mktemp("pdcr_inputs")
    ckpt = save_model(tiny_unet(), root / "model.safetensors")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(root / "image.png")
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:20, 8:20] = 255
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(mask[:24]).save(root / "small_mask.png")
    Image.fromarray((rng.random((32, 32)) * 200).astype(np.uint8)).save(root / "gray_mask.png")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    return root, ckpt


def _explain(root, ckpt, out, *extra):
    args = [
        "explain",
        "--checkpoint",
        str(ckpt),
        "--image",
        str(root / "image.png"),
        "--out",
        str(out),
        "--components",
        "none",
        "--intervention",
        "zero",
        "--block",
        "8",
        *extra,
    ]
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize(
    ("extra", "names", "message"),
    [
        (["--mask", "small_mask.png", "--roi", "4,4,8,8"], "--mask", "shape"),
        (["--roi", "28,28,8,8"], "--roi", "leaves the image"),
        (["--roi", "4,4,0,8"], "--roi", "zero area"),
        (["--mask", "gray_mask.png", "--roi", "4,4,8,8"], "--mask", "not binary"),
        (["--roi-mask", "gray_mask.png"], "--roi-mask", "not binary"),
        (["--mask", "broken.png", "--roi", "4,4,8,8"], "--mask", "not a readable image"),
        (["--mask", "missing.png", "--roi", "4,4,8,8"], "--mask", "does not exist"),
    ],
)
def test_bad_cli_inputs_fail_cleanly(files, tmp_path, extra, names, message):
    root, ckpt = files
    extra = [str(root / e) if e.endswith(".png") else e for e in extra]
    out = tmp_path / "out"
    result = _explain(root, ckpt, out, *extra)
    assert isinstance(result.exception, InputError), result.output
    text = str(result.exception)
    assert "\n" not in text and names in text and message in text
    assert not out.exists()  # no partial output
    assert not list(tmp_path.glob(".out.*"))  # nor a staging folder


def test_unreadable_image_and_checkpoint(files, tmp_path, invoke):
    root, ckpt = files
    args = [
        "explain",
        "--checkpoint",
        str(ckpt),
        "--image",
        str(root / "broken.png"),
        "--roi",
        "1,1,2,2",
        "--out",
        str(tmp_path / "o"),
    ]
    result = invoke(app, args)
    assert isinstance(result.exception, InputError) and "--image" in str(result.exception)
    (tmp_path / "bad.safetensors").write_bytes(b"\x80\x04pickle")
    args[2] = str(tmp_path / "bad.safetensors")
    result = invoke(app, args)
    assert isinstance(result.exception, TriptychError) and "pickle" in str(result.exception)
    assert not (tmp_path / "o").exists()


def test_earlier_outputs_survive_a_failed_run(files, tmp_path):
    root, ckpt = files
    out = tmp_path / "out"
    ok = _explain(root, ckpt, out, "--roi", "8,8,8,8")
    assert ok.exit_code == 0, ok.output
    before = np.load(out / "ate.npy")
    bad = _explain(root, ckpt, out, "--roi", "30,30,8,8")
    assert isinstance(bad.exception, InputError)
    np.testing.assert_array_equal(np.load(out / "ate.npy"), before)


class Shrinks(torch.nn.Module):
    """Returns half-resolution output: a model whose output does not match its input."""

    def forward(self, x):
        return x[:, :1, ::2, ::2]


def test_model_output_shape_mismatch():
    model = wrap_model(
        Shrinks(), spatial_dims=2, in_channels=1, out_channels=1, emits="logits", activation="sigmoid"
    )
    with pytest.raises(InputError, match="does not match its input") as info:
        explain_regions(
            model,
            torch.rand(1, 16, 16),
            RoI.box(2, 2, 4, 4, (16, 16)),
            intervention="zero",
            show_progress=False,
        )
    assert "\n" not in str(info.value)


def test_image_and_roi_shape_mismatch_in_api():
    model = build_model("unet", in_channels=1, features=(4, 8))
    with pytest.raises(InputError, match="differs"):
        explain_regions(model, torch.rand(1, 16, 16), RoI.box(1, 1, 2, 2, (8, 8)), intervention="zero")
    with pytest.raises(InputError, match="channel"):
        explain_regions(model, torch.rand(3, 16, 16), RoI.box(1, 1, 2, 2, (16, 16)), intervention="zero")


def test_components_command_lists_candidates(files, invoke):
    _, ckpt = files
    result = invoke(app, ["components", "--checkpoint", str(ckpt), "--granularity", "stages"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert "net.model.0\tblock" in lines and any(line.startswith("skip:") for line in lines)
