"""Scale-out (DDP on 2 CPU processes) and resume through the core trainer factory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from triptych.core.checkpoint import load_checkpoint
from triptych.core.seed import seed_everything
from triptych.core.training import fit, make_trainer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ddp_train import IndexedData, Tiny  # noqa: E402


def _run(out: Path, devices: int, batch_size: int) -> dict[str, torch.Tensor]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(HERE / "ddp_train.py"), str(out), str(devices), str(batch_size)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=out,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state, _ = load_checkpoint(out / "final.safetensors", kind="test.tiny")
    return state


@pytest.mark.timeout(400)
def test_ddp_two_processes_shard_data_and_match_single_process(tmp_path):
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    ddp_dir.mkdir()
    single_dir.mkdir()
    # 2 ranks x batch 8 averages gradients over the same 16 samples as 1 process x batch 16.
    ddp = _run(ddp_dir, devices=2, batch_size=8)
    single = _run(single_dir, devices=1, batch_size=16)

    seen0 = json.loads((ddp_dir / "seen_rank0.json").read_text())
    seen1 = json.loads((ddp_dir / "seen_rank1.json").read_text())
    for epoch in range(3):
        shard0 = [i for e, i in seen0 if e == epoch]
        shard1 = [i for e, i in seen1 if e == epoch]
        assert len(shard0) == len(shard1) == 32
        assert set(shard0).isdisjoint(shard1), f"ranks saw overlapping shards in epoch {epoch}"
        assert sorted(shard0 + shard1) == list(range(64)), "the shards do not cover the data"

    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-5, atol=1e-6)
    # and training moved the weights, so the comparison is not trivially of two inits
    assert not torch.allclose(single["net.weight"], torch.zeros(1, 4))


class _StopAfterFirstCheckpoint(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 0:
            raise RuntimeError("simulated crash")


class _AdamTiny(Tiny):
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.02)


def _train(root: Path, max_epochs: int, resume: Path | None = None, callbacks=()):
    seed_everything(0)
    model = _AdamTiny()
    trainer = make_trainer(
        max_epochs=max_epochs,
        default_root_dir=root,
        monitor=None,
        enable_progress_bar=False,
        callbacks=list(callbacks),
        accelerator="cpu",
    )
    fit(trainer, model, DataLoader(IndexedData(), batch_size=16, shuffle=False), resume=resume)
    return model


def test_resume_after_interruption_gives_same_weights(tmp_path):
    full = _train(tmp_path / "full", max_epochs=4)

    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(tmp_path / "crash", max_epochs=4, callbacks=[_StopAfterFirstCheckpoint()])
    last = tmp_path / "crash" / "checkpoints" / "last.safetensors"
    assert last.exists()
    state, _ = load_checkpoint(last)
    assert state["epoch"] == 0  # only the first epoch was checkpointed
    assert state["optimizer_states"][0]["state"], "Adam state must be in the checkpoint"

    interrupted_weight = state["state_dict"]["net.weight"].clone()
    resumed = _train(tmp_path / "crash", max_epochs=4, resume=last)
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7, msg=f"{name} differs after resume")
    # an interrupted run that was not resumed really is different (the test can fail)
    assert not torch.allclose(interrupted_weight, full.net.weight.detach())


def test_trainer_options_declares_the_flags_once_and_passes_them_as_trainer_flags(invoke):
    import typer

    from triptych.core.training import TrainerFlags, trainer_options

    seen: list[tuple[int, TrainerFlags]] = []
    app = typer.Typer()

    @app.command()
    @trainer_options(max_time="00:00:01:00")
    def train(epochs: int = 3, flags: TrainerFlags = TrainerFlags()) -> None:
        seen.append((epochs, flags))

    @app.command()
    def other() -> None:  # a second command keeps Typer in sub-command mode
        pass

    help_text = invoke(app, ["train", "--help"]).output
    for flag in (
        "--accelerator",
        "--devices",
        "--strategy",
        "--precision",
        "--max-time",
        "--resume",
        "--epochs",
    ):
        assert flag in help_text
    assert "--flags" not in help_text
    assert invoke(app, ["train"]).exit_code == 0
    assert seen[-1] == (3, TrainerFlags(max_time="00:00:01:00"))
    result = invoke(
        app,
        [
            "train",
            "--epochs",
            "5",
            "--accelerator",
            "cpu",
            "--devices",
            "2",
            "--strategy",
            "ddp",
            "--resume",
            "last.safetensors",
        ],
    )
    assert result.exit_code == 0, result.output
    assert seen[-1] == (
        5,
        TrainerFlags(
            accelerator="cpu",
            devices="2",
            strategy="ddp",
            max_time="00:00:01:00",
            resume=Path("last.safetensors"),
        ),
    )
    with pytest.raises(TypeError):
        trainer_options(gpus=2)


class _Logged(_AdamTiny):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss


def test_a_rerun_into_the_same_folder_replaces_best_and_last(tmp_path):
    """Readers open checkpoints/best.safetensors: a second run must not hide behind best-v1.safetensors."""

    def run(epochs: int) -> _Logged:
        seed_everything(0)
        model = _Logged()
        trainer = make_trainer(
            max_epochs=epochs,
            default_root_dir=tmp_path,
            monitor="train_loss",
            enable_progress_bar=False,
            accelerator="cpu",
        )
        fit(trainer, model, DataLoader(IndexedData(), batch_size=16, shuffle=False))
        return model

    run(1)
    second = run(3)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best.safetensors", "last.safetensors"]
    state, _ = load_checkpoint(tmp_path / "checkpoints" / "last.safetensors")
    assert state["epoch"] == 2  # the second run's
    torch.testing.assert_close(state["state_dict"]["net.weight"], second.net.weight.detach())
