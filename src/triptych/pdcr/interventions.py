"""Interventions do(·): what replaces an input block or an internal activation.

Input-region interventions share one method, ``sample(image, block, n, generator)``,
returning ``n`` replacement contents for the block (a tuple of slices over the spatial
axes); ``stochastic`` says whether draws differ (the estimator takes one draw when not).

- :class:`PatchBank`: natural patches cut from *other* images of the dataset (the
  paper's in-distribution treatment); a block smaller than the bank's patches gets a
  random sub-crop, so one bank serves every block size of a coarse-to-fine run. Saved
  and loaded as safetensors, never pickle.
- :class:`Zero`, :class:`DatasetMean`, :class:`Blur`: deterministic occlusions.

Activation interventions (:class:`ActivationIntervention`) replace a component's
activation with its value on another dataset input (``swap``), its dataset mean
(``mean``) or zero (``zero``); :func:`collect_activations` records those values with
forward hooks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from triptych.core.errors import InputError
from triptych.core.io import write_bytes

Block = tuple[slice, ...]
ACTIVATION_INTERVENTIONS = ("swap", "mean", "zero")


def block_shape(block: Block) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in block)


def apply_block(image: torch.Tensor, block: Block, content: torch.Tensor) -> torch.Tensor:
    """do(x[k] := p) for n contents: image (C, *S), content (n, C, *block) -> (n, C, *S)."""
    out = image.unsqueeze(0).repeat(content.shape[0], *([1] * image.ndim))
    out[(slice(None), slice(None), *block)] = content
    return out


@dataclass
class PatchBank:
    """Natural patches (P, C, *patch) from dataset images other than the explained one."""

    patches: torch.Tensor
    sources: int = 0  # how many images the patches came from
    excluded: str = ""  # name of the explained image that was left out
    name: str = "patch_bank"
    stochastic: bool = True

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(self.patches.shape[2:])

    @classmethod
    def from_images(
        cls,
        images: Sequence[torch.Tensor],
        patch_size: int | Sequence[int] = 8,
        *,
        per_image: int = 100,
        max_patches: int = 10_000,
        exclude: int | None = None,
        excluded_name: str = "",
        seed: int = 0,
    ) -> PatchBank:
        """Cut ``per_image`` random grid cells from each image (C, *S) except index ``exclude`` (the reference's bank)."""
        gen = torch.Generator().manual_seed(seed)
        pool = [im for i, im in enumerate(images) if i != exclude]
        if not pool:
            raise InputError(
                "the patch bank needs at least one image besides the explained one; give a dataset"
            )
        dims = pool[0].ndim - 1
        size = (int(patch_size),) * dims if isinstance(patch_size, int) else tuple(int(p) for p in patch_size)
        patches = []
        for im in pool:
            grid = [s // p for s, p in zip(im.shape[1:], size, strict=True)]
            if min(grid) < 1:
                raise InputError(
                    f"dataset image of shape {tuple(im.shape)} is smaller than the patch size {size}"
                )
            cells = int(np.prod(grid))
            pick = torch.randperm(cells, generator=gen)[: min(per_image, cells)]
            for c in pick.tolist():
                idx = np.unravel_index(c, grid)
                sl = tuple(slice(int(i) * p, (int(i) + 1) * p) for i, p in zip(idx, size, strict=True))
                patches.append(im[(slice(None), *sl)])
        stack = torch.stack(patches)
        if stack.shape[0] > max_patches:
            stack = stack[torch.randperm(stack.shape[0], generator=gen)[:max_patches]]
        return cls(stack.float().contiguous(), sources=len(pool), excluded=excluded_name)

    def sample(self, image: torch.Tensor, block: Block, n: int, generator: torch.Generator) -> torch.Tensor:
        """n patches (with replacement), sub-cropped at random to the block's shape."""
        shape = block_shape(block)
        if any(s > p for s, p in zip(shape, self.patch_size, strict=True)):
            raise InputError(
                f"block {shape} is larger than the patch bank's patches {self.patch_size}; "
                "build the bank with a larger --bank-patch"
            )
        if self.patches.shape[1] != image.shape[0]:
            raise InputError(f"patch bank has {self.patches.shape[1]} channels, the image {image.shape[0]}")
        pick = torch.randint(0, self.patches.shape[0], (n,), generator=generator)
        chosen = self.patches[pick]
        if shape == self.patch_size:
            return chosen
        out = torch.empty((n, chosen.shape[1], *shape), dtype=chosen.dtype)
        for d in range(n):
            off = [
                int(torch.randint(0, p - s + 1, (1,), generator=generator))
                for s, p in zip(shape, self.patch_size, strict=True)
            ]
            out[d] = chosen[(d, slice(None), *(slice(o, o + s) for o, s in zip(off, shape, strict=True)))]
        return out

    def channel_mean(self) -> torch.Tensor:
        """Per-channel mean over the bank, (C,)."""
        return self.patches.transpose(0, 1).reshape(self.patches.shape[1], -1).mean(1)

    def save(self, path: str | Path) -> Path:
        """Write the bank as one safetensors file (reusable across runs; no pickle)."""
        from safetensors.torch import save

        meta = {"format": "triptych-patch-bank/1", "sources": str(self.sources), "excluded": self.excluded}
        return write_bytes(path, save({"patches": self.patches.contiguous()}, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> PatchBank:
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                patches = f.get_tensor("patches")
        except Exception as exc:  # safetensors raises several types for a bad file
            raise InputError(
                f"--bank {path} is not a readable patch bank ({str(exc).splitlines()[0][:80]})"
            ) from None
        if meta.get("format") != "triptych-patch-bank/1":
            raise InputError(f"--bank {path} is a safetensors file but not a triptych patch bank")
        return cls(patches, sources=int(meta.get("sources", 0)), excluded=meta.get("excluded", ""))


@dataclass
class Zero:
    """do(x[k] := 0), the reference's ablation."""

    name: str = "zero"
    stochastic: bool = False

    def sample(self, image: torch.Tensor, block: Block, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.zeros((n, image.shape[0], *block_shape(block)), dtype=image.dtype)


@dataclass
class DatasetMean:
    """do(x[k] := μ), μ the per-channel dataset mean (C,)."""

    mean: torch.Tensor
    name: str = "mean"
    stochastic: bool = False

    def sample(self, image: torch.Tensor, block: Block, n: int, generator: torch.Generator) -> torch.Tensor:
        shape = block_shape(block)
        return self.mean.to(image.dtype).view(1, -1, *([1] * len(shape))).expand(n, -1, *shape).clone()


@dataclass
class Blur:
    """do(x[k] := (G_σ * x)[k]): the block replaced by a Gaussian-blurred copy of itself."""

    sigma: float = 5.0
    name: str = "blur"
    stochastic: bool = False
    _cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def blurred(self, image: torch.Tensor) -> torch.Tensor:
        """G_σ * x for image (C, *S), cached per image (one blur serves every block)."""
        if self._cache is None or self._cache[0] is not image:
            from monai.transforms import GaussianSmooth

            out = GaussianSmooth(sigma=self.sigma)(image)
            self._cache = (image, out.as_tensor() if hasattr(out, "as_tensor") else out)
        return self._cache[1]

    def sample(self, image: torch.Tensor, block: Block, n: int, generator: torch.Generator) -> torch.Tensor:
        part = self.blurred(image)[(slice(None), *block)]
        return part.unsqueeze(0).expand(n, *part.shape).clone()


RegionIntervention = PatchBank | Zero | DatasetMean | Blur


def make_intervention(
    kind: str,
    *,
    dataset: Sequence[torch.Tensor] | None = None,
    exclude: int | None = None,
    bank: str | Path | None = None,
    patch_size: int | Sequence[int] = 8,
    sigma: float = 5.0,
    seed: int = 0,
) -> RegionIntervention:
    """Build a region intervention by name (:data:`triptych.pdcr.registry.INTERVENTIONS`) from a dataset or a bank."""
    from triptych.pdcr.registry import INTERVENTIONS

    return INTERVENTIONS.get(kind)(
        dataset=dataset, exclude=exclude, bank=bank, patch_size=patch_size, sigma=sigma, seed=seed
    )


def zero_intervention(**_: object) -> Zero:
    return Zero()


def blur_intervention(*, sigma: float = 5.0, **_: object) -> Blur:
    return Blur(sigma)


def patch_bank_intervention(
    *,
    dataset: Sequence[torch.Tensor] | None = None,
    exclude: int | None = None,
    bank: str | Path | None = None,
    patch_size: int | Sequence[int] = 8,
    seed: int = 0,
    name: str = "patch_bank",
    **_: object,
) -> PatchBank:
    """A saved bank, or one cut from the dataset without the explained image."""
    if bank is not None:
        return PatchBank.load(bank)
    if dataset:
        return PatchBank.from_images(dataset, patch_size, exclude=exclude, seed=seed)
    raise InputError(f"--intervention {name} needs a dataset (--data) or a saved --bank")


def mean_intervention(**kw: object) -> DatasetMean:
    return DatasetMean(patch_bank_intervention(name="mean", **kw).channel_mean())


# ---------------------------------------------------------------- activation interventions


def _as_tensor(out: object) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    raise InputError(
        f"component output is a {type(out).__name__}, not a tensor; pick a layer that returns one"
    )


def collect_activations(
    model: nn.Module, inputs: torch.Tensor, modules: dict[str, nn.Module]
) -> dict[str, torch.Tensor]:
    """Outputs of ``modules`` (name -> module) on a batch ``inputs`` (K, C, *S): name -> (K, ...)."""
    store: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(_recorder(store, name)) for name, m in modules.items()]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for h in handles:
            h.remove()
    return store


def _recorder(store: dict[str, torch.Tensor], name: str) -> Callable:
    def hook(module: nn.Module, args: tuple, out: object) -> None:
        store[name] = _as_tensor(out).detach().clone()

    return hook


@dataclass
class ActivationIntervention:
    """Replacement values for an activation: ``swap`` (another input's), ``mean`` or ``zero``.

    ``pool`` holds the activation (K, ...) on K dataset inputs other than the explained one.
    """

    kind: str
    pool: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in ACTIVATION_INTERVENTIONS:
            raise InputError(
                f"--intervention {self.kind!r} for components; choose from {', '.join(ACTIVATION_INTERVENTIONS)}"
            )
        if self.kind != "zero" and (self.pool is None or self.pool.shape[0] == 0):
            raise InputError(f"activation intervention {self.kind!r} needs activations from dataset inputs")

    @property
    def stochastic(self) -> bool:
        return self.kind == "swap"

    @property
    def name(self) -> str:
        return self.kind

    def sample(self, like: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        """n replacement activations shaped like ``like`` (1, ...) -> (n, ...)."""
        if self.kind == "zero":
            return torch.zeros((n, *like.shape[1:]), dtype=like.dtype)
        if self.kind == "mean":
            return self.pool.mean(0, keepdim=True).expand(n, *like.shape[1:]).clone()
        pick = torch.randint(0, self.pool.shape[0], (n,), generator=generator)
        return self.pool[pick]


def bank_summary(bank: PatchBank) -> str:
    return json.dumps(
        {
            "patches": int(bank.patches.shape[0]),
            "patch_size": list(bank.patch_size),
            "sources": bank.sources,
            "excluded": bank.excluded,
        }
    )
