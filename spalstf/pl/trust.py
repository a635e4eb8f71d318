""":func:`confidence`: how far to trust a run: one gene's values and the width of their
intervals in space, and the self-check's measured accuracy beside the expected one."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from spalstf.pl._common import _layer_column, _map, _save, _value_units


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
