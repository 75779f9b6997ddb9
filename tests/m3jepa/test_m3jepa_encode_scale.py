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
