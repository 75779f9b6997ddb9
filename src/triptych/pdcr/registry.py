"""Registries of PdCR's pluggable parts: outcomes, region interventions, estimators.

Each entry is a name, the ``module:attribute`` of its factory and a one-line help. This
module imports nothing heavy, so the CLI builds its choices and help from it while
``triptych --help`` stays fast; the factory is imported only when built. A new outcome,
intervention or estimator is one :meth:`Registry.register` call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from triptych.core.errors import InputError


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "module:attribute" of the factory
    help: str


class Registry:
    """Name -> factory, for one kind of part (``flag`` names it in errors)."""

    def __init__(self, kind: str, flag: str) -> None:
        self.kind, self.flag = kind, flag
        self._entries: dict[str, Entry] = {}
        self._loaded: dict[str, Callable[..., Any]] = {}

    def register(self, name: str, target: str | Callable[..., Any], help: str = "") -> None:
        """Add ``name``; ``target`` is a factory or its ``"module:attribute"`` path (imported on first use)."""
        if callable(target):
            self._entries[name] = Entry(name, "", help)
            self._loaded[name] = target
        else:
            self._entries[name] = Entry(name, target, help)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def choices(self) -> str:
        """``a, b or c`` for help texts."""
        names = list(self._entries)
        return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"

    def describe(self) -> str:
        """``a (help); b (help)`` for --help."""
        return "; ".join(f"{e.name} ({e.help})" if e.help else e.name for e in self._entries.values())

    def check(self, name: str) -> str:
        if name not in self._entries:
            raise InputError(f"{self.flag} {name!r} is not known; choose a {self.kind} from {self.choices()}")
        return name

    def get(self, name: str) -> Callable[..., Any]:
        """The factory of ``name`` (one clear line if unknown)."""
        self.check(name)
        if name not in self._loaded:
            module, _, attr = self._entries[name].target.partition(":")
            self._loaded[name] = getattr(importlib.import_module(module), attr)
        return self._loaded[name]


OUTCOMES = Registry("outcome", "--outcome")
OUTCOMES.register(
    "dice_gt",
    "triptych.pdcr.roi:dice_gt_outcome",
    "100·Dice of the target class against the ground truth in the RoI, the paper's",
)
OUTCOMES.register(
    "dice_self",
    "triptych.pdcr.roi:dice_self_outcome",
    "100·Dice of the target class against the model's own prediction",
)
OUTCOMES.register(
    "soft_mass", "triptych.pdcr.roi:soft_mass_outcome", "100·mean target-class probability in the RoI"
)
OUTCOMES.register(
    "mean_dice",
    "triptych.pdcr.roi:mean_dice_outcome",
    "multi-class: 100·mean Dice over foreground classes against the ground-truth label map",
)
OUTCOMES.register(
    "mean_dice_self",
    "triptych.pdcr.roi:mean_dice_self_outcome",
    "multi-class: 100·mean Dice over foreground classes against the model's own labels",
)

INTERVENTIONS = Registry("intervention", "--intervention")
INTERVENTIONS.register(
    "patch_bank",
    "triptych.pdcr.interventions:patch_bank_intervention",
    "natural patches of other images, the paper's",
)
INTERVENTIONS.register("zero", "triptych.pdcr.interventions:zero_intervention", "block := 0")
INTERVENTIONS.register("mean", "triptych.pdcr.interventions:mean_intervention", "block := dataset mean")
INTERVENTIONS.register("blur", "triptych.pdcr.interventions:blur_intervention", "block := its Gaussian blur")

ESTIMATORS = Registry("estimator", "--estimator")
ESTIMATORS.register(
    "adaptive",
    "triptych.pdcr.regions:adaptive_estimator",
    "sequential CIs, coarse-to-fine, ATE-bounded zero calls",
)
ESTIMATORS.register("reference", "triptych.pdcr.regions:reference_estimator", "the paper's S=3, N=50, τ=0.02")
