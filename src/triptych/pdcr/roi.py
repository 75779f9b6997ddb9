"""The region of interest (RoI) and the outcomes M(x) measured on it.

A RoI is a boolean mask over the image's spatial axes, made from a box, a mask or a
pixel and validated against the image. Outcomes map the model's probabilities for a
batch of (perturbed) images to one number per image:

- ``dice_gt``:   M(x) = 100 · Dice(ŷ(x)[R], y[R]), y the ground truth (the paper's);
- ``dice_self``: the same with y = ŷ(x₀), the model's own unperturbed prediction, so M(x₀) = 100;
- ``soft_mass``: M(x) = 100 · mean_{i∈R} p_target(x)_i, the soft probability mass in R
  (×100 so that it is on the Dice-point scale the dead zone τ is stated in);
- ``mean_dice`` / ``mean_dice_self`` (multi-class softmax models): M(x) = 100 · mean over the
  foreground classes c = 1..K−1 of Dice(ŷ(x)[R] = c, y[R] = c), against the ground-truth label
  map or the model's own unperturbed labels.

For a multi-class model ``dice_gt`` / ``dice_self`` / ``soft_mass`` are about one class, the
model's target class (``target_class=`` / ``--target-class``); a ground truth is then a label map
and the reference is its pixels of that class.

Dice of two empty sets is 1 (perfect agreement) by default; the reference's 0 is
available (``empty_dice=0``, ``--empty-dice 0``) to reproduce its numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from triptych.core.errors import InputError


@dataclass(frozen=True)
class RoI:
    """A region of interest: ``mask`` is a boolean array of the image's spatial shape."""

    mask: np.ndarray
    description: str = "mask"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mask.shape)

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def bounding_box(self) -> tuple[tuple[int, int], ...]:
        """Per axis (first, last+1) of the RoI."""
        idx = np.nonzero(self.mask)
        return tuple((int(i.min()), int(i.max()) + 1) for i in idx)

    def tensor(self) -> torch.Tensor:
        return torch.from_numpy(self.mask)

    @classmethod
    def box(cls, x: int, y: int, w: int, h: int, shape: Sequence[int], name: str = "--roi") -> RoI:
        """A 2D box: columns x..x+w, rows y..y+h of an image of spatial ``shape`` (H, W)."""
        return cls.box_nd((y, x), (h, w), shape, name=name, text=f"box x={x} y={y} w={w} h={h}")

    @classmethod
    def box_nd(
        cls,
        start: Sequence[int],
        size: Sequence[int],
        shape: Sequence[int],
        name: str = "--roi",
        text: str | None = None,
    ) -> RoI:
        """A box in array-axis order (start and size per spatial axis), 2D or 3D."""
        shape = tuple(int(s) for s in shape)
        if len(start) != len(shape) or len(size) != len(shape):
            raise InputError(
                f"{name}: a box for a {len(shape)}D image needs {len(shape)} starts and {len(shape)} sizes"
            )
        if any(int(s) <= 0 for s in size):
            raise InputError(f"{name}: the box has zero area (size {tuple(size)}); give positive widths")
        for a, (s0, n, lim) in enumerate(zip(start, size, shape, strict=True)):
            if s0 < 0 or s0 + n > lim:
                raise InputError(
                    f"{name}: the box leaves the image on axis {a} ({s0}..{s0 + n} vs size {lim}); "
                    "move or shrink it"
                )
        mask = np.zeros(shape, dtype=bool)
        mask[tuple(slice(int(s0), int(s0) + int(n)) for s0, n in zip(start, size, strict=True))] = True
        return cls(mask, text or f"box start={tuple(start)} size={tuple(size)}")

    @classmethod
    def pixel(cls, x: int, y: int, shape: Sequence[int], name: str = "--roi") -> RoI:
        """A single pixel at column x, row y."""
        return cls.box(x, y, 1, 1, shape, name=name)

    @classmethod
    def from_mask(
        cls, mask: np.ndarray | torch.Tensor, shape: Sequence[int], name: str = "--roi-mask"
    ) -> RoI:
        """A RoI from a binary mask of the image's spatial shape (values 0/1 or 0/255 or bool)."""
        mask = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask)
        if tuple(mask.shape) != tuple(shape):
            raise InputError(
                f"{name}: mask shape {tuple(mask.shape)} differs from the image's {tuple(shape)}"
            )
        return cls(binary_mask(mask, name), "mask")

    @classmethod
    def parse(cls, text: str, shape: Sequence[int], name: str = "--roi") -> RoI:
        """``x,y,w,h`` (2D), ``x,y`` (a pixel) or ``a,b,c,da,db,dc`` (3D, array-axis order)."""
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise InputError(
                f"{name} {text!r}: give integers 'x,y,w,h' (2D), 'x,y' (pixel) or 6 for 3D"
            ) from None
        if len(shape) == 2 and len(values) == 4:
            return cls.box(*values, shape=shape, name=name)
        if len(shape) == 2 and len(values) == 2:
            return cls.pixel(*values, shape=shape, name=name)
        if len(shape) == 3 and len(values) == 6:
            return cls.box_nd(values[:3], values[3:], shape, name=name)
        raise InputError(
            f"{name} {text!r}: a {len(shape)}D image needs {'x,y,w,h or x,y' if len(shape) == 2 else '6 values'}"
        )


def binary_mask(mask: np.ndarray, name: str) -> np.ndarray:
    """Validate a binary mask (bool, {0,1} or {0,255}) and return it as bool."""
    values = np.unique(mask)
    if mask.dtype == bool:
        return mask
    if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
        shown = ", ".join(str(v) for v in values[:5])
        raise InputError(
            f"{name}: the mask is not binary (values {shown}{'...' if values.size > 5 else ''}); "
            "give a 0/1 or 0/255 mask"
        )
    return mask > 0


def dice(a: torch.Tensor, b: torch.Tensor, empty: float = 1.0) -> torch.Tensor:
    """Dice(a, b) = 2|a∩b| / (|a|+|b|) over the last axis of boolean (B, n) tensors; ``empty`` when both are empty
    (1 here, 0 in the reference)."""
    a, b = a.float(), b.float()
    inter = (a * b).sum(-1)
    total = a.sum(-1) + b.sum(-1)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1e-12), torch.full_like(total, float(empty)))


Binarise = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class RoIDice:
    """M(x) = 100 · Dice(ŷ(x)[R], y[R]) for probabilities (B, C, *spatial) -> (B,)."""

    roi: torch.Tensor  # bool, spatial shape
    reference: torch.Tensor  # bool, spatial shape: ground truth or ŷ(x₀)
    binarise: Binarise  # probabilities (B, C, *S) -> bool (B, *S)
    name: str = "dice_gt"
    empty: float = 1.0  # Dice of two empty sets (the reference: 0)

    def __call__(self, prob: torch.Tensor) -> torch.Tensor:
        pred = self.binarise(prob)[:, self.roi]
        ref = self.reference.to(pred.device)[self.roi].expand_as(pred)
        return 100.0 * dice(pred, ref, self.empty)


@dataclass
class SoftMass:
    """M(x) = 100 · mean_{i∈R} p_c(x)_i for probabilities (B, C, *spatial) -> (B,)."""

    roi: torch.Tensor
    target_class: int = 0
    name: str = "soft_mass"

    def __call__(self, prob: torch.Tensor) -> torch.Tensor:
        return 100.0 * prob[:, self.target_class][:, self.roi].mean(-1)


@dataclass
class MeanDice:
    """M(x) = 100 · mean_{c=1..K−1} Dice(ŷ(x)[R] = c, y[R] = c) for softmax probabilities (B, K, *S) -> (B,).

    Every foreground class counts, so a class absent from both the prediction and the reference in R
    scores ``empty`` (1: agreement) and a class that a perturbation makes appear there scores 0.
    """

    roi: torch.Tensor  # bool, spatial shape
    reference: torch.Tensor  # int64 label map, spatial shape: ground truth or the model's own labels
    classes: int  # K, background (0) included
    name: str = "mean_dice"
    empty: float = 1.0

    def __call__(self, prob: torch.Tensor) -> torch.Tensor:
        pred = prob.argmax(dim=1)[:, self.roi]  # (B, n)
        ref = self.reference.to(pred.device)[self.roi].expand_as(pred)
        per_class = [dice(pred == c, ref == c, self.empty) for c in range(1, self.classes)]
        return 100.0 * torch.stack(per_class).mean(0)


Outcome = RoIDice | SoftMass | MeanDice


def make_outcome(
    kind: str,
    model,
    image: torch.Tensor,
    roi: RoI,
    ground_truth: np.ndarray | torch.Tensor | None = None,
    empty_dice: float = 1.0,
    target_class: int | None = None,
) -> Outcome:
    """Build outcome ``kind`` (a name in :data:`triptych.pdcr.registry.OUTCOMES`) for ``model`` on ``image`` (C, *S).

    ``empty_dice``: the Dice of an empty prediction against an empty reference in the RoI
    (1: perfect agreement; 0: the reference implementation's value). ``target_class``: the class a
    per-class outcome is about (default: the model's, see :func:`~triptych.pdcr.models.with_output`).
    """
    from triptych.pdcr.models import with_output
    from triptych.pdcr.registry import OUTCOMES

    factory = OUTCOMES.get(kind)
    model = with_output(model, target_class=target_class)
    if empty_dice not in (0, 1):
        raise InputError(
            f"--empty-dice {empty_dice}: give 1 (ours: two empty sets agree) or 0 (the paper's code)"
        )
    if tuple(image.shape[1:]) != roi.shape:
        raise InputError(
            f"RoI shape {roi.shape} differs from the image's spatial shape {tuple(image.shape[1:])}"
        )
    return factory(model, image, roi, ground_truth, float(empty_dice))


def soft_mass_outcome(model, image: torch.Tensor, roi: RoI, ground_truth, empty_dice: float) -> SoftMass:
    return SoftMass(roi.tensor(), model.spec.target_class)


def truth_array(ground_truth, roi: RoI, kind: str) -> np.ndarray:
    """The ground truth as an array of the RoI's shape (one clear line when missing or misshapen)."""
    if ground_truth is None:
        raise InputError(
            f"--outcome {kind} needs a ground-truth --mask; give one or use --outcome "
            f"{'mean_dice_self' if kind.startswith('mean') else 'dice_self'}"
        )
    gt = np.asarray(ground_truth.cpu() if isinstance(ground_truth, torch.Tensor) else ground_truth)
    if tuple(gt.shape) != roi.shape:
        raise InputError(f"--mask shape {tuple(gt.shape)} differs from the image's {roi.shape}")
    return gt


def class_reference(model, gt: np.ndarray) -> np.ndarray:
    """The target class's pixels of a ground truth: a binary mask, or a softmax model's label map == class."""
    if model.classes <= 1:
        return binary_mask(gt, "--mask")
    from triptych.pdcr.data import label_map

    return label_map(gt, model.classes, "--mask") == model.spec.target_class


def dice_gt_outcome(model, image: torch.Tensor, roi: RoI, ground_truth, empty_dice: float) -> RoIDice:
    gt = class_reference(model, truth_array(ground_truth, roi, "dice_gt"))
    return RoIDice(roi.tensor(), torch.from_numpy(gt), model.binarise, "dice_gt", empty_dice)


def _softmax_classes(model, kind: str) -> int:
    if model.classes < 2:
        raise InputError(
            f"--outcome {kind} needs a multi-class softmax model (2 or more output channels); "
            "for a one-channel model use dice_gt or dice_self"
        )
    return model.classes


def mean_dice_outcome(model, image: torch.Tensor, roi: RoI, ground_truth, empty_dice: float) -> MeanDice:
    from triptych.pdcr.data import label_map

    k = _softmax_classes(model, "mean_dice")
    gt = label_map(truth_array(ground_truth, roi, "mean_dice"), k, "--mask")
    return MeanDice(roi.tensor(), torch.from_numpy(gt), k, "mean_dice", empty_dice)


def mean_dice_self_outcome(model, image: torch.Tensor, roi: RoI, ground_truth, empty_dice: float) -> MeanDice:
    from triptych.pdcr.models import eval_mode

    k = _softmax_classes(model, "mean_dice_self")
    with torch.no_grad(), eval_mode(model):
        own = model.labels(model.probabilities(image[None]))[0].cpu()
    return MeanDice(roi.tensor(), own, k, "mean_dice_self", empty_dice)


def dice_self_outcome(model, image: torch.Tensor, roi: RoI, ground_truth, empty_dice: float) -> RoIDice:
    from triptych.pdcr.models import eval_mode

    with torch.no_grad(), eval_mode(model):
        own = model.predict(image[None])[0].cpu()
    return RoIDice(roi.tensor(), own, model.binarise, "dice_self", empty_dice)


@dataclass(frozen=True)
class RoIEntry:
    """One line of a coordinate file: the image stem (None: the one image given), top-left row and column."""

    stem: str | None
    row: int
    col: int

    @property
    def name(self) -> str:
        return f"{self.stem + '_' if self.stem else ''}r{self.row}_c{self.col}"

    def roi(self, size: int, shape: Sequence[int], name: str = "--roi-file") -> RoI:
        """The ``size``×``size`` box with its top-left corner at (row, col); x = column, as ``--roi``."""
        return RoI.box(self.col, self.row, size, size, shape, name=f"{name} ({self.name})")


@dataclass(frozen=True)
class RoIFile:
    """The authors' coordinate file: one RoI per line as (image stem, row, column) of its top-left corner."""

    entries: tuple[RoIEntry, ...]
    roi_size: int | None  # from the file name (``..._roi32...``), unless given as an option
    block: int | None  # from the file name (``..._block8...``)


def _from_name(pattern: str, name: str) -> int | None:
    import re

    m = re.search(pattern, name, flags=re.IGNORECASE)
    return int(m.group(1)) if m else None


def read_roi_file(path, roi_size: int | None = None, block: int | None = None) -> RoIFile:
    """Parse a coordinate file: lines ``stem,row,col`` or ``row,col`` (commas, tabs or spaces; ``#`` comments;
    a header line is skipped). Row and column are the RoI's top-left corner, row first, as the authors
    write them. The RoI side and block side come from the options, else from the file name
    (``coords_block8_roi32.txt``)."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise InputError(f"--roi-file {path} does not exist")
    entries = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        fields = [f for f in text.replace(",", " ").replace(";", " ").split() if f]
        try:
            nums = [int(float(f)) for f in fields[-2:]]
        except ValueError:
            if not entries:  # a header line
                continue
            raise InputError(
                f"--roi-file {path}: line {number} {line.strip()!r} is not 'stem,row,col' or 'row,col'"
            ) from None
        if len(fields) not in (2, 3) or len(nums) != 2:
            raise InputError(
                f"--roi-file {path}: line {number} {line.strip()!r} is not 'stem,row,col' or 'row,col'"
            )
        stem = fields[0] if len(fields) == 3 else None
        entries.append(RoIEntry(stem, nums[0], nums[1]))
    if not entries:
        raise InputError(f"--roi-file {path} lists no RoI; give one 'stem,row,col' per line")
    size = roi_size or _from_name(r"roi[_-]?(\d+)", path.stem)
    blk = block or _from_name(r"(?:block|patch)[_-]?(\d+)", path.stem)
    if size is None:
        raise InputError(
            f"--roi-file {path}: the RoI side is neither in the file name (e.g. coords_roi32.txt) "
            "nor given; add --roi-size"
        )
    return RoIFile(tuple(entries), int(size), blk)
