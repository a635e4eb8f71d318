"""Plots: imputed expression in space, its uncertainty, method comparisons, training loss.

Every function returns the matplotlib ``Figure`` and, given ``path``, also saves it there (the
format follows the suffix: ``.png``, ``.pdf``, ``.svg``...). The user's matplotlib backend is
left alone; in a session without a display matplotlib falls back to its non-interactive Agg
backend by itself.

- :func:`spatial`: imputed expression in space, beside a truth (simulated or held-out measured
  values) and the uncertainty, per gene.
- :func:`uncertainty`: maps of the per-value uncertainty ``layers["std"]``.
- :func:`confidence`: how far to trust a run: one gene's values and the width of their
  intervals in space, and the self-check's measured accuracy beside the expected one.
- :func:`metric_boxplot`: per-gene metrics of cross-validation, one box per method.
- :func:`loss_curve`: the training and validation loss of a model, per epoch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["confidence", "loss_curve", "metric_boxplot", "spatial", "uncertainty"]

#: Resolution of saved raster figures (dots per inch).
DPI = 110


def _save(fig, path: str | os.PathLike | None):
    """Lay out `fig`, save it to `path` when given (atomically: a temporary file, renamed), and
    return it."""
    if fig.get_layout_engine() is None:  # figures laid out by constrained layout keep it
        fig.tight_layout()
    if path is not None:
        from spalstf._atomic import atomic_path

        # The format comes from the final name, since the temporary one ends in .tmp.
        fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or None
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=DPI, format=fmt)
    return fig


def _column(values: Any, gene: str, cells: Sequence[str]) -> np.ndarray:
    """One gene of an AnnData or DataFrame (cells x genes), in the order of `cells`."""
    if isinstance(values, pd.DataFrame):
        return values.loc[list(cells), gene].to_numpy(dtype=float)
    sub = values[list(cells), [gene]].X
    return np.asarray(sub.toarray() if hasattr(sub, "toarray") else sub, dtype=float).ravel()


def _layer_column(imputed: Any, layer: str | None, j: int) -> np.ndarray:
    """Column j of X (or of a layer), dense or sparse, as a flat float array."""
    x = imputed.X if layer is None else imputed.layers[layer]
    col = x[:, [j]]
    return np.asarray(col.toarray() if hasattr(col, "toarray") else col, dtype=float).ravel()


def _check_map_inputs(imputed: Any, genes: Sequence[str], basis: str) -> list[str]:
    import anndata

    if not isinstance(imputed, anndata.AnnData):
        raise TypeError("`imputed` must be the AnnData returned by spalstf.impute; received "
                        f"{type(imputed).__name__}")
    if isinstance(genes, str):
        genes = [genes]
    genes = list(genes)
    if not genes:
        raise ValueError("`genes` is empty; name at least one gene to draw")
    if basis not in imputed.obsm:
        raise ValueError(f"`imputed.obsm` has no {basis!r} coordinates; its keys are "
                         f"{list(imputed.obsm.keys())}")
    missing = [g for g in genes if g not in imputed.var_names]
    if missing:
        raise ValueError(f"`genes` not in the imputed data: {missing[:10]}")
    return genes


def _map(fig, ax, xy: np.ndarray, values: np.ndarray, title: str, *, cmap: str,
         point_size: float, vmin: float | None = None, vmax: float | None = None,
         label: str | None = None) -> None:
    im = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=point_size, cmap=cmap, linewidths=0,
                    vmin=vmin, vmax=vmax)
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    bar = fig.colorbar(im, ax=ax, shrink=0.8)
    if label:
        bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=7)


#: Colour scales of `spatial` (see its `scale`).
SCALES = ("matched", "separate", "both")
#: Font size of a figure's title (points).
TITLE_FONTSIZE = 10


def _wrap(text: str, width_in: float, fontsize: float) -> list[str]:
    """The lines of `text`, each wrapped to fit `width_in` inches at `fontsize` points.

    A character is taken as 0.6 em wide (DejaVu Sans averages less), so a line fits rather
    than runs off the figure's edges.
    """
    import textwrap

    chars = max(20, int(width_in * 72 / (0.6 * fontsize)))
    return [part for line in text.splitlines() for part in textwrap.wrap(line, chars) or [""]]


def _scale_text(scale_factor: float) -> str:
    """1e4 for 10000, else the number as written by %g."""
    exponent = math.log10(scale_factor) if scale_factor > 0 else 0.5
    return f"1e{int(exponent)}" if exponent.is_integer() else f"{scale_factor:g}"


def _value_units(imputed: Any) -> tuple[str | None, str | None]:
    """The units of the expression scale and of the imputed values, from `uns["spalstf"]`.

    Returns (expression units, imputed units); the second adds the share of the value at the
    spot's depth when the imputation holds one (`output="at_depth"` or `depth_weight` > 0),
    since such values sit below the depth-free expression where spots hold few counts.
    Both are None for data that `spalstf.impute` did not write.
    """
    info = imputed.uns.get("spalstf") if hasattr(imputed, "uns") else None
    params = info.get("params") if isinstance(info, dict) else None
    if not isinstance(params, dict):
        return None, None
    if info.get("log_normalized_input"):
        return "log-normalised, as the input", "log-normalised, as the input"
    scale_factor = _scale_text(float(params.get("scale_factor", 1e4)))
    base = f"log1p(count / known-gene total x {scale_factor})"
    share = 1.0 if params.get("output") == "at_depth" else float(params.get("depth_weight") or 0)
    if share >= 1:
        return base, f"{base}\nexpected at the spot's depth"
    if share > 0:
        return base, f"{base}\n{share:.0%} expected at the spot's depth"
    return base, base


def _std_label(imputed: Any, units: str | None) -> str:
    """Colour-bar label of the uncertainty: over how many samples, and in which units."""
    info = imputed.uns.get("spalstf") if hasattr(imputed, "uns") else None
    params = info.get("params") if isinstance(info, dict) else None
    combination = info.get("combination") if isinstance(info, dict) else None
    if isinstance(combination, dict) and combination.get("kind") == "stack":
        # the learnt combination's std is its calibrated interval, not a spread of samples
        from scipy.stats import norm

        level = params.get("interval_level", 0.9) if isinstance(params, dict) else 0.9
        label = (f"half-width of the {float(level):.0%} interval / "
                 f"{float(norm.ppf(0.5 + float(level) / 2)):.2f}")
        return label + (",\nsame units as the values" if units else "")
    n = params.get("n_samples") if isinstance(params, dict) else None
    label = f"std over {n} samples" if n else "std over samples"
    label += ", same units as the values" if units else ""
    # The std is the spread of the diffusion's samples whatever share of their refinement the
    # values keep (spalstf.diffusion.sample): where they keep less than all, say so.
    weight = params.get("residual_weight") if isinstance(params, dict) else None
    if weight is not None and float(weight) == 0:
        label += "\nunused by the values (the prior alone)"
    elif weight is not None and float(weight) < 1:
        label += f"\nthe values keep {float(weight):.0%} of their refinement"
    return label


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


def _self_check_record(imputed: Any) -> dict:
    """`uns["spalstf"]["self_check"]` of a result, or a ValueError that says how to get one."""
    info = imputed.uns.get("spalstf")
    check = info.get("self_check") if isinstance(info, Mapping) else None
    if not isinstance(check, Mapping) or "pcc" not in check:
        raise ValueError("`imputed` has no self-check (uns['spalstf']['self_check']): impute "
                         "with spalstf.impute(st, sc, self_check=True), which hides known "
                         "genes in turn to measure the accuracy")
    return dict(check)


def _expected_band(check: Mapping) -> tuple[float, float, float, float] | None:
    """The run's expected median PCC with all its known genes: (median, lower, upper, level),
    or None when the self-check did not extrapolate one."""
    if "expected_median_pcc" not in check:
        return None
    lower, upper = (float(v) for v in check["expected_median_pcc_interval"])
    expected = check.get("expected")
    level = float(expected.get("level", 0.9)) if isinstance(expected, Mapping) else 0.9
    return float(check["expected_median_pcc"]), lower, upper, level


def _hidden_expected(check: Mapping, n: int) -> np.ndarray | None:
    """Per hidden gene of the self-check: its expected PCC, or None when the record cannot
    give it.

    Either stored as such (``expected_pcc``, one per hidden gene), or read from each hidden
    gene's predictability in the reference (``reference_pcc``) along the line fitted with half
    the known genes hidden (``expected["half_panel_line"]``, as the hidden genes were
    measured; else ``calibration``).
    """
    stored = check.get("expected_pcc")
    if stored is not None and len(stored) == n:
        return np.asarray(stored, dtype=float)
    reference = check.get("reference_pcc")
    if reference is None or len(reference) != n:
        return None
    expected = check.get("expected")
    line = expected.get("half_panel_line") if isinstance(expected, Mapping) else None
    line = line if isinstance(line, Mapping) else check.get("calibration")
    if not isinstance(line, Mapping) or "slope" not in line:
        return None
    return float(line["intercept"]) + float(line["slope"]) * np.asarray(reference, dtype=float)


def _typical_gene(imputed: Any) -> str:
    """The imputed gene whose expected PCC is the median one (the first gene without them)."""
    if "expected_pcc" in imputed.var:
        expected = imputed.var["expected_pcc"].to_numpy(dtype=float)
        if np.isfinite(expected).any():
            order = np.argsort(np.where(np.isfinite(expected), expected, np.inf))
            return str(imputed.var_names[order[(np.isfinite(expected).sum() - 1) // 2]])
    return str(imputed.var_names[0])


def confidence(imputed: Any, gene: str | None = None, *, basis: str = "spatial",
               point_size: float = 6.0, path: str | os.PathLike | None = None):
    """How far to trust a run: one gene's values and interval, and the run's accuracy.

    Three panels. Left: the imputed values of `gene` in space, titled with its expected PCC
    (`var["expected_pcc"]`). Middle: the width of each value's interval, ``layers["upper"] -
    layers["lower"]`` (90% by default), in the same units: wide where the value is unsure.
    Right: the self-check's measured accuracy on the known genes it hid (Pearson r of each
    against its measured values), beside what was expected of it. When the record holds each
    hidden gene's expected PCC (or its predictability in the reference, read along the
    self-check's calibration line), the panel is expected against measured PCC per hidden
    gene with the identity line; otherwise each hidden gene's measured PCC, ranked, with
    their median. Either way the run's expected median PCC with all its known genes
    (``expected_median_pcc``, higher than the self-check's, which had half of them hidden) is
    drawn as a band of its interval and written in the panel's title.

    Parameters
    ----------
    imputed
        The AnnData returned by `spalstf.impute` with a self-check: ``layers["lower"]`` and
        ``layers["upper"]``, ``uns["spalstf"]["self_check"]``, coordinates in `obsm[basis]`.
    gene
        Gene to map. Default: the imputed gene with the median expected PCC (a typical one).
    basis
        Key of the coordinates in `imputed.obsm`.
    point_size
        Marker size of each cell or spot.
    path
        Save the figure there (PNG, PDF... by suffix).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import anndata
    import matplotlib.pyplot as plt

    if not isinstance(imputed, anndata.AnnData):
        raise TypeError("`imputed` must be the AnnData returned by spalstf.impute; received "
                        f"{type(imputed).__name__}")
    if gene is not None and not isinstance(gene, str):
        raise TypeError(f"`gene` must be one gene's name; received {type(gene).__name__}")
    if gene is not None and gene not in imputed.var_names:
        raise ValueError(f"`gene` {gene!r} is not in the imputed data")
    if basis not in imputed.obsm:
        raise ValueError(f"`imputed.obsm` has no {basis!r} coordinates (`basis`); its keys are "
                         f"{list(imputed.obsm.keys())}")
    absent = [name for name in ("lower", "upper") if name not in imputed.layers]
    if absent:
        raise ValueError(f"`imputed` has no interval (layers {absent} missing): impute with a "
                         "self-check, which calibrates the interval of each value")
    check = _self_check_record(imputed)
    gene = _typical_gene(imputed) if gene is None else gene
    j = list(imputed.var_names).index(gene)
    xy = np.asarray(imputed.obsm[basis])[:, :2]
    units = _value_units(imputed)[1]
    params = (imputed.uns.get("spalstf") or {}).get("params") or {}
    band = _expected_band(check)
    level = float(params.get("interval_level", band[3] if band else 0.9))

    fig, axes = plt.subplots(1, 3, figsize=(11.4, 3.6), layout="constrained")
    values = _layer_column(imputed, None, j)
    title = f"{gene}: imputed"
    if "expected_pcc" in imputed.var and np.isfinite(imputed.var["expected_pcc"].iloc[j]):
        title += f"\nexpected r {float(imputed.var['expected_pcc'].iloc[j]):.2f}"
    _map(fig, axes[0], xy, values, title, cmap="viridis", point_size=point_size,
         vmin=np.percentile(values, 1), vmax=np.percentile(values, 99), label=units)
    width = _layer_column(imputed, "upper", j) - _layer_column(imputed, "lower", j)
    _map(fig, axes[1], xy, width, f"{gene}: width of the {level:.0%} interval", cmap="magma",
         point_size=point_size,
         label="upper - lower" + (", same units as the values" if units else ""))

    ax = axes[2]
    measured = np.asarray(check["pcc"], dtype=float)
    expected = _hidden_expected(check, len(measured))
    ok = np.isfinite(measured) & (np.isfinite(expected) if expected is not None else True)
    hidden = f"{int(ok.sum())} hidden known genes"
    if expected is not None:  # expected against measured, one dot per hidden gene
        ax.scatter(expected[ok], measured[ok], s=12, color="C0", label=hidden)
        ends = np.array([min(expected[ok].min(), measured[ok].min()),
                         max(expected[ok].max(), measured[ok].max())])
        ax.plot(ends, ends, color="grey", linestyle="--", linewidth=1, label="identity")
        ax.set_xlabel("expected r (self-check's calibration)")
        if band:
            ax.axhspan(band[1], band[2], color="C1", alpha=0.25,
                       label=f"run's expected median, {band[3]:.0%} interval")
    else:  # no expectation per gene: each hidden gene's measured r, ranked
        ranked = np.sort(measured[ok])
        ax.scatter(np.arange(1, len(ranked) + 1), ranked, s=12, color="C0", label=hidden)
        ax.axhline(np.median(ranked), color="C0", linestyle=":", linewidth=1,
                   label=f"their median, {np.median(ranked):.2f}")
        ax.set_xlabel("hidden known genes, ranked by measured r")
        if band:
            ax.axhspan(band[1], band[2], color="C1", alpha=0.25,
                       label=f"run's expected median, {band[3]:.0%} interval")
            ax.axhline(band[0], color="C1", linewidth=1.5)
    ax.set_ylabel("measured r (self-check)")
    if band:
        ax.set_title(f"expected median r {band[0]:.2f} ({band[3]:.0%}: {band[1]:.2f} to "
                     f"{band[2]:.2f})\nwith all known genes; the self-check hid half",
                     fontsize=9)
    else:
        ax.set_title(f"self-check: median r {float(check['median_pcc']):.2f}\n(half the known "
                     "genes hidden)", fontsize=9)
    ax.xaxis.label.set_fontsize(8)
    ax.yaxis.label.set_fontsize(8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _per_gene_table(result: Any) -> pd.DataFrame:
    per_gene = getattr(result, "per_gene", result)
    if not isinstance(per_gene, pd.DataFrame):
        raise TypeError("`result` must be what spalstf.cross_validate returns or its "
                        f"`per_gene` DataFrame; received {type(result).__name__}")
    if "method" not in per_gene.columns:
        raise ValueError("`result` needs a 'method' column (one row per method and gene); its "
                         f"columns are {list(per_gene.columns)}")
    return per_gene


def metric_boxplot(result: Any, metrics: str | Sequence[str] = ("pcc", "ssim", "rmse", "js"),
                   *, truth: str = "lognorm", methods: Sequence[str] | None = None,
                   points: bool = True, path: str | os.PathLike | None = None):
    """Per-gene metrics of leave-genes-out cross-validation, one box per method.

    One panel per metric; each box holds one value per gene (over all folds), the dots are the
    genes, and the method's median is written above its box. Genes whose metric is NaN (for
    example a constant prediction has no Pearson r) are left out and counted in the label.

    Parameters
    ----------
    result
        What `spalstf.cross_validate` returns, or its `per_gene` DataFrame (columns `method`,
        the metric columns, and optionally `truth`; any DataFrame of that shape works).
    metrics
        Metric columns to draw (`"pcc"`, `"spcc"`, `"ssim"`, `"rmse"`, `"js"`); higher is
        better for PCC, SPCC and SSIM, lower for RMSE and JS.
    truth
        Which truth to score against when the table has a `truth` column: `"lognorm"` (the
        ST's log-normalised values) or `"counts"`.
    methods
        Methods to draw, in this order (default: all, in the order of the table).
    points
        Overlay one dot per gene.
    path
        Save the figure there (PNG, PDF... by suffix).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    table = _per_gene_table(result)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not metrics:
        raise ValueError("`metrics` is empty; name at least one metric column")
    absent = [m for m in metrics if m not in table.columns]
    if absent:
        raise ValueError(f"`metrics` not in the table: {absent}; its columns are "
                         f"{list(table.columns)}")
    if "truth" in table.columns:
        truths = list(pd.unique(table["truth"]))
        if truth not in truths:
            raise ValueError(f"`truth` must be one of {truths}; received {truth!r}")
        table = table[table["truth"] == truth]
    available = list(pd.unique(table["method"]))
    if methods is None:
        methods = available
    else:
        methods = [methods] if isinstance(methods, str) else list(methods)
        unknown = [m for m in methods if m not in available]
        if unknown:
            raise ValueError(f"`methods` not in the table: {unknown}; it has {available}")
    if not methods:
        raise ValueError("the table holds no methods to draw")
    fig, axes = plt.subplots(1, len(metrics), squeeze=False,
                             figsize=(len(metrics) * (0.8 * len(methods) + 1.4), 3.6))
    rng = np.random.default_rng(0)  # jitter of the dots only
    for ax, metric in zip(axes[0], metrics, strict=True):
        data, labels = [], []
        for m in methods:
            v = table.loc[table["method"] == m, metric].to_numpy(dtype=float)
            n_nan = int(np.isnan(v).sum())
            data.append(v[~np.isnan(v)])
            labels.append(f"{m}\n({n_nan} NaN)" if n_nan else m)
        positions = np.arange(1, len(methods) + 1)
        ax.boxplot(data, positions=positions, widths=0.6, showfliers=not points,
                   medianprops={"color": "black"})
        ax.set_xticks(positions)
        ax.set_xticklabels(labels, rotation=30 if len(methods) > 3 else 0, fontsize=8)
        finite = [v for v in data if len(v)]
        top = max((float(v.max()) for v in finite), default=1.0)
        for pos, v in zip(positions, data, strict=True):
            if points and len(v):
                ax.scatter(pos + rng.uniform(-0.18, 0.18, len(v)), v, s=7, alpha=0.5,
                           color="tab:blue", linewidths=0, zorder=3)
            if len(v):
                ax.annotate(f"{np.median(v):.3f}", (pos, top), xytext=(0, 4),
                            textcoords="offset points", ha="center", fontsize=7)
        ax.set_title(metric.upper(), fontsize=10)
        ax.margins(y=0.12)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _history(model: Any) -> tuple[list[dict], int | None]:
    """The per-epoch records and the best epoch of a Model, a training result or a list."""
    if isinstance(model, (list, tuple)):
        return list(model), None
    history = getattr(model, "history", None)
    if not isinstance(history, (list, tuple)):
        raise TypeError("`model` must be a spalstf.Model or its `history` (a list of per-epoch "
                        f"dicts); received {type(model).__name__}")
    best = getattr(model, "best_epoch", None)
    if best is None:
        best = (getattr(model, "info", None) or {}).get("best_epoch")
    return list(history), (int(best) if best else None)


def loss_curve(model: Any, *, log_scale: bool = False,
               path: str | os.PathLike | None = None):
    """The training loss of a model, per epoch.

    First panel: the total training loss, its noise-prediction MSE and, when the model held out
    reference cells for early stopping, the validation MSE, with the epoch whose weights were
    kept (the lowest validation loss) marked. Then one panel each for the variational-bound and
    KL terms when they are in the loss (they are on other scales, the bound can be negative).

    Parameters
    ----------
    model
        A `spalstf.Model` (its `history` and `info["best_epoch"]`), or a list of per-epoch
        dicts with the keys `epoch`, `train_total`, `train_mse`, `train_vlb`, `train_kl` and
        `val_mse` (any subset).
    log_scale
        Logarithmic axis for the first panel.
    path
        Save the figure there (PNG, PDF... by suffix).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    history, best = _history(model)
    if not history:
        raise ValueError("`model` has no training history to draw (no epoch recorded)")
    frame = pd.DataFrame(history)
    epochs = frame["epoch"] if "epoch" in frame else pd.Series(np.arange(1, len(frame) + 1))
    main = [(k, label) for k, label in (("train_total", "train: total"),
                                        ("train_mse", "train: MSE"),
                                        ("val_mse", "validation: MSE")) if k in frame]
    extra = [(k, label) for k, label in (("train_vlb", "train: VLB"), ("train_kl", "train: KL"))
             if k in frame and np.nanmax(np.abs(frame[k].to_numpy(dtype=float))) > 0]
    if not main and not extra:
        raise ValueError("the history has none of the loss keys train_total, train_mse, "
                         f"val_mse, train_vlb, train_kl; its keys are {list(frame.columns)}")
    panels = ([main] if main else []) + [[term] for term in extra]
    fig, axes = plt.subplots(1, len(panels), squeeze=False, figsize=(4.2 * len(panels), 3.4))
    for ax, keys in zip(axes[0], panels, strict=True):
        for k, label in keys:
            ax.plot(epochs, frame[k], marker="o", markersize=3, label=label)
        if best is not None and keys is main:
            ax.axvline(best, color="grey", linestyle="--", linewidth=1,
                       label=f"kept: epoch {best}")
        if log_scale and keys is main:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss" if keys is main else "loss term")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, path)
