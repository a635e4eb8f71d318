"""Maps of imputed genes in space: :func:`spatial` (beside a truth and the uncertainty) and
:func:`uncertainty` (the per-value standard deviation)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from spalstf.pl._common import (
    SCALES,
    TITLE_FONTSIZE,
    _check_map_inputs,
    _column,
    _layer_column,
    _map,
    _save,
    _std_label,
    _value_units,
    _wrap,
)


def spatial(imputed: Any, genes: Sequence[str], *, truth: Any = None,
            truth_label: str = "truth", scale: str = "matched",
            labels: Mapping[str, str] | None = None, title: str | None = None,
            units: str | None = "auto", basis: str = "spatial", show_std: bool = True,
            point_size: float = 6.0, measured: Any = None,
            path: str | os.PathLike | None = None):
    """Maps of imputed expression in space, beside a truth and the uncertainty.

    One row per gene; columns: the truth (when `truth` is given), the imputed values (titled
    with their Pearson r against the truth; twice with `scale="both"`) and the uncertainty
    `layers["std"]` (when `show_std` and present). Every map has its colour bar, labelled with
    the units.

    Parameters
    ----------
    imputed
        The AnnData returned by `spalstf.impute` (coordinates in `obsm[basis]`).
    genes
        Genes to draw, one row each.
    truth
        Optional truth for these genes: an AnnData or DataFrame (cells x genes) with the same
        cell names, on the same scale (for example `st.obsm["truth"]` of simulated data, or the
        measured values of genes hidden from the imputation).
    truth_label
        What the truth is, in its panels' titles: say "measured" only for values that were
        measured (for simulated data, for example, "simulated truth").
    scale
        Colour scale of the truth and the imputation. "matched": one scale per gene for both
        (their 1st to 99th percentile together), so a difference of level shows as a
        difference of colour. "separate": each map its own (its own 1st to 99th percentile),
        so the pattern of each shows even where their levels differ; compare the colour bars.
        "both": the imputed values twice, on the matched scale (their level) and on their own
        (their pattern), when a truth is given.
    labels
        Optional text per gene, written at the left of its row (for example its rank among
        all genes).
    title
        Title of the whole figure; its lines are wrapped to the figure's width.
    units
        Label of the colour bars of the values. "auto": from `imputed.uns["spalstf"]` (the
        expression scale, and the share of the value at the spot's depth where the imputation
        holds one); None: no label.
    basis
        Key of the coordinates in `imputed.obsm`.
    show_std
        Add a column with `imputed.layers["std"]` when present.
    point_size
        Marker size of each cell or spot.
    measured
        The older name of `truth`, titled "measured": pass it only for measured values.
    path
        Save the figure there (PNG, PDF... by suffix).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    genes = _check_map_inputs(imputed, genes, basis)
    if measured is not None:
        if truth is not None:
            raise ValueError("pass the truth as `truth` or as `measured`, not both")
        truth, truth_label = measured, "measured"
    if scale not in SCALES:
        raise ValueError(f"`scale` must be one of {', '.join(map(repr, SCALES))}; "
                         f"received {scale!r}")
    labels = dict(labels or {})
    unknown = [g for g in labels if g not in genes]
    if unknown:
        raise ValueError(f"`labels` names genes that are not drawn: {unknown[:10]}")
    if units == "auto":
        truth_units, imputed_units = _value_units(imputed)
    else:
        truth_units = imputed_units = units
    xy = np.asarray(imputed.obsm[basis])[:, :2]
    cells = list(imputed.obs_names)
    # "own": the imputed values on their own colour scale, beside those on the matched one.
    both = scale == "both" and truth is not None
    columns = ((["truth"] if truth is not None else []) + ["imputed"]
               + (["own"] if both else []))
    if show_std and "std" in imputed.layers:
        columns.append("std")
    width = 3.4 * len(columns)
    lines = _wrap(title, width, TITLE_FONTSIZE) if title else []
    fig, axes = plt.subplots(len(genes), len(columns), squeeze=False, layout="constrained",
                             figsize=(width, 3.0 * len(genes) + 0.2 * len(lines)))
    names = list(imputed.var_names)
    for row, gene in enumerate(genes):
        j = names.index(gene)
        values = {"imputed": _layer_column(imputed, None, j)}
        if truth is not None:
            values["truth"] = _column(truth, gene, cells)
        if "std" in columns:
            values["std"] = _layer_column(imputed, "std", j)
        limits = {name: np.percentile(values[name], [1, 99])
                  for name in ("truth", "imputed") if name in values}
        limits["own"] = limits["imputed"]
        if scale in ("matched", "both"):
            shared = np.percentile(np.concatenate([values[n] for n in ("truth", "imputed")
                                                   if n in values]), [1, 99])
            limits.update({name: shared for name in ("truth", "imputed")})
        r_text = ""
        if "truth" in values:
            r_text = f" (r = {np.corrcoef(values['truth'], values['imputed'])[0, 1]:.2f})"
        for col, name in enumerate(columns):
            ax = axes[row, col]
            if name == "std":
                _map(fig, ax, xy, values[name], f"{gene}: uncertainty", cmap="magma",
                     point_size=point_size, label=_std_label(imputed, imputed_units))
                continue
            if name == "truth":
                title_text, label = f"{gene}: {truth_label}", truth_units
            elif name == "imputed" and both:
                title_text, label = f"{gene}: imputed\non the truth's colour scale", imputed_units
            else:  # the imputed values on their own scale (or the only imputed map)
                title_text, label = f"{gene}: imputed{r_text}", imputed_units
                if both:
                    title_text += "\non their own colour scale"
            _map(fig, ax, xy, values["imputed" if name == "own" else name], title_text,
                 cmap="viridis", point_size=point_size, vmin=limits[name][0],
                 vmax=limits[name][1], label=label)
        if gene in labels:
            axes[row, 0].set_ylabel(labels[gene], fontsize=9)
    if lines:
        fig.suptitle("\n".join(lines), fontsize=TITLE_FONTSIZE)
    return _save(fig, path)


def uncertainty(imputed: Any, genes: Sequence[str], *, relative: bool = False,
                basis: str = "spatial", ncols: int = 4, point_size: float = 6.0,
                path: str | os.PathLike | None = None):
    """Maps of the uncertainty of the imputation, one panel per gene.

    The uncertainty is `imputed.layers["std"]`: the standard deviation of a value over the
    model's samples for that cell (written by `spalstf.impute` when `n_samples > 1`). It is
    large where the measured genes leave the gene undetermined under the reference; it is not
    a calibrated confidence interval and does not include the model's own error.

    Parameters
    ----------
    imputed
        The AnnData returned by `spalstf.impute` (`layers["std"]`, coordinates in
        `obsm[basis]`).
    genes
        Genes to draw.
    relative
        Draw std / (imputed value + 0.1) instead of the std (the 0.1 keeps cells imputed near
        zero from dominating the map).
    basis
        Key of the coordinates in `imputed.obsm`.
    ncols
        Panels per row.
    point_size
        Marker size of each cell or spot.
    path
        Save the figure there (PNG, PDF... by suffix).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    genes = _check_map_inputs(imputed, genes, basis)
    if "std" not in imputed.layers:
        raise ValueError("`imputed` has no layers['std']: impute with n_samples > 1 to get "
                         "the uncertainty")
    if isinstance(ncols, bool) or not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise ValueError(f"`ncols` must be a positive integer; received {ncols!r}")
    ncols = min(int(ncols), len(genes))
    nrows = math.ceil(len(genes) / ncols)
    xy = np.asarray(imputed.obsm[basis])[:, :2]
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=(3.4 * ncols, 3.0 * nrows))
    names = list(imputed.var_names)
    for k, gene in enumerate(genes):
        j = names.index(gene)
        std = _layer_column(imputed, "std", j)
        label, bar = "std", _std_label(imputed, _value_units(imputed)[1])
        if relative:
            std = std / (np.clip(_layer_column(imputed, None, j), 0, None) + 0.1)
            label = bar = "std / (value + 0.1)"
        _map(fig, axes[k // ncols, k % ncols], xy, std, f"{gene}: {label}", cmap="magma",
             point_size=point_size, label=bar)
    for k in range(len(genes), nrows * ncols):
        axes[k // ncols, k % ncols].set_axis_off()
    return _save(fig, path)
