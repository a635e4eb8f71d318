"""From counts to the model's space and back, with no leakage of held-out genes.

Both data sets go through the same procedure: each cell is normalised by its total over the
KNOWN genes only (the genes both data sets share and that are not being predicted), scaled to
`scale_factor` and log1p-transformed. Target genes of the reference are normalised with the same
known-gene total, so imputations come back as log1p(count / known-gene total * scale_factor).
The model then works on per-gene standardised values (z-scores with the reference's mean and
standard deviation); `Standardizer.inverse` maps predictions back and clips them at 0.
"""

from __future__ import annotations

import numpy as np


def log_normalize(known: np.ndarray, other: np.ndarray | None = None, *,
                  scale_factor: float = 1e4, log_normalized: bool = False):
    """Normalise each cell by its total over `known`, then log1p.

    `other` (for example the reference's target genes) is scaled by the same per-cell factor.
    Cells whose known genes are all zero get zeros. With `log_normalized=True` the values are
    taken as they are. Returns (known, other) as float32 arrays (`other` may be None).
    """
    if log_normalized:
        return (known.astype(np.float32),
                None if other is None else other.astype(np.float32))
    total = known.sum(axis=1, keepdims=True)
    factor = np.divide(scale_factor, total, out=np.zeros_like(total, dtype=np.float64),
                       where=total > 0)
    known_out = np.log1p(known * factor).astype(np.float32)
    other_out = None if other is None else np.log1p(other * factor).astype(np.float32)
    return known_out, other_out


def depth_blend(expression: np.ndarray, at_depth: np.ndarray, weight: float) -> np.ndarray:
    """(1 - weight) x the expression + weight x the value at the cell's depth
    (`Config.depth_weight`). Linear in the two, so a blend of the outputs at weights 0 and 1
    equals the output at that weight (the self-check relies on it)."""
    if weight == 1:
        return at_depth
    return (1 - weight) * expression + weight * at_depth


def counts_at_depth(values: np.ndarray, depth: np.ndarray, *,
                    scale_factor: float = 1e4) -> np.ndarray:
    """Log-normalised `values` (cells x genes) put back on the count scale at each cell's own
    `depth` (its total over the known genes): ``expm1(values) x depth / scale_factor``, float64,
    a new array. The count the value stands for (the output's ``layers["counts"]``, the scale on
    which Li et al. 2022 score), not the mean of a count distribution; an overflow is inf."""
    d = np.asarray(depth, dtype=np.float64).reshape(-1, 1)
    with np.errstate(over="ignore"):
        return np.expm1(np.asarray(values, dtype=np.float64)) * d / scale_factor


def expected_at_depth(values: np.ndarray, depth: np.ndarray, *,
                      scale_factor: float = 1e4) -> np.ndarray:
    """What the ST would measure at each cell's depth, zeros included (``output="at_depth"``).

    `values` (..., cells, genes) are log1p(proportion x scale_factor), the proportion taken
    of the cell's known-gene total; `depth` (cells,) is that total in counts. Returns
    E[log1p(K / depth x scale_factor)] for K ~ Poisson(depth x proportion): the log-normalised
    value a cell of this depth shows on average. Below a few counts it is far below the
    expression itself (most such cells measure 0), so it varies with the depth as measured
    values do; above, it approaches the expression. A cell of depth 0 measures 0.
    Exact for means under 40 counts (summed over the counts that carry all but a negligible
    tail of the probability); above, the second-order delta method (error below 1e-3).
    """
    values = np.clip(np.asarray(values, np.float32), 0, None)
    depth = np.asarray(depth, np.float64)
    per_count = (scale_factor / np.where(depth > 0, depth, 1.0))[:, None].astype(np.float32)
    with np.errstate(over="ignore"):  # an overflow to inf is a mean above every band: fine
        lam = np.broadcast_to(np.expm1(values) / per_count, values.shape)  # mean count
    c = np.broadcast_to(per_count, values.shape)
    # Many counts: log1p of the mean, less half the variance times the curvature,
    # log1p(m) - c m / (2 (1 + m)^2) with m = lam c = expm1(values), written in exp(-values):
    # m itself overflows float32 above values of 88 (which a predictor extrapolating from a
    # reference of a few cells gives), and inf / inf would be NaN.
    decay = np.exp(-values)
    out = values + c * (0.5 * np.expm1(-values) * decay)
    done = np.zeros(values.shape, dtype=bool)
    cell = np.arange(len(per_count))[:, None]  # each entry's cell (the axis before the genes)
    # Fewer counts: the exact sum, in bands of the mean so that small means (most entries of
    # sparse data) sum few terms; each band's last count lies > 9 sd above its largest mean.
    for upper, last in _POISSON_BANDS:
        band = ~done & (lam < upper)
        if not band.any():
            continue
        done |= band
        lam_b = lam[band]
        # log1p(k c) depends on the cell alone: computed per cell and count, then gathered
        # (the same float32 values as computed per entry, at a fraction of the log1p calls)
        cell_b = np.broadcast_to(cell, values.shape)[band]
        pmf = np.exp(-lam_b)
        acc = np.zeros_like(lam_b)
        for k in range(1, last + 1):  # P(K = k) by the recurrence P(k) = P(k - 1) lam / k
            pmf = pmf * lam_b / k
            acc += pmf * np.log1p(k * per_count[:, 0])[cell_b]
        out[band] = acc
    out[..., depth <= 0, :] = 0.0
    return out.astype(np.float32, copy=False)


#: (mean counts below, last count summed) of `expected_at_depth`'s exact bands.
_POISSON_BANDS = ((0.5, 10), (4.0, 25), (15.0, 55), (40.0, 110))

#: `expected_count_at_depth`'s table: the means (counts) at which `expected_at_depth` is
#: computed for each depth, log-spaced over its exact bands; below the first, the measurement
#: is linear in the mean, above the last, the delta method is inverted directly.
_MEAN_GRID = np.geomspace(1e-4, _POISSON_BANDS[-1][0], 129)
_LOG_MEAN_GRID = np.log(_MEAN_GRID)


def expected_count_at_depth(values: np.ndarray, depth: np.ndarray, *,
                            scale_factor: float = 1e4) -> np.ndarray:
    """The expected count at each cell's depth of a prediction of what the ST measures: the
    inverse of :func:`expected_at_depth`.

    `values` (cells, genes) predict the log-normalised value the ST measures at each cell's
    `depth` (its known-gene total), zeros included, as the learnt combination does (it is
    fitted to the measured values). Returns, per entry, the Poisson mean count whose expected
    measurement is that value: ``lam`` with ``expected_at_depth(log1p(lam x scale_factor /
    depth), depth) = values``, float32. Where depth leaves few counts, most cells measure 0, so
    a small predicted value stands for a larger mean than ``expm1(values) x depth /
    scale_factor`` (:func:`counts_at_depth`); with many counts the two agree. A cell of depth 0
    gets 0.

    Means below 40 counts are read from a table of `expected_at_depth` per distinct depth
    (log-linear between 129 means from 1e-4 to 40; relative error about 1e-3); below 1e-4 the
    measurement is linear in the mean; above 40, the delta method of `expected_at_depth` is
    inverted by a fixed-point iteration.
    """
    x = np.asarray(values)
    depth = np.asarray(depth, np.float64)
    out = np.zeros(x.shape, np.float32)
    # in blocks of cells: the table's rows gathered per cell are 129 values each
    for start in range(0, len(depth), _COUNT_BLOCK):
        cells = slice(start, start + _COUNT_BLOCK)
        out[cells] = _expected_count_block(x[cells], depth[cells], scale_factor)
    return out


#: Cells per block of `expected_count_at_depth`.
_COUNT_BLOCK = 8192


def _expected_count_block(values: np.ndarray, depth: np.ndarray,
                          scale_factor: float) -> np.ndarray:
    import torch  # its searchsorted takes a sorted row per cell, numpy's one row for all

    x = np.clip(np.asarray(values, np.float32), 0, None)
    out = np.zeros(x.shape, np.float32)
    live = np.flatnonzero(depth > 0)
    if not len(live) or not x.size:
        return out
    depths, row = np.unique(depth[live], return_inverse=True)
    per_count = (scale_factor / depths).astype(np.float32)  # c: the value of one count
    table = expected_at_depth(np.log1p(_MEAN_GRID[None, :] * per_count[:, None]), depths,
                              scale_factor=scale_factor)
    table = np.maximum.accumulate(table, axis=1)  # float32 rounding must not unsort a row
    xl = x[live]
    where = torch.searchsorted(torch.from_numpy(table[row]), torch.from_numpy(xl)).numpy()
    entry_row = np.broadcast_to(row[:, None], xl.shape)
    mean = np.empty(xl.shape, np.float32)
    n = len(_MEAN_GRID)
    inside = (where > 0) & (where < n)
    i, r = where[inside], entry_row[inside]
    below, above = table[r, i - 1], table[r, i]
    step = (xl[inside] - below) / np.maximum(above - below, np.float32(1e-12))
    mean[inside] = np.exp(_LOG_MEAN_GRID[i - 1]
                          + step * (_LOG_MEAN_GRID[i] - _LOG_MEAN_GRID[i - 1]))
    tiny = where == 0  # E log1p(K c) = mean x log1p(c) + O(mean^2)
    mean[tiny] = xl[tiny] / np.log1p(per_count[entry_row[tiny]])
    many = where == n
    if many.any():
        # expected_at_depth's delta method, v - c (1 - e^-v) e^-v / 2 = x, solved for v =
        # log1p(mean c) by iterating v <- x + c (1 - e^-v) e^-v / 2: above 40 counts e^-v is
        # below 1 / (40 c), so each step shrinks the error by 80 times or more
        target, c = xl[many], per_count[entry_row[many]]
        v = target.copy()
        for _ in range(4):
            v = target - 0.5 * c * np.expm1(-v) * np.exp(-v)
        with np.errstate(over="ignore"):
            mean[many] = np.expm1(v) / c
    out[live] = mean
    return out


class Standardizer:
    """Per-gene z-scores; genes without variance get a unit scale."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, low: np.ndarray | None = None,
                 high: np.ndarray | None = None) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        #: Range of the fitted data in standardised units (bounds for sampling).
        self.low = None if low is None else np.asarray(low, dtype=np.float32)
        self.high = None if high is None else np.asarray(high, dtype=np.float32)

    @classmethod
    def fit(cls, values: np.ndarray) -> Standardizer:
        mean = values.mean(axis=0, dtype=np.float64)
        std = values.std(axis=0, dtype=np.float64)
        std = np.where(std > 1e-6, std, 1.0)
        return cls(mean, std, (values.min(axis=0) - mean) / std, (values.max(axis=0) - mean) / std)

    @classmethod
    def fit_blocks(cls, blocks) -> Standardizer:
        """`fit` from a re-iterable source of row blocks, without holding them all.

        `blocks()` yields (rows, values) pairs (e.g. `spalstf.data.CellRows.blocks`). One pass:
        each block's mean and squared deviations (in float64) are merged into the running
        ones (Chan et al.'s pairwise update), which keeps the variance as accurate as `fit`'s
        two passes. One pass matters where a block is costly to produce (read from disk and
        smoothed over neighbours). Agrees with `fit` on the concatenated blocks up to float64
        rounding.
        """
        n, mean, squares, low, high = 0, None, None, None, None
        for _, values in blocks():
            m = values.shape[0]
            if m == 0:
                continue
            block_mean = values.mean(axis=0, dtype=np.float64)
            block_squares = ((values - block_mean) ** 2).sum(axis=0, dtype=np.float64)
            bmin, bmax = values.min(axis=0), values.max(axis=0)
            if mean is None:
                n, mean, squares, low, high = m, block_mean, block_squares, bmin, bmax
                continue
            delta = block_mean - mean
            total = n + m
            mean = mean + delta * (m / total)
            squares = squares + block_squares + delta ** 2 * (n * m / total)
            low, high = np.minimum(low, bmin), np.maximum(high, bmax)
            n = total
        std = np.sqrt(squares / n)
        std = np.where(std > 1e-6, std, 1.0)
        return cls(mean, std, (low - mean) / std, (high - mean) / std)

    def transform(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.mean) / self.std).astype(np.float32)

    def inverse(self, values: np.ndarray, clip: bool = True) -> np.ndarray:
        out = values * self.std + self.mean
        return np.clip(out, 0, None) if clip else out

    def state(self) -> dict[str, np.ndarray]:
        out = {"mean": self.mean, "std": self.std}
        if self.low is not None:
            out.update(low=self.low, high=self.high)
        return out

    @classmethod
    def from_state(cls, state: dict) -> Standardizer:
        return cls(state["mean"], state["std"], state.get("low"), state.get("high"))


def leading_axes(rows: np.ndarray, n: int, *, iterations: int = 4,
                 oversampling: int = 10) -> np.ndarray:
    """(n, columns) orthonormal rows spanning the leading right singular subspace of `rows`
    (the principal axes of rows centred on zero), largest first, by a randomised subspace
    iteration (Halko et al. 2011: `n` + `oversampling` seeded random directions, `iterations`
    power steps, then the exact SVD within them): float32 products of the rows with a thin
    matrix instead of a (columns x columns) covariance and its eigen-decomposition, about 30 s
    of CPU each at 5,000 columns. The trailing axes are the least precise, but their callers
    read the subspace only (distances in it, SpaGE's principal vectors between two of them).
    Seeded: the same axes every time. Signs are the SVD's (callers fix them)."""
    size = min(rows.shape)
    if not 0 < n <= size:
        raise ValueError(f"leading_axes: n must be between 1 and the rows' smaller dimension "
                         f"({size}); got {n}")
    x = np.asarray(rows, np.float32)
    sketch = np.random.default_rng(0).standard_normal((x.shape[1], min(n + oversampling, size)))
    basis = np.linalg.qr(sketch.astype(np.float32))[0]
    for _ in range(iterations):  # each step sharpens the leading directions against the rest
        left = np.linalg.qr(x @ basis)[0]
        basis = np.linalg.qr(x.T @ left)[0]
    _, _, vt = np.linalg.svd((x @ basis).astype(np.float64), full_matrices=False)
    return (vt[:n] @ basis.T.astype(np.float64))
