"""The self-check's expected accuracy: how the accuracy measured on hidden known genes carries
to the run's imputed genes.

Hiding half the known genes measures a harder problem than the run's, which has them all, so
the accuracy is carried to the full panel along a curve measured here too: two cheap
predictors hide 1/2, 1/4 and 1/8 of the known genes (`panel_curve`), a saturating curve through
their median PCC is extrapolated to all the known genes (`full_panel`), and the estimate's
standard error and interval come from resampling the genes.

Per gene, the confidence is learnt on the self-check's hidden known genes from three pieces of
evidence about each gene (`gene_features`): its predictability in the reference
(`reference_predictability`, which every fit records for its targets), how far the stack's
base predictions agree on it across the ST's cells, and how much the combined prediction
varies across them. A small ridge (`fit_gene_model`, its error cross-fitted over the
self-check's folds) maps them to the gene's PCC on the ST; `expected_pcc` reads it off for the
imputed genes and `centred` sets the median of the imputed genes' values to the run's estimate
(`full_panel`), which is right on average where the per-gene values, carried across from
genes measured with half the panel, were not (0.05 low on Visium brain). Without the agreement
and spread (a model saved before them, or the fixed blend), a line from the predictability
alone (`calibrate`) is read.

The groups of genes hidden in turn (`inner_folds`) are drawn here, as the cheap curve hides
them as the self-check (`spalstf.combine.selfcheck`) does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


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


def centred(values: Sequence[float], median: float) -> np.ndarray:
    """`values` shifted so that their median is `median` (the run's expected median PCC), in
    [-1, 1]; unchanged where `median` or every value is not finite (a model saved without
    the run's estimate)."""
    values = np.asarray(values, np.float64)
    ok = np.isfinite(values)
    if median is None or not np.isfinite(median) or not ok.any():
        return values.copy()
    return np.clip(values + (float(median) - float(np.median(values[ok]))), -1.0, 1.0)


#: The per-gene evidence of `fit_gene_model`, in its order (see `gene_features`). Chosen on
#: held-out genes of six sets, each set's choice made on the other five
#: (benchmarks/results/expected_features.md): the model chosen for four of the six, with the
#: highest mean Spearman r with the real per-gene PCC (0.60; the predictability alone 0.39),
#: above the predictability alone on all six (STARmap 0.40 against -0.04).
GENE_FEATURES = ("reference_pcc", "agreement", "spread")
#: The ridge penalty of `fit_gene_model`, per gene, on standardised features.
GENE_PENALTY = 0.1


def gene_features(statistics: Any, weights: Mapping[str, float],
                  reference_pcc: Sequence[float]) -> dict[str, np.ndarray]:
    """Per gene, the evidence `fit_gene_model` reads, from the statistics of the stack's
    columns over the ST's cells (`spalstf.combine.stack.Stack.statistics`: per column its
    mean and sd, and the sd of the weighted sum of z-scores) and their `weights`:

    ``reference_pcc``: the gene's predictability in the reference; ``agreement``: the sd of the
    weighted sum of the columns' z-scores over the sum of the weights (1 where the base
    predictions agree on every cell, less where they disagree: where kNN, SpaGE, the ridge and
    the likelihood agree the prediction tends to be right); ``spread``: the weighted sd of the
    columns across cells, which is the sd of the combined prediction (a gene predicted flat
    has little to correlate).

    No other prediction is made: the statistics are those the stack combines with.
    """
    names = [n for n in weights if weights[n] > 0]
    total = float(sum(weights[n] for n in names)) or 1.0
    agreement = np.asarray(statistics.z_sd, np.float64) / total
    spread = sum(weights[n] * np.asarray(statistics.sd[n], np.float64) for n in names) / total
    return {"reference_pcc": np.asarray(reference_pcc, np.float64),
            "agreement": agreement, "spread": np.asarray(spread, np.float64)}


def _ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, np.ndarray,
                                                                    np.ndarray, float]:
    """(mean, scale, coefficients, intercept) of a ridge of `y` on standardised `x`."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    z = (x - mean) / scale
    gram = z.T @ z + penalty * len(y) * np.eye(z.shape[1])
    coef = np.linalg.solve(gram, z.T @ (y - y.mean()))
    return mean, scale, coef, float(y.mean())


def fit_gene_model(features: Mapping[str, Sequence[float]], pcc: Sequence[float], *,
                   fold_of: Sequence[int], penalty: float = GENE_PENALTY) -> dict[str, Any]:
    """A ridge from the per-gene evidence (`features`: name -> one value per gene, as
    `gene_features` gives) to each gene's PCC on the ST (`pcc`, the self-check's hidden
    genes), on features standardised over these genes.

    ``residual_sd``: how far one gene's PCC strays from the model, cross-fitted (each group of
    `fold_of` predicted by the model fitted on the others, so not flattered by the genes
    fitted); ``r``: the Spearman correlation of those cross-fitted predictions with the PCC.
    Genes with a value missing are left out; with fewer than 4 genes, or a feature without a
    finite value, the model is flat (the genes' mean PCC).
    """
    from scipy import stats

    names = list(features)
    y = np.asarray(pcc, np.float64)
    folds = np.asarray(fold_of)
    x = np.column_stack([np.asarray(features[n], np.float64) for n in names]) if names \
        else np.empty((len(y), 0))
    if x.shape[0] != len(y) or len(folds) != len(y):
        raise ValueError(f"`features` (each), `pcc` and `fold_of` must have one value per gene; "
                         f"received {x.shape[0]}, {len(y)} and {len(folds)}")
    if not penalty > 0:
        raise ValueError(f"`penalty` must be > 0; received {penalty!r}")
    ok = np.isfinite(y) & np.isfinite(x).all(axis=1)
    flat = {"features": names, "mean": [0.0] * len(names), "scale": [1.0] * len(names),
            "coef": [0.0] * len(names),
            "intercept": float(np.mean(y[np.isfinite(y)])) if np.isfinite(y).any() else 0.0,
            "residual_sd": float(np.std(y[np.isfinite(y)], ddof=1))
            if np.isfinite(y).sum() > 1 else float("nan"), "r": float("nan"),
            "n": int(ok.sum())}
    if ok.sum() < 4 or not names:
        return flat
    x, y, folds = x[ok], y[ok], folds[ok]
    mean, scale, coef, intercept = _ridge(x, y, penalty)
    crossed = np.empty_like(y)
    for fold in np.unique(folds):
        own = folds == fold
        if own.all() or (~own).sum() < 2:  # one group only: no genes to fit on
            crossed[own] = intercept
            continue
        m, s, c, i = _ridge(x[~own], y[~own], penalty)
        crossed[own] = i + ((x[own] - m) / s) @ c
    residual = y - crossed
    r = stats.spearmanr(crossed, y)[0] if np.std(crossed) > 0 and np.std(y) > 0 else np.nan
    return {"features": names, "mean": [float(v) for v in mean],
            "scale": [float(v) for v in scale], "coef": [float(v) for v in coef],
            "intercept": intercept, "residual_sd": float(np.std(residual, ddof=1)),
            "r": float(r), "n": int(len(y))}


def predict_gene_model(model: Mapping[str, Any],
                       features: Mapping[str, Sequence[float]]) -> np.ndarray:
    """The expected PCC of each gene from its `features` (as `fit_gene_model` was given) by
    the `model` that function fitted, in [-1, 1]; a missing value counts as the fitted genes'
    mean."""
    missing = [n for n in model["features"] if n not in features]
    if missing:
        raise ValueError(f"`features` lacks {missing} of the model's {list(model['features'])}")
    out = None
    for name, mean, scale, coef in zip(model["features"], model["mean"], model["scale"],
                                       model["coef"], strict=True):
        z = np.nan_to_num((np.asarray(features[name], np.float64) - mean) / scale)
        out = coef * z if out is None else out + coef * z
    values = float(model["intercept"]) + (0.0 if out is None else out)
    return np.clip(np.asarray(values, np.float64), -1.0, 1.0)


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
                max_cells: int = CURVE_CELLS,
                scored: Sequence[str] | None = None) -> dict[str, Any]:
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
    `scored`: the genes whose PCC is measured, the columns of those arrays (default: all of
    `names`); the groups hidden are those of all the known genes still, so the numbers of
    known genes are the same, but only the scored genes are predicted (on panels of thousands
    of genes, the self-check's sample: `spalstf.combine.selfcheck.MAX_SCORED_GENES`).
    """
    from spalstf.evaluate import metrics
    from spalstf.preprocess import log_normalize
    from spalstf.prior import fit_ridge

    names = list(names)
    n = len(names)
    position = {g: i for i, g in enumerate(names)}
    scored = names if scored is None else list(scored)
    column_of = {g: i for i, g in enumerate(scored)}
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
        st_row, ref_row, knn_row = (np.full(len(scored), np.nan) for _ in range(3))
        folds = inner_folds(names, k, seed)
        for hidden in folds:
            kn = np.setdiff1d(np.arange(n), [position[g] for g in hidden])
            hidden = [g for g in hidden if g in column_of]
            if not hidden:
                continue
            h = np.array([position[g] for g in hidden])
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
            out = np.array([column_of[g] for g in hidden])
            with np.errstate(invalid="ignore", divide="ignore"):
                st_row[out] = metrics.pcc(truth[:, h], ((st_x - mean) / sd) @ weights)
                ref_row[out] = metrics.pcc(ref_y[~fit_half], ((ref_x[~fit_half] - mean) / sd)
                                           @ weights)
                knn_row[out] = metrics.pcc(truth[:, h], _neighbour_mean(
                    st_x, ref_x[fit_half], ref_y[fit_half], CURVE_NEIGHBOURS))
        n_known.append(n - n / k)
        st_pcc.append(st_row)
        ref_pcc.append(ref_row)
        knn_pcc.append(knn_row)
    return {"n_known": np.array(n_known), "st": np.array(st_pcc), "st_knn": np.array(knn_pcc),
            "reference": np.array(ref_pcc), "names": scored}


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
    medians = [nanmedian(row) for row in np.asarray(pcc)]
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
    measured = nanmedian(pcc)
    estimate = carried(measured, curves, m, n_full)
    gain = estimate - measured
    ref_gain = panel_gain(m, ref, n_full)
    rng = np.random.default_rng([seed, 11])
    boot = []
    for _ in range(n_bootstrap):
        pick = rng.integers(0, len(pcc), len(pcc))
        boot.append(carried(nanmedian(pcc[pick]), [c[:, pick] for c in curves], m, n_full))
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
        "curve_st_pcc": [nanmedian(r) for r in curves[0]],
        "curve_reference_pcc": [nanmedian(r) for r in ref],
        **({"curve_knn_pcc": [nanmedian(r) for r in curve["st_knn"]]}
           if "st_knn" in curve else {}),
    }


def nanmedian(values: np.ndarray) -> float:
    """The median of the finite values; NaN when there is none."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.median(values[np.isfinite(values)])) if np.isfinite(values).any() \
        else float("nan")


def panel_reference_pcc(ref_counts: np.ndarray, names: Sequence[str], *, n_groups: int,
                        seed: int, scale_factor: float, log_normalized: bool,
                        alpha: float | None, scored: Sequence[str] | None = None
                        ) -> np.ndarray:
    """Each known gene's predictability in the reference (`reference_predictability`, as the
    model reads each imputed gene's) from the other known genes, hiding them in `n_groups`
    groups (so with nearly all the known genes, as the imputed genes are read with all of
    them), each group's cells normalised over the genes left known.

    `scored`: the genes measured (default: all of `names`), in their order. Only they are
    hidden then, in groups of at most the default's size (len(names) / `n_groups`): as many
    known genes are left each time, with fewer fits (on a 5,000-gene panel, 4 groups of the
    self-check's 1,000 scored genes instead of 16 of all 5,000)."""
    from spalstf.preprocess import log_normalize

    names = list(names)
    n = len(names)
    position = {g: i for i, g in enumerate(names)}
    counts = np.asarray(ref_counts, np.float64)
    if scored is None:
        scored, groups = names, inner_folds(names, min(n, n_groups), seed)
    else:
        scored = list(scored)
        groups = inner_folds(scored, max(1, min(len(scored), math.ceil(
            len(scored) * min(n, n_groups) / max(n, 1)))), seed)
    column_of = {g: i for i, g in enumerate(scored)}
    out = np.full(len(scored), np.nan)
    for hidden in groups:
        h = np.array([position[g] for g in hidden])
        kn = np.setdiff1d(np.arange(n), h)
        x, y = log_normalize(counts[:, kn], counts[:, h], scale_factor=scale_factor,
                             log_normalized=log_normalized)

        def z(v):
            sd = v.std(0)
            return (v - v.mean(0)) / np.where(sd > 0, sd, 1.0)

        with np.errstate(invalid="ignore", divide="ignore"):
            out[[column_of[g] for g in hidden]] = reference_predictability(
                z(x), z(y), alpha=alpha, seed=seed)
    return out
