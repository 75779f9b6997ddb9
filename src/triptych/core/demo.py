"""The registry behind ``triptych demo``: each system registers one demo step.

A system registers by defining ``triptych/<system>/demo.py`` with a function decorated
by :func:`register_demo`; ``triptych demo`` imports those modules, runs every step on
embedded defaults and links each one's section from ``<out>/index.html``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from triptych.core.report import Section

SYSTEMS = ("pdcr", "matic", "m3jepa")


@dataclass
class DemoStep:
    name: str
    title: str
    run: Callable[[Path], Section]  # writes into the given folder, returns its report section


_REGISTRY: dict[str, DemoStep] = {}


def register_demo(name: str, title: str) -> Callable[[Callable[[Path], Section]], Callable[[Path], Section]]:
    """Decorator: register ``fn(out_dir) -> Section`` as system ``name``'s demo step."""

    def wrap(fn: Callable[[Path], Section]) -> Callable[[Path], Section]:
        _REGISTRY[name] = DemoStep(name, title, fn)
        return fn

    return wrap


def registered_demos() -> list[DemoStep]:
    """Import each system's demo module (if it exists) and return the registered steps."""
    for system in SYSTEMS:
        try:
            importlib.import_module(f"triptych.{system}.demo")
        except ModuleNotFoundError as exc:
            if exc.name not in (f"triptych.{system}", f"triptych.{system}.demo"):
                raise
    return [_REGISTRY[name] for name in SYSTEMS if name in _REGISTRY]
