"""The public functions: `impute` (fit and impute in one call) and `fit`.

This layer faces the user's objects (AnnData, arrays, DataFrames) and does no maths: it
validates the options (`spalstf._validate`) and the genes (`spalstf.data`), and hands the rest
to the model (`spalstf.model`: `fit_model`, `fit_and_impute`, which runs the self-check of
`spalstf.combine.selfcheck` when asked, `Model`, `load`). Inputs are never modified.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from spalstf._logging import shows_progress
from spalstf._validate import (
    INFERENCE_OPTIONS,
    check_flag,
    check_out_path,
    check_readout,
    check_seed,
    merge_options,
    training_device,
)
from spalstf.combine.selfcheck import MIN_GENES
from spalstf.config import Config
from spalstf.data import (
    Expression,
    as_expression,
    check_reference_size,
    check_values,
    match_genes,
)
from spalstf.model import Model, fit_and_impute, fit_model, load
from spalstf.preprocess import log_normalize
from spalstf.spatial import resolve
from spalstf.train.checkpoint import Checkpointer

logger = logging.getLogger(__name__)

__all__ = ["INFERENCE_OPTIONS", "MAX_DEFAULT_GENES", "SELF_CHECK_MIN_GENES", "Model", "fit",
           "impute", "load"]

#: Default cap on the number of genes imputed when `genes=None` (the most variable reference
#: genes that the ST lacks are kept).
MAX_DEFAULT_GENES = 1000
#: The self-check runs by default ("auto") when the ST has at least this many known genes.
SELF_CHECK_MIN_GENES = MIN_GENES


@shows_progress
def fit(sc: Any, known_genes: Sequence[str], target_genes: Sequence[str], *,
        sc_genes: Sequence[str] | None = None, sc_layer: str | None = None,
        log_normalized: bool = False, seed: int = 0, device: str = "auto",
        max_steps: int | None = None, progress: bool = True,
        checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 5,
        resume: str | os.PathLike | None = None,
        config: Config | Mapping[str, Any] | None = None, **options: Any) -> Model:
    """Fit spalstf's base predictors on a scRNA-seq reference.

    By default the fast base predictors of `spalstf.config.DEFAULT_PREDICTORS` (ridge,
    neighbours, SpaGE-style, Tangram-style transport, a count-likelihood mixture); the SpaLSTF
    diffusion network is trained too only where `predictors` includes "network" (and
    "masked" for the masked-gene network). The training options (`max_steps`, `epochs`,
    `max_time`, `checkpoint`, `resume`) act only on the network.

    Parameters
    ----------
    sc
        Reference cells x genes (AnnData, numpy, scipy sparse or DataFrame), raw counts unless
        `log_normalized`.
    known_genes
        Genes the ST data will provide (the condition). Each must be in `sc`.
    target_genes
        Genes to predict. Genes missing from `sc` are dropped with a warning; known genes listed
        here too become targets.
    sc_genes, sc_layer
        Gene names of a bare matrix; AnnData layer to read instead of X.
    log_normalized
        The reference (and later the ST) already hold log-normalised values.
    seed
        Seed of initialisation, batching and noise: the same seed gives the same model on CPU.
    device
        "auto" (CUDA when present, else CPU), "cpu" or "cuda". Launched by ``torchrun``, each
        process trains on a share of every mini-batch (DistributedDataParallel, see
        `spalstf.train.distributed`) and takes the GPU of its LOCAL_RANK.
    max_steps
        The network's training budget in optimiser updates (default 300; None: the config's;
        only with `predictors` including "network"). Training also stops after `epochs` (60)
        passes, or after 10 epochs without improvement on 10%
        held-out reference cells; `max_time` (seconds, none by default) caps it too, at the
        cost of reproducibility: where it stops training the model depends on the machine's
        speed. Large references (sparse, or AnnData opened backed) are read a mini-batch at a
        time, never densified whole; ``max_cells`` fits on a seeded random subsample.
    progress
        Show progress bars, and the phases' log lines when logging is not configured
        (`spalstf._logging`; False: warnings only).
    checkpoint, checkpoint_every
        Only with `predictors` including "network" (a ValueError otherwise). A file to write
        the network's whole training state to every `checkpoint_every` epochs and when
        training ends (atomically: an interrupted write leaves the previous checkpoint). An
        existing file is refused unless it is also `resume`.
    resume
        A checkpoint to continue from. With the same data, genes, seed and options (only
        `epochs`, `max_steps`, `max_time`, `patience` and sampling options may change) the
        result is the model an uninterrupted fit would have given; otherwise a ValueError
        names what differs. `max_steps` counts the updates made before the checkpoint.
        `max_time` counts the seconds spent before the checkpoint.
    config
        Every other setting: a dict of `spalstf.Config` fields (``{"depth": 2, "epochs": 30}``;
        unknown names are refused with the valid ones listed) or a `Config`. The sample and
        readout fields are the model's defaults at `Model.impute`.
    **options
        `Config` fields as keywords (``depth=2``), as earlier versions took them; a keyword
        given as None keeps the config's value. Prefer `config`.

    Returns
    -------
    A fitted `spalstf.Model`. It combines its base predictions with fixed weights, and gives
    no interval, until `Model.self_check(st, sc)` learns the combination on an ST's known
    genes (`spalstf.impute` does both; `spalstf fit --st` too). With the network: Ctrl-C
    (KeyboardInterrupt) during its training returns the model with the best weights so far
    (it re-raises when no epoch had ended), and a non-finite loss raises FloatingPointError
    naming the epoch and step.
    """
    cfg = merge_options(config, max_steps=max_steps, **options)
    seed, dev = check_seed(seed), training_device(device)
    log_normalized = check_flag(log_normalized, "log_normalized")
    progress = check_flag(progress, "progress")
    saving = Checkpointer.check_options(checkpoint, checkpoint_every, resume)
    expr = as_expression(sc, genes=sc_genes, layer=sc_layer, arg="sc", genes_arg="sc_genes")
    check_reference_size(expr)
    known_ref, target_ref, out_names = _resolve_fit_genes(expr, known_genes, target_genes)
    return fit_model(expr, known_ref, target_ref, out_names, cfg,
                     log_normalized=log_normalized, seed=seed, device=dev, progress=progress,
                     saving=saving)


def _gene_list(genes: Any, arg: str) -> list[str]:
    if isinstance(genes, str):
        genes = [genes]
    if genes is None or not isinstance(genes, Sequence | np.ndarray | pd.Index | pd.Series):
        raise TypeError(f"`{arg}` must be a list of gene names; received {type(genes).__name__}")
    if len(genes) == 0:
        raise ValueError(f"`{arg}` is empty; expected at least one gene name")
    out = [str(g) for g in genes]
    dups = sorted({g for g in out if out.count(g) > 1})
    if dups:
        raise ValueError(f"`{arg}` lists genes more than once, for example {dups[:5]}")
    return out


def _resolve_fit_genes(expr: Expression, known_genes, target_genes,
                       target_arg: str = "target_genes"):
    known = _gene_list(known_genes, "known_genes")
    targets = _gene_list(target_genes, target_arg)
    kmap = match_genes(known, expr.genes, arg="known_genes")
    missing = [g for g in known if g not in kmap]
    if missing:
        raise ValueError(f"{len(missing)} of `known_genes` are not in `sc`, for example "
                         f"{missing[:10]}")
    target_map = match_genes(targets, expr.genes, arg=target_arg)
    dropped = [g for g in targets if g not in target_map]
    if dropped:
        logger.warning("%d requested genes are not in the reference and are dropped, for "
                       "example %s", len(dropped), dropped[:10])
    kept = [g for g in targets if g in target_map]
    if not kept:
        raise ValueError(f"none of `{target_arg}` is in `sc` (for example {targets[:5]}; "
                         f"`sc` has for example {expr.genes[:5]})")
    target_ref = [target_map[g] for g in kept]
    known_ref = [kmap[g] for g in known if kmap[g] not in set(target_ref)]
    if not known_ref:
        raise ValueError("no known genes are left once the target genes are removed; the model "
                         "needs at least one gene measured in both data sets")
    return known_ref, target_ref, kept


@shows_progress
def impute(st: Any, sc: Any, genes: Sequence[str] | None = None, *,
           st_genes: Sequence[str] | None = None, sc_genes: Sequence[str] | None = None,
           st_layer: str | None = None, sc_layer: str | None = None,
           log_normalized: bool = False, max_genes: int = MAX_DEFAULT_GENES, seed: int = 0,
           device: str = "auto", spatial: Any = None, max_steps: int | None = None,
           n_samples: int | None = None, self_check: bool | str = "auto",
           select: Mapping[str, Sequence] | str | None = "auto", self_check_folds: int = 2,
           progress: bool = True, checkpoint: str | os.PathLike | None = None,
           checkpoint_every: int = 5, resume: str | os.PathLike | None = None,
           out: str | os.PathLike | None = None, overwrite: bool = False,
           config: Config | Mapping[str, Any] | None = None, **options: Any) -> Any:
    """Impute `genes` in the spatial data `st` from the reference `sc`.

    By default: fit the fast base predictors (`spalstf.config.DEFAULT_PREDICTORS`) on `sc`,
    learn non-negative weights of their predictions on `st`'s own known genes, hidden in turn
    (the self-check), and return that combination with a calibrated 90% interval. The SpaLSTF
    diffusion network is trained only where `predictors` (a `Config` field, by keyword or in
    `config`) includes "network"; `max_steps`, `n_samples`, `epochs`, `n_steps`,
    `checkpoint` and `resume` act only then.

    Parameters
    ----------
    st
        Spatial cells or spots x genes: AnnData (X or `st_layer`), numpy array, scipy sparse
        matrix (CSR/CSC) or DataFrame. Raw counts unless `log_normalized`.
    sc
        Reference cells x genes, same types and scale as `st`.
    genes
        Genes to impute (reference names, matched exactly, then ignoring case). Genes missing
        from the reference are dropped with a warning. A requested gene that `st` measures is
        predicted from the other genes, as if hidden (its measured values are not used): this is
        how leave-genes-out evaluation works. Default (None): the reference genes that `st`
        lacks, the `max_genes` most variable of them (log-normalised, in the reference) when
        there are more, so that the default fits in memory on large references.
    st_genes, sc_genes
        Gene names of bare matrices (numpy / scipy); AnnData and DataFrames carry their own.
    st_layer, sc_layer
        AnnData layers to read instead of X.
    log_normalized
        Both inputs already hold log-normalised values (then they are used as given).
    max_genes
        Cap for the default gene list (genes=None).
    seed
        Seeds training and each cell's sampling: the same seed gives the same output on CPU.
    device
        "auto" (CUDA when present, else CPU), "cpu" or "cuda".
    spatial
        Coordinates of the ST cells for the spatial context: None reads
        `st.obsm["spatial"]` when present, else obs columns "x"/"y" (or those of
        `spalstf.spatial.OBS_COORDINATES`: "imagecol"/"imagerow", "array_col"/"array_row",
        ...; a log line says which); a string another obsm key or obs columns ("x,y"); an
        array gives them; False turns the spatial context off. A DataFrame indexed by
        cell names (strings) is aligned to `st`'s cells by name (its rows in any order; cells
        it lacks are an error); one with pandas' default index (0..n-1 in order) is taken row
        by row in the order of `st`, as an array is, even where the cells are named "0",
        "1", ...; another integer index is refused as ambiguous.
    max_steps
        The network's training budget in optimiser updates (default 300; the self-check's
        inner fits share half of it again). None: the config's. Only with `predictors`
        including "network".
    n_samples
        The network's samples per cell (default 4): their mean is its prediction. None: the
        config's. Only with `predictors` including "network".
    self_check
        Estimate the accuracy on this data (`spalstf.combine.selfcheck`): hide groups of the ST's
        known genes in turn (`self_check_folds` groups), impute them from the others with the
        same settings, and score them against their measured values. Recorded in
        `uns["spalstf"]["self_check"]` and the log. "auto" (default): run when the ST has at
        least `SELF_CHECK_MIN_GENES` known genes. It is what learns the combination: without
        it the imputation is the fixed blend, with no interval.
    select
        Kept for compatibility: "auto" (default) learns the combination (`Config.combine`
        "stack"); None uses the settings as given, the fixed blend (`combine="blend"`), with no
        self-check. The hand-set grid of settings it once chose among is gone.
    self_check_folds
        Number of inner groups of known genes hidden in turn.
    progress
        Show progress bars, and the phases' log lines when logging is not configured
        (False: warnings only).
    checkpoint, checkpoint_every, resume
        The network's training checkpoints, as in `spalstf.fit` (only with `predictors`
        including "network").
    out, overwrite
        Write the result to this .h5ad a chunk of cells at a time (memory does not grow with
        the number of ST cells) and return its path; replace an existing file.
    config
        Every other setting: a dict of `spalstf.Config` fields (``{"predictors": [...,
        "network"], "epochs": 30}``; unknown names are refused with the valid ones listed) or
        a `Config`. See docs/api.md "Settings" for the fields, grouped by stage.
    **options
        `Config` fields as keywords (``knn_weight=0.5``), as earlier versions took them (the R
        package and the command line pass them so); a keyword given as None keeps the
        config's value. Prefer `config`.

    Returns
    -------
    AnnData `st`: a new AnnData with `st`'s obs_names (same order) and obs/obsm copied,
    var_names = the imputed genes in the requested order, `X` float32 log1p-normalised
    imputations (log1p(count / total of the known genes * 1e4); with `output="at_depth"`
    its expected value at each cell's depth, see `Config.output`), `uns["spalstf"]` the
    version, parameters, seed, known genes, targets, timings and the combination used
    (`uns["spalstf"]["combination"]`: "stack" with its weights, or "blend"). With the learnt
    combination: `layers["lower"]`, `layers["upper"]` the interval at `Config.interval_level`
    calibrated on the hidden known genes (a count model's with counts input, a conformal band
    with log-normalised input) and `layers["std"]` its half-width over
    the normal quantile; with the fixed blend, no interval, and with the network among the
    predictors `layers["std"]` the standard deviation over its samples (n_samples > 1). With a self-check: `uns["spalstf"]["self_check"]` (median and
    per-gene PCC/SPCC of the hidden known genes, the weights learnt, every candidate column's
    score, the interval's coverage, the calibration) and, per imputed gene, `var["expected_pcc"]`: its expected PCC
    on this ST, learnt on the self-check's genes from its predictability in the reference
    (`var["reference_pcc"]`), the agreement of the base predictions and the spread of the
    prediction, its median the run's `expected_median_pcc`; `var["expected_pcc_sd"]` how sure.
    With "deconvolution" among the predictors: `obsm["spalstf_proportions"]`, each cell's or
    spot's proportions of the reference's cell types (or clusters), a DataFrame.
    numpy / scipy `st`: a numpy array (cells x genes). DataFrame `st`: a DataFrame (index of
    `st`, imputed genes as columns).
    """
    cfg = merge_options(config, max_steps=max_steps, n_samples=n_samples, **options)
    if isinstance(max_genes, bool) or not isinstance(max_genes, (int, np.integer)) \
            or max_genes < 1:
        raise ValueError(f"`max_genes` must be a positive integer; received {max_genes!r}")
    dev, seed = training_device(device), check_seed(seed)
    log_normalized = check_flag(log_normalized, "log_normalized")
    progress = check_flag(progress, "progress")
    saving = Checkpointer.check_options(checkpoint, checkpoint_every, resume)
    # before any fitting: a refused `out` would otherwise surface after the self-check's and
    # the main fits (minutes on real data), at the first write
    overwrite = check_flag(overwrite, "overwrite")
    check_out_path(out, overwrite)
    st_expr = as_expression(st, genes=st_genes, layer=st_layer, arg="st", genes_arg="st_genes")
    sc_expr = as_expression(sc, genes=sc_genes, layer=sc_layer, arg="sc", genes_arg="sc_genes")
    spatial = resolve(st_expr.source, spatial)
    # st name -> reference name; two ST genes on one reference gene are refused, naming `st`
    shared = match_genes(st_expr.genes, sc_expr.genes, arg="st")
    if not shared:
        raise ValueError(
            "`st` and `sc` share no genes (compared exactly and ignoring case): `st` has for "
            f"example {st_expr.genes[:5]}, `sc` has for example {sc_expr.genes[:5]}")
    shared_ref = set(shared.values())
    if genes is None:
        lacking = [g for g in sc_expr.genes if g not in shared_ref]
        if not lacking:
            raise ValueError("`st` measures every gene of `sc`, so there is nothing to impute "
                             "by default; pass `genes=` to choose genes to predict")
        if len(lacking) > max_genes:
            lacking = _most_variable(sc_expr, sorted(shared_ref, key=sc_expr.genes.index),
                                     lacking, max_genes, cfg, log_normalized)
            logger.warning("`st` lacks %d reference genes; imputing the %d most variable "
                           "(`max_genes`); pass `genes=` to choose others",
                           len(sc_expr.genes) - len(shared_ref), max_genes)
        genes = lacking
    requested = _gene_list(genes, "genes")
    measured = [g for g in requested if g in match_genes(requested, st_expr.genes)]
    if measured:
        logger.info("%d requested genes are measured by the ST (for example %s); they are "
                    "predicted as if hidden (their measured values are not read)",
                    len(measured), measured[:5])
    known_candidates = [shared[g] for g in st_expr.genes if g in shared]
    known_ref, target_ref, out_names = _resolve_fit_genes(sc_expr, known_candidates, requested,
                                                          target_arg="genes")
    # The ST values are checked before training, not after minutes of it.
    check_values(st_expr, log_normalized=log_normalized, arg="st")
    check_values(sc_expr, log_normalized=log_normalized, arg="sc")
    check_reference_size(sc_expr)
    check_readout(cfg, log_normalized)
    st_name = {ref: st_g for st_g, ref in shared.items()}
    if select not in ("auto", None):
        raise ValueError("`select` chose among settings of the fixed blend, which the "
                         "self-check now replaces by a combination it learns on the ST's own "
                         "genes (`combine='stack'`); pass select='auto' or None (or "
                         f"combine='blend' with the settings you want); received {select!r}")
    if select is None:
        cfg = cfg.replace(combine="blend")
    return fit_and_impute(st_expr, sc_expr, cfg,
                          known_pairs=[(st_name[g], g) for g in known_ref], targets=target_ref,
                          output_names=out_names, self_check=self_check,
                          n_folds=self_check_folds, seed=seed, log_normalized=log_normalized,
                          device=dev, spatial=spatial, progress=progress, saving=saving,
                          out=out, overwrite=overwrite)


def _most_variable(expr: Expression, known: list[str], candidates: list[str], n: int,
                   cfg: Config, log_normalized: bool) -> list[str]:
    """The n candidates with the largest log-normalised variance (on up to 5000 cells)."""
    rows = np.sort(np.random.default_rng(0).choice(expr.n_cells, min(5000, expr.n_cells),
                                                   replace=False))
    variances = np.zeros(len(candidates))
    for s in range(0, len(candidates), 2000):
        part = candidates[s:s + 2000]
        _, values = log_normalize(expr.columns(known, rows), expr.columns(part, rows),
                                  scale_factor=cfg.scale_factor, log_normalized=log_normalized)
        variances[s:s + len(part)] = values.var(axis=0)
    keep = np.sort(np.argsort(-variances, kind="stable")[:n])
    return [candidates[i] for i in keep]
