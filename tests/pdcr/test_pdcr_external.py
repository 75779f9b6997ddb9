"""Any torch model from the CLI: a ``module:factory`` entry point with weights, or TorchScript, with preprocessing."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from triptych.core.checkpoint import CheckpointError
from triptych.core.errors import InputError
from triptych.pdcr.cli import app
from triptych.pdcr.external import load_torch_model

NETS = """
import torch
from torch import nn


def build(channels: int = 1, width: int = 4):
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(channels, width, 5, padding=2), nn.ReLU(), nn.Conv2d(width, 1, 5, padding=2)
    )


def halve(x):
    return 0.5 * x


def broken():
    raise RuntimeError("no GPU here")


NOT_CALLABLE = 3
"""


@pytest.fixture
def user_net(tmp_path, monkeypatch):
    """A user's module ``usernets_<id>.py`` in the working folder, its weights (different from the factory's
    seeded init) and an image."""
    name = f"usernets_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(NETS))
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(7)
    trained = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 5, padding=2)
    )
    torch.save(trained.state_dict(), tmp_path / "weights.pt")
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    np.save(tmp_path / "im.npy", image)
    return name, trained, tmp_path


def _explain(invoke, tmp_path, out: str, *extra: str):
    args = ["explain", "--image", tmp_path / "im.npy", "--roi", "12,12,8,8", "--out", tmp_path / out]
    args += ["--intervention", "zero", "--block", "4", "--components", "none", *extra]
    return invoke(app, args)


def test_entry_point_with_weights_and_preprocessing_is_the_users_network(user_net):
    name, trained, _ = user_net
    model = load_torch_model(
        f"{name}:build",
        weights="weights.pt",
        activation="sigmoid",
        mean=[0.5],
        std=[0.25],
        preprocess=f"{name}:halve",
    )
    assert model.spec.in_channels == 1 and model.spec.out_channels == 1 and model.spec.activation == "sigmoid"
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected = trained(0.5 * (x - 0.5) / 0.25)  # the loaded weights, after the user's preprocessing
        np.testing.assert_allclose(model(x).numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)
        unloaded = load_torch_model(f"{name}:build", activation="sigmoid")  # the factory's own init
        assert not torch.allclose(unloaded(x), trained(x))


def test_cli_entry_point_and_torchscript_give_the_same_map(user_net, invoke):
    name, trained, tmp_path = user_net
    torch.jit.script(trained).save(str(tmp_path / "scripted.pt"))
    entry = _explain(
        invoke,
        tmp_path,
        "entry",
        "--model",
        f"{name}:build",
        "--weights",
        "weights.pt",
        "--activation",
        "sigmoid",
    )
    assert entry.exit_code == 0, (entry.output, entry.exception)
    script = _explain(invoke, tmp_path, "script", "--model", "scripted.pt", "--activation", "sigmoid")
    assert script.exit_code == 0, (script.output, script.exception)
    from_file = _explain(
        invoke,
        tmp_path,
        "file",
        "--model",
        f"{name}.py:build",
        "--weights",
        "weights.pt",
        "--activation",
        "sigmoid",
    )
    assert from_file.exit_code == 0, (from_file.output, from_file.exception)
    ate = np.load(tmp_path / "entry" / "ate.npy")
    assert np.abs(ate).sum() > 0
    np.testing.assert_allclose(np.load(tmp_path / "script" / "ate.npy"), ate, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "file" / "ate.npy"), ate, atol=1e-5)
    normalised = _explain(
        invoke,
        tmp_path,
        "norm",
        "--model",
        f"{name}:build",
        "--weights",
        "weights.pt",
        "--activation",
        "sigmoid",
        "--mean",
        "0.5",
        "--std",
        "0.25",
    )
    assert normalised.exit_code == 0 and not np.allclose(np.load(tmp_path / "norm" / "ate.npy"), ate)


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (["--model", "{name}"], InputError, "give an entry point 'package.module:function'"),
        (
            ["--model", "no_such_module_xyz:build"],
            InputError,
            "cannot import 'no_such_module_xyz' (ModuleNotFoundError",
        ),
        (["--model", "{name}:missing"], InputError, "has no attribute 'missing'"),
        (["--model", "{name}:NOT_CALLABLE"], InputError, "is a int, not a function or class"),
        (["--model", "{name}:broken"], InputError, "calling it failed (RuntimeError: no GPU here)"),
        (["--model", "{name}:build", "--weights", "im.npy"], InputError, "is not a readable state dict"),
        (["--model", "{name}:build", "--weights", "bad.pt"], CheckpointError, "does not fit this model"),
        (["--model", "{name}:build", "--preprocess", "{name}:nope"], InputError, "--preprocess"),
        (["--model", "{name}:build", "--mean", "0.5"], InputError, "give both mean and std"),
        (
            ["--model", "{name}:build", "--in-channels", "3"],
            InputError,
            "a probe batch (1, 3, 64, 64) failed",
        ),
        (["--model", "notscript.pt"], InputError, "is not a TorchScript file"),
    ],
)
def test_bad_entry_points_are_one_clear_line(user_net, invoke, args, error, message):
    name, _, tmp_path = user_net
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    (tmp_path / "notscript.pt").write_bytes(b"not a zip file")
    result = _explain(
        invoke, tmp_path, "out", *[a.format(name=name) for a in args], "--activation", "sigmoid"
    )
    assert isinstance(result.exception, error), (result.output, result.exception)
    assert message in str(result.exception) and "\n" not in str(result.exception)
    assert not (tmp_path / "out").exists()


def test_model_options_are_checked(user_net, invoke, tiny_unet):
    name, _, tmp_path = user_net
    missing = _explain(invoke, tmp_path, "out", "--model", f"{name}:build")
    assert isinstance(missing.exception, InputError) and "--model needs --activation" in str(
        missing.exception
    )
    neither = _explain(invoke, tmp_path, "out")
    assert isinstance(neither.exception, InputError) and "exactly one of --checkpoint" in str(
        neither.exception
    )
    from triptych.pdcr.models import save_model

    ckpt = save_model(tiny_unet(), tmp_path / "m.safetensors")
    mixed = _explain(invoke, tmp_path, "out", "--checkpoint", ckpt, "--weights", "weights.pt")
    assert isinstance(mixed.exception, InputError) and "go with --model" in str(mixed.exception)
