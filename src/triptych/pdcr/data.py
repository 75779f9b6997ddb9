"""Segmentation data: DRIVE layout, a generic images/masks folder, and embedded synthetic images.

Every sample is an image (C, *S) float32 in [0, 1], a binary mask (*S) (or None) and,
for DRIVE, a field-of-view mask used in metrics. Images are resized bilinearly and
masks with nearest-neighbour interpolation; training uses random patches at the
working resolution (:class:`RandomPatches`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from triptych.core.errors import InputError
from triptych.core.inputs import input_file
from triptych.pdcr.roi import binary_mask

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".npy")


@dataclass
class Sample:
    """One image with its ground truth: image (C, *S) in [0,1]; mask, fov (*S) bool or None."""

    image: torch.Tensor
    mask: np.ndarray | None
    name: str
    fov: np.ndarray | None = None


def read_array(path: str | Path, name: str = "--image") -> np.ndarray:
    """Read an image file (PNG/JPEG/TIFF/GIF/BMP or .npy) into an array; one clear line if unreadable."""
    path = input_file(path, name, "give a PNG, JPEG, TIFF, GIF or .npy file")
    arr = _read_any(path, name)
    if arr.size == 0:
        raise InputError(f"{name} {path} is empty (shape {arr.shape}); give an image with pixels")
    if arr.dtype != bool and not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{name} {path} holds {arr.dtype} values, not numbers; give a numeric image")
    return arr


def _read_any(path: Path, name: str) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            try:
                return tifffile.imread(path)
            except Exception:  # some TIFFs only PIL reads
                pass
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("L") if im.mode in ("P", "1") else im)
    except Exception as exc:  # PIL / tifffile / numpy raise many types for a bad file
        raise InputError(f"{name} {path} is not a readable image ({exc.__class__.__name__}); "
                         "give a PNG, JPEG, TIFF, GIF or .npy file") from None


def read_image(path: str | Path, spatial_dims: int = 2, name: str = "--image") -> torch.Tensor:
    """An image file -> float32 (C, *S) in [0, 1]; 2D images channels-last on disk, .npy volumes (S) or (C, *S)."""
    arr = read_array(path, name)
    if spatial_dims == 2:
        if arr.ndim == 2:
            arr = arr[None]
        elif arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
            arr = np.moveaxis(arr[..., :3] if arr.shape[-1] == 4 else arr, -1, 0)
        elif arr.ndim != 3:
            raise InputError(f"{name} {path} has shape {arr.shape}; expected a 2D image")
    else:
        if arr.ndim == 3:
            arr = arr[None]
        elif arr.ndim != 4:
            raise InputError(f"{name} {path} has shape {arr.shape}; expected a 3D volume (D,H,W) or (C,D,H,W)")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise InputError(f"{name} {path} has NaN or infinite values (or values too large for float32); "
                         "give a finite image")
    if arr.max() > 1.0:
        arr = arr / (255.0 if arr.max() <= 255 else float(arr.max()))
    return torch.from_numpy(np.ascontiguousarray(arr))


def read_mask(path: str | Path, name: str = "--mask") -> np.ndarray:
    """A binary mask file -> bool array (*S); fails on non-binary values."""
    arr = read_array(path, name)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., 0]
    return binary_mask(arr, f"{name} {path}")


def load_drive(root: str | Path, split: str = "training") -> list[Sample]:
    """DRIVE layout: ``<root>/<split>/images/*.tif``, ``1st_manual/*.gif``, ``mask/*.gif`` (FOV)."""
    base = Path(root) / split
    images = sorted((base / "images").glob("*.tif"))
    if not images:
        raise InputError(f"--data {root}: no DRIVE images in {base / 'images'}; expected <root>/{split}/images/*.tif")
    samples = []
    for path in images:
        stem = path.stem.split("_")[0]
        manual = next(iter(sorted((base / "1st_manual").glob(f"{stem}_manual1.*"))), None)
        fov = next(iter(sorted((base / "mask").glob(f"{stem}_*mask.*"))), None)
        samples.append(Sample(read_image(path), read_mask(manual) if manual else None, path.stem,
                              read_mask(fov, "--fov") if fov else None))
    return samples


def load_folder(root: str | Path) -> list[Sample]:
    """Generic layout: ``<root>/images/*`` and ``<root>/masks/*`` with matching stems (ISIC, Kvasir, FIVES ...)."""
    root = Path(root)
    images = sorted(p for p in (root / "images").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise InputError(f"--data {root}: no images in {root / 'images'}; expected images/ and masks/ folders")
    masks = {p.stem: p for p in (root / "masks").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
    samples = []
    for path in images:
        mask_path = masks.get(path.stem) or next((m for s, m in masks.items() if s.startswith(path.stem)), None)
        if mask_path is None:
            raise InputError(f"--data {root}: image {path.name} has no mask with the same stem in masks/")
        image, mask = read_image(path), read_mask(mask_path)
        if tuple(image.shape[1:]) != mask.shape:
            raise InputError(f"--data {root}: {path.name} is {tuple(image.shape[1:])} but its mask {mask.shape}")
        samples.append(Sample(image, mask, path.stem))
    return samples


def synthetic(n: int = 24, size: int = 96, spatial_dims: int = 2, seed: int = 0, noise: float = 0.3) -> list[Sample]:
    """MONAI's synthetic blobs (``create_test_image_2d/3d``): one channel, binary masks, offline."""
    from monai.data.synthetic import create_test_image_2d, create_test_image_3d

    rs = np.random.RandomState(seed)
    samples = []
    for i in range(n):
        if spatial_dims == 2:
            im, seg = create_test_image_2d(size, size, num_objs=6, rad_max=max(size // 8, 6), rad_min=max(size // 24, 3),
                                           noise_max=noise, num_seg_classes=1, random_state=rs)
        else:
            im, seg = create_test_image_3d(size, size, size, num_objs=4, rad_max=max(size // 5, 4),
                                           rad_min=max(size // 10, 2), noise_max=noise, num_seg_classes=1,
                                           random_state=rs)
        im = (im - im.min()) / max(float(im.max() - im.min()), 1e-6)
        samples.append(Sample(torch.from_numpy(im.astype(np.float32))[None], seg > 0, f"synthetic_{i:03d}"))
    return samples


def load_dataset(source: str, split: str = "training", *, spatial_dims: int = 2, seed: int = 0,
                 size: int = 96) -> list[Sample]:
    """``synthetic``, a DRIVE root (has ``<split>/images``), or a generic images/masks folder."""
    if source == "synthetic":
        return synthetic(24 if split == "training" else 8, size, spatial_dims, seed=seed + (0 if split == "training" else 1000))
    root = Path(source)
    if not root.is_dir():
        raise InputError(f"--data {source}: not a folder; give a DRIVE root, an images/masks folder or 'synthetic'")
    if (root / split / "images").is_dir():
        return load_drive(root, split)
    if (root / split / "images").parent.is_dir() and (root / split).is_dir():
        return load_folder(root / split)
    return load_folder(root)


def resize_sample(sample: Sample, size: Sequence[int]) -> Sample:
    """Resize to spatial ``size``: image bilinear (trilinear), masks nearest-neighbour."""
    size = tuple(int(s) for s in size)
    if tuple(sample.image.shape[1:]) == size:
        return sample
    mode = "bilinear" if len(size) == 2 else "trilinear"
    image = F.interpolate(sample.image[None], size=size, mode=mode, align_corners=False)[0]

    def nearest(m: np.ndarray | None) -> np.ndarray | None:
        if m is None:
            return None
        t = torch.from_numpy(m.astype(np.float32))[None, None]
        return F.interpolate(t, size=size, mode="nearest")[0, 0].numpy() > 0.5

    return Sample(image, nearest(sample.mask), sample.name, nearest(sample.fov))


class RandomPatches(Dataset):
    """``length`` random patches (with flips) from the samples, for training at native resolution.

    Item: (image (C, *patch), mask (1, *patch) float).
    """

    def __init__(self, samples: Sequence[Sample], patch: Sequence[int], length: int, seed: int = 0) -> None:
        self.samples, self.patch, self.length = list(samples), tuple(patch), length
        self.rng = np.random.default_rng(seed)  # stateful: fresh patches every epoch (num_workers=0)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self.rng
        s = self.samples[int(rng.integers(len(self.samples)))]
        shape = s.image.shape[1:]
        start = [int(rng.integers(0, max(d - p, 0) + 1)) for d, p in zip(shape, self.patch, strict=True)]
        sl = tuple(slice(a, a + p) for a, p in zip(start, self.patch, strict=True))
        image = s.image[(slice(None), *sl)]
        mask = torch.from_numpy(s.mask[sl].astype(np.float32))[None]
        pad = [x for d in reversed(range(len(shape))) for x in (0, self.patch[d] - image.shape[1 + d])]
        if any(pad):
            image, mask = F.pad(image, pad), F.pad(mask, pad)
        for axis in range(1, 1 + len(shape)):
            if rng.random() < 0.5:
                image, mask = image.flip(axis), mask.flip(axis)
        return image.contiguous(), mask.contiguous()


class WholeImages(Dataset):
    """Whole images for validation: (image (C, *S), mask (1, *S), fov (1, *S)) float."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.samples[i]
        fov = s.fov if s.fov is not None else np.ones(s.mask.shape, dtype=bool)
        return s.image, torch.from_numpy(s.mask.astype(np.float32))[None], torch.from_numpy(fov.astype(np.float32))[None]
