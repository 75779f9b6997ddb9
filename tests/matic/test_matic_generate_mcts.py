"""MCTS rationale extraction and merging, checked with hand-made substructure oracles."""

from rdkit import Chem

from triptych.matic.chem import induced_submol
from triptych.matic.generate.rationale import (
    MCTSConfig,
    clusters,
    deletion_moves,
    extract_rationales,
    mcts,
    merge_rationales,
)
from triptych.matic.generate.scoring import CountingOracle, SubstructureOracle

DRUG = "CC(C)Oc1ccc(S(=O)(=O)N2CCC(C(=O)Nc3ccc4ncccc4c3)CC2)cc1"  # sulfonamide + quinoline amide
QUINOLINE = "c1ccc2ncccc2c1"


def _oracle():
    return CountingOracle(SubstructureOracle({"quinoline": QUINOLINE, "sulfonamide": "S(=O)(=O)N"}))


def test_mcts_finds_the_substructure_the_oracle_rewards():
    oracle = _oracle()
    found = mcts(DRUG, oracle, 0, MCTSConfig(min_atoms=10, max_atoms=20, guide="all"))
    smiles = [r.smiles for r in found]
    assert Chem.MolToSmiles(Chem.MolFromSmiles(QUINOLINE)) in smiles  # the exact substructure is a rationale
    query = Chem.MolFromSmarts(QUINOLINE)
    for r in found:
        mol = Chem.MolFromSmiles(r.smiles)
        assert mol.HasSubstructMatch(query) and mol.GetNumAtoms() <= 20 and r.proba[0] >= 0.5
        # atom indices point into the canonical source molecule and rebuild the rationale
        assert (
            Chem.MolToSmiles(induced_submol(Chem.MolFromSmiles(r.source), r.atoms, keep_valence=False))
            == r.smiles
        )
    assert 0 < oracle.calls < 400


def test_default_search_stops_at_15_atoms_and_keeps_only_confident_fragments():
    found = mcts(DRUG, _oracle(), 1, MCTSConfig())
    assert found, "the sulfonamide task should give rationales"
    assert min(len(r.atoms) for r in found) >= 10
    assert all(len(r.atoms) <= 20 and r.proba[0] >= 0.5 for r in found)
    # an inactive molecule (no sulfonamide) has no rationale for that task
    assert mcts("O=C(Nc1ccc2ncccc2c1)C1CCCCC1", _oracle(), 1, MCTSConfig()) == []


def test_moves_delete_peripheral_pieces_and_keep_rings_whole():
    mol = Chem.MolFromSmiles("CCOc1ccccc1")
    cls = clusters(mol)
    moves = deletion_moves(mol, frozenset(range(mol.GetNumAtoms())), cls)
    removed = sorted(sorted(set(range(mol.GetNumAtoms())) - m) for m in moves)
    assert removed == [[0], [4, 5, 6, 7, 8]]  # the terminal methyl, or the benzene ring minus its ipso atom


def test_merge_builds_dual_rationales_that_hold_both_substructures(tmp_path):
    oracle = _oracle()
    cfg = MCTSConfig(min_atoms=10, guide="all")
    rat_a = extract_rationales([DRUG], oracle, 0, cfg, cache=tmp_path / "c.json", oracle_id="hand")
    rat_b = extract_rationales(
        [DRUG, "CS(=O)(=O)Nc1ccccc1"], oracle, 1, cfg, cache=tmp_path / "c.json", oracle_id="hand"
    )
    calls = oracle.calls
    again = extract_rationales([DRUG], oracle, 0, cfg, cache=tmp_path / "c.json", oracle_id="hand")
    assert [r.smiles for r in again] == [
        r.smiles for r in rat_a
    ] and oracle.calls == calls  # served from the cache
    dual = merge_rationales(rat_a, rat_b, oracle, (0, 1))
    assert dual
    for r in dual:
        mol = Chem.MolFromSmiles(r.smiles)
        assert mol.HasSubstructMatch(Chem.MolFromSmarts(QUINOLINE))
        assert mol.HasSubstructMatch(Chem.MolFromSmarts("S(=O)(=O)N"))
        assert r.tasks == ("quinoline", "sulfonamide") and min(r.proba) >= 0.5


def test_mcs_merge_overlays_both_rationales_on_their_common_core():
    from triptych.matic.generate.rationale import mcs_merge

    a, b = "Oc1ccc(Cl)cc1", "Nc1ccc(C(=O)O)cc1"  # share the benzene ring
    merged = mcs_merge(a, b)
    assert merged
    for smiles in merged:
        mol = Chem.MolFromSmiles(smiles)
        assert mol is not None and Chem.SanitizeMol(mol) == Chem.SanitizeFlags.SANITIZE_NONE
        assert mol.HasSubstructMatch(Chem.MolFromSmiles(a)) and mol.HasSubstructMatch(Chem.MolFromSmiles(b))
        # one ring: the two benzenes are overlaid, not joined by a new bond
        assert mol.GetRingInfo().NumRings() == 1 and mol.GetNumAtoms() < 9 + 10
    # a chain and a ring share no complete ring and no ring-only atom match: nothing to merge
    assert mcs_merge("C1CCCCC1", "c1ccncc1") == []


def test_merge_rationales_uses_mcs_and_never_invents_a_bond():
    from triptych.matic.generate.rationale import Rationale

    oracle = _oracle()
    a = Rationale("Cc1ccc2ncccc2c1", "s1", ("quinoline",), (), (0.9,))
    b = Rationale("CS(=O)(=O)Nc1ccccc1", "s2", ("sulfonamide",), (), (0.9,))
    dual = merge_rationales([a], [b], oracle, (0, 1))
    assert dual, "the benzene ring they share should give a merged dual rationale"
    for r in dual:
        mol = Chem.MolFromSmiles(r.smiles)
        assert mol.HasSubstructMatch(Chem.MolFromSmiles(a.smiles))
        assert mol.HasSubstructMatch(Chem.MolFromSmiles(b.smiles))
        assert mol.GetNumAtoms() < Chem.MolFromSmiles(a.smiles).GetNumAtoms() + 11  # overlaid, not bonded
        assert min(r.proba) >= 0.5
    # fragments with no common substructure are not joined (the old single-bond join would have)
    c = Rationale("C1CCCCC1", "s3", ("quinoline",), (), (0.9,))
    assert (
        merge_rationales(
            [c], [b], CountingOracle(SubstructureOracle({"x": "C1CCCCC1", "y": "S(=O)(=O)N"})), (0, 1)
        )
        == []
    )


def test_candidate_guided_search_scores_only_fragments_that_can_be_rationales():
    sizes = {}
    for guide in ("candidates", "all"):
        oracle = _oracle()
        found = mcts(DRUG, oracle, 1, MCTSConfig(guide=guide))
        sizes[guide] = [Chem.MolFromSmiles(s).GetNumAtoms() for s in oracle.log]
        assert found and all(r.proba[0] >= 0.5 and len(r.atoms) <= 20 for r in found)
    # besides the molecule itself, nothing larger than max_atoms is scored; RationaleRL's guide scores many
    assert max(sizes["candidates"][1:]) <= 20 and max(sizes["all"][1:]) > 20
    assert len(sizes["candidates"]) < len(sizes["all"])
