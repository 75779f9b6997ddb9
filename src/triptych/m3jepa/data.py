"""Image-caption and image-label datasets, read from common layouts, with clear errors.

An :class:`ImageCaptions` holds image ids (file names relative to an image folder), all
captions, and for each caption the row of its image (``caption_image``), which is the
caption -> image mapping that retrieval evaluation needs (an image may have several
captions). Supported layouts, chosen by :func:`load_dataset` from a ``KIND:PATH`` spec:

- ``flickr8k:DIR``  ``DIR/captions.csv`` (``image,caption``), ``DIR/images/``, ``DIR/split_{train,dev,test}.txt``;
- ``captions:FILE`` a CSV (``image,caption[,split]``) or JSON (list of ``{"image", "caption"}`` or
  ``{"image", "captions": [...]}``) file; images beside it, or in ``images/`` beside it;
- ``coco:FILE``     the Karpathy split file ``dataset_coco.json`` (``images[]`` with ``filepath``, ``filename``,
                    ``split`` and ``sentences[].raw``; train + restval → train, val → dev, test → test, the
                    standard 5k test images), or plain COCO caption JSON (``images[].file_name``,
                    ``annotations[].image_id/caption``; no splits); images under ``DIR/<filepath>/`` where DIR
                    is ``images/`` beside the file if present, else the file's folder;
- ``karpathy:FILE`` any Karpathy split file (``dataset_coco.json``, ``dataset_flickr30k.json``, ...);
- ``labels:DIR``    an image-label folder ``DIR/<label>/<image>`` (or ``DIR/<split>/<label>/<image>``); the
                    label text is the caption;
- ``audio:FILE``    an audio-caption CSV (``audio,caption[,split]``) of WAV files beside it or in ``audio/``
                    beside it: the same structure with ``modality == "audio"`` (``images`` holds the clips);
- ``shapes[:N]``    the embedded default: N procedurally rendered coloured shapes with template captions.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from triptych.core.errors import InputError
from triptych.core.inputs import input_file, open_text, read_json, read_text

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLITS = ("train", "dev", "test")
CAPTION_HINT = "give a CSV (image,caption[,split]) or JSON caption file"


@dataclass
class ImageCaptions:
    """Images (ids relative to ``root``) and captions; ``caption_image[j]`` is caption j's image row."""

    name: str
    root: Path | None
    images: list[str]
    captions: list[str]
    caption_image: np.ndarray
    splits: dict[str, list[str]] = field(default_factory=dict)
    labels: list[str] | None = None  # for image-label data: the class names, one caption each
    modality: str = "image"  # what ``images`` holds: image files, or audio clips ("audio")

    def __post_init__(self) -> None:
        self.caption_image = np.asarray(self.caption_image, dtype=np.int64)

    @property
    def caption_ids(self) -> list[str]:
        """Stable caption ids ``<image>#<k>``, k counting that image's captions from 0."""
        seen: dict[int, int] = {}
        out = []
        for row in self.caption_image.tolist():
            out.append(f"{self.images[row]}#{seen.get(row, 0)}")
            seen[row] = seen.get(row, 0) + 1
        return out

    def image_path(self, i: int) -> Path:
        return self.root / self.images[i]

    def load_image(self, i: int) -> Any:
        """Image ``i`` as an RGB PIL image; an InputError names the file if it cannot be read."""
        return read_image(self.image_path(i))

    def load_item(self, i: int) -> Any:
        """Item ``i`` of the non-text modality: an RGB PIL image, or a mono 16 kHz float32 waveform."""
        return read_audio(self.image_path(i)) if self.modality == "audio" else self.load_image(i)

    def subset(self, split: str) -> ImageCaptions:
        """Only the images of ``split`` (in the split file's order) and their captions."""
        if split not in self.splits:
            raise InputError(
                f"dataset {self.name}: no split {split!r}; it has {sorted(self.splits) or 'none'}"
            )
        return self.select(self.splits[split], name=f"{self.name}:{split}")

    def select(self, image_ids: Sequence[str], name: str | None = None) -> ImageCaptions:
        """The given images (in this order) and all their captions."""
        row_of = {img: i for i, img in enumerate(self.images)}
        missing = [img for img in image_ids if img not in row_of]
        if missing:
            raise InputError(
                f"dataset {self.name}: image {missing[0]!r} (of {len(missing)}) is listed in a split "
                "but has no caption; fix the split file or the captions file"
            )
        new_row = np.full(len(self.images), -1, dtype=np.int64)
        new_row[[row_of[img] for img in image_ids]] = np.arange(len(image_ids))
        keep = new_row[self.caption_image] >= 0
        kept = set(image_ids)
        splits = {s: [img for img in ids if img in kept] for s, ids in self.splits.items()}
        return ImageCaptions(
            name or self.name,
            self.root,
            list(image_ids),
            [c for c, k in zip(self.captions, keep, strict=True) if k],
            new_row[self.caption_image[keep]],
            {s: v for s, v in splits.items() if v},
            self.labels,
            self.modality,
        )

    def check_files(self) -> None:
        """Raise an InputError naming the first image file that does not exist."""
        for i in range(len(self.images)):
            if not self.image_path(i).is_file():
                raise InputError(
                    f"dataset {self.name}: {self.modality} file {self.image_path(i)} does not exist; "
                    f"fix the {self.modality} column or put the file there"
                )

    def to_json(self) -> dict[str, Any]:
        root = str(Path(self.root).resolve()) if self.root is not None else None
        record = {
            "name": self.name,
            "root": root,
            "images": self.images,
            "captions": self.captions,
            "caption_ids": self.caption_ids,
            "caption_image": self.caption_image.tolist(),
            "splits": self.splits,
            "labels": self.labels,
        }
        if self.modality != "image":  # image caches written before this field keep their exact record
            record["modality"] = self.modality
        return record

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ImageCaptions:
        root = Path(obj["root"]) if obj.get("root") else None
        return cls(
            obj["name"],
            root,
            obj["images"],
            obj["captions"],
            np.asarray(obj["caption_image"]),
            obj.get("splits", {}),
            obj.get("labels"),
            obj.get("modality", "image"),
        )


def read_image(path: str | os.PathLike) -> Any:
    """Open an image as RGB; a missing or unreadable file is an InputError that names it."""
    from PIL import Image

    path = input_file(path, "image file", "fix the image column or put the file there")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (
        Exception
    ) as exc:  # PIL raises many types for a bad file (OSError, SyntaxError, DecompressionBomb...)
        raise InputError(
            f"image file {path} cannot be read as an image ({type(exc).__name__}); replace or remove it"
        ) from None


AUDIO_RATE = 16000  # what Whisper's feature extractor expects


def read_audio(path: str | os.PathLike, sampling_rate: int = AUDIO_RATE) -> np.ndarray:
    """A WAV file as a mono float32 waveform in [-1, 1] at ``sampling_rate`` (channels averaged, resampled)."""
    from math import gcd

    from scipy.io import wavfile
    from scipy.signal import resample_poly

    path = input_file(path, "audio file", "fix the audio column or put the file there")
    try:
        rate, wave = wavfile.read(path)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(
            f"audio file {path} cannot be read as a WAV file ({type(exc).__name__}); "
            "convert it to WAV (PCM or float) or remove it"
        ) from None
    if np.issubdtype(wave.dtype, np.integer):  # PCM: scale by the type's full range (uint8 is offset)
        info = np.iinfo(wave.dtype)
        wave = (wave.astype(np.float64) - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)
    wave = wave.astype(np.float64)
    if wave.ndim == 2:
        wave = wave.mean(1)
    if rate != sampling_rate:
        g = gcd(int(rate), sampling_rate)
        wave = resample_poly(wave, sampling_rate // g, int(rate) // g)
    return wave.astype(np.float32)


def _from_pairs(
    name: str,
    root: Path,
    pairs: Sequence[tuple[str, str]],
    source: str,
    splits: dict[str, list[str]] | None = None,
    modality: str = "image",
) -> ImageCaptions:
    """Build a dataset from (image, caption) pairs, images in order of first appearance."""
    row_of: dict[str, int] = {}
    captions, caption_image = [], []
    for n, (image, caption) in enumerate(pairs, start=1):
        image = str(image).strip()
        caption = "" if caption is None else str(caption).strip()
        if not image:
            raise InputError(f"{source}: entry {n} has no {modality} name; fill it in or remove the entry")
        if not caption:
            raise InputError(
                f"{source}: entry {n} ({modality} {image!r}) has an empty caption; write one or remove it"
            )
        captions.append(caption)
        caption_image.append(row_of.setdefault(image, len(row_of)))
    if not captions:
        raise InputError(f"{source}: no image-caption pairs found; it needs columns/keys image and caption")
    data = ImageCaptions(
        name, root, list(row_of), captions, np.asarray(caption_image), splits or {}, modality=modality
    )
    data.check_files()
    return data


def _image_root(file: Path) -> Path:
    return file.parent / "images" if (file.parent / "images").is_dir() else file.parent


def read_caption_table(file: str | os.PathLike, image_root: str | os.PathLike | None = None) -> ImageCaptions:
    """A CSV (``image,caption[,split]``) or JSON caption file; several captions per image allowed."""
    file = input_file(file, "caption file", CAPTION_HINT)
    root = Path(image_root) if image_root else _image_root(file)
    if file.suffix.lower() == ".json":
        obj = read_json(file, "caption file", CAPTION_HINT)
        if _is_karpathy(obj) or isinstance(obj, dict) and "annotations" in obj and "images" in obj:
            return read_coco(file, image_root)
        if not isinstance(obj, list):
            raise InputError(f"{file}: expected a list of {{image, caption}} objects or COCO caption JSON")
        pairs = []
        for n, entry in enumerate(obj, start=1):
            if not isinstance(entry, dict):
                raise InputError(
                    f"{file}: entry {n} is a {type(entry).__name__}, not an {{image, caption}} object; "
                    "fix or remove it"
                )
            caps = entry.get("captions", [entry.get("caption")])
            pairs += [(entry.get("image", ""), c) for c in (caps if isinstance(caps, list) else [caps])]
        return _from_pairs(file.stem, root, pairs, str(file))
    rows, splits = _read_csv_table(file, "image")
    return _from_pairs(file.stem, root, [(r["image"], r["caption"]) for r in rows], str(file), splits)


def _read_csv_table(file: Path, item: str) -> tuple[list[dict[str, str]], dict[str, list[str]]]:
    """Rows of an ``<item>,caption[,split]`` CSV, and the items of each named split (first-seen order)."""
    with open_text(file, "caption file", CAPTION_HINT, newline="") as handle:
        reader = csv.DictReader(handle, restval="")  # a short row's missing fields are empty, not None
        try:
            if reader.fieldnames is None or not {item, "caption"} <= set(reader.fieldnames):
                raise InputError(
                    f"{file}: needs a header with columns {item},caption (found {reader.fieldnames})"
                )
            rows = list(reader)
        except csv.Error as exc:
            raise InputError(f"{file}: not a valid CSV ({exc}); fix the file") from None
    splits: dict[str, list[str]] = {}
    for row in rows:
        if row.get("split"):
            splits.setdefault(row["split"].strip(), []).append((row[item] or "").strip())
    return rows, {s: list(dict.fromkeys(v)) for s, v in splits.items()}


def read_audio_table(file: str | os.PathLike, audio_root: str | os.PathLike | None = None) -> ImageCaptions:
    """An audio-caption CSV (``audio,caption[,split]``) of WAV files; several captions per clip allowed."""
    file = input_file(file, "caption file", CAPTION_HINT)
    root = (
        Path(audio_root)
        if audio_root
        else (file.parent / "audio" if (file.parent / "audio").is_dir() else file.parent)
    )
    rows, splits = _read_csv_table(file, "audio")
    return _from_pairs(
        file.stem, root, [(r["audio"] or "", r["caption"]) for r in rows], str(file), splits, "audio"
    )


# Karpathy's split names -> ours; "restval" (the 30k COCO val images outside the 5k val/test) trains
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "dev", "test": "test"}


def _is_karpathy(obj: Any) -> bool:
    images = obj.get("images") if isinstance(obj, dict) else None
    return (
        isinstance(images, list) and bool(images) and isinstance(images[0], dict) and "sentences" in images[0]
    )


def read_karpathy(file: str | os.PathLike, image_root: str | os.PathLike | None = None) -> ImageCaptions:
    """A Karpathy split file (``dataset_coco.json``): each image's ``filepath``/``filename``, ``split`` and ``sentences``.

    Splits follow the standard retrieval protocol: ``train`` and ``restval`` train, ``val`` is
    the dev split, ``test`` the test split (COCO: 113,287 / 5,000 / 5,000 images).
    """
    file = input_file(file, "Karpathy split file", "give dataset_coco.json (or dataset_flickr30k.json)")
    obj = read_json(file, "Karpathy split file", "give dataset_coco.json (or dataset_flickr30k.json)")
    if not _is_karpathy(obj):
        raise InputError(
            f"{file}: not a Karpathy split file (needs images[] with sentences[], split, filename)"
        )
    pairs, splits = [], {s: [] for s in SPLITS}
    for n, im in enumerate(obj["images"], start=1):
        try:
            image = "/".join(p for p in (im.get("filepath", ""), im["filename"]) if p)
            split = KARPATHY_SPLITS.get(im.get("split", "train"))
            sentences = [s["raw"] for s in im["sentences"]]
        except (KeyError, TypeError):
            raise InputError(
                f"{file}: image entry {n} lacks filename or sentences[].raw; fix or remove it"
            ) from None
        if split is None:
            raise InputError(
                f"{file}: image entry {n} ({image}) has split {im.get('split')!r}; "
                f"expected one of {sorted(KARPATHY_SPLITS)}"
            )
        splits[split].append(image)
        pairs += [(image, sentence) for sentence in sentences]
    name = {"dataset_coco": "coco"}.get(file.stem, obj.get("dataset") or file.stem)
    root = Path(image_root) if image_root else _image_root(file)
    return _from_pairs(name, root, pairs, str(file), {s: v for s, v in splits.items() if v})


def read_coco(file: str | os.PathLike, image_root: str | os.PathLike | None = None) -> ImageCaptions:
    """COCO with Karpathy splits (``dataset_coco.json``, :func:`read_karpathy`) or plain COCO caption JSON.

    Plain caption JSON holds ``images`` (``id``, ``file_name``) and ``annotations``
    (``image_id``, ``caption``) and names no splits.
    """
    file = Path(file)
    obj = read_json(file, "caption file", CAPTION_HINT)
    if _is_karpathy(obj):
        return read_karpathy(file, image_root)
    try:
        names = {im["id"]: im["file_name"] for im in obj["images"]}
        pairs = [(names[a["image_id"]], a["caption"]) for a in obj["annotations"]]
    except KeyError as exc:
        raise InputError(f"{file}: not COCO caption JSON (missing key {exc.args[0]!r})") from None
    except TypeError:  # a list where an object belongs, an unhashable id, ...
        raise InputError(
            f"{file}: not COCO caption JSON (images[] and annotations[] must be lists of "
            "objects with id/file_name and image_id/caption)"
        ) from None
    return _from_pairs(file.stem, Path(image_root) if image_root else _image_root(file), pairs, str(file))


def read_flickr(root: str | os.PathLike) -> ImageCaptions:
    """The Flickr8k/30k layout: ``captions.csv``, ``images/``, ``split_{train,dev,test}.txt``."""
    root = Path(root)
    if not (root / "captions.csv").is_file():
        raise InputError(
            f"{root}: no captions.csv; expected the Flickr layout (captions.csv, images/, split_*.txt)"
        )
    data = read_caption_table(root / "captions.csv", root / "images")
    data.name = root.name
    for split in SPLITS:
        file = root / f"split_{split}.txt"
        if file.is_file():
            text = read_text(file, "split file", "give one image name per line")
            data.splits[split] = [line.strip() for line in text.splitlines() if line.strip()]
    return data


def read_label_folder(root: str | os.PathLike, template: str = "a photo of a {label}.") -> ImageCaptions:
    """An image-label folder ``root/<label>/<image>``; each image's caption is ``template`` of its label.

    Splits: ``root/{train,dev|val,test}/<label>/<image>`` (ImageNet-style split folders) are
    used as they are; otherwise each class's images, in file-name order, are split 60/20/20
    into train/dev/test, so that train and evaluate work on any label folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"image-label folder {root} does not exist")

    def class_dirs(folder: Path) -> list[str]:
        return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))

    def images_of(folder: Path) -> list[str]:
        return [f.name for f in sorted(folder.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]

    split_dirs = {
        name: ("dev" if name == "val" else name) for name in class_dirs(root) if name in (*SPLITS, "val")
    }
    pairs: list[tuple[str, str]] = []
    splits: dict[str, list[str]] = {}
    caption = {}  # class folder -> label text
    if split_dirs:
        others = set(class_dirs(root)) - set(split_dirs)
        if others:
            raise InputError(
                f"{root}: has split folders {sorted(split_dirs)} and other folders {sorted(others)}; "
                "put every class folder inside train/, dev/ (or val/) and test/"
            )
        for folder, split in split_dirs.items():
            for label in class_dirs(root / folder):
                text = caption.setdefault(label, template.format(label=label.replace("_", " ")))
                ids = [f"{folder}/{label}/{name}" for name in images_of(root / folder / label)]
                pairs += [(i, text) for i in ids]
                splits.setdefault(split, []).extend(ids)
    else:
        for label in class_dirs(root):
            text = caption.setdefault(label, template.format(label=label.replace("_", " ")))
            ids = [f"{label}/{name}" for name in images_of(root / label)]
            pairs += [(i, text) for i in ids]
            # per class, so that every split sees every class with at least 5 images
            a, b = int(0.6 * len(ids)), int(0.8 * len(ids))
            for split, part in (("train", ids[:a]), ("dev", ids[a:b]), ("test", ids[b:])):
                if part:
                    splits.setdefault(split, []).extend(part)
    if not pairs:
        raise InputError(f"{root}: no images found in class sub-folders; expected {root}/<label>/<image>.jpg")
    data = _from_pairs(root.name, root, pairs, str(root), splits)
    data.labels = [caption[c] for c in sorted(caption)]
    return data


def image_labels(data: ImageCaptions) -> np.ndarray:
    """For image-label data: each image's class row in ``data.labels`` (its caption's label)."""
    if data.labels is None:
        raise InputError(f"dataset {data.name} has no labels; use an image-label folder (labels:DIR)")
    row = {text: i for i, text in enumerate(data.labels)}
    out = np.empty(len(data.images), dtype=np.int64)
    out[data.caption_image] = [row[c] for c in data.captions]
    return out


def load_dataset(spec: str) -> ImageCaptions:
    """Read a dataset from ``KIND:PATH`` (see the module docstring); a bare path is guessed."""
    kind, _, path = spec.partition(":")
    if kind == "shapes":
        count = int(path) if path else 240
        return make_shapes(Path(tempfile.gettempdir()) / f"triptych-shapes-v1-{count}", count)
    if not path:  # a bare path: guess the layout
        path, target = spec, Path(spec)
        if target.is_dir():
            kind = "flickr8k" if (target / "captions.csv").is_file() else "labels"
        else:
            kind = "captions"
    readers = {
        "flickr8k": read_flickr,
        "flickr30k": read_flickr,
        "flickr": read_flickr,
        "captions": read_caption_table,
        "coco": read_coco,
        "karpathy": read_karpathy,
        "labels": read_label_folder,
        "audio": read_audio_table,
    }
    if kind not in readers:
        raise InputError(
            f"--data {spec!r}: unknown kind {kind!r}; use one of {sorted(readers)} or shapes, as KIND:PATH"
        )
    return readers[kind](path)


SHAPE_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
SHAPE_KINDS = ("circle", "square", "triangle", "diamond")
SHAPE_PLACES = {"left": (0.28, 0.5), "right": (0.72, 0.5), "top": (0.5, 0.28), "bottom": (0.5, 0.72)}
SHAPE_SIZES = {"small": 0.14, "large": 0.26}


def render_shape(
    colour: str, kind: str, size: str, place: str, rng: np.random.Generator, side: int = 128
) -> Any:
    """One image: a ``size`` ``colour`` ``kind`` at ``place`` on a random pale background."""
    from PIL import Image, ImageDraw

    background = tuple(int(v) for v in rng.integers(200, 256, size=3))
    image = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(image)
    jitter = rng.uniform(-0.04, 0.04, size=2)
    cx, cy = ((np.array(SHAPE_PLACES[place]) + jitter) * side).tolist()
    r = SHAPE_SIZES[size] * side * rng.uniform(0.9, 1.1)
    fill = tuple(int(np.clip(v + rng.integers(-20, 21), 0, 255)) for v in SHAPE_COLOURS[colour])
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    return image


def make_shapes(out: str | os.PathLike, count: int = 240, seed: int = 0) -> ImageCaptions:
    """The embedded default: ``count`` rendered shapes, two exact template captions each, split 60/20/20.

    Images and ``captions.csv`` are written to ``out`` once (deterministic in ``seed``)
    and reused. Captions: "a large red circle on the left" and "left: a red circle, large".
    """
    from triptych.core.io import atomic_output_dir

    out = Path(out)
    if not (out / "captions.csv").is_file():
        rng = np.random.default_rng(seed)
        combos = [
            (c, k, s, p)
            for c in SHAPE_COLOURS
            for k in SHAPE_KINDS
            for s in SHAPE_SIZES
            for p in SHAPE_PLACES
        ]
        order = rng.permutation(max(count, len(combos)))[:count] % len(combos)
        splits = np.array(["train"] * count, dtype=object)
        splits[int(0.6 * count) : int(0.8 * count)] = "dev"
        splits[int(0.8 * count) :] = "test"
        with atomic_output_dir(out) as staging:
            (staging / "images").mkdir()
            rows = []
            for i, combo in enumerate(combos[j] for j in order):
                colour, kind, size, place = combo
                name = f"shape{i:04d}.png"
                render_shape(colour, kind, size, place, rng).save(staging / "images" / name)
                rows += [
                    (name, f"a {size} {colour} {kind} on the {place}", splits[i]),
                    (name, f"{place}: a {colour} {kind}, {size}", splits[i]),
                ]
            with open(staging / "captions.csv", "w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerows([("image", "caption", "split"), *rows])
    data = read_caption_table(out / "captions.csv")
    data.name = "shapes"
    return data
