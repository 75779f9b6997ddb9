"""Outputs of the generator: molecules.csv, metrics.json, a grid of the top molecules, rationale images, report.html."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from rdkit import Chem
from rdkit.Chem import Draw

from triptych.core.io import write_text
from triptych.core.report import Report, Section
from triptych.core.results import json_text
from triptych.matic.generate.rationale import Rationale


def top_molecules(table: pd.DataFrame, k: int = 16) -> pd.DataFrame:
    """Distinct molecules, successful ones first, then by p_A x p_B."""
    t = table.dropna(subset=["smiles"]).drop_duplicates("smiles").copy()
    t["joint"] = t["p_a"] * t["p_b"]
    return t.sort_values(["success", "joint", "qed"], ascending=False).head(k)


def molecule_grid(table: pd.DataFrame, names: tuple[str, str], per_row: int = 4):
    """PIL grid of ``table``'s molecules, each labelled with p_A, p_B, QED and SA."""
    mols = [Chem.MolFromSmiles(s) for s in table["smiles"]]
    legends = [
        f"{names[0]} {r.p_a:.2f}  {names[1]} {r.p_b:.2f}\nQED {r.qed:.2f}  SA {r.sa:.2f}"
        for r in table.itertuples()
    ]
    return Draw.MolsToGridImage(
        mols, molsPerRow=per_row, subImgSize=(300, 260), legends=legends, returnPNG=False
    )


def rationale_grid(rationales: Sequence[Rationale], per_row: int = 4):
    """PIL grid: each rationale highlighted inside its source molecule (joined rationales drawn alone)."""
    mols, highlights, legends = [], [], []
    for r in rationales:
        src = Chem.MolFromSmiles(r.source) if r.atoms and "." not in r.source else None
        mols.append(src if src is not None else Chem.MolFromSmiles(r.smiles))
        highlights.append(list(r.atoms) if src is not None else [])
        probs = "  ".join(f"{t} {p:.2f}" for t, p in zip(r.tasks, r.proba, strict=True))
        legends.append(f"{r.smiles[:40]}\n{probs}")
    return Draw.MolsToGridImage(
        mols,
        molsPerRow=per_row,
        subImgSize=(320, 280),
        legends=legends,
        highlightAtomLists=highlights,
        returnPNG=False,
    )


def rationale_rows(rationales: Sequence[Rationale]) -> list[dict[str, Any]]:
    return [
        {
            "rationale": r.smiles,
            "tasks": "+".join(r.tasks),
            "proba": ", ".join(f"{p:.3f}" for p in r.proba),
            "atoms": len(Chem.MolFromSmiles(r.smiles).GetAtoms()),
            "source": r.source,
        }
        for r in rationales
    ]


def write_rationales(
    out: Path, single: tuple[list[Rationale], list[Rationale]], dual: Sequence[Rationale], shown: int = 24
) -> Section:
    """rationales.csv and rationales.json, highlighted grids, and report.html into ``out``."""
    rows = rationale_rows([*single[0], *single[1], *dual])
    pd.DataFrame(rows).to_csv(out / "rationales.csv", index=False)
    payload = {"single": [[r.__dict__ for r in s] for s in single], "dual": [r.__dict__ for r in dual]}
    write_text(out / "rationales.json", json_text(payload, indent=1, default=list))
    sec = Section("Rationales")
    sec.text(
        f"MCTS found {len(single[0])} rationales for the first task and {len(single[1])} for the second; "
        f"merging gave {len(dual)} dual rationales (both probabilities >= threshold)."
    )
    for name, group in (("first task", single[0]), ("second task", single[1]), ("dual", list(dual))):
        if group:
            img = rationale_grid(group[:shown])
            img.save(out / f"rationales_{name.split()[0]}.png")
            sec.figure(
                img,
                f"Rationales ({name}), highlighted in their source molecules; best {min(shown, len(group))}",
            )
    sec.table(rows[:60], "Rationales (first 60 rows; all in rationales.csv)")
    report = Report("MATIC rationales")
    report.add(sec)
    report.write(out / "report.html")
    return sec


def write_generation(
    out: Path,
    table: pd.DataFrame,
    metrics: dict[str, Any],
    names: tuple[str, str],
    rounds: Sequence[dict[str, Any]],
    dual: Sequence[Rationale],
    command: str,
) -> Section:
    """molecules.csv, metrics.json, top_molecules.png and report.html into ``out``; returns the report section."""
    table.to_csv(out / "molecules.csv", index=False)
    write_text(out / "metrics.json", json_text(metrics, default=str))
    top = top_molecules(table)
    sec = Section("Generated dual-active molecules")
    sec.text(
        f"Tasks: A = {names[0]}, B = {names[1]}. {metrics['n']} molecules generated; success "
        f"{metrics['success']:.3f}, novelty {metrics['novelty']:.3f}, diversity {metrics['diversity']:.3f}, "
        f"validity {metrics['validity']:.3f}, uniqueness {metrics['uniqueness']:.3f}, "
        f"{metrics['oracle_calls']} oracle calls."
    )
    if len(top):
        grid = molecule_grid(top, names)
        grid.save(out / "top_molecules.png")
        sec.figure(grid, "Top generated molecules with predicted probabilities, QED and SA")
    keys = [
        "n",
        "validity",
        "uniqueness",
        "success",
        "novelty",
        "novelty_all",
        "diversity",
        "oracle_calls",
        "seconds",
    ]
    sec.table([{k: metrics.get(k) for k in keys}], "Metrics (metrics.json has all)")
    if rounds:
        sec.table(list(rounds), "Reinforcement-learning rounds")
    if dual:
        sec.figure(rationale_grid(list(dual)[:12]), "Dual rationales used as starting points")
    sec.table(top.drop(columns=["joint"]).to_dict("records"), "Top molecules")
    sec.code(command)
    report = Report("MATIC generation")
    report.add(sec)
    report.write(out / "report.html")
    return sec
