"""Spots from cells: :func:`pool_spots` sums the cells of a single-cell-resolution ST into square
spots on a grid laid over their coordinates.

Spot platforms (Visium, the older 100 um arrays, Slide-seq beads at coarse bins) measure a mixture
of cells per spot. Pooling an imaging ST whose cells are known turns it into a spot set with a
known truth at any spot size: the spot counts are exact sums of measured cells, so a method
scored on them is scored on what a spot platform of that size would have read (without its
capture losses), and the per-cell truth stays available through the cell-to-spot assignment.
"""

from __future__ import annotations

import copy
import logging
import numbers
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger(__name__)

#: Non-numeric obs columns with at most this many distinct values (cell types, regions) are
#: summarised per spot as proportions; above it they are names or ids, which are dropped.
MAX_CATEGORIES = 100


def _count_values(x: Any) -> np.ndarray:
    """The stored values of `x` (the nonzeros of a sparse matrix), for the counts check."""
    return np.asarray(x.data if sp.issparse(x) else x)


def _check_counts(st: ad.AnnData) -> None:
    values = _count_values(st.X)
    if not np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_:
        raise ValueError(f"`st`: expected raw counts in X (non-negative integers); received "
                         f"values of dtype {values.dtype}")
    if values.size == 0:
        return
    if not np.isfinite(values).all():
        raise ValueError("`st`: expected raw counts in X (non-negative integers); found NaN "
                         "or Inf")
    low = values.min()
    if low < 0:
        raise ValueError(f"`st`: expected raw counts in X (non-negative integers); found a "
                         f"negative value ({low:g}); pool the counts, not normalised values")
    fractional = values != np.round(values)
    if fractional.any():
        raise ValueError(f"`st`: expected raw counts in X (non-negative integers); found "
                         f"{int(fractional.sum())} non-integer values, e.g. "
                         f"{values[fractional].ravel()[0]:g} (log-normalised data?); pool the "
                         "raw counts and normalise the spots afterwards")


def _grid(xy: np.ndarray, side: float, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct grid squares holding a cell, each cell's index among them) for squares of
    `side` whose origin is shifted by `offset` (a fraction of `side` per axis)."""
    keys = np.floor((xy - xy.min(axis=0)) / side + offset).astype(np.int64)
    return np.unique(keys, axis=0, return_inverse=True)


def _side_for(xy: np.ndarray, cells_per_spot: float, offset: np.ndarray) -> float:
    """The side of the squares whose mean number of cells per non-empty square is nearest to
    `cells_per_spot`: a bisection on the log of the side (the mean grows with the side, apart
    from the steps of the grid), keeping the best side seen."""
    n = len(xy)
    extent = float(np.ptp(xy, axis=0).max())
    if extent == 0 or cells_per_spot >= n:
        return max(extent, 1.0) * 2.0  # one spot holds everything
    # No side below the smallest gap worth resolving, none above the whole extent.
    lo, hi = np.log(extent / np.sqrt(n) / 100.0), np.log(extent * 2.0)
    best, best_error = float(np.exp(hi)), np.inf
    for _ in range(60):
        mid = (lo + hi) / 2.0
        side = float(np.exp(mid))
        mean = n / len(_grid(xy, side, offset)[0])
        error = abs(np.log(mean / cells_per_spot))
        if error < best_error:
            best, best_error = side, error
        if mean < cells_per_spot:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-6:
            break
    return best


def _proportions(column: pd.Series, spot: np.ndarray, names: pd.Index) -> pd.DataFrame:
    """Spots x values: the share of each spot's cells holding each value of `column`."""
    values = column.astype(str).to_numpy()
    kinds, code = np.unique(values, return_inverse=True)
    counts = np.zeros((len(names), len(kinds)))
    np.add.at(counts, (spot, code), 1.0)
    return pd.DataFrame(counts / counts.sum(axis=1, keepdims=True), index=names,
                        columns=list(kinds))


def pool_spots(st: ad.AnnData, *, cells_per_spot: float = 5, seed: int | None = 0) -> ad.AnnData:
    """Pool the cells of a single-cell-resolution ST into square spots on a grid.

    The grid's squares are laid over the cells' coordinates (the first two dimensions), its
    origin shifted at random by up to one side per axis (from `seed`), and its side chosen so
    that the mean number of cells per non-empty spot is as near `cells_per_spot` as the grid
    allows. Each cell lands in exactly one spot; a spot's counts are the sum of its cells'.

    Parameters
    ----------
    st
        AnnData of raw counts (cells x genes, dense or sparse) with coordinates in
        ``obsm["spatial"]`` or in obs columns (``x``/``y``, ``x_coord``/``y_coord``, ...: those
        :func:`spalstf.spatial.obs_coordinates` finds). Never modified.
    cells_per_spot
        The mean number of cells per spot to aim at (at least 1).
    seed
        Seeds the shift of the grid's origin; None lays the grid from the cells' lowest
        coordinates, unshifted.

    Returns
    -------
    AnnData
        Spots x the same genes (``var`` and ``varm`` kept), counts summed, dense or sparse as
        ``st.X`` was, in its dtype. ``obsm["spatial"]``: each spot's cell centroid (all
        coordinate dimensions). ``obs["n_cells"]``: its number of cells; ``obs["spot_x"]``,
        ``obs["spot_y"]``: its square on the grid. Each non-numeric obs column with at most
        100 distinct values (cell types, regions) becomes ``obsm["<column>_proportions"]``, a
        DataFrame of the share of the spot's cells with each value; every other obs column
        (per-cell measures such as ``n_genes``, cell names), ``layers``, ``obsp`` and ``raw``
        are dropped: they describe cells, not spots. ``uns`` is copied, with
        ``uns["dataset"]`` (when present) suffixed ``_spots<cells_per_spot>``, and
        ``uns["spots"]`` holds the grid: ``side`` (in the coordinates' units),
        ``cells_per_spot`` (asked), ``mean_cells_per_spot`` (reached), ``seed`` (-1 for None) and
        ``cell_spot``, the spot (row) of each cell of `st` in its order.

    Raises
    ------
    ValueError
        `st` without coordinates, without cells, or with values in X that are not counts
        (negative, fractional, NaN); `cells_per_spot` not a number of at least 1.
    TypeError
        `st` not an AnnData.
    """
    from spalstf.spatial import coordinates  # the library's one reading of ST coordinates

    if not isinstance(st, ad.AnnData):
        raise TypeError(f"`st` must be an AnnData (cells x genes, raw counts); received "
                        f"{type(st).__name__}")
    if isinstance(cells_per_spot, bool) or not isinstance(cells_per_spot, numbers.Real) \
            or not np.isfinite(cells_per_spot) or cells_per_spot < 1:
        raise ValueError(f"`cells_per_spot` must be a number of at least 1 (the mean number "
                         f"of cells per spot); received {cells_per_spot!r}")
    if st.n_obs == 0:
        raise ValueError("`st` has no cells; expected a single-cell-resolution ST to pool")
    xy = coordinates(st, None, st.n_obs, list(st.obs_names))
    if xy is None:
        raise ValueError("`st` has no coordinates: expected obsm['spatial'] or obs columns "
                         "such as x/y or x_coord/y_coord; it has obsm keys "
                         f"{sorted(st.obsm.keys())} and obs columns {list(st.obs.columns)}")
    _check_counts(st)

    plane = xy[:, :2]
    one_spot = cells_per_spot >= st.n_obs or np.ptp(plane, axis=0).max() == 0
    # No shift where one spot holds everything: a shifted grid could cut it in two.
    offset = (np.zeros(plane.shape[1]) if seed is None or one_spot
              else np.random.default_rng(seed).uniform(0.0, 1.0, plane.shape[1]))
    side = _side_for(plane, float(cells_per_spot), offset)
    squares, spot = _grid(plane, side, offset)
    spot = spot.ravel()  # numpy 2 keeps the input's shape for axis=0
    n_spots = len(squares)

    # spots x cells: a one for each cell in its spot; its product with X sums the counts.
    member = sp.csr_matrix((np.ones(st.n_obs), (spot, np.arange(st.n_obs))),
                           shape=(n_spots, st.n_obs))
    if sp.issparse(st.X):
        counts = (member @ sp.csr_matrix(st.X, dtype=np.float64)).asformat(st.X.format)
    else:
        counts = np.asarray(member @ np.asarray(st.X, dtype=np.float64))
    counts = counts.astype(st.X.dtype)
    n_cells = np.asarray(member.sum(axis=1)).ravel()
    centroid = np.asarray(member @ xy) / n_cells[:, None]

    names = pd.Index([f"spot_{'_'.join(map(str, key))}" for key in squares])
    obs = pd.DataFrame({"n_cells": n_cells.astype(np.int64),
                        "spot_x": squares[:, 0],
                        "spot_y": squares[:, 1] if squares.shape[1] > 1 else 0}, index=names)
    pooled = ad.AnnData(counts, obs=obs, var=st.var.copy(), uns=copy.deepcopy(dict(st.uns)))
    for key, value in st.varm.items():
        pooled.varm[key] = value.copy()
    pooled.obsm["spatial"] = centroid

    dropped = []
    for column in st.obs.columns:
        values = st.obs[column]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            dropped.append(column)
        elif values.astype(str).nunique() <= MAX_CATEGORIES:
            pooled.obsm[f"{column}_proportions"] = _proportions(values, spot, names)
        else:
            dropped.append(column)
    if dropped:
        logger.info("pool_spots: cell-level obs columns %s dropped", dropped)

    if "dataset" in pooled.uns:
        pooled.uns["dataset"] = f"{pooled.uns['dataset']}_spots{cells_per_spot:g}"
    mean = st.n_obs / n_spots
    pooled.uns["spots"] = {"side": side, "cells_per_spot": float(cells_per_spot),
                           "mean_cells_per_spot": mean, "seed": -1 if seed is None else seed,
                           "cell_spot": spot.astype(np.int64)}
    logger.info("pool_spots: %d cells into %d spots of side %.4g (%.2f cells per spot)",
                st.n_obs, n_spots, side, mean)
    return pooled
