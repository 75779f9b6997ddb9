"""`triptych pdcr audit`: a whole (tiny, synthetic) dataset explained, resumed after a crash, on Ray."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from triptych.core.errors import InputError
from triptych.pdcr import audit as audit_mod
from triptych.pdcr.audit import AuditConfig, audit, component_rois, sampled_rois
from triptych.pdcr.cli import app
from triptych.pdcr.data import synthetic
from triptych.pdcr.models import save_model

N_IMAGES = 6
ARGS = ["--rois", "gt", "--rois-per-image", "2", "--block", "8", "--max-draws", "6"]
CONFIG = AuditConfig(rois="gt", rois_per_image=2, block=8, max_draws=6)
# Wall-clock seconds are the one column two runs cannot share.
VARYING = ["seconds"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_unet):
    """Six 32² MONAI blobs as .npy images + PNG masks listed in a CSV, and a tiny U-Net checkpoint."""
    root = tmp_path_factory.mktemp("audit_data")
    with (root / "set.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask"])
        for s in synthetic(N_IMAGES, 32, seed=3):
            np.save(root / f"{s.name}.npy", s.image.numpy())
            Image.fromarray(s.mask.astype(np.uint8) * 255).save(root / f"{s.name}_mask.png")
            writer.writerow([f"{s.name}.npy", f"{s.name}_mask.png"])
    ckpt = save_model(tiny_unet(), root / "model.safetensors")
    return root / "set.csv", ckpt


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """The uninterrupted, in-process audit through the CLI."""
    from typer.testing import CliRunner

    data, ckpt = dataset
    out = tmp_path_factory.mktemp("audit_ref") / "out"
    result = CliRunner().invoke(
        app,
        ["audit", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out), *ARGS, "--workers", "0"],
    )
    assert result.exit_code == 0, result.output
    return out, pd.read_parquet(out / "results.parquet")


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.drop(columns=VARYING), b.drop(columns=VARYING))


def test_audit_writes_table_maps_and_report(reference):
    out, table = reference
    assert len(table) >= N_IMAGES  # every image has at least one ground-truth component
    assert table.groupby("image").size().max() <= 2
    assert list(pd.read_csv(out / "results.csv").columns) == list(table.columns)
    assert (table["forward_passes"] > 1).all() and (table["base_outcome"] >= 0).all()
    # all RoIs of an image were explained together (multiroi.explain_rois), the run's cost split over them
    assert (table["shared_rois"] == table.groupby("image")["roi"].transform("size")).all()
    blocks = table[["significant_negative", "significant_positive", "not_significant", "called_zero"]].sum(1)
    assert (blocks == table[["negative_blocks", "positive_blocks", "zero_blocks"]].sum(1)).all()
    assert (
        table["significant_negative"].sum() + table["significant_positive"].sum() > 0
    )  # something was found
    with np.load(out / table["maps"][0]) as z:
        assert z["ate"].shape == z["se"].shape == z["roi"].shape == (32, 32)
        assert np.abs(z["ate"]).max() > 0 and not z["ate"][z["roi"]].any()
    html = (out / "report.html").read_text()
    assert "most non-local support" in html and "Per-image aggregated maps" in html
    assert all(path in html for path in table["maps"])  # a link per RoI


def test_killed_audit_resumes_without_redoing_finished_images(dataset, reference, tmp_path, monkeypatch):
    data, ckpt = dataset
    out = tmp_path / "out"
    calls = {"n": 0}
    original = audit_mod.AuditWorker.__call__

    def crash_after_three(self, shard):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("worker killed")
        return original(self, shard)

    monkeypatch.setattr(audit_mod.AuditWorker, "__call__", crash_after_three)
    with pytest.raises(RuntimeError, match="worker killed"):
        audit(ckpt, str(data), out, CONFIG, workers=0)
    finished = sorted((out / "shards").glob("*.parquet"))
    assert len(finished) == 3
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    monkeypatch.setattr(audit_mod.AuditWorker, "__call__", original)
    result = audit(ckpt, str(data), out, CONFIG, workers=0)
    assert result.reused == 3 and result.images == N_IMAGES
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # not redone
    _same(result.table, reference[1])
    for path in result.table["maps"]:
        with np.load(out / path) as a, np.load(reference[0] / path) as b:
            assert np.array_equal(a["ate"], b["ate"]) and np.array_equal(a["se"], b["se"])


def test_sigkilled_audit_process_resumes(dataset, reference, tmp_path):
    """A real SIGKILL of the CLI once some images are done; the rerun matches the reference."""
    data, ckpt = dataset
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-c",
        "from triptych.cli import main; main()",
        "pdcr",
        "audit",
        "--checkpoint",
        str(ckpt),
        "--data",
        str(data),
        "--out",
        str(out),
        *ARGS,
        "--workers",
        "0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600  # a loaded machine starts slowly
    while time.monotonic() < deadline and proc.poll() is None and len(list(out.glob("shards/*.parquet"))) < 2:
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed halfway, not finished
    done = len(list(out.glob("shards/*.parquet")))
    assert 2 <= done < N_IMAGES
    result = audit(ckpt, str(data), out, CONFIG, workers=0)
    assert result.reused == done
    _same(result.table, reference[1])


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray session with 2 worker CPUs (loopback only) for the file."""
    from triptych.core.batch import init_ray

    init_ray(workers=2)
    import ray  # after init_ray, which sets Ray's environment first

    yield
    ray.shutdown()


def test_two_ray_workers_equal_in_process(dataset, reference, ray_session, tmp_path):
    data, ckpt = dataset
    result = audit(ckpt, str(data), tmp_path / "out", CONFIG, workers=2, report=False)
    assert result.reused == 0
    _same(result.table, reference[1])


def test_roi_makers():
    mask = np.zeros((20, 20), dtype=bool)
    mask[1:3, 1:3] = True  # area 4
    mask[10:15, 10:15] = True  # area 25
    parts = component_rois(mask, 5)
    assert [int(p.sum()) for p in parts] == [25, 4]
    boxes = sampled_rois(mask, 3, 4, seed=1)
    assert len(boxes) == 3 and all(int(b.sum()) == 16 for b in boxes)
    assert all(np.array_equal(a, b) for a, b in zip(boxes, sampled_rois(mask, 3, 4, seed=1), strict=True))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "nowhere:x"], "--data"),
        (["--data", "missing.csv"], "--data"),
        (["--rois", "no_such_boxes.csv"], "--rois"),
        (["--rois-per-image", "0"], "--rois-per-image"),
        (["--estimator", "magic"], "--estimator"),
        (["--rois", "BOXES_BAD"], "--rois"),
        (["--workers", "2", "--ray-address", "no-port-here"], "--ray-address"),
    ],
)
def test_bad_inputs_fail_in_one_line(dataset, tmp_path, invoke, extra, message):
    data, ckpt = dataset
    if "BOXES_BAD" in extra:
        bad = tmp_path / "boxes.csv"
        bad.write_text("image,x,y,w,h\nnot_an_image,1,1,4,4\n")
        extra = [str(bad) if e == "BOXES_BAD" else e for e in extra]
    args = [
        "audit",
        "--checkpoint",
        ckpt,
        "--data",
        data,
        "--out",
        tmp_path / "out",
        "--workers",
        "0",
        *extra,
    ]
    result = invoke(app, args)
    assert isinstance(result.exception, InputError), result.output
    text = str(result.exception)
    assert "\n" not in text and message in text


def test_given_boxes(dataset, tmp_path):
    data, ckpt = dataset
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,x,y,w,h\nsynthetic_000,4,4,8,8\nsynthetic_002.npy,20,10,6,6\n")
    result = audit(
        ckpt, str(data), tmp_path / "out", AuditConfig(rois=str(boxes), max_draws=4), workers=0, report=False
    )
    assert result.table[["image", "roi_box"]].values.tolist() == [
        ["synthetic_000", "4,4,8,8"],
        ["synthetic_002", "20,10,6,6"],
    ]
