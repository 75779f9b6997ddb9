"""Acceptance 5: a small 3D volume explained end to end (cubic blocks), through the API and the CLI."""

from __future__ import annotations

import json

import numpy as np

from triptych.pdcr.cli import app
from triptych.pdcr.components import explain_components
from triptych.pdcr.data import synthetic
from triptych.pdcr.models import save_model
from triptych.pdcr.regions import explain_regions
from triptych.pdcr.roi import RoI


def test_3d_volume_end_to_end(tmp_path, invoke, tiny_unet):
    model = tiny_unet(spatial_dims=3)
    volumes = synthetic(4, 16, spatial_dims=3, seed=0)
    image = volumes[0].image
    roi = RoI.parse("6,6,6,4,4,4", (16, 16, 16))
    exp = explain_regions(
        model,
        image,
        roi,
        outcome="soft_mass",
        intervention="patch_bank",
        dataset=[v.image for v in volumes],
        exclude=0,
        block=4,
        coarse_block=8,
        seed=0,
        show_progress=False,
    )
    assert exp.ate.shape == (16, 16, 16) and exp.se.shape == (16, 16, 16)
    assert np.all(exp.ate[roi.mask] == 0)
    assert np.abs(exp.ate).max() > 0  # untrained U-Nets still respond to their input
    # cubic 4³ blocks were reached and estimated
    assert any(all(hi - lo == 4 for lo, hi in b["block"]) and b["n"] > 0 for b in exp.blocks)
    summary = exp.summary()
    assert summary["positive_blocks"] + summary["negative_blocks"] + summary["zero_blocks"] == 64 - 8
    comps = explain_components(
        model,
        image,
        roi,
        components="stages",
        outcome="soft_mass",
        intervention="swap",
        dataset=[v.image for v in volumes[1:]],
        seed=0,
    )
    assert len(comps.rows) >= 3 and comps.rows[0]["rank"] == 1

    ckpt = save_model(model, tmp_path / "model3d.safetensors")
    np.save(tmp_path / "volume.npy", image[0].numpy())
    out = tmp_path / "out"
    result = invoke(
        app,
        [
            "explain",
            "--checkpoint",
            str(ckpt),
            "--image",
            str(tmp_path / "volume.npy"),
            "--roi",
            "6,6,6,4,4,4",
            "--out",
            str(out),
            "--block",
            "4",
            "--outcome",
            "soft_mass",
            "--data",
            "synthetic",
            "--components",
            "stages",
        ],
    )
    assert result.exit_code == 0, result.output
    assert np.load(out / "ate.npy").shape == (16, 16, 16)
    assert json.loads((out / "summary.json").read_text())["forward_passes"] > 10
    assert (out / "overlay.png").stat().st_size > 0 and (out / "report.html").stat().st_size > 0


def test_nifti_round_trip_keeps_the_affine(tmp_path, tiny_unet):
    """A 3D NIfTI volume in, ATE/SE maps out as NIfTI on the same voxels with the same affine (issue 13, item 5)."""
    import nibabel as nib  # in the pdcr extra
    from typer.testing import CliRunner

    ckpt = save_model(tiny_unet(spatial_dims=3), tmp_path / "m.safetensors")
    affine = np.array([[2.0, 0, 0, -30.0], [0, 1.5, 0, 12.0], [0, 0, 1.0, 4.5], [0, 0, 0, 1]])
    volume = (np.random.default_rng(0).random((16, 16, 16)) * 800 - 100).astype(np.float32)  # scanner units
    nib.save(nib.Nifti1Image(volume, affine), str(tmp_path / "vol.nii.gz"))
    result = CliRunner().invoke(
        app,
        [
            "explain",
            "--checkpoint",
            str(ckpt),
            "--image",
            str(tmp_path / "vol.nii.gz"),
            "--roi",
            "6,6,6,4,4,4",
            "--intervention",
            "zero",
            "--block",
            "4",
            "--components",
            "none",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, (result.output, result.exception)
    out = nib.load(str(tmp_path / "out" / "ate.nii.gz"))
    np.testing.assert_allclose(out.affine, affine)
    ate = np.load(tmp_path / "out" / "ate.npy")
    assert out.shape == volume.shape == ate.shape
    np.testing.assert_allclose(np.asarray(out.dataobj), ate, rtol=1e-6)
    assert np.abs(ate).sum() > 0 and ate[6:10, 6:10, 6:10].sum() == 0  # the RoI, in the file's voxel order
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["image_shape"] == [16, 16, 16]
