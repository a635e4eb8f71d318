""":func:`metric_boxplot`: per-gene metrics of cross-validation, one box per method."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from spalstf.pl._common import _save


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
