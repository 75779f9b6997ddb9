"""Issue 12 item 3 for PdCR: images, masks, RoI strings and checkpoints never escape as a traceback.

Property tests call the loaders directly with random bytes and mutated valid files; only
``InputError`` / ``CheckpointError`` (one line) may escape. One CLI regression per class.
"""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from triptych.core.errors import InputError, TriptychError
from triptych.pdcr.data import read_image, read_mask
from triptych.pdcr.models import build_model, load_model, save_model
from triptych.pdcr.roi import RoI

torch.set_num_threads(1)
PROPERTY = settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
EDITS = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=6)


def _only_user_errors(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except TriptychError as exc:
        assert "\n" not in str(exc), str(exc)


def _mutate(data: bytes, edits, cut=None) -> bytes:
    buf = bytearray(data)
    for pos, value in edits:
        buf[pos % len(buf)] = value
    return bytes(buf[:cut] if cut is not None else buf)


def _encoded(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    mask = np.zeros((12, 10), dtype=np.uint8)
    mask[3:8, 2:6] = 255
    buf = io.BytesIO()
    if fmt == "npy":
        np.save(buf, mask > 0)
    elif fmt == "tif":
        import tifffile

        tifffile.imwrite(buf, (rng.random((12, 10)) * 255).astype(np.uint8))
    else:
        Image.fromarray(mask).save(buf, format={"png": "PNG", "jpg": "JPEG", "gif": "GIF", "bmp": "BMP"}[fmt])
    return buf.getvalue()


VALID = {fmt: _encoded(fmt) for fmt in ("png", "jpg", "gif", "bmp", "npy", "tif")}


@PROPERTY
@given(
    fmt=st.sampled_from(sorted(VALID)),
    edits=EDITS,
    cut=st.none() | st.integers(0, 600),
    spatial_dims=st.sampled_from([2, 3]),
)
def test_mutated_images_and_masks_load_or_raise_input_error(tmp_path, fmt, edits, cut, spatial_dims):
    path = tmp_path / f"x.{fmt}"
    path.write_bytes(_mutate(VALID[fmt], edits, cut))
    image = _only_user_errors(read_image, path, spatial_dims)
    if image is not None:
        assert image.dtype == torch.float32 and torch.isfinite(image).all()
    _only_user_errors(read_mask, path)


@PROPERTY
@given(data=st.binary(max_size=600), suffix=st.sampled_from([".png", ".jpg", ".tif", ".npy", ".gif", ".bmp"]))
def test_random_bytes_as_images_and_masks(tmp_path, data, suffix):
    path = tmp_path / f"r{suffix}"
    path.write_bytes(data)
    _only_user_errors(read_image, path)
    _only_user_errors(read_mask, path)


@PROPERTY
@given(
    array=st.sampled_from(
        [
            np.zeros((0, 4)),
            np.zeros(()),
            np.array(["a", "b"]),
            np.full((3, 3), np.nan),
            np.zeros((2, 2), dtype=complex),
            np.zeros((2, 2, 2, 2, 2)),
            np.ones((3, 3, 7)),
            np.array([[1, 2], [3, 4]], dtype=np.int64) * 10**12,
            np.full((3, 3), -np.inf),
            np.zeros((2, 2), dtype=[("a", "i4")]),
        ]
    ),
    spatial_dims=st.sampled_from([2, 3]),
)
def test_odd_arrays_in_npy_files(tmp_path, array, spatial_dims):
    path = tmp_path / "odd.npy"
    np.save(path, array)
    image = _only_user_errors(read_image, path, spatial_dims)
    if image is not None:
        assert torch.isfinite(image).all()
    _only_user_errors(read_mask, path)


@PROPERTY
@given(
    text=st.text(max_size=30)
    | st.lists(st.integers(-(10**20), 10**20), max_size=7).map(lambda v: ",".join(map(str, v))),
    shape=st.sampled_from([(16, 12), (5, 6, 7), (1, 1)]),
)
def test_roi_strings_parse_or_raise_input_error(text, shape):
    roi = _only_user_errors(RoI.parse, text, shape)
    if roi is not None:
        assert roi.shape == shape and roi.area > 0


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pdcr_props") / "model.safetensors"
    save_model(build_model("unet", in_channels=1, features=(4, 8, 16)), path)
    return path.read_bytes()


@PROPERTY
@given(edits=EDITS)
def test_mutated_segmentation_checkpoints_load_or_raise(tmp_path, checkpoint_bytes, edits):
    header = int.from_bytes(checkpoint_bytes[:8], "little") + 8
    path = tmp_path / "m.safetensors"
    path.write_bytes(_mutate(checkpoint_bytes, [(8 + p % (header - 8), v) for p, v in edits]))
    _only_user_errors(load_model, path)


# ------------------------------------------------------------------ CLI regressions


def run_cli(args, monkeypatch, capsys) -> tuple[int, str]:
    from triptych import cli

    monkeypatch.setattr(sys, "argv", ["triptych", *map(str, args)])
    with pytest.raises(SystemExit) as done:
        cli.main()
    return done.value.code or 0, capsys.readouterr().err


def test_cli_folder_as_image_and_bad_roi(tmp_path, monkeypatch, capsys, checkpoint_bytes):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(checkpoint_bytes)
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(tmp_path / "image.png")
    base = ["pdcr", "explain", "--checkpoint", ckpt, "--out", tmp_path / "out", "--components", "none"]
    for extra, needle in (
        (["--image", tmp_path, "--roi", "1,1,4,4"], "is a folder, not a file"),
        (["--image", tmp_path / "image.png", "--roi", "1,1,x,4"], "give integers"),
    ):
        code, err = run_cli([*base, *extra], monkeypatch, capsys)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not (tmp_path / "out").exists()


def test_read_image_refuses_a_folder(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        read_image(tmp_path)
