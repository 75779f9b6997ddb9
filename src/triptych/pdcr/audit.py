"""PdCR at audit scale: explain every RoI of a dataset in one call, sharded per image on Ray.

``audit(checkpoint, data, out)`` plans one shard per image (its RoIs: given boxes, connected
components of the ground truth or of the prediction, or seeded samples) and runs them through
:func:`triptych.core.batch.run_sharded` (one model per Ray worker; ``workers=0`` in this
process). By default all RoIs of an image are explained together by
:func:`~triptych.pdcr.multiroi.explain_rois` on the whole image: every draw serves every RoI
it does not overlap (common random numbers), a sliding-window model recomputes only the tiles
around the perturbed block, and blocks that share no tile with a RoI are exactly 0 for it.
``multi_roi=False`` (or ``estimator="reference"``) explains one RoI at a time with
:func:`~triptych.pdcr.regions.explain_regions`. ``forward_passes``/``seconds``/``tile_passes``
of a RoI explained in a shared run are the run's totals divided by its ``shared_rois``.
It writes into ``out``:

- ``results.parquet`` / ``results.csv``: one row per RoI (image, RoI, class, base outcome,
  blocks by sign and by significance, support radius, locality, forward passes, seconds);
- ``maps/<image>__<roi>.npz``: the RoI's ATE and SE maps, its mask and the window origin;
- ``report.html``: distributions across RoIs, the least local RoIs, per-image aggregated maps.

Every shard is a finished image (``out/shards/<image>.parquet``, the maps travel inside it),
so a killed audit redoes no finished image and a rerun gives the same table. Each RoI's
draws are seeded from (seed, image, RoI), not from the order in which workers meet them.
"""

from __future__ import annotations

import csv
import functools
import io
import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from triptych.core.errors import InputError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from triptych.pdcr.data import Sample
    from triptych.pdcr.interventions import PatchBank
    from triptych.pdcr.models import SegmentationModel

ROI_MODES = ("gt", "pred", "sample")  # or a CSV file of boxes: image,x,y,w,h
TABLE_COLUMNS = (
    "image",
    "roi",
    "roi_kind",
    "roi_box",
    "roi_area",
    "class",
    "outcome",
    "base_outcome",
    "significant_negative",
    "significant_positive",
    "not_significant",
    "called_zero",
    "negative_blocks",
    "positive_blocks",
    "zero_blocks",
    "support_radius",
    "share_within",
    "forward_passes",
    "seconds",
    "shared_rois",
    "tile_passes",
    "maps",
)


@dataclass(frozen=True)
class AuditConfig:
    """How every RoI is explained (defaults: the benchmark's capped adaptive estimator)."""

    rois: str = "gt"  # gt | pred | sample | path of a boxes CSV (image,x,y,w,h)
    rois_per_image: int = 10  # largest N components, or N sampled boxes
    roi_size: int = 12  # side of a sampled box
    outcome: str | None = None  # default: dice_gt where the image has a ground truth, else dice_self
    block: int = 8
    coarse_block: int | None = None  # default 2·block
    estimator: str = "adaptive"
    max_draws: int = 20
    tol: float = 1.0  # Dice points: the adaptive rule stops when the 95% CI half-width is below it
    tau: float = 0.02
    alpha: float = 0.05  # Benjamini–Hochberg level for "significant"
    distance: float = 16.0  # locality: share of |ATE| within this many pixels of the RoI
    quantile: float = 0.9  # support radius: the radius holding this share of |ATE|
    window: int | None = (
        None  # one RoI at a time: side of the window around each RoI (default: the model's patch)
    )
    # All RoIs of an image together (multiroi.explain_rois: every draw serves every RoI it does not
    # overlap, tile-by-tile inference, exact zeros beyond a RoI's tiles), on the whole image with the
    # sequential rule on a flat grid of ``block``. False: one RoI at a time with ``estimator``.
    multi_roi: bool = True
    batch_size: int = 64
    seed: int = 0


# ---------------------------------------------------------------- data


def load_audit_data(data: str, spatial_dims: int = 2) -> list[Sample]:
    """``drive:PATH`` (its test split), ``folder:PATH`` (its test/ split, or images/ + masks/) or a CSV with
    columns image[, mask] (paths relative to the CSV). Image names must be unique."""
    from triptych.pdcr.benchmark import load_split, parse_data
    from triptych.pdcr.data import Sample, load_folder, read_image, read_mask

    if data.lower().endswith(".csv") and not data.startswith(("drive:", "folder:")):
        path = Path(data)
        if not path.is_file():
            raise InputError(
                f"--data {data}: no such CSV; give drive:PATH, folder:PATH or a CSV of image[,mask]"
            )
        rows = _csv_rows(path, "--data", ("image",))
        samples, seen = [], set()
        for row in rows:
            if row["image"] in seen:
                continue  # a CSV may repeat an image, one row per RoI
            seen.add(row["image"])
            image = read_image(path.parent / row["image"], spatial_dims, "--data image")
            mask = read_mask(path.parent / row["mask"], "--data mask") if row.get("mask") else None
            if mask is not None and mask.shape != tuple(image.shape[1:]):
                raise InputError(
                    f"--data {data}: mask {row['mask']} is {mask.shape}, its image {tuple(image.shape[1:])}"
                )
            samples.append(Sample(image, mask, Path(row["image"]).stem))
    else:
        kind, root = parse_data(data)
        if kind == "folder" and not (root / "test" / "images").is_dir():
            samples = load_folder(root)
        else:
            samples = load_split(kind, root, "test")
    names = [s.name for s in samples]
    if len(set(names)) != len(names):
        raise InputError(f"--data {data}: two images share a name; give every image a unique file stem")
    return samples


def _csv_rows(path: Path, name: str, required: Sequence[str]) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"{name} {path}: not a readable CSV ({err.__class__.__name__})") from None
    missing = [c for c in required if not rows or c not in rows[0]]
    if missing:
        raise InputError(
            f"{name} {path}: needs a header with columns {', '.join(required)} and at least one row"
        )
    return rows


def read_boxes(path: str | Path, images: Sequence[str]) -> dict[str, list[list[int]]]:
    """A boxes CSV (image,x,y,w,h; image = the file stem) -> image -> boxes [x, y, w, h]."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--rois {path}: not gt, pred, sample, nor an existing boxes CSV (image,x,y,w,h)")
    boxes: dict[str, list[list[int]]] = {}
    for i, row in enumerate(_csv_rows(path, "--rois", ("image", "x", "y", "w", "h")), start=2):
        stem = Path(row["image"]).stem
        if stem not in images:
            raise InputError(f"--rois {path} line {i}: image {row['image']!r} is not in --data")
        try:
            boxes.setdefault(stem, []).append([int(row[k]) for k in ("x", "y", "w", "h")])
        except ValueError:
            raise InputError(f"--rois {path} line {i}: x, y, w, h must be integers") from None
    return boxes


def shard_id(name: str) -> str:
    """A file-safe shard id for an image name (a CRC keeps two names that clean alike apart)."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80].lstrip(".") or "image"
    return clean if clean == name else f"{clean}-{zlib.crc32(name.encode()):08x}"


def plan_shards(samples: Sequence[Sample], config: AuditConfig) -> list[dict[str, Any]]:
    """One shard per image: its name, and its boxes when they are given."""
    if config.rois not in ROI_MODES:
        boxes = read_boxes(config.rois, [s.name for s in samples])
        return [
            {"id": shard_id(s.name), "image": s.name, "boxes": boxes[s.name]}
            for s in samples
            if s.name in boxes
        ]
    if config.rois == "gt" and not any(s.mask is not None and s.mask.any() for s in samples):
        raise InputError(f"--rois {config.rois}: no image has a non-empty ground truth; use --rois pred")
    return [{"id": shard_id(s.name), "image": s.name} for s in samples]


# ---------------------------------------------------------------- RoIs


def component_rois(mask: np.ndarray, n: int) -> list[np.ndarray]:
    """The ``n`` largest connected components of a binary mask (ties broken by label order)."""
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return []
    areas = np.bincount(labels.ravel())[1:]
    order = np.argsort(-areas, kind="stable")[:n]
    return [labels == (k + 1) for k in order]


def sampled_rois(mask: np.ndarray, n: int, size: int, seed: int) -> list[np.ndarray]:
    """``n`` boxes of side ``size`` centred on seeded random foreground pixels of ``mask``."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return []
    rng = np.random.default_rng(seed)
    h, w = mask.shape
    out = []
    for i in rng.choice(ys.size, size=min(n, ys.size), replace=False):
        y0 = int(np.clip(ys[i] - size // 2, 0, max(h - size, 0)))
        x0 = int(np.clip(xs[i] - size // 2, 0, max(w - size, 0)))
        box = np.zeros_like(mask, dtype=bool)
        box[y0 : y0 + size, x0 : x0 + size] = True
        out.append(box)
    return out


def window_around(shape: Sequence[int], mask: np.ndarray, side: Sequence[int] | None) -> tuple[slice, ...]:
    """The window of ``side`` centred on the RoI's bounding box, inside the image (whole image if None)."""
    if side is None:
        return tuple(slice(0, s) for s in shape)
    idx = np.nonzero(mask)
    start = [
        int(np.clip((int(i.min()) + int(i.max()) + 1) // 2 - p // 2, 0, max(s - p, 0)))
        for i, p, s in zip(idx, side, shape, strict=True)
    ]
    return tuple(slice(a, min(a + p, s)) for a, p, s in zip(start, side, shape, strict=True))


# ---------------------------------------------------------------- one image per shard


def _seed(*parts: Any) -> int:
    """A seed from the audit seed and names: independent of which worker runs the shard, and when."""
    return zlib.crc32("/".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


class AuditWorker:
    """Explains every RoI of one image per call; built once per Ray worker (one model, one dataset)."""

    def __init__(self, model: str | SegmentationModel, data: str, config: dict[str, Any]) -> None:
        from triptych.pdcr.models import load_model

        self.model = load_model(model) if isinstance(model, str | Path) else model
        self.model.eval()
        self.config = AuditConfig(**config)
        self.samples = load_audit_data(data, self.model.spatial_dims)
        self.images = [self.image_of(s) for s in self.samples]
        self.index = {s.name: i for i, s in enumerate(self.samples)}

    def image_of(self, sample: Sample) -> torch.Tensor:
        image = sample.image
        if image.shape[0] != self.model.spec.in_channels and self.model.spec.in_channels == 1:
            image = image.mean(0, keepdim=True)  # as `pdcr explain` does for a grey model
        if image.shape[0] != self.model.spec.in_channels:
            raise InputError(
                f"--data image {sample.name} has {image.shape[0]} channels; the model expects "
                f"{self.model.spec.in_channels}"
            )
        return image

    def rois(
        self, shard: dict[str, Any], sample: Sample, image: torch.Tensor
    ) -> list[tuple[str, np.ndarray]]:
        """(kind, mask) per RoI of the shard's image, deterministic."""
        import torch

        from triptych.pdcr.roi import RoI

        c = self.config
        shape = tuple(image.shape[1:])
        if "boxes" in shard:
            return [
                ("box", RoI.box(*b, shape=shape, name=f"--rois box of {sample.name}").mask)
                for b in shard["boxes"]
            ]
        if c.rois == "pred" or sample.mask is None:
            with torch.no_grad():
                source, kind = self.model.predict(image[None])[0].cpu().numpy(), "pred"
        else:
            source, kind = sample.mask, "gt"
        if sample.fov is not None:
            source = source & sample.fov
        if c.rois == "sample":
            return [
                (f"sample_{kind}", m)
                for m in sampled_rois(source, c.rois_per_image, c.roi_size, _seed(c.seed, sample.name))
            ]
        return [(f"component_{kind}", m) for m in component_rois(source, c.rois_per_image)]

    def bank(self, i: int) -> PatchBank:
        """The paper's bank for image ``i``: natural patches from the other images of the dataset."""
        from triptych.pdcr.interventions import PatchBank

        c = self.config
        one_by_one = not c.multi_roi or c.estimator != "adaptive"
        return PatchBank.from_images(
            self.images,
            (c.coarse_block or 2 * c.block) if c.estimator == "adaptive" and one_by_one else c.block,
            exclude=i,
            excluded_name=self.samples[i].name,
            seed=_seed(c.seed, "bank", self.samples[i].name),
        )

    def explain_together(
        self,
        sample: Sample,
        image: torch.Tensor,
        rois: list[tuple[str, np.ndarray]],
        bank: Any,
        rule: Any,
    ) -> list[tuple[Any, tuple[slice, ...], Any]]:
        """All RoIs of the image in one shared run on the whole image (common random numbers)."""
        from triptych.pdcr.multiroi import explain_rois
        from triptych.pdcr.roi import RoI

        c = self.config
        whole = tuple(slice(0, s) for s in image.shape[1:])
        roi_objs = [RoI(mask, kind) for kind, mask in rois]
        outcome = c.outcome or ("dice_gt" if sample.mask is not None else "dice_self")
        exps = explain_rois(
            self.model,
            image,
            roi_objs,
            intervention=bank,
            outcome=outcome,
            ground_truth=sample.mask,
            block=c.block,
            seed=_seed(c.seed, sample.name, "shared"),
            batch_size=c.batch_size,
            rule=rule,
        )
        return [(roi, whole, exp) for roi, exp in zip(roi_objs, exps, strict=True)]

    def explain_one_by_one(
        self,
        sample: Sample,
        image: torch.Tensor,
        rois: list[tuple[str, np.ndarray]],
        bank: Any,
        rule: Any,
        side: Sequence[int] | None,
        coarse: int,
    ) -> list[tuple[Any, tuple[slice, ...], Any]]:
        """Each RoI on its own, on a window of ``side`` around it, with the configured estimator."""
        from triptych.pdcr.regions import explain_regions
        from triptych.pdcr.roi import RoI

        c = self.config
        out = []
        for r, (kind, mask) in enumerate(rois):
            win = window_around(mask.shape, mask, side)
            roi = RoI(mask[win], kind)
            truth = sample.mask[win] if sample.mask is not None else None
            exp = explain_regions(
                self.model,
                image[(slice(None), *win)].contiguous(),
                roi,
                outcome=c.outcome or ("dice_gt" if truth is not None else "dice_self"),
                ground_truth=truth,
                intervention=bank,
                block=c.block,
                coarse_block=coarse,
                estimator=c.estimator,
                seed=_seed(c.seed, sample.name, r),
                batch_size=c.batch_size,
                tau=c.tau,
                draws=c.max_draws,
                rule=rule,
                show_progress=False,
            )
            out.append((roi, win, exp))
        return out

    def __call__(self, shard: dict[str, Any]) -> pd.DataFrame:
        import pandas as pd

        from triptych.pdcr.analysis import roi_distance, share_within, support_radius
        from triptych.pdcr.estimate import SequentialRule
        from triptych.pdcr.roi import RoI

        c = self.config
        i = self.index[shard["image"]]
        sample, image = self.samples[i], self.images[i]
        coarse = c.coarse_block or 2 * c.block
        side = (c.window,) * self.model.spatial_dims if c.window else self.model.spec.patch_size
        bank = self.bank(i)
        rule = SequentialRule(tau=c.tau, tol=c.tol, max_draws=c.max_draws)
        rois = self.rois(shard, sample, image)
        if c.multi_roi and c.estimator == "adaptive" and rois:
            explained = self.explain_together(sample, image, rois, bank, rule)
        else:
            explained = self.explain_one_by_one(sample, image, rois, bank, rule, side, coarse)
        rows = []
        for r, ((kind, mask), (roi, win, exp)) in enumerate(zip(rois, explained, strict=True)):
            summary = exp.summary()
            dist = roi_distance(roi.mask)
            box = RoI(mask).bounding_box()
            roi_name = f"r{r:03d}"
            share = exp.config.get("rois_shared", 1)  # a shared run's cost, split evenly over its RoIs
            rows.append(
                {
                    "image": sample.name,
                    "roi": roi_name,
                    "roi_kind": kind,
                    "roi_box": ",".join(
                        str(v)
                        for v in (box[-1][0], box[-2][0], box[-1][1] - box[-1][0], box[-2][1] - box[-2][0])
                    ),  # x,y,w,h (2D: last axes)
                    "roi_area": roi.area,
                    "class": int(self.model.spec.target_class),
                    "outcome": summary["outcome"],
                    "base_outcome": exp.base,
                    **exp.significance_counts(c.alpha),
                    "negative_blocks": summary["negative_blocks"],
                    "positive_blocks": summary["positive_blocks"],
                    "zero_blocks": summary["zero_blocks"],
                    "support_radius": support_radius(exp.ate, dist, c.quantile),
                    "share_within": share_within(exp.ate, dist, c.distance),
                    "forward_passes": exp.forward_passes / share,
                    "seconds": exp.seconds / share,
                    "shared_rois": share,
                    "tile_passes": (exp.config.get("tile_passes") or 0) / share,
                    "maps": f"maps/{shard['id']}__{roi_name}.npz",
                    # the maps travel in the shard file, so a Ray cluster needs no shared file system
                    "npz": _npz_bytes(
                        ate=exp.ate.astype(np.float32),
                        se=exp.se.astype(np.float32),
                        roi=roi.mask,
                        origin=np.array([s.start for s in win]),
                    ),
                }
            )
        return pd.DataFrame(rows, columns=[*TABLE_COLUMNS, "npz"])


# ---------------------------------------------------------------- the audit


@dataclass
class AuditResult:
    """The results table, where it was written, and how many images a rerun found done."""

    table: pd.DataFrame
    out: Path
    images: int
    reused: int


def audit(
    model: str | Path | SegmentationModel,
    data: str,
    out: str | Path,
    config: AuditConfig | None = None,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    threads_per_worker: int = 1,
    report: bool = True,
    images: Sequence[str] | None = None,
) -> AuditResult:
    """Explain every RoI of ``data`` with ``model`` (a checkpoint path or a SegmentationModel); see the module doc."""
    from triptych.core.batch import read_shards, run_shards
    from triptych.core.io import atomic_write, write_bytes
    from triptych.pdcr.models import load_model

    config = config or AuditConfig()
    _check_config(config)
    out = Path(out)
    loaded = load_model(model) if isinstance(model, str | Path) else model  # fail here, not in a worker
    samples = load_audit_data(data, loaded.spatial_dims)
    shards = plan_shards(samples, config)
    if images is not None:  # audit these images only (the patch banks still come from all of --data)
        unknown = set(images) - {s.name for s in samples}
        if unknown:
            raise InputError(f"images {sorted(unknown)}: not in --data {data}")
        shards = [s for s in shards if s["image"] in set(images)]
    if not shards:
        raise InputError(f"--rois {config.rois}: no RoI falls on an image of --data {data}")
    source = str(model) if isinstance(model, str | Path) else model
    factory = functools.partial(AuditWorker, source, data, asdict(config))
    results = run_shards(
        factory,
        shards,
        out,
        workers=workers,
        ray_address=ray_address,
        progress_desc="audit images",
        threads_per_worker=threads_per_worker,
    )
    table = read_shards(results)
    if table.empty:
        raise InputError(
            f"--rois {config.rois}: no image of --data {data} yielded a RoI; try --rois pred or sample"
        )
    for path, blob in zip(table["maps"], table["npz"], strict=True):
        write_bytes(out / path, blob)
    table = table.drop(columns="npz")
    table.to_parquet(out / "results.parquet", index=False)
    with atomic_write(out / "results.csv", "w") as handle:
        table.to_csv(handle, index=False)
    if report:
        write_report(table, samples, out, config)
    return AuditResult(table, out, len(shards), sum(r.reused for r in results))


def _check_config(c: AuditConfig) -> None:
    from triptych.pdcr.registry import ESTIMATORS, OUTCOMES

    if c.rois_per_image < 1:
        raise InputError(f"--rois-per-image {c.rois_per_image}: give at least 1")
    if c.roi_size < 1 or c.block < 1:
        raise InputError(f"--roi-size {c.roi_size} / --block {c.block}: give positive sides")
    ESTIMATORS.check(c.estimator)
    if c.outcome is not None:
        OUTCOMES.check(c.outcome)
    if c.max_draws < 1:
        raise InputError(f"--max-draws {c.max_draws}: give at least 1")


# ---------------------------------------------------------------- report

HISTOGRAMS = (
    "base_outcome",
    "significant_negative",
    "significant_positive",
    "support_radius",
    "share_within",
    "forward_passes",
)


def write_report(
    table: pd.DataFrame, samples: Sequence[Sample], out: Path, config: AuditConfig, max_images: int = 12
) -> Path:
    """report.html: distributions across RoIs, the least local RoIs, per-image aggregated ATE maps."""
    from triptych.core.report import Report
    from triptych.pdcr.plots import _plt, ate_overlay

    plt = _plt()
    rep = Report(
        "PdCR audit",
        intro=f"{len(table)} RoIs on {table['image'].nunique()} images; "
        f"{int(table['forward_passes'].sum())} forward passes. Negative ATE: replacing the block "
        "lowered the RoI outcome (the block supported the segmentation).",
    )
    fig, axes = plt.subplots(2, 3, figsize=(11, 6))
    for ax, col in zip(axes.ravel(), HISTOGRAMS, strict=True):
        values = table[col].to_numpy(dtype=float)
        ax.hist(values[np.isfinite(values)], bins=20, color="0.4")
        ax.set_title(col, fontsize=9)
    fig.tight_layout()
    rep.section("Distributions across RoIs").figure(
        fig,
        f"Blocks significant at BH q < {config.alpha}; share_within = share of |ATE| within "
        f"{config.distance:g} px of the RoI; support radius holds {config.quantile:.0%} of |ATE|.",
    )
    plt.close(fig)
    least_local = table.sort_values(["share_within", "image", "roi"], na_position="last").head(10)
    sec = rep.section("RoIs with the most non-local support")
    sec.table(
        least_local[
            [
                "image",
                "roi",
                "roi_kind",
                "roi_box",
                "base_outcome",
                "share_within",
                "support_radius",
                "significant_negative",
                "significant_positive",
                "maps",
            ]
        ].to_dict("records")
    )
    for row in least_local.itertuples():
        sec.link(row.maps, f"{row.image} {row.roi}: ATE/SE maps (NPZ)")
    sec = rep.section("Every RoI")
    sec.text("One link per RoI to its ATE/SE maps (NPZ: ate, se, roi, origin of the window in the image).")
    for row in table.itertuples():
        sec.link(row.maps, f"{row.image} {row.roi} ({row.roi_kind}, box {row.roi_box})")
    sec = rep.section("Per-image aggregated maps")
    sec.text("Mean ATE over the image's RoIs (each RoI's map placed at its window; RoIs outlined).")
    by_name = {s.name: s for s in samples}
    for name in list(dict.fromkeys(table["image"]))[:max_images]:
        sample = by_name[name]
        total = np.zeros(sample.image.shape[1:])
        union = np.zeros(sample.image.shape[1:], dtype=bool)
        rows = table[table["image"] == name]
        for path in rows["maps"]:
            with np.load(out / path) as z:
                win = tuple(
                    slice(int(o), int(o) + n) for o, n in zip(z["origin"], z["ate"].shape, strict=True)
                )
                total[win] += z["ate"]
                union[win] |= z["roi"]
        fig = ate_overlay(sample.image, total / len(rows), union, f"{name}: {len(rows)} RoIs")
        sec.figure(fig, f"{name}")
        plt.close(fig)
    return rep.write(out / "report.html")
