"""Attentive FP featurisation: 39 atom features and 10 bond features as PyG ``Data``.

Atom vector (Xiong et al. 2020, as dgllife's ``AttentiveFPAtomFeaturizer``):
element one-hot (16) | degree 0-5 (6) | formal charge (1) | radical electrons (1) |
hybridisation SP/SP2/SP3/SP3D/SP3D2/other (6) | aromatic (1) | total H 0-4 (5) |
CIP R/S one-hot + chirality possible (3).  Bond vector: single/double/triple/aromatic
(4) | conjugated (1) | in ring (1) | stereo none/any/Z/E (4).
Out-of-range degree or H count gives an all-zero block, as in the reference.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem
from torch_geometric.data import Data

ELEMENTS = ("B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "As", "Se", "Br", "Te", "I", "At")  # + other
HYBRIDISATIONS = (
    Chem.rdchem.HybridizationType.SP,
    Chem.rdchem.HybridizationType.SP2,
    Chem.rdchem.HybridizationType.SP3,
    Chem.rdchem.HybridizationType.SP3D,
    Chem.rdchem.HybridizationType.SP3D2,
)  # + other
BOND_TYPES = (Chem.BondType.SINGLE, Chem.BondType.DOUBLE, Chem.BondType.TRIPLE, Chem.BondType.AROMATIC)
BOND_STEREO = (Chem.BondStereo.STEREONONE, Chem.BondStereo.STEREOANY, Chem.BondStereo.STEREOZ,
               Chem.BondStereo.STEREOE)
ATOM_DIM = 39
BOND_DIM = 10
FEATURIZER_VERSION = "attentivefp-39-10/1"


def _one_hot(value, choices: Sequence, other: bool = False) -> list[float]:
    """One-hot of ``value`` over ``choices`` (plus a trailing 'other' slot when ``other``)."""
    vec = [float(value == c) for c in choices]
    if other:
        vec.append(float(not any(vec)))
    return vec


def atom_features(atom: Chem.Atom) -> list[float]:
    """The 39-d Attentive FP atom vector."""
    cip = atom.GetProp("_CIPCode") if atom.HasProp("_CIPCode") else None
    return (
        _one_hot(atom.GetSymbol(), ELEMENTS, other=True)
        + _one_hot(atom.GetDegree(), range(6))
        + [float(atom.GetFormalCharge()), float(atom.GetNumRadicalElectrons())]
        + _one_hot(atom.GetHybridization(), HYBRIDISATIONS, other=True)
        + [float(atom.GetIsAromatic())]
        + _one_hot(atom.GetTotalNumHs(), range(5))
        + _one_hot(cip, ("R", "S"))
        + [float(atom.HasProp("_ChiralityPossible"))]
    )


def bond_features(bond: Chem.Bond) -> list[float]:
    """The 10-d Attentive FP bond vector."""
    return (
        _one_hot(bond.GetBondType(), BOND_TYPES)
        + [float(bond.GetIsConjugated()), float(bond.IsInRing())]
        + _one_hot(bond.GetStereo(), BOND_STEREO)
    )


def mol_from_smiles(smiles: str) -> Chem.Mol | None:
    """Parse ``smiles`` with CIP labels assigned; ``None`` if RDKit cannot read it or it has no atoms."""
    if not isinstance(smiles, str) or not smiles.strip():
        return None
    mol = Chem.MolFromSmiles(smiles.strip())
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    Chem.AssignStereochemistry(mol, cleanIt=True, force=True, flagPossibleStereoCenters=True)
    return mol


def mol_to_graph(mol: Chem.Mol) -> Data:
    """Molecule -> ``Data(x [atoms, 39], edge_index [2, 2*bonds], edge_attr [2*bonds, 10])``; both bond directions."""
    x = torch.tensor([atom_features(a) for a in mol.GetAtoms()], dtype=torch.float32)
    src, dst, attrs = [], [], []
    for bond in mol.GetBonds():
        i, j, f = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx(), bond_features(bond)
        src += [i, j]
        dst += [j, i]
        attrs += [f, f]
    edge_index = torch.tensor([src, dst], dtype=torch.long).reshape(2, -1)
    edge_attr = torch.tensor(attrs, dtype=torch.float32).reshape(-1, BOND_DIM)
    return Data(x=x, edge_index=edge_index, edge_attr=edge_attr)


def smiles_to_graph(smiles: str) -> Data | None:
    """SMILES -> graph, or ``None`` when it cannot be parsed."""
    mol = mol_from_smiles(smiles)
    return None if mol is None else mol_to_graph(mol)


_MEMORY: dict[str, Data | None] = {}


def featurize(smiles: Sequence[str], cache_dir: str | Path | None = None) -> list[Data | None]:
    """Graphs for many SMILES (``None`` where invalid), featurised once: in memory, and on disk under ``cache_dir``.

    The disk cache is one safetensors file per SMILES list (keyed by a hash of the list
    and the featuriser version): concatenated tensors plus per-molecule offsets.
    """
    smiles = list(smiles)
    path = None
    if cache_dir is not None:
        key = hashlib.sha256(("\n".join([FEATURIZER_VERSION, *smiles])).encode()).hexdigest()[:24]
        path = Path(cache_dir) / f"graphs-{key}.safetensors"
        if path.is_file():
            return _load_graphs(path)
    graphs = []
    for s in smiles:
        if s not in _MEMORY:
            if len(_MEMORY) > 200_000:  # bound memory when screening huge libraries
                _MEMORY.clear()
            _MEMORY[s] = smiles_to_graph(s)
        graphs.append(_MEMORY[s])
    if path is not None:
        _save_graphs(path, graphs)
    return graphs


def _save_graphs(path: Path, graphs: list[Data | None]) -> None:
    from safetensors.torch import save

    from triptych.core.io import write_bytes

    empty = Data(x=torch.zeros(0, ATOM_DIM), edge_index=torch.zeros(2, 0, dtype=torch.long),
                 edge_attr=torch.zeros(0, BOND_DIM))
    gs = [g if g is not None else empty for g in graphs]
    tensors = {
        "x": torch.cat([g.x for g in gs]),
        "edge_index": torch.cat([g.edge_index for g in gs], dim=1),
        "edge_attr": torch.cat([g.edge_attr for g in gs]),
        "n_atoms": torch.tensor([g.num_nodes if g is not None else -1 for g in graphs]),
        "n_edges": torch.tensor([g.edge_index.shape[1] for g in gs]),
    }
    write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}))


def _load_graphs(path: Path) -> list[Data | None]:
    from safetensors.torch import load_file

    t = load_file(str(path))
    na, ne = t["n_atoms"].numpy(), t["n_edges"].numpy()
    a_off = np.concatenate([[0], np.cumsum(np.maximum(na, 0))])
    e_off = np.concatenate([[0], np.cumsum(ne)])
    out: list[Data | None] = []
    for i, n in enumerate(na):
        if n < 0:
            out.append(None)
            continue
        out.append(Data(x=t["x"][a_off[i]:a_off[i + 1]], edge_index=t["edge_index"][:, e_off[i]:e_off[i + 1]],
                        edge_attr=t["edge_attr"][e_off[i]:e_off[i + 1]]))
    return out
