"""The scale-out flags every ``train`` command accepts, as a dataclass and as Typer options.

Kept apart from :mod:`triptych.core.training` (which imports Lightning and torch) so that
each system's ``cli.py`` can declare its ``train`` options without paying for those imports:
``triptych --help`` must stay fast.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer


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
ResumeOpt = Annotated[
    Path | None,
    typer.Option(
        help="Continue from this training checkpoint (.safetensors), e.g. OUT.partial/checkpoints/last.safetensors "
        "of an interrupted run."
    ),
]

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
        sig = inspect.signature(
            command, eval_str=True
        )  # Typer reads the signature we publish: resolve it now
        if "flags" not in sig.parameters:
            raise TypeError(f"{command.__name__} must take a `flags: TrainerFlags` parameter")
        params = [p for p in sig.parameters.values() if p.name != "flags"]
        params += [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=annotation,
                default=defaults.get(name, default),
            )
            for name, (annotation, default) in _FLAG_OPTIONS.items()
        ]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            flags = TrainerFlags(
                **{
                    name: kwargs.pop(name, defaults.get(name, default))
                    for name, (_, default) in _FLAG_OPTIONS.items()
                }
            )
            return command(*args, flags=flags, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # inspect must not look past the published signature
        return wrapper

    return decorate
