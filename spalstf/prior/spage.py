"""A SpaGE-style projection: the two data sets aligned by principal vectors, then neighbours.

SpaGE (Abdelaal et al. 2020) z-scores the known genes within each data set, takes the
principal components of each, aligns them with PRECISE (Mourragui et al. 2019: the principal
vectors between the two spans), keeps the reference's vectors whose cosine to the ST's exceeds
`MIN_COSINE`, and predicts a cell from the targets of its `Config.knn_neighbors` nearest
reference cells in that shared space (cosine distance, SpaGE's weights). The ST's z-scores and
components come from the whole ST data set (`prepare`, a block of cells at a time), so a cell's
prediction does not depend on the other cells of its chunk. On large panels
(`spalstf.prior.neighbours.COMPONENT_SEARCH_MIN_GENES` known genes and more) it keeps at most
`SEARCH_COMPONENTS` principal vectors, as SpaGE keeps a few tens, from a randomised partial
decomposition of the rows (`leading_axes`; the ST's of at most `AXES_CELLS` cells) instead
of full eigen-decompositions of (genes x genes) covariances.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

from spalstf.preprocess import Standardizer
from spalstf.prior.base import EXPRESSION, Blocks, ProfilePredictor, Reference, landmarks
from spalstf.prior.neighbours import (
    COMPONENT_SEARCH_MIN_GENES,
    SEARCH_COMPONENTS,
    ProfileIndex,
    leading_axes,
    unit_rows,
)

#: ST cells (evenly spaced) whose rows give the ST's principal axes on large panels
#: (`COMPONENT_SEARCH_MIN_GENES`): 100 axes of 5,000 genes are well resolved by 10^4 cells, and
#: the cost of the axes no longer grows with the ST.
AXES_CELLS = 10000

#: Principal vectors whose cosine between the two data sets is at most this are dropped (the
#: value SpaGE uses).
MIN_COSINE = 0.3


def principal_axes(covariance: np.ndarray, n: int) -> np.ndarray:
    """The first `n` principal axes (rows, unit length) of a covariance matrix, with a sign
    fixed by the largest coordinate (deterministic, unlike an SVD's)."""
    _, vectors = np.linalg.eigh(covariance)
    return signed(vectors[:, ::-1][:, :n].T)


def signed(axes: np.ndarray) -> np.ndarray:
    """Axes (rows) with the sign that makes each one's largest coordinate positive."""
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    return axes * np.where(signs == 0, 1.0, signs)[:, None]


#: The reference's principal axes of the last `prepare` (its profiles, n, the axes): the stack
#: prepares a copy of the predictor per view of the ST, each over the same profiles (the model's
#: array, shared by the copies), and with 5,000 known genes each eigen-decomposition of their
#: covariance took about 30 s of CPU, three times a run. The profiles are held by a weak
#: reference: the cache does not keep a finished model's array alive.
_LAST_REFERENCE_AXES: list = []


def reference_axes(profiles: np.ndarray, ref_z: np.ndarray, n: int) -> np.ndarray:
    """`principal_axes` of the z-scored reference profiles `ref_z` (made from `profiles`),
    computed again only when the profiles (the same array) or `n` change."""
    last = _LAST_REFERENCE_AXES
    if last and last[0]() is profiles and last[1] == (ref_z.shape, n):
        return last[2]
    if ref_z.shape[1] >= COMPONENT_SEARCH_MIN_GENES:
        axes = signed(leading_axes(ref_z, n))  # the same subspace, without the covariance
    else:
        axes = principal_axes(ref_z.T @ ref_z / len(ref_z), n)
    last[:] = [weakref.ref(profiles), (ref_z.shape, n), axes]
    return axes


def spage_weights(distance: np.ndarray) -> np.ndarray:
    """SpaGE's neighbour weights from cosine distances (cells x k): 1 - d / sum(d) over the
    neighbours with d < 1, normalised; a cell with one such neighbour (or none) takes its
    nearest."""
    ok = distance < 1
    d = np.where(ok, distance, 0.0)
    count = ok.sum(axis=1, keepdims=True)
    total = d.sum(axis=1, keepdims=True)
    w = np.where(ok, (1 - d / np.maximum(total, 1e-12)) / np.maximum(count - 1, 1), 0.0)
    single = (count[:, 0] <= 1) | (total[:, 0] == 0)
    w[single] = 0.0
    w[single, 0] = 1.0
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


class SpageProjection(ProfilePredictor):
    """SpaGE-style prediction over the reference cells of the model's atlas (`profiles`,
    z-scored over the reference), from each cell's `knn_neighbors` nearest
    (`Config.knn_neighbors`)."""

    name = "spage"
    reads = EXPRESSION
    config_fields = {"knn_neighbors": "knn_neighbors"}

    def __init__(self, *, knn_neighbors: int = 50, profiles: np.ndarray | None = None,
                 n_known: int | None = None) -> None:
        super().__init__(profiles=profiles, n_known=n_known)
        self.knn_neighbors = knn_neighbors
        self._search: tuple | None = None

    def fit(self, reference: Reference, *, seed: int) -> None:
        self.profiles = reference.atlas_for("SpaGE-style projection")
        self.n_known = reference.known.shape[1]
        self._search = None

    def prepare(self, st_blocks: Blocks, *, device: torch.device | str = "cpu") -> None:
        """The ST's z-scores and principal axes (over the whole data set), the principal
        vectors shared with the reference, and the search in that space."""
        super().prepare(st_blocks, device=device)
        st_scaler = Standardizer.fit_blocks(lambda: ((None, b) for b in st_blocks()))
        known = self.profiles[:, :self.n_known].astype(np.float64)
        ref_z = Standardizer.fit(known).transform(known).astype(np.float64)
        rows = landmarks(st_blocks, AXES_CELLS) if self.n_known >= COMPONENT_SEARCH_MIN_GENES \
            else None
        if rows is not None and len(rows):
            # SpaGE's own few principal vectors, from at most `AXES_CELLS` cells' rows: the
            # (genes x genes) covariance of every cell grew with the cells times the genes
            # squared (50,000 cells x 5,000 genes: minutes per view)
            z = st_scaler.transform(rows)
            n = max(1, min(self.n_known // 2, len(ref_z), len(z), SEARCH_COMPONENTS))
            source = reference_axes(self.profiles, ref_z, n)
            target = signed(leading_axes(z, n))
        else:
            n_st, covariance = 0, np.zeros((self.n_known, self.n_known))
            for block in st_blocks():
                z = st_scaler.transform(block).astype(np.float64)
                covariance += z.T @ z
                n_st += len(z)
            n = max(1, min(self.n_known // 2, len(ref_z), n_st))
            source = reference_axes(self.profiles, ref_z, n)
            target = principal_axes(covariance / max(n_st, 1), n)
        u, _, vt = np.linalg.svd(source @ target.T)
        source_pv = (u.T @ source)[:n]
        target_pv = (vt @ target)[:n]
        source_pv /= np.linalg.norm(source_pv, axis=1, keepdims=True)
        target_pv /= np.linalg.norm(target_pv, axis=1, keepdims=True)
        cosine = np.einsum("ij,ij->i", source_pv, target_pv)
        keep = max(1, int((cosine > MIN_COSINE).sum()))
        projection = source_pv[:keep].T.astype(np.float32)
        ref_unit = unit_rows(ref_z.astype(np.float32) @ projection)
        self._search = (st_scaler, projection, ref_unit, ProfileIndex(ref_unit, self.device))

    def predict(self, known: np.ndarray) -> np.ndarray:
        if self._search is None:
            raise RuntimeError("SpageProjection.prepare must run before predict (it aligns the "
                               "ST with the reference over the whole data set)")
        st_scaler, projection, ref_unit, index = self._search
        query = unit_rows(st_scaler.transform(known) @ projection)
        k = min(self.knn_neighbors, len(ref_unit))
        idx, _ = index.query(query, k)
        # cosine distances of unit vectors, from the neighbours' own rows (exact)
        distance = 1.0 - np.einsum("ckd,cd->ck", ref_unit[idx], query)
        weights = spage_weights(distance)
        targets = self.profiles[:, self.n_known:]
        return np.einsum("ck,ckg->cg", weights, targets[idx]).astype(np.float32)
