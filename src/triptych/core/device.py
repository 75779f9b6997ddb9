"""Device choice: cuda, then mps, then cpu, unless the user names one."""

import torch

from triptych.core.errors import InputError


def choose_device(preference: str = "auto") -> torch.device:
    """Return the device to run on; ``preference`` is auto, cpu, cuda, cuda:N or mps."""
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(preference)
    except RuntimeError as exc:
        raise InputError(f"--device {preference!r} is not a device; use auto, cpu, cuda or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"--device {preference!r} asked for CUDA but no CUDA GPU is visible; use --device cpu"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {preference!r} asked for MPS but it is not available; use --device cpu")
    return device
