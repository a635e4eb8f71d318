"""Plots: measured vs imputed expression in space. Each returns the matplotlib Figure."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def _dense_column(matrix: Any, j: int) -> np.ndarray:
    """Column j of a dense or sparse matrix as a flat float array."""
    col = matrix[:, [j]]
    return np.asarray(col.toarray() if hasattr(col, "toarray") else col, dtype=float).ravel()


def _column(values: Any, gene: str, cells: Sequence[str]) -> np.ndarray:
    """One gene of an AnnData or DataFrame (cells x genes), in the order of `cells`."""
    if isinstance(values, pd.DataFrame):
        return values.loc[list(cells), gene].to_numpy(dtype=float)
    sub = values[list(cells), [gene]].X
    return np.asarray(sub.toarray() if hasattr(sub, "toarray") else sub, dtype=float).ravel()


def spatial(imputed: Any, genes: Sequence[str], *, measured: Any = None,
            basis: str = "spatial", show_std: bool = True, point_size: float = 6.0,
            path: str | os.PathLike | None = None):
    """Maps of imputed expression in space, beside the measured truth and the uncertainty.

    Parameters
    ----------
    imputed
        The AnnData returned by `spalstf.impute` (coordinates in `obsm[basis]`).
    genes
        Genes to draw, one row each.
    measured
        Optional truth for these genes: an AnnData or DataFrame (cells x genes) with the same
        cell names, on the same scale (for example `st.obsm["truth"]` of simulated data).
    basis
        Key of the coordinates in `imputed.obsm`.
    show_std
        Add a column with `imputed.layers["std"]` when present.
    path
        Save the figure there (PNG, PDF... by suffix).

    Returns
    -------
    matplotlib.figure.Figure
    """
    # The user's matplotlib backend is left alone (headless sessions fall back to Agg).
    import anndata
    import matplotlib.pyplot as plt

    if not isinstance(imputed, anndata.AnnData):
        raise TypeError(f"`imputed` must be the AnnData returned by spalstf.impute; received "
                        f"{type(imputed).__name__}")
    if basis not in imputed.obsm:
        raise ValueError(f"`imputed.obsm` has no {basis!r} coordinates; its keys are "
                         f"{list(imputed.obsm.keys())}")
    missing = [g for g in genes if g not in imputed.var_names]
    if missing:
        raise ValueError(f"`genes` not in the imputed data: {missing[:10]}")
    xy = np.asarray(imputed.obsm[basis])[:, :2]
    cells = list(imputed.obs_names)
    columns = (["measured"] if measured is not None else []) + ["imputed"]
    if show_std and "std" in imputed.layers:
        columns.append("std")
    fig, axes = plt.subplots(len(genes), len(columns), squeeze=False,
                             figsize=(3.2 * len(columns), 3.0 * len(genes)))
    for row, gene in enumerate(genes):
        j = list(imputed.var_names).index(gene)
        values = {"imputed": _dense_column(imputed.X, j)}
        if measured is not None:
            values["measured"] = _column(measured, gene, cells)
        if "std" in columns:
            values["std"] = _dense_column(imputed.layers["std"], j)
        shared = np.concatenate([values[c] for c in ("measured", "imputed") if c in values])
        vmin, vmax = np.percentile(shared, [1, 99])
        for col, name in enumerate(columns):
            ax = axes[row, col]
            kw = {"vmin": vmin, "vmax": vmax} if name != "std" else {}
            im = ax.scatter(xy[:, 0], xy[:, 1], c=values[name], s=point_size, cmap="viridis"
                            if name != "std" else "magma", linewidths=0, **kw)
            title = f"{gene}: {name}"
            if name == "imputed" and "measured" in values:
                r = np.corrcoef(values["measured"], values["imputed"])[0, 1]
                title += f" (r = {r:.2f})"
            ax.set_title(title, fontsize=9)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, shrink=0.7)
    fig.tight_layout()
    if path is not None:
        from spalstf._atomic import atomic_path

        # The format comes from the final name, since the temporary one ends in .tmp.
        fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or None
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format=fmt)
    return fig
