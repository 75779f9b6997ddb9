"""Rationale extraction: Monte Carlo tree search over connected substructures (RationaleRL, Jin et al. 2020).

A state is a connected atom subset of an active molecule. A move deletes one peripheral
cluster's leaf atoms, where clusters are the molecule's SSSR rings and its acyclic bonds:
a ring is removed whole, a chain is trimmed one atom at a time, and the fragment stays
connected (moves whose fragment does not sanitise are skipped). The predictor's
probability for the task is the prior ``P`` of a state; each rollout walks down the
tree by PUCT,

    a* = argmax_a  Q(s, a) + c_puct P(s, a) sqrt(1 + sum_b N(s, b)) / (1 + N(s, a))      (PUCT)

until a fragment has ``min_atoms`` atoms or fewer, and backs up the leaf's probability.
Every state visited with ``<= max_atoms`` atoms and ``P >= threshold`` is a rationale.

Only rationale candidates cost predictor calls (``guide="candidates"``, the default): a
state with more than ``max_atoms`` atoms can never be a rationale, so it inherits its
parent's prior instead of being scored, and the search is guided there by the backed-up
leaf values Q alone. RationaleRL scores every expanded state; on 30-45-atom actives most
states are that large, and scoring them took 96% of a whole generation run's oracle calls
(``guide="all"`` restores it).

Single-task rationales are then merged into dual ones by their maximum common
substructure (:func:`mcs_merge`, RationaleRL's ``merge_rationales``).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdFMCS

from triptych.core.io import write_text
from triptych.core.progress import progress_bar
from triptych.matic.chem import induced_submol, mol_from_smiles
from triptych.matic.generate.scoring import CountingOracle


@dataclass(frozen=True)
class MCTSConfig:
    """Search parameters; defaults are the reference's (matic.md): c_puct 10, 20 rollouts, stop at <= 15 atoms.

    ``guide``: which expanded states the predictor scores: ``candidates`` (<= ``max_atoms``
    atoms; larger ones inherit their parent's prior) or ``all`` (RationaleRL).
    """

    c_puct: float = 10.0
    rollouts: int = 20
    min_atoms: int = 15
    max_atoms: int = 20
    threshold: float = 0.5
    guide: Literal["candidates", "all"] = "candidates"


@dataclass
class Node:
    """A search state: a connected fragment (atom set) with prior P, visit count N and value sum W."""

    smiles: str
    atoms: frozenset[int]
    prior: float = 0.0
    visits: int = 0
    value: float = 0.0
    children: list[Node] = field(default_factory=list)
    expanded: bool = False

    def q(self) -> float:
        return self.value / self.visits if self.visits else 0.0

    def u(self, c_puct: float, total_visits: int) -> float:
        # sqrt(1 + N) rather than sqrt(N): on a node's first visit the prior still ranks its children.
        return c_puct * self.prior * math.sqrt(1 + total_visits) / (1 + self.visits)


@dataclass(frozen=True)
class Rationale:
    """A rationale: its SMILES, source molecule, task(s), atom indices in the source, and probabilities."""

    smiles: str
    source: str
    tasks: tuple[str, ...]
    atoms: tuple[int, ...]
    proba: tuple[float, ...]


def clusters(mol: Chem.Mol) -> list[frozenset[int]]:
    """RationaleRL's clusters: every SSSR ring and every acyclic bond (as an atom pair)."""
    out = [frozenset((b.GetBeginAtomIdx(), b.GetEndAtomIdx())) for b in mol.GetBonds() if not b.IsInRing()]
    out += [frozenset(r) for r in Chem.GetSymmSSSR(mol)]
    return out


def deletion_moves(mol: Chem.Mol, atoms: frozenset[int], cls: list[frozenset[int]]) -> list[frozenset[int]]:
    """Atom sets reachable by deleting one peripheral cluster's leaf atoms from ``atoms``."""
    current = [c for c in cls if c <= atoms]
    moves: set[frozenset[int]] = set()
    for c in current:
        # Leaf atoms belong to no other current cluster; peripheral clusters touch one other cluster.
        leaf = {a for a in c if sum(a in d for d in current) == 1}
        neighbours = sum(1 for d in current if d is not c and d & c)
        if leaf and (neighbours <= 1 or len(c) == 2) and len(atoms - leaf) > 0:
            moves.add(atoms - leaf)
    return sorted(moves, key=sorted)


def _rollout(
    node: Node, mol: Chem.Mol, cls: list[frozenset[int]], states: dict[frozenset[int], Node], cfg: MCTSConfig
) -> Generator[list[str], np.ndarray, float]:
    """One PUCT descent from ``node``; yields the SMILES it needs scored, returns the backed-up leaf value.

    A generator, so that :func:`search_many` can advance the searches of many molecules in
    lockstep and score all their expansions in one predictor batch.
    """
    if len(node.atoms) <= cfg.min_atoms:
        return node.prior
    if not node.expanded:
        node.expanded = True
        fresh: list[Node] = []
        for atoms in deletion_moves(mol, node.atoms, cls):
            if atoms in states:
                node.children.append(states[atoms])
                continue
            sub = induced_submol(mol, atoms, keep_valence=False)
            if sub is None:
                continue
            child = Node(Chem.MolToSmiles(sub), atoms)
            states[atoms] = child
            node.children.append(child)
            fresh.append(child)
        # Why: a state larger than max_atoms is never a rationale; scoring it only sharpens the
        # prior, at the cost of most of the run's oracle calls. It inherits its parent's prior.
        scored = [c for c in fresh if cfg.guide == "all" or len(c.atoms) <= cfg.max_atoms]
        for child in fresh:
            child.prior = node.prior
        if scored:
            scores = yield [c.smiles for c in scored]
            for child, p in zip(scored, scores, strict=True):
                child.prior = float(np.nan_to_num(p, nan=0.0))
    if not node.children:
        return node.prior
    total = sum(c.visits for c in node.children)
    best = max(node.children, key=lambda c: c.q() + c.u(cfg.c_puct, total))
    v = yield from _rollout(best, mol, cls, states, cfg)
    best.value += v
    best.visits += 1
    return v


def _search(
    smiles: str, task_name: str, cfg: MCTSConfig
) -> Generator[list[str], np.ndarray, list[Rationale]]:
    """The whole search of one molecule as a generator (see :func:`_rollout`)."""
    mol = mol_from_smiles(smiles)
    if mol is None:
        return []
    source = Chem.MolToSmiles(mol)
    mol = Chem.MolFromSmiles(source)  # canonical atom order, so cached atom indices are stable
    root = Node(source, frozenset(range(mol.GetNumAtoms())))
    root.prior = float(np.nan_to_num((yield [source])[0], nan=0.0))
    states = {root.atoms: root}
    cls = clusters(mol)
    for _ in range(cfg.rollouts):
        yield from _rollout(root, mol, cls, states, cfg)
    found = {}
    for node in states.values():
        if len(node.atoms) <= cfg.max_atoms and node.prior >= cfg.threshold and node.smiles not in found:
            found[node.smiles] = Rationale(
                node.smiles, source, (task_name,), tuple(sorted(node.atoms)), (node.prior,)
            )
    return sorted(found.values(), key=lambda r: (-r.proba[0], len(r.atoms), r.smiles))


def search_many(
    smiles: Sequence[str],
    oracle: CountingOracle,
    task: int,
    cfg: MCTSConfig = MCTSConfig(),
    desc: str | None = None,
) -> list[list[Rationale]]:
    """MCTS on every molecule at once: each round, all pending expansions go to the predictor as one batch."""
    name = oracle.tasks[task]
    gens = [_search(s, name, cfg) for s in smiles]
    results: list[list[Rationale]] = [[] for _ in smiles]
    pending: dict[int, list[str]] = {}
    for i, g in enumerate(gens):
        try:
            pending[i] = next(g)
        except StopIteration as stop:
            results[i] = stop.value
    with progress_bar(len(gens), desc or f"MCTS rationales ({name})", unit="mol") as bar:
        bar.update(len(gens) - len(pending))
        while pending:
            batch = sorted({s for req in pending.values() for s in req})
            proba = dict(zip(batch, oracle.task_proba(batch, task), strict=True))
            for i in list(pending):
                try:
                    pending[i] = gens[i].send(np.array([proba[s] for s in pending[i]]))
                except StopIteration as stop:
                    results[i] = stop.value
                    del pending[i]
                    bar.update(1)
    return results


def mcts(smiles: str, oracle: CountingOracle, task: int, cfg: MCTSConfig = MCTSConfig()) -> list[Rationale]:
    """Rationales of ``smiles`` for oracle column ``task``: small fragments still predicted active."""
    return search_many([smiles], oracle, task, cfg)[0]


# --------------------------------------------------------------------------- dual rationales
def mcs_merge(a: str, b: str, max_products: int = 3, timeout: int = 1) -> list[str]:
    """Molecules that overlay fragments ``a`` and ``b`` on their maximum common substructure (RationaleRL).

    The MCS (rings match rings, complete rings only) is found with RDKit ``rdFMCS``; for each
    pair of matches, ``b``'s atoms outside the MCS and its bonds are grafted onto ``a`` at the
    matched atoms. Products that do not sanitise, or that lose either fragment, are dropped;
    fragments with no common substructure give none.
    """
    ma, mb = mol_from_smiles(a), mol_from_smiles(b)
    if ma is None or mb is None:
        return []
    mcs = rdFMCS.FindMCS([ma, mb], ringMatchesRingOnly=True, completeRingsOnly=True, timeout=timeout)
    if mcs.numAtoms == 0:
        return []
    query = Chem.MolFromSmarts(mcs.smartsString)
    out: list[str] = []
    for xa in ma.GetSubstructMatches(query, uniquify=False, maxMatches=20):
        for xb in mb.GetSubstructMatches(query, uniquify=False, maxMatches=20):
            joined = _graft(ma, mb, dict(zip(xb, xa, strict=True)))
            if joined is not None and joined not in out:
                out.append(joined)
            if len(out) >= max_products:
                return out
    return out


def _graft(ma: Chem.Mol, mb: Chem.Mol, shared: dict[int, int]) -> str | None:
    """``ma`` plus ``mb``'s atoms and bonds, ``mb``'s atom ``j`` identified with ``ma``'s ``shared[j]``."""
    new = Chem.RWMol(ma)
    index = dict(shared)
    for atom in mb.GetAtoms():
        if atom.GetIdx() not in index:
            copy = Chem.Atom(atom.GetAtomicNum())
            copy.SetFormalCharge(atom.GetFormalCharge())
            copy.SetIsAromatic(atom.GetIsAromatic())
            copy.SetNumExplicitHs(atom.GetNumExplicitHs())
            index[atom.GetIdx()] = new.AddAtom(copy)
    for bond in mb.GetBonds():
        i, j = index[bond.GetBeginAtomIdx()], index[bond.GetEndAtomIdx()]
        if new.GetBondBetweenAtoms(i, j) is None:
            new.AddBond(i, j, bond.GetBondType())
    mol = new.GetMol()
    try:
        Chem.SanitizeMol(mol)
    except Exception:
        return None
    smiles = Chem.MolToSmiles(mol)
    check = mol_from_smiles(smiles)
    if check is None or not (check.HasSubstructMatch(ma) and check.HasSubstructMatch(mb)):
        return None  # grafting changed an atom's environment (aromaticity, Hs): not a merge of both
    return smiles


def merge_rationales(
    rat_a: Sequence[Rationale],
    rat_b: Sequence[Rationale],
    oracle: CountingOracle,
    tasks: tuple[int, int],
    *,
    threshold: float = 0.5,
    max_atoms: int = 30,
    max_pairs: int = 400,
    products: int = 3,
) -> list[Rationale]:
    """Dual rationales (p_A and p_B >= threshold, <= ``max_atoms`` atoms) from single-task ones.

    Candidates, in order: a single-task rationale that already passes both tasks; the
    union of two rationales of the same source molecule when they overlap or touch
    (one connected fragment); and the merge of two rationales on their maximum common
    substructure (:func:`mcs_merge`). The ``max_pairs`` pairs with the highest
    p_A x p_B are tried.
    """
    cands: dict[str, tuple[str, tuple[int, ...]]] = {}
    for r in [*rat_a, *rat_b]:
        cands.setdefault(r.smiles, (r.source, r.atoms))
    pairs = sorted(((a, b) for a in rat_a for b in rat_b), key=lambda ab: -ab[0].proba[0] * ab[1].proba[0])
    for a, b in pairs[:max_pairs]:
        if a.source == b.source:
            union = frozenset(a.atoms) | frozenset(b.atoms)
            if len(union) <= max_atoms:
                sub = induced_submol(Chem.MolFromSmiles(a.source), union, keep_valence=False)
                if sub is not None:
                    cands.setdefault(Chem.MolToSmiles(sub), (a.source, tuple(sorted(union))))
                    continue
        ma, mb = mol_from_smiles(a.smiles), mol_from_smiles(b.smiles)
        if ma is None or mb is None:
            continue
        if ma.HasSubstructMatch(mb) or mb.HasSubstructMatch(
            ma
        ):  # overlap by containment: the larger covers both
            big = a if ma.GetNumAtoms() >= mb.GetNumAtoms() else b
            cands.setdefault(big.smiles, (big.source, big.atoms))
        else:
            for merged in mcs_merge(a.smiles, b.smiles, products):
                if Chem.MolFromSmiles(merged).GetNumAtoms() <= max_atoms:
                    cands.setdefault(merged, (f"{a.source}.{b.source}", ()))
    smiles = list(cands)
    probs = oracle.predict_proba(smiles) if smiles else np.zeros((0, 2))
    names = (oracle.tasks[tasks[0]], oracle.tasks[tasks[1]])
    out = []
    for s, p in zip(smiles, probs, strict=True):
        pa, pb = p[tasks[0]], p[tasks[1]]
        if pa >= threshold and pb >= threshold:
            source, atoms = cands[s]
            out.append(Rationale(s, source, names, atoms, (float(pa), float(pb))))
    return sorted(out, key=lambda r: (-r.proba[0] * r.proba[1], r.smiles))


# --------------------------------------------------------------------------- batch extraction with a cache
def _cache_key(smiles: str, task_name: str, cfg: MCTSConfig, oracle_id: str) -> str:
    raw = json.dumps([smiles, task_name, asdict(cfg), oracle_id])
    return hashlib.sha1(raw.encode()).hexdigest()


def extract_rationales(
    actives: Sequence[str],
    oracle: CountingOracle,
    task: int,
    cfg: MCTSConfig = MCTSConfig(),
    cache: str | Path | None = None,
    oracle_id: str = "",
) -> list[Rationale]:
    """Run :func:`mcts` on each active molecule for one task; results cached as JSON in ``cache``.

    The cache key covers the molecule, task, search parameters and ``oracle_id`` (e.g. the
    predictor checkpoint's hash), so a different predictor never reuses stale rationales.
    """
    store: dict[str, list[dict]] = {}
    path = Path(cache) if cache else None
    if path is not None and path.is_file():
        store = json.loads(path.read_text())
    name = oracle.tasks[task]
    keys = [_cache_key(s, name, cfg, oracle_id) for s in actives]
    todo = [i for i, k in enumerate(keys) if k not in store]
    if todo:
        for i, found in zip(todo, search_many([actives[i] for i in todo], oracle, task, cfg), strict=True):
            store[keys[i]] = [asdict(r) for r in found]
        if path is not None:
            write_text(path, json.dumps(store))
    return [
        Rationale(d["smiles"], d["source"], tuple(d["tasks"]), tuple(d["atoms"]), tuple(d["proba"]))
        for k in keys
        for d in store[k]
    ]


def random_rationales(
    smiles: Sequence[str], n: int, seed: int = 0, min_atoms: int = 6, max_atoms: int = 20
) -> list[str]:
    """``n`` MCTS-like fragments: random walks of peripheral deletions down to 6-20 atoms (for checks, not search)."""
    rng = random.Random(seed)
    out: list[str] = []
    pool = [m for m in (mol_from_smiles(s) for s in smiles) if m is not None and m.GetNumAtoms() > min_atoms]
    for _ in range(50 * n):
        if len(out) >= n or not pool:
            break
        mol = rng.choice(pool)
        target = rng.randint(min_atoms, max_atoms)
        cls, atoms = clusters(mol), frozenset(range(mol.GetNumAtoms()))
        while len(atoms) > target:
            moves = deletion_moves(mol, atoms, cls)
            rng.shuffle(moves)
            step = next((m for m in moves if induced_submol(mol, m, keep_valence=False) is not None), None)
            if step is None:
                break
            atoms = step
        sub = induced_submol(mol, atoms, keep_valence=False)
        if sub is not None and min_atoms <= sub.GetNumAtoms() <= max_atoms:
            out.append(Chem.MolToSmiles(sub))
    return out
