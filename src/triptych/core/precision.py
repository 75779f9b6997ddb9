"""Whether a device computes bfloat16 in hardware: the one test behind every ``--precision auto``."""

from __future__ import annotations


def native_bf16(device: str) -> bool:
    """Whether ``device`` is a CPU with bf16 arithmetic in hardware (AMX tiles or AVX512-BF16).

    Elsewhere bf16 autocast is emulated and slower than fp32, so ``"auto"`` keeps fp32 there
    (and on GPUs, where we have not measured it).
    """
    import torch

    if torch.device(device).type != "cpu":
        return False
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # a torch without these probes: assume not
        return False
