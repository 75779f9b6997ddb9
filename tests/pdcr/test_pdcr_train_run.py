"""The benchmark trains a missing model into ``<run>.partial/`` and moves it into place only on success."""

from __future__ import annotations

from pathlib import Path

import pytest

import triptych.pdcr.train as train
from triptych.pdcr.benchmark import model_for


def test_an_interrupted_benchmark_training_leaves_no_checkpoint_to_reuse(tmp_path, monkeypatch):
    def crash_after_a_checkpoint(data, out, **kwargs):
        ckpt = Path(out) / "checkpoints" / "last.safetensors"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"half-trained")
        (ckpt.parent / "best.safetensors").write_bytes(b"half-trained")
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_model", crash_after_a_checkpoint)
    models = tmp_path / "runs"
    with pytest.raises(SystemExit):  # Ctrl-C becomes a clean exit with the resume line
        model_for("unet", "drive", tmp_path / "drive", models, None, 0)
    run = models / "pdcr_drive_unet"
    # a rerun must not mistake the half-trained model for a finished one
    assert not (run / "checkpoints" / "best.safetensors").exists()
    assert (models / "pdcr_drive_unet.partial" / "checkpoints" / "last.safetensors").is_file()
