"""The approximate index: folded scores, the on-disk IVF against exact search, QB-norm in bounded chunks."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from triptych.m3jepa.ann import AnnConfig, AnnIndex, build_ann, fold, fold_queries, to_distance
from triptych.m3jepa.index_store import SearchIndex, load_index
from triptych.m3jepa.querybank import hubness
from triptych.m3jepa.search import Searcher

pytest.importorskip("faiss")
torch.set_num_threads(1)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_folded_inner_product_is_the_querybank_normalised_fused_score():
    keys = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]], np.float32)  # [k, own prediction]
    bias = np.array([0.25, -0.5], np.float32)
    q = np.array([[1.0, 0.0, 1.0, 0.0]], np.float32)  # [q_{t→i}, k(t)]
    # s' = q·K / 2 - b by hand: item 0: (1 + 0)/2 - 0.25 = 0.25; item 1: (0 + 1)/2 + 0.5 = 1.0
    np.testing.assert_allclose(fold_queries(q) @ fold(keys, bias, 2.0).T, [[0.25, 1.0]])


def test_hubness_in_chunks_equals_the_whole_matrix():
    rng = np.random.default_rng(0)
    bank, items = torch.tensor(unit(rng.normal(size=(23, 6)))), torch.tensor(unit(rng.normal(size=(17, 6))))
    want = torch.logsumexp(10.0 * (bank @ items.T) / 2.0, dim=0) / 10.0
    got = hubness(bank, lambda s, e: items[s:e], len(items), beta=10.0, scale=2.0, bank_chunk=4, item_chunk=5)
    torch.testing.assert_close(got, want)


def make_index(n: int = 3000, p: int = 8) -> SearchIndex:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(20, p))  # clustered, as real embeddings are
    keys = torch.tensor(unit(centres[rng.integers(0, 20, n)] + 0.4 * rng.normal(size=(n, p))))
    own = torch.tensor(unit(rng.normal(size=(n, p))))
    captions = [f"caption {j}" for j in range(n)]
    index = SearchIndex(
        [f"img{i}.png" for i in range(n)],
        keys,
        {},
        captions=captions,
        caption_image=np.arange(n),
        text_keys=own,
        image_queries=own,
        text_queries=keys,
    )
    index.image_bias = torch.tensor(rng.uniform(0.1, 0.3, n), dtype=torch.float32)
    return index


@pytest.mark.parametrize("storage", ["SQ8", "PQ", "Flat"])
def test_approximate_search_visiting_every_cell_is_exact_and_the_folder_moves(tmp_path, storage):
    """Every cell visited (and, for PQ codes, every candidate re-scored): the exact search's rows and scores."""
    index = make_index()
    index.save(
        tmp_path / "idx",
        ann=AnnConfig(
            kind="IVF", nlist=16, nprobe=16, storage=storage, rerank=3000, train_size=1000, block_size=700
        ),
    )
    want = "IVF16,PQ8x4fs" if storage == "PQ" else f"IVF16,{storage}"  # 17 folded dims, padded to 32
    assert set(index.ann) == {"image", "text"} and index.ann["image"]["kind"] == want
    shutil.move(tmp_path / "idx", tmp_path / "moved")  # the lists file is found next to the index file
    loaded = load_index(tmp_path / "moved")
    assert (
        loaded.images[7] == "img7.png" and loaded.captions[5] == "caption 5" and len(loaded.captions) == 3000
    )
    rng = np.random.default_rng(2)
    q = torch.tensor(unit(rng.normal(size=(5, 16))))
    approximate, exact = Searcher(loaded, None), Searcher(loaded, None, exact=True)
    for modality in ("image", "text"):
        s_a, r_a, c_a = approximate.ranked(q, modality, 10)
        s_e, r_e, c_e = exact.ranked(q, modality, 10)
        assert approximate.approximate(modality) is not None and exact.approximate(modality) is None
        assert r_a.tolist() == r_e.tolist()
        torch.testing.assert_close(s_a, s_e, atol=1e-5, rtol=0)
        torch.testing.assert_close(c_a, c_e, atol=1e-5, rtol=0)  # cosine = score + bias, recovered


def test_default_is_ivf_sq8_and_the_rerank_depth_follows_the_storage():
    """SQ8 codes order candidates almost exactly (50 re-scored); 4-bit PQ needs more; exact lists none."""
    assert (AnnConfig().kind, AnnConfig().storage, AnnConfig().rerank_depth()) == ("IVF", "SQ8", 50)
    assert AnnConfig(storage="PQ").rerank_depth() == 200 and AnnConfig(storage="Flat").rerank_depth() == 0
    assert AnnConfig(storage="PQ", rerank=2000).rerank_depth() == 2000
    # a record written before the per-storage default (rerank stored as a number) reads back as it was
    assert AnnConfig.from_record({"storage": "PQ", "rerank": 500, "nlist": 4}).rerank_depth() == 500


def test_on_disk_lists_build_into_a_relative_folder(tmp_path, monkeypatch):
    """The on-disk merge runs inside the index folder: a relative folder (as a CLI user gives) must still work."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(6)
    folded = fold(unit(rng.normal(size=(900, 8))), rng.uniform(0.1, 0.3, 900), 2.0)
    config = AnnConfig(kind="IVF", storage="SQ8", nlist=8, nprobe=8, train_size=900, block_size=400)
    record = build_ann(
        folded, (folded[s : s + 400] for s in range(0, 900, 400)), 900, "rel/idx", "image", config
    )
    assert record["kind"] == "IVF8,SQ8" and (tmp_path / "rel/idx/ann_image.ivfdata").is_file()
    q = fold_queries(unit(rng.normal(size=(4, 16))))
    rows = AnnIndex("rel/idx", "image").search(q, 5, vectors=lambda r: folded[r])[1]
    assert rows.tolist() == np.argsort(-(q @ folded.T), 1)[:, :5].tolist()  # every cell visited: exact


def test_fewer_cells_trade_recall_for_speed_and_recall_is_measured(tmp_path):
    index = make_index()
    index.save(tmp_path / "idx", ann=AnnConfig(nlist=32, nprobe=1, train_size=1500, rerank=100))
    ann = AnnIndex(tmp_path / "idx", "image")
    folded = index.folded("image", slice(0, 3000))
    rng = np.random.default_rng(3)
    q = unit(rng.normal(size=(50, 16)))
    truth = np.argsort(-(fold_queries(q) @ folded.T), 1)[:, :10]

    def recall(nprobe: int, rerank: int = 100) -> float:
        rows = ann.search(fold_queries(q), 10, nprobe, vectors=lambda r: folded[r], rerank=rerank)[1]
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, truth, strict=True)]))

    # one cell misses neighbours, four miss fewer; every cell with every candidate re-scored misses none
    assert recall(1) < recall(4) < recall(32, rerank=3000) == 1.0


def test_distance_reduction_ranks_by_the_folded_inner_product():
    """|y' - x'|² = |y|² + M² - 2 y·x: the nearest vectors are the best-scoring ones, biases and all."""
    rng = np.random.default_rng(4)
    x = fold(unit(rng.normal(size=(200, 6))), rng.uniform(-0.5, 0.5, 200), 2.0)
    y = fold_queries(unit(rng.normal(size=(3, 6))))
    bound = 1.01 * np.linalg.norm(x, axis=1).max()
    xd = to_distance(x, bound)
    assert np.allclose(np.linalg.norm(xd, axis=1), bound, atol=1e-5)  # every vector on the sphere of radius M
    dist = ((y[:, None, :] - xd[None]) ** 2).sum(-1)
    np.testing.assert_allclose(dist, (y**2).sum(1)[:, None] + bound**2 - 2 * y @ x.T, atol=1e-4)
    assert (np.argsort(dist, 1)[:, :10] == np.argsort(-(y @ x.T), 1)[:, :10]).all()


@pytest.mark.parametrize("storage", ["Flat", "SQ8"])
def test_hnsw_finds_the_exact_neighbours_with_exact_scores(tmp_path, storage):
    index = make_index()
    index.save(tmp_path / "idx", ann=AnnConfig(kind="HNSW", storage=storage, m=16, ef_search=32, rerank=50))
    loaded = load_index(tmp_path / "idx")
    assert loaded.ann["image"]["kind"] == f"HNSW16,{storage}"
    q = torch.tensor(unit(np.random.default_rng(5).normal(size=(40, 16))))
    s_a, r_a, _ = Searcher(loaded, None).ranked(q, "image", 10)
    s_e, r_e, _ = Searcher(loaded, None, exact=True).ranked(q, "image", 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(r_a.tolist(), r_e.tolist(), strict=True)])
    assert recall >= 0.95
    # scores are the exact s' of the rows found (re-scored from the memory-mapped vectors)
    want = loaded.scores(q, "image")[0].gather(1, r_a)
    torch.testing.assert_close(s_a, want, atol=1e-5, rtol=0)
