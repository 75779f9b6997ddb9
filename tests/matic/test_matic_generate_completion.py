"""The completion model: fragment vocabulary, teacher forcing, the shipped checkpoint, containment."""

import random

import pytest
import torch
from rdkit import Chem

from triptych.core.checkpoint import CheckpointError, save_checkpoint
from triptych.matic.generate.completion import (
    CompletionModel,
    Fragment,
    build_vocabulary,
    collate,
    default_checkpoint,
    embedded_corpus,
    encode_state,
)
from triptych.matic.generate.metrics import completion_check
from triptych.matic.generate.rationale import random_rationales


def test_teacher_forcing_rebuilds_the_molecule():
    smiles = "CC(=O)Nc1ccc(S(=O)(=O)N2CCOCC2)cc1"
    model = CompletionModel(build_vocabulary([smiles], 50))
    steps = model.trajectory(smiles, random.Random(1))
    assert len(steps) >= 2 and steps[-1].fragment == -1  # grows, then stops
    assert all(
        0 <= s.choice < len(s.state.atoms) and 0 <= s.fragment < len(model.vocabulary) for s in steps[:-1]
    )
    # the state at the stop decision is the whole molecule
    full = encode_state(Chem.MolFromSmiles(smiles))
    assert sorted(steps[-1].state.mol_ids.tolist()) == sorted(full.mol_ids.tolist())
    lp = model.policy.log_prob(collate(steps))
    assert lp.shape == (len(steps),) and torch.all(lp <= 0)


def test_attach_keeps_the_original_atoms_and_fixes_hydrogens():
    model = CompletionModel([Fragment("c1cc[nH]c1", 3), Fragment("C1CC1", 0)])
    ring = Chem.MolFromSmiles("c1ccccc1")
    new = model.attach(ring, 0, 0)  # N-aryl pyrrole: the [nH] loses its hydrogen
    assert Chem.MolToSmiles(new) == Chem.MolToSmiles(Chem.MolFromSmiles("c1ccc(-n2cccc2)cc1"))
    assert [a.GetSymbol() for a in new.GetAtoms()][:6] == ["C"] * 6


def test_shipped_checkpoint_completes_1000_rationales_containing_them():
    model = CompletionModel.load(default_checkpoint())
    assert len(model.vocabulary) >= 500
    rationales = random_rationales(embedded_corpus()[-300:], 100, seed=3)  # MCTS-like fragments
    assert len(rationales) == 100
    check = completion_check(model, rationales, 1000, seed=0)
    assert check["containment"] == 1.0  # every completion contains its rationale
    assert check["validity"] >= 0.95
    assert check["distinct"] > 0.5 and 15 <= check["mean_heavy_atoms"] <= 40


def test_save_load_round_trip_and_wrong_checkpoint(tmp_path):
    model = CompletionModel(build_vocabulary(embedded_corpus()[:100], 30), hidden=16)
    path = model.save(tmp_path / "c.safetensors")
    again = CompletionModel.load(path)
    assert [f.key for f in again.vocabulary] == [f.key for f in model.vocabulary]
    for k, v in model.policy.state_dict().items():
        torch.testing.assert_close(again.policy.state_dict()[k], v.half().float())
    save_checkpoint(tmp_path / "other.safetensors", {"w": torch.zeros(2)}, kind="matic.predictor")
    with pytest.raises(CheckpointError, match="not 'matic.completion'"):
        CompletionModel.load(tmp_path / "other.safetensors")
