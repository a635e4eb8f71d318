"""Per-value intervals from a count model, calibrated on the self-check's hidden known genes.

What an interval covers is what the ST would measure: y = log1p(X / D x s), X the gene's count
in the cell, D the cell's total over the known genes and s the scale factor (1e4). The
combined prediction m (log scale) of a value implies an expected count expm1(m) x D / s. The
count is modelled as negative binomial,

    X ~ NB(mean mu, size theta),   mu = (a x expm1(m) + b) x D / s,

with a, b and theta per stratum of the implied count expm1(m) x D / s (`N_STRATA` quantile
bins over the hidden values; b keeps a count possible where m is 0), each fitted by maximum
likelihood on the hidden known genes' counts. Strata of the implied count rather than of m
follow the shallower depth of the self-check's folds (fewer known genes) to the imputation's:
on held-out genes they covered 0.922-0.925 where strata of m covered 0.937-0.960 (simulated,
osmFISH, STARmap). The interval of a value is [Q(beta), Q(1 - beta)] of that NB, put on the log
scale, with beta chosen by a one-dimensional search so that the hidden values are covered at
the nominal level (split-conformal: the finite-sample level ceil((n + 1) level) / n). So a
value that is almost surely 0 (tiny mu: a gene off in that cell type, or a shallow cell) gets
[0, 0], and one with a large expected count (a deep cell, an abundant gene) a wider one that
follows its depth.

The NB quantiles are read from tables over a grid of log mu (`GRID_STEP`), one per stratum
and level, so an interval costs two table look-ups per value (the exact quantile function
costs about 2 us a value).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, special, stats

#: Strata of the combined prediction m, each with its own mean map (a, b) and dispersion.
N_STRATA = 8
#: Strata of the columns' spread, crossed with those of m. One: with three, the coverage
#: learnt on the hidden known genes held less well on held-out genes (simulated set: 0.867).
N_SPREAD = 1
#: Values (cells x genes) the maximum-likelihood fit reads at most (a seeded subsample).
MAX_FIT_VALUES = 16_000
#: Values the conformal step reads at most (a seeded subsample).
MAX_SCORE_VALUES = 2_000_000
#: The grid of log mu on which the NB quantiles are tabulated.
GRID_STEP = 0.02
LOG_MU_MIN = math.log(1e-4)
LOG_MU_MAX = math.log(1e6)
#: Bounds of the fitted log parameters (a and b in units of the normalised expression).
_LOG_BOUNDS = ((-12.0, 8.0), (-16.0, 4.0), (-6.0, 8.0))


def _grid() -> np.ndarray:
    n = int(round((LOG_MU_MAX - LOG_MU_MIN) / GRID_STEP)) + 1
    return LOG_MU_MIN + GRID_STEP * np.arange(n)


def _nll(params: np.ndarray, x: np.ndarray, base: np.ndarray, depth: np.ndarray
         ) -> tuple[float, np.ndarray]:
    """Mean negative log-likelihood of counts `x` under NB(mu, theta), mu = (a base + b) D,
    and its gradient in (log a, log b, log theta)."""
    a, b, theta = np.exp(params)
    mu = (a * base + b) * depth
    ll = (special.gammaln(x + theta) - special.gammaln(theta) - special.gammaln(x + 1)
          + theta * np.log(theta / (theta + mu)) + x * np.log(mu / (theta + mu) + 1e-300))
    d_mu = x / np.maximum(mu, 1e-300) - (x + theta) / (theta + mu)
    d_theta = (special.digamma(x + theta) - special.digamma(theta)
               + np.log(theta / (theta + mu)) + 1.0 - (theta + x) / (theta + mu))
    grad = np.array([np.mean(d_mu * a * base * depth), np.mean(d_mu * b * depth),
                     theta * np.mean(d_theta)])
    return float(-ll.mean()), -grad


@dataclass
class CountInterval:
    """The calibrated count model of the interval (see the module's docstring).

    Attributes
    ----------
    edges
        Interior edges of the strata of m (a value's stratum: how many edges are <= m).
    a, b, theta
        Per stratum: the mean map mu = (a expm1(m) + b) D / s and the NB size.
    beta
        The calibrated tail probability on each side (the interval is [Q(beta), Q(1-beta)]).
    scale_factor
        s of the normalisation.
    level, n_calibration
        The nominal coverage and how many hidden values calibrated it.
    """

    edges: np.ndarray
    spread_edges: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    beta: float
    scale_factor: float = 1e4
    level: float = 0.9
    n_calibration: int = 0
    _tables: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.edges = np.asarray(self.edges, np.float64).reshape(-1)
        self.spread_edges = np.asarray(self.spread_edges, np.float64).reshape(-1)
        self.a, self.b, self.theta = (np.asarray(v, np.float64).reshape(-1)
                                      for v in (self.a, self.b, self.theta))
        n = (len(self.edges) + 1) * (len(self.spread_edges) + 1)
        if not (len(self.a) == len(self.b) == len(self.theta) == n):
            raise ValueError(f"a count interval needs one a, b and theta per stratum ({n}); "
                             f"received {len(self.a)}, {len(self.b)}, {len(self.theta)}")
        values = np.concatenate([self.edges, self.spread_edges, self.a, self.b, self.theta, [self.beta]])
        if not np.isfinite(values).all() or (self.theta <= 0).any() or (self.a < 0).any() \
                or (self.b < 0).any() or not 0 < self.beta < 0.5:
            raise ValueError("a count interval needs finite edges, a >= 0, b >= 0, theta > 0 "
                             f"and 0 < beta < 0.5; received beta {self.beta!r}")

    # -- the quantiles -------------------------------------------------------------------
    def _table(self, stratum: int, prob: float) -> np.ndarray:
        key = (stratum, float(prob))
        table = self._tables.get(key)
        if table is None:
            theta = self.theta[stratum]
            mu = np.exp(_grid())
            table = stats.nbinom.ppf(prob, theta, theta / (theta + mu))
            table = np.nan_to_num(table, nan=0.0, posinf=np.finfo(np.float32).max)
            self._tables[key] = table
        return table

    def strata(self, combined: np.ndarray, spread: np.ndarray, depth: np.ndarray
               ) -> np.ndarray:
        """The stratum of each value: its bin of the implied count (`implied_count`) crossed
        with its bin of the spread."""
        return (np.searchsorted(self.edges, implied_count(combined, depth, self.scale_factor),
                                side="right") * (len(self.spread_edges) + 1)
                + np.searchsorted(self.spread_edges, spread, side="right"))

    def mean_count(self, combined: np.ndarray, spread: np.ndarray, depth: np.ndarray
                   ) -> np.ndarray:
        """mu of each value (`depth` broadcast against `combined`: cells x 1 or cells x genes)."""
        stratum = self.strata(combined, spread, depth)
        base = np.expm1(np.clip(combined, 0.0, None))
        return (self.a[stratum] * base + self.b[stratum]) * (depth / self.scale_factor)

    def count_quantiles(self, combined: np.ndarray, spread: np.ndarray, depth: np.ndarray,
                        beta: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The NB counts at beta and 1 - beta of each value."""
        beta = self.beta if beta is None else beta
        combined = np.asarray(combined, np.float64)
        spread = np.broadcast_to(np.asarray(spread, np.float64), combined.shape)
        depth = np.broadcast_to(np.asarray(depth, np.float64), combined.shape)
        stratum = self.strata(combined, spread, depth)
        mu = self.mean_count(combined, spread, depth)
        with np.errstate(divide="ignore"):
            index = np.rint((np.log(mu) - LOG_MU_MIN) / GRID_STEP)
        tiny = ~(index >= 0)  # below the grid (or mu 0): the count is 0 at any level < 1
        index = np.clip(np.nan_to_num(index, nan=0.0), 0, len(_grid()) - 1).astype(np.int64)
        low, high = np.zeros_like(mu), np.zeros_like(mu)
        for s in np.unique(stratum):
            rows = stratum == s
            low[rows] = self._table(int(s), beta)[index[rows]]
            high[rows] = self._table(int(s), 1 - beta)[index[rows]]
        low[tiny] = 0.0
        high[tiny] = 0.0
        return low, high

    def interval(self, combined: np.ndarray, spread: np.ndarray, depth: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) of each value on the log scale: log1p(Q x s / D); 0 where D is 0
        (such a cell's values are 0, as `spalstf.preprocess.log_normalize` makes them)."""
        combined = np.asarray(combined, np.float64)
        depth = np.broadcast_to(np.asarray(depth, np.float64), combined.shape)
        low, high = self.count_quantiles(combined, spread, depth)
        factor = np.divide(self.scale_factor, depth, out=np.zeros_like(depth), where=depth > 0)
        # The bounds are values a count can take: a measured value equal to one must count as
        # covered after the float32 round-off (its own and the measurement's), so each bound
        # moves out by one float32 step.
        lower = np.log1p(low * factor).astype(np.float32)
        upper = np.log1p(high * factor).astype(np.float32)
        lower = np.where(lower > 0, np.nextafter(lower, np.float32(0)), lower)
        return lower, np.where(upper > 0, np.nextafter(upper, np.float32(np.inf)), upper)

    # -- saving --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"edges": [float(v) for v in self.edges],
                "spread_edges": [float(v) for v in self.spread_edges], "a": [float(v) for v in self.a],
                "b": [float(v) for v in self.b], "theta": [float(v) for v in self.theta],
                "beta": float(self.beta), "scale_factor": float(self.scale_factor),
                "level": float(self.level), "n_calibration": int(self.n_calibration)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CountInterval:
        try:
            return cls(edges=np.asarray(values["edges"], np.float64),
                       spread_edges=np.asarray(values["spread_edges"], np.float64),
                       a=np.asarray(values["a"], np.float64),
                       b=np.asarray(values["b"], np.float64),
                       theta=np.asarray(values["theta"], np.float64),
                       beta=float(values["beta"]),
                       scale_factor=float(values.get("scale_factor", 1e4)),
                       level=float(values.get("level", 0.9)),
                       n_calibration=int(values.get("n_calibration", 0)))
        except (KeyError, TypeError) as err:
            raise ValueError(f"the stack's count interval cannot be read: {err!r}") from None


def implied_count(combined: np.ndarray, depth: np.ndarray, scale_factor: float) -> np.ndarray:
    """log(expm1(m) x D / s + 1e-3): the log of the count a prediction m implies at depth D
    (what the strata are bins of: the count model's shape depends on the count's size)."""
    return np.log(np.expm1(np.clip(combined, 0.0, None)) * (depth / scale_factor) + 1e-3)


def _fit_stratum(x: np.ndarray, base: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """(a, b, theta) of one stratum by maximum likelihood."""
    mean_rate = max(float(x.sum() / max(depth.sum(), 1e-12)), 1e-7)
    mean_base = float(base.mean())
    a0 = mean_rate / mean_base if mean_base > 0 else 1e-4
    start = np.log([max(0.9 * a0, 1e-5), max(0.1 * mean_rate, 1e-7), 1.0])
    start = np.clip(start, [lo for lo, _ in _LOG_BOUNDS], [hi for _, hi in _LOG_BOUNDS])
    res = optimize.minimize(_nll, start, args=(x, base, depth), method="L-BFGS-B", jac=True,
                            bounds=_LOG_BOUNDS)
    return np.exp(res.x)


def fit(counts: np.ndarray, depth: np.ndarray, combined: np.ndarray, spread: np.ndarray, *,
        level: float, scale_factor: float = 1e4, n_strata: int = N_STRATA,
        n_spread: int = N_SPREAD, max_values: int = MAX_FIT_VALUES,
        seed: int = 0) -> CountInterval | None:
    """The count interval learnt from hidden values: their `counts`, the cells' known-gene
    totals `depth` (as the prediction saw them; broadcast against `counts`), the `combined`
    predictions and the columns' `spread`, all cells x genes. None when there is nothing to
    learn from."""
    if not 0 < level < 1:
        raise ValueError(f"`level` must be in (0, 1); received {level!r}")
    x = np.asarray(counts, np.float64)
    m = np.asarray(combined, np.float64)
    d = np.broadcast_to(np.asarray(depth, np.float64), x.shape)
    r = np.broadcast_to(np.asarray(spread, np.float64), x.shape)
    ok = np.isfinite(x) & np.isfinite(m) & np.isfinite(d) & np.isfinite(r) & (d > 0) & (x >= 0)
    n = int(ok.sum())
    if n < 50 or not (x[ok] > 0).any():
        return None
    x, m, d, r = x[ok], np.clip(m[ok], 0.0, None), d[ok], r[ok]
    edges = np.unique(np.quantile(implied_count(m, d, scale_factor),
                                  np.linspace(0, 1, n_strata + 1)[1:-1]))
    spread_edges = np.unique(np.quantile(r, np.linspace(0, 1, n_spread + 1)[1:-1]))
    n_cells = (len(edges) + 1) * (len(spread_edges) + 1)
    model = CountInterval(edges=edges, spread_edges=spread_edges, a=np.ones(n_cells),
                          b=np.ones(n_cells), theta=np.ones(n_cells), beta=0.05,
                          scale_factor=scale_factor, level=level, n_calibration=n)
    stratum = model.strata(m, r, d)
    rng = np.random.default_rng(seed)
    per = max(max_values // n_cells, 500)
    for s in range(n_cells):
        rows = np.flatnonzero(stratum == s)
        if len(rows) > per:
            rows = rng.choice(rows, per, replace=False)
        if len(rows) and (x[rows] > 0).any():
            model.a[s], model.b[s], model.theta[s] = _fit_stratum(
                x[rows], np.expm1(m[rows]), d[rows] / scale_factor)
        else:
            model.a[s], model.b[s], model.theta[s] = 1e-5, 1e-7, 1.0
    # Conformal: the largest tail beta whose interval covers ceil((n + 1) level) / n of the
    # values. A count X lies in [Q(beta), Q(1 - beta)] exactly when beta <= F(X) and
    # beta < 1 - F(X - 1) (F the NB's distribution function, at the mean on the tables' grid
    # as `count_quantiles` reads it), so each value's largest covering beta is a score and
    # beta their quantile: no search.
    target = min(1.0, math.ceil((n + 1) * level) / n)
    if n > MAX_SCORE_VALUES:  # a seeded subsample's quantile (precise to about 0.001)
        keep = rng.choice(n, MAX_SCORE_VALUES, replace=False)
        x, m, d, r = x[keep], m[keep], d[keep], r[keep]
        n = MAX_SCORE_VALUES
    stratum = model.strata(m, r, d)
    with np.errstate(divide="ignore"):
        index = np.rint((np.log(model.mean_count(m, r, d)) - LOG_MU_MIN) / GRID_STEP)
    tiny = ~(index >= 0)
    mu = np.exp(LOG_MU_MIN + GRID_STEP * np.clip(np.nan_to_num(index, nan=0.0), 0,
                                                 len(_grid()) - 1))
    theta = model.theta[stratum]
    p = theta / (theta + mu)
    score = np.minimum(stats.nbinom.cdf(x, theta, p), 1.0 - stats.nbinom.cdf(x - 1, theta, p))
    score[tiny] = np.where(x[tiny] == 0, 0.5, 0.0)
    k = int(math.ceil(target * n))
    beta = float(np.sort(score)[::-1][min(k, n) - 1]) * (1 - 1e-9)
    beta = min(max(beta, 1e-9), 0.4999)
    model._tables.clear()
    model.beta = float(beta)
    return model


def interval_score(truth: np.ndarray, lower: np.ndarray, upper: np.ndarray, level: float
                   ) -> float:
    """Mean interval score (Gneiting & Raftery 2007): width + 2 / (1 - level) x each miss."""
    penalty = 2.0 / (1.0 - level)
    return float(np.mean((upper - lower) + penalty * np.clip(lower - truth, 0, None)
                         + penalty * np.clip(truth - upper, 0, None)))
