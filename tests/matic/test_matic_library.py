"""Library readers (.smi/.csv/.sdf/Parquet, gz, globs) as shards; standardisation, alerts, domain."""

import gzip

import numpy as np
import pytest
from rdkit import Chem

from triptych.core.errors import InputError
from triptych.matic.library import iter_library, iter_rows, plan_shards, read_shard

MOLS = [
    ("CCO", "ethanol"),
    ("c1ccccc1O", "phenol"),
    ("CC(=O)Nc1ccc(O)cc1", "paracetamol"),
    ("C1CCNCC1", "pip"),
    ("c1ccncc1", "pyridine"),
]


def _write(path, text: str):
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


def _all_rows(shards):
    return [row for shard in shards for row in read_shard(shard)]


@pytest.mark.parametrize("name", ["lib.smi", "lib.smi.gz"])
def test_smi_shards_cover_every_line_once(tmp_path, name):
    # line 3 is blank, line 4 has a tab-separated name; rows keep the physical line number
    text = "CCO ethanol\nc1ccccc1O phenol\n\nCC(=O)Nc1ccc(O)cc1\tparacetamol\nC1CCNCC1 pip\nc1ccncc1\n"
    path = _write(tmp_path / name, text)
    shards = plan_shards(path, shard_size=2)
    assert [s["rows"] for s in shards] == [2, 2, 1] and len({s["id"] for s in shards}) == 3
    assert _all_rows(shards) == [
        (1, "CCO", "ethanol"),
        (2, "c1ccccc1O", "phenol"),
        (4, "CC(=O)Nc1ccc(O)cc1", "paracetamol"),
        (5, "C1CCNCC1", "pip"),
        (6, "c1ccncc1", ""),
    ]
    # the last shard alone reads the same rows as the whole pass (a worker reads only its shard)
    assert list(iter_rows(shards[-1])) == [(6, "c1ccncc1", "")]


@pytest.mark.parametrize("name", ["lib.csv", "lib.csv.gz"])
def test_csv_detects_smiles_and_name_columns(tmp_path, name):
    text = "\ufeffID,Smiles,mw\n" + "".join(f'{n},"{s}",1.0\n' for s, n in MOLS)
    shards = plan_shards(_write(tmp_path / name, text), shard_size=3)
    assert [s["rows"] for s in shards] == [3, 2]
    assert _all_rows(shards) == [(i + 2, s, n) for i, (s, n) in enumerate(MOLS)]  # line 1 is the header
    with pytest.raises(InputError, match="no SMILES column"):
        plan_shards(_write(tmp_path / "x.csv", "mol,id\nCCO,a\n"))
    with pytest.raises(InputError, match="no column 'smi'"):
        plan_shards(tmp_path / name, smiles_col="smi")


@pytest.mark.parametrize("name", ["lib.sdf", "lib.sdf.gz"])
def test_sdf_streams_records_with_names(tmp_path, name):
    raw = tmp_path / "raw.sdf"
    writer = Chem.SDWriter(str(raw))
    for smi, n in MOLS:
        mol = Chem.MolFromSmiles(smi)
        mol.SetProp("_Name", n)
        writer.write(mol)
    writer.close()
    path = _write(tmp_path / name, raw.read_text())
    shards = plan_shards(path, shard_size=2)
    assert [s["rows"] for s in shards] == [2, 2, 1]
    rows = _all_rows(shards)
    assert [(r, n) for r, _, n in rows] == [(i + 1, n) for i, (_, n) in enumerate(MOLS)]
    assert [s for _, s, _ in rows] == [Chem.CanonSmiles(s) for s, _ in MOLS]


def test_parquet_by_row_groups_and_glob_of_mixed_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"compound_id": [n for _, n in MOLS], "smiles": [s for s, _ in MOLS]})
    pq.write_table(table, tmp_path / "part-1.parquet", row_group_size=3)
    shards = plan_shards(tmp_path / "part-1.parquet", shard_size=2)
    # groups of 3 + 2 rows, cut at 2: a shard never spans two row groups
    assert [(s["row_group"], s["skip"], s["rows"]) for s in shards] == [(0, 0, 2), (0, 2, 1), (1, 0, 2)]
    assert _all_rows(shards) == [(i + 1, s, n) for i, (s, n) in enumerate(MOLS)]
    _write(tmp_path / "part-2.smi.gz", "CCN x\n")
    _write(tmp_path / "part-3.smi", "CCCl y\n")
    rows = list(iter_library(str(tmp_path / "part-*"), shard_size=2))
    assert [s for _, s, _ in rows] == [s for s, _ in MOLS] + ["CCN", "CCCl"]
    ids = [s["id"] for s in plan_shards([str(tmp_path / "part-*")], shard_size=2)]
    assert len(ids) == len(set(ids)) == 5


def test_bad_library_files_are_one_line_errors(tmp_path):
    cases = [
        (_write(tmp_path / "a.xlsx", "x"), "unknown library format"),
        (_write(tmp_path / "b.smi.gz.tmp", "x"), "unknown library format"),
        (_write(tmp_path / "c.smi.gz", "").parent / "c.smi.gz", "not gzip-compressed"),
        (_write(tmp_path / "d.smi", ""), "no molecules"),
        (_write(tmp_path / "e.csv", ""), "empty"),
        (_write(tmp_path / "g.sdf", "not an sdf\n"), "no '\\$\\$\\$\\$'"),
        (_write(tmp_path / "h.parquet", "nope"), "not a readable Parquet"),
        (tmp_path / "missing.smi", "does not exist"),
        (str(tmp_path / "none-*.smi"), "matches no file"),
        (tmp_path, "is a folder"),
    ]
    (tmp_path / "c.smi.gz").write_text("CCO\n")  # named .gz, plain text
    (tmp_path / "f.smi").write_bytes(b"CCO\x00\x01\n")
    cases.append((tmp_path / "f.smi", "binary"))
    trunc = tmp_path / "t.smi.gz"
    trunc.write_bytes(gzip.compress(b"CCO\n" * 5000)[:-12])
    cases.append((trunc, "corrupt or truncated gzip"))
    for path, match in cases:
        with pytest.raises(InputError, match=match) as info:
            plan_shards(path)
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------- standardisation, alerts, domain


def test_standardizer_strips_salts_neutralises_and_merges_duplicates():
    from triptych.matic.standardize import (
        SeenKeys,
        Standardizer,
        dedup_keys,
        first_occurrence,
        mol_from_smiles,
    )

    std = Standardizer()
    assert std.smiles(["[Na+].CC(=O)[O-]", "C[NH3+].[Cl-]", "c1ccccc1C(=O)O.O.O", "C1CC((", ""]) == [
        "CC(=O)O",
        "CN",
        "O=C(O)c1ccccc1",
        None,
        None,
    ]
    parents = [std(mol_from_smiles(s)) for s in ["CCO", "OCC", "[Na+].[O-]CC", "CCN", "C1CC(("]]
    for key in ("smiles", "inchikey"):
        keys = dedup_keys(parents, key)
        np.testing.assert_array_equal(first_occurrence(keys), [0, 0, 0, 3, -1])
    seen = SeenKeys()
    np.testing.assert_array_equal(seen.mark(["CCO", "CCN", "CCO", None]), [False, False, True, False])
    np.testing.assert_array_equal(seen.mark(["CCN", "CCC"]), [True, False])  # across shards
    assert len(seen) == 3
    # tautomer canonicalisation (opt-in) maps two tautomers to one parent
    taut = Standardizer(tautomers=True)
    assert taut.smiles(["Oc1ccccn1"]) == taut.smiles(["O=c1cccc[nH]1"])
    assert std.smiles(["Oc1ccccn1"]) != std.smiles(["O=c1cccc[nH]1"])


def test_pains_and_brenk_alert_columns():
    from triptych.matic.alerts import alert_columns

    # 5-benzylidene rhodanine: the textbook PAINS (ene_rhod); nitrobenzene: a Brenk alert only
    mols = [Chem.MolFromSmiles(s) for s in ["O=C1NC(=S)SC1=Cc1ccccc1", "O=[N+]([O-])c1ccccc1", "CCO"]] + [
        None
    ]
    df = alert_columns(mols)
    assert list(df["pains"]) == [True, False, False, False]
    assert "ene_rhod" in df.loc[0, "pains_alert"] and df.loc[2, "pains_alert"] == ""
    assert df.loc[1, "brenk"] and not df.loc[2, "brenk"] and "nitro" in df.loc[1, "brenk_alert"].lower()


def test_domain_similarity_is_one_for_a_training_molecule():
    from triptych.matic.domain import Domain

    train = ["CC(=O)Nc1ccc(O)cc1", "c1ccccc1O", "CCN(CC)CC"]
    domain = Domain([Chem.MolFromSmiles(s) for s in train], threshold=0.4)
    queries = [
        Chem.MolFromSmiles(s) for s in ["c1ccccc1O", "CC(=O)Nc1ccc(OC)cc1", "FC(F)(F)C(F)(F)C(F)(F)F"]
    ] + [None]
    cols = domain.columns(queries)
    assert cols["max_sim_train"][0] == pytest.approx(1.0)
    assert (
        0.4 < cols["max_sim_train"][1] < 1.0
        and cols["max_sim_train"][2] < 0.1
        and np.isnan(cols["max_sim_train"][3])
    )
    assert list(cols["in_domain"]) == [True, True, False, False]
