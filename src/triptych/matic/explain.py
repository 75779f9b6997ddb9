"""Interpretation: atom attention per task and expert, gate weights, and the property analysis.

* Expert attention a_k(v): the readout (super-node) softmax of expert k over atoms v.
* Task attention a_t(v) = sum_k g_{t,k} a_k(v): the gate-weighted attention behind task t.
* Property analysis (the paper's): Spearman rho between a per-molecule quantity (a gate
  weight on the shared expert, or a principal component of a task embedding) and RDKit
  descriptors, over a reference set of molecules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import QED, Crippen, Descriptors, Lipinski, rdMolDescriptors
from scipy.stats import spearmanr

from triptych.core.errors import InputError
from triptych.core.io import atomic_output_dir, write_bytes
from triptych.core.report import Report
from triptych.matic.featurize import featurize
from triptych.matic.predictor import Predictor

DESCRIPTORS = {
    "logP": Crippen.MolLogP,
    "TPSA": rdMolDescriptors.CalcTPSA,
    "MW": Descriptors.MolWt,
    "HBD": Lipinski.NumHDonors,
    "HBA": Lipinski.NumHAcceptors,
    "rotatable bonds": Lipinski.NumRotatableBonds,
    "aromatic rings": rdMolDescriptors.CalcNumAromaticRings,
    "QED": QED.qed,
}


@dataclass
class MoleculeExplanation:
    smiles: str
    probs: np.ndarray  # [T]
    expert_attention: np.ndarray  # [atoms, K]
    gates: list[np.ndarray]  # per task [k_t]
    gate_experts: list[list[int]]

    def task_attention(self, t: int) -> np.ndarray:
        """a_t(v) = sum_k g_{t,k} a_k(v) over task t's experts."""
        return self.expert_attention[:, self.gate_experts[t]] @ self.gates[t]


def check_smiles(smiles: Sequence[str]) -> None:
    """Refuse, naming each one, SMILES that cannot be explained (rather than silently dropping them)."""
    if not smiles:
        raise InputError("no SMILES to explain; give at least one")
    bad = [
        (i, s) for i, (s, g) in enumerate(zip(smiles, featurize(smiles), strict=True), start=1) if g is None
    ]
    if bad:
        shown = ", ".join(f"#{i} {s!r}" for i, s in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise InputError(
            f"{len(bad)} of the {len(smiles)} SMILES to explain cannot be parsed ({shown}); "
            "fix or remove them"
        )


def explain_molecules(predictor: Predictor, smiles: Sequence[str]) -> list[MoleculeExplanation]:
    """Attention and gate weights for each (valid) molecule, one forward pass per molecule."""
    out = []
    for s in smiles:
        for _, o in predictor.forward_batches([s], batch_size=1):
            out.append(
                MoleculeExplanation(
                    s,
                    torch.sigmoid(o.logits[0]).numpy(),
                    o.attention.numpy(),
                    [g[0].numpy() for g in o.gates],
                    o.gate_experts,
                )
            )
    return out


def descriptor_table(smiles: Sequence[str]) -> np.ndarray:
    """``(n, 8)`` RDKit descriptors (columns in ``DESCRIPTORS`` order)."""
    rows = []
    for s in smiles:
        mol = Chem.MolFromSmiles(s)
        rows.append([float(f(mol)) for f in DESCRIPTORS.values()])
    return np.array(rows)


def model_quantities(
    predictor: Predictor, smiles: Sequence[str], n_components: int = 2
) -> tuple[list[str], np.ndarray, list[str]]:
    """Per molecule: each task's gate weight on the shared expert(s) and the top principal components of
    each task's embedding. Returns (names, ``(n, q)`` values, valid SMILES)."""
    valid, gates, embs = [], [], []
    for idx, o in predictor.forward_batches(list(smiles), batch_size=256):
        valid += [smiles[i] for i in idx]
        if o.gates and o.gates[0].shape[1] > 1:
            shared = [
                sum(g[:, j] for j, k in enumerate(m) if k < predictor.model.n_shared)
                for g, m in zip(o.gates, o.gate_experts, strict=True)
            ]
            gates.append(torch.stack(shared, dim=1).numpy())
        embs.append(o.task_embeddings.numpy())
    emb = np.concatenate(embs)  # [n, T, H]
    names, cols = [], []
    if gates:
        g = np.concatenate(gates)
        for t, task in enumerate(predictor.tasks):
            names.append(f"gate {task}: shared weight")
            cols.append(g[:, t])
    for t, task in enumerate(predictor.tasks):
        x = emb[:, t] - emb[:, t].mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        for c in range(min(n_components, vt.shape[0])):
            names.append(f"{task} embedding PC{c + 1}")
            cols.append(x @ vt[c])
    return names, np.stack(cols, axis=1), valid


def spearman_table(values: np.ndarray, descriptors: np.ndarray) -> np.ndarray:
    """``(q, 8)`` Spearman rho between each model quantity and each descriptor."""
    rho = np.zeros((values.shape[1], descriptors.shape[1]))
    for i in range(values.shape[1]):
        for j in range(descriptors.shape[1]):
            r = spearmanr(values[:, i], descriptors[:, j]).statistic
            rho[i, j] = r if np.isfinite(r) else 0.0
    return rho


def draw_attention(smiles: str, weights: np.ndarray, fmt: str, size: int = 420) -> bytes:
    """An RDKit similarity map of per-atom weights (centred on the molecule's mean), as PNG or SVG bytes."""
    from rdkit.Chem.Draw import SimilarityMaps, rdMolDraw2D

    mol = Chem.MolFromSmiles(smiles)
    w = (weights - weights.mean()) / (np.abs(weights - weights.mean()).max() + 1e-12)
    d = rdMolDraw2D.MolDraw2DCairo(size, size) if fmt == "png" else rdMolDraw2D.MolDraw2DSVG(size, size)
    SimilarityMaps.GetSimilarityMapFromWeights(mol, [float(v) for v in w], draw2d=d, colorMap="coolwarm")
    d.FinishDrawing()
    text = d.GetDrawingText()
    return text if isinstance(text, bytes) else text.encode()


def heatmap(rho: np.ndarray, rows: list[str], cols: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0 * len(cols) + 3, 0.45 * len(rows) + 1.5))
    im = ax.imshow(rho, cmap="coolwarm", vmin=-1, vmax=1)
    ax.set_xticks(range(len(cols)), cols, rotation=40, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, f"{rho[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label="Spearman ρ")
    fig.tight_layout()
    return fig


def explain(
    predictor: Predictor,
    smiles: Sequence[str],
    out_dir: str | Path,
    reference: Sequence[str],
    title: str = "MATIC interpretation",
) -> Report:
    """Write attention maps (PNG + SVG), gate weights, the property correlations and ``report.html`` into ``out_dir``."""
    check_smiles(smiles)
    mols = explain_molecules(predictor, smiles)
    experts = predictor.expert_names()
    report = Report(
        title,
        intro=f"Checkpoint: {predictor.path}. Attention is each expert's readout "
        "(super-node) attention over atoms; red atoms get more than the molecule's mean, blue less.",
    )
    names, values, valid = model_quantities(predictor, list(reference))
    if len(valid) < 10:
        raise InputError(
            f"the property analysis needs at least 10 valid reference molecules, got {len(valid)}"
        )
    rho = spearman_table(values, descriptor_table(valid))
    with atomic_output_dir(out_dir) as stage:
        gate_rows = []
        for i, m in enumerate(mols):
            sec = report.section(f"Molecule {i + 1}: {m.smiles}")
            sec.text(
                "Predicted: "
                + ", ".join(f"{t} {p:.3f}" for t, p in zip(predictor.tasks, m.probs, strict=True))
            )
            maps = [(f"expert {name}", m.expert_attention[:, k]) for k, name in enumerate(experts)]
            maps += [(f"task {t}", m.task_attention(j)) for j, t in enumerate(predictor.tasks)]
            for label, w in maps:
                stem = f"mol{i + 1}_{label.replace(' ', '_')}"
                png = draw_attention(m.smiles, w, "png")
                write_bytes(stage / f"{stem}.png", png)
                write_bytes(stage / f"{stem}.svg", draw_attention(m.smiles, w, "svg"))
                sec.figure(png, caption=f"{label} attention ({stem}.png / .svg)")
            for j, t in enumerate(predictor.tasks):
                row = {"molecule": i + 1, "task": t}
                row.update({experts[k]: float(g) for k, g in zip(m.gate_experts[j], m.gates[j], strict=True)})
                gate_rows.append(row)
        sec = report.section("Gate weights")
        sec.text("How much each task's gate leans on its private expert versus the shared one, per molecule.")
        sec.table(gate_rows, floatfmt="{:.3f}")
        corr_rows = [
            {"quantity": n, **{d: float(r) for d, r in zip(DESCRIPTORS, row, strict=True)}}
            for n, row in zip(names, rho, strict=True)
        ]
        sec = report.section("Property analysis")
        sec.text(
            f"Spearman correlation over {len(valid)} reference molecules between gate weights / task-"
            "embedding principal components and RDKit descriptors."
        )
        sec.table(corr_rows, floatfmt="{:+.2f}")
        fig = heatmap(rho, names, list(DESCRIPTORS))
        fig.savefig(stage / "property_correlations.png", dpi=120, bbox_inches="tight")
        sec.figure(fig, caption="property_correlations.png")
        import csv

        for fname, rows in (("gate_weights.csv", gate_rows), ("property_correlations.csv", corr_rows)):
            with open(stage / fname, "w", newline="") as handle:
                w = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
                w.writeheader()
                w.writerows(rows)
        report.write(stage / "report.html")
    return report
