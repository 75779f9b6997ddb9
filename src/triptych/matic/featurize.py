"""Attentive FP featurisation: 39 atom features and 10 bond features, as numpy arrays or PyG ``Data``.

Atom vector (Xiong et al. 2020, as dgllife's ``AttentiveFPAtomFeaturizer``):
element one-hot (16) | degree 0-5 (6) | formal charge (1) | radical electrons (1) |
hybridisation SP/SP2/SP3/SP3D/SP3D2/other (6) | aromatic (1) | total H 0-4 (5) |
CIP R/S one-hot + chirality possible (3).  Bond vector: single/double/triple/aromatic
(4) | conjugated (1) | in ring (1) | stereo none/any/Z/E (4).
Out-of-range degree or H count gives an all-zero block, as in the reference.

Speed: RDKit is asked once per atom for a row of small integers; the one-hot blocks are
then written for the whole molecule at once with numpy fancy indexing (a lookup table
per block), instead of building Python lists of floats per feature.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rdkit import Chem

if TYPE_CHECKING:  # torch and PyG are imported where tensors are built: arrays need only RDKit and numpy
    import torch
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
BOND_STEREO = (
    Chem.BondStereo.STEREONONE,
    Chem.BondStereo.STEREOANY,
    Chem.BondStereo.STEREOZ,
    Chem.BondStereo.STEREOE,
)
FEATURIZER_VERSION = "attentivefp-39-10/1"

# A molecule as arrays: x [atoms, atom_dim] float32, edge_index [2, 2*bonds] int64, edge_attr [2*bonds, bond_dim].
GraphArrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def _lookup(keys: Sequence[int], size: int, offset: int, other: int | None = None) -> np.ndarray:
    """A table mapping an integer key (e.g. atomic number) to its one-hot column; -1 = no column."""
    table = np.full(size, -1 if other is None else other, dtype=np.int64)
    for i, k in enumerate(keys):
        table[int(k)] = offset + i
    return table


@dataclass
class AttentiveFPFeaturizer:
    """The Attentive FP featuriser: its dimensions follow from its vocabularies; it owns its graph cache.

    ``featurizer(smiles)`` gives a PyG ``Data`` (or ``None``); :meth:`arrays` the numpy
    arrays (for workers that must send graphs between processes); :meth:`many` graphs
    for a list, cached in memory (bounded) and optionally on disk.
    """

    elements: tuple[str, ...] = ELEMENTS
    max_degree: int = 5
    max_hs: int = 4
    memory_limit: int = 200_000  # molecules kept in the in-memory cache before it is cleared
    _memory: dict[str, Data | None] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pt = Chem.GetPeriodicTable()
        # Column offsets of the atom blocks, in the order of the module docstring.
        self._deg0 = len(self.elements) + 1
        self._charge = self._deg0 + self.max_degree + 1
        self._hyb0 = self._charge + 2
        self._arom = self._hyb0 + len(HYBRIDISATIONS) + 1
        self._hs0 = self._arom + 1
        self._cip0 = self._hs0 + self.max_hs + 1
        self._elem = _lookup([pt.GetAtomicNumber(e) for e in self.elements], 128, 0, other=len(self.elements))
        self._hyb = _lookup(
            [int(h) for h in HYBRIDISATIONS], 32, self._hyb0, other=self._hyb0 + len(HYBRIDISATIONS)
        )
        self._btype = _lookup([int(b) for b in BOND_TYPES], 64, 0)
        self._bstereo = _lookup([int(s) for s in BOND_STEREO], 16, 6)

    @property
    def atom_dim(self) -> int:
        """element (+other) | degree | charge | radicals | hybridisation (+other) | aromatic | H | R/S | possible."""
        return self._cip0 + 3

    @property
    def bond_dim(self) -> int:
        return len(BOND_TYPES) + 2 + len(BOND_STEREO)

    @property
    def version(self) -> str:
        return (
            FEATURIZER_VERSION
            if self.elements == ELEMENTS
            else f"{FEATURIZER_VERSION}:{','.join(self.elements)}"
        )

    # ------------------------------------------------------------------ one molecule
    def mol_arrays(self, mol: Chem.Mol) -> GraphArrays:
        """Molecule -> ``(x, edge_index, edge_attr)`` arrays, both bond directions."""
        rows = np.array(
            [
                (
                    a.GetAtomicNum(),
                    a.GetDegree(),
                    a.GetFormalCharge(),
                    a.GetNumRadicalElectrons(),
                    int(a.GetHybridization()),
                    a.GetIsAromatic(),
                    a.GetTotalNumHs(),
                    {"R": 1, "S": 2}.get(a.GetProp("_CIPCode"), 0) if a.HasProp("_CIPCode") else 0,
                    a.HasProp("_ChiralityPossible"),
                )
                for a in mol.GetAtoms()
            ],
            dtype=np.int64,
        ).reshape(-1, 9)
        n = len(rows)
        x = np.zeros((n, self.atom_dim), dtype=np.float32)
        at = np.arange(n)
        x[at, self._elem[np.minimum(rows[:, 0], 127)]] = 1
        _set_in_range(x, at, rows[:, 1], self._deg0, self.max_degree)
        x[:, self._charge] = rows[:, 2]
        x[:, self._charge + 1] = rows[:, 3]
        x[at, self._hyb[np.minimum(rows[:, 4], 31)]] = 1
        x[:, self._arom] = rows[:, 5]
        _set_in_range(x, at, rows[:, 6], self._hs0, self.max_hs)
        cip = rows[:, 7] > 0
        x[at[cip], self._cip0 + rows[cip, 7] - 1] = 1
        x[:, self._cip0 + 2] = rows[:, 8]

        bonds = np.array(
            [
                (
                    b.GetBeginAtomIdx(),
                    b.GetEndAtomIdx(),
                    int(b.GetBondType()),
                    b.GetIsConjugated(),
                    b.IsInRing(),
                    int(b.GetStereo()),
                )
                for b in mol.GetBonds()
            ],
            dtype=np.int64,
        ).reshape(-1, 6)
        m = len(bonds)
        ea = np.zeros((m, self.bond_dim), dtype=np.float32)
        bt = np.arange(m)
        btype = self._btype[np.minimum(bonds[:, 2], 63)]
        ok = btype >= 0
        ea[bt[ok], btype[ok]] = 1
        ea[:, 4] = bonds[:, 3]
        ea[:, 5] = bonds[:, 4]
        st = self._bstereo[np.minimum(bonds[:, 5], 15)]
        ok = st >= 0
        ea[bt[ok], st[ok]] = 1
        # Bond k appears as edges 2k (i -> j) and 2k+1 (j -> i).
        edge_index = np.stack([bonds[:, :2], bonds[:, 1::-1]], axis=1).reshape(-1, 2).T.copy()
        return x, edge_index, np.repeat(ea, 2, axis=0)

    def arrays(self, smiles: str) -> GraphArrays | None:
        """SMILES -> arrays, or ``None`` when it cannot be parsed."""
        mol = mol_from_smiles(smiles)
        return None if mol is None else self.mol_arrays(mol)

    def __call__(self, smiles: str) -> Data | None:
        """SMILES -> PyG graph, or ``None`` when it cannot be parsed."""
        arr = self.arrays(smiles)
        return None if arr is None else to_data(arr)

    # ------------------------------------------------------------------ many molecules, cached
    def many(self, smiles: Sequence[str], cache_dir: str | Path | None = None) -> list[Data | None]:
        """Graphs for many SMILES (``None`` where invalid), featurised once: in memory, and on disk under ``cache_dir``.

        The disk cache is one safetensors file per SMILES list (keyed by a hash of the list
        and the featuriser version): concatenated tensors plus per-molecule offsets.
        """
        smiles = list(smiles)
        path = None
        if cache_dir is not None:
            key = hashlib.sha256(("\n".join([self.version, *smiles])).encode()).hexdigest()[:24]
            path = Path(cache_dir) / f"graphs-{key}.safetensors"
            if path.is_file():
                return self._load(path)
        graphs = []
        for s in smiles:
            if s not in self._memory:
                if len(self._memory) >= self.memory_limit:  # bound memory when screening huge libraries
                    self._memory.clear()
                self._memory[s] = self(s)
            graphs.append(self._memory[s])
        if path is not None:
            self._save(path, graphs)
        return graphs

    def _save(self, path: Path, graphs: list[Data | None]) -> None:
        import torch
        from safetensors.torch import save

        from triptych.core.io import write_bytes

        gs = [g for g in graphs if g is not None]
        tensors = {
            "x": torch.cat([g.x for g in gs]) if gs else torch.zeros(0, self.atom_dim),
            "edge_index": torch.cat([g.edge_index for g in gs], dim=1)
            if gs
            else torch.zeros(2, 0, dtype=torch.long),
            "edge_attr": torch.cat([g.edge_attr for g in gs]) if gs else torch.zeros(0, self.bond_dim),
            "n_atoms": torch.tensor([g.num_nodes if g is not None else -1 for g in graphs]),
            "n_edges": torch.tensor([g.edge_index.shape[1] if g is not None else 0 for g in graphs]),
        }
        write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}))

    @staticmethod
    def _load(path: Path) -> list[Data | None]:
        from safetensors.torch import load_file
        from torch_geometric.data import Data

        t = load_file(str(path))
        na, ne = t["n_atoms"].numpy(), t["n_edges"].numpy()
        a_off = np.concatenate([[0], np.cumsum(np.maximum(na, 0))])
        e_off = np.concatenate([[0], np.cumsum(ne)])
        out: list[Data | None] = []
        for i, n in enumerate(na):
            if n < 0:
                out.append(None)
                continue
            out.append(
                Data(
                    x=t["x"][a_off[i] : a_off[i + 1]],
                    edge_index=t["edge_index"][:, e_off[i] : e_off[i + 1]],
                    edge_attr=t["edge_attr"][e_off[i] : e_off[i + 1]],
                )
            )
        return out


def _set_in_range(x: np.ndarray, rows: np.ndarray, values: np.ndarray, offset: int, top: int) -> None:
    """One-hot ``values`` in ``0..top`` into columns ``offset..offset+top``; out-of-range values stay all-zero."""
    ok = (values >= 0) & (values <= top)
    x[rows[ok], offset + values[ok]] = 1


def to_data(arrays: GraphArrays) -> Data:
    import torch
    from torch_geometric.data import Data

    x, edge_index, edge_attr = arrays
    return Data(
        x=torch.from_numpy(x), edge_index=torch.from_numpy(edge_index), edge_attr=torch.from_numpy(edge_attr)
    )


def collate(
    graphs: Sequence[GraphArrays], bucket: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Arrays of several molecules -> one disjoint-union batch ``(x, edge_index, edge_attr, batch)``, as PyG's ``Batch``.

    Done in numpy, which is cheaper than building a ``Data`` per molecule and calling
    ``Batch.from_data_list`` when the graphs come straight from the featuriser.
    ``bucket > 0`` appends one padding molecule (featureless atoms, self-loop edges) so that
    the atom count is a multiple of ``bucket`` and the edge count of ``2 * bucket``: oneDNN
    (bf16 on CPU) builds a kernel per matrix shape, and batches of a few shapes reuse them.
    The padding molecule is the last graph; drop its outputs.
    """
    import torch

    if bucket and graphs:
        n = sum(g[0].shape[0] for g in graphs)
        e = sum(g[1].shape[1] for g in graphs)
        pn, pe = bucket - n % bucket, 2 * bucket - e % (2 * bucket)
        loops = np.arange(pe) % pn
        pad = (
            np.zeros((pn, graphs[0][0].shape[1]), np.float32),
            np.stack([loops, loops]),
            np.zeros((pe, graphs[0][2].shape[1]), np.float32),
        )
        graphs = [*graphs, pad]
    sizes = np.array([g[0].shape[0] for g in graphs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    edge_index = np.concatenate([g[1] + off for g, off in zip(graphs, offsets, strict=True)], axis=1)
    return (
        torch.from_numpy(np.concatenate([g[0] for g in graphs])),
        torch.from_numpy(edge_index),
        torch.from_numpy(np.concatenate([g[2] for g in graphs])),
        torch.from_numpy(np.repeat(np.arange(len(graphs)), sizes)),
    )


def mol_from_smiles(smiles: str) -> Chem.Mol | None:
    """Parse ``smiles`` with CIP labels assigned; ``None`` if RDKit cannot read it or it has no atoms."""
    from triptych.matic.chem import parse

    mol = parse(smiles)
    if mol is None:
        return None
    Chem.AssignStereochemistry(mol, cleanIt=True, force=True, flagPossibleStereoCenters=True)
    return mol


DEFAULT = AttentiveFPFeaturizer()
ATOM_DIM = DEFAULT.atom_dim
BOND_DIM = DEFAULT.bond_dim


def mol_to_graph(mol: Chem.Mol) -> Data:
    """Molecule -> ``Data(x [atoms, 39], edge_index [2, 2*bonds], edge_attr [2*bonds, 10])``; both bond directions."""
    return to_data(DEFAULT.mol_arrays(mol))


def smiles_to_graph(smiles: str) -> Data | None:
    """SMILES -> graph, or ``None`` when it cannot be parsed."""
    return DEFAULT(smiles)


def featurize(smiles: Sequence[str], cache_dir: str | Path | None = None) -> list[Data | None]:
    """Graphs for many SMILES with the default featuriser (see :meth:`AttentiveFPFeaturizer.many`)."""
    return DEFAULT.many(smiles, cache_dir)
