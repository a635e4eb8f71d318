"""The BiLSTM cell-context encoder and the explicit sequence it reads.

The sequence of a cell is: the cell itself (its known genes; target genes unknown, set to 0),
then its `k` nearest reference cells in known-gene space, nearest first, each with its full
profile (known and target genes) and its distance. The sequence depends only on the cell and on
the fixed reference atlas of the model, never on the other cells being imputed with it.
Reference cells in training exclude themselves from their own neighbours.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


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

    Distances are computed pair by pair (no matrix-product shortcut, whose rounding can depend
    on how many queries share a call) and ties are broken by atlas row, so a cell's neighbours
    are the same whichever cells are queried with it.

    Parameters
    ----------
    atlas_known
        (n_atlas, n_known) standardised known genes of the reference atlas.
    device
        Where the distances are computed (a GPU when there is one); results come back as numpy.
    """

    #: Upper bound on the number of pairwise differences held at once (memory).
    max_elements: int = 2**25

    def __init__(self, atlas_known: np.ndarray, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.atlas_known = torch.as_tensor(np.ascontiguousarray(atlas_known, dtype=np.float32),
                                           device=self.device)
        # Typical neighbour distance, to put distances on a unit scale for the LSTM.
        self.distance_scale = float(np.sqrt(max(self.atlas_known.shape[1], 1)))

    def query(self, known: np.ndarray, k: int, self_index: np.ndarray | None = None):
        """Indices and scaled distances of the k nearest atlas cells, nearest first.

        `self_index[i]` (or -1) is the atlas row of query i itself, which is then skipped.
        `known` may be any matrix whose row slices give arrays (read a block at a time).
        """
        n_atlas, n_known = self.atlas_known.shape
        rows = max(1, self.max_elements // max(n_atlas * max(n_known, 1), 1))
        all_idx, all_dist = [], []
        for start in range(0, known.shape[0], rows):
            block = np.asarray(known[start:start + rows], dtype=np.float32)
            dist = torch.cdist(torch.as_tensor(block, device=self.device), self.atlas_known,
                               compute_mode="donot_use_mm_for_euclid_dist")
            if self_index is not None:
                own = torch.as_tensor(np.asarray(self_index[start:start + rows]),
                                      device=self.device)
                hit = own >= 0
                dist[hit.nonzero()[:, 0], own[hit]] = float("inf")
            dist, idx = torch.sort(dist, dim=1, stable=True)
            # clone: a slice would keep the whole (rows x n_atlas) sorted block alive, and
            # memory would grow with the number of queried cells
            all_idx.append(idx[:, :k].cpu().clone())
            all_dist.append(dist[:, :k].cpu().clone())
        idx = torch.cat(all_idx).numpy()
        dist = torch.cat(all_dist).numpy()
        if idx.shape[1] < k:  # fewer atlas cells than k: repeat the last neighbour
            pad = k - idx.shape[1]
            idx = np.concatenate([idx, np.repeat(idx[:, -1:], pad, axis=1)], axis=1)
            dist = np.concatenate([dist, np.repeat(dist[:, -1:], pad, axis=1)], axis=1)
        dist = np.where(np.isfinite(dist), dist, 0.0)
        return idx.astype(np.int64), (dist / self.distance_scale).astype(np.float32)


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
