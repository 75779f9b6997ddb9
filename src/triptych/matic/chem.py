"""RDKit helpers of MATIC: parsing, canonical SMILES, induced sub-molecules, fragments, fingerprints.

The predictor's tables and featuriser and the generator all parse SMILES through
:func:`parse`, so "what counts as a valid molecule" is decided in one place.
Rationale search (deleting atoms) and the completion model (adding fragments) both
move between a molecule and connected pieces of it; :func:`induced_submol` is the one
place that turns an atom subset into a valid, hydrogen-filled molecule.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from rdkit import Chem, DataStructs, RDLogger
from rdkit.Chem import rdFingerprintGenerator

RDLogger.DisableLog("rdApp.*")

_MORGAN = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)


def parse(smiles: str | None) -> Chem.Mol | None:
    """Parse and sanitise ``smiles`` (surrounding blanks ignored); ``None`` for anything RDKit rejects or an empty molecule."""
    if not isinstance(smiles, str) or not smiles.strip():
        return None
    try:
        mol = Chem.MolFromSmiles(smiles.strip())
    except Exception:  # RDKit raises assorted C++ errors on odd input
        return None
    return mol if mol is not None and mol.GetNumAtoms() > 0 else None


mol_from_smiles = parse  # the generator's name for it


def canonical(smiles: str | None) -> str | None:
    """RDKit canonical isomeric SMILES, or ``None`` when ``smiles`` does not parse."""
    mol = parse(smiles)
    return Chem.MolToSmiles(mol) if mol is not None else None


def induced_submol(mol: Chem.Mol, atoms: Iterable[int], keep_valence: bool = True) -> Chem.Mol | None:
    """The connected piece of ``mol`` on ``atoms`` with every cut bond capped by hydrogens.

    With ``keep_valence`` every atom keeps its valence: each lost bond order comes back as
    an explicit hydrogen (a sulfonyl S cut from its substituent becomes O=[SH2]=O), so the
    piece can be grown again at exactly the atoms where it was cut. Without it, RDKit's
    default valences refill the atoms (the chemically natural fragment) and only aromatic
    heteroatoms get explicit hydrogens ([nH]). An aromatic atom left outside any ring
    becomes aliphatic. Returns ``None`` when the piece does not sanitise or is disconnected.
    """
    keep = set(int(a) for a in atoms)
    if not keep:
        return None
    rw = Chem.RWMol(mol)
    for bond in mol.GetBonds():
        a, b = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        if (a in keep) == (b in keep):
            continue
        inside = rw.GetAtomWithIdx(a if a in keep else b)
        if keep_valence or inside.GetNoImplicit() or (inside.GetIsAromatic() and inside.GetAtomicNum() != 6):
            order = 1 if bond.GetIsAromatic() else int(bond.GetBondTypeAsDouble())
            inside.SetNumExplicitHs(inside.GetNumExplicitHs() + order)
    for idx in sorted(set(range(mol.GetNumAtoms())) - keep, reverse=True):
        rw.RemoveAtom(idx)
    Chem.FastFindRings(rw)
    for atom in rw.GetAtoms():
        if atom.GetIsAromatic() and not atom.IsInRing():
            atom.SetIsAromatic(False)
            if atom.GetAtomicNum() != 6 and not keep_valence:
                atom.SetNumExplicitHs(0)  # let default valence refill the former ring heteroatom
    for bond in rw.GetBonds():
        if bond.GetIsAromatic() and not bond.IsInRing():
            bond.SetIsAromatic(False)
            bond.SetBondType(Chem.BondType.SINGLE)
    sub = rw.GetMol()
    try:
        Chem.SanitizeMol(sub)
    except Exception:
        return None
    if len(Chem.GetMolFrags(sub)) != 1:
        return None
    return sub


def submol_smiles(mol: Chem.Mol, atoms: Iterable[int], keep_valence: bool = True) -> str | None:
    """Canonical SMILES of :func:`induced_submol`, re-parsed to make sure it round-trips."""
    sub = induced_submol(mol, atoms, keep_valence)
    if sub is None:
        return None
    smiles = Chem.MolToSmiles(sub)
    return smiles if mol_from_smiles(smiles) is not None else None


def fragment_tree(mol: Chem.Mol) -> tuple[list[frozenset[int]], list[tuple[int, int]]]:
    """Cut every acyclic single bond: ``(fragments as atom sets, cut bonds as atom pairs)``.

    Fragments are ring systems, multiply-bonded chain groups (C=O, C#N, nitro) and single
    chain atoms; cut bonds join them into a tree.
    """
    cuts = [
        (b.GetBeginAtomIdx(), b.GetEndAtomIdx())
        for b in mol.GetBonds()
        if not b.IsInRing() and b.GetBondType() == Chem.BondType.SINGLE
    ]
    if not cuts:
        return [frozenset(range(mol.GetNumAtoms()))], []
    broken = Chem.FragmentOnBonds(
        mol, [mol.GetBondBetweenAtoms(a, b).GetIdx() for a, b in cuts], addDummies=False
    )
    frags = [frozenset(f) for f in Chem.GetMolFrags(broken, asMols=False, sanitizeFrags=False)]
    return frags, cuts


def morgan(mol: Chem.Mol) -> DataStructs.ExplicitBitVect:
    """Morgan fingerprint, radius 2, 2048 bits (the metric fingerprint of ``matic.md``)."""
    return _MORGAN.GetFingerprint(mol)


def fingerprints(smiles: Sequence[str]) -> list[DataStructs.ExplicitBitVect | None]:
    """Morgan fingerprints of ``smiles``; ``None`` where a SMILES does not parse."""
    out = []
    for s in smiles:
        mol = mol_from_smiles(s)
        out.append(morgan(mol) if mol is not None else None)
    return out


def max_similarity(
    query: Sequence[DataStructs.ExplicitBitVect], reference: Sequence[DataStructs.ExplicitBitVect]
) -> np.ndarray:
    """For each query fingerprint, its highest Tanimoto similarity to any reference fingerprint."""
    if not reference:
        return np.zeros(len(query))
    return np.array([max(DataStructs.BulkTanimotoSimilarity(fp, list(reference))) for fp in query])
