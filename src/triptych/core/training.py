"""The Lightning trainer factory shared by every system's ``train`` command.

Scale-out is Lightning's: ``--accelerator``, ``--devices``, ``--strategy`` (``ddp`` for
several processes or nodes), ``--precision`` and ``--max-time`` pass straight through,
and ``--resume`` continues from a checkpoint. Checkpoints go through
:class:`SafetensorsCheckpointIO`, so even resumable training state is stored without
pickle.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from triptych.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

# The flags and their Typer options live in a light module (CLI modules import them at top level);
# re-exported here so library code keeps importing everything training-related from one place.
from triptych.core.trainer_flags import (  # noqa: F401
    AcceleratorOpt,
    DevicesOpt,
    MaxTimeOpt,
    PrecisionOpt,
    ResumeOpt,
    StrategyOpt,
    TrainerFlags,
    trainer_options,
)

LIGHTNING_KIND = "lightning"


class _WithoutInterruptLine(logging.Filter):
    """Drop Lightning's "Detected KeyboardInterrupt" line: the CLI prints one line with the resume command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Detected KeyboardInterrupt" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_WithoutInterruptLine())


class SafetensorsCheckpointIO(CheckpointIO):
    """Lightning checkpoint I/O through :func:`save_checkpoint` instead of ``torch.save``."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        # A module that declares ``kind`` in its hyper-parameters gets checkpoints of that kind,
        # so that a MATIC checkpoint handed to PdCR fails at once with a clear line.
        save_checkpoint(path, checkpoint, kind=str(hparams.get("kind", LIGHTNING_KIND)), config=hparams)

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: Any = None
    ) -> dict[str, Any]:
        state, _ = load_checkpoint(path)
        return state

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        Path(path).unlink(missing_ok=True)


class SafetensorsModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose files end in ``.safetensors``."""

    FILE_EXTENSION = ".safetensors"


def _devices(value: str) -> int | str | list[int]:
    if value == "auto":
        return "auto"
    if "," in value:
        return [int(v) for v in value.split(",") if v]
    return int(value)


def make_trainer(
    flags: TrainerFlags | None = None,
    *,
    max_epochs: int = 100,
    default_root_dir: str | os.PathLike = "runs",
    monitor: str | None = "val_loss",
    mode: str = "min",
    patience: int | None = None,
    callbacks: list[L.Callback] | None = None,
    enable_progress_bar: bool = True,
    every_n_epochs: int = 1,
    **kwargs: Any,
) -> L.Trainer:
    """Build a Trainer with safetensors checkpoints, the best and the last kept.

    ``monitor`` selects the best checkpoint (and early stopping when ``patience`` is
    given); ``None`` keeps only the last.
    """
    flags = flags or TrainerFlags()
    dirpath = Path(default_root_dir) / "checkpoints"
    ckpt = SafetensorsModelCheckpoint(
        dirpath=dirpath,
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        # Lightning rewrites "last" only in an epoch that also saved a top-k checkpoint, i.e. when the
        # monitored value improved; with a monitor, a second callback below writes it every epoch instead
        save_last=not monitor,
        every_n_epochs=every_n_epochs,
        filename="best" if monitor else "epoch{epoch}",
        auto_insert_metric_name=False,
        # a rerun into the same folder replaces best/last: readers (benchmarks, the README's commands)
        # open checkpoints/best.safetensors, and Lightning's best-v1 would leave them on the old run
        enable_version_counter=False,
    )
    all_callbacks: list[L.Callback] = [ckpt]
    if monitor:
        # no monitor: saved every epoch, replacing the previous one, so --resume loses no epoch
        all_callbacks.append(
            SafetensorsModelCheckpoint(
                dirpath=dirpath,
                monitor=None,
                save_top_k=1,
                filename="last",
                every_n_epochs=every_n_epochs,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            )
        )
    all_callbacks += callbacks or []
    if monitor and patience:
        all_callbacks.append(L.pytorch.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=patience))
    options: dict[str, Any] = {
        "accelerator": flags.accelerator,
        "devices": _devices(flags.devices),
        "strategy": flags.strategy,
        "precision": flags.precision,
        "max_time": flags.max_time,
        "max_epochs": max_epochs,
        "default_root_dir": str(default_root_dir),
        "callbacks": all_callbacks,
        "plugins": [SafetensorsCheckpointIO()],
        "enable_progress_bar": enable_progress_bar,
        "logger": False,
        "enable_model_summary": False,
    }
    # explicit keyword arguments win over the flags (tests and benchmarks pin accelerator="cpu")
    return L.Trainer(**{**options, **flags.extra, **kwargs})


def best_checkpoint(trainer: L.Trainer) -> Path | None:
    """Path of the best (or, with no monitor, the last) checkpoint the trainer wrote."""
    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint):
            path = cb.best_model_path or cb.last_model_path
            return Path(path) if path else None
    return None


def load_module_state(path: str | os.PathLike, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state_dict, hyper_parameters)`` of a training checkpoint of ``kind``, for inference."""
    state, _ = load_checkpoint(path, kind=kind)
    state_dict, hparams = state.get("state_dict"), state.get("hyper_parameters") or {}
    if not isinstance(state_dict, dict) or not isinstance(hparams, dict):
        raise CheckpointError(
            f"checkpoint {path} is corrupt: it lacks a state_dict or hyper_parameters mapping; "
            "re-train or re-export it"
        )
    return state_dict, dict(hparams)


def fit(
    trainer: L.Trainer, module: L.LightningModule, *args: Any, resume: Path | None = None, **kwargs: Any
) -> None:
    """``trainer.fit`` that resumes from ``resume`` when given."""
    trainer.fit(module, *args, ckpt_path=str(resume) if resume else None, **kwargs)
