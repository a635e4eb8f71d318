"""Context of an ST cell: its input shares in its spatial and expression neighbours' values.

A cell's measured known genes are a noisy read of its state (few counts per gene in imaging
panels, mixed cells in spots). Neighbouring cells in a tissue are alike, so the known genes that
enter the model are (1 - w) x the cell's own values + w x the mean of its `k` nearest spatial
neighbours (log-normalised scale); w is chosen by the self-check (`spalstf.combine.selfcheck`) on
the ST's own known genes. Cells alike in their known genes are alike too: the result is then mixed
in the same way with the mean of its nearest ST cells in known-gene space
(`expression_smoothed_reader`). Only the ST's known genes are read, never a target gene.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from spalstf.network import NeighbourIndex
from spalstf.preprocess import Standardizer, leading_axes

logger = logging.getLogger(__name__)


#: obs columns that hold cell coordinates, looked for in this order when an AnnData has no
#: ``obsm["spatial"]``: plain x/y, x_coord/y_coord (the osmFISH pair's h5ad files), Seurat's
#: image positions (pixels), Visium's array grid, Xenium's and MERFISH's centroids.
OBS_COORDINATES = (("x", "y"), ("x_coord", "y_coord"), ("imagecol", "imagerow"),
                   ("array_col", "array_row"), ("x_centroid", "y_centroid"),
                   ("center_x", "center_y"))


def obs_coordinates(source: Any) -> list[str] | None:
    """The first pair of `OBS_COORDINATES` that `source`'s obs holds as numbers, or None."""
    obs = getattr(source, "obs", None)
    if obs is None:
        return None
    for pair in OBS_COORDINATES:
        if all(c in obs.columns and pd.api.types.is_numeric_dtype(obs[c]) for c in pair):
            return list(pair)
    return None


def resolve(source: Any, spatial: Any) -> Any:
    """`spatial` as given, or, when it is None and `source` has no ``obsm["spatial"]``, the
    obs columns holding the coordinates (`obs_coordinates`), said in a log line once here
    rather than at each of the several places that read them."""
    if spatial is not None or "spatial" in (getattr(source, "obsm", None) or {}):
        return spatial
    columns = obs_coordinates(source)
    if columns is not None:
        logger.info("spatial context: coordinates from obs columns %s (the ST has no "
                    "obsm['spatial'])", columns)
    return columns


def _obs_columns(spatial: Any) -> list[str] | None:
    """The obs column names `spatial` gives ("x,y" or a list of names), else None."""
    if isinstance(spatial, str):
        return [c.strip() for c in spatial.split(",")] if "," in spatial else None
    if isinstance(spatial, (list, tuple)) and spatial and all(isinstance(c, str) for c in spatial):
        return list(spatial)
    return None


def _aligned(frame: pd.DataFrame, cells: Sequence[str]) -> pd.DataFrame:
    """The rows of `frame` in the order of `cells`: by position when its index is pandas'
    default (the integers 0..n-1 in order), else matched by its index (as strings); a
    ValueError naming cells it lacks (or its repeated names), or for any other integer index.
    Rows for other cells are left out."""
    index = frame.index.astype(str)
    if list(index) == list(cells):
        return frame  # in the order of the cells by either reading
    if pd.api.types.is_integer_dtype(frame.index.dtype):
        # Cell names are strings (obs_names), so integers are positions, not names: 0..n-1 in
        # order is the index pandas gives a frame built without one (from an array, or after
        # reset_index), whose rows are in the order of `st` even where its cells are named
        # "0".."n-1" in another order (osmFISH's are). Other integers (a subset, or a sorted
        # frame) could be either positions or names: refused rather than guessed.
        if np.array_equal(frame.index.to_numpy(), np.arange(len(frame))):
            return frame  # its length is checked against the cells by the caller
        raise ValueError(
            f"`spatial` (a DataFrame) has an integer index other than 0..{len(frame) - 1} in "
            f"order (for example {list(frame.index[:3])}), so it cannot be told whether its rows "
            "are in the order of `st` or labelled by cell: to align them by cell, index it by "
            "the cell names, strings as st.obs_names are (frame.index = "
            "frame.index.astype(str)); to take them in the order of `st`, pass "
            "frame.to_numpy()")
    if index.has_duplicates:
        repeated = sorted(set(index[index.duplicated()]))[:5]
        raise ValueError(f"`spatial` (a DataFrame, aligned to the cells of `st` by its index) "
                         f"names some cells more than once, for example {repeated}")
    present = set(index)
    missing = [c for c in cells if c not in present]
    if missing:
        raise ValueError(
            f"`spatial` (a DataFrame, aligned to the cells of `st` by its index) lacks "
            f"{len(missing)} of the {len(cells)} cells of `st`, for example {missing[:5]} (its "
            f"index has for example {list(index[:3])}); index it by st.obs_names, or pass an "
            "array (frame.to_numpy()) to take its rows in the order of `st`")
    return frame.set_axis(index).loc[list(cells)]


def coordinates(source: Any, spatial: Any, n_cells: int,
                cells: Sequence[str] | None = None) -> np.ndarray | None:
    """The (n_cells, d) coordinates to use, or None when there are none.

    A pandas DataFrame (given, or in obsm) indexed by cell names (strings) is aligned by its
    index to `cells`, the cell names of an ST that has them (an AnnData's obs_names, a
    DataFrame's index): its rows may come in any order and hold other cells too; cells it
    lacks are an error naming them. A DataFrame with pandas' default index (the integers
    0..n-1 in order) is taken row by row in the order of the ST, like an array, even where
    the cells are named "0".."n-1" in another order; any other integer index is refused as
    ambiguous. Without cell names (a bare matrix ST), rows are taken in order.

    `spatial`: None reads ``obsm["spatial"]`` of an AnnData `source` when present, else the
    obs columns of `OBS_COORDINATES`; False turns the spatial context off; an obsm key (str),
    obs columns ("x,y" or ["x", "y"]) or an array gives them explicitly.
    """
    if spatial is False:
        return None
    columns = _obs_columns(spatial)
    if columns is not None:
        obs = getattr(source, "obs", None)
        missing = [c for c in columns if obs is None or c not in obs.columns]
        if missing:
            raise ValueError(f"`spatial` names obs columns {missing}, which `st` does not "
                             f"have; its obs columns are {[] if obs is None else list(obs)}")
        spatial = obs[columns].to_numpy()
    elif spatial is None or isinstance(spatial, str):
        key = spatial or "spatial"
        obsm = getattr(source, "obsm", None)
        if obsm is None or key not in obsm:
            if spatial is not None:
                raise ValueError(f"`spatial` names obsm[{key!r}], which `st` does not have; "
                                 f"its obsm keys are {sorted(obsm.keys()) if obsm else []} "
                                 "(obs columns are named with a comma: 'x,y')")
            columns = obs_coordinates(source)
            if columns is None:
                return None
            spatial = source.obs[columns].to_numpy()
        else:
            spatial = obsm[key]
    if isinstance(spatial, pd.DataFrame) and cells is not None:
        spatial = _aligned(spatial, cells)
    try:
        xy = np.array(spatial, dtype=np.float64)  # a copy: never the caller's array
    except (TypeError, ValueError) as err:
        raise ValueError(f"`spatial` coordinates must be numbers; {err}") from None
    if xy.ndim != 2 or xy.shape[0] != n_cells or xy.shape[1] < 1:
        raise ValueError(f"`spatial` must be cells x dimensions with {n_cells} rows (one per "
                         f"cell of `st`); received shape {xy.shape}")
    if not np.isfinite(xy).all():
        raise ValueError("`spatial` coordinates must be finite; found NaN or Inf")
    return xy


def neighbours(xy: np.ndarray, k: int) -> np.ndarray:
    """Indices (n_cells, k') of each cell's k nearest other cells (k' = min(k, n_cells - 1)).

    Ties are broken by index, so the result does not depend on the order of the cells.
    """
    from scipy.spatial import cKDTree

    n = xy.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return np.empty((n, 0), dtype=np.int64)
    # One extra neighbour: the cell itself (or a duplicate position), removed below.
    dist, idx = cKDTree(xy).query(xy, k=k + 1)
    idx = np.asarray(idx, dtype=np.int64).reshape(n, k + 1)
    dist = np.asarray(dist).reshape(n, k + 1)
    order = np.lexsort((idx, dist), axis=1)
    idx = np.take_along_axis(idx, order, axis=1)
    # Drop the cell itself (at distance 0 among the k + 1 nearest), or the farthest when
    # duplicated positions pushed it out.
    is_self = idx == np.arange(n)[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
    keep = np.ones_like(idx, dtype=bool)
    keep[np.arange(n), drop] = False
    return idx[keep].reshape(n, k)


def smoothed_reader(read: Callable[[np.ndarray], np.ndarray],
                    nbrs: np.ndarray | Callable[[np.ndarray], np.ndarray] | None,
                    weight: float) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap `read(rows) -> values` so that each row is mixed with its neighbours' mean.

    `nbrs`: the (cells, k) neighbour indices of every cell, or a function giving those of
    the rows asked for. Rows are given as sorted index arrays (a slice of cells, or a
    subsample of them).
    """

    def read_smoothed(idx: np.ndarray) -> np.ndarray:
        own = read(idx)
        if nbrs is None or weight == 0:
            return own
        nb = nbrs(idx) if callable(nbrs) else nbrs[idx]
        if nb.shape[1] == 0:
            return own
        needed, inverse = np.unique(nb, return_inverse=True)
        return (1 - weight) * own + weight * neighbour_mean(read(needed),
                                                            inverse.reshape(nb.shape))

    return read_smoothed


def neighbour_mean(values: np.ndarray, nbrs: np.ndarray) -> np.ndarray:
    """(cells, genes): the mean of `values`' rows `nbrs[i]` for each row i of `nbrs`.

    The same numbers as ``values[nbrs].mean(axis=1)`` (which adds the k rows in order, then
    divides by k), a third of its time: the (cells, k, genes) gather it makes first was most of
    the smoothing's cost (cProfile of the default command line).
    """
    total = np.take(values, nbrs[:, 0], axis=0)
    for j in range(1, nbrs.shape[1]):
        total += np.take(values, nbrs[:, j], axis=0)
    return np.true_divide(total, nbrs.shape[1], out=total)


#: ST cells (evenly spaced) among which expression neighbours are searched: every cell up to
#: this many, so that the search's cost and memory stop growing with the ST beyond it.
EXPRESSION_LANDMARKS = 20000
#: Principal components of the ST's z-scored known genes in which expression neighbours are
#: found: they keep the shared structure and drop much of each gene's own noise.
EXPRESSION_COMPONENTS = 30
#: Landmarks (evenly spaced among them) whose rows give those components on large panels
#: (`spalstf.prior.neighbours.COMPONENT_SEARCH_MIN_GENES` known genes and more): 30 axes are
#: well resolved by 10^4 cells, and a (landmarks x genes) float32 matrix stays at 200 MB for
#: 5,000 genes.
AXES_CELLS = 10000


def expression_smoothed_reader(read_graph: Callable[[np.ndarray], np.ndarray],
                               read_values: Callable[[np.ndarray], np.ndarray], n_cells: int,
                               k: int, weight: float, device: Any = "cpu", block: int = 1024,
                               *, graph: Callable[[np.ndarray], np.ndarray] | None = None
                               ) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap `read_values(rows)` so that each row is mixed with its expression neighbours' mean.

    Cells alike in their known genes are alike in the rest, so a cell's known genes are also
    smoothed over its `k` nearest ST cells in known-gene space (MAGIC-like, one step), which
    averages out measurement noise where spatial neighbours are unlike the cell (a boundary)
    or there are none (no coordinates). Neighbours are found on `read_graph` (log-normalised,
    unsmoothed known genes), z-scored over the ST and projected on their first
    EXPRESSION_COMPONENTS principal components; they are searched among at most
    EXPRESSION_LANDMARKS evenly spaced cells (all of them in smaller data), the cell itself
    excepted, so that a cell's neighbours do not depend on which other cells are read with it
    (chunks, shards, subsamples). What is averaged is `read_values` (the spatially smoothed
    values, when the ST has coordinates). Rows are given as sorted index arrays; the landmark
    cells are read `block` at a time, so memory beyond their embedding stays bounded.
    """
    if weight == 0 or n_cells < 2:
        return read_values
    if graph is None:
        graph = expression_graph(read_graph, n_cells, k, device=device, block=block)
    return smoothed_reader(read_values, graph, weight)


def expression_landmarks(n_cells: int) -> np.ndarray:
    """The evenly spaced ST cells among which `expression_graph` searches (sorted indices):
    every cell up to EXPRESSION_LANDMARKS, so every expression neighbour is one of them."""
    return np.unique(np.linspace(0, n_cells - 1, min(n_cells, EXPRESSION_LANDMARKS))
                     .astype(np.int64))


def held_rows_reader(read: Callable[[np.ndarray], np.ndarray], rows: np.ndarray,
                     n_cells: int, block: int = 8192) -> Callable[[np.ndarray], np.ndarray]:
    """`read` with the values of `rows` (sorted cell indices) computed once, in blocks, and
    held: any cells asked for are served from them where held, and read otherwise.

    For a view read a chunk at a time that is then smoothed over the expression graph: every
    expression neighbour is a landmark (`expression_landmarks`), so without it each chunk
    computed its neighbours' values anew (for the spatial view: gathered and averaged their
    spatial neighbours), most of the cost per cell above 2x10^5 cells (py-spy, 4x10^5 cells).
    A row's values do not depend on the rows read with it (`smoothed_reader`), so the result
    is the same as `read`'s.
    """
    held = None
    for start in range(0, len(rows), block):  # filled in place: no list of blocks beside it
        part = read(rows[start:start + block])
        if held is None:
            held = np.empty((len(rows), *part.shape[1:]), part.dtype)
        held[start:start + len(part)] = part
    if held is None:
        raise ValueError("held_rows_reader needs at least one row to hold; received none")
    position = np.full(n_cells, -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))

    def read_held(idx: np.ndarray) -> np.ndarray:
        at = position[idx]
        kept = at >= 0
        if kept.all():
            return held[at]
        out = np.empty((len(idx), held.shape[1]), dtype=held.dtype)
        out[kept] = held[at[kept]]
        out[~kept] = read(idx[~kept])
        return out

    return read_held


def expression_graph(read_graph: Callable[[np.ndarray], np.ndarray], n_cells: int, k: int, *,
                     device: Any = "cpu", block: int = 1024, partial_axes: bool = False
                     ) -> Callable[[np.ndarray], np.ndarray]:
    """`neighbours(rows)`: the (len(rows), k') expression neighbours of `expression_smoothed_reader`
    (its docstring says how they are found). Apart from it, so that views smoothed over the same
    graph (the expression and spatial views of one ST) search it once. Needs n_cells >= 2.
    `partial_axes` (large panels: `spalstf.prior.neighbours.COMPONENT_SEARCH_MIN_GENES`): the
    components from a randomised partial decomposition of at most `AXES_CELLS` landmarks' rows
    (`spalstf.preprocess.leading_axes`) instead of the full eigen-decomposition of the
    (genes x genes) covariance of every landmark."""
    landmarks = expression_landmarks(n_cells)
    k = min(k, len(landmarks) - 1)

    def blocks():
        for start in range(0, len(landmarks), block):
            yield None, read_graph(landmarks[start:start + block])

    scaler = Standardizer.fit_blocks(blocks)
    if partial_axes:
        # large panels: a randomised partial decomposition of at most AXES_CELLS landmarks'
        # rows, not the (genes x genes) covariance of all of them and its full eigen-
        # decomposition (at 20,000 landmarks x 5,000 genes, about a minute per graph)
        some = landmarks[::-(-len(landmarks) // AXES_CELLS)]
        z = np.concatenate([scaler.transform(read_graph(some[start:start + block]))
                            for start in range(0, len(some), block)])
        axes = leading_axes(z, min(EXPRESSION_COMPONENTS, *z.shape)).T.astype(np.float32)
        del z
    else:
        covariance = sum(z.T @ z for z in (scaler.transform(g).astype(np.float64)
                                           for _, g in blocks()))
        # principal axes from the covariance's eigenvectors (deterministic; signs do not
        # matter)
        _, vectors = np.linalg.eigh(covariance / len(landmarks))
        axes = vectors[:, ::-1][:, :min(EXPRESSION_COMPONENTS, vectors.shape[1])].astype(
            np.float32)
    index = NeighbourIndex(np.concatenate([scaler.transform(g) @ axes for _, g in blocks()]),
                           device=device)
    position = np.full(n_cells, -1, dtype=np.int64)
    position[landmarks] = np.arange(len(landmarks))

    def expression_neighbours(idx: np.ndarray) -> np.ndarray:
        query = scaler.transform(read_graph(idx)) @ axes
        return landmarks[index.query(query, k, self_index=position[idx])[0]]

    return expression_neighbours
