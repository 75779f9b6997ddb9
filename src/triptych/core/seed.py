"""Seeding and determinism."""

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch Generator seeded the same way.

    With ``deterministic`` torch is asked for deterministic kernels (warn-only, since a
    few CPU ops have no deterministic variant and we would rather run than crash).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (seeds legacy global users, e.g. libraries)
    torch.manual_seed(seed)
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return torch.Generator().manual_seed(seed)
