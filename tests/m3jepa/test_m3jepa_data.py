"""Image-caption / image-label datasets: layouts, caption -> image mapping, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from triptych.core.errors import InputError
from triptych.m3jepa.data import image_labels, load_dataset, make_shapes, read_image


def images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        Image.new("RGB", (8, 8), (10 * k, 0, 0)).save(folder / name)


def test_csv_with_several_captions_per_image_and_splits(tmp_path):
    images(tmp_path / "images", ["a.png", "b.png"])
    (tmp_path / "caps.csv").write_text(
        "image,caption,split\na.png,a red thing,train\nb.png,blue,test\na.png,  another red one ,train\n"
    )
    data = load_dataset(f"captions:{tmp_path / 'caps.csv'}")
    assert data.images == ["a.png", "b.png"] and data.captions == ["a red thing", "blue", "another red one"]
    assert data.caption_image.tolist() == [0, 1, 0]
    assert data.caption_ids == ["a.png#0", "b.png#0", "a.png#1"]
    assert data.splits == {"train": ["a.png"], "test": ["b.png"]}
    test = data.subset("test")
    assert test.images == ["b.png"] and test.captions == ["blue"] and test.caption_image.tolist() == [0]
    assert data.load_image(1).size == (8, 8)


def test_json_list_and_coco(tmp_path):
    images(tmp_path, ["x.jpg", "y.jpg"])
    (tmp_path / "caps.json").write_text(
        json.dumps([{"image": "x.jpg", "captions": ["one", "two"]}, {"image": "y.jpg", "caption": "three"}])
    )
    data = load_dataset(f"captions:{tmp_path / 'caps.json'}")
    assert data.captions == ["one", "two", "three"] and data.caption_image.tolist() == [0, 0, 1]
    coco = {
        "images": [{"id": 7, "file_name": "y.jpg"}, {"id": 3, "file_name": "x.jpg"}],
        "annotations": [
            {"image_id": 3, "caption": "c1"},
            {"image_id": 7, "caption": "c2"},
            {"image_id": 3, "caption": "c3"},
        ],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    for spec in (f"coco:{tmp_path / 'coco.json'}", f"captions:{tmp_path / 'coco.json'}"):
        data = load_dataset(spec)
        assert data.images == ["x.jpg", "y.jpg"] and data.caption_image.tolist() == [0, 1, 0]


def test_flickr_layout_and_label_folder(tmp_path):
    root = tmp_path / "flickr"
    images(root / "images", ["1.jpg", "2.jpg", "3.jpg"])
    rows = [f"{i}.jpg,caption {i}-{k}" for i in (1, 2, 3) for k in range(2)]
    (root / "captions.csv").write_text("image,caption\n" + "\n".join(rows) + "\n")
    (root / "split_train.txt").write_text("1.jpg\n3.jpg\n")
    (root / "split_test.txt").write_text("2.jpg\n")
    data = load_dataset(str(root))  # the layout is recognised without a KIND:
    assert len(data.images) == 3 and len(data.captions) == 6
    train = data.subset("train")
    assert train.images == ["1.jpg", "3.jpg"] and train.captions == [
        "caption 1-0",
        "caption 1-1",
        "caption 3-0",
        "caption 3-1",
    ]
    assert train.caption_image.tolist() == [0, 0, 1, 1]
    with pytest.raises(InputError, match="no split 'dev'"):
        data.subset("dev")

    labels = tmp_path / "labels"
    images(labels / "cat", ["a.png", "b.png"])
    images(labels / "hot_dog", ["c.png"])
    data = load_dataset(f"labels:{labels}")
    assert data.images == ["cat/a.png", "cat/b.png", "hot_dog/c.png"]
    assert data.labels == ["a photo of a cat.", "a photo of a hot dog."]
    assert image_labels(data).tolist() == [0, 0, 1]


def test_label_folder_splits(tmp_path):
    labels = tmp_path / "labels"
    images(labels / "cat", [f"{k}.png" for k in range(5)])
    images(labels / "dog", [f"{k}.png" for k in range(10)])
    data = load_dataset(f"labels:{labels}")
    # per class, in file-name order: 60% train, 20% dev, 20% test
    assert data.splits == {
        "train": ["cat/0.png", "cat/1.png", "cat/2.png"] + [f"dog/{k}.png" for k in range(6)],
        "dev": ["cat/3.png", "dog/6.png", "dog/7.png"],
        "test": ["cat/4.png", "dog/8.png", "dog/9.png"],
    }
    assert image_labels(data.subset("test")).tolist() == [0, 1, 1]

    folders = tmp_path / "imagenet_style"
    images(folders / "train" / "cat", ["a.png", "b.png"])
    images(folders / "train" / "dog", ["c.png"])
    images(folders / "val" / "dog", ["d.png"])
    data = load_dataset(str(folders))  # a folder without captions.csv is an image-label folder
    assert data.splits == {
        "train": ["train/cat/a.png", "train/cat/b.png", "train/dog/c.png"],
        "dev": ["val/dog/d.png"],
    }
    assert data.labels == ["a photo of a cat.", "a photo of a dog."]
    assert image_labels(data).tolist() == [0, 0, 1, 1]
    images(folders / "bird", ["e.png"])
    with pytest.raises(InputError, match=r"split folders \['train', 'val'\] and other folders \['bird'\]"):
        load_dataset(f"labels:{folders}")


def test_bad_inputs_give_one_clear_error(tmp_path):
    images(tmp_path / "images", ["a.png"])
    (tmp_path / "missing.csv").write_text("image,caption\na.png,fine\nnope.png,a caption\n")
    with pytest.raises(InputError, match=r"image file .*nope.png does not exist"):
        load_dataset(f"captions:{tmp_path / 'missing.csv'}")
    (tmp_path / "empty.csv").write_text("image,caption\na.png,fine\na.png,   \n")
    with pytest.raises(InputError, match=r"entry 2 \(image 'a.png'\) has an empty caption"):
        load_dataset(f"captions:{tmp_path / 'empty.csv'}")
    (tmp_path / "cols.csv").write_text("file,text\na.png,x\n")
    with pytest.raises(InputError, match="columns image,caption"):
        load_dataset(f"captions:{tmp_path / 'cols.csv'}")
    (tmp_path / "images" / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(InputError, match=r"broken.jpg cannot be read as an image"):
        read_image(tmp_path / "images" / "broken.jpg")
    with pytest.raises(InputError, match="unknown kind 'nonsense'"):
        load_dataset("nonsense:/x")


class MeanColour:
    """A tiny image 'encoder': one token, the mean RGB colour."""

    name, modality, dim, length = "mean-colour", "image", 3, 1

    def fingerprint(self) -> str:
        return "v1"

    def encode(self, batch):
        import torch

        from triptych.m3jepa.features import EncodedBatch

        x = torch.tensor(np.stack([np.asarray(im, dtype=np.float32).mean((0, 1)) for im in batch]))
        return EncodedBatch(x[:, None], torch.ones(len(batch), 1, dtype=torch.bool), x)


def test_unreadable_image_stops_encoding_and_keeps_finished_shards(tmp_path):
    from triptych.m3jepa.features import encode_dataset, load_features, read_manifest

    names = [f"{i}.png" for i in range(6)]
    images(tmp_path / "images", names)
    (tmp_path / "caps.csv").write_text("image,caption\n" + "".join(f"{n},c{n}\n" for n in names))
    data = load_dataset(f"captions:{tmp_path / 'caps.csv'}")
    (tmp_path / "images" / "4.png").write_bytes(b"\x89PNG garbage")  # breaks after the listing was read
    with pytest.raises(InputError, match=r"4.png cannot be read as an image"):
        encode_dataset(data, tmp_path / "cache", [MeanColour()], shard_size=2, batch_size=1)
    assert [s["start"] for s in read_manifest(tmp_path / "cache" / "image")["shards"]] == [0, 2]
    images(tmp_path / "images", names)  # the user fixes the file and re-runs: it resumes
    encode_dataset(data, tmp_path / "cache", [MeanColour()], shard_size=2, batch_size=1)
    feats = load_features(tmp_path / "cache" / "image")
    np.testing.assert_allclose(feats.pooled[:, 0], [10 * k * 8 * 8 / 64 for k in range(6)])


def test_shapes_default_is_deterministic_with_exact_captions(tmp_path):
    a = make_shapes(tmp_path / "a", count=30, seed=0)
    b = make_shapes(tmp_path / "b", count=30, seed=0)
    assert a.captions == b.captions and len(a.images) == 30 and len(a.captions) == 60
    assert np.array_equal(np.asarray(a.load_image(5)), np.asarray(b.load_image(5)))
    assert {len(v) for v in a.splits.values()} == {18, 6}
    colour, kind = a.captions[0].split()[2:4]
    assert a.captions[1].endswith(f"a {colour} {kind}, {a.captions[0].split()[1]}")
    # the drawn colour is the captioned one: the shape's pixels are closest to that colour
    from triptych.m3jepa.data import SHAPE_COLOURS

    pixels = np.asarray(a.load_image(0)).reshape(-1, 3).astype(float)
    dist = {c: np.abs(pixels - rgb).sum(1) for c, rgb in SHAPE_COLOURS.items()}
    near = {c: int((d < 70).sum()) for c, d in dist.items()}
    assert max(near, key=near.get) == colour


@pytest.mark.shared_data
def test_flickr8k_shared_layout(shared_dataset):
    root = shared_dataset("flickr8k")
    data = load_dataset(f"flickr8k:{root}")
    assert len(data.images) == 6000 and len(data.captions) == 30000
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 4000, "dev": 1000, "test": 1000}
    test = data.subset("test")
    assert len(test.images) == 1000 and len(test.captions) == 5000
    assert np.bincount(test.caption_image).tolist() == [5] * 1000


def _karpathy_entry(filepath, filename, split, sentences, imgid):
    return {
        "filepath": filepath,
        "filename": filename,
        "imgid": imgid,
        "split": split,
        "cocoid": 1000 + imgid,
        "sentids": list(range(len(sentences))),
        "sentences": [
            {"raw": s, "tokens": s.lower().split(), "imgid": imgid, "sentid": 0} for s in sentences
        ],
    }


def test_coco_karpathy_splits(tmp_path):
    """dataset_coco.json: restval trains with train, val is the dev split, images sit under their filepath."""
    images(tmp_path / "images" / "train2014", ["t1.jpg", "t2.jpg"])
    images(tmp_path / "images" / "val2014", ["r1.jpg", "v1.jpg", "s1.jpg", "s2.jpg"])
    entries = [
        _karpathy_entry("train2014", "t1.jpg", "train", ["a dog runs.", "a dog."], 0),
        _karpathy_entry("val2014", "r1.jpg", "restval", ["a cat sits."], 1),
        _karpathy_entry("val2014", "v1.jpg", "val", ["a red bus."], 2),
        _karpathy_entry("train2014", "t2.jpg", "train", ["two birds."], 3),
        _karpathy_entry("val2014", "s1.jpg", "test", ["a man surfs.", "surfing.", "a wave."], 4),
        _karpathy_entry("val2014", "s2.jpg", "test", ["a pizza."], 5),
    ]
    file = tmp_path / "dataset_coco.json"
    file.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    for spec in (f"coco:{file}", f"karpathy:{file}", f"captions:{file}"):
        data = load_dataset(spec)
        assert data.name == "coco"
        assert data.splits == {
            "train": ["train2014/t1.jpg", "val2014/r1.jpg", "train2014/t2.jpg"],
            "dev": ["val2014/v1.jpg"],
            "test": ["val2014/s1.jpg", "val2014/s2.jpg"],
        }
        test = data.subset("test")
        assert test.captions == ["a man surfs.", "surfing.", "a wave.", "a pizza."]
        assert test.caption_image.tolist() == [0, 0, 0, 1]
        assert data.load_image(data.images.index("val2014/s2.jpg")).size == (8, 8)
    # an unknown split name, and a missing image file, are one-line input errors
    bad = tmp_path / "bad" / "dataset_coco.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"images": [_karpathy_entry("", "x.jpg", "holdout", ["x"], 0)]}))
    with pytest.raises(InputError, match="split 'holdout'"):
        load_dataset(f"coco:{bad}")
    bad.write_text(json.dumps({"images": [_karpathy_entry("", "x.jpg", "test", ["x"], 0)]}))
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(f"coco:{bad}")
