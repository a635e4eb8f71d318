"""Per-gene accuracy metrics for imputed spatial expression.

The definitions follow the benchmark of Li et al. 2022 (Nat Methods 19:662) and the SpaLSTF
paper. Every metric compares one column (gene) of a truth matrix with the same column of a
prediction matrix, both cells x genes:

- ``pcc``: Pearson correlation of the gene across cells.
- ``spcc``: Spearman correlation (Pearson correlation of the average ranks, ties averaged).
- ``ssim``: each gene divided by its own maximum, then one global SSIM over the column with
  ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, ``C3 = C2 / 2``, ``L = 1``, as
  luminance x contrast x structure.
- ``rmse``: each gene z-scored on both sides, then the root-mean-square difference.
- ``js``: each gene divided by its sum, then the Jensen-Shannon divergence (natural log).

Conventions for degenerate columns (documented, never silent):

- A column with zero variance (a constant prediction, an all-zero gene, a single cell) has no
  correlation: ``pcc`` and ``spcc`` are NaN. :func:`summarize` counts the NaN values per metric
  (column ``n_nan``) and takes medians and means over the other genes.
- ``ssim``: an all-zero column stays all zero after max-scaling (0 / 0 is taken as 0); the SSIM
  formula is finite for constant columns thanks to ``C1``, ``C2``, ``C3``.
- ``rmse``: a constant column z-scores to all zeros (as scikit-learn's ``StandardScaler`` does),
  so a constant prediction scores 1.0 against any non-constant truth. The Li et al. code divides
  by a standard deviation that is a rounding error there, which gives ``sqrt(2)`` for some
  constant columns and NaN for others. Fewer than two cells give NaN.
- ``js``: a column that sums to zero is not a distribution: NaN. Negative values make JS
  undefined: NaN and a warning.

The clustering agreement (:func:`leiden_clusters`, :func:`clustering_scores`) is defined in
:mod:`spalstf.evaluate.clustering` and is part of this module's names too.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from spalstf.evaluate._matrices import _as_dense
from spalstf.evaluate.clustering import clustering_scores, leiden_clusters

logger = logging.getLogger(__name__)

__all__ = [
    "METRICS",
    "HIGHER_IS_BETTER",
    "pcc",
    "spcc",
    "ssim",
    "rmse",
    "js",
    "score_genes",
    "summarize",
    "accuracy_score",
    "leiden_clusters",
    "clustering_scores",
]

#: Names of the per-gene metrics, in table order.
METRICS: tuple[str, ...] = ("pcc", "spcc", "ssim", "rmse", "js")

#: Whether a larger value of each metric means a better imputation.
HIGHER_IS_BETTER: dict[str, bool] = {
    "pcc": True,
    "spcc": True,
    "ssim": True,
    "rmse": False,
    "js": False,
}


def _pair(truth: Any, pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = _as_dense(truth, "truth")
    p = _as_dense(pred, "pred")
    if t.shape != p.shape:
        raise ValueError(
            "`truth` and `pred` must have the same shape (cells x genes). "
            f"Expected {t.shape}, received {p.shape}."
        )
    return t, p


def _pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Column-wise Pearson correlation; NaN where a column has zero variance."""
    n = a.shape[0]
    if n < 2:
        return np.full(a.shape[1], np.nan)
    ac = a - a.mean(axis=0)
    bc = b - b.mean(axis=0)
    na = np.sqrt((ac**2).sum(axis=0))
    nb = np.sqrt((bc**2).sum(axis=0))
    # Treat spreads at rounding-error level as zero (a "constant" column stored in float).
    tol_a = 1e-12 * np.maximum(np.abs(a).max(axis=0), 1e-300) * np.sqrt(n)
    tol_b = 1e-12 * np.maximum(np.abs(b).max(axis=0), 1e-300) * np.sqrt(n)
    ok = (na > tol_a) & (nb > tol_b)
    out = np.full(a.shape[1], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (ac * bc).sum(axis=0) / (na * nb)
    out[ok] = np.clip(r[ok], -1.0, 1.0)
    return out


def pcc(truth: Any, pred: Any) -> np.ndarray:
    """Pearson correlation of each gene across cells.

    Parameters
    ----------
    truth, pred
        Cells x genes matrices of the same shape (numpy, scipy sparse, DataFrame or AnnData).

    Returns
    -------
    numpy.ndarray
        One value per gene; NaN where either column is constant or there are fewer than 2 cells.
    """
    t, p = _pair(truth, pred)
    return _pearson_columns(t, p)


def spcc(truth: Any, pred: Any) -> np.ndarray:
    """Spearman correlation of each gene across cells (ties get their average rank).

    Parameters
    ----------
    truth, pred
        Cells x genes matrices of the same shape.

    Returns
    -------
    numpy.ndarray
        One value per gene; NaN where either column is constant or there are fewer than 2 cells.
    """
    t, p = _pair(truth, pred)
    if t.shape[0] == 0:
        return np.full(t.shape[1], np.nan)
    return _pearson_columns(rankdata(t, axis=0), rankdata(p, axis=0))


def _scale_max(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=0) if x.shape[0] else np.zeros(x.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        out = x / m
    out[:, m == 0] = 0.0
    return out


def ssim(truth: Any, pred: Any, *, data_range: float = 1.0) -> np.ndarray:
    """Structural similarity of each gene, after dividing each gene by its own maximum.

    ``SSIM = l * c * s`` with ``l = (2 mu_t mu_p + C1) / (mu_t^2 + mu_p^2 + C1)``,
    ``c = (2 s_t s_p + C2) / (s_t^2 + s_p^2 + C2)``, ``s = (s_tp + C3) / (s_t s_p + C3)``,
    population (biased) moments over the cells, ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``,
    ``C3 = C2 / 2``.

    Parameters
    ----------
    truth, pred
        Cells x genes matrices of the same shape.
    data_range
        ``L``; 1 after max-scaling.

    Returns
    -------
    numpy.ndarray
        One value per gene in [-1, 1]; all-zero columns are taken as zeros (finite result).
    """
    t, p = _pair(truth, pred)
    if t.shape[0] == 0:
        return np.full(t.shape[1], np.nan)
    t = _scale_max(t)
    p = _scale_max(p)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    c3 = c2 / 2
    mu_t, mu_p = t.mean(axis=0), p.mean(axis=0)
    s_t = np.sqrt(((t - mu_t) ** 2).mean(axis=0))
    s_p = np.sqrt(((p - mu_p) ** 2).mean(axis=0))
    s_tp = ((t - mu_t) * (p - mu_p)).mean(axis=0)
    lum = (2 * mu_t * mu_p + c1) / (mu_t**2 + mu_p**2 + c1)
    con = (2 * s_t * s_p + c2) / (s_t**2 + s_p**2 + c2)
    st_ = (s_tp + c3) / (s_t * s_p + c3)
    return lum * con * st_


def _zscore(x: np.ndarray) -> np.ndarray:
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    tol = 1e-12 * np.maximum(np.abs(x).max(axis=0), 1e-300)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (x - mu) / sd
    z[:, sd <= tol] = 0.0
    return z


def rmse(truth: Any, pred: Any) -> np.ndarray:
    """Root-mean-square difference of each gene after z-scoring both sides.

    Parameters
    ----------
    truth, pred
        Cells x genes matrices of the same shape.

    Returns
    -------
    numpy.ndarray
        One value per gene in [0, 2]; a constant column z-scores to zeros; NaN with fewer than
        2 cells.
    """
    t, p = _pair(truth, pred)
    if t.shape[0] < 2:
        return np.full(t.shape[1], np.nan)
    return np.sqrt(((_zscore(t) - _zscore(p)) ** 2).mean(axis=0))


def js(truth: Any, pred: Any) -> np.ndarray:
    """Jensen-Shannon divergence (natural log) of each gene, each divided by its sum.

    Parameters
    ----------
    truth, pred
        Cells x genes matrices of the same shape, non-negative.

    Returns
    -------
    numpy.ndarray
        One value per gene in [0, ln 2]; NaN where a column sums to zero or holds negative values.
    """
    t, p = _pair(truth, pred)
    neg = (t < 0).any(axis=0) | (p < 0).any(axis=0)
    if neg.any():
        warnings.warn(
            f"JS is undefined for negative values; {int(neg.sum())} gene(s) with negative "
            "values get NaN. Imputations should be non-negative.",
            RuntimeWarning,
            stacklevel=2,
        )
    st_, sp_ = t.sum(axis=0), p.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore", under="ignore"):
        pt = t / st_
        pp = p / sp_
        m = (pt + pp) / 2

        def _kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            pos = a > 0
            log_ratio = np.log(np.where(pos, a, 1.0)) - np.log(np.where(pos, b, 1.0))
            terms = np.where(pos, a * log_ratio, 0.0)
            return terms.sum(axis=0)

        out = 0.5 * _kl(pt, m) + 0.5 * _kl(pp, m)
    bad = neg | (st_ <= 0) | (sp_ <= 0) | ~np.isfinite(out)
    out = np.maximum(out, 0.0)
    out[bad] = np.nan
    return out


_FUNCS = {"pcc": pcc, "spcc": spcc, "ssim": ssim, "rmse": rmse, "js": js}


def score_genes(
    truth: Any,
    pred: Any,
    genes: Sequence[str] | None = None,
    *,
    metrics: Sequence[str] = METRICS,
) -> pd.DataFrame:
    """All per-gene metrics between ``truth`` and ``pred`` in one table.

    Parameters
    ----------
    truth, pred
        Cells x genes matrices of the same shape. DataFrames give the gene names when
        ``genes`` is None.
    genes
        Gene names, one per column.
    metrics
        Subset of :data:`METRICS`.

    Returns
    -------
    pandas.DataFrame
        Index: genes; one column per metric.
    """
    unknown = [m for m in metrics if m not in _FUNCS]
    if unknown:
        raise ValueError(f"`metrics`: unknown {unknown}; expected a subset of {list(METRICS)}.")
    t, p = _pair(truth, pred)
    if genes is None:
        if isinstance(truth, pd.DataFrame):
            genes = list(map(str, truth.columns))
        elif hasattr(truth, "var_names"):
            genes = list(truth.var_names)
        else:
            genes = [f"gene_{i}" for i in range(t.shape[1])]
    genes = list(genes)
    if len(genes) != t.shape[1]:
        raise ValueError(
            f"`genes` must name every column. Expected {t.shape[1]} names, received {len(genes)}."
        )
    return pd.DataFrame({m: _FUNCS[m](t, p) for m in metrics}, index=pd.Index(genes, name="gene"))


def summarize(
    per_gene: pd.DataFrame,
    by: str | Sequence[str] | None = "method",
    *,
    metrics: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Median and mean over genes of each metric, with the count of NaN genes.

    Parameters
    ----------
    per_gene
        Long table with one row per gene (and per method, fold, ...) and one column per metric.
    by
        Column(s) to group by (e.g. ``"method"`` or ``["method", "truth"]``); None for one row.
    metrics
        Metric columns to summarise; by default those of :data:`METRICS` present.

    Returns
    -------
    pandas.DataFrame
        One row per group; columns ``<metric>_median``, ``<metric>_mean``, ``<metric>_n_nan``
        and ``n_genes``. Medians and means skip NaN genes; ``_n_nan`` says how many.
    """
    if metrics is None:
        metrics = [m for m in METRICS if m in per_gene.columns]
    missing = [m for m in metrics if m not in per_gene.columns]
    if missing:
        raise ValueError(
            f"`per_gene` lacks metric column(s) {missing}; has {list(per_gene.columns)}."
        )

    def _one(df: pd.DataFrame) -> pd.Series:
        row: dict[str, float] = {"n_genes": float(len(df))}
        for m in metrics:
            v = df[m].to_numpy(dtype=float)
            ok = v[~np.isnan(v)]
            row[f"{m}_median"] = float(np.median(ok)) if ok.size else np.nan
            row[f"{m}_mean"] = float(np.mean(ok)) if ok.size else np.nan
            row[f"{m}_n_nan"] = float(v.size - ok.size)
        return pd.Series(row)

    if by is None:
        out = _one(per_gene).to_frame().T
    else:
        keys = [by] if isinstance(by, str) else list(by)
        groups = per_gene.groupby(keys, sort=False)
        rows = {k: _one(g) for k, g in groups}
        out = pd.DataFrame.from_dict(rows, orient="index")
        out.index = (
            pd.MultiIndex.from_tuples(
                [k if isinstance(k, tuple) else (k,) for k in out.index], names=keys
            )
            if len(keys) > 1
            else pd.Index([k[0] if isinstance(k, tuple) else k for k in out.index], name=keys[0])
        )
    for c in out.columns:
        if c == "n_genes" or c.endswith("_n_nan"):
            out[c] = out[c].astype(int)
    return out


def accuracy_score(
    scores: pd.DataFrame | Mapping[str, Mapping[str, float]],
    *,
    metrics: Sequence[str] = ("pcc", "ssim", "rmse", "js"),
    nan_policy: str = "raise",
) -> pd.Series:
    """Accuracy score (AS) of Li et al. 2022 across methods.

    For each metric the methods are ranked by their (mean over genes) value, the best getting
    rank ``n_methods`` (higher is better for PCC and SSIM, lower for RMSE and JS; ties share
    their average rank); ranks are divided by the number of methods and averaged over the
    metrics. The best possible AS is 1.

    Parameters
    ----------
    scores
        Methods x metrics: a DataFrame indexed by method with one column per metric (the mean
        over genes), or a mapping ``{method: {metric: value}}``. A per-gene long table (with a
        ``method`` column) is also accepted and averaged over genes first.
    metrics
        Metrics that enter the score.
    nan_policy
        ``"raise"``: a NaN value (e.g. the mean PCC of a constant predictor) is an error;
        ``"worst"``: NaN ranks below every number (tied with other NaN).

    Returns
    -------
    pandas.Series
        AS per method, sorted from best to worst.
    """
    if isinstance(scores, Mapping):
        df = pd.DataFrame.from_dict(dict(scores), orient="index")
    else:
        df = scores
        if "method" in df.columns:
            df = df.groupby("method", sort=False)[list(metrics)].mean()
    if nan_policy not in ("raise", "worst"):
        raise ValueError(f"`nan_policy` must be 'raise' or 'worst'; received {nan_policy!r}.")
    missing = [m for m in metrics if m not in df.columns]
    if missing:
        raise ValueError(f"`scores` lacks metric column(s) {missing}; has {list(df.columns)}.")
    n = len(df)
    if n == 0:
        raise ValueError("`scores` must hold at least one method; received none.")
    ranks = []
    for m in metrics:
        v = df[m].to_numpy(dtype=float)
        if np.isnan(v).any() and nan_policy == "worst":
            key = np.where(np.isnan(v), -np.inf, v if HIGHER_IS_BETTER[m] else -v)
            ranks.append(rankdata(key, method="average") / n)
            continue
        if np.isnan(v).any():
            raise ValueError(
                f"`scores[{m!r}]` holds NaN for {list(df.index[np.isnan(v)])}; "
                "AS needs a value for every method."
            )
        key = v if HIGHER_IS_BETTER[m] else -v
        ranks.append(rankdata(key, method="average") / n)
    as_ = pd.Series(np.mean(ranks, axis=0), index=df.index, name="AS")
    return as_.sort_values(ascending=False)
