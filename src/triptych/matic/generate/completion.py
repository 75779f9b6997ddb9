"""Completion model: a learned fragment-attachment policy that grows a rationale into a molecule.

Why this form. The generator must (1) always keep the rationale, (2) produce valid,
drug-like molecules, and (3) pretrain on MOSES within 30 minutes on two shared CPU
cores. A SMILES/SELFIES decoder satisfies (1) only by constrained decoding tricks and
needs hours of RNN training for good validity; a graph VAE (the reference's choice)
needs far longer still. A graph-*extension* policy satisfies (1) by construction: it
only ever adds atoms to the molecule it is given, through RDKit edits, so the rationale's
atoms and bonds are untouched and ``HasSubstructMatch(completion, rationale)`` holds.

The actions are MOSES's own building blocks. Cutting every acyclic single bond splits
a molecule into a tree of fragments (ring systems, chain atoms, C=O / C#N / nitro
groups); the vocabulary is the most frequent (fragment, attachment atom) pairs. One
step of the policy ``pi`` (Eq. "stop-or-attach", RationaleRL's sequential completion):

    pi(stop | G)            softmax over {atoms of G with a free H} U {stop}
    pi(f | G, atom a)       softmax over the vocabulary

and the new fragment is joined to ``a`` by a single bond, H counts adjusted; chemistry
stays valid by construction (both ends had a free H), so validity is ~100%.

The state ``G`` is read through Morgan environments (radius 2) rather than a message
passing network: a molecule bag (the count fingerprint) and, per candidate atom, the
three environment identifiers centred on it. That keeps a training step a couple of
embedding-bag lookups, so pretraining on tens of thousands of MOSES trajectories fits
the CPU budget, while radius-2 environments still see the local chemistry an attachment
decision needs. Pretraining is teacher forcing: start from a random connected subtree
of a MOSES molecule's fragment tree (a stand-in for a rationale) and add the remaining
fragments in random frontier order, then stop.
"""

from __future__ import annotations

import gzip
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator
from torch import nn

from triptych.core.checkpoint import load_checkpoint, load_state_dict_into, save_checkpoint
from triptych.core.errors import InputError
from triptych.matic.chem import fragment_tree, induced_submol, mol_from_smiles

KIND = "matic.completion"
N_BITS = 2048  # hashed Morgan environment identifiers
PAD = N_BITS  # padding id of the atom-environment table
MAX_ATOMS = 45  # a completion stops growing at this many heavy atoms

_GEN = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=N_BITS)


def embedded_corpus() -> list[str]:
    """The 50,000 MOSES training SMILES shipped with the package (MIT, see data/LICENSE_MOSES)."""
    ref = resources.files("triptych.matic.generate") / "data" / "moses_train_50k.csv.gz"
    with ref.open("rb") as raw, gzip.open(raw, "rt") as handle:
        return [line.strip() for line in handle.read().splitlines()[1:] if line.strip()]


def read_corpus(path: str | Path) -> list[str]:
    """SMILES from a ``.smi`` file (first column) or a CSV (optionally gzipped) with a SMILES column."""
    from triptych.core.inputs import read_text
    from triptych.matic.data import column_list, find_smiles_column, read_csv_frame

    path = Path(path)
    if path.suffix == ".smi":
        text = read_text(path, "corpus", "give a .smi file or a CSV with a SMILES column")
        return [ln.split()[0] for ln in text.splitlines() if ln.strip()]
    df = read_csv_frame(path)
    columns = [str(c) for c in df.columns]
    try:
        col = find_smiles_column(columns, None, path)
    except InputError:
        raise InputError(
            f"corpus {path}: no SMILES column (columns: {column_list(columns)}); name it SMILES"
        ) from None
    return [s for s in df[col].astype(str) if s.strip()]


def default_checkpoint() -> Path:
    """Path of the small completion model pretrained by ``triptych matic pretrain`` and shipped."""
    return Path(str(resources.files("triptych.matic.generate") / "data" / "completion_moses.safetensors"))


# --------------------------------------------------------------------------- vocabulary
@dataclass(frozen=True)
class Fragment:
    """A vocabulary entry: a fragment SMILES and the atom (index in the parsed SMILES) it attaches by."""

    smiles: str
    attach: int

    @property
    def key(self) -> str:
        return f"{self.smiles} {self.attach}"

    @classmethod
    def from_key(cls, key: str) -> Fragment:
        smiles, attach = key.rsplit(" ", 1)
        return cls(smiles, int(attach))


def fragment_entries(
    mol: Chem.Mol, frags: Sequence[frozenset[int]], cuts: Sequence[tuple[int, int]]
) -> dict[int, Fragment]:
    """Vocabulary entry of every cut-bond end atom: its fragment, attached through that atom.

    Symmetric attachment atoms share one entry (the lowest-index atom of their canonical class).
    """
    ends = {x for cut in cuts for x in cut}
    out: dict[int, Fragment] = {}
    for frag in frags:
        mine = sorted(ends & frag)
        if not mine:
            continue
        sub = induced_submol(mol, frag)
        if sub is None:
            continue
        smiles = Chem.MolToSmiles(sub)
        order = [int(i) for i in sub.GetProp("_smilesAtomOutputOrder").strip("[],").split(",") if i != ""]
        parsed = Chem.MolFromSmiles(smiles)
        if parsed is None:
            continue
        ranks = list(Chem.CanonicalRankAtoms(parsed, breakTies=False))
        kept = sorted(frag)
        for x in mine:
            idx = order.index(kept.index(x))
            out[x] = Fragment(smiles, ranks.index(ranks[idx]))
    return out


def build_vocabulary(smiles: Sequence[str], size: int = 1000) -> list[Fragment]:
    """The ``size`` most frequent (fragment, attachment atom) pairs over the corpus."""
    counts: Counter[Fragment] = Counter()
    for s in smiles:
        mol = mol_from_smiles(s)
        if mol is None:
            continue
        frags, cuts = fragment_tree(mol)
        entries = fragment_entries(mol, frags, cuts)
        counts.update(entries[x] for cut in cuts for x in cut if x in entries)
    return [f for f, _ in counts.most_common(size)]


# --------------------------------------------------------------------------- states
@dataclass
class State:
    """What the policy sees of a molecule: its Morgan bag and its candidate attachment atoms."""

    mol_ids: np.ndarray  # (m,) int64 hashed environment ids present in the molecule
    mol_counts: np.ndarray  # (m,) float32 their counts
    atoms: np.ndarray  # (c,) int64 indices of atoms with a free hydrogen
    atom_bits: np.ndarray  # (c, 3) int64 environment ids centred on each candidate (radius 0..2), PAD-filled


def encode_state(mol: Chem.Mol) -> State:
    """Featurise ``mol`` for the policy (one RDKit Morgan pass)."""
    out = rdFingerprintGenerator.AdditionalOutput()
    out.AllocateAtomToBits()
    nonzero = _GEN.GetCountFingerprint(mol, additionalOutput=out).GetNonzeroElements()
    per_atom = out.GetAtomToBits()
    atoms = [a.GetIdx() for a in mol.GetAtoms() if a.GetTotalNumHs() > 0]
    bits = np.full((len(atoms), 3), PAD, dtype=np.int64)
    for row, a in enumerate(atoms):
        env = per_atom[a][:3]
        bits[row, : len(env)] = env
    return State(
        np.fromiter(nonzero.keys(), dtype=np.int64, count=len(nonzero)),
        np.fromiter(nonzero.values(), dtype=np.float32, count=len(nonzero)),
        np.asarray(atoms, dtype=np.int64),
        bits,
    )


@dataclass
class Step:
    """One decision: the state, the chosen candidate position (``len(atoms)`` = stop) and fragment id."""

    state: State
    choice: int
    fragment: int  # -1 when stopping


def collate(steps: Sequence[Step]) -> dict[str, torch.Tensor]:
    """Batch steps: padded candidate atoms, a flat Morgan bag with offsets, and targets."""
    n = len(steps)
    width = max(1, max(len(s.state.atoms) for s in steps))
    atom_bits = torch.full((n, width, 3), PAD, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.bool)
    for i, s in enumerate(steps):
        c = len(s.state.atoms)
        if c:
            atom_bits[i, :c] = torch.from_numpy(s.state.atom_bits)
            mask[i, :c] = True
    lengths = [len(s.state.mol_ids) for s in steps]
    offsets = torch.tensor([0, *np.cumsum(lengths)[:-1].tolist()], dtype=torch.long)
    # The stop option sits at column ``width`` after the candidates; remap stop targets onto it.
    choice = torch.tensor([s.choice if s.fragment >= 0 else width for s in steps], dtype=torch.long)
    return {
        "mol_ids": torch.from_numpy(np.concatenate([s.state.mol_ids for s in steps])),
        "mol_counts": torch.from_numpy(np.log1p(np.concatenate([s.state.mol_counts for s in steps]))),
        "offsets": offsets,
        "atom_bits": atom_bits,
        "mask": mask,
        "choice": choice,
        "fragment": torch.tensor([s.fragment for s in steps], dtype=torch.long),
    }


# --------------------------------------------------------------------------- policy
class FragmentPolicy(nn.Module):
    """pi(stop or atom | G) and pi(fragment | G, atom) over Morgan-environment embeddings.

    Shapes: ``atom_bits`` (B, C, 3), ``mask`` (B, C) -> choice logits (B, C + 1) with
    the last column = stop; fragment logits (B, V) for a chosen candidate per row.
    """

    def __init__(self, n_fragments: int, hidden: int = 128) -> None:
        super().__init__()
        self.mol_bag = nn.EmbeddingBag(N_BITS, hidden, mode="sum")
        self.atom_emb = nn.Embedding(N_BITS + 1, hidden, padding_idx=PAD)
        self.mol_mlp = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.ReLU())
        self.atom_in = nn.Linear(hidden, hidden)
        self.ctx_in = nn.Linear(hidden, hidden, bias=False)
        self.atom_out = nn.Sequential(nn.ReLU(), nn.Linear(hidden, 1))
        self.stop_out = nn.Linear(hidden, 1)
        self.frag_mol = nn.Linear(hidden, hidden)
        self.frag_atom = nn.Linear(hidden, hidden, bias=False)
        self.frag_out = nn.Sequential(nn.ReLU(), nn.Linear(hidden, n_fragments))

    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_mol (B, H), h_atom (B, C, H))."""
        h_mol = self.mol_mlp(
            self.mol_bag(batch["mol_ids"], batch["offsets"], per_sample_weights=batch["mol_counts"])
        )
        h_atom = self.atom_in(self.atom_emb(batch["atom_bits"]).sum(2)) + self.ctx_in(h_mol)[:, None]
        return h_mol, h_atom

    def choice_logits(self, h_mol: torch.Tensor, h_atom: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, C + 1) over candidate atoms and stop; non-candidates at -inf."""
        atom = self.atom_out(h_atom).squeeze(-1).masked_fill(~mask, float("-inf"))
        return torch.cat([atom, self.stop_out(h_mol)], dim=1)

    def fragment_logits(
        self, h_mol: torch.Tensor, h_atom: torch.Tensor, choice: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B, V) of the fragment to attach at candidate ``choice`` (B,) (clamped for stop rows)."""
        idx = choice.clamp(max=h_atom.shape[1] - 1)
        chosen = h_atom[torch.arange(len(idx)), idx]
        return self.frag_out(self.frag_mol(h_mol) + self.frag_atom(chosen))

    def log_prob(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """log pi(action | state) per step (B,): log pi(choice) + [not stop] log pi(fragment)."""
        h_mol, h_atom = self.encode(batch)
        lp = torch.log_softmax(self.choice_logits(h_mol, h_atom, batch["mask"]), dim=1)
        lp_choice = lp.gather(1, batch["choice"][:, None]).squeeze(1)
        grow = batch["fragment"] >= 0
        lp_frag = torch.log_softmax(self.fragment_logits(h_mol, h_atom, batch["choice"]), dim=1)
        lp_frag = lp_frag.gather(1, batch["fragment"].clamp(min=0)[:, None]).squeeze(1)
        return lp_choice + torch.where(grow, lp_frag, torch.zeros_like(lp_frag))


# --------------------------------------------------------------------------- the completion model
class CompletionModel:
    """A fragment vocabulary plus a :class:`FragmentPolicy`: samples completions of rationales."""

    def __init__(
        self, vocabulary: Sequence[Fragment], hidden: int = 128, policy: FragmentPolicy | None = None
    ):
        self.vocabulary = list(vocabulary)
        self.hidden = hidden
        self.policy = policy or FragmentPolicy(len(self.vocabulary), hidden)
        self._frag_mols = [Chem.MolFromSmiles(f.smiles) for f in self.vocabulary]
        self._index = {f: i for i, f in enumerate(self.vocabulary)}

    # ---- persistence
    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Safetensors checkpoint (weights in float16 to stay small) with the vocabulary in its header."""
        state = {k: v.half() if v.is_floating_point() else v for k, v in self.policy.state_dict().items()}
        return save_checkpoint(
            path,
            {"state_dict": state, "vocabulary": [f.key for f in self.vocabulary]},
            kind=KIND,
            config={"hidden": self.hidden, "n_fragments": len(self.vocabulary), "n_bits": N_BITS},
            extra=extra,
        )

    @classmethod
    def load(cls, path: str | Path) -> CompletionModel:
        """Load a checkpoint written by :meth:`save`; one clear error if it is anything else."""
        state, meta = load_checkpoint(path, kind=KIND, config={"n_bits": N_BITS})
        model = cls([Fragment.from_key(k) for k in state["vocabulary"]], hidden=int(meta["config"]["hidden"]))
        load_state_dict_into(model.policy, {k: v.float() for k, v in state["state_dict"].items()}, path)
        return model

    # ---- teacher forcing
    def trajectory(self, smiles: str, rng: random.Random) -> list[Step]:
        """Teacher-forced steps that rebuild ``smiles`` from a random connected piece of its fragment tree."""
        mol = mol_from_smiles(smiles)
        if mol is None:
            return []
        frags, cuts = fragment_tree(mol)
        if len(frags) < 2:
            return []
        owner = {a: i for i, f in enumerate(frags) for a in f}
        n_start = rng.randint(1, len(frags) - 1)
        have = {rng.randrange(len(frags))}
        while len(have) < n_start:
            grow = [
                owner[y]
                for a, b in cuts
                for x, y in ((a, b), (b, a))
                if owner[x] in have and owner[y] not in have
            ]
            have.add(rng.choice(grow))
        atoms = set().union(*(frags[i] for i in have))
        entries = fragment_entries(mol, frags, cuts)
        steps: list[Step] = []
        while True:
            sub = induced_submol(mol, atoms)
            if sub is None:
                return steps
            state = encode_state(sub)
            if len(have) == len(frags):
                steps.append(Step(state, len(state.atoms), -1))
                return steps
            frontier = [(x, y) for a, b in cuts for x, y in ((a, b), (b, a)) if x in atoms and y not in atoms]
            rng.shuffle(frontier)
            pick = next(
                (
                    (x, y, self._index[entries[y]])
                    for x, y in frontier
                    if y in entries and entries[y] in self._index
                ),
                None,
            )
            if pick is None:  # only out-of-vocabulary fragments left: no label for stop here
                return steps
            x, y, fid = pick
            # induced_submol keeps atom order, so x's position among kept atoms is its index in ``sub``.
            pos = sorted(atoms).index(x)
            steps.append(Step(state, int(np.flatnonzero(state.atoms == pos)[0]), fid))
            have.add(owner[y])
            atoms |= frags[owner[y]]

    # ---- generation
    def attach(self, mol: Chem.Mol, atom: int, fragment: int) -> Chem.Mol | None:
        """Join vocabulary fragment ``fragment`` to ``atom`` of ``mol`` by a single bond (atom order of ``mol`` kept)."""
        frag = self._frag_mols[fragment]
        combo = Chem.RWMol(Chem.CombineMols(mol, frag))
        other = mol.GetNumAtoms() + self.vocabulary[fragment].attach
        combo.AddBond(int(atom), other, Chem.BondType.SINGLE)
        for idx in (int(atom), other):
            a = combo.GetAtomWithIdx(idx)
            if a.GetNumExplicitHs() > 0:
                a.SetNumExplicitHs(a.GetNumExplicitHs() - 1)
        new = combo.GetMol()
        try:
            Chem.SanitizeMol(new)
        except Exception:
            return None
        return new

    @torch.no_grad()
    def sample(
        self,
        rationales: Sequence[str],
        temperature: float = 1.0,
        max_atoms: int = MAX_ATOMS,
        max_steps: int = 30,
        generator: torch.Generator | None = None,
    ) -> tuple[list[str | None], list[list[Step]]]:
        """Complete each rationale once: ``(smiles or None if the rationale is invalid, steps taken)``.

        All rationales grow in one batch per step; a completion stops when the policy
        says so, at ``max_atoms`` heavy atoms, or after ``max_steps`` attachments.
        """
        self.policy.eval()
        mols: list[Chem.Mol | None] = [mol_from_smiles(r) for r in rationales]
        steps: list[list[Step]] = [[] for _ in rationales]
        active = [i for i, m in enumerate(mols) if m is not None]
        for _ in range(max_steps + 1):
            if not active:
                break
            states = [encode_state(mols[i]) for i in active]
            batch = collate([Step(s, 0, 0) for s in states])
            h_mol, h_atom = self.policy.encode(batch)
            logits = self.policy.choice_logits(h_mol, h_atom, batch["mask"]) / temperature
            width = batch["mask"].shape[1]
            for row, i in enumerate(active):
                if mols[i].GetNumAtoms() >= max_atoms or len(steps[i]) >= max_steps:
                    logits[row, :width] = float("-inf")
            choice = torch.multinomial(torch.softmax(logits, 1), 1, generator=generator).squeeze(1)
            frag_logits = self.policy.fragment_logits(h_mol, h_atom, choice) / temperature
            frag = torch.multinomial(torch.softmax(frag_logits, 1), 1, generator=generator).squeeze(1)
            still = []
            for row, i in enumerate(active):
                c = int(choice[row])
                if c >= len(states[row].atoms):
                    steps[i].append(Step(states[row], len(states[row].atoms), -1))
                    continue
                new = self.attach(mols[i], int(states[row].atoms[c]), int(frag[row]))
                if new is None:  # cannot happen for valences checked above; end this completion safely
                    continue
                steps[i].append(Step(states[row], c, int(frag[row])))
                mols[i] = new
                still.append(i)
            active = still
        return [Chem.MolToSmiles(m) if m is not None else None for m in mols], steps


# --------------------------------------------------------------------------- pretraining
class CompletionModule(L.LightningModule):
    """Teacher-forced maximum likelihood of MOSES trajectories (Lightning wrapper around the policy)."""

    def __init__(self, n_fragments: int, hidden: int = 128, lr: float = 2e-3, kind: str = KIND) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.policy = FragmentPolicy(n_fragments, hidden)

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return -self.policy.log_prob(batch).mean()

    def training_step(self, batch: dict[str, torch.Tensor], _: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["choice"]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], _: int) -> None:
        self.log("val_loss", self._loss(batch), prog_bar=True, batch_size=len(batch["choice"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def teacher_steps(model: CompletionModel, smiles: Sequence[str], seed: int, desc: str) -> list[Step]:
    """All teacher-forced steps for ``smiles`` (one random start per molecule), with progress."""
    from triptych.core.progress import progress

    rng = random.Random(seed)
    out: list[Step] = []
    for s in progress(smiles, desc=desc, unit="mol"):
        out.extend(model.trajectory(s, rng))
    return out


def pretrain(
    smiles: Sequence[str],
    out: str | Path,
    *,
    n_molecules: int = 30000,
    vocab_molecules: int = 10000,
    vocab_size: int = 1000,
    hidden: int = 128,
    epochs: int = 4,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    flags: Any = None,
    root_dir: str | Path = "runs/matic_completion",
    check_samples: int = 1000,
) -> tuple[CompletionModel, dict[str, Any]]:
    """Pretrain the completion policy on ``n_molecules`` corpus SMILES and save it to ``out``.

    Afterwards ``check_samples`` completions of MCTS-like fragments of held-out molecules
    measure validity and containment (stored in the checkpoint's metadata).
    """
    import time

    from torch.utils.data import DataLoader

    from triptych.core.training import best_checkpoint, fit, load_module_state, make_trainer

    start = time.perf_counter()
    rng = random.Random(seed)
    smiles = [s for s in smiles if s]
    if len(smiles) < 20:
        raise InputError(f"pretraining corpus has only {len(smiles)} SMILES; give at least 20")
    pool = rng.sample(list(smiles), min(n_molecules, len(smiles)))
    n_val = max(10, len(pool) // 20)
    val_smiles, train_smiles = pool[:n_val], pool[n_val:]
    vocabulary = build_vocabulary(train_smiles[:vocab_molecules], vocab_size)
    model = CompletionModel(vocabulary, hidden)
    train_steps = teacher_steps(model, train_smiles, seed, "teacher steps (train)")
    val_steps = teacher_steps(model, val_smiles, seed + 1, "teacher steps (val)")
    module = CompletionModule(len(vocabulary), hidden, lr)
    gen = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        train_steps, batch_size=batch_size, shuffle=True, collate_fn=collate, generator=gen
    )
    val_loader = DataLoader(val_steps, batch_size=1024, collate_fn=collate)
    trainer = make_trainer(flags, max_epochs=epochs, default_root_dir=root_dir, monitor="val_loss")
    fit(trainer, module, train_loader, val_loader, resume=getattr(flags, "resume", None))
    best = best_checkpoint(trainer)
    if best is not None:
        state_dict, _ = load_module_state(best, KIND)
        module.policy.load_state_dict({k.removeprefix("policy."): v for k, v in state_dict.items()})
    model.policy = module.policy.cpu()
    val_loss = (
        float(-torch.cat([model.policy.log_prob(b) for b in val_loader]).mean())
        if val_steps
        else float("nan")
    )
    # Acceptance check on held-out molecules: MCTS-like fragments of the validation set.
    from triptych.matic.generate.metrics import completion_check
    from triptych.matic.generate.rationale import random_rationales

    check = completion_check(model, random_rationales(val_smiles, 100, seed=seed), check_samples, seed=seed)
    info = {
        "heldout_completion_check": check,
        "n_molecules": len(train_smiles),
        "n_val_molecules": len(val_smiles),
        "n_train_steps": len(train_steps),
        "vocab_size": len(vocabulary),
        "epochs": epochs,
        "val_nll_per_step": val_loss,
        "seconds": time.perf_counter() - start,
        "seed": seed,
    }
    model.save(out, extra=info)
    return model, info
