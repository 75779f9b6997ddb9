"""What two or more of triptych's systems really share.

Nothing here knows about images, molecules or modalities.
"""

from triptych.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from triptych.core.device import choose_device
from triptych.core.errors import InputError, TriptychError
from triptych.core.io import atomic_output_dir, atomic_write
from triptych.core.seed import seed_everything

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
