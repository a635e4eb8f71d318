"""The BiLSTM cell-context encoder and the explicit sequence it reads.

The sequence of a cell is: the cell itself (its known genes; target genes unknown, set to 0),
then its `k` nearest reference cells in known-gene space, nearest first, each with its full
profile (known and target genes) and its distance. The sequence depends only on the cell and on
the fixed reference atlas of the model, never on the other cells being imputed with it.
Reference cells in training exclude themselves from their own neighbours.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import nn

from spalstf.runtime import PerThread


class ContextEncoder(nn.Module):
    """A bidirectional LSTM over a (batch, length, features) sequence -> (batch, out_dim)."""

    def __init__(self, n_features: int, hidden: int, out_dim: int, n_layers: int = 1) -> None:
        super().__init__()
        self.hidden = hidden
        self.input = nn.Linear(n_features, hidden)
        self.lstm = nn.LSTM(hidden, hidden, num_layers=n_layers, batch_first=True,
                            bidirectional=True)
        self.output = nn.Linear(2 * hidden, out_dim)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(self.input(sequence))
        # The forward direction has read the whole sequence at its last position, the backward
        # direction at its first: together they summarise the context from both ends.
        summary = torch.cat([states[:, -1, : self.hidden], states[:, 0, self.hidden:]], dim=-1)
        return self.output(summary)


class NeighbourIndex:
    """Nearest reference cells in (standardised) known-gene space, exact and order-free.

    A cell's neighbours are the k atlas cells of smallest pairwise distance (computed pair by
    pair, ties broken by atlas row), so they are the same whichever cells are queried with it.
    Computing every pairwise distance that way is slow (about 20 s per 1000 cells against a
    20000-cell atlas of 1200 genes on one core), so the search runs in two stages:

    1. squared distances by matrix product (`|q|^2 + |a|^2 - 2 q.a`: fast, but its rounding can
       depend on how many queries share a call) pick `k + margin` candidates per cell;
    2. the candidates' exact pairwise distances are sorted, and a bound on the matrix
       product's rounding error certifies that no other atlas cell can be nearer than the k-th.
       Cells whose certificate fails (near-ties at the border) take a wider candidate pool,
       up to the whole atlas: the result is the exact one in every case.

    Parameters
    ----------
    atlas_known
        (n_atlas, n_known) standardised known genes of the reference atlas.
    device
        Where the distances are computed (a GPU when there is one); results come back as numpy.
    """

    #: Upper bound on the number of floats held at once by one block (memory): the
    #: (rows x atlas) distance block, or the (rows x candidates x genes) differences.
    max_elements: int = 2**25
    #: Candidates kept beyond k by the matrix-product stage.
    margin: int = 32

    def __init__(self, atlas_known: np.ndarray, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.atlas_known = torch.as_tensor(np.ascontiguousarray(atlas_known, dtype=np.float32),
                                           device=self.device)
        self.atlas_sq = (self.atlas_known.double() ** 2).sum(dim=1).float()
        # Typical neighbour distance, to put distances on a unit scale for the LSTM.
        self.distance_scale = float(np.sqrt(max(self.atlas_known.shape[1], 1)))
        #: Query cells whose certificate failed at the first candidate pool (diagnostics).
        self.widened = 0
        #: The (rows x atlas) scratch of `_buffer`, one per thread (`runtime.PerThread`): the
        #: chunks of an imputation are searched by several threads at once.
        self._scratch = PerThread()
        self._counting = threading.Lock()

    def query(self, known: np.ndarray, k: int, self_index: np.ndarray | None = None):
        """Indices and scaled distances of the k nearest atlas cells, nearest first.

        `self_index[i]` (or -1) is the atlas row of query i itself, which is then skipped.
        `known` may be any matrix whose row slices give arrays (read a block at a time).
        """
        n_atlas = self.atlas_known.shape[0]
        rows = max(1, self.max_elements // max(n_atlas, 1))
        all_idx, all_dist = [], []
        for start in range(0, known.shape[0], rows):
            block = torch.as_tensor(np.asarray(known[start:start + rows], dtype=np.float32),
                                    device=self.device)
            own = None
            if self_index is not None:
                own = torch.as_tensor(np.asarray(self_index[start:start + rows]),
                                      dtype=torch.long, device=self.device)
            idx, dist = self._block(block, min(k, n_atlas), own)
            all_idx.append(idx.cpu())
            all_dist.append(dist.cpu())
        idx = torch.cat(all_idx).numpy()
        dist = torch.cat(all_dist).numpy()
        if idx.shape[1] < k:  # fewer atlas cells than k: repeat the last neighbour
            pad = k - idx.shape[1]
            idx = np.concatenate([idx, np.repeat(idx[:, -1:], pad, axis=1)], axis=1)
            dist = np.concatenate([dist, np.repeat(dist[:, -1:], pad, axis=1)], axis=1)
        dist = np.where(np.isfinite(dist), dist, 0.0)
        return idx.astype(np.int64), (dist / self.distance_scale).astype(np.float32)

    def _block(self, query: torch.Tensor, k: int, own: torch.Tensor | None):
        """The k nearest (indices, exact distances) of each row of one block of queries."""
        n_atlas, n_known = self.atlas_known.shape
        query_sq = (query.double() ** 2).sum(dim=1).float()
        # |a|^2 - 2 q.a in one pass into a reused scratch (a fresh (rows x atlas) matrix per
        # block, and the copies of a longer expression, are memory the system maps and zeroes
        # each time: most of the search's time); |q|^2 is the same for a whole row, so it
        # changes no row's order and is added to the few values kept (below). The candidates'
        # distances are then computed exactly, so the result does not depend on this rounding.
        approx = torch.addmm(self.atlas_sq[None, :], query, self.atlas_known.T, alpha=-2.0,
                             out=self._buffer(len(query)))
        if own is not None:
            own_rows = (own >= 0).nonzero()[:, 0]
            approx[own_rows, own[own_rows]] = float("inf")
        # Rounding of the matrix product and of the pairwise sums, bounded generously:
        # n * unit roundoff * (|q|^2 + |a|^2) twice over, plus the squares' own rounding.
        slack = 4.0 * (n_known + 2) * 2.0**-24 * (query_sq + self.atlas_sq.max()) + 1e-6
        out_idx = torch.empty(len(query), k, dtype=torch.long, device=self.device)
        out_dist = torch.empty(len(query), k, dtype=torch.float32, device=self.device)
        pending = torch.arange(len(query), device=self.device)
        pool = k + self.margin
        while len(pending):
            pool = min(pool, n_atlas)
            taken = min(pool + 1, n_atlas)  # one more: the nearest cell left outside the pool
            rows = approx if len(pending) == len(query) else approx[pending]
            near, cand = torch.topk(rows, taken, dim=1, largest=False, sorted=True)
            near = near + query_sq[pending, None]
            border = near[:, pool] if taken > pool else torch.full_like(near[:, 0], float("inf"))
            idx, dist = self._exact(query[pending], cand[:, :pool],
                                    None if own is None else own[pending], k)
            certain = (dist[:, -1] ** 2 < border - slack[pending]) | (pool == n_atlas)
            done = pending[certain]
            out_idx[done], out_dist[done] = idx[certain], dist[certain]
            if pool == k + self.margin:
                with self._counting:
                    self.widened += int((~certain).sum())
            pending = pending[~certain]
            pool *= 8
        return out_idx, out_dist

    def _buffer(self, rows: int) -> torch.Tensor:
        """A (rows x atlas) float32 scratch matrix, kept by the index (per thread) and reused
        block to block (it holds at most `max_elements` floats)."""
        size = rows * self.atlas_known.shape[0]
        scratch = self._scratch.get("distances")
        if scratch is None or scratch.numel() < size:
            scratch = self._scratch["distances"] = torch.empty(size, dtype=torch.float32,
                                                               device=self.device)
        return scratch[:size].view(rows, self.atlas_known.shape[0])

    def _exact(self, query: torch.Tensor, cand: torch.Tensor, own: torch.Tensor | None, k: int):
        """Pairwise (exact, order-free) distances to the candidates; the k nearest, ties by row."""
        cand, _ = torch.sort(cand, dim=1)  # atlas-row order, so the stable sort breaks ties by row
        n_cand, n_known = cand.shape[1], self.atlas_known.shape[1]
        step = max(1, self.max_elements // max(n_cand * n_known, 1))
        dist = torch.empty(cand.shape, dtype=torch.float32, device=self.device)
        for s in range(0, len(query), step):
            part = cand[s:s + step]
            dist[s:s + step] = torch.cdist(query[s:s + step, None, :], self.atlas_known[part],
                                           compute_mode="donot_use_mm_for_euclid_dist")[:, 0]
        if own is not None:
            dist[cand == own[:, None]] = float("inf")
        dist, order = torch.sort(dist, dim=1, stable=True)
        return torch.gather(cand, 1, order[:, :k]), dist[:, :k].clone()


def build_sequence(known: torch.Tensor, atlas: torch.Tensor, neighbour_idx: torch.Tensor,
                   neighbour_dist: torch.Tensor, n_known: int) -> torch.Tensor:
    """The (batch, 1 + k, n_genes + 2) context sequence of each cell.

    Features per element: known genes, target genes (0 for the cell itself), a flag that marks
    the cell itself, and the distance to the cell.
    """
    batch = known.shape[0]
    n_genes = atlas.shape[1]
    own = known.new_zeros(batch, 1, n_genes + 2)
    own[:, 0, :n_known] = known
    own[:, 0, n_genes] = 1.0
    neigh = atlas[neighbour_idx]  # (batch, k, n_genes)
    extra = torch.stack([torch.zeros_like(neighbour_dist), neighbour_dist], dim=-1)
    return torch.cat([own, torch.cat([neigh, extra], dim=-1)], dim=1)


def neighbour_mean(atlas: torch.Tensor, neighbour_idx: torch.Tensor, n_known: int) -> torch.Tensor:
    """Mean target genes of each cell's reference neighbours: (batch, n_target)."""
    return atlas[neighbour_idx][:, :, n_known:].mean(dim=1)
