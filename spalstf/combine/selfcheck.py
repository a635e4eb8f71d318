"""Self-check: how accurate an imputation is likely to be, measured on the user's own data, and
the combination of the base predictions learnt on it.

The ST has no truth for the genes it did not measure, but it has its known genes. The
self-check hides some of them (an inner leave-genes-out, `n_folds` folds over the ST's known
genes), predicts them from the rest with every base prediction of the model (the *columns* of
`spalstf.combine.stack`: each base predictor, read from each view of the ST, read out as the
expression or at the cell's depth), and scores them against their measured values: per-gene
Pearson (PCC) and Spearman (SPCC) correlations, on the log-normalised scale (on panels of
thousands of genes, a seeded sample of `MAX_SCORED_GENES` hidden genes a fold is predicted and
scored: the cost no longer grows with the panel). Target genes are never read (the ST is only
ever read through the known genes of the main run).

From the same hidden genes it learns:

- the weights of the columns (`spalstf.combine.stack.learn_weights`), which the imputation uses
  (`Config.combine="stack"`): a combination chosen on this tissue and platform, not on the
  data sets spalstf was developed on;
- the interval of each value (`spalstf.combine.stack.Stack.calibrate`): conformal, so that its
  coverage holds on genes hidden like these;
- the per-gene confidence (`spalstf.combine.expected.calibrate`): how each gene's
  predictability in the reference maps to its PCC on this ST.

Hiding half the known genes measures a harder problem than the run's, which has them all, so
the accuracy is carried to the full panel (`extrapolate`) along a curve measured here too
(`spalstf.combine.expected`: `panel_curve`, `full_panel`).

The estimate reported (`median_pcc`) is cross-fitted: each fold's genes are combined with the
weights learnt on the other folds' genes, so it is not flattered by having chosen the weights
on the very genes it scores. It is for genes hidden here (measured ST genes, which panels
choose for being informative); genes the panel never measured may be harder.

The inner models are fitted by the function the caller hands in (`spalstf.model`'s
`fit_model`), so that this module imports neither the model nor the API.
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
from spalstf.combine.expected import (
    CURVE_CELLS,
    CURVE_MULTIPLES,
    GENE_FEATURES,
    REFERENCE_CELLS,
    calibrate,
    expected_pcc,
    fit_gene_model,
    full_panel,
    gene_features,
    inner_folds,
    nanmedian,
    panel_curve,
    panel_reference_pcc,
)
from spalstf.config import Config

if TYPE_CHECKING:
    from spalstf.combine.stack import Stack
    from spalstf.data import Expression

logger = logging.getLogger(__name__)

#: The self-check runs by default ("auto") when the ST has at least this many known genes.
MIN_GENES = 8
#: The inner fits together get this share of the main fit's training budget (`max_steps`,
#: and `max_time` when one is set).
FIT_BUDGET_SHARE = 0.5
#: Cells scored (a seeded subsample of the ST when it has more): correlations over 2000 cells
#: are precise to about +-0.02, and the cost no longer grows with the section's size.
MAX_CELLS = 2000
#: Hidden genes predicted and scored per fold (a seeded sample of the fold's, when it hides
#: more): the fold still hides all its genes, so the problem measured is as hard, but with
#: 5,000 known genes each fold's 2,500 hidden genes were the targets of its inner fit, of every
#: column's predictions and of the learning, and the self-check's cost grew with the panel
#: (a median over 500 genes a fold is precise to about +-0.01). Above every panel the outputs
#: are pinned on (at most 558 known genes: 279 hidden a fold), so those score them all.
MAX_SCORED_GENES = 500


@dataclass
class SelfCheckResult:
    """What the self-check measured and learnt.

    Attributes
    ----------
    per_gene
        One row per hidden known gene scored (every hidden gene, but at most
        `MAX_SCORED_GENES` a fold): ``gene``, ``fold``, ``pcc``, ``spcc`` of the combination
        (cross-fitted: with the weights learnt on the other folds' genes).
    scores
        One row per column (``column``, ``predictor``, ``view``, ``readout``): its
        ``median_pcc``, ``median_spcc`` over the hidden genes alone, and its ``weight`` in the
        combination.
    stack
        The combination learnt on all hidden genes (`spalstf.combine.stack.Stack`): its weights and
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
        ``gene_sd``, how far one gene's PCC strays from the per-gene line, and ``gene_model``,
        the per-gene model of the expected PCC (`hidden_gene_model`) that the imputation reads.
    """

    per_gene: pd.DataFrame
    scores: pd.DataFrame
    stack: Stack | None = None
    seconds: float = 0.0
    calibration: dict[str, float] = field(default_factory=dict)
    expected: dict[str, Any] = field(default_factory=dict)

    @property
    def median_pcc(self) -> float:
        return nanmedian(self.per_gene["pcc"])

    @property
    def median_spcc(self) -> float:
        return nanmedian(self.per_gene["spcc"])

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


def cross_fitted(predictions: Mapping[str, np.ndarray], truth: np.ndarray,
                 fold_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(combined, spread) of every hidden gene (cells x genes), each fold's genes combined by
    the weights learnt on the other folds' genes (`spalstf.combine.stack`)."""
    from spalstf.combine.stack import Stack, learn_weights

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
        Each hidden gene's predictability in the reference
        (`spalstf.combine.expected.reference_predictability`).
    cells
        The ST cells scored (a seeded subsample of at most `MAX_CELLS`).
    counts, depth
        With counts input (None with log-normalised input): the hidden genes' counts and, for
        each, the cell's total over the known genes of its own fold (cells x hidden genes):
        what the count model of the interval is learnt on (`spalstf.combine.intervals`).
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


def scored_genes(hidden: Sequence[str], seed: int, fold: int, *,
                 max_genes: int | None = None) -> list[str]:
    """The hidden genes a fold predicts and scores: all of `hidden`, or a seeded sample of
    `max_genes` of them (in their order) when it has more (default `MAX_SCORED_GENES`)."""
    max_genes = MAX_SCORED_GENES if max_genes is None else max_genes
    if len(hidden) <= max_genes:
        return list(hidden)
    keep = np.random.default_rng([seed, 13, fold]).choice(len(hidden), max_genes,
                                                          replace=False)
    return [hidden[i] for i in np.sort(keep)]


def inner_predictions(st_expr, sc_expr, known_pairs: Sequence[tuple[str, str]], cfg: Config,
                      *, n_folds: int, seed: int, log_normalized: bool, device, spatial: Any,
                      progress: bool, fit: Callable[..., Any],
                      fit_budget_share: float = FIT_BUDGET_SHARE,
                      max_cells: int = MAX_CELLS) -> InnerPredictions:
    """The inner leave-genes-out over the ST's known genes: every candidate column's
    predictions of each fold's hidden genes (see `run`, which learns from them)."""
    from spalstf.combine.columns import available_readouts, available_views, candidate_columns
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
    # the genes each fold scores (all hidden genes but on panels of thousands of genes)
    scored = [scored_genes(hidden, seed, i) for i, hidden in enumerate(folds)]
    position = {g: i for i, g in enumerate(st_names)}
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
    hidden_order = [g for fold in scored for g in fold]
    fold_of = np.array([i for i, fold in enumerate(scored) for _ in fold])
    truth = truth_all[:, [position[g] for g in hidden_order]]
    own_truth = np.empty_like(truth)
    hidden_counts = None if log_normalized else np.empty_like(truth, dtype=np.float64)
    depth = None if log_normalized else np.empty_like(truth, dtype=np.float64)
    views = available_views(cfg, coordinates(st_expr.source, spatial, st_expr.n_cells,
                                             st_expr.named_cells) is not None)
    readouts = available_readouts(cfg, log_normalized)
    predictions: dict[str, list[np.ndarray]] = {}
    reference_pcc: dict[str, float] = {}
    for i, hidden in enumerate(folds):
        hidden_set = set(hidden)
        inner_known = [g for g in st_names if g not in hidden_set]
        targets = scored[i]
        logger.info("self-check fold %d/%d: hiding %d of %d known genes", i + 1, len(folds),
                    len(hidden), len(st_names))
        # The fold's line above stands for its fit: no bar and no lines of its own, so that
        # a user sees one line per fold, not a bar flashing by for each inner fit.
        with inner_steps():
            model = fit(sc_expr, [ref_of[g] for g in inner_known],
                        [ref_of[g] for g in targets], list(targets), inner_cfg,
                        log_normalized=log_normalized, seed=seed, device=device, progress=False)
        columns = candidate_columns(model, cfg, views, readouts)
        source = model.columns(st_expr, cfg, columns, log_normalized=log_normalized,
                               seed=seed, device=device, spatial=spatial,
                               n_predicted=len(rows))
        for name, values in source.predict(rows).items():
            predictions.setdefault(name, []).append(values)
        reference_pcc.update(zip(targets, model.info["reference_pcc"], strict=True))
        known_idx = [position[g] for g in inner_known]
        hidden_idx = [position[g] for g in targets]
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
    from spalstf.combine.stack import Stack, learn_weights, parse
    from spalstf.evaluate import metrics

    stack = Stack(learn_weights(inner.columns, inner.truth), level=level)
    combined, spread = cross_fitted(inner.columns, inner.truth, inner.fold_of)
    stack.calibrate(inner.own_truth, combined, spread, level=level)
    if inner.counts is not None:  # counts input: the per-value interval of the count model
        stack.calibrate_counts(inner.counts, inner.depth, combined, spread=spread, level=level,
                               scale_factor=inner.scale_factor)
    pcc, spcc = metrics.pcc(inner.truth, combined), metrics.spcc(inner.truth, combined)
    per_gene = pd.DataFrame({"gene": inner.genes, "fold": inner.fold_of, "pcc": pcc,
                             "spcc": spcc})
    rows = []
    for name, values in inner.columns.items():
        predictor, view, readout = parse(name)
        rows.append({"column": name, "predictor": predictor, "view": view,
                     "readout": readout,
                     "median_pcc": nanmedian(metrics.pcc(inner.truth, values)),
                     "median_spcc": nanmedian(metrics.spcc(inner.truth, values)),
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
    pcc = dict(zip(result.per_gene["gene"], result.per_gene["pcc"], strict=True))
    # the hidden genes scored (all the known genes but on large panels: `MAX_SCORED_GENES`)
    scored = [g for g in names if g in pcc]
    ref_rows = np.arange(sc_expr.n_cells)
    if sc_expr.n_cells > 2 * CURVE_CELLS:
        ref_rows = np.sort(np.random.default_rng([seed, 5]).choice(
            sc_expr.n_cells, 2 * CURVE_CELLS, replace=False))
    curve = panel_curve(st_expr.columns(names, inner.cells),
                        sc_expr.columns([ref_of[g] for g in names], ref_rows), names,
                        n_folds=n_folds, seed=seed, scale_factor=cfg.scale_factor,
                        log_normalized=log_normalized, alpha=cfg.prior_alpha,
                        scored=None if len(scored) == len(names) else scored)
    hidden = np.array([pcc[g] for g in scored], np.float64)
    half = dict(result.calibration)
    result.expected = full_panel(hidden, curve, len(names), seed=seed)
    measured = nanmedian(hidden)
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
                                    log_normalized=log_normalized, alpha=cfg.prior_alpha,
                                    scored=None if len(scored) == len(names) else scored)
    full = calibrate(reference, carried_pcc)
    result.expected["half_panel_line"] = {k: float(v) for k, v in half.items()}
    # how far one gene's PCC strays from the line: the residuals' SD over the hidden genes
    residual = carried_pcc - expected_pcc(full, reference)
    ok = np.isfinite(residual)
    result.expected["gene_sd"] = float(np.std(residual[ok], ddof=1)) if ok.sum() > 2 \
        else float("nan")
    result.calibration = full
    if result.stack is not None:
        result.expected["gene_model"] = hidden_gene_model(result.stack, inner, scored,
                                                          reference, carried_pcc)


def hidden_gene_model(stack: Stack, inner: InnerPredictions, names: Sequence[str],
                      reference: np.ndarray, pcc: np.ndarray) -> dict[str, Any]:
    """The per-gene model of the expected PCC (`spalstf.combine.expected.fit_gene_model`)
    learnt on the hidden genes `names` (in that order: their full-panel predictability in the
    reference `reference` and their PCC carried to the full panel `pcc`), with the agreement
    and spread of the stack's columns on them over the scored cells, as the imputation reads
    them on its landmark cells. The error is cross-fitted over the self-check's folds."""
    position = {g: i for i, g in enumerate(inner.genes)}
    order = np.array([position[g] for g in names])
    features = gene_features(stack.statistics(inner.columns), stack.weights, reference)
    features = {k: (v if k == "reference_pcc" else v[order]) for k, v in features.items()}
    return fit_gene_model({k: features[k] for k in GENE_FEATURES}, pcc,
                          fold_of=np.asarray(inner.fold_of)[order])


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
