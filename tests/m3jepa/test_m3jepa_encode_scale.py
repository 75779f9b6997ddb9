"""Encoding at scale: DataLoader workers and Ray workers give exactly the single-process cache."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from triptych.m3jepa.features import EncodedBatch, RayPlan, load_features, write_features

torch.set_num_threads(1)


class TinyImageEncoder:
    """A fixed random conv net over 16 x 16 images: 4 tokens (a 2 x 2 grid) of 6 dims."""

    name, modality, dim, length = "tiny-image", "image", 6, 4

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.AvgPool2d(8)
        )

    def fingerprint(self) -> str:
        return "tiny-0"

    def preprocess(self, image: Any) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image.convert("RGB").resize((16, 16)), np.float32) / 255).permute(
            2, 0, 1
        )

    def encode_tensors(self, x: torch.Tensor) -> EncodedBatch:
        tokens = self.net(x).flatten(2).transpose(1, 2)  # B x 4 x 6
        return EncodedBatch(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool), tokens.mean(1))

    def encode(self, batch: list[Any]) -> EncodedBatch:
        return self.encode_tensors(torch.stack([self.preprocess(b) for b in batch]))


def synthetic_image(i: int) -> Image.Image:
    """Image i of the collection: 20 x 24 pixels of seeded noise (decoded from PNG bytes, as a file would be)."""
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))


IDS = [f"img{i:03d}" for i in range(45)]  # 45 items in shards of 8: the last shard is short


def cache(path, **kw):
    write_features(path, IDS, synthetic_image, TinyImageEncoder(), shard_size=8, batch_size=3, **kw)
    return load_features(path)


def same(a, b) -> None:
    assert a.ids == b.ids and a.manifest["shards"] == b.manifest["shards"]
    for key in ("tokens", "mask", "pooled"):
        np.testing.assert_array_equal(np.asarray(getattr(a, key)), np.asarray(getattr(b, key)))


def test_dataloader_workers_give_the_in_process_cache(tmp_path):
    reference = cache(tmp_path / "ref")
    same(cache(tmp_path / "loader", loader_workers=2), reference)
    # and the cache holds what the encoder makes of the items (row 10 is shard 1, row 2)
    want = TinyImageEncoder().encode([synthetic_image(10)]).pooled[0]
    np.testing.assert_allclose(reference.pooled[10], want.detach().numpy(), rtol=1e-6)


@pytest.fixture(scope="module")
def ray_cluster():
    from triptych.core import batch

    batch.init_ray(workers=2)
    import ray

    yield
    ray.shutdown()


def test_two_ray_workers_encode_the_single_process_cache_and_resume(tmp_path, ray_cluster):
    reference = cache(tmp_path / "ref")
    plan = RayPlan(partial(TinyImageEncoder), workers=2)
    got = cache(tmp_path / "ray", ray=plan)
    same(got, reference)
    assert not (tmp_path / "ray" / ".ray").exists()  # the workers' shard tables were folded in
    # a killed run: two shards not (yet) in the manifest, their folders holding garbage
    manifest = got.manifest
    lost = manifest["shards"][2:4]
    import json

    kept = [s for s in manifest["shards"] if s not in lost]
    (tmp_path / "ray" / "manifest.json").write_text(
        json.dumps({**manifest, "shards": kept, "complete": False})
    )
    for s in lost:
        np.save(tmp_path / "ray" / s["name"] / "pooled.npy", np.zeros((s["count"], 6), np.float32))
    same(cache(tmp_path / "ray", ray=plan), reference)  # the lost shards are encoded again, the rest kept


def test_export_writes_the_split_rows_and_their_metadata(tmp_path):
    import json

    import pandas as pd
    from m3jepa_synth import caption_set, write_cache

    from triptych.m3jepa.export import export_embeddings
    from triptych.m3jepa.features import load_cache

    write_cache(tmp_path / "cache", caption_set(n_images=30))
    out = export_embeddings(tmp_path / "cache", tmp_path / "emb", split="test")
    paired = load_cache(tmp_path / "cache")
    image_rows, caption_rows, caption_image = paired.split("test")
    images, captions = pd.read_parquet(out / "images.parquet"), pd.read_parquet(out / "captions.parquet")
    assert list(images["id"]) == [paired.image.ids[i] for i in image_rows] == paired.data.splits["test"]
    assert list(captions["caption"]) == [paired.data.captions[j] for j in caption_rows]
    # each caption's image_row points at the exported row of its own image
    want = [paired.data.caption_image[j] for j in caption_rows]
    assert [image_rows[r] for r in captions["image_row"]] == want
    np.testing.assert_array_equal(np.load(out / "image.npy"), paired.image.pooled[image_rows])
    np.testing.assert_array_equal(np.load(out / "text.npy"), paired.text.pooled[caption_rows])
    assert json.loads((out / "export.json").read_text())["vectors"] == "pooled encoder features"


class LengthTextEncoder:
    """A text 'encoder' whose output depends on the whole batch's padding: token l of a text is its
    character codes, the batch padded to its longest text (as tokenizers pad)."""

    name, modality, dim, length, precision = "len-text", "text", 2, 12, "fp32"

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def fingerprint(self) -> str:
        return "len-text-0"

    def encode(self, batch: list[str]) -> EncodedBatch:
        self.batches.append(list(batch))
        width = max(len(t) for t in batch)  # the batch's padding, then cut or padded to L tokens
        codes = torch.tensor([[float(ord(c)) for c in t.ljust(width)] for t in batch])[:, : self.length]
        mask = torch.tensor([[i < len(t) for i in range(width)] for t in batch])[:, : self.length]
        codes = torch.nn.functional.pad(codes, (0, self.length - codes.shape[1]), value=float(width))
        mask = torch.nn.functional.pad(mask, (0, self.length - mask.shape[1]), value=False)
        tokens = torch.stack([codes, codes * 2], -1)
        return EncodedBatch(tokens, mask, tokens.sum(1))


def test_texts_are_batched_by_length_and_come_back_in_order(tmp_path):
    from triptych.m3jepa.features import encode_rows

    texts = ["a much longer caption", "hi", "mid size", "yo", "another long caption!", "abc", "x"]
    enc = LengthTextEncoder()
    tokens, mask, pooled = encode_rows(enc, texts.__getitem__, range(len(texts)), batch_size=3)
    # batches hold neighbours in length, shortest first
    assert [len(t) for b in enc.batches for t in b] == sorted(len(t) for t in texts)
    alone = [LengthTextEncoder().encode([t]) for t in texts]  # each text by itself: no padding at all
    for i, out in enumerate(alone):
        n = min(len(texts[i]), 12)
        np.testing.assert_array_equal(mask[i, :n], True)
        np.testing.assert_array_equal(tokens[i, :n], out.tokens[0, :n].numpy())
        np.testing.assert_array_equal(tokens[i, n:], 0.0)  # padding zeroed, whatever the batch
    assert pooled.shape == (len(texts), 2)


class PrecisionImageEncoder(TinyImageEncoder):
    def __init__(self, precision: str) -> None:
        super().__init__()
        self.precision = precision

    def fingerprint(self) -> str:
        return f"tiny-0-{self.precision}"


def test_caches_of_another_precision_are_refused_with_the_flag_to_use(tmp_path):
    from triptych.core.errors import InputError
    from triptych.m3jepa.features import read_manifest

    ids = IDS[:5]
    write_features(tmp_path / "c", ids, synthetic_image, PrecisionImageEncoder("bf16"), shard_size=4)
    assert read_manifest(tmp_path / "c")["precision"] == "bf16"
    with pytest.raises(InputError, match="holds bf16 features, not fp32.*--precision fp32"):
        write_features(tmp_path / "c", ids, synthetic_image, PrecisionImageEncoder("fp32"), shard_size=4)
    # a model trained on fp32 features (records from before the field say nothing: fp32) refuses it too
    from types import SimpleNamespace

    from triptych.m3jepa.search import check_encoder

    old_record = {"encoder": "tiny-image", "dim": 6}
    with pytest.raises(InputError, match="holds bf16 features, not fp32"):
        check_encoder(SimpleNamespace(encoders={"image": old_record}), "image", load_features(tmp_path / "c"))
