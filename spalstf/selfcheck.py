"""Self-check: how accurate an imputation is likely to be, measured on the user's own data, and
the combination of the base predictions learnt on it.

The ST has no truth for the genes it did not measure, but it has its known genes. The
self-check hides some of them (an inner leave-genes-out, `n_folds` folds over the ST's known
genes), predicts them from the rest with every base prediction of the model (the *columns* of
`spalstf.prior.stack`: each base predictor, read from each view of the ST, read out as the
expression or at the cell's depth), and scores them against their measured values: per-gene
Pearson (PCC) and Spearman (SPCC) correlations, on the log-normalised scale. Target genes are
never read (the ST is only ever read through the known genes of the main run).

From the same hidden genes it learns:

- the weights of the columns (`spalstf.prior.stack.learn_weights`), which the imputation uses
  (`Config.combine="stack"`): a combination chosen on this tissue and platform, not on the
  data sets spalstf was developed on;
- the interval of each value (`spalstf.prior.Stack.calibrate`): conformal, so that its
  coverage holds on genes hidden like these;
- the per-gene confidence (`calibrate`): how each gene's predictability in the reference maps
  to its PCC on this ST.

Hiding half the known genes measures a harder problem than the run's, which has them all, so
the accuracy is carried to the full panel (`extrapolate`) along a curve measured here too:
two cheap predictors hide 1/2, 1/4 and 1/8 of the known genes (`panel_curve`), a saturating
curve through their median PCC is extrapolated to all the known genes (`full_panel`), and
the estimate's standard error and interval come from resampling the genes.

The estimate reported (`median_pcc`) is cross-fitted: each fold's genes are combined with the
weights learnt on the other folds' genes, so it is not flattered by having chosen the weights
on the very genes it scores. It is for genes hidden here (measured ST genes, which panels
choose for being informative); genes the panel never measured may be harder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from spalstf._logging import inner_steps
from spalstf.config import Config

if TYPE_CHECKING:
    from spalstf.data import Expression
    from spalstf.prior.stack import Stack

logger = logging.getLogger(__name__)

#: The self-check runs by default ("auto") when the ST has at least this many known genes.
MIN_GENES = 8
#: The inner fits together get this share of the main fit's training budget (`max_steps`,
#: and `max_time` when one is set).
FIT_BUDGET_SHARE = 0.5
#: Cells scored (a seeded subsample of the ST when it has more): correlations over 2000 cells
#: are precise to about +-0.02, and the cost no longer grows with the section's size.
MAX_CELLS = 2000


@dataclass
class SelfCheckResult:
    """What the self-check measured and learnt.

    Attributes
    ----------
    per_gene
        One row per hidden known gene: ``gene``, ``fold``, ``pcc``, ``spcc`` of the combination
        (cross-fitted: with the weights learnt on the other folds' genes).
    scores
        One row per column (``column``, ``predictor``, ``view``, ``readout``): its
        ``median_pcc``, ``median_spcc`` over the hidden genes alone, and its ``weight`` in the
        combination.
    stack
        The combination learnt on all hidden genes (`spalstf.prior.Stack`): its weights and
        the interval's calibration.
    seconds
        Wall time of the whole self-check.
    calibration
        st_pcc ~ intercept + slope x reference_pcc over the hidden genes (see `calibrate`),
        fitted at the run's full set of known genes (`extrapolate`; the line with half of
        them hidden is kept in ``expected["half_panel_line"]``).
    expected
        The run's expected accuracy with all its known genes (`full_panel`): ``median_pcc``,
        its ``se`` and ``lower``/``upper`` bounds, the curve it was extrapolated along, and
        ``gene_sd``, how far one gene's PCC strays from the per-gene line.
    """

    per_gene: pd.DataFrame
    scores: pd.DataFrame
    stack: Stack | None = None
    seconds: float = 0.0
    calibration: dict[str, float] = field(default_factory=dict)
    expected: dict[str, Any] = field(default_factory=dict)

    @property
    def median_pcc(self) -> float:
        return _nanmedian(self.per_gene["pcc"])

    @property
    def median_spcc(self) -> float:
        return _nanmedian(self.per_gene["spcc"])

    @property
    def weights(self) -> dict[str, float]:
        """The columns' weights in the combination (those above 0)."""
        return {} if self.stack is None else dict(self.stack.weights)

    def to_dict(self) -> dict[str, Any]:
        """A JSON- and h5ad-friendly summary (for ``uns["spalstf"]["self_check"]``)."""
        per_gene = self.per_gene.astype({"pcc": float, "spcc": float})
        return {
            "median_pcc": self.median_pcc,
            "median_spcc": self.median_spcc,
            "n_genes": int(len(per_gene)),
            "genes": [str(g) for g in per_gene["gene"]],
            "fold": [int(f) for f in per_gene["fold"]],
            "pcc": [float(v) for v in per_gene["pcc"]],
            "spcc": [float(v) for v in per_gene["spcc"]],
            "weights": {k: float(v) for k, v in self.weights.items()},
            "interval": {} if self.stack is None else {
                k: v for k, v in self.stack.to_dict().items() if k != "weights"},
            # columns, not a list of records: .h5ad stores dicts of arrays, not lists of dicts
            "candidates": {str(c): [_plain(v) for v in self.scores[c]]
                           for c in self.scores.columns},
            "seconds": float(self.seconds),
            "calibration": {k: float(v) for k, v in self.calibration.items()},
            # the run's expected median PCC with all its known genes, and how sure it is
            **({"expected_median_pcc": float(self.expected["median_pcc"]),
                "expected_median_pcc_se": float(self.expected["se"]),
                "expected_median_pcc_interval": [float(self.expected["lower"]),
                                                 float(self.expected["upper"])],
                "expected": {k: _plain(v) for k, v in self.expected.items()}}
               if self.expected else {}),
        }


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def inner_folds(genes: Sequence[str], n_folds: int, seed: int) -> list[list[str]]:
    """`n_folds` disjoint groups of `genes` (seeded shuffle), each to be hidden in turn.

    Drawn from the names, not the positions: the shuffle runs over the sorted names and each
    group is sorted too, so the same genes give the same groups (and, downstream, the same
    imputation) in whatever order the ST's columns come. A shuffle of positions gave
    osmFISH's self-check a median PCC anywhere from 0.227 to 0.298 by column order alone.
    """
    names = sorted(genes)
    order = np.random.default_rng(seed).permutation(len(names))
    return [sorted(names[i] for i in part) for part in np.array_split(order, n_folds)
            if len(part)]


def reference_predictability(known: Any, target: Any, *, alpha: float | None, seed: int,
                             max_cells: int = 5000) -> np.ndarray:
    """Per target gene: Pearson r between the ridge prediction from the known genes and the
    gene, on held-out reference cells (two halves of at most `max_cells` cells, each predicted
    by a ridge fitted on the other). Inputs: standardised cells x genes (arrays or row-indexable
    readers). NaN for a gene without variance."""
    from spalstf.evaluate import metrics
    from spalstf.prior import fit_ridge

    n = known.shape[0]
    rows = np.sort(np.random.default_rng([seed, 2]).choice(n, min(n, max_cells), replace=False))
    x, y = np.asarray(known[rows], np.float64), np.asarray(target[rows], np.float64)
    if len(rows) < 4:
        return np.full(y.shape[1], np.nan)
    half = np.random.default_rng([seed, 3]).permutation(len(rows)) < len(rows) // 2
    pred = np.empty_like(y)
    for part in (half, ~half):
        weights = fit_ridge(x[~part], y[~part], alpha)
        pred[part] = x[part] @ weights
    return metrics.pcc(y, pred)


def calibrate(reference_pcc: Sequence[float], st_pcc: Sequence[float]) -> dict[str, float]:
    """Least-squares line st_pcc ~ intercept + slope x reference_pcc over the self-check's
    genes, with the correlation of the two (how much the line can be trusted) and n.

    Measured against the real per-gene PCC of held-out genes (5-fold, six sets;
    benchmarks/results/uncertainty.md): the line's mean absolute error is below that of the
    self-check's median alone on every set (e.g. osmFISH 0.098 against 0.121)."""
    a, b = np.asarray(reference_pcc, np.float64), np.asarray(st_pcc, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 3 or np.std(a[ok]) == 0:
        return {"intercept": float(np.nanmedian(b)) if n else float("nan"), "slope": 0.0,
                "r": float("nan"), "n": n}
    slope, intercept = np.polyfit(a[ok], b[ok], 1)
    r = float(np.corrcoef(a[ok], b[ok])[0, 1]) if np.std(b[ok]) > 0 else float("nan")
    return {"intercept": float(intercept), "slope": float(slope), "r": r, "n": n}


def expected_pcc(calibration: Mapping[str, float], reference_pcc: Sequence[float]) -> np.ndarray:
    """The calibrated expectation of each gene's PCC on the ST, in [-1, 1]."""
    ref = np.asarray(reference_pcc, np.float64)
    out = calibration["intercept"] + calibration["slope"] * np.nan_to_num(ref)
    return np.clip(out, -1.0, 1.0)


#: The extra, cheap measurement of how the accuracy grows with the number of known genes: a
#: ridge (fitted on half the reference's cells) predicts each known gene from the others,
#: hiding them in `n_folds` x each of these multiples of groups (with the default 2 folds:
#: 1/2, 1/4 and 1/8 of the known genes hidden at a time).
CURVE_MULTIPLES = (1, 2, 4)
#: Cells of the reference (two halves: fit, score) and of the ST the cheap measurement reads.
CURVE_CELLS = 1000
#: Bootstrap resamples of the genes behind the run's estimate's standard error and interval.
N_BOOTSTRAP = 200
#: Reference cells read for each known gene's predictability with nearly all known genes.
REFERENCE_CELLS = 5000
#: Reference cells averaged by the cheap measurement's nearest-neighbour predictor.
CURVE_NEIGHBOURS = 20
#: The most the cheap predictors' relative gain may raise the self-check's median.
MAX_RATIO = 1.5


def panel_curve(st_counts: np.ndarray, ref_counts: np.ndarray, names: Sequence[str], *,
                n_folds: int, seed: int, scale_factor: float, log_normalized: bool,
                alpha: float | None = None, multiples: Sequence[int] = CURVE_MULTIPLES,
                max_cells: int = CURVE_CELLS) -> dict[str, Any]:
    """How a cheap predictor's accuracy grows with the number of known genes, measured here.

    For each number of groups K in `n_folds` x `multiples` (at most one gene a group), the
    known genes `names` (columns of `st_counts`, cells x genes, and of `ref_counts`, the
    reference's counts of the same genes) are hidden a group at a time (`inner_folds`, so the
    first K gives the self-check's own groups) and predicted from the other known genes by two
    cheap predictors read from half the reference's cells: a ridge, and the mean of the
    `CURVE_NEIGHBOURS` nearest reference cells (cosine of the z-scored known genes; the
    stack's neighbour predictors gain more from more genes than a linear map), each side
    normalised over the genes it is given (as the imputation normalises over its known
    genes). Every gene is hidden once per K. Returns ``n_known`` (known genes per fit, one per
    K), ``st`` and ``st_knn`` (K x genes: the ridge's and the neighbours' PCC on the ST cells
    against the genes normalised over all of `names`, as the self-check's truth) and
    ``reference`` (K x genes: the ridge's PCC on the other half of the reference's cells).
    """
    from spalstf.evaluate import metrics
    from spalstf.preprocess import log_normalize
    from spalstf.prior import fit_ridge

    names = list(names)
    n = len(names)
    rng = np.random.default_rng([seed, 7])
    st_rows = np.sort(rng.choice(len(st_counts), min(len(st_counts), max_cells), replace=False))
    st_counts = np.asarray(st_counts[st_rows], np.float64)
    ref_rows = rng.permutation(len(ref_counts))[:2 * max_cells]
    ref_counts = np.asarray(ref_counts, np.float64)[ref_rows]
    fit_half = np.arange(len(ref_rows)) < len(ref_rows) // 2
    truth = log_normalize(st_counts, scale_factor=scale_factor, log_normalized=log_normalized)[0]
    counts_of_k = sorted({min(n, n_folds * m) for m in multiples})
    n_known, st_pcc, ref_pcc, knn_pcc = [], [], [], []
    for k in counts_of_k:
        st_row, ref_row, knn_row = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        folds = inner_folds(names, k, seed)
        for hidden in folds:
            h = np.array([names.index(g) for g in hidden])
            kn = np.setdiff1d(np.arange(n), h)
            ref_x, ref_y = log_normalize(ref_counts[:, kn], ref_counts[:, h],
                                         scale_factor=scale_factor,
                                         log_normalized=log_normalized)
            st_x = log_normalize(st_counts[:, kn], scale_factor=scale_factor,
                                 log_normalized=log_normalized)[0]
            mean, sd = ref_x[fit_half].mean(0), ref_x[fit_half].std(0)
            sd = np.where(sd > 0, sd, 1.0)
            y_mean, y_sd = ref_y[fit_half].mean(0), ref_y[fit_half].std(0)
            y_sd = np.where(y_sd > 0, y_sd, 1.0)
            weights = fit_ridge(((ref_x - mean) / sd)[fit_half].astype(np.float64),
                                ((ref_y - y_mean) / y_sd)[fit_half].astype(np.float64), alpha)
            with np.errstate(invalid="ignore", divide="ignore"):
                st_row[h] = metrics.pcc(truth[:, h], ((st_x - mean) / sd) @ weights)
                ref_row[h] = metrics.pcc(ref_y[~fit_half], ((ref_x[~fit_half] - mean) / sd)
                                         @ weights)
                knn_row[h] = metrics.pcc(truth[:, h], _neighbour_mean(
                    st_x, ref_x[fit_half], ref_y[fit_half], CURVE_NEIGHBOURS))
        n_known.append(n - n / k)
        st_pcc.append(st_row)
        ref_pcc.append(ref_row)
        knn_pcc.append(knn_row)
    return {"n_known": np.array(n_known), "st": np.array(st_pcc), "st_knn": np.array(knn_pcc),
            "reference": np.array(ref_pcc), "names": names}


def _neighbour_mean(st_x: np.ndarray, ref_x: np.ndarray, ref_y: np.ndarray,
                    k: int) -> np.ndarray:
    """Each ST cell's mean of `ref_y` over its `k` nearest reference cells (cosine of the
    known genes, each side z-scored by its own cells)."""
    def unit(x):
        z = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    k = max(1, min(k, len(ref_x) - 1))
    similarity = unit(np.asarray(st_x, np.float64)) @ unit(np.asarray(ref_x, np.float64)).T
    nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    return np.asarray(ref_y, np.float64)[nearest].mean(axis=1)


def saturating_fit(n_known: Sequence[float], pcc: Sequence[float]) -> tuple[float, float]:
    """(a, b) of the curve pcc = a - b / n_known fitted by least squares (b >= 0: more known
    genes never make the accuracy worse; one point or none: flat)."""
    m, p = np.asarray(n_known, np.float64), np.asarray(pcc, np.float64)
    ok = np.isfinite(m) & np.isfinite(p) & (m > 0)
    m, p = m[ok], p[ok]
    if len(m) == 0:
        return float("nan"), 0.0
    if len(np.unique(m)) < 2:
        return float(np.mean(p)), 0.0
    slope, intercept = np.polyfit(1.0 / m, p, 1)
    if slope > 0:  # accuracy falling with more genes: noise; no gain claimed
        return float(np.mean(p)), 0.0
    return float(intercept), float(-slope)


def panel_gain(n_known: Sequence[float], pcc: np.ndarray, n_full: float) -> float:
    """The gain in median PCC from the first number of known genes to `n_full`, read off the
    saturating curve (`saturating_fit`) through the medians over genes (rows of `pcc`)."""
    return _curve_ends(n_known, pcc, n_full)[2]


def _curve_ends(n_known, pcc, n_full) -> tuple[float, float, float]:
    """(fitted median PCC at the first number of known genes, at `n_full`, the gain)."""
    medians = [_nanmedian(row) for row in np.asarray(pcc)]
    a, b = saturating_fit(n_known, medians)
    if not np.isfinite(a):
        return float("nan"), float("nan"), 0.0
    return a - b / n_known[0], a - b / n_full, float(b / n_known[0] - b / n_full)


def carried(measured: float, curves: Sequence[np.ndarray], n_known: Sequence[float],
            n_full: float) -> float:
    """The self-check's median `measured` (with `n_known[0]` known genes) carried to
    `n_full`: scaled by the cheap predictors' mean relative gain along their curves
    (`curves`: K x genes each; accuracy below a noise ceiling scales, so a better predictor
    gains more in absolute terms), at most `MAX_RATIO`; where the measured median or a
    predictor's is near 0, their mean absolute gain is added instead."""
    ends = [_curve_ends(n_known, c, n_full) for c in curves]
    ratios = [hi / lo for lo, hi, _ in ends if np.isfinite(lo) and lo >= 0.05]
    if measured > 0 and len(ratios) == len(ends) and ratios:
        return float(measured * min(float(np.mean(ratios)), MAX_RATIO))
    return float(measured + np.mean([g for _, _, g in ends]) if ends else measured)


def full_panel(hidden_pcc: np.ndarray, curve: Mapping[str, Any], n_full: int, *,
               seed: int, n_bootstrap: int = N_BOOTSTRAP,
               level: float = 0.9) -> dict[str, Any]:
    """The run's expected accuracy with all `n_full` known genes, from the self-check's
    per-gene PCC with fewer (`hidden_pcc`, the genes in `curve["names"]` order) and the gain
    the cheap curve measures from there to `n_full` (`panel_curve`).

    ``median_pcc``: the self-check's median carried along the cheap curves (`carried`;
    ``gain``: what that adds; ``reference_gain``: the ridge's gain in the reference);
    ``se`` and ``lower``/``upper`` (`level`): the spread of ``median_pcc`` over bootstrap
    resamples of the genes (the median and the curves alike).
    """
    m = np.asarray(curve["n_known"], np.float64)
    curves = [np.asarray(curve[k]) for k in ("st", "st_knn") if k in curve]
    ref = np.asarray(curve["reference"])
    pcc = np.asarray(hidden_pcc, np.float64)
    measured = _nanmedian(pcc)
    estimate = carried(measured, curves, m, n_full)
    gain = estimate - measured
    ref_gain = panel_gain(m, ref, n_full)
    rng = np.random.default_rng([seed, 11])
    boot = []
    for _ in range(n_bootstrap):
        pick = rng.integers(0, len(pcc), len(pcc))
        boot.append(carried(_nanmedian(pcc[pick]), [c[:, pick] for c in curves], m, n_full))
    boot = np.asarray(boot)
    boot = boot[np.isfinite(boot)]
    tail = (1 - level) / 2
    return {
        "median_pcc": float(estimate),
        "se": float(np.std(boot, ddof=1)) if len(boot) > 1 else float("nan"),
        "lower": float(np.quantile(boot, tail)) if len(boot) else float("nan"),
        "upper": float(np.quantile(boot, 1 - tail)) if len(boot) else float("nan"),
        "level": float(level),
        "gain": float(gain),
        "reference_gain": float(ref_gain),
        "n_known": int(n_full),
        "curve_n_known": [float(v) for v in m],
        "curve_st_pcc": [_nanmedian(r) for r in curves[0]],
        "curve_reference_pcc": [_nanmedian(r) for r in ref],
        **({"curve_knn_pcc": [_nanmedian(r) for r in curve["st_knn"]]}
           if "st_knn" in curve else {}),
    }


def _nanmedian(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.median(values[np.isfinite(values)])) if np.isfinite(values).any() \
        else float("nan")


def cross_fitted(predictions: Mapping[str, np.ndarray], truth: np.ndarray,
                 fold_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(combined, spread) of every hidden gene (cells x genes), each fold's genes combined by
    the weights learnt on the other folds' genes (`spalstf.prior.stack`)."""
    from spalstf.prior.stack import Stack, learn_weights

    combined = np.empty_like(truth, dtype=np.float32)
    spread = np.empty_like(truth, dtype=np.float32)
    for fold in np.unique(fold_of):
        own, other = fold_of == fold, fold_of != fold
        if not other.any():  # a single fold: its own weights
            other = own
        stack = Stack(learn_weights({c: p[:, other] for c, p in predictions.items()},
                                    truth[:, other]))
        mine = {c: p[:, own] for c, p in predictions.items()}
        combined[:, own] = stack.combine(mine, stack.statistics(mine))
        spread[:, own] = stack.spread(mine)
    return combined, spread


@dataclass
class InnerPredictions:
    """What the inner folds predicted: every column's predictions of the hidden known genes.

    Attributes
    ----------
    columns
        Column name -> (cells, hidden genes) predictions on the output scale.
    truth
        The hidden genes' measured values, log-normalised over all known genes of the main run
        (what the weights and scores are learnt on, as the evaluation suite's truth is over all
        shared genes).
    own_truth
        The same genes log-normalised over the known genes of their own fold (what each
        prediction claims to predict: the interval is calibrated on it).
    genes, fold_of
        The hidden genes (columns of the arrays) and the fold that hid each.
    reference_pcc
        Each hidden gene's predictability in the reference (`reference_predictability`).
    cells
        The ST cells scored (a seeded subsample of at most `MAX_CELLS`).
    counts, depth
        With counts input (None with log-normalised input): the hidden genes' counts and, for
        each, the cell's total over the known genes of its own fold (cells x hidden genes):
        what the count model of the interval is learnt on (`spalstf.prior.intervals`).
    scale_factor
        The normalisation's scale factor (`Config.scale_factor`).
    """

    columns: dict[str, np.ndarray]
    truth: np.ndarray
    own_truth: np.ndarray
    genes: list[str]
    fold_of: np.ndarray
    reference_pcc: np.ndarray
    cells: np.ndarray
    counts: np.ndarray | None = None
    depth: np.ndarray | None = None
    scale_factor: float = 1e4


def inner_predictions(st_expr, sc_expr, known_pairs: Sequence[tuple[str, str]], cfg: Config,
                      *, n_folds: int, seed: int, log_normalized: bool, device, spatial: Any,
                      progress: bool, fit: Callable[..., Any],
                      fit_budget_share: float = FIT_BUDGET_SHARE,
                      max_cells: int = MAX_CELLS) -> InnerPredictions:
    """The inner leave-genes-out over the ST's known genes: every candidate column's
    predictions of each fold's hidden genes (see `run`, which learns from them)."""
    from spalstf.columns import available_readouts, available_views, candidate_columns
    from spalstf.preprocess import log_normalize
    from spalstf.spatial import coordinates

    # The known genes in the order of their names, not of the ST's columns: the inner fits and
    # the truth's normalisation then sum over them in one order, and the weights learnt are
    # the same for any column order. (In column order, float round-off of about 1e-6 in the
    # inner predictions moved the weights of near-collinear columns by up to 4e-4, and the
    # imputation of osmFISH by up to 3e-3.)
    st_names = sorted(s for s, _ in known_pairs)
    ref_of = dict(known_pairs)
    folds = inner_folds(st_names, n_folds, seed)
    share = fit_budget_share / len(folds)
    inner_cfg = cfg.replace(
        max_steps=None if cfg.max_steps is None else max(1, round(cfg.max_steps * share)),
        max_time=None if cfg.max_time is None else cfg.max_time * share)
    rows = np.arange(st_expr.n_cells)
    if st_expr.n_cells > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(st_expr.n_cells, max_cells,
                                                          replace=False))
    counts = st_expr.columns(st_names, rows)
    truth_all = log_normalize(counts, scale_factor=cfg.scale_factor,
                              log_normalized=log_normalized)[0]
    hidden_order = [g for fold in folds for g in fold]
    fold_of = np.array([i for i, fold in enumerate(folds) for _ in fold])
    truth = truth_all[:, [st_names.index(g) for g in hidden_order]]
    own_truth = np.empty_like(truth)
    hidden_counts = None if log_normalized else np.empty_like(truth, dtype=np.float64)
    depth = None if log_normalized else np.empty_like(truth, dtype=np.float64)
    views = available_views(cfg, coordinates(st_expr.source, spatial, st_expr.n_cells,
                                             st_expr.named_cells) is not None)
    readouts = available_readouts(cfg, log_normalized)
    predictions: dict[str, list[np.ndarray]] = {}
    reference_pcc: dict[str, float] = {}
    for i, hidden in enumerate(folds):
        inner_known = [g for g in st_names if g not in hidden]
        logger.info("self-check fold %d/%d: hiding %d of %d known genes", i + 1, len(folds),
                    len(hidden), len(st_names))
        # The fold's line above stands for its fit: no bar and no lines of its own, so that
        # a user sees one line per fold, not a bar flashing by for each inner fit.
        with inner_steps():
            model = fit(sc_expr, [ref_of[g] for g in inner_known], [ref_of[g] for g in hidden],
                        list(hidden), inner_cfg, log_normalized=log_normalized, seed=seed,
                        device=device, progress=False)
        columns = candidate_columns(model, cfg, views, readouts)
        source = model.columns(st_expr, cfg, columns, log_normalized=log_normalized,
                               seed=seed, device=device, spatial=spatial)
        for name, values in source.predict(rows).items():
            predictions.setdefault(name, []).append(values)
        reference_pcc.update(zip(hidden, model.info["reference_pcc"], strict=True))
        known_idx = [st_names.index(g) for g in inner_known]
        hidden_idx = [st_names.index(g) for g in hidden]
        if log_normalized:
            own_truth[:, fold_of == i] = counts[:, hidden_idx]
        else:
            total = np.asarray(counts[:, known_idx].sum(axis=1), np.float64)
            factor = np.divide(cfg.scale_factor, total, out=np.zeros_like(total),
                               where=total > 0)
            own_truth[:, fold_of == i] = np.log1p(counts[:, hidden_idx] * factor[:, None])
            hidden_counts[:, fold_of == i] = counts[:, hidden_idx]
            depth[:, fold_of == i] = total[:, None]
    return InnerPredictions(
        columns={name: np.concatenate(parts, axis=1) for name, parts in predictions.items()
                 if len(parts) == len(folds)},
        truth=truth, own_truth=own_truth, genes=hidden_order, fold_of=fold_of,
        reference_pcc=np.array([reference_pcc[g] for g in hidden_order], np.float64),
        cells=rows, counts=hidden_counts, depth=depth, scale_factor=float(cfg.scale_factor))


def learn(inner: InnerPredictions, *, level: float) -> SelfCheckResult:
    """The combination, its cross-fitted scores, the interval and the per-gene calibration
    learnt from the inner folds' predictions (see the module's docstring)."""
    from spalstf.evaluate import metrics
    from spalstf.prior.stack import Stack, learn_weights, parse

    stack = Stack(learn_weights(inner.columns, inner.truth), level=level)
    combined, spread = cross_fitted(inner.columns, inner.truth, inner.fold_of)
    stack.calibrate(inner.own_truth, combined, spread, level=level)
    if inner.counts is not None:  # counts input: the per-value interval of the count model
        stack.calibrate_counts(inner.counts, inner.depth, combined, spread=spread, level=level,
                               scale_factor=inner.scale_factor)
        # kept where it scores better than the normalised interval on the hidden genes
        # (cross-fitted over the folds; `spalstf.prior.stack.cross_scores`)
        stack.choose_interval(inner.own_truth, inner.counts, inner.depth, combined=combined,
                              spread=spread, fold_of=inner.fold_of,
                              scale_factor=inner.scale_factor)
    pcc, spcc = metrics.pcc(inner.truth, combined), metrics.spcc(inner.truth, combined)
    per_gene = pd.DataFrame({"gene": inner.genes, "fold": inner.fold_of, "pcc": pcc,
                             "spcc": spcc})
    rows = []
    for name, values in inner.columns.items():
        predictor, view, readout = parse(name)
        rows.append({"column": name, "predictor": predictor, "view": view,
                     "readout": readout,
                     "median_pcc": _nanmedian(metrics.pcc(inner.truth, values)),
                     "median_spcc": _nanmedian(metrics.spcc(inner.truth, values)),
                     "weight": stack.weights.get(name, 0.0)})
    result = SelfCheckResult(per_gene=per_gene, scores=pd.DataFrame(rows), stack=stack)
    # Calibration of the per-gene confidence: how each hidden gene's predictability in the
    # reference (a by-product of its inner fit) relates to its PCC measured on the ST.
    result.calibration = calibrate(inner.reference_pcc, pcc)
    return result


def run(st_expr, sc_expr, known_pairs: Sequence[tuple[str, str]], cfg: Config, *,
        n_folds: int, seed: int, log_normalized: bool, device, spatial: Any, progress: bool,
        fit: Callable[..., Any], fit_budget_share: float = FIT_BUDGET_SHARE,
        max_cells: int = MAX_CELLS) -> SelfCheckResult:
    """The inner leave-genes-out over the ST's known genes (see the module's docstring).

    known_pairs: (ST name, reference name) of each known gene of the main run. `fit` fits each
    inner model, as `spalstf.model.fit_model` (reference, known, targets, output names,
    config, then keywords) and returns it (its `columns` and `info["reference_pcc"]` are
    read): handed in, so that the self-check imports neither the model nor the API. Each inner
    fit gets `fit_budget_share / n_folds` of the main run's training budget (`max_steps`, and
    `max_time` when set). Scores are computed on a seeded subsample of at most `max_cells` ST
    cells (their neighbours are read from all cells).
    """
    start = time.perf_counter()
    inner = inner_predictions(st_expr, sc_expr, known_pairs, cfg, n_folds=n_folds, seed=seed,
                              log_normalized=log_normalized, device=device, spatial=spatial,
                              progress=progress, fit=fit, fit_budget_share=fit_budget_share,
                              max_cells=max_cells)
    result = learn(inner, level=cfg.interval_level)
    extrapolate(result, inner, st_expr, sc_expr, known_pairs, cfg, n_folds=n_folds, seed=seed,
                log_normalized=log_normalized)
    result.seconds = time.perf_counter() - start
    top = ", ".join(f"{n} {w:.2f}" for n, w in sorted(result.weights.items(),
                                                       key=lambda kv: -kv[1])[:3])
    e = result.expected
    # one line (the CLI leaves it out of its log and prints its own summary)
    logger.info("self-check: median PCC %.3f, SPCC %.3f over %d hidden known genes; weights %s"
                " (%.0f s); expected with all %d known genes: median PCC %.3f (%.0f%% %.3f to "
                "%.3f)", result.median_pcc, result.median_spcc, len(inner.genes), top,
                result.seconds, e["n_known"], e["median_pcc"], 100 * e["level"], e["lower"],
                e["upper"])
    return result


def extrapolate(result: SelfCheckResult, inner: InnerPredictions, st_expr, sc_expr,
                known_pairs: Sequence[tuple[str, str]], cfg: Config, *, n_folds: int,
                seed: int, log_normalized: bool) -> None:
    """Carry the self-check's accuracy, measured with 1 - 1/`n_folds` of the known genes, to
    the run, which has them all: `panel_curve` on the same cells and `full_panel` from it
    (`result.expected`); the per-gene line (`result.calibration`) refitted at the full panel:
    each hidden gene's PCC carried as the median is, against its reference predictability
    with all but a few known genes (`panel_reference_pcc`), as the imputed genes' is read
    with all of them."""
    names = sorted(s for s, _ in known_pairs)
    ref_of = dict(known_pairs)
    ref_rows = np.arange(sc_expr.n_cells)
    if sc_expr.n_cells > 2 * CURVE_CELLS:
        ref_rows = np.sort(np.random.default_rng([seed, 5]).choice(
            sc_expr.n_cells, 2 * CURVE_CELLS, replace=False))
    curve = panel_curve(st_expr.columns(names, inner.cells),
                        sc_expr.columns([ref_of[g] for g in names], ref_rows), names,
                        n_folds=n_folds, seed=seed, scale_factor=cfg.scale_factor,
                        log_normalized=log_normalized, alpha=cfg.prior_alpha)
    pcc = dict(zip(result.per_gene["gene"], result.per_gene["pcc"], strict=True))
    hidden = np.array([pcc[g] for g in names], np.float64)
    half = dict(result.calibration)
    result.expected = full_panel(hidden, curve, len(names), seed=seed)
    measured = _nanmedian(hidden)
    gain = result.expected["gain"]
    carried_pcc = (hidden * (result.expected["median_pcc"] / measured) if measured > 0
                   else hidden + gain)
    ref_rows = np.arange(sc_expr.n_cells)
    if sc_expr.n_cells > REFERENCE_CELLS:
        ref_rows = np.sort(np.random.default_rng([seed, 6]).choice(
            sc_expr.n_cells, REFERENCE_CELLS, replace=False))
    reference = panel_reference_pcc(sc_expr.columns([ref_of[g] for g in names], ref_rows),
                                    names, n_groups=n_folds * max(CURVE_MULTIPLES), seed=seed,
                                    scale_factor=cfg.scale_factor,
                                    log_normalized=log_normalized, alpha=cfg.prior_alpha)
    full = calibrate(reference, carried_pcc)
    result.expected["half_panel_line"] = {k: float(v) for k, v in half.items()}
    # how far one gene's PCC strays from the line: the residuals' SD over the hidden genes
    residual = carried_pcc - expected_pcc(full, reference)
    ok = np.isfinite(residual)
    result.expected["gene_sd"] = float(np.std(residual[ok], ddof=1)) if ok.sum() > 2 \
        else float("nan")
    result.calibration = full


def panel_reference_pcc(ref_counts: np.ndarray, names: Sequence[str], *, n_groups: int,
                        seed: int, scale_factor: float, log_normalized: bool,
                        alpha: float | None) -> np.ndarray:
    """Each known gene's predictability in the reference (`reference_predictability`, as the
    model reads each imputed gene's) from the other known genes, hiding them in `n_groups`
    groups (so with nearly all the known genes, as the imputed genes are read with all of
    them), each group's cells normalised over the genes left known."""
    from spalstf.preprocess import log_normalize

    names = list(names)
    n = len(names)
    counts = np.asarray(ref_counts, np.float64)
    out = np.full(n, np.nan)
    for hidden in inner_folds(names, min(n, n_groups), seed):
        h = np.array([names.index(g) for g in hidden])
        kn = np.setdiff1d(np.arange(n), h)
        x, y = log_normalize(counts[:, kn], counts[:, h], scale_factor=scale_factor,
                             log_normalized=log_normalized)

        def z(v):
            sd = v.std(0)
            return (v - v.mean(0)) / np.where(sd > 0, sd, 1.0)

        with np.errstate(invalid="ignore", divide="ignore"):
            out[h] = reference_predictability(z(x), z(y), alpha=alpha, seed=seed)
    return out


def wanted(self_check: bool | str, n_known: int) -> bool:
    """Whether to run the self-check: as asked, or for "auto" when the ST has at least
    `MIN_GENES` known genes (a log line says why not)."""
    if self_check != "auto":
        return bool(self_check)
    if n_known < MIN_GENES:
        logger.info("self-check skipped: the ST has %d known genes (fewer than %d); the "
                    "fixed blend combines the base predictions", n_known, MIN_GENES)
        return False
    return True


def maybe_run(st_expr: Expression, sc_expr: Expression, known_pairs, cfg: Config, *,
              self_check, n_folds, seed, log_normalized, device, spatial, progress,
              fit: Callable[..., Any]) -> SelfCheckResult | None:
    """Validate the self-check options and `run` it when asked (or when "auto" says so).
    `fit`: as `run`'s."""
    if self_check not in (True, False, "auto"):
        raise ValueError(f"`self_check` must be True, False or 'auto'; received {self_check!r}")
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"`self_check_folds` must be an integer >= 2; received {n_folds!r}")
    n_known = len(known_pairs)
    if not wanted(self_check, n_known):
        return None
    if n_known < max(n_folds, 2):
        raise ValueError(f"the self-check hides groups of the ST's known genes, so it needs at "
                         f"least `self_check_folds` ({n_folds}) of them; there are {n_known}. "
                         "Pass self_check=False")
    return run(st_expr, sc_expr, known_pairs, cfg, n_folds=n_folds, seed=seed,
               log_normalized=log_normalized, device=device, spatial=spatial,
               progress=progress, fit=fit)
