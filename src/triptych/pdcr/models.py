"""Segmentation models with explicit output semantics, and MONAI networks by name.

The reference thresholded every model's output at 0.5 whether it emitted logits or
probabilities. Here a :class:`SegmentationModel` records what its network emits
(``logits`` or ``probabilities``), its output activation (``sigmoid``: independent
channels; ``softmax``: mutually exclusive; ``none``: the raw output is the score) and
the threshold, so probabilities are never guessed.

Matching a network whose prediction is its raw output > 0.5 (as the authors' demo):
``wrap_model(net, ..., activation="none", threshold=0.5)`` or, from the CLI,
``--activation none --threshold 0.5``. Wrapping it as logits would threshold the raw
output at 0 (sigmoid(r) > 0.5 ⇔ r > 0) and explain a different segmentation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from triptych.core.errors import InputError

ARCHITECTURES = ("unet", "attention_unet", "unetpp", "segresnet", "swin_unetr")
MODEL_KIND = "pdcr.segmentation"
ACTIVATIONS = ("sigmoid", "softmax", "none")


@dataclass
class ModelSpec:
    """Everything needed to rebuild a network and read its output."""

    arch: str = "unet"
    spatial_dims: int = 2
    in_channels: int = 3
    out_channels: int = 1
    emits: Literal["logits", "probabilities"] = "logits"
    activation: Literal["sigmoid", "softmax", "none"] = "sigmoid"  # none: the raw output is the score
    threshold: float = 0.5
    target_class: int = 0  # channel whose probability is the segmentation explained
    features: tuple[int, ...] = (16, 32, 64, 128, 256)
    patch_size: tuple[int, ...] | None = None  # sliding-window inference when set
    input_size: tuple[int, ...] | None = None  # images are resized to this when set (trained resized)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.features = tuple(int(f) for f in self.features)
        if self.patch_size is not None:
            self.patch_size = tuple(int(p) for p in self.patch_size)
        if self.input_size is not None:
            self.input_size = tuple(int(p) for p in self.input_size)
        if self.arch not in ARCHITECTURES:
            raise InputError(f"--arch {self.arch!r} is not known; choose from {', '.join(ARCHITECTURES)}")
        if self.spatial_dims not in (2, 3):
            raise InputError(f"spatial_dims={self.spatial_dims}: only 2D and 3D networks are supported")
        if self.emits not in ("logits", "probabilities"):
            raise InputError(f"emits={self.emits!r}: use 'logits' or 'probabilities'")
        if self.activation not in ACTIVATIONS:
            raise InputError(f"--activation {self.activation!r}: use one of {', '.join(ACTIVATIONS)}")
        if self.activation == "softmax" and self.out_channels < 2:
            # softmax over one channel is identically 1: the reference's zero-loss defect
            raise InputError("activation='softmax' needs out_channels >= 2; use 'sigmoid' for one channel")
        if not 0 <= self.target_class < self.out_channels:
            raise InputError(f"target_class={self.target_class} is outside 0..{self.out_channels - 1}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["features"] = list(self.features)
        d["patch_size"] = list(self.patch_size) if self.patch_size else None
        d["input_size"] = list(self.input_size) if self.input_size else None
        return d


class _FirstOutput(nn.Module):
    """Unwrap networks that return a list of outputs (UNet++), keeping the full-resolution one."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out[0] if isinstance(out, list | tuple) else out


def build_network(spec: ModelSpec) -> nn.Module:
    """A MONAI network for ``spec``: input (B, in_channels, *spatial) -> (B, out_channels, *spatial)."""
    from monai.networks import nets

    d, cin, cout, feats = spec.spatial_dims, spec.in_channels, spec.out_channels, spec.features
    strides = (2,) * (len(feats) - 1)
    if spec.arch == "unet":
        return nets.UNet(
            d,
            cin,
            cout,
            channels=feats,
            strides=strides,
            num_res_units=int(spec.extra.get("num_res_units", 2)),
            norm=spec.extra.get("norm", "INSTANCE"),
        )
    if spec.arch == "attention_unet":
        return nets.AttentionUnet(d, cin, cout, channels=feats, strides=strides)
    if spec.arch == "unetpp":
        six = (*feats[:5], feats[0]) if len(feats) >= 5 else (32, 32, 64, 128, 256, 32)
        return _FirstOutput(
            nets.BasicUNetPlusPlus(spatial_dims=d, in_channels=cin, out_channels=cout, features=six)
        )
    if spec.arch == "segresnet":
        return nets.SegResNet(spatial_dims=d, init_filters=feats[0], in_channels=cin, out_channels=cout)
    return nets.SwinUNETR(
        in_channels=cin,
        out_channels=cout,
        spatial_dims=d,
        feature_size=int(spec.extra.get("feature_size", 12)),
    )


class SegmentationModel(nn.Module):
    """A network plus the semantics of its output.

    ``forward`` returns the raw network output (B, C, *spatial); ``probabilities`` maps
    it to probabilities using the recorded ``emits``/``activation``, with sliding-window
    inference when the model was trained on patches.

    Move the model with ``.to("cuda")``: inputs go to the network's device and outputs come
    back on the input's device, so explainers keep images, masks and outcomes on the CPU
    while the forward passes (almost all of PdCR's time) run on the GPU.
    """

    def __init__(self, net: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.net = net
        self.spec = spec

    @property
    def spatial_dims(self) -> int:
        return self.spec.spatial_dims

    @property
    def threshold(self) -> float:
        return self.spec.threshold

    @property
    def device(self) -> torch.device:
        """Where the network's weights are (the CPU for a network without parameters)."""
        weight = next(self.net.parameters(), None)
        return weight.device if weight is not None else torch.device("cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(self.device)).to(x.device)

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        patch = self.spec.patch_size
        on = x.to(self.device)
        if patch is not None and any(s > p for s, p in zip(x.shape[2:], patch, strict=True)):
            from monai.inferers import sliding_window_inference

            out = sliding_window_inference(
                on, patch, sw_batch_size=32, predictor=self.net, overlap=0.25, mode="gaussian"
            )
        else:
            out = self.net(on)
        return out.to(x.device)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, C, *spatial) for a batch (B, in_channels, *spatial)."""
        if x.ndim != self.spec.spatial_dims + 2:
            raise InputError(
                f"model input must have {self.spec.spatial_dims + 2} dims (B, C, *spatial), got {tuple(x.shape)}"
            )
        out = self._raw(x)
        if (
            out.shape[0] != x.shape[0]
            or tuple(out.shape[2:]) != tuple(x.shape[2:])
            or out.shape[1] != self.spec.out_channels
        ):
            raise InputError(
                f"model output shape {tuple(out.shape)} does not match its input {tuple(x.shape)} "
                f"with {self.spec.out_channels} output channel(s); check the network and --arch"
            )
        return self.activate(out)

    def activate(self, out: torch.Tensor) -> torch.Tensor:
        """The recorded output activation on a raw output (B, C, *spatial)."""
        if self.spec.emits == "probabilities" or self.spec.activation == "none":
            return out
        return torch.sigmoid(out) if self.spec.activation == "sigmoid" else torch.softmax(out, dim=1)

    def target_probability(self, x: torch.Tensor) -> torch.Tensor:
        """Probability of the target class, (B, *spatial)."""
        return self.probabilities(x)[:, self.spec.target_class]

    def binarise(self, prob: torch.Tensor) -> torch.Tensor:
        """Scores (B, C, *spatial) -> target-class mask (B, *spatial): score > threshold, or argmax for softmax."""
        if self.spec.activation == "softmax":
            return prob.argmax(dim=1) == self.spec.target_class
        return prob[:, self.spec.target_class] > self.spec.threshold

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Binary mask of the target class, (B, *spatial)."""
        return self.binarise(self.probabilities(x))

    @property
    def classes(self) -> int:
        """Mutually exclusive classes of a softmax model (background 0 included); 1 for sigmoid/none outputs."""
        return self.spec.out_channels if self.spec.activation == "softmax" else 1

    def labels(self, prob: torch.Tensor) -> torch.Tensor:
        """Scores (B, C, *spatial) of a softmax model -> predicted label map (B, *spatial), argmax over classes."""
        return prob.argmax(dim=1)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluation mode inside the block; every sub-module gets its own mode back afterwards
    (a caller's partly frozen model stays partly frozen)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def in_eval_mode(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: run ``fn(model, ...)`` under :func:`eval_mode` of its first argument."""
    import functools

    @functools.wraps(fn)
    def wrapper(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        with eval_mode(model):
            return fn(model, *args, **kwargs)

    return wrapper


def build_model(
    arch: str = "unet",
    *,
    spatial_dims: int = 2,
    in_channels: int = 3,
    out_channels: int = 1,
    features: Sequence[int] = (16, 32, 64, 128, 256),
    **kwargs: Any,
) -> SegmentationModel:
    """A fresh (untrained) :class:`SegmentationModel` of a named MONAI architecture."""
    spec = ModelSpec(
        arch=arch,
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        features=tuple(features),
        **kwargs,
    )
    return SegmentationModel(build_network(spec), spec)


def wrap_model(
    net: nn.Module,
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    emits: Literal["logits", "probabilities"] = "logits",
    activation: Literal["sigmoid", "softmax", "none"] = "sigmoid",
    threshold: float = 0.5,
    target_class: int = 0,
) -> SegmentationModel:
    """Wrap any PyTorch segmentation network; its output semantics must be stated, not guessed.

    ``activation="none"`` with ``threshold=t``: the prediction is raw output > t (no sigmoid).
    """
    spec = ModelSpec(
        arch="unet",
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        emits=emits,
        activation=activation,
        threshold=threshold,
        target_class=target_class,
        extra={"custom": type(net).__name__},
    )
    return SegmentationModel(net, spec)


def with_output(
    model: SegmentationModel,
    activation: str | None = None,
    threshold: float | None = None,
    target_class: int | None = None,
) -> SegmentationModel:
    """The same network with its output activation, threshold and/or explained class replaced (None keeps the
    model's). ``target_class`` picks the channel a multi-class model's RoI outcome is about (0 = background
    for a softmax model)."""
    from dataclasses import replace

    if activation is None and threshold is None and target_class is None:
        return model
    if target_class is not None and not 0 <= int(target_class) < model.spec.out_channels:
        raise InputError(
            f"target_class={target_class} is outside 0..{model.spec.out_channels - 1}: the model has "
            f"{model.spec.out_channels} output channel(s)"
        )
    spec = replace(
        model.spec,
        activation=activation or model.spec.activation,
        threshold=model.spec.threshold if threshold is None else float(threshold),
        target_class=model.spec.target_class if target_class is None else int(target_class),
    )
    return SegmentationModel(model.net, spec).train(model.training)


def spec_from_dict(d: dict[str, Any]) -> ModelSpec:
    d = dict(d)
    d["features"] = tuple(d.get("features") or (16, 32, 64, 128, 256))
    d["patch_size"] = tuple(d["patch_size"]) if d.get("patch_size") else None
    d["input_size"] = tuple(d["input_size"]) if d.get("input_size") else None
    return ModelSpec(**{k: v for k, v in d.items() if k in ModelSpec.__dataclass_fields__})


def load_model(path: str | Path) -> SegmentationModel:
    """Load a :class:`SegmentationModel` from a ``triptych pdcr train`` checkpoint (safetensors)."""
    from triptych.core.checkpoint import load_state_dict_into, rebuilding
    from triptych.core.training import load_module_state

    path = Path(path)
    if not path.is_file():
        raise InputError(f"--checkpoint {path} does not exist; train one with `triptych pdcr train`")
    state, hparams = load_module_state(path, kind=MODEL_KIND)
    with rebuilding(path):
        spec = spec_from_dict(hparams["spec"])
        model = SegmentationModel(build_network(spec), spec)
        net_state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    load_state_dict_into(model, net_state, path)
    return model.eval()


def save_model(model: SegmentationModel, path: str | Path) -> Path:
    """Save a MONAI-built :class:`SegmentationModel` as a checkpoint that :func:`load_model` reads."""
    from triptych.core.checkpoint import save_checkpoint

    if model.spec.extra.get("custom"):
        raise InputError(
            "only networks built by name (build_model) can be saved and rebuilt from a checkpoint"
        )
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    hparams = {"spec": model.spec.to_dict(), "kind": MODEL_KIND}
    return save_checkpoint(
        path, {"state_dict": state, "hyper_parameters": hparams}, kind=MODEL_KIND, config=hparams
    )
