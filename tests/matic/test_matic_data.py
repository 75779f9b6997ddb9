"""CSV loading, duplicate merging, the three splits, the embedded table, and bad inputs."""

import numpy as np
import pytest

from triptych.core.errors import InputError
from triptych.matic.data import (
    load_embedded,
    load_splits,
    load_table,
    merge_duplicates,
    murcko_scaffold,
    random_split,
    scaffold_split,
)

SMILES = [
    "CCO",
    "c1ccccc1CC",
    "c1ccccc1CCC",
    "C1CCCCC1N",
    "C1CCCCC1NC",
    "c1ccncc1C",
    "CCN",
    "c1ccc2ccccc2c1",
    "c1ccc2ccccc2c1O",
    "C1CCOC1",
    "C1CCOC1C",
    "CC(=O)O",
    "c1ccsc1",
    "c1ccsc1C",
    "CCCC",
    "c1cnc2ccccc2c1",
]


def write(path, text):
    path.write_text(text)
    return path


def test_loader_canonicalises_merges_and_reports_invalid(tmp_path, capsys):
    f = write(
        tmp_path / "a.csv",
        "smiles,t1,t2\nOCC,1,\nCCO,,0\nC(C)O,1,\nnot_smiles,0,1\nc1ccccc1,0,1\nc1ccccc1,1,1\n",
    )
    t = load_table(f)
    assert t.tasks == ["t1", "t2"] and t.smiles == ["CCO", "c1ccccc1"]
    np.testing.assert_array_equal(t.labels[0], [1, 0])  # one-sided labels merge
    assert np.isnan(t.labels[1, 0]) and t.labels[1, 1] == 1  # conflict on t1 dropped by default
    assert t.conflicts == 1 and t.invalid == [(5, "not_smiles")]
    assert "line 5" in capsys.readouterr().err
    with pytest.raises(InputError, match="line 5"):
        load_table(f, strict=True)


def test_conflict_policies():
    labels = np.array([[1.0], [0.0], [1.0]])
    for policy, want in [("max", 1), ("min", 0), ("first", 1), ("mean", 1)]:
        _, out, n = merge_duplicates(["A", "A", "A"], labels, policy)
        assert out[0, 0] == want and n == 1
    _, out, _ = merge_duplicates(["A", "A"], labels[:2], "mean")
    assert np.isnan(out[0, 0])  # a tie stays missing
    with pytest.raises(InputError, match="conflict policy"):
        merge_duplicates(["A"], labels[:1], "vote")


def test_random_split_is_seeded_and_disjoint():
    a = random_split(100, seed=3)
    b = random_split(100, seed=3)
    c = random_split(100, seed=4)
    assert [len(x) for x in a] == [80, 10, 10]
    assert all((x == y).all() for x, y in zip(a, b, strict=True)) and not (a[0] == c[0]).all()
    assert len(set(np.concatenate(a))) == 100


def test_scaffold_split_keeps_scaffolds_apart():
    smiles = SMILES * 1
    for seed in (0, 1):
        parts = scaffold_split(smiles, seed)
        assert sorted(np.concatenate(parts).tolist()) == list(range(len(smiles)))
        scaf = [{murcko_scaffold(smiles[i]) for i in p} for p in parts]
        assert not (scaf[0] & scaf[1]) and not (scaf[0] & scaf[2]) and not (scaf[1] & scaf[2])
    assert murcko_scaffold("c1ccccc1CCC") == "c1ccccc1" and murcko_scaffold("CCO") == ""


def test_given_random_and_scaffold_splits_from_files(tmp_path):
    rows = "".join(f"{s},{i % 2},{(i // 2) % 2}\n" for i, s in enumerate(SMILES))
    train = write(tmp_path / "train.csv", "smiles,a,b\n" + rows)
    val = write(tmp_path / "val.csv", "smiles,a,b\nCCO,1,0\n")
    test = write(tmp_path / "test.csv", "smiles,a,b\nCCN,0,\n")
    given = load_splits(str(train), val=str(val), test=str(test))
    assert (len(given.train), len(given.val), len(given.test)) == (16, 1, 1)
    rnd = load_splits(str(train), "random", seed=0)
    assert sum(map(len, (rnd.train, rnd.val, rnd.test))) == 16
    scf = load_splits(str(train), "scaffold", seed=0)
    assert set(scf.test.smiles).isdisjoint(scf.train.smiles)
    bad = write(tmp_path / "other.csv", "smiles,a,c\nCCO,1,0\n")
    with pytest.raises(InputError, match=r"label column\(s\) \[.b.\] not found"):
        load_splits(str(train), val=str(bad), test=str(test))
    with pytest.raises(InputError, match="multi_train.csv"):
        load_splits(f"matic:{tmp_path}")


def test_embedded_table():
    t = load_embedded()
    assert t.tasks == ["label_3cl", "label_cell"] and len(t) == 9770
    known = ~np.isnan(t.labels)
    assert known[:, 0].sum() == 9469 and known[:, 1].sum() == 5563 and known.all(axis=1).sum() == 5262
    assert np.nansum(t.labels[:, 0]) == 300 and np.nansum(t.labels[:, 1]) == 499


@pytest.mark.parametrize(
    ("content", "kwargs", "match"),
    [
        ("", {}, "empty"),
        ("smiles,a\n", {}, "no rows"),
        ("mol,a\nCCO,1\n", {}, "no SMILES column"),
        ("smiles,a\nCCO,1\n", {"label_cols": ["b"]}, r"label column\(s\) \['b'\] not found"),
        ("smiles\nCCO\n", {}, "no label columns"),
        ("smiles,a\nCCO,active\n", {}, "line 2 has non-numeric label 'active'"),
        ("smiles,a\nCCO,2\n", {}, "labels must be 1, 0 or blank"),
        ("smiles,a\nxx,1\nyy,0\n", {}, "none of the 2 SMILES"),
    ],
)
def test_bad_inputs_raise_one_clear_line(tmp_path, content, kwargs, match):
    f = write(tmp_path / "bad.csv", content)
    with pytest.raises(InputError, match=match) as info:
        load_table(f, **kwargs)
    assert "\n" not in str(info.value) and str(f) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_table(tmp_path / "nope.csv")
