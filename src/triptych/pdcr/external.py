"""Any PyTorch segmentation network, from an entry point or a TorchScript file, with the user's preprocessing.

PdCR explains a :class:`~triptych.pdcr.models.SegmentationModel`. Besides checkpoints of
``triptych pdcr train``, a user's own network comes in two ways:

- an entry point ``module:factory`` (or ``path/to/file.py:factory``) that returns an
  ``nn.Module``, with its weights from a state-dict file (``.pt``/``.pth``/``.safetensors``),
  loaded strictly (a key mismatch is an error, never silently random weights);
- a TorchScript file (``torch.jit.save``), weights included.

Interventions work in image space (values in [0, 1], as read), so the user's preprocessing
(a ``module:function`` on a batch, and/or a per-channel mean/std normalisation) becomes part
of the model's forward pass: the patch bank, zero and blur act on the image, and the network
sees what it was trained on. The output semantics (activation, threshold) are stated, never
guessed.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from triptych.core.errors import InputError
from triptych.pdcr.models import SegmentationModel, _FirstOutput, wrap_model

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript")


@contextlib.contextmanager
def _cwd_on_path() -> Iterator[None]:
    """Import from the current folder too (as ``python -m`` does): ``--model mynets:build`` next to the data."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def resolve_entry_point(text: str, name: str = "--model") -> Callable[..., Any]:
    """``package.module:attribute`` or ``path/to/file.py:attribute`` -> the callable (one clear line if not)."""
    module_name, sep, attr = text.rpartition(":")
    if not sep or not module_name or not attr or not attr.replace(".", "").replace("_", "").isalnum():
        raise InputError(
            f"{name} {text!r}: give an entry point 'package.module:function' (or 'file.py:function')"
        )
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise InputError(f"{name} {text!r}: the file {path} does not exist")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            with _cwd_on_path():
                module = importlib.import_module(module_name)
    except InputError:
        raise
    except Exception as exc:  # the user's module may raise anything while importing
        raise InputError(
            f"{name} {text!r}: cannot import {module_name!r} ({exc.__class__.__name__}: {exc}); "
            "install it or run from the folder that holds it"
        ) from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise InputError(f"{name} {text!r}: {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise InputError(f"{name} {text!r}: {attr!r} is a {type(target).__name__}, not a function or class")
    return target


def read_state_dict(path: str | Path, name: str = "--weights") -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``torch.save`` file (a bare state dict, or one under
    ``state_dict``/``model``); a DataParallel ``module.`` prefix is dropped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{name} {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / safetensors / zip errors
        raise InputError(
            f"{name} {path} is not a readable state dict ({exc.__class__.__name__}); save one with "
            "torch.save(model.state_dict(), path) or safetensors"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{name} {path} holds no state dict (a mapping of parameter names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_network(
    source: str | Path, weights: str | Path | None = None, kwargs: dict[str, Any] | None = None
) -> nn.Module:
    """The user's network: ``module:factory`` called with ``kwargs`` (then ``weights`` loaded strictly), or a
    TorchScript file."""
    from triptych.core.checkpoint import load_state_dict_into

    text = str(source)
    if text.lower().endswith(TORCHSCRIPT_SUFFIXES) and Path(text).is_file():
        if weights is not None:
            raise InputError(
                f"--weights {weights}: a TorchScript file ({text}) carries its own weights; drop --weights"
            )
        try:
            return torch.jit.load(text, map_location="cpu")
        except Exception as exc:  # torch raises RuntimeError/ValueError for non-TorchScript files
            raise InputError(
                f"--model {text} is not a TorchScript file ({exc.__class__.__name__}); save it with "
                "torch.jit.save, or give --model package.module:factory --weights FILE for a state dict"
            ) from None
    factory = resolve_entry_point(text)
    try:
        net = factory(**(kwargs or {}))
    except Exception as exc:  # the user's factory
        raise InputError(f"--model {text}: calling it failed ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(net, nn.Module):
        raise InputError(f"--model {text}: returned a {type(net).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_state_dict_into(net, read_state_dict(weights), weights)
    return net


class Preprocessed(nn.Module):
    """``net(transform((x − mean) / std))``: the user's preprocessing inside the forward pass."""

    def __init__(
        self,
        net: nn.Module,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.net, self.transform = net, transform
        self.register_buffer("mean", None if mean is None else torch.tensor([float(m) for m in mean]))
        self.register_buffer("std", None if std is None else torch.tensor([float(s) for s in std]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)  # per channel
        if self.mean is not None:
            x = x - self.mean.view(shape)
        if self.std is not None:
            x = x / self.std.view(shape)
        if self.transform is not None:
            x = self.transform(x)
        return self.net(x)


def first_conv_channels(net: nn.Module, spatial_dims: int) -> int | None:
    """Input channels of the first convolution kernel (weights (out, in, *k)), or None if none is found."""
    for p in net.parameters():
        if p.ndim == spatial_dims + 2:
            return int(p.shape[1])
    return None


def load_torch_model(
    source: str | Path,
    *,
    activation: Literal["sigmoid", "softmax", "none"],
    weights: str | Path | None = None,
    spatial_dims: int = 2,
    in_channels: int | None = None,
    threshold: float = 0.5,
    target_class: int | None = None,
    emits: Literal["logits", "probabilities"] = "logits",
    preprocess: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    factory_kwargs: dict[str, Any] | None = None,
    probe_size: int | None = None,
) -> SegmentationModel:
    """Any torch segmentation network as a :class:`SegmentationModel`.

    ``source``: ``"package.module:factory"`` / ``"file.py:factory"`` (with ``weights``) or a TorchScript
    file. ``preprocess``: a ``"module:function"`` (or callable) applied to every batch (B, C, *S) of
    [0, 1] images before the network, after the optional per-channel ``mean``/``std`` normalisation.
    ``in_channels`` defaults to the first convolution's; the output channels are read from one probe
    forward pass. ``target_class`` defaults to 1 for a softmax output (0 is the background), else 0.
    """
    if activation not in ("sigmoid", "softmax", "none"):
        raise InputError(
            f"activation={activation!r} (--activation): state the network's output, sigmoid, softmax or "
            "none; it is never guessed"
        )
    if (mean is None) != (std is None):
        raise InputError("give both mean and std (--mean and --std), one value per input channel each")
    if std is not None and any(float(s) <= 0 for s in std):
        raise InputError(f"std={list(std)} (--std): every value must be positive")
    net = load_network(source, weights, factory_kwargs)
    transform = resolve_entry_point(preprocess, "--preprocess") if isinstance(preprocess, str) else preprocess
    if mean is not None or transform is not None:
        net = Preprocessed(net, transform, mean, std)
    channels = (
        in_channels or (len(mean) if mean is not None else None) or first_conv_channels(net, spatial_dims)
    )
    if channels is None:
        raise InputError(f"--model {source}: cannot tell its input channels; give --in-channels")
    if mean is not None and len(mean) != channels:
        raise InputError(
            f"mean/std (--mean, --std) give {len(mean)} values; the network takes {channels} channel(s)"
        )
    side = probe_size or (64 if spatial_dims == 2 else 32)
    try:
        with torch.no_grad():
            was = net.training
            out = net.eval()(torch.zeros((1, channels, *(side,) * spatial_dims)))
            net.train(was)
    except Exception as exc:  # shape errors of the user's network
        raise InputError(
            f"--model {source}: a probe batch (1, {channels}, {', '.join([str(side)] * spatial_dims)}) failed "
            f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:160]}); check --in-channels, "
            "--spatial-dims and --preprocess"
        ) from None
    if isinstance(out, list | tuple):  # deep supervision: the first output is the full-resolution one
        net, out = _FirstOutput(net), out[0]
    if not isinstance(out, torch.Tensor) or out.ndim != spatial_dims + 2:
        raise InputError(
            f"--model {source}: returns {type(out).__name__} {tuple(getattr(out, 'shape', ()))}, not a "
            f"(B, classes, *spatial) tensor for {spatial_dims}D input"
        )
    classes = int(out.shape[1])
    default_class = 1 if activation == "softmax" and classes > 1 else 0
    return wrap_model(
        net,
        spatial_dims=spatial_dims,
        in_channels=channels,
        out_channels=classes,
        emits=emits,
        activation=activation,
        threshold=threshold,
        target_class=default_class if target_class is None else target_class,
    ).eval()
