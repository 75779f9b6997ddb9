"""The Lightning trainer factory shared by every system's ``train`` command.

Scale-out is Lightning's: ``--accelerator``, ``--devices``, ``--strategy`` (``ddp`` for
several processes or nodes), ``--precision`` and ``--max-time`` pass straight through,
and ``--resume`` continues from a checkpoint. Checkpoints go through
:class:`SafetensorsCheckpointIO`, so even resumable training state is stored without
pickle.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import lightning as L
import typer
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from triptych.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

LIGHTNING_KIND = "lightning"


class SafetensorsCheckpointIO(CheckpointIO):
    """Lightning checkpoint I/O through :func:`save_checkpoint` instead of ``torch.save``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        # A module that declares ``kind`` in its hyper-parameters gets checkpoints of that kind,
        # so that a MATIC checkpoint handed to PdCR fails at once with a clear line.
        save_checkpoint(path, checkpoint, kind=str(hparams.get("kind", LIGHTNING_KIND)), config=hparams)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: Any = None) -> dict[str, Any]:
        state, _ = load_checkpoint(path)
        return state

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        Path(path).unlink(missing_ok=True)


class SafetensorsModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose files end in ``.safetensors``."""

    FILE_EXTENSION = ".safetensors"


@dataclass
class TrainerFlags:
    """The scale-out flags every ``train`` command accepts."""

    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    max_time: str | None = None
    resume: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# Typer option types, so each system's CLI declares the same flags the same way.
AcceleratorOpt = Annotated[str, typer.Option(help="cpu, gpu, mps or auto.")]
DevicesOpt = Annotated[str, typer.Option(help="Number of devices/processes, a list like '0,1', or auto.")]
StrategyOpt = Annotated[str, typer.Option(help="auto, ddp (several processes or nodes), ddp_spawn, fsdp ...")]
PrecisionOpt = Annotated[str, typer.Option(help="32-true, 16-mixed, bf16-mixed ...")]
MaxTimeOpt = Annotated[str | None, typer.Option(help="Stop after this long, DD:HH:MM:SS (e.g. 00:00:15:00).")]
ResumeOpt = Annotated[Path | None, typer.Option(help="Continue from this training checkpoint (.safetensors).")]

_FLAG_OPTIONS: dict[str, tuple[Any, Any]] = {
    "accelerator": (AcceleratorOpt, "auto"),
    "devices": (DevicesOpt, "auto"),
    "strategy": (StrategyOpt, "auto"),
    "precision": (PrecisionOpt, "32-true"),
    "max_time": (MaxTimeOpt, None),
    "resume": (ResumeOpt, None),
}


def trainer_options(**defaults: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a Typer command the six scale-out options, handed to it as one ``flags: TrainerFlags``.

    Every system's ``train`` command takes the same flags; declaring them once keeps their
    names and help identical across the CLI. ``defaults`` overrides a flag's default
    (e.g. ``max_time="00:00:20:00"``).
    """
    unknown = set(defaults) - set(_FLAG_OPTIONS)
    if unknown:
        raise TypeError(f"unknown trainer options {sorted(unknown)}")

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(command, eval_str=True)  # Typer reads the signature we publish: resolve it now
        if "flags" not in sig.parameters:
            raise TypeError(f"{command.__name__} must take a `flags: TrainerFlags` parameter")
        params = [p for p in sig.parameters.values() if p.name != "flags"]
        params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                     default=defaults.get(name, default))
                   for name, (annotation, default) in _FLAG_OPTIONS.items()]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            flags = TrainerFlags(**{name: kwargs.pop(name, defaults.get(name, default))
                                    for name, (_, default) in _FLAG_OPTIONS.items()})
            return command(*args, flags=flags, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # inspect must not look past the published signature
        return wrapper

    return decorate


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
    ckpt = SafetensorsModelCheckpoint(
        dirpath=Path(default_root_dir) / "checkpoints",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        save_last=True,
        every_n_epochs=every_n_epochs,
        filename="best" if monitor else "epoch{epoch}",
        auto_insert_metric_name=False,
        # a rerun into the same folder replaces best/last: readers (benchmarks, the README's commands)
        # open checkpoints/best.safetensors, and Lightning's best-v1 would leave them on the old run
        enable_version_counter=False,
    )
    all_callbacks: list[L.Callback] = [ckpt, *(callbacks or [])]
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
        raise CheckpointError(f"checkpoint {path} is corrupt: it lacks a state_dict or hyper_parameters mapping; "
                              "re-train or re-export it")
    return state_dict, dict(hparams)


def fit(trainer: L.Trainer, module: L.LightningModule, *args: Any, resume: Path | None = None, **kwargs: Any) -> None:
    """``trainer.fit`` that resumes from ``resume`` when given."""
    trainer.fit(module, *args, ckpt_path=str(resume) if resume else None, **kwargs)
