"""The benchmark end to end on a tiny images/masks folder with a saved tiny model: schema and honesty checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from triptych.pdcr.benchmark import BASELINES, OPERATORS, BenchConfig, parse_data, run_benchmark, sample_cases
from triptych.pdcr.data import synthetic
from triptych.pdcr.models import save_model


def write_folder(root: Path, write_png) -> None:
    for split, seed, n in (("training", 0, 4), ("test", 1, 2)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for s in synthetic(n, 48, seed=seed):
            write_png(root / split / "images" / f"{s.name}.png", s.image[0].numpy())
            write_png(root / split / "masks" / f"{s.name}.png", s.mask)


def test_benchmark_writes_the_documented_schema(tmp_path, tiny_unet, write_png):
    data = tmp_path / "toy"
    write_folder(data, write_png)
    checkpoints = tmp_path / "runs" / "pdcr_toy_unet" / "checkpoints"
    checkpoints.mkdir(parents=True)
    save_model(tiny_unet(patch_size=(32, 32)), checkpoints / "best.safetensors")
    config = BenchConfig(
        crop=32,
        roi=8,
        block=8,
        coarse_block=16,
        max_draws=4,
        steps=4,
        rise_masks=20,
        misure_steps=3,
        ig_steps=4,
    )
    out = tmp_path / "bench"
    results = run_benchmark(f"folder:{data}", ["unet"], 2, out, models_dir=tmp_path / "runs", config=config)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    entry = on_disk["models"]["unet"]
    assert (
        0.0 <= entry["test_dice"] <= 1.0
    )  # computed on the test split (no metrics.json beside the checkpoint)
    assert set(entry["methods"]) == {"pdcr", "random", *BASELINES}
    for m in entry["methods"].values():
        assert set(m) == {"deletion_auc", "insertion_auc", "leakage", "seconds", "forward_passes"}
        assert set(m["deletion_auc"]) == set(OPERATORS) == set(m["insertion_auc"])
        assert all(0.0 <= v <= 1.0 for v in m["deletion_auc"].values())
    assert entry["methods"]["pdcr"]["forward_passes"] > entry["methods"]["seg_grad_cam"]["forward_passes"]
    assert "| unet |" in (out / "results.md").read_text()
    maps = np.load(out / "maps_unet.npz")
    assert maps["ate"].shape == (2, 32, 32) and maps["roi"].shape == (2, 32, 32)
    assert maps["component_ate"].shape[0] == 2 and len(maps["component_names"]) > 0


def test_bad_data_spec_and_missing_test_split_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="drive:PATH"):
        parse_data("drive")
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match="training"):
        run_benchmark(f"folder:{tmp_path}", ["unet"], 2, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.shared_data
def test_drive_rois_lie_on_test_vessels_and_are_seeded(shared_dataset):
    drive = shared_dataset("drive")
    from triptych.pdcr.data import load_drive

    test = load_drive(drive, "test")
    a = sample_cases(test, 4, 64, 12, seed=0)
    b = sample_cases(test, 4, 64, 12, seed=0)
    assert [c.origin for c in a] == [c.origin for c in b]
    assert len({c.image_name for c in a}) == 2  # two RoIs per image, for the across-inputs test
    for case in a:
        sample = next(s for s in test if s.name == case.image_name)
        y0, x0 = case.origin
        crop_mask = sample.mask[y0 : y0 + 64, x0 : x0 + 64]
        assert crop_mask[case.roi.mask].any()  # the RoI covers ground-truth vessel pixels
        assert (case.truth == crop_mask).all()
