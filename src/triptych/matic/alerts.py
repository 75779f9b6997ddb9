"""Structural alerts as columns: PAINS (Baell & Holloway 2010) and Brenk (Brenk et al. 2008) via RDKit's FilterCatalog.

For each molecule and catalogue: a flag, and the description of the first matching alert
(empty when none), so a chemist can filter on the flag and read why.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import pandas as pd
from rdkit import Chem

CATALOGS = ("pains", "brenk")


@cache
def _catalog(name: str):
    from rdkit.Chem.FilterCatalog import FilterCatalog, FilterCatalogParams

    params = FilterCatalogParams()
    params.AddCatalog(
        {
            "pains": FilterCatalogParams.FilterCatalogs.PAINS,
            "brenk": FilterCatalogParams.FilterCatalogs.BRENK,
        }[name]
    )
    return FilterCatalog(params)


def alert_columns(mols: Sequence[Chem.Mol | None], catalogs: Sequence[str] = CATALOGS) -> pd.DataFrame:
    """Columns ``<catalog>`` (bool; False for a missing molecule) and ``<catalog>_alert`` (first match)."""
    out: dict[str, list] = {}
    for name in catalogs:
        catalog = _catalog(name)
        hits = [catalog.GetFirstMatch(m) if m is not None else None for m in mols]
        out[name] = [h is not None for h in hits]
        out[f"{name}_alert"] = [h.GetDescription() if h is not None else "" for h in hits]
    return pd.DataFrame(out)
