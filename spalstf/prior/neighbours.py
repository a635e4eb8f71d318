"""The aligned-neighbour estimate: the mean targets of a cell's most similar reference profiles.

Each data set is z-scored over itself (the ST's known genes over the ST, in `prepare`; the
reference profiles over themselves) and profiles are compared by cosine similarity, as SpaGE
aligns two platforms; the estimate of a cell is the mean target genes of its
`Config.knn_neighbors` nearest atlas cells or pseudo-spots. Its errors differ from the ridge's,
so the two are blended (`spalstf.combine.blend.Blend`, `Config.knn_weight`).
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Callable

import numpy as np
import torch

from spalstf.network import NeighbourIndex
from spalstf.preprocess import Standardizer, leading_axes
from spalstf.prior.base import EXPRESSION, BasePredictor, Blocks, Reference
from spalstf.prior.spots import ESTIMATE_MIXTURES_PER_SIZE, pseudo_spots
from spalstf.runtime import PerThread
from spalstf.spatial import neighbour_mean


class ProfileIndex:
    """The k nearest profiles of each query row by Euclidean distance, for the base predictors.

    Squared distances are computed in float64 by matrix products, a block of queries at a
    time, and ranked by (distance, profile row): float64 rounding (about 1e-16 of the squared
    norms) is far below any difference between real profiles, so a cell's neighbours do not
    depend on the other cells of its chunk. Much faster than the network's certified
    `spalstf.network.NeighbourIndex` (which guarantees the exact order of float32 distances
    whatever the rounding), which made the predictors' searches the bulk of an imputation.
    Memory: at most `max_elements` distances at once.
    """

    max_elements = 2**24
    #: Device -> one flat float64 buffer holding two (block x profiles) matrices, shared by
    #: every index of the process and reused from block to block and call to call: a fresh
    #: block of that size (over the allocator's mapping threshold) is memory the system maps
    #: and zeroes anew each time, which took as long as the matrix product itself (cProfile of
    #: the default command line at 10^4 cells). One per thread (`runtime.PerThread`): the
    #: chunks of an imputation are searched by several threads at once (`runtime.ordered_map`).
    _scratch = PerThread()
    #: Held while the counters below are added to, or the float32 copy built, by a thread.
    _lock = threading.Lock()
    #: Elements of each scratch matrix kept between queries (64 MiB: a chunk of 256 cells
    #: against 32,768 profiles); a larger scratch is released after its query.
    scratch_kept = 2**23
    #: Candidates beyond the k-th among which the float32 path decides a near-tie at the k-th
    #: in float64 (`_query_float32`).
    margin = 32

    def __init__(self, profiles: np.ndarray, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.profiles = torch.as_tensor(np.asarray(profiles, np.float64), device=self.device)
        self.squares = (self.profiles ** 2).sum(dim=1)
        #: Search in two stages (`_query_float32`): set on large STs (`search_in_float32`).
        self.float32 = False
        self._profiles32: tuple[torch.Tensor, torch.Tensor] | None = None
        #: Queries of the float32 path not certified by it alone (diagnostics), and those of
        #: them that took the float64 search over every profile.
        self.uncertified = 0
        self.full_searches = 0

    def own_switches(self) -> ProfileIndex:
        """An index over the same profile tensors (not copied) with its own float32 switch and
        diagnostics, both as a fresh index's (`shared_search`)."""
        index = copy.copy(self)
        index.float32, index._profiles32 = False, None
        index.uncertified = index.full_searches = 0
        return index

    def query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, distances) of each query's k nearest profiles, nearest first."""
        k = min(k, self.profiles.shape[0])
        if self.float32 and k < self.profiles.shape[0]:
            return self._query_float32(queries, k)
        return self._query_float64(queries, k)

    def _query_float64(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`query` by float64 matrix products of whole blocks (the exact path)."""
        step = max(1, self.max_elements // max(self.profiles.shape[0], 1))
        out_idx, out_dist = [], []
        for start in range(0, len(queries), step):
            q = torch.as_tensor(np.asarray(queries[start:start + step], np.float64),
                                device=self.device)
            total, product = self._buffers(len(q))
            # (|q|^2 + |p|^2) - (2 q) p', in this order, as one expression computed it before
            torch.add((q ** 2).sum(dim=1, keepdim=True), self.squares[None], out=total)
            torch.matmul(2 * q, self.profiles.T, out=product)
            d2 = total.sub_(product)
            values, idx = torch.topk(d2, k, dim=1, largest=False, sorted=True)
            values, idx = values.cpu().numpy(), idx.cpu().numpy()
            # ties (duplicate profiles) by profile row, whatever order topk returned them in
            order = np.lexsort((idx, values), axis=1)
            out_idx.append(np.take_along_axis(idx, order, axis=1))
            out_dist.append(np.sqrt(np.clip(np.take_along_axis(values, order, axis=1), 0, None)))
        if self._scratch.get(self.device, torch.empty(0)).numel() > 2 * self.scratch_kept:
            del self._scratch[self.device]  # a large query's: not held for the rest of the run
        if not out_idx:
            return np.zeros((0, k), np.int64), np.zeros((0, k))
        return np.concatenate(out_idx).astype(np.int64), np.concatenate(out_dist)

    def _query_float32(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`query` by a float32 matrix product, about 1.5x as fast on a CPU, for large STs.

        A bound on the float32 rounding of the squared distances certifies, query by query,
        that the k nearest profiles are those of the float64 path (the gap between the k-th
        and the next is wider than the rounding); queries it does not certify are decided as
        below. Within a certified set, profiles are ranked by their float32 distances (then by
        row), so two members within float32 rounding of each other may come in the other order
        than the float64 path's, and the distances returned are float32-precise. The
        predictors read the set (means over it) and recompute the distances they weigh.

        A query not certified so (a near-tie at the k-th profile: 40% of the queries of the
        neighbour average in 300 genes, whose squared norms, and so whose rounding bound, are
        large) is decided among its `margin` next candidates instead of by a float64 search
        over every profile: where the gap after them is wider than the rounding, no other
        profile can be among the k nearest, and the candidates within the rounding of the k-th
        are ranked by their float64 distances (`_settle_border`); the set is then ranked as a
        certified one. Only queries without that gap take the float64 path
        (`full_searches`)."""
        if self._profiles32 is None:
            with self._lock:  # once, whichever thread asks first
                if self._profiles32 is None:
                    self._profiles32 = (self.profiles.float(), self.squares.float())
        profiles32, squares32 = self._profiles32
        n_profiles, n_dims = self.profiles.shape
        largest_square = float(self.squares.max())
        step = max(1, self.max_elements // max(n_profiles, 1))
        out_idx = np.empty((len(queries), k), np.int64)
        out_dist = np.empty((len(queries), k), np.float64)
        for start in range(0, len(queries), step):
            block = np.asarray(queries[start:start + step])
            q = torch.as_tensor(block, dtype=torch.float32, device=self.device)
            q_sq = (q.double() ** 2).sum(dim=1)
            flat = self._scratch.get((self.device, "float32"))
            size = len(q) * n_profiles
            if flat is None or flat.numel() < size:
                flat = self._scratch[self.device, "float32"] = torch.empty(
                    size, dtype=torch.float32, device=self.device)
            # |p|^2 - 2 q.p in one pass (|q|^2 is the same along a row: it changes no order)
            approx = torch.addmm(squares32[None], q, profiles32.T, alpha=-2.0,
                                 out=flat[:size].view(len(q), n_profiles))
            pool = min(k + self.margin, n_profiles - 1)  # candidates beyond the k-th
            near, cand = torch.topk(approx, pool + 1, dim=1, largest=False, sorted=True)
            near, cand = near.double().cpu().numpy(), cand.cpu().numpy()
            # float32 rounding of |p|^2 - 2 q.p (and of q and p themselves), bounded
            # generously, as `spalstf.network.NeighbourIndex` bounds its own
            slack = 4.0 * (n_dims + 2) * 2.0 ** -24 * (q_sq.cpu().numpy() + largest_square)
            certain = near[:, k] - near[:, k - 1] > 2 * slack
            # the k-th and the next within rounding, but every profile outside the pool
            # certainly farther than the k-th: decided among the pool in float64
            in_pool = ~certain & (near[:, pool] - near[:, k - 1] > 2 * slack)
            top, idx = near[:, :k], cand[:, :k]
            order = np.lexsort((idx, top), axis=1)  # ties by profile row
            rows = slice(start, start + len(q))
            out_idx[rows] = np.take_along_axis(idx, order, axis=1)
            out_dist[rows] = np.sqrt(np.clip(np.take_along_axis(top, order, axis=1)
                                             + q_sq.cpu().numpy()[:, None], 0, None))
            with self._lock:
                self.uncertified += int((~certain).sum())
            if in_pool.any():
                doubt = np.flatnonzero(in_pool)
                chosen = self._settle_border(block[doubt], near[doubt], cand[doubt],
                                             slack[doubt], k)
                places = np.nonzero(chosen)[1].reshape(len(doubt), k)  # ascending per query
                top = np.take_along_axis(near[doubt], places, axis=1)
                idx = np.take_along_axis(cand[doubt], places, axis=1)
                order = np.lexsort((idx, top), axis=1)  # as the certified queries
                out_idx[start + doubt] = np.take_along_axis(idx, order, axis=1)
                out_dist[start + doubt] = np.sqrt(np.clip(
                    np.take_along_axis(top, order, axis=1)
                    + q_sq.cpu().numpy()[doubt, None], 0, None))
            rest = ~certain & ~in_pool
            if rest.any():
                doubt = np.flatnonzero(rest)
                with self._lock:
                    self.full_searches += len(doubt)
                i, d = self._query_float64(block[doubt], k)
                out_idx[start + doubt], out_dist[start + doubt] = i, d
        flat = self._scratch.get((self.device, "float32"))
        if flat is not None and flat.numel() > 2 * self.scratch_kept:
            del self._scratch[self.device, "float32"]  # a large query's: not held further
        return out_idx, out_dist

    def _settle_border(self, queries: np.ndarray, near: np.ndarray, cand: np.ndarray,
                       slack: np.ndarray, k: int) -> np.ndarray:
        """(rows, pool) mask of each query's k nearest among its float32 candidates `cand`
        (`near`: their float32 values, ascending; the last column the nearest outside the
        pool). Candidates farther than the rounding below the k-th are in; those within the
        rounding of it (the border, every profile near it: the caller checked the gap after the
        pool) are ranked by their float64 squared distances in the float64 path's form
        (``(|q|^2 + |p|^2) - (2 q) p'``), ties by profile row, for the places left."""
        pool = cand.shape[1] - 1
        kth = near[:, k - 1:k]
        sure = near[:, :pool] < kth - 2 * slack[:, None]
        border = ~sure & (near[:, :pool] <= kth + 2 * slack[:, None])
        rows, places = np.nonzero(border)
        members = cand[rows, places]
        q = torch.as_tensor(np.asarray(queries, np.float64)[rows], device=self.device)
        p = self.profiles[torch.as_tensor(members, device=self.device)]
        d2 = (((q ** 2).sum(dim=1) + self.squares[torch.as_tensor(members,
                                                                  device=self.device)])
              - ((2 * q) * p).sum(dim=1)).cpu().numpy()
        order = np.lexsort((members, d2, rows))  # by query, then distance, then row
        rows, places = rows[order], places[order]
        first = np.searchsorted(rows, rows)  # each pair's query's first pair
        left = k - sure.sum(axis=1)  # places the border fills, per query
        taken = np.arange(len(rows)) - first < left[rows]
        chosen = sure
        chosen[rows[taken], places[taken]] = True
        return chosen

    def _buffers(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two (rows x profiles) float64 matrices of the shared scratch (`_scratch`)."""
        size = rows * self.profiles.shape[0]
        flat = self._scratch.get(self.device)
        if flat is None or flat.numel() < 2 * size:
            flat = self._scratch[self.device] = torch.empty(2 * size, dtype=torch.float64,
                                                            device=self.device)
        shape = (rows, self.profiles.shape[0])
        return flat[:size].view(shape), flat[size:2 * size].view(shape)


#: ST size (cells) from which the base predictors' profile searches take the two-stage float32
#: path (`ProfileIndex._query_float32`): the per-cell cost of large runs; below it every search
#: is the float64 one, so smaller data sets get bit-identical outputs.
FLOAT32_SEARCH_CELLS = 50000


def search_in_float32(predictor: object) -> None:
    """Switch the profile searches a prepared predictor holds (as attributes, or inside a
    tuple attribute) to the float32 path (`ProfileIndex._query_float32`)."""
    for value in vars(predictor).values():
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, ProfileIndex):
                item.float32 = True


#: Known genes from which the profile searches of the neighbour average and the aligned estimate
#: run in the reference's `SEARCH_COMPONENTS` leading principal components rather than in every
#: known gene, and the SpaGE-style projection keeps at most that many principal vectors
#: (`spalstf.prior.spage`), and the expression graph takes its axes from a sample of its
#: landmarks (`spalstf.spatial.expression_graph`'s `partial_axes`), all from a randomised partial
#: decomposition (`spalstf.preprocess.leading_axes`): with 5,000 known genes (Xenium 5k) the
#: searches in 5,000 dimensions were the per-cell cost and the full 5,000 x 5,000
#: eigen-decompositions 40% of a run. The panel size of the dual ridge
#: (`spalstf.prior.ridge.DUAL_MIN_GENES`), above every panel the outputs are pinned on (at most
#: 558 known genes), which keep their exact numbers.
COMPONENT_SEARCH_MIN_GENES = 1000
#: The reference's leading principal components the searches use from that panel size (SpaGE
#: itself keeps 30 to 50 principal vectors; twice that here, since the neighbour average and
#: the aligned estimate read no other dimension of the profiles).
SEARCH_COMPONENTS = 100


class Components:
    """The leading principal components of reference profiles (rows): `project` maps rows of
    the same genes onto them (centred on the profiles' mean), where Euclidean distances are
    those of the profiles' main directions of variation, without the noise of the others."""

    def __init__(self, profiles: np.ndarray, n: int) -> None:
        x = np.asarray(profiles, np.float32)
        self.mean = x.mean(axis=0, dtype=np.float64)
        self.axes = leading_axes(x - self.mean.astype(np.float32), min(n, *x.shape))

    def project(self, x: np.ndarray) -> np.ndarray:
        """(rows, components) coordinates of rows of the profiles' genes."""
        return (np.asarray(x, np.float64) - self.mean) @ self.axes.T


#: The last search made by `shared_search` for each kind of predictor: (weak references to the
#: arrays it was made from, the device, what `make` returned). The stack prepares a copy of each
#: predictor per view of the ST, all over the model's same arrays, and each copy's search held a
#: float64 copy of the reference profiles (400 MB per view at 10^4 cells x 5,000 known genes).
_SHARED_SEARCHES: dict[str, list] = {}


def shared_search(kind: str, sources: tuple[np.ndarray, ...], device: torch.device,
                  make: Callable[[], tuple]) -> tuple:
    """`make()` (a tuple whose items may include a `ProfileIndex`), made once for the copies
    of a predictor over the same arrays `sources` (the same objects) on the same device: the
    last result per `kind` is kept while those arrays live (weak references: never a finished
    model's). Each caller gets its own `ProfileIndex` objects over the shared tensors, so that
    one caller's float32 switch (`search_in_float32`, set per `ColumnSource` by its ST's size)
    never reaches another's search."""
    last = _SHARED_SEARCHES.get(kind)
    if not (last and last[1] == device and len(last[0]) == len(sources)
            and all(ref() is array for ref, array in zip(last[0], sources, strict=True))):
        last = [tuple(weakref.ref(array) for array in sources), device, make()]
        _SHARED_SEARCHES[kind] = last
    return tuple(item.own_switches() if isinstance(item, ProfileIndex) else item
                 for item in last[2])


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero): Euclidean order = cosine order."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def knn_estimate(index: ProfileIndex | NeighbourIndex, known_z: np.ndarray, atlas: torch.Tensor, n_known: int,
                 k: int) -> np.ndarray:
    """Mean target genes (model space) of each cell's k most cosine-similar atlas cells.

    `known_z`: the cells' known genes z-scored over their own data set; the atlas's are
    z-scored over the reference. Aligning the two data sets by their own statistics, then
    comparing profile shapes (cosine), is what makes SpaGE robust to platform effects.
    """
    idx, _ = index.query(unit_rows(known_z), k)
    nb = torch.as_tensor(idx, device=atlas.device)
    return atlas[nb][:, :, n_known:].mean(dim=1).cpu().numpy()


class AlignedNeighbours(BasePredictor):
    """The aligned-neighbour estimate over the model's atlas and pseudo-spots.

    `knn_neighbors`: the profiles a cell's estimate averages (`Config.knn_neighbors`);
    `use_mixtures`: fit pseudo-spots beside the atlas (`Config.prior_mixtures`). Fitted:
    `atlas`, (n_atlas, n_known + n_target) reference cells in model space (the model's atlas,
    the context's too); `mixtures`, pseudo-spots with the same columns, or None; `n_known`,
    how many of the columns are known genes.
    """

    name = "aligned"
    reads = EXPRESSION
    config_fields = {"knn_neighbors": "knn_neighbors", "use_mixtures": "prior_mixtures"}

    def __init__(self, *, knn_neighbors: int = 50, use_mixtures: bool = True,
                 atlas: np.ndarray | None = None, mixtures: np.ndarray | None = None,
                 n_known: int | None = None) -> None:
        super().__init__()
        self.knn_neighbors, self.use_mixtures = knn_neighbors, use_mixtures
        self.atlas, self.mixtures, self.n_known = atlas, mixtures, n_known
        self._search: tuple | None = None

    def fit(self, reference: Reference, *, seed: int) -> None:
        self.atlas = reference.atlas_for("aligned-neighbour estimate")
        self.n_known = reference.known.shape[1]
        self.mixtures = None
        if self.use_mixtures and reference.scalers is not None:
            # other mixtures than the ridge's (seed + 1), of every reference cell; beside the
            # atlas, not in the context's (the BiLSTM reads reference cells)
            self.mixtures = np.concatenate([
                np.concatenate(block, axis=1).astype(np.float32)
                for block in pseudo_spots(reference, reference.fit_rows(), seed=seed + 1,
                                          per_size=ESTIMATE_MIXTURES_PER_SIZE)])
        self._search = None

    def prepare(self, st_blocks: Blocks, *, device: torch.device | str = "cpu") -> None:
        """The ST's z-scores (over the blocks: as SpaGE, over the whole data set) and the
        search over the profiles, z-scored over themselves."""
        super().prepare(st_blocks, device=device)
        st_scaler = Standardizer.fit_blocks(lambda: ((None, b) for b in st_blocks()))
        sources = (self.atlas,) if self.mixtures is None else (self.atlas, self.mixtures)
        self._search = (st_scaler, *shared_search("aligned", sources, self.device,
                                                  self._profile_search))

    def _profile_search(self) -> tuple:
        """(components or None, the index, the target columns): what `prepare` makes of the
        reference alone, the same for every view (`shared_search`)."""
        profiles = self.atlas if self.mixtures is None else np.concatenate([self.atlas,
                                                                            self.mixtures])
        known = profiles[:, :self.n_known]
        known_z = Standardizer.fit(known).transform(known)
        components = None
        if self.n_known >= COMPONENT_SEARCH_MIN_GENES:  # in the leading components
            components = Components(known_z, SEARCH_COMPONENTS)
            known_z = components.project(known_z)
        index = ProfileIndex(unit_rows(known_z), self.device)
        # the target columns alone (`knn_estimate` with no known columns): gathering whole
        # profiles for each neighbour and dropping their known genes moved 2.5x the memory
        targets = np.ascontiguousarray(profiles[:, self.n_known:])
        return components, index, torch.as_tensor(targets, device=self.device)

    def predict(self, known: np.ndarray) -> np.ndarray:
        if self._search is None:
            raise RuntimeError("AlignedNeighbours.prepare must run before predict (it z-scores "
                               "the ST over itself)")
        st_scaler, components, index, targets = self._search
        known_z = st_scaler.transform(known)
        if components is not None:
            known_z = components.project(known_z)
        return knn_estimate(index, known_z, targets, 0, self.knn_neighbors)

    def state(self) -> dict[str, np.ndarray]:
        out = {"atlas": self.atlas, "n_known": np.asarray(self.n_known, dtype=np.int64)}
        if self.mixtures is not None:
            out["mixtures"] = self.mixtures
        return out

    optional_state = ("mixtures",)

    @classmethod
    def state_shapes(cls, n_known: int, n_target: int) -> dict:
        return {"atlas": ("cells", n_known + n_target),
                "mixtures": ("mixtures", n_known + n_target), "n_known": n_known}


class ReferenceNeighbours(BasePredictor):
    """The plain neighbour average: the mean targets of each cell's `knn_neighbors`
    (`Config.knn_neighbors`) nearest reference cells by Euclidean distance between
    log-normalised known genes, with no alignment of the two data sets (the kNN baseline of the
    benchmarks). Where the platforms measure alike it keeps the reference's absolute levels,
    which the aligned estimate drops."""

    name = "knn"
    reads = EXPRESSION
    config_fields = {"knn_neighbors": "knn_neighbors"}

    def __init__(self, *, knn_neighbors: int = 50, known_log: np.ndarray | None = None,
                 targets: np.ndarray | None = None) -> None:
        super().__init__()
        self.knn_neighbors = knn_neighbors
        #: (n_cells, n_known) log-normalised known genes and (n_cells, n_target) model-space
        #: targets of the reference cells of the atlas
        self.known_log, self.targets = known_log, targets
        self._index: ProfileIndex | None = None
        #: The reference's leading components the search runs in, on large panels
        #: (`COMPONENT_SEARCH_MIN_GENES`), else None.
        self._components: Components | None = None

    def fit(self, reference: Reference, *, seed: int) -> None:
        atlas = reference.atlas_for("neighbour average", scalers=True)
        n_known = reference.known.shape[1]
        known_scaler = reference.scalers[0]
        self.known_log = atlas[:, :n_known] * known_scaler.std + known_scaler.mean
        self.known_log = self.known_log.astype(np.float32)
        self.targets = atlas[:, n_known:].astype(np.float32)
        self._index = self._components = None

    def prepare(self, st_blocks: Blocks, *, device: torch.device | str = "cpu") -> None:
        super().prepare(st_blocks, device=device)
        self._components, self._index = shared_search("knn", (self.known_log,), self.device,
                                                      self._profile_search)

    def _profile_search(self) -> tuple:
        """(components or None, the index over the reference's profiles): the same for every
        view (`shared_search`)."""
        if self.known_log.shape[1] < COMPONENT_SEARCH_MIN_GENES:
            return None, ProfileIndex(self.known_log, self.device)
        components = Components(self.known_log, SEARCH_COMPONENTS)
        return components, ProfileIndex(components.project(self.known_log), self.device)

    def predict(self, known: np.ndarray) -> np.ndarray:
        if self._index is None:
            self.prepare(lambda: iter(()), device=self.device)
        if self._components is not None:
            known = self._components.project(known)
        idx, _ = self._index.query(known, min(self.knn_neighbors, len(self.targets)))
        # numpy's mean of the gathered rows, without the (cells, k, targets) gather
        return neighbour_mean(self.targets, idx).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return {"known_log": self.known_log, "targets": self.targets}

    @classmethod
    def state_shapes(cls, n_known: int, n_target: int) -> dict:
        return {"known_log": ("cells", n_known), "targets": ("cells", n_target)}
