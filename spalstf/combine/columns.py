"""The stack's columns of a fitted model on an ST data set: every base prediction, on the output
scale, for any cells, a chunk at a time.

`ColumnSource` reads the ST's known genes in each view (``raw``; ``expression``: mixed with
their expression neighbours'; ``spatial``: with their spatial neighbours' too, where the ST has
coordinates; `spalstf.spatial`), prepares a copy of each base predictor of the model per view
on the whole ST (its statistics over the data set), and then predicts any cells: the values of
a cell depend on the cell, the model and those statistics only, never on the other cells asked
with it. The network's column is its diffusion sampled around the ridge it was trained with,
from one view. Readouts: the expression, and the value at the cell's depth (counts only).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import closing, contextmanager, nullcontext
from typing import Any

import numpy as np
import torch

from spalstf.combine.stack import READOUTS, VIEWS, column, parse
from spalstf.config import Config
from spalstf.data import Expression
from spalstf.diffusion.sample import impute_cells
from spalstf.preprocess import Standardizer, expected_at_depth, log_normalize
from spalstf.prior import neighbours as neighbours_module
from spalstf.prior.base import EXPRESSION, MODEL, STAT_CELLS, BasePredictor, spaced_blocks
from spalstf.prior.neighbours import FLOAT32_SEARCH_CELLS, search_in_float32
from spalstf.runtime import chunk_workers, one_thread_per_op, ordered_map
from spalstf.spatial import (
    coordinates,
    expression_graph,
    expression_landmarks,
    expression_smoothed_reader,
    held_rows_reader,
    neighbours,
    smoothed_reader,
)

#: The column name of the network's predictions.
NETWORK = "network"
#: The masked-gene network (`spalstf.prior.masked`): it trains on the ST in `prepare`, once per
#: view it reads, so it reads one view: each cell's own known genes as measured (raw).
MASKED = "masked"
#: Cells normalised and read at once when preparing statistics.
BLOCK = 8192
#: Views of the ST whose values take at most this many bytes are computed once and held (the
#: smoothing reads neighbours; every predictor reads every view); larger ones are read, and
#: smoothed, a chunk at a time.
HELD_VIEW_BYTES = 512 * 2**20
#: Every cell's log-normalised known genes are held wherever they take at most this many bytes
#: (float32), views held or not: where views are read a chunk at a time, the smoothing of a
#: chunk reads its expression neighbours' spatial neighbours, scattered over the ST, and reading
#: those rows from the input (a backed .h5ad from the command line) a chunk at a time made the
#: cost per cell grow with the ST. 1.2 GB at 10^6 cells x 300 known genes (held under 1.5 GiB
#: too), 2.0 GB at 10^5 cells x 5,000: read from the input instead, the spatial view of a chunk
#: of 256 cells reads its spatial neighbours' rows, scattered (3,000 of them: 0.76 s of CPU at
#: 5,000 genes, backed .h5ad), about 300 s of CPU over 10^5 cells against 7 s to hold them.
HELD_VALUES_BYTES = 2 * 2**30
#: Where the spatial view is read a chunk at a time, the spatial values of the expression
#: graph's landmarks (every cell's expression neighbours) are held when they take at most this
#: many bytes (24 MB at 300 known genes, 400 MB at 5,000: at most `EXPRESSION_LANDMARKS` rows
#: whatever the ST's size). Not held, each chunk of 1,024 cells smoothed its (up to 15,360)
#: expression neighbours in space again, a gather of most of the ST: at 2x10^4 cells x 5,000
#: known genes, where 256 MiB left them out, the views' smoothing was 43% of the default
#: command line's samples (py-spy); held, its CPU went from 599.5 to 432.3 s.
LANDMARK_VIEW_BYTES = 512 * 2**20
#: Where the known genes are read from the input, the landmarks whose spatial values are
#: computed at once are at most this many values' worth (8,192 landmarks at 300 genes, 491 at
#: 5,000): each block reads its landmarks' spatial neighbours too, ~15 rows a landmark (8,192
#: landmarks at 5,000 genes read most of a 2x10^5-cell ST at once, 5 GB in float64).
LANDMARK_BLOCK_VALUES = BLOCK * 300


def remembering_last(read: Callable[[np.ndarray], np.ndarray]
                     ) -> Callable[[np.ndarray], np.ndarray]:
    """`read(rows)` that returns its last result again when asked for the same rows twice in a
    row, instead of computing it anew. Callers must not modify what it returns. Each thread
    has its own last result: threads reading other chunks at once (`runtime.ordered_map`)
    never see each other's."""
    local = threading.local()

    def read_once(rows: np.ndarray) -> np.ndarray:
        last = getattr(local, "last", None)
        if last is None or not np.array_equal(last[0], rows):
            last = local.last = (np.array(rows), read(rows))
        return last[1]

    return read_once


def contiguous(rows: Any) -> Any:
    """Sorted cell indices without gaps as a slice (a fast block read); others as given."""
    if isinstance(rows, np.ndarray) and len(rows) and rows[-1] - rows[0] == len(rows) - 1:
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def available_views(config: Config, has_coordinates: bool) -> list[str]:
    """The views a stack may read: raw always; expression where `expression_weight` > 0;
    spatial where the ST has coordinates and `spatial_weight` > 0."""
    out = ["raw"]
    if config.expression_weight > 0:
        out.append("expression")
    if has_coordinates and config.spatial_weight > 0:
        out.append("spatial")
    return out


def available_readouts(config: Config, log_normalized: bool) -> list[str]:
    """The readouts a stack may use: the expression, and the value at the cell's depth for
    counts input, as `Config.output` allows ("auto": both)."""
    if config.output == "auto":
        return ["expression"] if log_normalized else list(READOUTS)
    return [config.output]


def network_view(views: Sequence[str]) -> str:
    """The view the network reads: the richest available."""
    return next(v for v in ("spatial", "expression", "raw") if v in views)


def candidate_columns(model: Any, config: Config, views: Sequence[str],
                      readouts: Sequence[str]) -> list[str]:
    """Every column the model can give for `config.predictors`, in a fixed order."""
    out = []
    for name in config.predictors:
        if name == NETWORK:
            if model.network is not None:
                out += [column(NETWORK, network_view(views), r) for r in readouts]
        elif name == MASKED:
            if name in model.predictors:
                out += [column(MASKED, "raw", r) for r in readouts]
        elif name in model.predictors:
            out += [column(name, v, r) for v in views for r in readouts]
    return out


class ColumnSource:
    """Predictions of a model's columns on one ST data set (see the module's docstring).

    Parameters
    ----------
    model
        The fitted `spalstf.Model` (not imported here: the model imports this module).
    expr
        The ST (validated; it holds the model's known genes).
    st_known
        The ST's names of the model's known genes, in the model's order.
    config
        The imputation's settings (context weights, sampling).
    columns
        The columns to predict (names ``predictor|view|readout``).
    views
        Views to read besides those of the columns (`read`).
    log_normalized, spatial, seed, device
        As `Model.impute`'s.
    n_predicted
        How many cells `predict` will be asked for (None: every cell). The views of every cell
        are held only where they fit in `HELD_VIEW_BYTES` and most cells would be read anyway
        (the cells `prepare` reads, `spalstf.prior.base.STAT_CELLS`, and those predicted):
        the self-check predicts a few thousand cells, and computing the views of a larger ST
        for all of them was most of its cost. Values do not depend on it.

    The views of every cell (where held) and the predictions of `predict` are computed a block
    of cells at a time by `workers` threads at once (`spalstf.runtime.chunk_workers`), each op
    on one thread on a CPU, with one worker too (`spalstf.runtime.one_thread_per_op`): a
    cell's values are the same whatever the number of workers. Where a column is a network's
    (whose sampling was not made safe for threads, and whose ops gain from threads), one
    worker with the caller's threads.
    """

    def __init__(self, model: Any, expr: Expression, st_known: list[str], config: Config,
                 columns: Sequence[str], *, log_normalized: bool, spatial: Any, seed: int,
                 device: torch.device, views: Sequence[str] = (),
                 n_predicted: int | None = None) -> None:
        self.model, self.expr, self.st_known = model, expr, st_known
        self.config, self.seed, self.device = config, seed, device
        self.log_normalized = log_normalized
        self.columns = list(columns)
        #: Held while the ST is read (a backed .h5ad's reader is not known to be thread-safe).
        self._reading = threading.Lock()
        parsed = [parse(c) for c in self.columns]
        networks = any(name in (NETWORK, MASKED) for name, _, _ in parsed)
        self.workers = 1 if networks else chunk_workers(device)
        #: Whether the per-cell loops run each op on one thread (`mapped`).
        self.one_thread_ops = not networks and torch.device(device).type == "cpu"
        needed_views = sorted({v for _, v, _ in parsed} | set(views), key=VIEWS.index)
        if any(r == "at_depth" for _, _, r in parsed) and log_normalized:
            raise ValueError("columns read out at the cell's depth need the ST's counts; "
                             "received log-normalised input")
        xy = None
        if "spatial" in needed_views:
            xy = coordinates(expr.source, spatial, expr.n_cells, expr.named_cells)
            if xy is None:
                raise ValueError("a column reads the spatial view, but the ST has no "
                                 "coordinates (`spatial`)")
        self._graph: Callable[[np.ndarray], np.ndarray] | None = None
        read_anyway = expr.n_cells if n_predicted is None else (
            min(expr.n_cells, STAT_CELLS) + n_predicted)
        hold = (expr.n_cells * len(st_known) * 4 * len(needed_views) <= HELD_VIEW_BYTES
                and read_anyway >= expr.n_cells)
        #: Every cell's log-normalised known genes, where they fit in HELD_VALUES_BYTES (and
        #: their spatial smoothing too, where both fit in HELD_VIEW_BYTES): the smoothing of a
        #: block reads the rows of its neighbours' neighbours, most of the ST, so each block
        #: normalised (and smoothed in space) most cells again (the same rows: values alike),
        #: held views or not.
        self._held: np.ndarray | None = None
        values_bytes = expr.n_cells * len(st_known) * 4
        self._hold_spatial = hold or values_bytes * 2 <= HELD_VIEW_BYTES
        if self._hold_spatial or values_bytes <= HELD_VALUES_BYTES:
            self._held = self._every_cell(self._normalised)
        self.readers = {v: self._view(v, xy) for v in needed_views}
        if hold:
            # a block of cells through every view in turn, so that the views smoothed over the
            # expression graph share each block's search (`_expression_graph`)
            parts: dict[str, list[np.ndarray]] = {view: [] for view in self.readers}
            for values in self._by_blocks(lambda block: [
                    reader(block) for reader in self.readers.values()]):
                for view, part in zip(self.readers, values, strict=True):
                    parts[view].append(part)
            for view, blocks in parts.items():
                held = np.concatenate(blocks)
                self.readers[view] = lambda cells, held=held: held[cells]
            spaced = None
        else:
            # The cells every predictor's `prepare` reads, read (and smoothed) once per view
            # for all of them, in the same blocks: each read them anew before. Not the raw
            # view of held known genes, read from them (a gather): its copies of 50,000 cells
            # took 1 GB at 5,000 known genes, beside the smoothed views' 2 GB.
            spaced = {view: [] for view in self.readers
                      if view != "raw" or self._held is None}
            for cells in spaced_blocks(lambda cells: cells, expr.n_cells, config.batch_size)():
                for view in spaced:
                    spaced[view].append(self.readers[view](cells))
        scaler = model.known_scaler
        if config.align == "per_dataset":
            scaler = Standardizer.fit_blocks(lambda: (
                (None, self._normalised(np.arange(s, min(s + BLOCK, expr.n_cells))))
                for s in range(0, expr.n_cells, BLOCK)))
        self.scaler = scaler
        # a fresh copy of each base predictor per view, prepared on that view of the whole ST
        self.prepared: dict[tuple[str, str], BasePredictor] = {}
        for name, view, _ in parsed:
            if name == NETWORK or (name, view) in self.prepared:
                continue
            original = model.predictors[name]
            predictor = type(original).from_state(original.state(), config)
            if spaced is None or view not in spaced:
                blocks = spaced_blocks(
                    lambda cells, v=view, s=predictor.reads: self.read(v, s, cells),
                    expr.n_cells, config.batch_size)
            else:
                def blocks(v=view, s=predictor.reads):
                    return (b if s == EXPRESSION else self.scaler.transform(b)
                            for b in spaced[v])
            predictor.prepare(blocks, device=device)
            if expr.n_cells >= FLOAT32_SEARCH_CELLS:  # the per-cell cost of large runs
                search_in_float32(predictor)
            self.prepared[name, view] = predictor

    @contextmanager
    def mapped(self, function: Callable, items: Any):
        """An iterator of `function(item)` for each of `items`, in order, computed by the
        source's `workers` (`spalstf.runtime.ordered_map`), each op on one thread where
        `one_thread_ops`, for the block."""
        threads = one_thread_per_op() if self.one_thread_ops else nullcontext()
        with threads, closing(ordered_map(function, items, workers=self.workers)) as results:
            yield results

    def _by_blocks(self, read: Callable[[np.ndarray], Any]) -> list:
        """`read(block)` of every cell, `BLOCK` cells at a time in order (`mapped`)."""
        n = self.expr.n_cells
        with self.mapped(read, (np.arange(s, min(s + BLOCK, n))
                                for s in range(0, n, BLOCK))) as results:
            return list(results)

    def _every_cell(self, read: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """`read(block)` (cells x known genes) of every cell in one array, filled a block at a
        time as `_by_blocks` computes them: a list of the blocks beside their concatenation
        held the values twice (2.4 GB at 10^6 cells x 300 known genes)."""
        n = self.expr.n_cells
        out = np.empty((0, len(self.st_known)), np.float32)
        starts = range(0, n, BLOCK)
        with self.mapped(read, (np.arange(s, min(s + BLOCK, n)) for s in starts)) as results:
            for start, block in zip(starts, results, strict=True):
                if start == 0:
                    out = np.empty((n, *block.shape[1:]), block.dtype)
                out[start:start + len(block)] = block
        return out

    def _normalised(self, rows: np.ndarray) -> np.ndarray:
        if getattr(self, "_held", None) is not None:
            return self._held[rows]
        with self._reading:
            counts = self.expr.columns(self.st_known, contiguous(rows))
        return log_normalize(counts, scale_factor=self.config.scale_factor,
                             log_normalized=self.log_normalized)[0]

    def _view(self, view: str, xy: np.ndarray | None) -> Callable[[np.ndarray], np.ndarray]:
        cfg, n = self.config, self.expr.n_cells
        values = self._normalised
        if view == "spatial":
            values = smoothed_reader(self._normalised, neighbours(xy, cfg.spatial_neighbors),
                                     cfg.spatial_weight)
            if self._held is not None and self._hold_spatial:
                # every cell once, not once per block that reads it
                spatial = self._every_cell(values)

                def values(rows: np.ndarray, spatial=spatial) -> np.ndarray:
                    return spatial[rows]
            else:
                # the expression smoothing below reads the spatial values of expression
                # neighbours, all landmarks: computed once, not once per chunk that reads them
                values = self._landmarks_held(values)
        elif view == "expression" and self._held is None:
            # where every cell's known genes are not held (HELD_VALUES_BYTES: 10^6 cells x
            # 600 genes, 2x10^5 x 5,000), the landmarks' are: the expression smoothing below
            # reads those of each chunk's expression neighbours, ~15,000 landmarks scattered
            # over the ST, which each chunk read (and normalised) from the input again
            values = self._landmarks_held(values)
        if view in ("expression", "spatial"):
            # neighbours in known-gene space, found on the cells' own values, among all ST
            # cells, so a chunk or subsample reads what the whole run reads
            values = expression_smoothed_reader(self._normalised, values, n,
                                                cfg.expression_neighbors,
                                                cfg.expression_weight, self.device,
                                                graph=self._expression_graph())
        return remembering_last(values)

    def _landmarks_held(self, values: Callable[[np.ndarray], np.ndarray]
                        ) -> Callable[[np.ndarray], np.ndarray]:
        """`values` with the expression graph's landmarks' rows computed once and held
        (`spalstf.spatial.held_rows_reader`), where there is a graph and they fit in
        `LANDMARK_VIEW_BYTES`; else `values` itself. Where the known genes are read from the
        input, in blocks of at most `LANDMARK_BLOCK_VALUES` values."""
        n = self.expr.n_cells
        landmarks = expression_landmarks(n)
        if (self._expression_graph() is None
                or len(landmarks) * len(self.st_known) * 4 > LANDMARK_VIEW_BYTES):
            return values
        block = BLOCK if self._held is not None else min(
            BLOCK, max(1, LANDMARK_BLOCK_VALUES // max(len(self.st_known), 1)))
        return held_rows_reader(values, landmarks, n, block)

    def _expression_graph(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """The expression neighbours of any cells (`spalstf.spatial.expression_graph`), one
        search shared by the views smoothed over it: they ask for the same cells in turn."""
        cfg, n = self.config, self.expr.n_cells
        if cfg.expression_weight == 0 or n < 2:
            return None
        if self._graph is None:
            self._graph = remembering_last(expression_graph(
                self._normalised, n, cfg.expression_neighbors, device=self.device,
                partial_axes=len(self.st_known) >= neighbours_module.COMPONENT_SEARCH_MIN_GENES))
        return self._graph

    def read(self, view: str, scale: str, cells: np.ndarray) -> np.ndarray:
        """The known genes of `cells` in `view` on `scale` (`EXPRESSION` or `MODEL`)."""
        values = self.readers[view](cells)
        return values if scale == EXPRESSION else self.scaler.transform(values)

    def depth(self, cells: np.ndarray) -> np.ndarray:
        """The cells' known-gene totals, in counts."""
        with self._reading:
            counts = self.expr.columns(self.st_known, contiguous(cells))
        return np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()

    def predict(self, cells: np.ndarray, *, progress: bool = False,
                workers: int | None = None) -> dict[str, np.ndarray]:
        """Column -> (len(cells), n_target) values on the output scale, for sorted `cells`;
        `workers`: threads predicting its chunks at once (None: the source's, as `mapped`
        sets them; a number, where the caller set the threads: `predict_stack`'s workers pass
        1)."""
        cells = np.asarray(cells)
        model, cfg = self.model, self.config
        out: dict[str, np.ndarray] = {}
        expression: dict[tuple[str, str], np.ndarray] = {}
        pairs = list(dict.fromkeys((name, view) for name, view, _ in map(parse, self.columns)))
        # The base predictors a chunk of cells at a time, each chunk read once per view for all
        # of them (each view's reader remembers its last chunk): read predictor by predictor,
        # a view's chunks were smoothed again for each predictor where views are not held.
        step = max(1, cfg.batch_size)
        parts: dict[tuple[str, str], list[np.ndarray]] = {
            pair: [] for pair in pairs if pair[0] != NETWORK}

        def predict_chunk(start: int) -> list[np.ndarray]:
            chunk = cells[start:start + step]
            predicted = []
            for name, view in parts:
                predictor = self.prepared[name, view]
                # on the output scale at once (elementwise: as over all cells), so that the
                # chunks held are those of the result, not a model-space copy besides
                predicted.append(model.target_scaler.inverse(predictor.predict(
                    self.read(view, predictor.reads, chunk))).astype(np.float32))
            return predicted

        starts = range(0, len(cells), step) if parts else ()
        with (self.mapped(predict_chunk, starts) if workers is None else
              closing(ordered_map(predict_chunk, starts, workers=workers))) as chunks:
            for values in chunks:
                for pair, part in zip(parts, values, strict=True):
                    parts[pair].append(part)
        for name, view in pairs:
            if name == NETWORK:
                expression[name, view] = model.target_scaler.inverse(
                    self._network(view, cells, progress)).astype(np.float32)
            else:
                expression[name, view] = np.concatenate(parts.pop((name, view))) if len(
                    cells) else np.zeros((0, len(model.target_genes)), np.float32)
        depth = None
        for name_ in self.columns:
            name, view, readout = parse(name_)
            values = expression[name, view]
            if readout == "at_depth":
                if depth is None:
                    depth = self.depth(cells)
                values = expected_at_depth(values, depth, scale_factor=cfg.scale_factor)
            out[name_] = values
        return out

    def _network(self, view: str, cells: np.ndarray, progress: bool) -> np.ndarray:
        """The network's mean sample (model space) of `cells`: its diffusion sampled around the
        ridge it was trained with (the whole refinement kept)."""
        model, cfg = self.model, self.config.replace(residual_weight=1.0)
        ridge = self.prepared.get(("ridge", view))
        if ridge is None and "ridge" in model.predictors:
            original = model.predictors["ridge"]
            ridge = type(original).from_state(original.state(), cfg)
            ridge.prepare(lambda: iter(()), device=self.device)
            self.prepared["ridge", view] = ridge
        prior = None
        if ridge is not None and cfg.prior == "ridge":
            def prior(chunk: slice) -> np.ndarray:
                return ridge.predict(self.read(view, MODEL, cells[chunk]))
        ts = model.target_scaler
        clip = (ts.low, ts.high) if cfg.clip_denoised and ts.low is not None else None
        model.network.to(self.device)
        mean, _ = impute_cells(
            model.network, model.diffusion, cfg, len(cells),
            lambda chunk: self.read(view, MODEL, cells[chunk]),
            [self.expr.cells[i] for i in cells], lambda values, chunk: values,
            atlas=model.atlas, clip=clip, seed=self.seed, device=self.device,
            progress=progress, prior=prior)
        return mean
