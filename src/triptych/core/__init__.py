"""What two or more of triptych's systems really share.

Nothing here knows about images, molecules or modalities.

The names below are loaded on first use (PEP 562): ``import triptych.core`` must not
import torch, because every CLI module imports from this package and ``triptych --help``
must stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the submodule that defines it
_EXPORTS = {
    "CheckpointError": "triptych.core.checkpoint",
    "InputError": "triptych.core.errors",
    "TriptychError": "triptych.core.errors",
    "atomic_output_dir": "triptych.core.io",
    "atomic_write": "triptych.core.io",
    "choose_device": "triptych.core.device",
    "load_checkpoint": "triptych.core.checkpoint",
    "save_checkpoint": "triptych.core.checkpoint",
    "seed_everything": "triptych.core.seed",
}

__all__ = [
    "CheckpointError",
    "InputError",
    "TriptychError",
    "atomic_output_dir",
    "atomic_write",
    "choose_device",
    "load_checkpoint",
    "save_checkpoint",
    "seed_everything",
]

if TYPE_CHECKING:  # static tools see the real imports
    from triptych.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from triptych.core.device import choose_device
    from triptych.core.errors import InputError, TriptychError
    from triptych.core.io import atomic_output_dir, atomic_write
    from triptych.core.seed import seed_everything


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'triptych.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
