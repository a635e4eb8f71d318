"""Candidate per-value intervals, measured side by side on held-out genes (issue 26).

The default interval (`spalstf.combine.intervals`: a negative binomial around the count the
combined prediction implies at the cell's depth, per stratum of that count, calibrated on the
self-check's hidden known genes) is compared with sharper candidates, each learnt on the same
hidden known genes and scored on the truly held-out genes of the 5-fold leave-genes-out
protocol (as ``benchmarks/uncertainty.py``: the truth is the held-out gene's
``log1p(count / the cell's total over the fold's known genes * 1e4)``):

- ``nb``: the default (refitted here from the recorded hidden genes; identical to the
  imputation's ``layers["lower"/"upper"]`` where the self-check kept the count model);
- ``cqr_linear``, ``cqr_boosted``: conformalised quantile regression (Romano et al. 2019) of
  the 5% and 95% quantiles of the hidden values, by the pinball loss (the interval score is
  its sum), on per-value features: the combined value m, the NB's 5% and 95% quantiles, the
  columns' spread, minimum and maximum, and per gene the mean, SD, 5% and 95% quantile of m
  and the spread of the columns' per-gene means; linear (`sklearn QuantileRegressor`) or
  boosted trees (`HistGradientBoostingRegressor`); the conformal margin cross-fitted over the
  self-check's folds (fitted on one fold's genes, scored on the other's);
- ``nb_asymmetric``, ``nb_mondrian``: the NB with each tail's probability calibrated on its own
  (5% misses per side), over all values or per stratum of the implied count;
- ``nb_by_rank``, ``nb_by_level_spread``: the NB's strata crossed with 3 strata of the value's
  rank within its gene, or 2 of the spread of the columns' per-gene means (a gene whose
  predictors disagree on its level);
- ``nb_level_column``: the NB around m moved, per gene, to the level of the column whose
  per-gene means best match the hidden genes' (cross-fitted), chosen on the user's data;
  ``nb_level_chosen``: that interval only where, on the hidden genes (each self-check fold's
  genes scored with both learnt on the other fold's), it scores below the plain NB;
- ``oracle_level`` (not a candidate: it reads the truth): the NB around m moved to the held-out
  gene's true mean level; how much of the gap to the gene's own range the level explains.

Per-cell predictive distributions (the only kind that can beat the decile oracle), each a
mixture of counts at the cell's depth read on the truth's scale (`Mixture`: the 5% and 95%
quantiles of the count, exact for Poisson and NB components, then log1p(count / depth x 1e4)):

- ``lik_mixture``: the count likelihood's posterior over its reference clusters
  (`CountLikelihood.cluster_posterior`, read from the cell's own known genes), each cluster's
  target expression at the cell's depth as a Poisson count (the `TOP` heaviest clusters per
  cell); each tail's probability calibrated on the hidden known genes (5% of their counts
  beyond it, as ``nb_asymmetric``);
- ``lik_mixture_nb``: the same with NB components, their one size (`SIZES`, Poisson among
  them) the likeliest for the hidden genes' counts;
- ``lik_mixture_at_m``: that NB mixture moved to the combined prediction's level (every
  cluster's expected count scaled so the mixture's mean expression is expm1(m));
- ``lik_mixture_conformal``: the Poisson mixture's [Q(5%), Q(95%)] widened by the
  split-conformal margin of the hidden values;
- ``lik_mixture_tempered``: the Poisson mixture with the posterior tempered (w^t, `TEMPERS`),
  t the one whose calibrated interval scores best on the hidden genes (the tails learnt on one
  self-check fold's genes, scored on the other's);
- with ``--network`` only (a second imputation of the same folds with the SpaLSTF diffusion
  network in the stack, `NETWORK_OPTIONS`): ``network_mixture``, the network's samples of each
  value as an equally weighted NB mixture at the cell's depth (size chosen as above), tails
  calibrated; ``network_quantiles``, the samples' own 5-95% widened by the split-conformal
  margin of the hidden values; ``network_raw`` (a diagnostic, nothing calibrated): the
  samples' own 5-95%. The network's samples of the held-out genes are drawn even where the
  self-check gives it no weight (the stack ignores the extra column: the combination and
  the default interval are unchanged), so that they are scored on every fold.

The self-check's inner fits record their own posteriors and samples (each fold's hidden genes
from that fold's model), so these too are learnt on the hidden genes only.

References as ``benchmarks/uncertainty.py``: ``range`` (the gene's own 5-95% range across the
ST's cells) and ``decile`` (the truth's 5-95% range per decile of the prediction, per gene).
The choice between candidates is made by leaving whole data sets out: for each set, the
candidate with the lowest mean score ratio to ``range`` on the other sets, among those whose
coverage is in 0.87-0.93 on all of them, and its result on the set left out.

Each fold runs ``spalstf.impute`` at its defaults and records what it computes (the self-check's
hidden values and cross-fitted combination, the imputation's columns, combination and
interval, the count likelihood's posteriors and the network's samples) by wrapping
`spalstf.combine.selfcheck.learn`, `Stack.interval`, `ColumnSource.predict` and the
diffusion's `sample_chunk`; the records are cached in ``benchmarks/.cache/intervals/`` (not
committed; records without the posteriors are made again), so ``--score-only`` re-scores them,
and each set's scores too (``--reuse-scores`` reads them: sets scored in separate runs).
Writes ``benchmarks/results/<name>.md`` and ``<name>.png``.

    .venv/bin/python benchmarks/intervals.py                       # every set
    .venv/bin/python benchmarks/intervals.py --datasets simulated,visium_brain --name quick
    .venv/bin/python benchmarks/intervals.py --network visium_brain --network-steps 30
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import uncertainty as U  # noqa: E402

import spalstf  # noqa: E402
from spalstf._atomic import atomic_path  # noqa: E402
from spalstf.combine import columns as columns_module  # noqa: E402
from spalstf.combine import intervals as I  # noqa: E402
from spalstf.combine import selfcheck  # noqa: E402
from spalstf.combine import stack as stack_module  # noqa: E402
from spalstf.diffusion import sample as sample_module  # noqa: E402
from spalstf.evaluate._cli import markdown_table  # noqa: E402
from spalstf.evaluate.cv import gene_folds  # noqa: E402
from spalstf.prior.base import spaced_blocks  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache" / "intervals"
ALPHA = 0.1
CANDIDATES = ("nb", "cqr_linear", "cqr_boosted", "nb_asymmetric", "nb_mondrian", "nb_by_rank",
              "nb_by_level_spread", "nb_level_column", "nb_level_chosen", "lik_mixture",
              "lik_mixture_nb", "lik_mixture_at_m", "lik_mixture_conformal", "lik_mixture_tempered",
              "network_mixture", "network_quantiles")
DIAGNOSTIC = ("oracle_level",)
#: Diagnostics of the per-cell distributions (not candidates: nothing calibrated).
DISTRIBUTION_DIAGNOSTIC = ("network_raw",)
#: The candidates measured before the per-cell distributions (``--candidates distributions``
#: leaves them out: the quantile regressions cost most of the scoring).
EARLIER = set(CANDIDATES[1:9]) | set(DIAGNOSTIC)
#: The candidates scored (None: all; `main`'s ``--candidates``).
SCORED: set[str] | None = None
#: Hidden values the quantile regressions are fitted on (a seeded subsample).
FIT_VALUES = 4000
#: The imputation's options where the SpaLSTF diffusion network competes (``--network``): it
#: joins the default predictors, with 16 samples per cell (the default 4 give no 5-95%).
NETWORK_OPTIONS = {"predictors": (*spalstf.config.DEFAULT_PREDICTORS, "network"),
                   "n_samples": 16}


# -- recording one fold ----------------------------------------------------------------------
def likelihood_posterior(source, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(each cell's posterior over the count likelihood's clusters (cells x clusters), the
    clusters' target genes on the output scale (clusters x targets)) of a `ColumnSource`'s
    model, read from the cells' own known genes (the raw view); None without the predictor.
    The predictor prepared on the raw view where the stack has it, else one prepared here as
    `ColumnSource` prepares its own (the same statistics over the whole ST)."""
    model = source.model
    if "likelihood" not in model.predictors:
        return None
    predictor = source.prepared.get(("likelihood", "raw")) or getattr(source, "_bench_lik",
                                                                      None)
    if predictor is None:
        original = model.predictors["likelihood"]
        predictor = type(original).from_state(original.state(), source.config)
        predictor.prepare(spaced_blocks(source._normalised, source.expr.n_cells,
                                        source.config.batch_size), device=source.device)
        source._bench_lik = predictor
    weights = predictor.cluster_posterior(source._normalised(cells))
    return (weights.astype(np.float32),
            model.target_scaler.inverse(predictor.targets).astype(np.float32))


def record_fold(st, sc, known: list[str], held: list[str], *, network: int | None = None
                ) -> dict[str, np.ndarray]:
    """Run the imputation of `held` from `known` (at the defaults; `network`: the diffusion
    network added to the predictors, `NETWORK_OPTIONS`, trained for that many updates) and
    record what the interval reads, with the count likelihood's posterior over its clusters
    and the network's samples."""
    seen: dict = {"calls": [], "samples": []}
    learn, interval, spread = (selfcheck.learn, stack_module.Stack.interval,
                               stack_module.Stack.spread)
    model_columns = spalstf.Model.columns
    predict, sample_chunk = columns_module.ColumnSource.predict, sample_module.sample_chunk

    def recording_sample_chunk(*args, **kwargs):
        residuals, centre = sample_chunk(*args, **kwargs)
        seen["samples"].append(centre[None] + residuals)
        return residuals, centre

    def recording_predict(self, cells, *, progress=False):
        seen["samples"] = []
        out = predict(self, cells, progress=progress)
        samples = None
        if seen["samples"]:  # the network's, model space -> the output scale
            samples = self.model.target_scaler.inverse(
                np.concatenate(seen["samples"], axis=1)).astype(np.float16)
        seen["calls"].append({"after_learn": "inner" in seen,
                              "targets": list(self.model.target_genes),
                              "cells": np.asarray(cells).copy(),
                              "posterior": likelihood_posterior(self, np.asarray(cells)),
                              "samples": samples})
        return out

    def sampling_columns(self, expr, cfg, columns, **kwargs):
        # The imputation predicts only the stack's columns of positive weight: where the
        # self-check gave the network none, its samples of the held-out genes are drawn all
        # the same (the stack ignores the extra column: the combination is unchanged).
        if "inner" in seen:
            columns = [*columns, *[c for c in seen["network_columns"] if c not in columns]]
        return model_columns(self, expr, cfg, columns, **kwargs)

    def recording_learn(inner, *, level):
        result = learn(inner, level=level)
        seen["network_columns"] = [k for k in inner.columns if k.startswith("network|")]
        combined, spread_ = selfcheck.cross_fitted(inner.columns, inner.truth, inner.fold_of)
        seen["inner"] = {"own_truth": inner.own_truth, "counts": inner.counts,
                         "depth": inner.depth, "combined": combined, "spread": spread_,
                         "fold_of": inner.fold_of, "weights": result.stack.weights,
                         "genes": np.array(inner.genes),
                         **{"col:" + k: v.astype(np.float16) for k, v in inner.columns.items()
                            if k in result.stack.weights}}
        seen["outer"] = []
        return result

    def recording_spread(self, predictions):
        seen["predictions"] = predictions
        return spread(self, predictions)

    def recording_interval(self, combined, spread_, depth=None):
        bounds = interval(self, combined, spread_, depth)
        if "outer" in seen:  # the imputation's chunks (the self-check's calls come before)
            seen["outer"].append((combined, bounds, {k: v.astype(np.float16) for k, v in
                                                     seen["predictions"].items()
                                                     if k in self.weights}, spread_))
        return bounds

    selfcheck.learn = recording_learn
    stack_module.Stack.spread, stack_module.Stack.interval = recording_spread, recording_interval
    columns_module.ColumnSource.predict = recording_predict
    sample_module.sample_chunk = recording_sample_chunk
    if network is not None:
        spalstf.Model.columns = sampling_columns
    try:
        start = time.perf_counter()
        result = spalstf.impute(st[:, known].copy(), sc, genes=list(held), seed=0,
                                progress=False,
                                **({} if network is None else
                                   {**NETWORK_OPTIONS, "max_steps": network}))
        seconds = time.perf_counter() - start
    finally:
        selfcheck.learn = learn
        stack_module.Stack.spread, stack_module.Stack.interval = spread, interval
        columns_module.ColumnSource.predict = predict
        sample_module.sample_chunk = sample_chunk
        spalstf.Model.columns = model_columns
    order = [list(result.var_names).index(g) for g in held]
    chunks, inner = seen["outer"], seen["inner"]

    def joined(i):
        return np.concatenate([c[i] for c in chunks])[:, order]

    bounds = [c[1] for c in chunks]
    out = {"o_m": joined(0), "o_spread": joined(3),
           "o_lower": (np.concatenate([b[0] for b in bounds])[:, order] if bounds[0] else
                       np.full_like(joined(0), np.nan)),
           "o_upper": (np.concatenate([b[1] for b in bounds])[:, order] if bounds[0] else
                       np.full_like(joined(0), np.nan)),
           **{"o_col:" + k: np.concatenate([c[2][k] for c in chunks])[:, order]
              for k in chunks[0][2]},
           **{"i_" + k: v for k, v in inner.items() if k != "weights"},
           "weight_names": np.array(list(inner["weights"])),
           "weights": np.array(list(inner["weights"].values())),
           "seconds": np.float64(seconds),
           **per_cell_distributions(seen["calls"], inner, held, st.n_obs)}
    return out


def per_cell_distributions(calls: list[dict], inner: dict, held: list[str], n_cells: int
                           ) -> dict[str, np.ndarray]:
    """The recorded posteriors and samples put in the order of the records' arrays: per
    self-check fold f (its hidden genes, the columns of ``i_`` arrays with fold_of == f)
    ``i_lik_w<f>``, ``i_lik_t<f>`` and ``i_net<f>``; for the held-out genes ``o_lik_w``,
    ``o_lik_t`` and ``o_net`` (samples x cells x genes)."""
    out: dict[str, np.ndarray] = {}
    fold_of = inner["fold_of"]
    before = [c for c in calls if not c["after_learn"]]
    for f in np.unique(fold_of):
        # the inner fold's call: the one whose targets are that fold's hidden genes
        genes = list(inner["genes"][fold_of == f])
        call = [c for c in before if c["targets"] == genes][0]
        if call["posterior"] is not None:
            out[f"i_lik_w{f}"], out[f"i_lik_t{f}"] = call["posterior"]
        if call["samples"] is not None:
            out[f"i_net{f}"] = call["samples"]
    after = [c for c in calls if c["after_learn"] and sorted(c["targets"]) == sorted(held)]
    if after:
        order = [after[0]["targets"].index(g) for g in held]
        for key, getter in (("o_lik", lambda c: c["posterior"]), ("o_net",
                                                                    lambda c: c["samples"])):
            parts = [(c["cells"], getter(c)) for c in after if getter(c) is not None]
            if not parts:
                continue
            if key == "o_lik":
                w = np.zeros((n_cells, parts[0][1][0].shape[1]), np.float32)
                for cells, (weights, _) in parts:
                    w[cells] = weights
                out["o_lik_w"], out["o_lik_t"] = w, parts[0][1][1][:, order]
            else:
                net = np.zeros((parts[0][1].shape[0], n_cells, len(held)), np.float16)
                for cells, samples in parts:
                    net[:, cells] = samples[:, :, order]
                out["o_net"] = net
    return out


def cache_paths(name: str, *, network: int | None = None) -> list[Path]:
    """The folds' records; `network`: those with the network trained for that many updates."""
    tag = "" if network is None else f"_network{network}"
    return [CACHE / f"{name}{tag}_{fold}.npz" for fold in range(5)]


def recorded(path: Path, *, network: int | None = None) -> bool:
    """Whether a cached record holds what the candidates read (records made before the
    count likelihood's posterior was recorded do not, nor network records made before the
    network's samples of the held-out genes were drawn where the stack dropped it)."""
    if not path.exists():
        return False
    with np.load(path) as r:
        return "o_lik_w" in r.files and (network is None or "o_net" in r.files)


def record(name: str, *, network: int | None = None) -> list[Path]:
    """Every fold's record of a data set (computed once, then read from the cache)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    paths = cache_paths(name, network=network)
    if all(recorded(p, network=network) for p in paths):
        return paths
    st, sc = U.load(name)
    shared = [g for g in st.var_names if g in set(sc.var_names)]
    st = st[:, shared].copy()
    counts = U.dense(st.X)
    for fold, held in enumerate(gene_folds(shared, 5, 0)):
        if recorded(paths[fold], network=network):
            continue
        known = [g for g in shared if g not in set(held)]
        total = counts[:, [shared.index(g) for g in known]].sum(1)
        values = record_fold(st, sc, known, list(held), network=network)
        # a file handle: given a path not ending in .npz (the temporary's), numpy appends it
        with atomic_path(paths[fold]) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, o_counts=counts[:, [shared.index(g) for g in held]],
                                o_depth=total, **values)
        print(f"{name} fold {fold}: recorded ({float(values['seconds']):.0f} s)", flush=True)
    return paths


# -- the candidates --------------------------------------------------------------------------
def features(m, spread, depth, columns: dict, weights: dict, nb) -> dict[str, np.ndarray]:
    """Per-value features of the quantile regressions (cells x genes each)."""
    m, spread = np.asarray(m, np.float64), np.asarray(spread, np.float64)
    depth = np.broadcast_to(depth, m.shape)
    low, high = nb.count_quantiles(m, spread, depth, beta=ALPHA / 2)
    factor = np.divide(1e4, depth, out=np.zeros_like(depth), where=depth > 0)
    stack_ = np.stack([np.asarray(columns[k], np.float64) for k in weights], -1)
    w = np.array(list(weights.values()))
    w = w / w.sum()
    gene = {"gene_mean": m.mean(0), "gene_sd": m.std(0),
            "gene_p05": np.quantile(m, 0.05, axis=0), "gene_p95": np.quantile(m, 0.95, axis=0),
            "level_spread": level_spread(stack_, w)}
    return {"m": m, "nb_low": np.log1p(low * factor), "nb_high": np.log1p(high * factor),
            "spread": spread, "col_min": stack_.min(-1), "col_max": stack_.max(-1),
            **{k: np.broadcast_to(v, m.shape) for k, v in gene.items()}}


def level_spread(stack_: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per gene: the weighted SD of the columns' means over the cells."""
    means = stack_.mean(0)
    return np.sqrt((((means - (means * w).sum(-1, keepdims=True)) ** 2) * w).sum(-1))


def quantile_model(kind: str, x: np.ndarray, y: np.ndarray, q: float):
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import QuantileRegressor

    if kind == "linear":
        return QuantileRegressor(quantile=q, alpha=0.0, solver="highs").fit(x, y).predict
    return HistGradientBoostingRegressor(loss="quantile", quantile=q, max_iter=100,
                                         max_leaf_nodes=15, min_samples_leaf=50,
                                         random_state=0).fit(x, y).predict


def cqr(kind: str, f_in: dict, y: np.ndarray, fold_of: np.ndarray, f_out: dict):
    """Conformalised quantile regression (see the module's docstring)."""
    rng = np.random.default_rng(0)
    names = list(f_in)
    x = np.stack([f_in[k].ravel() for k in names], 1)
    yv = y.ravel()
    folds = np.broadcast_to(fold_of, y.shape).ravel()

    def fit(rows):
        if len(rows) > FIT_VALUES:
            rows = rng.choice(rows, FIT_VALUES, replace=False)
        return (quantile_model(kind, x[rows], yv[rows], ALPHA / 2),
                quantile_model(kind, x[rows], yv[rows], 1 - ALPHA / 2))

    def bounds(models, z):
        low = np.maximum(models[0](z), 0)
        return low, np.maximum(models[1](z), low)

    scores = []
    for f in np.unique(folds):
        low, high = bounds(fit(np.flatnonzero(folds != f)), x[folds == f])
        scores.append(np.maximum(low - yv[folds == f], yv[folds == f] - high))
    s = np.concatenate(scores)
    margin = np.quantile(s, min(1.0, math.ceil((len(s) + 1) * (1 - ALPHA)) / len(s)),
                         method="higher")
    z = np.stack([f_out[k].ravel() for k in names], 1)
    low, high = bounds(fit(np.arange(len(yv))), z)
    shape = f_out["m"].shape
    return np.clip(low - margin, 0, None).reshape(shape), (high + margin).reshape(shape)


def nb_tails(nb, r: dict, out: tuple, *, per_stratum: bool):
    """The NB with each tail's probability calibrated on its own (overall or per stratum)."""
    x, m = r["i_counts"].ravel(), np.clip(r["i_combined"].ravel().astype(np.float64), 0, None)
    s, d = r["i_spread"].ravel().astype(np.float64), r["i_depth"].ravel()
    ok = d > 0
    x, m, s, d = x[ok], m[ok], s[ok], d[ok]
    stratum = nb.strata(m, s, d)
    mu = nb.mean_count(m, s, d)
    theta = nb.theta[stratum]
    p = theta / (theta + mu)
    low_score = stats.nbinom.cdf(x, theta, p)
    high_score = 1.0 - stats.nbinom.cdf(x - 1, theta, p)

    def tail(score):
        k = max(int(math.floor(ALPHA / 2 * (len(score) + 1))), 1)
        return min(max(float(np.sort(score)[k - 1]), 1e-9), 0.4999)

    groups = np.unique(stratum) if per_stratum else [None]
    m_o, s_o, d_o = out
    m_o = np.asarray(m_o, np.float64)
    s_o, d_o = np.broadcast_to(s_o, m_o.shape), np.broadcast_to(d_o, m_o.shape)
    st_o = nb.strata(m_o, s_o, d_o)
    low, high = np.zeros_like(m_o), np.zeros_like(m_o)
    for g in groups:
        rows = slice(None) if g is None else stratum == g
        where = np.ones(m_o.shape, bool) if g is None else st_o == g
        low[where] = nb.count_quantiles(m_o, s_o, d_o, beta=tail(low_score[rows]))[0][where]
        high[where] = nb.count_quantiles(m_o, s_o, d_o, beta=tail(high_score[rows]))[1][where]
    factor = np.divide(1e4, d_o, out=np.zeros_like(d_o), where=d_o > 0)
    return np.log1p(low * factor), np.log1p(high * factor)


def rank_in_gene(m: np.ndarray) -> np.ndarray:
    return (np.argsort(np.argsort(m, axis=0), axis=0) + 0.5) / m.shape[0]


def level_column(r: dict, weights: dict, train: np.ndarray | None = None
                 ) -> tuple[str, float]:
    """The column (or "m" itself) whose per-gene means match the hidden genes' (those of
    `train`, all by default) best after one shift (cross-fitted over the self-check's folds),
    and that shift."""
    truth = r["i_own_truth"].astype(np.float64)
    train = np.ones(truth.shape[1], bool) if train is None else train
    fold_of = r["i_fold_of"][train]
    target = truth.mean(0)[train]
    levels = {k: v[train] for k, v in gene_levels(r, weights, "i_").items()}

    def error(level):
        gap, held = target - level, np.empty_like(target)
        for f in np.unique(fold_of):
            other = fold_of != f if (fold_of != f).any() else fold_of == f
            held[fold_of == f] = gap[fold_of == f] - np.median(gap[other])
        return float(np.sqrt(np.mean(held ** 2)))

    best = min(levels, key=lambda k: error(levels[k]))
    return best, float(np.median(target - levels[best]))


def gene_levels(r: dict, weights: dict, side: str) -> dict[str, np.ndarray]:
    """Per gene: the mean over the cells of m ("m") and of each weighted column."""
    m = r["i_combined" if side == "i_" else "o_m"].astype(np.float64)
    return {"m": m.mean(0), **{k: r[side + "col:" + k].astype(np.float64).mean(0)
                               for k in weights}}


def moved(r: dict, weights: dict, side: str, choice: tuple[str, float]) -> np.ndarray:
    """m of one side moved per gene to the chosen level plus its shift."""
    m = r["i_combined" if side == "i_" else "o_m"].astype(np.float64)
    level = gene_levels(r, weights, side)[choice[0]]
    return np.clip(m + (level + choice[1] - m.mean(0)), 0, None)


def level_choice(r: dict, weights: dict) -> bool:
    """Whether the level-moved NB scores below the plain NB on the hidden genes, each
    self-check fold's genes scored by both learnt on the other folds' genes."""
    folds = r["i_fold_of"]
    m_all = r["i_combined"].astype(np.float64)
    truth = r["i_own_truth"].astype(np.float64)
    totals = {"plain": 0.0, "level": 0.0}
    for f in np.unique(folds):
        train, test = folds != f, folds == f
        if not train.any():
            return False
        choice = level_column(r, weights, train)
        m_moved = moved(r, weights, "i_", choice)
        for key, m in (("plain", m_all), ("level", m_moved)):
            model = I.fit(r["i_counts"][:, train], r["i_depth"][:, train], m[:, train],
                          r["i_spread"][:, train], level=1 - ALPHA)
            if model is None:
                return False
            low, high = model.interval(m[:, test], r["i_spread"][:, test],
                                       r["i_depth"][:, test])
            totals[key] += float(U.interval_score(truth[:, test], low, high).sum())
    return totals["level"] < totals["plain"]


# -- per-cell predictive distributions: mixtures of Poisson counts at the cell's depth ---------
#: Components of a value's mixture kept (the heaviest; weights renormalised): the posterior
#: over 100 clusters puts almost all its mass on a few, and the quantile search costs one
#: Poisson CDF per component and step.
TOP = 16
#: Hidden values the mixtures' calibrations read at most (a seeded subsample).
CALIBRATION_VALUES = 60_000
#: Tempering exponents of the posterior tried (`lik_mixture_tempered`): 1 the posterior as
#: the likelihood made it, 0 the clusters' prior sizes alone.
TEMPERS = (1.0, 0.25, 0.0)


#: Counts `Mixture.quantiles` walks up one at a time; the values whose quantile lies beyond
#: (a heavy NB tail at a tiny tail level) are found by bisection.
WALK = 2000
#: Sizes (NB dispersion) of the mixtures' components tried (`with_size`); inf: Poisson.
SIZES = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 100.0, math.inf)


class Mixture:
    """Per value (n values): weights (n, k) over components and each component's expected
    count mu (n, k); the value's count is the weighted mixture of Poisson(mu) (or of
    NB(mu, size) with a finite `size`), read on the log scale of the truth,
    log1p(count / depth x 1e4)."""

    def __init__(self, weights: np.ndarray, mu: np.ndarray, depth: np.ndarray,
                 size: float = math.inf) -> None:
        import torch

        self.w = torch.as_tensor(np.asarray(weights, np.float64))
        self.mu = torch.as_tensor(np.asarray(mu, np.float64))
        self.depth = np.asarray(depth, np.float64)
        self.size = size

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """P(count <= x) per value (0 where x < 0)."""
        import torch
        from scipy import special

        x_t = torch.as_tensor(np.asarray(x, np.float64))[:, None]
        if math.isinf(self.size):
            per = torch.special.gammaincc(torch.clamp(x_t, min=0) + 1, self.mu)
        else:  # NB: P(X <= x) = I_p(size, x + 1), p = size / (size + mu)
            mu = self.mu.numpy()
            per = torch.as_tensor(special.betainc(self.size, np.clip(x_t.numpy(), 0, None) + 1,
                                                  self.size / (self.size + mu)))
        p = (self.w * per).sum(1)
        return torch.where(x_t[:, 0] < 0, torch.zeros_like(p), p).numpy()

    def log_likelihood(self, x: np.ndarray, size: float) -> float:
        """The counts' log-likelihood under the mixture with components of `size`."""
        mu = np.maximum(self.mu.numpy(), 1e-12)
        x = np.asarray(x, np.float64)[:, None]
        if math.isinf(size):
            log_p = stats.poisson.logpmf(x, mu)
        else:
            log_p = stats.nbinom.logpmf(x, size, size / (size + mu))
        w = np.maximum(self.w.numpy(), 1e-300)
        return float(np.logaddexp.reduce(log_p + np.log(w), axis=1).sum())

    def with_size(self, size: float) -> Mixture:
        return Mixture(self.w.numpy(), self.mu.numpy(), self.depth, size)

    def quantiles(self, levels: tuple[float, ...]) -> np.ndarray:
        """The smallest count whose CDF reaches each level, per value (len(levels), n): one
        pass up the counts, each component's log-pmf carried by its recursion (exact for
        Poisson and NB; log space, so deep cells' large counts do not underflow), values
        dropped once they reach the highest level."""
        w, mu = self.w.numpy(), self.mu.numpy()
        levels = np.asarray(levels, np.float64)
        out = np.full((len(levels), len(mu)), np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            if math.isinf(self.size):
                lp, step = -mu, np.log(mu)
            else:
                p = self.size / (self.size + mu)
                lp, step = self.size * np.log(p), np.log1p(-p)
        active, cdf, x = np.arange(len(mu)), np.zeros(len(mu)), 0
        while active.size:
            if x >= WALK:  # the few values left in a long tail: by bisection instead
                self._bisect(active, levels, out)
                break
            cdf = cdf + (w[active] * np.exp(lp)).sum(1)
            hit = (cdf[None] >= levels[:, None] - 1e-12) & np.isnan(out[:, active])
            rows, cols = np.nonzero(hit)
            out[rows, active[cols]] = x
            still = np.isnan(out[:, active]).any(0)
            active, cdf, lp, step = active[still], cdf[still], lp[still], step[still]
            x += 1
            grow = (0.0 if math.isinf(self.size) else np.log(x - 1 + self.size))
            lp = lp + step + grow - np.log(x)
        return np.nan_to_num(out, nan=float(x))

    def _bisect(self, rows: np.ndarray, levels: np.ndarray, out: np.ndarray) -> None:
        """`quantiles` of the values `rows` not reached yet, by bisection on their CDF."""
        part = Mixture(self.w.numpy()[rows], self.mu.numpy()[rows], self.depth[rows],
                       self.size)
        for i, p in enumerate(levels):
            todo = np.isnan(out[i, rows])
            if not todo.any():
                continue
            low = np.full(len(rows), float(WALK) - 1)
            high = np.full(len(rows), 2.0 * WALK)
            while not (part.cdf(high) >= p - 1e-12).all():
                high = np.where(part.cdf(high) >= p - 1e-12, high, high * 2)
            while (high - low > 1).any():
                mid = np.floor((low + high) / 2)
                reached = part.cdf(mid) >= p - 1e-12
                open_ = high - low > 1
                high = np.where(open_ & reached, mid, high)
                low = np.where(open_ & ~reached, mid, low)
            out[i, rows[todo]] = high[todo]

    def quantile(self, p: float) -> np.ndarray:
        return self.quantiles((p,))[0]

    def log_quantile(self, p: float) -> np.ndarray:
        return self.on_log_scale(self.quantile(p))

    def tail_levels(self, x: np.ndarray) -> tuple[float, float]:
        """Each tail's probability such that 5% of the counts `x` fall beyond it (as
        `nb_tails`: the k-th smallest of P(X <= x) and of P(X >= x))."""
        low_score, high_score = self.cdf(x), 1.0 - self.cdf(x - 1)

        def tail(score):
            k = max(int(math.floor(ALPHA / 2 * (len(score) + 1))), 1)
            return min(max(float(np.sort(score)[k - 1]), 1e-9), 0.4999)

        return tail(low_score), tail(high_score)

    def interval(self, levels: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        low, high = self.quantiles((levels[0], 1 - levels[1]))
        return self.on_log_scale(low), self.on_log_scale(high)

    def on_log_scale(self, counts: np.ndarray) -> np.ndarray:
        factor = np.divide(1e4, self.depth, out=np.zeros_like(self.depth),
                           where=self.depth > 0)
        return np.log1p(counts * factor)


def heaviest(weights: np.ndarray, top: int = TOP) -> tuple[np.ndarray, np.ndarray]:
    """(indices, renormalised weights) of each row's `top` heaviest components."""
    top = min(top, weights.shape[1])
    idx = np.argpartition(-weights, top - 1, axis=1)[:, :top]
    w = np.take_along_axis(weights, idx, 1).astype(np.float64)
    return idx, w / np.maximum(w.sum(1, keepdims=True), 1e-300)


def posterior_mixture(weights: np.ndarray, targets: np.ndarray, depth: np.ndarray,
                      cells: np.ndarray, genes: np.ndarray, *, m: np.ndarray | None = None,
                      temper: float = 1.0) -> Mixture:
    """The mixture of the values (cells[i], genes[i]): each cluster's target expression at the
    cell's depth, weighted by the cell's posterior (tempered: w^temper, renormalised); with
    `m`, every cluster's expected count scaled so that the mixture's mean expression is
    expm1(m) (the mixture moved to the combined prediction's level)."""
    w = np.asarray(weights, np.float64)
    if temper != 1.0:
        w = np.exp(temper * np.log(np.maximum(w, 1e-300)))
        w = w / w.sum(1, keepdims=True)
    idx, w_top = heaviest(w)
    expression = np.expm1(np.clip(np.asarray(targets, np.float64), 0, None))  # (K, genes)
    e = expression[idx[cells], genes[:, None]]  # (n, top)
    w_n = w_top[cells]
    if m is not None:
        mean = (w_n * e).sum(1)
        wanted = np.expm1(np.clip(np.asarray(m, np.float64), 0, None))
        e = np.where(mean[:, None] > 0, e * (wanted / np.maximum(mean, 1e-300))[:, None],
                     wanted[:, None])
    return Mixture(w_n, e * depth[:, None] / 1e4, depth)


def sample_mixture(samples: np.ndarray, depth: np.ndarray, cells: np.ndarray,
                   genes: np.ndarray) -> Mixture:
    """The mixture of the network's samples (samples x cells x genes, log scale) of the values
    (cells[i], genes[i]), equally weighted, each at the cell's depth."""
    e = np.expm1(np.clip(samples[:, cells, genes].astype(np.float64).T, 0, None))
    return Mixture(np.full(e.shape, 1.0 / e.shape[1]), e * depth[:, None] / 1e4, depth)


def calibration_values(shape: tuple[int, int], depth: np.ndarray) -> tuple[np.ndarray,
                                                                            np.ndarray]:
    """(cells, genes) of the hidden values the calibrations read: those of cells with a
    depth, at most `CALIBRATION_VALUES` (seeded)."""
    cells, genes = np.nonzero(np.asarray(depth) > 0)
    if len(cells) > CALIBRATION_VALUES:
        keep = np.sort(np.random.default_rng(0).choice(len(cells), CALIBRATION_VALUES,
                                                       replace=False))
        cells, genes = cells[keep], genes[keep]
    return cells, genes


def everywhere(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    cells, genes = np.indices(shape)
    return cells.ravel(), genes.ravel()


def inner_mixtures(r: dict, make) -> tuple[Mixture, np.ndarray, np.ndarray]:
    """(the mixture of the calibration values, their counts, their truth) over the
    self-check's folds; `make(fold, depth, cells, genes_in_fold)` builds a fold's mixture."""
    depth = r["i_depth"]
    cells, genes = calibration_values(depth.shape, depth)
    fold_of = r["i_fold_of"]
    parts, order = [], []
    for f in np.unique(fold_of):
        columns = np.flatnonzero(fold_of == f)
        mine = np.isin(genes, columns)
        local = np.searchsorted(columns, genes[mine])
        parts.append(make(f, depth[cells[mine], genes[mine]], cells[mine], local,
                          genes[mine]))
        order.append(np.flatnonzero(mine))
    order = np.concatenate(order)
    w = np.concatenate([p.w.numpy() for p in parts])
    mu = np.concatenate([p.mu.numpy() for p in parts])
    d = np.concatenate([p.depth for p in parts])
    sort = np.argsort(order)
    mixture = Mixture(w[sort], mu[sort], d[sort])
    return mixture, r["i_counts"][cells, genes], r["i_own_truth"][cells, genes].astype(
        np.float64)


def best_size(mixture: Mixture, x: np.ndarray) -> float:
    """The components' size in `SIZES` under which the hidden counts are likeliest."""
    return max(SIZES, key=lambda size: mixture.log_likelihood(x, size))


def conformal_margin(mixture: Mixture, truth: np.ndarray) -> float:
    """The split-conformal margin (value scale) of [Q(5%), Q(95%)] on the hidden values."""
    low, high = mixture.log_quantile(ALPHA / 2), mixture.log_quantile(1 - ALPHA / 2)
    s = np.maximum(low - truth, truth - high)
    return float(np.quantile(s, min(1.0, math.ceil((len(s) + 1) * (1 - ALPHA)) / len(s)),
                             method="higher"))


def distribution_candidates(r: dict, truth_shape: tuple[int, int]
                            ) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """The per-cell predictive distributions (the count likelihood's posterior and, where
    recorded, the network's samples), each calibrated on the hidden known genes."""
    res = {}
    depth_o = np.broadcast_to(r["o_depth"][:, None], truth_shape).astype(np.float64)
    cells_o, genes_o = everywhere(truth_shape)
    d_o = depth_o[cells_o, genes_o]
    m_o = np.asarray(r["o_m"], np.float64)[cells_o, genes_o]

    def shaped(bounds):
        return tuple(np.asarray(b).reshape(truth_shape) for b in bounds)

    if "o_lik_w" in r:
        def lik_inner(temper, at_m):
            def make(f, d, cells, local, genes):
                m = r["i_combined"][cells, genes] if at_m else None
                return posterior_mixture(r[f"i_lik_w{f}"], r[f"i_lik_t{f}"], d, cells, local,
                                         m=m, temper=temper)
            return make

        def lik_outer(temper, at_m):
            return posterior_mixture(r["o_lik_w"], r["o_lik_t"], d_o, cells_o, genes_o,
                                     m=m_o if at_m else None, temper=temper)

        for name, at_m, learn_size in (("lik_mixture", False, False),
                                       ("lik_mixture_nb", False, True),
                                       ("lik_mixture_at_m", True, True)):
            start = time.perf_counter()
            inner, x, _ = inner_mixtures(r, lik_inner(1.0, at_m))
            size = best_size(inner, x) if learn_size else math.inf
            inner = inner.with_size(size)
            levels = inner.tail_levels(x)
            res[name] = (*shaped(lik_outer(1.0, at_m).with_size(size).interval(levels)),
                         time.perf_counter() - start)
        start = time.perf_counter()
        inner, x, y = inner_mixtures(r, lik_inner(1.0, False))
        margin = conformal_margin(inner, y)
        outer = lik_outer(1.0, False)
        res["lik_mixture_conformal"] = (
            np.clip(outer.log_quantile(ALPHA / 2) - margin, 0, None).reshape(truth_shape),
            (outer.log_quantile(1 - ALPHA / 2) + margin).reshape(truth_shape),
            time.perf_counter() - start)
        # the posterior's sharpness chosen on the hidden genes: the tempering whose calibrated
        # interval scores best there (each tempering's two tail levels learnt on one self-check
        # fold's genes, scored on the other's)
        start = time.perf_counter()
        best, best_score = 1.0, np.inf
        for temper in TEMPERS:
            inner, x, y = inner_mixtures(r, lik_inner(temper, False))
            total = 0.0
            fold = r["i_fold_of"][calibration_values(r["i_depth"].shape, r["i_depth"])[1]]
            for f in np.unique(fold):
                train, test = fold != f, fold == f
                if not train.any():
                    train = test
                part = Mixture(inner.w[train].numpy(), inner.mu[train].numpy(),
                               inner.depth[train])
                levels = part.tail_levels(x[train])
                held = Mixture(inner.w[test].numpy(), inner.mu[test].numpy(),
                               inner.depth[test])
                low, high = held.interval(levels)
                total += float(U.interval_score(y[test], low, high).sum())
            if total < best_score:
                best, best_score = temper, total
        inner, x, _ = inner_mixtures(r, lik_inner(best, False))
        res["lik_mixture_tempered"] = (*shaped(lik_outer(best, False).interval(
            inner.tail_levels(x))), time.perf_counter() - start)
    if "o_net" in r:
        start = time.perf_counter()

        def net_make(f, d, cells, local, genes):
            return sample_mixture(r[f"i_net{f}"], d, cells, local)

        inner, x, y = inner_mixtures(r, net_make)
        size = best_size(inner, x)
        outer = sample_mixture(r["o_net"], d_o, cells_o, genes_o).with_size(size)
        res["network_mixture"] = (*shaped(outer.interval(inner.with_size(size).tail_levels(x))),
                                  time.perf_counter() - start)
        # the samples' own empirical 5-95% (on the expression scale, no count noise), widened
        # by the split-conformal margin on the hidden values
        start = time.perf_counter()
        lo_i, hi_i = [], []
        y_i = []
        cells, genes = calibration_values(r["i_depth"].shape, r["i_depth"])
        fold_of = r["i_fold_of"]
        for f in np.unique(fold_of):
            columns = np.flatnonzero(fold_of == f)
            mine = np.isin(genes, columns)
            local = np.searchsorted(columns, genes[mine])
            v = r[f"i_net{f}"][:, cells[mine], local].astype(np.float64)
            lo_i.append(np.quantile(v, ALPHA / 2, axis=0))
            hi_i.append(np.quantile(v, 1 - ALPHA / 2, axis=0))
            y_i.append(r["i_own_truth"][cells[mine], genes[mine]].astype(np.float64))
        lo_i, hi_i, y_i = map(np.concatenate, (lo_i, hi_i, y_i))
        s = np.maximum(lo_i - y_i, y_i - hi_i)
        margin = float(np.quantile(s, min(1.0, math.ceil((len(s) + 1) * (1 - ALPHA)) / len(s)),
                                   method="higher"))
        v = r["o_net"].astype(np.float64)
        # the diagnostic: the samples' own 5-95%, not calibrated (nothing learnt on the hidden
        # genes: what the network says of itself)
        res["network_raw"] = (np.quantile(v, ALPHA / 2, axis=0),
                              np.quantile(v, 1 - ALPHA / 2, axis=0), 0.0)
        res["network_quantiles"] = (
            np.clip(np.quantile(v, ALPHA / 2, axis=0) - margin, 0, None),
            np.quantile(v, 1 - ALPHA / 2, axis=0) + margin, time.perf_counter() - start)
    return res


def candidates(r: dict, truth: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """(lower, upper, seconds) of every candidate on the held-out genes of one fold."""
    weights = dict(zip(r["weight_names"], r["weights"], strict=True))
    out_args = (r["o_m"], r["o_spread"], r["o_depth"][:, None])
    fit_args = (r["i_counts"], r["i_depth"], r["i_combined"], r["i_spread"])
    res = {}
    start = time.perf_counter()
    nb = I.fit(*fit_args, level=1 - ALPHA)
    res["nb"] = (*nb.interval(*out_args), time.perf_counter() - start)
    nb_seconds = res["nb"][2]
    y_in = r["i_own_truth"].astype(np.float64)
    if SCORED is None or not SCORED.isdisjoint(EARLIER):  # the earlier candidates
        cols_in = {k: r["i_col:" + k] for k in weights}
        cols_out = {k: r["o_col:" + k] for k in weights}
        f_in = features(r["i_combined"], r["i_spread"], r["i_depth"], cols_in, weights, nb)
        f_out = features(r["o_m"], r["o_spread"], r["o_depth"][:, None], cols_out, weights, nb)
        for kind in ("linear", "boosted"):
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bounds = cqr(kind, f_in, y_in, r["i_fold_of"], f_out)
            res["cqr_" + kind] = (*bounds, nb_seconds + time.perf_counter() - start)
        for name, per_stratum in (("nb_asymmetric", False), ("nb_mondrian", True)):
            start = time.perf_counter()
            bounds = nb_tails(nb, r, out_args, per_stratum=per_stratum)
            res[name] = (*bounds, nb_seconds + time.perf_counter() - start)
        for name, n, (v_in, v_out) in (
                ("nb_by_rank", 3, (rank_in_gene(r["i_combined"].astype(np.float64)),
                                   rank_in_gene(r["o_m"].astype(np.float64)))),
                ("nb_by_level_spread", 2, (f_in["level_spread"], f_out["level_spread"]))):
            start = time.perf_counter()
            model = I.fit(r["i_counts"], r["i_depth"], r["i_combined"], v_in, level=1 - ALPHA,
                          n_spread=n)
            res[name] = (*model.interval(r["o_m"], v_out, r["o_depth"][:, None]),
                         time.perf_counter() - start)
        start = time.perf_counter()
        choice = level_column(r, weights)
        m_in, m_out = moved(r, weights, "i_", choice), moved(r, weights, "o_", choice)
        model = I.fit(r["i_counts"], r["i_depth"], m_in, r["i_spread"], level=1 - ALPHA)
        res["nb_level_column"] = (*model.interval(m_out, r["o_spread"], r["o_depth"][:, None]),
                                  time.perf_counter() - start)
        # the same, kept only where it beats the plain NB on the hidden genes (cross-fitted)
        keep = level_choice(r, weights)
        res["nb_level_chosen"] = (*(res["nb_level_column"][:2] if keep else res["nb"][:2]),
                                  time.perf_counter() - start)
        # the diagnostic: the level of each gene known (inner and held-out alike)
        m_in = np.clip(r["i_combined"] + (y_in.mean(0) - r["i_combined"].mean(0)), 0, None)
        m_out = np.clip(r["o_m"] + (truth.mean(0) - r["o_m"].mean(0)), 0, None)
        model = I.fit(r["i_counts"], r["i_depth"], m_in, r["i_spread"], level=1 - ALPHA)
        res["oracle_level"] = (*model.interval(m_out, r["o_spread"], r["o_depth"][:, None]), 0.0)
    res.update({k: (lo, hi, nb_seconds + sec) for k, (lo, hi, sec) in
                distribution_candidates(r, truth.shape).items()
                if SCORED is None or k in SCORED})
    return res


# -- scoring ---------------------------------------------------------------------------------
def score_set(name: str, paths: list[Path]) -> pd.DataFrame:
    sums: dict[str, list[float]] = {}
    imputation = 0.0
    for path in paths:
        r = dict(np.load(path))
        counts, depth = r["o_counts"], r["o_depth"][:, None]
        truth = np.log1p(np.divide(counts * 1e4, depth, out=np.zeros_like(counts),
                                   where=depth > 0))
        imputation += float(r["seconds"])
        res = candidates(r, truth)
        keep = truth.std(0) > 0
        t, pred = truth[:, keep], np.asarray(r["o_m"], np.float64)[:, keep]
        refs = U.reference_intervals(t, pred)
        res.update({k: (lo, hi, 0.0) for k, (lo, hi) in refs.items() if k != "constant"})
        res["imputation"] = (r["o_lower"], r["o_upper"], 0.0)
        for k, (lo, hi, sec) in res.items():
            if k not in refs:
                lo, hi = np.asarray(lo, np.float64)[:, keep], np.asarray(hi, np.float64)[:, keep]
            acc = sums.setdefault(k, [0.0, 0.0, 0.0, 0.0])
            acc[0] += float(U.interval_score(t, lo, hi).sum())
            acc[1] += float(((t >= lo) & (t <= hi)).sum())
            acc[2] += t.size
            acc[3] += sec
    ref = sums["range"][0] / sums["range"][2]
    rows = [{"dataset": name, "method": k, "coverage": c / n if k not in ("range", "decile")
             else np.nan, "score": s / n, "ratio_range": s / n / ref,
             "cost": sec / imputation} for k, (s, c, n, sec) in sums.items()]
    return pd.DataFrame(rows)


def leave_sets_out(table: pd.DataFrame) -> pd.DataFrame:
    """For each set: the candidate chosen on the others (lowest mean ratio to the range, with
    coverage 0.87-0.93 on each of them) and how it does on the set left out."""
    wide = table[table["method"].isin(CANDIDATES)]
    ratio = wide.pivot(index="dataset", columns="method", values="ratio_range")
    cover = wide.pivot(index="dataset", columns="method", values="coverage")
    rows = []
    if len(ratio.index) < 2:  # nothing to choose on
        return pd.DataFrame(columns=["left_out", "chosen", "ratio_chosen", "ratio_nb",
                                     "coverage_chosen"])
    for left in ratio.index:
        others = ratio.index != left
        ok = ((cover[others] >= 0.87) & (cover[others] <= 0.93)).all()
        pool = ratio.loc[others, ok[ok].index].mean() if ok.any() else ratio.loc[others].mean()
        chosen = pool.idxmin()
        rows.append({"left_out": left, "chosen": chosen,
                     "ratio_chosen": ratio.loc[left, chosen], "ratio_nb": ratio.loc[left, "nb"],
                     "coverage_chosen": cover.loc[left, chosen]})
    return pd.DataFrame(rows)


def write(out: Path, name: str, cmd: str, table: pd.DataFrame) -> None:
    ratio = table.pivot(index="method", columns="dataset", values="ratio_range")
    cover = table.pivot(index="method", columns="dataset", values="coverage")
    cost = table.pivot(index="method", columns="dataset", values="cost")
    order = [m for m in ("imputation", *CANDIDATES, *DIAGNOSTIC, "decile", "range")
             if m in ratio.index]
    loso = leave_sets_out(table)
    text = (f"# Interval candidates on held-out genes (issue 26)\n\nCommand: `{cmd}`\n\n"
            "Each candidate is learnt on the self-check's hidden known genes and scored on the "
            "truly held-out genes of 5-fold leave-genes-out (see the script's docstring). "
            "`imputation`: the interval `spalstf.impute` returned (the count model where the "
            "self-check kept it); `nb`: the count model refitted from the same hidden genes.\n\n"
            "## Interval score / the gene's own 5-95% range (lower is better; target <= 0.95)\n\n"
            + markdown_table(ratio.loc[order].round(3), index_name="method") + "\n\n"
            "## Coverage of the 90% interval (target 0.87-0.93)\n\n"
            + markdown_table(cover.loc[order].dropna(how="all").round(3), index_name="method")
            + "\n\n## Cost: seconds to learn and apply / seconds of the default imputation\n\n"
            + markdown_table(cost.loc[[m for m in order if m in CANDIDATES]].round(3),
                             index_name="method")
            + "\n\n## Chosen by leaving whole data sets out\n\n"
            + markdown_table(loso.set_index("left_out").round(3), index_name="left out")
            + "\n")
    with atomic_path(out / f"{name}.md") as tmp:
        tmp.write_text(text)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    shown = [m for m in order if m not in ("range",)]
    x = np.arange(len(ratio.columns))
    width = 0.8 / len(shown)
    for i, m in enumerate(shown):
        axes[0].bar(x + i * width, ratio.loc[m], width=width, label=m)
        if m in cover.index and cover.loc[m].notna().any():
            axes[1].bar(x + i * width, cover.loc[m], width=width, label=m)
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].axhline(0.95, color="tab:green", lw=0.8, ls="--")
    axes[0].set_title("interval score / gene's own range (held-out genes)")
    axes[1].axhspan(0.87, 0.93, color="tab:green", alpha=0.15)
    axes[1].set_ylim(0.75, 1.0)
    axes[1].set_title("coverage of the 90% interval")
    for ax in axes:
        ax.set_xticks(x + 0.4, ratio.columns, rotation=30, ha="right")
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(out / f"{name}.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def network_section(table: pd.DataFrame, steps: int) -> str:
    """The network records' tables (Markdown): each candidate beside the references, on the
    sets where the network ran."""
    ratio = table.pivot(index="method", columns="dataset", values="ratio_range")
    cover = table.pivot(index="method", columns="dataset", values="coverage")
    cost = table.pivot(index="method", columns="dataset", values="cost")
    order = [m for m in ("imputation", "nb", "lik_mixture", "lik_mixture_nb",
                         "lik_mixture_at_m", "lik_mixture_conformal", "network_mixture",
                         "network_quantiles", "network_raw", "decile", "range")
             if m in ratio.index]
    shown = [m for m in order if m in CANDIDATES]
    return (f"\n## The SpaLSTF network's samples (`--network`: the network added to the "
            f"predictors, {NETWORK_OPTIONS['n_samples']} samples per cell, trained for at most "
            f"{steps} updates: `max_steps`; the default `epochs` and early stopping may end "
            "training sooner)\n\nThe same folds imputed with the network in the stack; every "
            "candidate learnt on that run's hidden known genes. Interval score / the gene's own "
            "5-95% range:\n\n"
            + markdown_table(ratio.loc[order].round(3), index_name="method")
            + "\n\nCoverage:\n\n"
            + markdown_table(cover.loc[[m for m in order if m in cover.index and
                                        cover.loc[m].notna().any()]].round(3),
                             index_name="method")
            + "\n\nCost / that run's imputation (which trains the network):\n\n"
            + markdown_table(cost.loc[shown].round(3), index_name="method") + "\n")


def scored(name: str, paths: list[Path], tag: str, *, reuse: bool) -> pd.DataFrame:
    """`score_set`, kept in the cache (``<set><tag>_scores.csv``) and read from it with
    `reuse`: the sets can then be scored one at a time, in separate runs."""
    path = CACHE / f"{name}{tag}_scores.csv"
    if reuse and path.exists():
        return pd.read_csv(path)
    table = score_set(name, paths)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default=",".join(U.DATASETS))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--name", default="intervals")
    ap.add_argument("--score-only", action="store_true",
                    help="score the cached records only (no imputation)")
    ap.add_argument("--reuse-scores", action="store_true",
                    help="read each set's scores from the cache where a run left them")
    ap.add_argument("--network", default="",
                    help="sets also imputed with the SpaLSTF network in the stack (comma-"
                         "separated; slow on a CPU)")
    ap.add_argument("--network-steps", type=int, default=300,
                    help="the network's training updates (300: Config's default)")
    ap.add_argument("--candidates", default="all",
                    help="'all', or 'distributions': the per-cell distributions beside the "
                         "default NB only (the earlier candidates' scoring is slow)")
    args = ap.parse_args(argv)
    global SCORED
    SCORED = (None if args.candidates == "all" else
              {"nb", *DISTRIBUTION_DIAGNOSTIC} | set(CANDIDATES) - EARLIER
              - {"lik_mixture_tempered"}
              if args.candidates == "distributions" else set(args.candidates.split(",")))
    cmd = "python benchmarks/intervals.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tables, network_tables = [], []
    runs = [(d, None) for d in args.datasets.split(",") if d]
    runs += [(d, args.network_steps) for d in args.network.split(",") if d]
    for name, network in runs:
        if args.score_only:
            # a network record without the held-out genes' samples would leave the network's
            # candidates out of some folds' sums (scored on fewer values than the others)
            paths = [p for p in cache_paths(name, network=network) if p.exists() and
                     (network is None or recorded(p, network=network))]
            print(f"{name}: scoring {len(paths)} of 5 folds' records", flush=True)
        else:
            try:
                paths = record(name, network=network)
            except FileNotFoundError as err:
                print(f"[skip] {name}: {err}")
                continue
        if not paths:
            continue
        tag = "" if network is None else f"_network{network}"
        table = scored(name, paths, tag, reuse=args.reuse_scores)
        if SCORED is not None:  # scores reused from a run of more candidates: these only
            table = table[table["method"].isin(SCORED | {"range", "decile", "imputation"})]
        print(name, tag, "\n", table.round(3).to_string(index=False), flush=True)
        (tables if network is None else network_tables).append(table)
        if tables:
            write(out, args.name, cmd.strip(), pd.concat(tables, ignore_index=True))
        if network_tables:
            section = network_section(pd.concat(network_tables, ignore_index=True),
                                      args.network_steps)
            if tables:  # after the tables `write` has just written
                with (out / f"{args.name}.md").open("a") as f:
                    f.write(section)
            else:  # network sets only: a file of their own (appending would add the
                # section again for each set, after whatever the file held before)
                with atomic_path(out / f"{args.name}.md") as tmp:
                    tmp.write_text("# Interval candidates on held-out genes (issue 26)\n\n"
                                   f"Command: `{cmd.strip()}`\n" + section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
