"""Structure standardisation before scoring, and de-duplication of the standardised parents.

The parent of a submitted structure, as RDKit's ``rdMolStandardize`` (the ChEMBL pipeline's
steps) defines it:

    parent(m) = uncharge(largest_fragment(reionize(normalize(disconnect_metals(remove_hs(m))))))
               [-> canonical tautomer, optional]

so ``[Na+].CC(=O)[O-]`` -> ``CC(=O)O`` (the salt stripped, the acid neutralised, the parent
kept). Tautomer canonicalisation is OFF by default: it makes standardisation ~5x slower (measured,
benchmarks/results/matic_chemchecks_speed), and
MATIC's training SMILES were not tautomer-canonicalised, so turning it on at screening time
alone would move molecules away from how the model saw them; turn it on when the model was
trained on canonical tautomers too.

Duplicates are the same parent: the canonical SMILES of the parent, or its InChIKey.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rdkit import Chem, RDLogger

from triptych.matic.chem import parse as mol_from_smiles  # the one SMILES parser of matic

RDLogger.DisableLog("rdApp.*")

DEDUP_KEYS = ("smiles", "inchikey")


@dataclass
class Standardizer:
    """Callable: ``Mol -> parent Mol`` (``None`` when RDKit cannot standardise it).

    The RDKit tools are built once per Standardizer (in the worker that uses it), not per molecule.
    """

    tautomers: bool = False
    _tools: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"tautomers": self.tautomers}  # RDKit's tools do not pickle; rebuilt on first use

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.tautomers, self._tools = state["tautomers"], {}

    def _build(self) -> dict[str, Any]:
        from rdkit.Chem.MolStandardize import rdMolStandardize as std

        tools = {
            "metals": std.MetalDisconnector(),
            "normalizer": std.Normalizer(),
            "reionizer": std.Reionizer(),
            "chooser": std.LargestFragmentChooser(preferOrganic=True),
            "uncharger": std.Uncharger(canonicalOrder=True),
        }
        if self.tautomers:
            tools["tautomers"] = std.TautomerEnumerator()
        return tools

    def __call__(self, mol: Chem.Mol | None) -> Chem.Mol | None:
        if mol is None or mol.GetNumAtoms() == 0:
            return None
        if not self._tools:
            self._tools.update(self._build())
        t = self._tools
        try:
            m = Chem.RemoveHs(mol)
            m = t["metals"].Disconnect(m)
            m = t["normalizer"].normalize(m)
            m = t["reionizer"].reionize(m)
            m = t["chooser"].choose(m)
            m = t["uncharger"].uncharge(m)
            if self.tautomers:
                m = t["tautomers"].Canonicalize(m)
            Chem.SanitizeMol(m)
        except (ValueError, RuntimeError):  # RDKit's sanitisation / kekulisation errors
            return None
        return m if m.GetNumAtoms() else None

    def smiles(self, smiles: Sequence[str]) -> list[str | None]:
        """Canonical parent SMILES of each input SMILES (``None`` when unparsable)."""
        return [parent_smiles(self(mol_from_smiles(s))) for s in smiles]


def parent_smiles(mol: Chem.Mol | None) -> str | None:
    return Chem.MolToSmiles(mol) if mol is not None else None


def dedup_keys(mols: Iterable[Chem.Mol | None], key: str = "smiles") -> list[str | None]:
    """The identity of each parent: canonical SMILES or InChIKey (``None`` for a missing parent)."""
    if key not in DEDUP_KEYS:
        from triptych.core.errors import InputError

        raise InputError(f"--dedup {key!r} unknown; choose {' or '.join(DEDUP_KEYS)}")
    if key == "smiles":
        return [parent_smiles(m) for m in mols]
    return [(Chem.MolToInchiKey(m) or None) if m is not None else None for m in mols]


def first_occurrence(keys: Sequence[str | None]) -> np.ndarray:
    """For each row, the index of the first row with the same key (itself if first; -1 if no key)."""
    first: dict[str, int] = {}
    out = np.full(len(keys), -1, dtype=np.int64)
    for i, k in enumerate(keys):
        if k is not None:
            out[i] = first.setdefault(k, i)
    return out


class SeenKeys:
    """Streaming duplicate detector across shards: 8-byte hashes of the keys seen so far.

    8 bytes per distinct parent (plus the set's overhead, ~60 B in CPython) instead of the full
    SMILES; the chance of a false duplicate among 10^8 parents is about 3e-4 (birthday bound).
    """

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def mark(self, keys: Sequence[str | None]) -> np.ndarray:
        """``True`` for each key seen before (in an earlier call or earlier in this one)."""
        dup = np.zeros(len(keys), dtype=bool)
        for i, k in enumerate(keys):
            if k is None:
                continue
            h = int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little")
            dup[i] = h in self._seen
            self._seen.add(h)
        return dup

    def __len__(self) -> int:
        return len(self._seen)
