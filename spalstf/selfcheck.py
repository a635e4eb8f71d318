"""Self-check: how accurate an imputation is likely to be, measured on the user's own data.

The ST has no truth for the genes it did not measure, but it has its known genes. The
self-check hides some of them (an inner leave-genes-out, `n_folds` folds over the ST's known
genes), imputes them from the rest with the same settings as the main run, and scores the result
against their measured values: per-gene Pearson (PCC) and Spearman (SPCC) correlations, on the
log-normalised scale. Target genes are never read (the ST is only ever read through the known
genes of the main run).

The same inner folds choose among candidate settings (`select=`): each candidate's score is the
median per-gene PCC over all hidden genes; the best wins, ties go to the earlier candidate.
Settings that act at sampling time (the sample and readout stages of `spalstf.Config`: the
spatial context, the aligned-neighbour estimate's weight, the weight of the diffusion's
refinement) are tried on the same fitted inner models, so a grid of them costs samplings, not
fits; those that shape the prior or how it is read out (`PRIOR_OPTIONS`, the fields marked
``prior``, the depth weight of the output among them) are chosen first, on the prior alone,
which needs no sampling. The output ("expression" or
"at_depth"), when you offer both, is a different kind of choice, made gene by gene: see
`OUTPUT_WIN_SHARE`.

The estimate is for the genes hidden here (measured ST genes, which panels choose for being
informative); genes the panel never measured may be harder. With selection, the chosen
setting's score is slightly optimistic (it won on these genes); both are recorded.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from spalstf.config import INFERENCE_STAGES, Config

if TYPE_CHECKING:
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
#: Options that shape the prior or how it is read out (chosen in stage 1, on predictions of
#: the prior alone): the sample and readout fields of `Config` marked ``prior``.
PRIOR_OPTIONS = Config.fields(*INFERENCE_STAGES, prior=True)
#: Options `select=` may choose among: they act at sampling time, on the same inner fits. The
#: prior's (stage 1) and the weight of the diffusion's refinement (stage 2: one sampling per
#: inner fold gives every weight).
SELECTABLE = (*PRIOR_OPTIONS, "residual_weight")
#: An output other than the first listed ("expression") is chosen only where, at the prior's
#: chosen settings, it predicts more than this share of the hidden genes better: most of
#: them (a paired, gene-by-gene comparison, not the medians'). What the depth changes, it
#: changes for every gene: measured on the priors (`benchmarks/priors.py`), "at_depth" was
#: better for 54-61% of the hidden genes in each visium_lymph fold, where it lifts the
#: prior (0.117 -> 0.120), and for 21-42% in every fold of the other three sets
#: (benchmarks/results/priors.md). Medians of a few dozen genes are noisy: with the reference
#: cells alone (an earlier default) the difference of medians chose it in three of five
#: osmFISH folds, where it hurt.
OUTPUT_WIN_SHARE = 1 / 2
#: Candidates tried by default: the spatial context's weight (only where the ST has
#: coordinates), the aligned-neighbour estimate's weight in the prior, the share of the value
#: at the cell's depth in the output (only for counts, which give each cell's depth; see
#: `Config.depth_weight`), all three together by the median, and how much of the diffusion's
#: refinement of the prior is kept. Measured on the priors alone (`benchmarks/priors.py`,
#: 5-fold CV, median PCC osmFISH / visium_brain / visium_lymph / simulated; see
#: benchmarks/results/priors.md for the figures of each rule).
DEFAULT_SELECT: dict[str, tuple] = {
    "spatial_weight": (0.0, 0.25, 0.5),
    "knn_weight": (0.0, 0.5),
    "depth_weight": (0.0, 0.25, 0.5, 0.75, 1.0),
    "residual_weight": (0.0, 0.5, 1.0),
}


@dataclass
class SelfCheckResult:
    """What the self-check measured.

    Attributes
    ----------
    per_gene
        One row per hidden known gene: ``gene``, ``fold``, ``pcc``, ``spcc`` (of the selected
        setting).
    scores
        One row per candidate setting: its options, ``median_pcc``, ``median_spcc``,
        ``selected`` (bool).
    selected
        The options of the chosen candidate (empty without selection).
    seconds
        Wall time of the whole self-check.
    """

    per_gene: pd.DataFrame
    scores: pd.DataFrame
    selected: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    #: st_pcc ~ intercept + slope x reference_pcc over the hidden genes (see `calibrate`)
    calibration: dict[str, float] = field(default_factory=dict)

    @property
    def median_pcc(self) -> float:
        return _nanmedian(self.per_gene["pcc"])

    @property
    def median_spcc(self) -> float:
        return _nanmedian(self.per_gene["spcc"])

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
            "selected": {k: _plain(v) for k, v in self.selected.items()},
            # columns, not a list of records: .h5ad stores dicts of arrays, not lists of dicts
            "candidates": {str(c): [_plain(v) for v in self.scores[c]]
                           for c in self.scores.columns},
            "seconds": float(self.seconds),
            "calibration": {k: float(v) for k, v in self.calibration.items()},
        }


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def check_select(select: Any, allowed: Sequence[str]) -> dict[str, tuple]:
    """Validate `select` ({option: candidate values}); returns it with tuples of values."""
    if select is None:
        return {}
    if not isinstance(select, Mapping):
        raise TypeError("`select` must be a dict {option: [candidate values]}, for example "
                        f"{{'spatial_weight': [0, 0.5]}}; received {type(select).__name__}")
    out = {}
    for name, values in select.items():
        if name not in allowed:
            raise ValueError(f"`select` can choose among {sorted(allowed)}; received {name!r}")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"`select[{name!r}]` must be a non-empty list of candidate values; "
                             f"received {values!r}")
        out[name] = tuple(values)
    return out


def inner_folds(genes: Sequence[str], n_folds: int, seed: int) -> list[list[str]]:
    """`n_folds` disjoint groups of `genes` (seeded shuffle), each to be hidden in turn."""
    genes = list(genes)
    order = np.random.default_rng(seed).permutation(len(genes))
    return [[genes[i] for i in sorted(part)] for part in np.array_split(order, n_folds)
            if len(part)]


def candidates(select: Mapping[str, Sequence]) -> list[dict[str, Any]]:
    """Every combination of the candidate values, in the order given (first = first tried)."""
    names = list(select)
    return [dict(zip(names, combo, strict=True))
            for combo in itertools.product(*(select[n] for n in names))]


def score_candidates(truth: np.ndarray, predictions: Sequence[np.ndarray],
                     genes: Sequence[str], folds: Sequence[int],
                     options: Sequence[dict[str, Any]]) -> SelfCheckResult:
    """Score each candidate's assembled predictions (cells x hidden genes) against `truth`;
    the best is selected."""
    from spalstf.evaluate import metrics

    rows, per_gene = [], []
    for opts, pred in zip(options, predictions, strict=True):
        pcc, spcc = metrics.pcc(truth, pred), metrics.spcc(truth, pred)
        per_gene.append(pd.DataFrame({"gene": list(genes), "fold": list(folds),
                                      "pcc": pcc, "spcc": spcc}))
        rows.append({**opts, "median_pcc": _nanmedian(pcc), "median_spcc": _nanmedian(spcc)})
    scores = pd.DataFrame(rows)
    # The best median PCC wins; NaN (no correlation computable) never does; ties: the first.
    keys = scores["median_pcc"].fillna(-np.inf).to_numpy()
    best = int(np.argmax(keys))
    scores["selected"] = np.arange(len(scores)) == best
    return SelfCheckResult(per_gene=per_gene[best], scores=scores, selected=dict(options[best]))


def win_share(pcc: np.ndarray, base: np.ndarray) -> float:
    """Share of the genes (both correlations finite) that `pcc` predicts better than `base`;
    NaN when no gene has both."""
    pcc, base = np.asarray(pcc, np.float64), np.asarray(base, np.float64)
    ok = np.isfinite(pcc) & np.isfinite(base)
    return float(np.mean(pcc[ok] > base[ok])) if ok.any() else float("nan")


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
    genes, with the correlation of the two (how much the line can be trusted) and n."""
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


def _nanmedian(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.median(values[np.isfinite(values)])) if np.isfinite(values).any() \
        else float("nan")


def run(st_expr, sc_expr, known_pairs: Sequence[tuple[str, str]], cfg, *,
        select: Mapping[str, Sequence] | None, n_folds: int, seed: int, log_normalized: bool,
        device, spatial: Any, progress: bool, fit: Callable[..., Any],
        fit_budget_share: float = FIT_BUDGET_SHARE,
        max_cells: int = MAX_CELLS) -> SelfCheckResult:
    """The inner leave-genes-out over the ST's known genes (see the module's docstring).

    known_pairs: (ST name, reference name) of each known gene of the main run. Candidate
    settings in `select` must be among `SELECTABLE` (sampling-time options). `fit` fits each
    inner model, as `spalstf.model.fit_model` (reference, known, targets, output names,
    config, then keywords) and returns it (its `_predict` and `info["reference_pcc"]` are
    read): handed in, so that the self-check imports neither the model nor the API.
    Each inner fit gets `fit_budget_share / n_folds` of the main run's training budget
    (`max_steps`, and `max_time` when set): the self-check's fits together cost about
    `fit_budget_share` main fits.
    Scores are computed on a seeded subsample of at most `max_cells` ST cells (their spatial
    neighbours are read from all cells).
    """
    from spalstf.preprocess import depth_blend, log_normalize

    start = time.perf_counter()
    st_names = [s for s, _ in known_pairs]
    ref_of = dict(known_pairs)
    folds = inner_folds(st_names, n_folds, seed)
    options = candidates(select or {})
    if not options:
        options = [{}]
    weights = sorted({o.get("residual_weight", cfg.residual_weight) for o in options})
    # The settings of the prior, as tuples of the values of PRIOR_OPTIONS.
    prior_settings = list(dict.fromkeys(tuple(o.get(k, getattr(cfg, k)) for k in PRIOR_OPTIONS)
                                        for o in options))  # in the order given
    share = fit_budget_share / len(folds)
    inner_cfg = cfg.replace(
        max_steps=None if cfg.max_steps is None else max(1, round(cfg.max_steps * share)),
        max_time=None if cfg.max_time is None else cfg.max_time * share)
    # Truth: the ST's hidden genes, log-normalised over all known genes of the main run (as the
    # evaluation suite's truth is over all shared genes). Only known genes are ever read.
    rows = np.arange(st_expr.n_cells)
    if st_expr.n_cells > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(st_expr.n_cells, max_cells,
                                                          replace=False))
    truth_all = log_normalize(st_expr.columns(st_names, rows), scale_factor=cfg.scale_factor,
                              log_normalized=log_normalized)[0]
    hidden_order = [g for fold in folds for g in fold]
    fold_of = [i for i, fold in enumerate(folds) for _ in fold]
    truth = truth_all[:, [st_names.index(g) for g in hidden_order]]
    models = []
    for i, hidden in enumerate(folds):
        inner_known = [g for g in st_names if g not in hidden]
        logger.info("self-check fold %d/%d: hiding %d of %d known genes", i + 1, len(folds),
                    len(hidden), len(st_names))
        models.append(fit(
            sc_expr, [ref_of[g] for g in inner_known], [ref_of[g] for g in hidden],
            list(hidden), inner_cfg, log_normalized=log_normalized, seed=seed, device=device,
            progress=progress))

    def assemble(prior_setting, weights_, prior_only=False) -> list[np.ndarray]:
        """Per residual weight: cells x hidden genes, each fold's genes by its own model."""
        out = [np.empty_like(truth, dtype=np.float32) for _ in weights_]
        col = 0
        for model, hidden in zip(models, folds, strict=True):
            run_cfg = model.config.replace(**dict(zip(PRIOR_OPTIONS, prior_setting,
                                                      strict=True)))
            means, _ = model._predict(st_expr, run_cfg, log_normalized=log_normalized,
                                      seed=seed, device=device, spatial=spatial,
                                      progress=progress, residual_weights=weights_, rows=rows,
                                      prior_only=prior_only)
            for target, mean in zip(out, means, strict=True):
                target[:, col:col + len(hidden)] = mean
            col += len(hidden)
        return out

    at_depth_weight = PRIOR_OPTIONS.index("depth_weight")
    ends: dict[tuple, np.ndarray] = {}  # predictions at depth weights 0 and 1, by setting

    def prior_rows(settings):
        """The candidates' options and predictions (cells x hidden genes) of the prior alone.
        A depth weight between 0 and 1 blends the outputs at 0 and 1 (`Config.depth_weight`),
        so those two are all that is predicted."""
        opts = [{**dict(zip(PRIOR_OPTIONS, s, strict=True)), "residual_weight": 0.0}
                for s in settings]
        preds = []
        for s in settings:
            weight = s[at_depth_weight]
            parts = []
            for end in ((0.0, 1.0) if 0 < weight < 1 else (weight,)):
                key = s[:at_depth_weight] + (end,) + s[at_depth_weight + 1:]
                if key not in ends:
                    ends[key] = assemble(key, [0.0], prior_only=True)[0]
                parts.append(ends[key])
            preds.append(parts[0] if len(parts) == 1 else depth_blend(*parts, weight))
        return opts, preds

    # Stage 1 (with a prior and several prior settings): the spatial context, the
    # aligned-neighbour estimate's weight and the depth weight are chosen on the prior's
    # predictions, which need no sampling, at the first output listed (the default
    # "expression"); then another output, when offered,
    # at those settings, only where it predicts most hidden genes better (OUTPUT_WIN_SHARE).
    # Stage 2 samples once per inner fold, at the chosen setting, for every refinement
    # weight. Without a prior every combination is sampled.
    first = None
    if cfg.prior != "none" and len(prior_settings) > 1:
        at = PRIOR_OPTIONS.index("output")
        outputs = list(dict.fromkeys(s[at] for s in prior_settings))
        opts, preds = prior_rows([s for s in prior_settings if s[at] == outputs[0]])
        first = score_candidates(truth, preds, hidden_order, fold_of, opts)
        chosen = tuple(first.selected[k] for k in PRIOR_OPTIONS)
        if len(outputs) > 1:
            base = first.per_gene["pcc"].to_numpy()
            alt_opts, alt_preds = prior_rows([chosen[:at] + (o,) + chosen[at + 1:]
                                              for o in outputs[1:]])
            # each alternative scored alone, for its per-gene correlations
            alts = [score_candidates(truth, [p], hidden_order, fold_of, [o])
                    for o, p in zip(alt_opts, alt_preds, strict=True)]
            shares = [win_share(a.per_gene["pcc"], base) for a in alts]
            alt_scores = pd.concat([a.scores for a in alts], ignore_index=True)
            alt_scores["genes_better"] = shares
            first.scores["genes_better"] = np.nan
            first.scores = pd.concat([first.scores, alt_scores], ignore_index=True)
            best = int(np.nanargmax(shares)) if np.isfinite(shares).any() else None
            if best is not None and shares[best] > OUTPUT_WIN_SHARE:
                chosen = tuple(alt_opts[best][k] for k in PRIOR_OPTIONS)
        prior_settings = [chosen]
    rows_opts, predictions = [], []
    for setting in prior_settings:
        rows_opts += [{**dict(zip(PRIOR_OPTIONS, setting, strict=True)), "residual_weight": w}
                      for w in weights]
        predictions += assemble(setting, weights)
    result = score_candidates(truth, predictions, hidden_order, fold_of, rows_opts)
    result.scores.insert(0, "stage", "model")
    if first is not None:  # stage 1's rows first, none of them the final choice
        first.scores.insert(0, "stage", "prior")
        first.scores["selected"] = False
        result.scores = pd.concat([first.scores, result.scores], ignore_index=True)
    # Calibration of the per-gene confidence: how each hidden gene's predictability in the
    # reference (a by-product of its inner fit) relates to its PCC measured on the ST.
    ref_of_gene = {g: v for model, hidden in zip(models, folds, strict=True)
                   for g, v in zip(hidden, model.info["reference_pcc"], strict=True)}
    result.calibration = calibrate([ref_of_gene[g] for g in result.per_gene["gene"]],
                                   result.per_gene["pcc"])
    chosen_names = set(options[0])  # report only what was asked to be chosen
    result.selected = {k: v for k, v in result.selected.items() if k in chosen_names}
    result.seconds = time.perf_counter() - start
    logger.info("self-check: median PCC %.3f, SPCC %.3f over %d hidden known genes%s (%.0f s)",
                result.median_pcc, result.median_spcc, len(hidden_order),
                f"; selected {result.selected}" if select else "", result.seconds)
    return result


def maybe_run(st_expr: Expression, sc_expr: Expression, known_pairs, cfg: Config, *,
              self_check, select, n_folds, seed, log_normalized, device, spatial,
              progress, fit: Callable[..., Any],
              given: frozenset[str] | set[str] = frozenset()) -> SelfCheckResult | None:
    """Validate the self-check options and `run` it when asked (or when "auto" says so).
    `fit`: as `run`'s; `given`: options the user set, which "auto" selection leaves as they
    are."""
    from spalstf.spatial import coordinates

    if self_check not in (True, False, "auto"):
        raise ValueError(f"`self_check` must be True, False or 'auto'; received {self_check!r}")
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"`self_check_folds` must be an integer >= 2; received {n_folds!r}")
    if select == "auto":
        has_xy = coordinates(st_expr.source, spatial, st_expr.n_cells) is not None
        # the depth needs counts; an output you gave is kept whole, not blended
        select = {k: v for k, v in DEFAULT_SELECT.items()
                  if (has_xy or k != "spatial_weight") and k not in given
                  and not (k in ("output", "depth_weight")
                           and (log_normalized or "output" in given))}
    elif isinstance(select, str):
        raise ValueError(f"`select` must be 'auto', None or a dict; received {select!r}")
    select = check_select(select, SELECTABLE)
    if log_normalized and "at_depth" in select.get("output", ()):
        raise ValueError("`select['output']` offers 'at_depth', which needs the ST's counts "
                         "(each cell's depth); received log-normalised input")
    if log_normalized and any(w > 0 for w in select.get("depth_weight", ())):
        raise ValueError("`select['depth_weight']` offers weights above 0, which need the ST's "
                         "counts (each cell's depth); received log-normalised input")
    for candidate in candidates(select):
        cfg.replace(**candidate)  # every candidate value is valid, before any fit
    n_known = len(known_pairs)
    if self_check == "auto":
        self_check = n_known >= MIN_GENES
        if not self_check:
            logger.info("self-check skipped: the ST has %d known genes (fewer than %d)",
                        n_known, MIN_GENES)
    if not self_check:
        return None
    if n_known < max(n_folds, 2):
        raise ValueError(f"the self-check hides groups of the ST's known genes, so it needs at "
                         f"least `self_check_folds` ({n_folds}) of them; there are {n_known}. "
                         "Pass self_check=False")
    return run(st_expr, sc_expr, known_pairs, cfg, select=select, n_folds=n_folds, seed=seed,
               log_normalized=log_normalized, device=device, spatial=spatial,
               progress=progress, fit=fit)
