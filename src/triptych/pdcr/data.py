"""Segmentation data: DRIVE layout, a generic images/masks folder, and embedded synthetic images.

Every sample is an image (C, *S) float32 in [0, 1], a binary mask (*S) (or None) and,
for DRIVE, a field-of-view mask used in metrics. With ``classes`` > 1 (a multi-class,
softmax model) the mask is a label map instead: int64 values 0..classes−1, 0 = background. Images are resized bilinearly and
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

IMAGE_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".bmp",
    ".gif",
    ".npy",
    ".nii",
    ".dcm",
    ".mha",
    ".nrrd",
)
MULTI_SUFFIXES = (".nii.gz",)
MONAI_SUFFIXES = (".nii", ".nii.gz", ".dcm", ".mha", ".nrrd")


@dataclass
class Sample:
    """One image with its ground truth: image (C, *S) in [0,1]; mask (*S) bool, or an int64 label map
    for multi-class data; fov (*S) bool or None."""

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
    if arr.dtype != bool and not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise InputError(f"{name} {path} holds {arr.dtype} values, not numbers; give a numeric image")
    return arr


def _read_any(path: Path, name: str) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        if path.name.lower().endswith(MONAI_SUFFIXES):
            return read_medical(path)[0]
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
        raise InputError(
            f"{name} {path} is not a readable image ({exc.__class__.__name__}); "
            "give a PNG, JPEG, TIFF, GIF, .npy, NIfTI or DICOM file"
        ) from None


def read_medical(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI/DICOM/MHA/NRRD file through MONAI's ``LoadImage``: (array in voxel order, 4×4 affine).

    The array keeps the file's voxel axes (no reorientation), so a map written back with
    the same affine lies on the same voxels.
    """
    from monai.transforms import LoadImage

    data, meta = LoadImage(image_only=False, ensure_channel_first=False, simple_keys=True)(str(path))
    affine = np.asarray(meta.get("original_affine", meta.get("affine", np.eye(4))), dtype=np.float64)
    return np.asarray(data), affine


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
            raise InputError(
                f"{name} {path} has shape {arr.shape}; expected a 3D volume (D,H,W) or (C,D,H,W)"
            )
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise InputError(
            f"{name} {path} has NaN or infinite values (or values too large for float32); give a finite image"
        )
    if str(path).lower().endswith(MONAI_SUFFIXES) and (arr.min() < 0.0 or arr.max() > 1.0):
        # scanner units (HU, MR intensities): min-max to [0, 1], the range the patch bank and models use
        arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-12)
    elif arr.max() > 1.0:
        arr = arr / (255.0 if arr.max() <= 255 else float(arr.max()))
    return torch.from_numpy(np.ascontiguousarray(arr))


def read_mask(path: str | Path, name: str = "--mask") -> np.ndarray:
    """A binary mask file -> bool array (*S); fails on non-binary values."""
    arr = read_array(path, name)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., 0]
    return binary_mask(arr, f"{name} {path}")


def read_labels(path: str | Path, classes: int, name: str = "--mask") -> np.ndarray:
    """A label-map file -> int64 array (*S) with values 0..classes−1 (0/255 masks read as 0/1)."""
    arr = read_array(path, name)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., 0]
    return label_map(arr, classes, f"{name} {path}")


def label_map(arr: np.ndarray, classes: int, name: str) -> np.ndarray:
    """Validate integer labels 0..classes−1 (a 0/255 binary mask counts as 0/1) -> int64."""
    values = np.unique(arr)
    if set(values.tolist()) <= {0, 255}:
        return (arr > 0).astype(np.int64)
    if not np.all(np.equal(np.mod(values, 1), 0)) or values.min() < 0 or values.max() >= classes:
        shown = ", ".join(f"{v:g}" for v in values[:6])
        raise InputError(
            f"{name}: labels must be integers 0..{classes - 1} for a {classes}-class model (found "
            f"{shown}{'...' if values.size > 6 else ''}); give a label map or the right --classes"
        )
    return arr.astype(np.int64)


def read_truth(path: str | Path, classes: int = 1, name: str = "--mask") -> np.ndarray:
    """The ground truth of one image: a binary mask (``classes`` = 1) or a label map (``classes`` > 1)."""
    return read_mask(path, name) if classes <= 1 else read_labels(path, classes, name)


def file_stem(path: Path) -> str:
    """The name without its image suffix, ``.nii.gz`` counted as one suffix."""
    name = path.name
    for suffix in MULTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def image_files(folder: Path) -> list[Path]:
    """Image files of a folder (any format :func:`read_array` reads), sorted by name."""
    return sorted(
        p
        for p in folder.glob("*")
        if p.is_file()
        and not p.name.startswith(".")
        and (p.suffix.lower() in IMAGE_SUFFIXES or p.name.lower().endswith(MULTI_SUFFIXES))
    )


def is_drive(base: Path) -> bool:
    """DRIVE's own marks: a ``1st_manual/`` folder beside ``images/`` holding ``.tif`` images."""
    return (base / "1st_manual").is_dir() and any((base / "images").glob("*.tif"))


def load_drive(root: str | Path, split: str = "training", classes: int = 1) -> list[Sample]:
    """DRIVE layout: ``<root>/<split>/images/*.tif``, ``1st_manual/*.gif``, ``mask/*.gif`` (FOV)."""
    base = Path(root) / split
    images = sorted((base / "images").glob("*.tif"))
    if not images:
        raise InputError(
            f"--data {root}: no DRIVE images in {base / 'images'}; expected <root>/{split}/images/*.tif"
        )
    samples = []
    for path in images:
        stem = path.stem.split("_")[0]
        manual = next(iter(sorted((base / "1st_manual").glob(f"{stem}_manual1.*"))), None)
        fov = next(iter(sorted((base / "mask").glob(f"{stem}_*mask.*"))), None)
        samples.append(
            Sample(
                read_image(path),
                read_truth(manual, classes) if manual else None,
                path.stem,
                read_mask(fov, "--fov") if fov else None,
            )
        )
    return samples


def match_masks(images: Sequence[Path], masks: Sequence[Path], where: str) -> dict[Path, Path]:
    """Image -> mask by stem: the same stem, or the stem plus a suffix after ``_``/``-`` (``a0_mask``).

    Every image needs exactly one mask and every mask one image; otherwise one line names the stems.
    """
    by_stem = {file_stem(m): m for m in masks}
    out: dict[Path, Path] = {}
    for image in images:
        stem = file_stem(image)
        found = (
            [by_stem[stem]]
            if stem in by_stem
            else [m for s, m in by_stem.items() if s.startswith(stem) and s[len(stem)] in "_-."]
        )
        if len(found) > 1:
            raise InputError(
                f"--data {where}: image {image.name} matches several masks "
                f"({', '.join(m.name for m in found[:3])}); keep one per image"
            )
        if found:
            out[image] = found[0]
    missing = [file_stem(i) for i in images if i not in out]
    orphans = sorted(set(masks) - set(out.values()))
    if missing:
        raise InputError(
            f"--data {where}: no mask with the stem of image(s) {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''} in masks/; name each mask <image stem>.<ext>"
        )
    if orphans:
        raise InputError(
            f"--data {where}: mask(s) {', '.join(m.name for m in orphans[:5])} match no image stem "
            "in images/; remove them or name each mask <image stem>.<ext>"
        )
    return out


def load_folder(root: str | Path, spatial_dims: int = 2, classes: int = 1) -> list[Sample]:
    """Generic layout: ``<root>/images/*`` and ``<root>/masks/*`` matched by stem (ISIC, Kvasir, FIVES ...).

    Any format :func:`read_array` reads (PNG, JPEG, TIFF, BMP, GIF, .npy, and NIfTI/DICOM through MONAI).
    Masks are binary, or label maps 0..classes−1 when ``classes`` > 1.
    """
    root = Path(root)
    images = image_files(root / "images")
    if not images:
        raise InputError(
            f"--data {root}: no images in {root / 'images'}; expected images/ and masks/ folders"
        )
    pairs = match_masks(images, image_files(root / "masks"), str(root))
    samples = []
    for path in images:
        image, mask = read_image(path, spatial_dims), read_truth(pairs[path], classes)
        if tuple(image.shape[1:]) != mask.shape:
            raise InputError(
                f"--data {root}: {path.name} is {tuple(image.shape[1:])} but its mask {mask.shape}"
            )
        samples.append(Sample(image, mask, file_stem(path)))
    return samples


def synthetic(
    n: int = 24, size: int = 96, spatial_dims: int = 2, seed: int = 0, noise: float = 0.3, classes: int = 1
) -> list[Sample]:
    """MONAI's synthetic blobs (``create_test_image_2d/3d``): one channel, offline.

    ``classes`` = 1: binary masks; ``classes`` = K > 1: label maps 0..K−1, where each blob's
    class is its brightness (MONAI's ``num_seg_classes`` = K − 1 foreground classes).
    """
    from monai.data.synthetic import create_test_image_2d, create_test_image_3d

    rs = np.random.RandomState(seed)
    samples = []
    for i in range(n):
        if spatial_dims == 2:
            im, seg = create_test_image_2d(
                size,
                size,
                num_objs=6,
                rad_max=max(size // 8, 6),
                rad_min=max(size // 24, 3),
                noise_max=noise,
                num_seg_classes=max(classes - 1, 1),
                random_state=rs,
            )
        else:
            im, seg = create_test_image_3d(
                size,
                size,
                size,
                num_objs=4,
                rad_max=max(size // 5, 4),
                rad_min=max(size // 10, 2),
                noise_max=noise,
                num_seg_classes=max(classes - 1, 1),
                random_state=rs,
            )
        im = (im - im.min()) / max(float(im.max() - im.min()), 1e-6)
        mask = seg > 0 if classes <= 1 else seg.astype(np.int64)
        samples.append(Sample(torch.from_numpy(im.astype(np.float32))[None], mask, f"synthetic_{i:03d}"))
    return samples


def load_dataset(
    source: str,
    split: str = "training",
    *,
    spatial_dims: int = 2,
    seed: int = 0,
    size: int = 96,
    classes: int = 1,
) -> list[Sample]:
    """Samples of one split of ``source``.

    ``source``: ``synthetic``; a DRIVE root (recognised by its ``1st_manual/`` folder and
    ``.tif`` images); a generic split folder ``<root>/{training,test}/{images,masks}/``; or
    an unsplit ``<root>/{images,masks}/`` (training only: it has no test split). A
    ``drive:`` or ``folder:`` prefix, as ``benchmark`` takes, is accepted too. ``classes`` > 1
    reads masks as label maps 0..classes−1 (multi-class models).
    """
    if source == "synthetic":
        return synthetic(
            24 if split == "training" else 8,
            size,
            spatial_dims,
            seed=seed + (0 if split == "training" else 1000),
            classes=classes,
        )
    kind, sep, rest = source.partition(":")
    if sep and kind in ("drive", "folder"):
        source = rest
    root = Path(source)
    if not root.is_dir():
        raise InputError(
            f"--data {source}: not a folder; give a DRIVE root, an images/masks folder or 'synthetic'"
        )
    base = root / split
    if base.is_dir():
        if (sep and kind == "drive") or is_drive(base):
            return load_drive(root, split, classes)
        return load_folder(base, spatial_dims, classes)
    if split == "training" and (root / "images").is_dir():
        return load_folder(root, spatial_dims, classes)
    if (root / "images").is_dir():  # an unsplit folder: its images are training images, never a test split
        raise InputError(
            f"--data {source}: has no {split}/ split; give <root>/training/ and <root>/test/, each "
            "with images/ and masks/"
        )
    raise InputError(
        f"--data {source}: no {split}/images/ or images/ folder; expected "
        "<root>/{training,test}/{images,masks}/ (or the DRIVE layout)"
    )


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
        out = F.interpolate(t, size=size, mode="nearest")[0, 0].numpy()
        return out > 0.5 if m.dtype == bool else out.round().astype(m.dtype)  # label maps keep their labels

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
        return (
            s.image,
            torch.from_numpy(s.mask.astype(np.float32))[None],
            torch.from_numpy(fov.astype(np.float32))[None],
        )
