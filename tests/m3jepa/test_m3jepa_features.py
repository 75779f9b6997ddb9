"""Feature cache: round trip, shards, resuming after an interruption, refusing foreign caches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from triptych.core.errors import InputError
from triptych.m3jepa.features import (
    EncodedBatch,
    ShardedArray,
    encode_dataset,
    load_cache,
    load_features,
    read_manifest,
    write_features,
)


class FakeEncoder:
    """Deterministic 'encoder' of integers: token l of item i is (i + l) * e, with i % 3 padding tokens."""

    modality = "text"

    def __init__(self, name: str = "fake", dim: int = 4, length: int = 5, fail_after: int | None = None):
        self.name, self.dim, self.length, self.fail_after = name, dim, length, fail_after
        self.seen: list[int] = []

    def fingerprint(self) -> str:
        return f"{self.name}-{self.dim}-{self.length}"

    def encode(self, batch):
        if self.fail_after is not None and len(self.seen) >= self.fail_after:
            raise KeyboardInterrupt  # the user presses Ctrl-C half way
        self.seen += list(batch)
        i = torch.tensor(batch, dtype=torch.float32)[:, None, None]
        tokens = (i + torch.arange(self.length)[None, :, None]) * torch.ones(self.dim)
        mask = torch.arange(self.length)[None, :] < (self.length - torch.tensor(batch)[:, None] % 3)
        return EncodedBatch(tokens, mask, tokens.mean(1))


def expected_tokens(n: int, dim: int = 4, length: int = 5) -> np.ndarray:
    i = np.arange(n)[:, None, None]
    tokens = (i + np.arange(length)[None, :, None]) * np.ones(dim)
    mask = np.arange(length)[None, :] < (length - np.arange(n)[:, None] % 3)
    return np.where(mask[..., None], tokens, 0.0)


def test_round_trip_across_shards(tmp_path):
    n = 23
    feats = write_features(
        tmp_path / "c", [f"item{i}" for i in range(n)], lambda i: i, FakeEncoder(), shard_size=5, batch_size=2
    )
    manifest = read_manifest(tmp_path / "c")
    assert manifest["complete"] and [s["count"] for s in manifest["shards"]] == [5, 5, 5, 5, 3]
    assert feats.tokens.shape == (23, 5, 4) and feats.mask.shape == (23, 5) and feats.pooled.shape == (23, 4)
    assert feats.tokens.dtype == np.float16 and feats.pooled.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(feats.tokens), expected_tokens(n))  # padding is zeroed
    rows = np.array([22, 0, 7, 13, 7])  # unsorted, repeated, across shards
    np.testing.assert_array_equal(feats.tokens[rows], expected_tokens(n)[rows])
    np.testing.assert_array_equal(feats.tokens[3:12:4], expected_tokens(n)[3:12:4])
    np.testing.assert_array_equal(feats.mask[-1], [True, True, True, True, False])  # 22 % 3 == 1 padded
    assert feats.index_of(["item7", "item0"]).tolist() == [7, 0]
    with pytest.raises(InputError, match="no item 'nope'"):
        feats.index_of(["nope"])
    batch = feats.batch([1, 2])
    assert batch.tokens.dtype == torch.float32 and batch.mask.dtype == torch.bool


def test_interrupted_encoding_resumes_without_recomputing_finished_shards(tmp_path):
    ids = [f"item{i}" for i in range(20)]
    path = tmp_path / "c"
    first = FakeEncoder(fail_after=9)  # dies inside the third shard (shards of 4, batches of 2)
    with pytest.raises(KeyboardInterrupt):
        write_features(path, ids, lambda i: i, first, shard_size=4, batch_size=2)
    manifest = read_manifest(path)
    assert not manifest["complete"] and [s["start"] for s in manifest["shards"]] == [0, 4]
    finished = {p: p.stat().st_mtime_ns for p in sorted(path.glob("shard-0000[01]/*.npy"))}
    assert len(finished) == 6
    with pytest.raises(InputError, match="unfinished .8/20 items.*resume"):
        load_features(path)

    (path / ".shard-00002.abc.tmp").mkdir()  # what a kill during a shard's write leaves behind
    second = FakeEncoder()
    feats = write_features(path, ids, lambda i: i, second, shard_size=4, batch_size=2)
    assert sorted(second.seen) == list(range(8, 20))  # only the unfinished shards were encoded
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # finished shard files untouched
    np.testing.assert_array_equal(np.asarray(feats.tokens), expected_tokens(20))
    assert not list(path.glob(".shard-*"))

    third = FakeEncoder()  # a complete cache is not recomputed at all
    write_features(path, ids, lambda i: i, third, shard_size=4, batch_size=2)
    assert third.seen == []


def test_cache_from_another_encoder_or_dimension_is_refused(tmp_path):
    ids = [f"item{i}" for i in range(6)]
    path = tmp_path / "c"
    write_features(path, ids, lambda i: i, FakeEncoder("fake"), shard_size=4)
    before = (path / "manifest.json").read_text()
    with pytest.raises(InputError, match="made with encoder 'fake', not 'other'"):
        write_features(path, ids, lambda i: i, FakeEncoder("other"), shard_size=4)
    with pytest.raises(InputError, match="another version or configuration"):
        write_features(path, ids, lambda i: i, FakeEncoder("fake", length=7), shard_size=4)
    with pytest.raises(InputError, match="other items"):
        write_features(path, ids[:5], lambda i: i, FakeEncoder("fake"), shard_size=4)
    assert (path / "manifest.json").read_text() == before  # nothing lost
    with pytest.raises(InputError, match="made with encoder 'fake', not 'efficientnet-lite0'"):
        load_features(path, encoder="efficientnet-lite0")
    with pytest.raises(InputError, match="holds 4-d features .* but 1280-d are expected"):
        load_features(path, dim=1280)
    with pytest.raises(InputError, match="holds text features, not image"):
        load_features(path, modality="image")
    with pytest.raises(InputError, match="not a feature cache"):
        load_features(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("keep me")
    with pytest.raises(InputError, match="exists and is not a feature cache"):
        write_features(tmp_path / "junk", ids, lambda i: i, FakeEncoder(), shard_size=4)
    assert (tmp_path / "junk" / "x.txt").read_text() == "keep me"


def test_encoder_with_wrong_shapes_is_caught(tmp_path):
    class Short(FakeEncoder):
        def encode(self, batch):  # declares 5 tokens but returns 4
            out = super().encode(batch)
            return EncodedBatch(out.tokens[:, :4], out.mask[:, :4], out.pooled)

    with pytest.raises(RuntimeError, match=r"tokens \(2, 4, 4\).*expected \(2, 5, 4\)"):
        write_features(tmp_path / "c", ["a", "b"], lambda i: i, Short(), shard_size=4)


def test_sharded_array_bounds():
    a = ShardedArray([np.arange(6).reshape(3, 2), np.arange(6, 10).reshape(2, 2)])
    assert a.shape == (5, 2) and a[-1].tolist() == [8, 9] and a[3].tolist() == [6, 7]
    assert a[np.array([True, False, False, True, False])].tolist() == [[0, 1], [6, 7]]
    with pytest.raises(IndexError):
        a[5]
    with pytest.raises(IndexError):
        a[[0, 9]]


def test_paired_cache_splits(tmp_path):
    from triptych.m3jepa.data import ImageCaptions

    data = ImageCaptions(
        "toy",
        tmp_path,
        ["a.png", "b.png", "c.png"],
        ["x", "y", "z", "w"],
        [2, 0, 2, 1],
        {"train": ["a.png", "b.png"], "test": ["c.png"]},
    )
    data.load_image = lambda i: i  # images are the integers the fake encoder understands

    class FakeImage(FakeEncoder):
        modality = "image"

    class FakeText(FakeEncoder):
        modality = "text"

        def encode(self, batch):
            return super().encode([len(s) for s in batch])

    encode_dataset(data, tmp_path / "cache", [FakeImage("img", dim=3), FakeText("txt", dim=2)], shard_size=2)
    cache = load_cache(tmp_path / "cache", image_dim=3, text_dim=2)
    assert cache.text.ids == ["c.png#0", "a.png#0", "c.png#1", "b.png#0"]
    image_rows, caption_rows, caption_image = cache.split("test")
    assert image_rows.tolist() == [2] and caption_rows.tolist() == [0, 2] and caption_image.tolist() == [0, 0]
    image_rows, caption_rows, caption_image = cache.split("train")
    assert (
        image_rows.tolist() == [0, 1] and caption_rows.tolist() == [1, 3] and caption_image.tolist() == [0, 1]
    )
    with pytest.raises(InputError, match="no split 'dev'"):
        cache.split("dev")
    with pytest.raises(InputError, match="holds 3-d features"):
        load_cache(tmp_path / "cache", image_dim=1280)
    record = json.loads((tmp_path / "cache" / "dataset.json").read_text())
    assert record["caption_image"] == [2, 0, 2, 1]
