"""Fitting a model on a reference: the data prepared (normalised, standardised, the context
atlas drawn), the network trained where `Config.predictors` includes it (`spalstf.train`), the
base predictors of the prior fitted (`spalstf.prior`), and each target's predictability in the
reference recorded for the self-check's per-gene confidence (`spalstf.combine.expected`).

`fit_parts` returns the parts a `spalstf.model.core.Model` is made of; `fit_model` there makes
the model of them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from spalstf._logging import phase_level
from spalstf.combine.columns import NETWORK
from spalstf.combine.expected import reference_predictability
from spalstf.config import Config
from spalstf.data import CellRows, Expression, cell_factors, check_values
from spalstf.model.saved import plain
from spalstf.network import needs_neighbours
from spalstf.preprocess import Standardizer
from spalstf.prior import (
    AlignedNeighbours,
    AlignedRidge,
    BasePredictor,
    Reference,
    RidgePrior,
    build,
)
from spalstf.train.checkpoint import Checkpointer, data_fingerprint
from spalstf.train.denoiser import TrainingData, train

logger = logging.getLogger(__name__)

#: Cells normalised and read at once when preparing data.
BLOCK = 8192

#: References whose standardised training genes take at most this many bytes are held in
#: memory; larger ones are read a mini-batch at a time from the input (sparse stays sparse).
DENSE_TRAINING_BYTES = 512 * 2**20


def atlas_cell_types(expr: Expression, rows: np.ndarray | None, atlas_rows: np.ndarray
                     ) -> np.ndarray | None:
    """The atlas cells' types: the reference AnnData's ``obs["cell_type"]`` (None without)."""
    obs = getattr(expr.source, "obs", None) if expr.kind == "anndata" else None
    if obs is None or "cell_type" not in obs:
        return None
    types = np.asarray(obs["cell_type"].astype(str))
    return (types if rows is None else types[rows])[atlas_rows]


def fit_parts(expr: Expression, known: list[str], targets: list[str], *, cfg: Config,
              log_normalized: bool, seed: int, device: torch.device, progress: bool,
              saving: tuple = (None, 1, None)) -> dict[str, Any]:
    """The parts of a model trained on the reference `expr` (validated; genes under their
    reference names), `known` -> `targets`, with `cfg`, as keyword arguments of
    `spalstf.model.core.Model` (all but the output names): see `spalstf.model.core.fit_model`.
    `saving`: the checkpoint options (path, every, resume) as
    `spalstf.train.checkpoint.Checkpointer.check_options` gives them. The training (`spalstf.train.denoiser`)
    fits the ridge prior; the other base predictors of the prior (`spalstf.prior`) are fitted
    here."""
    check_values(expr, log_normalized=log_normalized, arg="sc")
    start = time.perf_counter()
    rows = None
    if cfg.max_cells is not None and expr.n_cells > cfg.max_cells:
        rows = np.sort(np.random.default_rng([seed, 1]).choice(expr.n_cells, cfg.max_cells,
                                                                 replace=False))
        logger.log(phase_level(), "training on a random subsample of %d of the %d reference "
                   "cells (`max_cells`)", cfg.max_cells, expr.n_cells)
    factor = cell_factors(expr, known, scale_factor=cfg.scale_factor,
                          log_normalized=log_normalized, rows=rows, block=BLOCK)
    known_rows = CellRows(expr, known, factor, rows=rows)
    target_rows = CellRows(expr, targets, factor, rows=rows)
    n = known_rows.shape[0]
    if 4 * n * (len(known) + len(targets)) <= DENSE_TRAINING_BYTES:
        known_log, target_log = known_rows.to_array(BLOCK), target_rows.to_array(BLOCK)
        known_scaler, target_scaler = Standardizer.fit(known_log), Standardizer.fit(target_log)
        known_z = known_scaler.transform(known_log)
        target_z = target_scaler.transform(target_log)
        del known_log, target_log
    else:  # large: mini-batches are read from the (sparse or backed) input as training goes
        known_scaler = Standardizer.fit_blocks(lambda: known_rows.blocks(BLOCK))
        target_scaler = Standardizer.fit_blocks(lambda: target_rows.blocks(BLOCK))
        known_z = known_rows.standardized(known_scaler)
        target_z = target_rows.standardized(target_scaler)
        logger.log(phase_level(), "reading mini-batches from the reference as training goes "
                   "(%.1f GiB dense)", 4 * n * (len(known) + len(targets)) / 2**30)
    rng = np.random.default_rng(seed)
    atlas_rows = np.arange(n) if n <= cfg.atlas_size else np.sort(
        rng.choice(n, cfg.atlas_size, replace=False))
    self_index = np.full(n, -1, dtype=np.int64)
    self_index[atlas_rows] = np.arange(len(atlas_rows))
    atlas = np.concatenate([known_z[atlas_rows], target_z[atlas_rows]], axis=1)
    # the known-gene count totals (scale_factor / factor) weigh cells in the prior's pseudo-spots
    depth = None if factor is None else np.divide(
        cfg.scale_factor, factor, out=np.zeros_like(factor), where=factor > 0)
    data = TrainingData(known_z, target_z, atlas, self_index=self_index,
                        scalers=(known_scaler, target_scaler), depth=depth)
    reference = Reference(known_z, target_z, scalers=data.scalers, depth=depth, atlas=atlas,
                          cell_types=atlas_cell_types(expr, rows, atlas_rows))
    logger.log(phase_level(), "fitting on %d reference cells: %d known genes -> %d target "
               "genes", n, len(known), len(targets))
    history: list[dict] = []
    info = {"n_reference_cells": expr.n_cells, "n_training_cells": n, "seed": seed}
    network = ridge = None
    if NETWORK in cfg.predictors:
        checkpointer = Checkpointer.create(*saving, meta={
            "seed": seed, "config": plain(cfg.to_dict(), none_ok=True), "known_genes": known,
            "target_genes": targets, "data": data_fingerprint(known_z, target_z)})
        result = train(data, cfg, seed=seed, device=device, progress=progress,
                       checkpointer=checkpointer)
        network, ridge, history = result.network, result.ridge, result.history
        info.update({"epochs_trained": len(result.history), "best_epoch": result.best_epoch,
                     "stop_reason": result.stop_reason, "prior_alpha": result.prior_alpha})
        if checkpointer is not None and checkpointer.resume_state is not None:
            info["resumed_after_epoch"] = int(checkpointer.resume_state["epoch"])
    elif saving[0] is not None or saving[2] is not None:
        raise ValueError("`checkpoint` and `resume` checkpoint the network's training, and "
                         "`predictors` leaves the network out")
    if ridge is None:  # no network, or a network without the ridge prior: fitted here
        ridge = RidgePrior.from_config(cfg)
        ridge.fit(reference, seed=seed)
        info["prior_alpha"] = ridge.alpha_
    # the ridge first: the fixed blend's first part, as the network reads it
    predictors: dict[str, BasePredictor] = {ridge.name: ridge}
    for name in cfg.predictors:
        if name in (NETWORK, RidgePrior.name):
            continue
        if name == AlignedRidge.name:
            predictors[name] = AlignedRidge.of(ridge)
            continue
        predictor = build(name, cfg)
        predictor.fit(reference, seed=seed)
        predictors[name] = predictor
    if AlignedNeighbours.name not in predictors and cfg.combine == "blend" \
            and cfg.knn_weight > 0:  # the fixed blend reads it
        predictors[AlignedNeighbours.name] = build(AlignedNeighbours.name, cfg)
        predictors[AlignedNeighbours.name].fit(reference, seed=seed)
    info["timings"] = {"fit_seconds": time.perf_counter() - start}
    # how well the known genes predict each target in the reference (held-out cells): the
    # feature `spalstf.combine.expected` calibrates into an expected accuracy on the ST
    info["reference_pcc"] = [float(v) for v in reference_predictability(
        known_z, target_z, alpha=cfg.prior_alpha, seed=seed)]
    return dict(network=network, config=cfg, known_genes=known, target_genes=targets,
                known_scaler=known_scaler, target_scaler=target_scaler,
                atlas=atlas if network is not None and needs_neighbours(cfg) else None,
                predictors=predictors, log_normalized=log_normalized, history=history,
                info=info, device=device)
