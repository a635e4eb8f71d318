"""The stacked combination: weights over every base prediction, learnt on the ST's own genes.

A *column* is one base prediction of the target genes: a predictor (`spalstf.prior`, or the
network), read from one *view* of the ST's known genes (``raw``; ``expression``: mixed with
their expression neighbours'; ``spatial``: mixed with their spatial neighbours' too) and read
out as the expression or as the value at the cell's depth (`spalstf.preprocess.
expected_at_depth`). Columns are named ``predictor|view|readout``.

The self-check (`spalstf.combine.selfcheck`) hides groups of the ST's known genes, predicts them
with every column, and learns the weights here: non-negative least squares of the hidden genes'
measured values on the columns' predictions, both z-scored per gene over the cells (so every
gene counts alike and only the shape of a prediction matters, as for a correlation). The
combination of a target gene is then the weighted sum of its columns' z-scores, put back on
the columns' own scale (their weighted mean level and spread). On the five pairs of
../shared/data and the simulated data it beat, in every set, the single column chosen by the
same inner folds, the plain mean of the columns and the fixed blend (5-fold median PCC,
benchmarks/results/stack.md).

The uncertainty is a conformal interval (Vovk et al. 2005; normalised, as Lei et al. 2018):
the scale of a value is the spread of the weighted columns around their combination (where the
base predictions disagree, the value is less certain) plus half its median; the interval's
half-width is the `level` quantile of |measured - combined| / scale over the hidden genes,
times the scale. It covers what the ST would measure (log1p(count / known-gene total x
scale_factor)), measurement noise included.

With counts input the interval of each value is the count model's instead
(`spalstf.combine.intervals`, `Stack.counts`): a negative binomial around the count the
combination implies at the cell's known-gene total, calibrated on the same hidden genes'
counts; it can be [0, 0] where a count is almost surely 0 and grows with the cell's depth. The
normalised interval above stays for log-normalised input (no counts, no depth).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import nnls

from spalstf.combine import intervals
from spalstf.combine.intervals import CountInterval

#: The views of the ST's known genes a column may read (see the module's docstring).
VIEWS = ("raw", "expression", "spatial")
#: How a column's values are read out (`Config.output`).
READOUTS = ("expression", "at_depth")
#: Scale offset of the interval, in medians of the columns' spread. Coverage of a 90% interval
#: on the genes held out of the fit (benchmarks/results/stack.md): 0.915-0.950 over the six
#: sets with 0.5, lowest single fold 0.847; the spread alone, which leaving data sets out
#: chooses on coverage alone, 0.896-0.928 but with folds down to 0.790 and intervals 1.8x as
#: wide on osmFISH. The offset also keeps the interval open where the columns agree.
SPREAD_OFFSET = 0.5


def column(predictor: str, view: str, readout: str) -> str:
    """The name of a column."""
    return f"{predictor}|{view}|{readout}"


def parse(name: str) -> tuple[str, str, str]:
    """(predictor, view, readout) of a column's name."""
    parts = tuple(name.split("|"))
    if len(parts) != 3:
        raise ValueError(f"a stack column is named 'predictor|view|readout'; received {name!r}")
    return parts  # type: ignore[return-value]


def _zscore(values: np.ndarray) -> np.ndarray:
    centred = values - values.mean(axis=0)
    sd = centred.std(axis=0)
    return centred / np.where(sd > 0, sd, 1.0)


#: Values (cells x genes x columns) `learn_weights` holds at once.
BLOCK_ELEMENTS = 2**22
#: Columns whose learnt share of the weight is below this are left out and the others refit
#: without them. Each column is a whole base prediction of every cell (a search of the
#: reference, a readout at the depth); one of weight 0.2% took 12% of the time of a 10^6-cell
#: imputation (benchmarks/results/scale_default.md) for a change of its combined z-scores of
#: the order of its weight. A cost rule, chosen before any accuracy was measured; the
#: accuracy with it is in benchmarks/results/accuracy_pruned.md (and _spots_pruned.md).
MIN_WEIGHT = 0.01


def learn_weights(predictions: Mapping[str, np.ndarray], truth: np.ndarray) -> dict[str, float]:
    """Non-negative weights (summing to 1) of the columns `predictions` (each cells x genes,
    like `truth`), by least squares of the per-gene z-scored truth on the per-gene z-scored
    columns. Genes whose truth is constant are left out. When no column earns a weight, they
    share it equally.

    Solved on the normal equations (a columns x columns Gram matrix, accumulated over blocks of
    genes, so no whole cells x genes x columns array is held): with G = R'R (Cholesky), the
    problem is min ||R w - R'^-1 A'b|| over w >= 0, a small `scipy.optimize.nnls`. Columns of
    a share below `MIN_WEIGHT` are then left out one at a time, the lightest first, and the
    rest refit, until every column kept has at least that share.
    """
    names = list(predictions)
    truth = np.asarray(truth, np.float64)
    keep = truth.std(axis=0) > 0
    if not names:
        raise ValueError("learn_weights needs at least one column")
    if not keep.any():
        return {n: 1.0 / len(names) for n in names}
    truth = truth[:, keep]
    gram = np.zeros((len(names), len(names)))
    cross = np.zeros(len(names))
    # blocks of genes (the z-scores are per gene), so memory stays bounded by the block
    step = max(1, BLOCK_ELEMENTS // max(truth.shape[0] * len(names), 1))
    for start in range(0, truth.shape[1], step):
        genes = np.flatnonzero(keep)[start:start + step]
        target = _zscore(truth[:, start:start + step]).ravel()
        design = np.stack([_zscore(np.asarray(predictions[n][:, genes], np.float64)).ravel()
                           for n in names], axis=1)
        gram += design.T @ design
        cross += design.T @ target
    # a ridge of 1e-9 of the trace keeps the factorisation defined for collinear columns
    # (identical predictions) without moving the solution measurably
    jitter = 1e-9 * max(np.trace(gram), 1.0)
    weights = _nnls_on_normal_equations(gram, cross, jitter)
    if not weights.sum() > 0:
        return {n: 1.0 / len(names) for n in names}
    kept, share = np.arange(len(names)), weights / weights.sum()
    while True:
        minor = np.flatnonzero((share > 0) & (share < MIN_WEIGHT))
        if not len(minor):
            break
        # the lightest column out, the rest refit without it (its share may pass to others)
        fewer = np.delete(kept, minor[np.argmin(share[minor])])
        weights = _nnls_on_normal_equations(gram[np.ix_(fewer, fewer)], cross[fewer], jitter)
        if not weights.sum() > 0:  # cannot happen while a heavier column is kept; be safe
            break
        kept, share = fewer, weights / weights.sum()
    out = dict.fromkeys(names, 0.0)
    out.update({names[i]: float(w) for i, w in zip(kept, share, strict=True)})
    return out


def _nnls_on_normal_equations(gram: np.ndarray, cross: np.ndarray, jitter: float
                              ) -> np.ndarray:
    """min ||A w - b|| over w >= 0 from G = A'A (+ jitter I) and A'b: with G = R'R, the
    problem is min ||R w - R'^-1 A'b||."""
    upper = np.linalg.cholesky(gram + jitter * np.eye(len(gram))).T
    weights, _ = nnls(upper, np.linalg.solve(upper.T, cross))
    return weights


@dataclass
class Statistics:
    """Per column and gene, the mean and standard deviation of the predictions over the ST's
    cells, and the standard deviation of the weighted sum of z-scores (to rescale it)."""

    mean: dict[str, np.ndarray]
    sd: dict[str, np.ndarray]
    z_sd: np.ndarray


@dataclass
class Stack:
    """Column weights and the calibration of the interval.

    Attributes
    ----------
    weights
        Column name -> weight (non-negative, summing to 1; columns of weight 0 are left out).
    level
        Nominal coverage of the interval (e.g. 0.9).
    quantile
        The calibrated multiplier of the scale (the conformal quantile); NaN: no interval.
    offset
        What is added to the columns' spread to make the scale (SPREAD_OFFSET x its median
        over the self-check's values).
    """

    weights: dict[str, float]
    level: float = 0.9
    quantile: float = float("nan")
    offset: float = 0.0
    #: how many hidden values calibrated the interval
    n_calibration: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    #: the per-value interval of the count model (`spalstf.combine.intervals`), learnt where the
    #: self-check had counts; None: the normalised conformal interval above
    counts: CountInterval | None = None
    #: models saved before the count model was kept always: the mean interval score of each
    #: interval on the hidden genes (cross-fitted) by which their self-check chose
    #: ({"normalised": ..., "counts": ...}; `counts` None where the normalised one won); read
    #: and saved again as it was, never computed now (benchmarks/results/uncertainty.md)
    scores: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.weights = {str(k): float(v) for k, v in self.weights.items() if v > 0}
        if not self.weights:
            raise ValueError("a Stack needs at least one column of positive weight")
        for name in self.weights:
            parse(name)

    @property
    def columns(self) -> list[str]:
        """The columns of positive weight, heaviest first."""
        return sorted(self.weights, key=lambda n: -self.weights[n])

    def statistics(self, predictions: Mapping[str, np.ndarray]) -> Statistics:
        """The statistics of `predictions` (column -> cells x genes) over their cells."""
        mean = {n: predictions[n].mean(axis=0, dtype=np.float64) for n in self.columns}
        sd = {n: predictions[n].std(axis=0, dtype=np.float64) for n in self.columns}
        z = self._z(predictions, mean, sd)
        return Statistics(mean, sd, z.std(axis=0))

    def _z(self, predictions, mean, sd) -> np.ndarray:
        out = None
        for n in self.columns:
            term = self.weights[n] * (predictions[n] - mean[n]) / np.where(sd[n] > 0, sd[n], 1.0)
            out = term if out is None else out + term
        return out

    def combine(self, predictions: Mapping[str, np.ndarray], stats: Statistics) -> np.ndarray:
        """The combined values (cells x genes, >= 0) of some cells, with `stats` of the ST."""
        z = self._z(predictions, stats.mean, stats.sd)
        level = sum(self.weights[n] * stats.mean[n] for n in self.columns)
        scale = sum(self.weights[n] * stats.sd[n] for n in self.columns)
        values = level + scale * z / np.where(stats.z_sd > 0, stats.z_sd, 1.0)
        return np.clip(values, 0.0, None).astype(np.float32)

    def spread(self, predictions: Mapping[str, np.ndarray]) -> np.ndarray:
        """The weighted standard deviation of the columns around their weighted mean."""
        mean = sum(self.weights[n] * predictions[n] for n in self.columns)
        var = sum(self.weights[n] * (predictions[n] - mean) ** 2 for n in self.columns)
        return np.sqrt(var).astype(np.float32)

    def calibrate(self, truth: np.ndarray, combined: np.ndarray, spread: np.ndarray, *,
                  level: float) -> None:
        """Learn the interval from values whose measurement is known (the self-check's hidden
        genes): the conformal quantile of |truth - combined| / (spread + offset), with the
        finite-sample correction ceil((n + 1) level) / n."""
        if not 0 < level < 1:
            raise ValueError(f"`level` must be in (0, 1); received {level!r}")
        ok = np.isfinite(truth) & np.isfinite(combined) & np.isfinite(spread)
        self.level = float(level)
        self.n_calibration = int(ok.sum())
        if not ok.any():
            self.quantile, self.offset = float("nan"), 0.0
            return
        self.offset = float(SPREAD_OFFSET * np.median(spread[ok]))
        scores = np.abs(truth[ok] - combined[ok]) / (spread[ok] + self.offset + 1e-6)
        rank = min(1.0, math.ceil((len(scores) + 1) * level) / len(scores))
        self.quantile = float(np.quantile(scores, rank, method="higher"))

    def calibrate_counts(self, counts: np.ndarray, depth: np.ndarray, combined: np.ndarray, *,
                         spread: np.ndarray, level: float, scale_factor: float) -> None:
        """Learn the count model of the interval (`spalstf.combine.intervals.fit`) from the hidden
        values' counts and their cells' known-gene totals `depth` (cells x genes, as the
        prediction saw them); `counts` None where it cannot be learnt."""
        self.counts = intervals.fit(counts, depth, combined, spread, level=level,
                                    scale_factor=scale_factor)

    def interval(self, combined: np.ndarray, spread: np.ndarray,
                 depth: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """(lower, upper) of each value, or None when the interval was not calibrated.

        With the count model (`counts`) and the cells' known-gene totals `depth` (cells x 1;
        counts input), the count model's interval; else the normalised conformal one."""
        if self.counts is not None and depth is not None:
            return self.counts.interval(combined, spread, depth)
        if not np.isfinite(self.quantile):
            return None
        half = self.quantile * (spread + self.offset + 1e-6)
        return (np.clip(combined - half, 0.0, None).astype(np.float32),
                (combined + half).astype(np.float32))

    def to_dict(self) -> dict[str, Any]:
        out = {"weights": dict(self.weights), "level": self.level, "quantile": self.quantile,
               "offset": self.offset, "n_calibration": self.n_calibration}
        if self.counts is not None:
            out["counts"] = self.counts.to_dict()
        if self.scores:
            out["interval_scores"] = {k: float(v) for k, v in self.scores.items()}
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Stack:
        """The stack saved as `to_dict` (a model's model.json): a ValueError naming the first
        column or value that a saved stack cannot hold, rather than one that a model would
        read silently (a NaN weight dropped, an infinite one making every value NaN)."""
        weights = values["weights"]
        if not isinstance(weights, Mapping):
            raise ValueError(f"'weights' must map column names to weights; received "
                             f"{type(weights).__name__}")
        for name, weight in weights.items():
            _, view, readout = parse(name)
            if view not in VIEWS or readout not in READOUTS:
                raise ValueError(f"column {name!r} must read a view of {VIEWS} and a readout of "
                                 f"{READOUTS}")
            if (isinstance(weight, bool) or not isinstance(weight, int | float)
                    or not math.isfinite(weight) or weight < 0):
                raise ValueError(f"the weight of column {name!r} must be a finite number >= 0; "
                                 f"received {weight!r}")
        level = values.get("level", 0.9)
        if isinstance(level, bool) or not isinstance(level, int | float) or not 0 < level < 1:
            raise ValueError(f"'level' must be a number in (0, 1); received {level!r}")
        counts = values.get("counts")  # absent in models saved before the count interval
        if counts is not None and not isinstance(counts, Mapping):
            raise ValueError(f"'counts' must be the count interval's fields; received "
                             f"{type(counts).__name__}")
        return cls(weights=dict(values["weights"]), level=float(values.get("level", 0.9)),
                   quantile=float(values.get("quantile", float("nan"))),
                   offset=float(values.get("offset", 0.0)),
                   n_calibration=int(values.get("n_calibration", 0)),
                   counts=None if counts is None else CountInterval.from_dict(counts),
                   scores={str(k): float(v) for k, v in
                           (values.get("interval_scores") or {}).items()})


def columns_of(predictors: Sequence[str], views: Sequence[str],
               readouts: Sequence[str]) -> list[str]:
    """Every column of the predictors x views x readouts, in that order."""
    return [column(p, v, r) for p in predictors for v in views for r in readouts]
