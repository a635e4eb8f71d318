"""How a fitted model predicts an ST: by the learnt stack (`predict_stack`) or the fixed blend
(`predict_blend`, with the network's diffusion where the model has one), a chunk of cells at a
time, and the result packed in the type the user gave (`pack`).

The functions take the `spalstf.Model` as their first argument and read its parts (predictors,
scalers, network, stack); `Model.impute` calls them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import norm
from tqdm.auto import tqdm

from spalstf._validate import check_readout
from spalstf.combine.blend import Blend
from spalstf.combine.columns import ColumnSource
from spalstf.config import Config
from spalstf.data import Expression, check_values, match_genes
from spalstf.diffusion.sample import impute_cells
from spalstf.model.saved import plain
from spalstf.preprocess import depth_blend, expected_at_depth
from spalstf.prior import EXPRESSION, MODEL, SpotDeconvolution, spaced_blocks
from spalstf.spatial import coordinates

#: Landmark cells (evenly spaced over the ST) whose predictions give each stack column's
#: statistics, and the memory they may take (their predictions are held at once).
STACK_LANDMARKS = 5000
STACK_STAT_BYTES = 256 * 2**20
#: Fewest cells per chunk of `predict_stack` (`Config.batch_size` where larger).
STACK_CHUNK = 1024


def st_known_genes(model: Any, expr: Expression) -> list[str]:
    """The ST's names of the model's known genes (a ValueError naming those it lacks)."""
    mapping = match_genes(model.known_genes, expr.genes)
    missing = [g for g in model.known_genes if g not in mapping]
    if missing:
        raise ValueError(
            f"`st` lacks {len(missing)} of the model's {len(model.known_genes)} known genes, "
            f"for example {missing[:5]} (`st` has for example {expr.genes[:5]}); impute "
            "data measured on the same genes or fit a new model on the genes this data has")
    return [mapping[g] for g in model.known_genes]


def layer_names(model: Any, cfg: Config, stacked: bool) -> list[str]:
    """The layers an imputation with `cfg` writes beside X (`stacked`: by the learnt stack)."""
    if stacked:
        return ["std", "lower", "upper"] if np.isfinite(model.stack.quantile) else []
    with_std = model.network is not None and cfg.diffusion and cfg.n_samples > 1
    return ["std"] if with_std else []


@dataclass
class Landmarks:
    """The stack's columns on evenly spaced landmark cells of the whole ST (`cells`): their
    `source`, predictions (`values`: column -> cells x genes) and `statistics`."""

    source: ColumnSource
    cells: np.ndarray
    values: dict[str, np.ndarray]
    statistics: Any


def stack_landmarks(model: Any, expr: Expression, cfg: Config, *, log_normalized: bool,
                    seed: int, device: torch.device, spatial: Any,
                    progress: bool) -> Landmarks:
    """The stack's columns predicted on landmark cells of the whole ST and their statistics,
    which `predict_stack` combines with (and which give each gene's evidence for its expected
    accuracy, `spalstf.combine.expected.gene_features`)."""
    stack = model.stack
    source = model.columns(expr, cfg, stack.columns, log_normalized=log_normalized,
                           seed=seed, device=device, spatial=spatial)
    cap = max(1, STACK_STAT_BYTES // (4 * len(model.target_genes) * len(stack.columns)))
    cells = np.unique(np.linspace(0, expr.n_cells - 1,
                                  min(expr.n_cells, STACK_LANDMARKS, cap)).astype(int))
    values = source.predict(cells, progress=progress)
    return Landmarks(source, cells, values, stack.statistics(values))


def predict_stack(model: Any, expr: Expression, cfg: Config, *, log_normalized: bool, seed: int,
                  device: torch.device, spatial: Any, progress: bool,
                  rows: tuple[int, int] | None = None, sink=None,
                  landmarks: Landmarks | None = None, depth: np.ndarray | None = None):
    """(values, layers) of the cells [rows) by the learnt stack: its columns are
    predicted on evenly spaced landmark cells of the whole ST for their statistics
    (`stack_landmarks`, or `landmarks` where the caller has them), then chunk by chunk (see
    `spalstf.combine.stack`). `depth`: the cells' known-gene totals (`known_depth`) where the
    caller has them, else read here when the count model's interval needs them.

    The chunks are predicted by the column source's worker threads at once
    (`ColumnSource.mapped`: as many as the threads torch may use, one on a GPU) and handed to
    `sink` (or placed) in their order, a few in flight per worker; a cell's values do not
    depend on its chunk, nor on the number of workers."""
    stack = model.stack
    first, last = (0, expr.n_cells) if rows is None else rows
    if landmarks is None:
        landmarks = stack_landmarks(model, expr, cfg, log_normalized=log_normalized, seed=seed,
                                    device=device, spatial=spatial, progress=progress)
    source, at_landmarks, stats = landmarks.source, landmarks.values, landmarks.statistics
    everything = len(landmarks.cells) == expr.n_cells
    z = float(norm.ppf((1 + stack.level) / 2))
    # the count model's interval reads each cell's total over the known genes (counts
    # input); log-normalised input keeps the normalised conformal interval
    if stack.counts is None or log_normalized:
        depth = None
    elif depth is None:
        depth = known_depth(model, expr, first, last)
    values = extra = None
    if sink is None:
        values = np.empty((last - first, len(model.target_genes)), dtype=np.float32)
        extra = {name: np.empty_like(values) for name in layer_names(model, cfg, True)}
    step = max(cfg.batch_size, STACK_CHUNK)

    def predict_chunk(start: int) -> tuple[np.ndarray, np.ndarray, dict]:
        # in a worker thread: the source's own threads stay at one (no pool in a pool)
        cells = np.arange(start, min(start + step, last))
        preds = ({n: v[cells] for n, v in at_landmarks.items()} if everything
                 else source.predict(cells, workers=1))
        mean = stack.combine(preds, stats)
        layers = {}
        bounds = stack.interval(mean, stack.spread(preds),
                                None if depth is None else depth[cells - first, None])
        if bounds is not None:
            # the interval may be asymmetric (the count model's): std is its half-width
            layers = {"std": ((bounds[1] - bounds[0]) / (2 * z)).astype(np.float32),
                      "lower": bounds[0], "upper": bounds[1]}
        return cells, mean, layers

    starts = range(first, last, step)
    with source.mapped(predict_chunk, starts) as chunks:
        for cells, mean, layers in tqdm(chunks, total=len(starts), desc="spalstf impute",
                                        unit="chunk", disable=not progress, leave=False):
            part = slice(cells[0] - first, cells[-1] + 1 - first)
            if sink is not None:
                sink(part, mean, layers)
                continue
            values[part] = mean
            for name, layer in layers.items():
                extra[name][part] = layer
    return values, extra


def predict_blend(model: Any, expr: Expression, cfg: Config, *, log_normalized: bool, seed: int,
                  device: torch.device, spatial: Any, progress: bool,
                  rows: tuple[int, int] | np.ndarray | None = None, sink=None):
    """(mean, layers) of the target genes on the output scale for the cells `rows` of
    `expr` by the fixed blend: all by default, (first, stop) for a shard, or a sorted array
    of cell indices (a subsample); see `infer.impute_cells`. `layers` holds "std" (the
    spread of the samples) when there is one."""
    if rows is None:
        rows = (0, expr.n_cells)
    cells = np.arange(*rows) if isinstance(rows, tuple) else np.asarray(rows)
    st_known = st_known_genes(model, expr)
    check_values(expr, log_normalized=log_normalized, arg="st")
    check_readout(cfg, log_normalized)
    blend = Blend.from_config(model.predictors, cfg)
    if blend is None and model.network is None:
        raise ValueError("this model has neither a network nor a ridge prior to predict "
                         "with")
    view = "spatial" if cfg.spatial_weight > 0 and coordinates(
        expr.source, spatial, expr.n_cells, expr.named_cells) is not None else (
        "expression" if cfg.expression_weight > 0 else "raw")
    source = ColumnSource(model, expr, st_known, cfg, [], log_normalized=log_normalized,
                          spatial=spatial, seed=seed, device=device, views=[view])

    def read(scale: str, at: np.ndarray) -> np.ndarray:  # cells of `expr` on a scale
        return source.read(view, scale, at)

    prior = None
    if blend is not None:  # statistics over the whole data set, also for a shard or
        # subsample (the ST's z-scores, as SpaGE), read a chunk at a time
        blend.prepare(read, expr.n_cells, block=cfg.batch_size, device=device)
        prior = blend.reader(read, cells)

    def to_output(samples: np.ndarray, chunk: slice) -> np.ndarray:
        values = model.target_scaler.inverse(samples).astype(np.float32)
        share = depth_share(cfg)
        if share > 0:  # the cells' own known-gene totals, in counts
            at_depth = expected_at_depth(values, source.depth(cells[chunk]),
                                         scale_factor=cfg.scale_factor)
            values = depth_blend(values, at_depth, share)
        return values

    def read_known(chunk: slice) -> np.ndarray:  # a chunk of `cells` -> rows of `expr`
        return read(MODEL, cells[chunk])

    if model.network is None:  # a model without a network: the blend of its predictors
        mean = to_output(np.concatenate([prior(slice(s, s + cfg.batch_size))
                                         for s in range(0, len(cells), cfg.batch_size)]),
                         slice(None))
        if sink is not None:
            sink(slice(0, len(cells)), mean, {})
            return None, {}
        return mean, {}
    model.network.to(device)
    ts = model.target_scaler
    clip = (ts.low, ts.high) if cfg.clip_denoised and ts.low is not None else None
    network_sink = None if sink is None else (
        lambda rows_, mean_, std_: sink(rows_, mean_, {} if std_ is None else {"std": std_}))
    mean, std = impute_cells(
        model.network, model.diffusion, cfg, len(cells), read_known,
        [expr.cells[i] for i in cells], to_output, atlas=model.atlas, clip=clip, seed=seed,
        device=device, progress=progress, sink=network_sink, prior=prior)
    return mean, ({} if std is None else {"std": std})


#: Cells whose known-gene totals `known_depth` reads at a time (a dense cells x known block),
#: at most: fewer on panels of more than `DEPTH_VALUES // DEPTH_CHUNK` (300) known genes, so
#: that a block holds at most `DEPTH_VALUES` values (157 MB in float64). 65,536 cells x 5,000
#: genes was a block of 2.6 GB (with the input's float32 rows and columns read besides, 5 GB).
DEPTH_CHUNK = 65_536
DEPTH_VALUES = DEPTH_CHUNK * 300


def known_depth(model: Any, expr: Expression, first: int, last: int) -> np.ndarray:
    """Each cell's total count over the model's known genes, cells [first, last): the depth
    the log-normalised scale divides out (``log1p(count / depth x scale_factor)``)."""
    genes = st_known_genes(model, expr)
    out = np.empty(last - first, dtype=np.float64)
    step = min(DEPTH_CHUNK, max(1, DEPTH_VALUES // max(len(genes), 1)))
    for start in range(first, last, step):
        stop = min(start + step, last)
        out[start - first:stop - first] = expr.columns(genes, slice(start, stop)).sum(axis=1)
    return out


def depth_share(cfg: Config) -> float:
    """The share of the value at the cell's depth in the output (`Config.depth_weight`)."""
    return 1.0 if cfg.output == "at_depth" else float(cfg.depth_weight)


def pack(expr: Expression, mean: np.ndarray | None, layers: Mapping[str, np.ndarray] | None,
         names: list[str], info: dict, rows: slice | None = None, *,
         spatial: Any = False) -> Any:
    """The result in the input's type; `rows` (a shard) keeps those cells' annotations.

    With `mean` None (results written to a file a chunk at a time), an AnnData without X
    carrying the annotations, whatever the input type. An AnnData result holds the
    coordinates `spatial` gives (as `Model.impute` reads them; False: none) in
    ``obsm["spatial"]`` when the input has none there.
    """
    import anndata

    rows = slice(None) if rows is None else rows
    if expr.kind == "anndata":
        src = expr.source
        obs = src.obs.iloc[rows].copy()
        obsm = {k: (v.iloc[rows].copy() if isinstance(v, pd.DataFrame) else v[rows].copy())
                for k, v in src.obsm.items()}
    else:
        obs = pd.DataFrame(index=pd.Index(expr.cells[rows], dtype=str))
        if expr.kind == "dataframe":
            obs.index = expr.source.index[rows].astype(str)
        obsm = {}
    if "spatial" not in obsm:
        # the coordinates the imputation read (obs columns, another obsm key, an array) where
        # scanpy, squidpy and `spalstf.pl` look for them: without them the result cannot be
        # drawn in space. An input's own obsm["spatial"] is kept as it is (copied above).
        xy = coordinates(expr.source, spatial, expr.n_cells, expr.named_cells)
        if xy is not None:
            obsm["spatial"] = xy[rows]
    var = pd.DataFrame(index=pd.Index(names, dtype=str))
    if mean is None or expr.kind == "anndata":
        out = anndata.AnnData(X=mean, obs=obs, var=var, obsm=obsm)
        for name, layer in (layers or {}).items():
            out.layers[name] = layer
        if info:
            out.uns["spalstf"] = plain(info)
        # X is log1p-normalised (natural log): scanpy's marker, so that `sc.pp.log1p` on the
        # result warns instead of taking the log twice.
        out.uns["log1p"] = {"base": None}
        if expr.kind == "anndata" and "spatial" in expr.source.uns:
            # the tissue images and scale factors: `sc.pl.spatial` draws the result on them
            out.uns["spatial"] = copy.deepcopy(dict(expr.source.uns["spatial"]))
        return out
    if expr.kind == "dataframe":
        return pd.DataFrame(mean, index=expr.source.index[rows].copy(), columns=list(names))
    return mean


def add_proportions(model: Any, result: Any, expr: Expression, cfg: Config, *,
                    log_normalized: bool, seed: int, device: torch.device, spatial: Any,
                    rows: tuple[int, int]) -> None:
    """The spot deconvolution's proportions of the cells [rows) in an AnnData result's
    ``obsm["spalstf_proportions"]`` (cells x units: each unit's share of the cell's known-gene
    counts, rows summing to 1; the units are the reference's cell types or clusters), read
    from each cell's own known genes (the raw view), when the model has the "deconvolution"
    predictor (`spalstf.prior.deconvolve`); nothing otherwise."""
    import anndata

    fitted = model.predictors.get(SpotDeconvolution.name)
    if fitted is None or not isinstance(result, anndata.AnnData):
        return
    source = ColumnSource(model, expr, st_known_genes(model, expr), cfg, [],
                          log_normalized=log_normalized, spatial=spatial, seed=seed,
                          device=device, views=["raw"])

    def read(cells: np.ndarray) -> np.ndarray:
        return source.read("raw", EXPRESSION, cells)

    predictor = SpotDeconvolution.from_state(fitted.state(), cfg)
    predictor.prepare(spaced_blocks(read, expr.n_cells, cfg.batch_size), device=device)
    step = max(cfg.batch_size, 1024)
    parts = [predictor.proportions(read(np.arange(s, min(s + step, rows[1]))))
             for s in range(rows[0], rows[1], step)]
    values = np.concatenate(parts) if parts else np.zeros((0, len(predictor.names)))
    result.obsm["spalstf_proportions"] = pd.DataFrame(
        values.astype(np.float32), index=result.obs_names.copy(), columns=predictor.names)


def add_confidence(result: Any, confidence: dict | None) -> None:
    """var["expected_pcc"], var["expected_pcc_sd"] (where the run has it) and
    var["reference_pcc"] of an AnnData result (see `Model.impute`), in memory or the
    annotations of a streamed file alike."""
    if confidence is not None:
        for column in ("expected_pcc", "expected_pcc_sd", "reference_pcc"):
            if column in confidence:
                result.var[column] = np.asarray(confidence[column], np.float32)
