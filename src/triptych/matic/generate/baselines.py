"""Baselines under the same oracle and the same oracle-call budget as the generator.

* Graph genetic algorithm (Jensen, Chem. Sci. 2019, "A graph-based genetic algorithm and
  generative model/Monte Carlo tree search for the exploration of chemical space"):
  crossover cuts each parent at an acyclic single bond (or a ring, at two ring bonds)
  and joins a piece of each; mutations are Jensen's reaction SMARTS (delete / append /
  insert atom, change bond order, delete a ring bond, add a ring, change an atom). The
  population is seeded with the same known actives the generator starts from; the
  fitness is the policy-gradient reward.
* Best of the dataset: score the pretraining corpus (MOSES) in random order until the
  budget is spent and keep the best molecules, i.e. virtual screening.

Both return their ``n`` best distinct molecules, the same number the generator makes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem

from triptych.core.progress import progress_bar
from triptych.matic.chem import mol_from_smiles
from triptych.matic.generate.scoring import CountingOracle, RewardWeights, Scores, Thresholds, score

MAX_HEAVY_ATOMS = 50
_ELEMENTS = ["#6", "#7", "#8", "#9", "#16", "#17", "#35"]
_ELEMENT_P = [0.15, 0.15, 0.14, 0.14, 0.14, 0.14, 0.14]


def _rxn(smarts: str) -> AllChem.ChemicalReaction:
    return AllChem.ReactionFromSmarts(smarts)


def _mutations(rng: random.Random) -> str:
    """One of Jensen's mutation reactions, drawn with his probabilities."""
    kind = rng.choice(
        ["insert", "bond", "delete_ring_bond", "delete_atom", "change_atom", "append", "add_ring"]
    )
    if kind == "insert":
        bo, el = rng.choices([("single", "CNOS"), ("double", "CN"), ("triple", "C")], [0.6, 0.35, 0.05])[0]
        x = rng.choice(el)
        return {
            "single": f"[*:1]~[*:2]>>[*:1]{x}[*:2]",
            "double": f"[*;!H0:1]~[*:2]>>[*:1]={x}-[*:2]",
            "triple": f"[*;!R;!H1;!H0:1]~[*:2]>>[*:1]#{x}-[*:2]",
        }[bo]
    if kind == "bond":
        return rng.choices(
            [
                "[*:1]!-[*:2]>>[*:1]-[*:2]",
                "[*;!H0:1]-[*;!H0:2]>>[*:1]=[*:2]",
                "[*:1]#[*:2]>>[*:1]=[*:2]",
                "[*;!H0;!H1:1]~[*:2]>>[*:1]#[*:2]",
            ],
            [0.45, 0.45, 0.05, 0.05],
        )[0]
    if kind == "delete_ring_bond":
        return "[*:1]@[*:2]>>([*:1].[*:2])"
    if kind == "delete_atom":
        return rng.choices(
            [
                "[*:1]~[D1:2]>>[*:1]",
                "[*:1]~[D2:2]~[*:3]>>[*:1]-[*:3]",
                "[*:1]~[D3:2](~[*;!H0:3])~[*:4]>>[*:1]-[*:3]-[*:4]",
                "[*:1]~[D4:2](~[*;!H0:3])(~[*;!H0:4])~[*:5]>>[*:1]-[*:3]-[*:4]-[*:5]",
                "[*:1]~[D4:2](~[*;!H0;!H1:3])(~[*:4])~[*:5]>>[*:1]-[*:3](-[*:4])-[*:5]",
            ],
            [0.25, 0.25, 0.25, 0.1875, 0.0625],
        )[0]
    if kind == "change_atom":
        x, y = rng.choices(_ELEMENTS, _ELEMENT_P, k=2)
        return f"[{x}:1]>>[{y}:1]"
    if kind == "append":
        bo, el = rng.choices(
            [
                ("single", ["C", "N", "O", "F", "S", "Cl", "Br"]),
                ("double", ["C", "N", "O"]),
                ("triple", ["C", "N"]),
            ],
            [0.6, 0.35, 0.05],
        )[0]
        x = rng.choice(el)
        return {
            "single": f"[*;!H0:1]>>[*:1]-{x}",
            "double": f"[*;!H0;!H1:1]>>[*:1]={x}",
            "triple": f"[*;H3:1]>>[*:1]#{x}",
        }[bo]
    return rng.choices(
        [
            "[*;!r;!H0:1]~[*;!r:2]~[*;!r;!H0:3]>>[*:1]1~[*:2]~[*:3]1",
            "[*;!r;!H0:1]~[*!r:2]~[*!r:3]~[*;!r;!H0:4]>>[*:1]1~[*:2]~[*:3]~[*:4]1",
            "[*;!r;!H0:1]~[*!r:2]~[*:3]~[*:4]~[*;!r;!H0:5]>>[*:1]1~[*:2]~[*:3]~[*:4]~[*:5]1",
            "[*;!r;!H0:1]~[*!r:2]~[*:3]~[*:4]~[*!r:5]~[*;!r;!H0:6]>>[*:1]1~[*:2]~[*:3]~[*:4]~[*:5]~[*:6]1",
        ],
        [0.05, 0.05, 0.45, 0.45],
    )[0]


def _ok(mol: Chem.Mol | None) -> str | None:
    """Canonical SMILES of a sanitisable, single-fragment molecule of sensible size, else None."""
    if mol is None:
        return None
    try:
        Chem.SanitizeMol(mol)
    except Exception:
        return None
    smiles = Chem.MolToSmiles(mol)
    if "." in smiles or not 3 <= mol.GetNumHeavyAtoms() <= MAX_HEAVY_ATOMS:
        return None
    return smiles if mol_from_smiles(smiles) is not None else None


def mutate(smiles: str, rng: random.Random, tries: int = 10) -> str | None:
    """Apply one random Jensen mutation; ``None`` when no try gives a valid molecule."""
    mol = mol_from_smiles(smiles)
    if mol is None:
        return None
    Chem.Kekulize(mol, clearAromaticFlags=True)
    for _ in range(tries):
        products = _rxn(_mutations(rng)).RunReactants((mol,))
        if products:
            out = _ok(rng.choice(products)[0])
            if out is not None and out != smiles:
                return out
    return None


def _pieces(mol: Chem.Mol, rng: random.Random) -> list[Chem.Mol]:
    """Cut ``mol`` at one acyclic single bond (or two bonds of one ring): its pieces, cut ends as [1*] dummies."""
    chain = [
        b.GetIdx() for b in mol.GetBonds() if not b.IsInRing() and b.GetBondType() == Chem.BondType.SINGLE
    ]
    rings = [list(r) for r in mol.GetRingInfo().BondRings()]
    if rings and (not chain or rng.random() < 0.5):
        ring = rng.choice(rings)
        i = rng.randrange(len(ring))
        cut = sorted({ring[i], ring[(i + len(ring) // 2) % len(ring)]})
    elif chain:
        cut = [rng.choice(chain)]
    else:
        return []
    frags = Chem.FragmentOnBonds(mol, cut, dummyLabels=[(1, 1)] * len(cut))
    return list(Chem.GetMolFrags(frags, asMols=True, sanitizeFrags=False))


def crossover(a: str, b: str, rng: random.Random, tries: int = 10) -> str | None:
    """Join a piece of parent ``a`` and a piece of parent ``b`` at their cut ends."""
    ma, mb = mol_from_smiles(a), mol_from_smiles(b)
    if ma is None or mb is None:
        return None
    for _ in range(tries):
        pa, pb = _pieces(ma, rng), _pieces(mb, rng)
        if not pa or not pb:
            return None
        x, y = rng.choice(pa), rng.choice(pb)
        dx = [at for at in x.GetAtoms() if at.GetAtomicNum() == 0]
        dy = [at for at in y.GetAtoms() if at.GetAtomicNum() == 0]
        if not dx or len(dx) != len(dy):
            continue
        for k, (p, q) in enumerate(zip(dx, dy, strict=True), start=1):
            p.SetAtomMapNum(k)
            q.SetAtomMapNum(k)
        try:
            joined = Chem.molzip(x, y)
        except Exception:
            continue
        out = _ok(Chem.RWMol(joined))
        if out is not None:
            return out
    return None


@dataclass
class BaselineResult:
    """The baseline's best ``n`` distinct molecules, scored, and the calls it used."""

    scores: Scores
    oracle_calls: int


def _best(pool: dict[str, float], oracle: CountingOracle, tasks: tuple[int, int], n: int) -> Scores:
    top = sorted(pool, key=lambda s: -pool[s])[:n]
    return score(top, oracle, tasks)  # all cached: costs no call


def _fitness(
    smiles: Sequence[str], oracle: CountingOracle, tasks: tuple[int, int], w: RewardWeights, t: Thresholds
) -> dict[str, float]:
    s = score(list(smiles), oracle, tasks)
    return {m: float(r) for m, r in zip(s.smiles, s.reward(w, t), strict=True) if m is not None}


def graph_ga(
    seeds: Sequence[str],
    oracle: CountingOracle,
    tasks: tuple[int, int],
    budget: int,
    n: int,
    *,
    population: int = 100,
    offspring: int = 200,
    mutation_rate: float = 0.5,
    seed: int = 0,
    weights: RewardWeights = RewardWeights(),
    thresholds: Thresholds = Thresholds(),
) -> BaselineResult:
    """Jensen-style graph GA until ``budget`` oracle calls are spent; returns the ``n`` fittest molecules seen.

    ``mutation_rate`` is higher than GuacaMol's 0.01 because the budget allows only a few generations.
    """
    rng = random.Random(seed)
    start_calls = oracle.calls

    def left() -> int:
        return budget - (oracle.calls - start_calls)

    init = list(dict.fromkeys(s for s in seeds if mol_from_smiles(s) is not None))
    rng.shuffle(init)
    seen = _fitness(init[: max(0, min(len(init), left()))], oracle, tasks, weights, thresholds)
    pop = sorted(seen, key=lambda s: -seen[s])[:population]
    with progress_bar(budget, "graph GA (oracle calls)") as bar:
        bar.update(oracle.calls - start_calls)
        stall = 0
        while left() > 0 and pop and stall < 20:
            fit = np.array([seen[s] for s in pop]) + 1e-6
            fit = fit - fit.min() + 1e-3
            children: list[str] = []
            for _ in range(offspring):
                a, b = rng.choices(pop, weights=fit.tolist(), k=2)
                child = crossover(a, b, rng) or a
                if rng.random() < mutation_rate:
                    child = mutate(child, rng) or child
                if child not in seen and child not in children:
                    children.append(child)
            children = children[: max(0, left())]
            stall = stall + 1 if not children else 0
            before = oracle.calls
            seen.update(_fitness(children, oracle, tasks, weights, thresholds))
            bar.update(oracle.calls - before)
            pop = sorted(set(pop) | set(children), key=lambda s: -seen.get(s, -1.0))[:population]
    return BaselineResult(_best(seen, oracle, tasks, n), oracle.calls - start_calls)


def best_of_dataset(
    corpus: Sequence[str],
    oracle: CountingOracle,
    tasks: tuple[int, int],
    budget: int,
    n: int,
    *,
    seed: int = 0,
    weights: RewardWeights = RewardWeights(),
    thresholds: Thresholds = Thresholds(),
) -> BaselineResult:
    """Score ``budget`` corpus molecules (random order) and keep the ``n`` with the highest reward."""
    start_calls = oracle.calls
    order = list(corpus)
    random.Random(seed).shuffle(order)
    seen = _fitness(order[:budget], oracle, tasks, weights, thresholds)
    return BaselineResult(_best(seen, oracle, tasks, n), oracle.calls - start_calls)
