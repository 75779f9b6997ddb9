"""PdCR on a GPU gives the CPU's answer: the same draws, forward passes on the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from triptych.pdcr.components import explain_components
from triptych.pdcr.data import synthetic
from triptych.pdcr.models import build_model
from triptych.pdcr.regions import explain_regions
from triptych.pdcr.roi import RoI

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _setup():
    torch.manual_seed(0)
    model = build_model("unet", spatial_dims=2, in_channels=1, features=(8, 16, 32, 64, 128))
    images = [s.image for s in synthetic(6, 64, spatial_dims=2, seed=0)]
    return model, images, RoI.box(24, 24, 12, 12, (64, 64))


def test_model_outputs_stay_on_the_input_device():
    model, images, _ = _setup()
    x = images[0][None]
    assert model.device == torch.device("cpu")
    assert model(x).device == x.device and model.probabilities(x).device == x.device


@pytest.fixture
def no_tf32():
    """cuDNN convolutions default to TF32 (10-bit mantissa): ATEs then differ from the CPU's by ~0.5 %.

    Full fp32 on the GPU must reproduce the CPU's numbers.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.gpu
@gpu
def test_regions_and_components_on_cuda_match_the_cpu(no_tf32):
    model, images, roi = _setup()
    kwargs = {
        "outcome": "soft_mass",
        "intervention": "patch_bank",
        "dataset": images,
        "exclude": 0,
        "block": 8,
        "seed": 3,
        "show_progress": False,
    }
    cpu = explain_regions(model.eval(), images[0], roi, **kwargs)
    cuda_model = model.to("cuda")
    assert cuda_model.device.type == "cuda"
    cuda = explain_regions(cuda_model, images[0], roi, **kwargs)
    assert cpu.forward_passes == cuda.forward_passes  # the same draws and decisions
    np.testing.assert_allclose(cuda.ate, cpu.ate, atol=1e-4)
    comp_kwargs = {
        "components": "stages",
        "outcome": "soft_mass",
        "intervention": "swap",
        "dataset": images[1:],
        "seed": 0,
    }
    on_cuda = explain_components(cuda_model, images[0], roi, **comp_kwargs)
    on_cpu = explain_components(model.to("cpu"), images[0], roi, **comp_kwargs)
    assert on_cuda.ranking() == on_cpu.ranking()
    np.testing.assert_allclose([r["mean"] for r in on_cuda.rows], [r["mean"] for r in on_cpu.rows], atol=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown where there is no GPU")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error(tmp_path, invoke):
    from triptych.core.errors import InputError
    from triptych.pdcr.cli import app
    from triptych.pdcr.models import save_model

    model, images, _ = _setup()
    ckpt = save_model(model, tmp_path / "m.safetensors")
    np.save(tmp_path / "im.npy", images[0][0].numpy())
    result = invoke(
        app,
        [
            "explain",
            "--checkpoint",
            str(ckpt),
            "--image",
            str(tmp_path / "im.npy"),
            "--roi",
            "24,24,12,12",
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cuda",
        ],
    )
    assert isinstance(result.exception, InputError) and "no CUDA GPU is visible" in str(result.exception)
    assert not (tmp_path / "out").exists()
