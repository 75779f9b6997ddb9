"""The 39 + 10 Attentive FP features against vectors worked out by hand."""

import numpy as np
import pytest

from triptych.matic.featurize import ATOM_DIM, BOND_DIM, featurize, smiles_to_graph


def atom_vec(element, degree, charge=0, radical=0, hyb="SP3", aromatic=0, hs=0, cip=None, possible=0):
    elements = ["B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "As", "Se", "Br", "Te", "I", "At", "other"]
    v = np.zeros(39)
    v[elements.index(element)] = 1
    v[16 + degree] = 1
    v[22], v[23] = charge, radical
    v[24 + ["SP", "SP2", "SP3", "SP3D", "SP3D2", "other"].index(hyb)] = 1
    v[30] = aromatic
    v[31 + hs] = 1
    if cip:
        v[36 + "RS".index(cip)] = 1
    v[38] = possible
    return v


def bond_vec(kind, conjugated, ring, stereo="none"):
    v = np.zeros(10)
    v[["single", "double", "triple", "aromatic"].index(kind)] = 1
    v[4], v[5] = conjugated, ring
    v[6 + ["none", "any", "Z", "E"].index(stereo)] = 1
    return v


def test_dimensions_and_both_bond_directions():
    g = smiles_to_graph("CCO")
    assert g.x.shape == (3, ATOM_DIM) and g.edge_attr.shape == (4, BOND_DIM)
    assert g.edge_index.tolist() == [[0, 1, 1, 2], [1, 0, 2, 1]]


def test_formal_charge_quaternary_nitrogen():
    g = smiles_to_graph("C[N+](C)(C)C")
    np.testing.assert_array_equal(g.x[1].numpy(), atom_vec("N", 4, charge=1))
    np.testing.assert_array_equal(g.x[0].numpy(), atom_vec("C", 1, hs=3))


def test_negative_charge_and_radical():
    g = smiles_to_graph("CC(=O)[O-]")
    np.testing.assert_array_equal(g.x[3].numpy(), atom_vec("O", 1, charge=-1, hyb="SP2"))
    g = smiles_to_graph("[CH3]")
    np.testing.assert_array_equal(g.x[0].numpy(), atom_vec("C", 0, radical=1, hs=3))


def test_chirality_r_and_s():
    s_ala = smiles_to_graph("N[C@@H](C)C(=O)O")  # L-alanine is S
    r_ala = smiles_to_graph("N[C@H](C)C(=O)O")
    np.testing.assert_array_equal(s_ala.x[1].numpy(), atom_vec("C", 3, hs=1, cip="S", possible=1))
    np.testing.assert_array_equal(r_ala.x[1].numpy(), atom_vec("C", 3, hs=1, cip="R", possible=1))
    # an unspecified stereocentre is flagged possible but carries no R/S
    np.testing.assert_array_equal(
        smiles_to_graph("NC(C)C(=O)O").x[1].numpy(), atom_vec("C", 3, hs=1, possible=1)
    )


def test_aromatic_pyridine_and_bonds():
    g = smiles_to_graph("c1ccncc1")
    np.testing.assert_array_equal(g.x[3].numpy(), atom_vec("N", 2, hyb="SP2", aromatic=1))
    np.testing.assert_array_equal(g.x[0].numpy(), atom_vec("C", 2, hyb="SP2", aromatic=1, hs=1))
    np.testing.assert_array_equal(g.edge_attr[0].numpy(), bond_vec("aromatic", 1, 1))


def test_double_bond_stereo_and_other_element():
    g = smiles_to_graph("C/C=C/C")
    np.testing.assert_array_equal(g.edge_attr[2].numpy(), bond_vec("double", 0, 0, "E"))
    g = smiles_to_graph("C/C=C\\C")
    np.testing.assert_array_equal(g.edge_attr[2].numpy(), bond_vec("double", 0, 0, "Z"))
    g = smiles_to_graph("C#N")
    np.testing.assert_array_equal(g.edge_attr[0].numpy(), bond_vec("triple", 0, 0))
    g = smiles_to_graph("[Na+].[Cl-]")
    assert g.x[0, 15] == 1 and g.x[1, 8] == 1 and g.edge_index.shape == (2, 0)


@pytest.mark.parametrize("bad", ["", "not a smiles", "C1CC", None])
def test_invalid_smiles_give_none(bad):
    assert smiles_to_graph(bad) is None


def test_disk_cache_round_trip(tmp_path):
    smiles = ["CCO", "bad(", "c1ccccc1N"]
    first = featurize(smiles, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("graphs-*.safetensors"))) == 1
    again = featurize(smiles, cache_dir=tmp_path)
    assert first[1] is None and again[1] is None
    for a, b in zip([first[0], first[2]], [again[0], again[2]], strict=True):
        assert (
            (a.x == b.x).all() and (a.edge_index == b.edge_index).all() and (a.edge_attr == b.edge_attr).all()
        )
