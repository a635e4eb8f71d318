"""The masked-gene denoiser: one network for any split of a fixed gene list into given and
predicted genes.

The gene list G is the model's known genes followed by its target genes (model space:
per-gene z-scores with the reference's statistics). For each cell every gene has a state:

- GIVEN: its value is clean, a condition;
- PREDICT: its value is the residual around the prior, noised at diffusion step t (or 0 without
  diffusion): the network predicts its noise (and variance interpolation v);
- ABSENT: not measured (value 0, ignored), e.g. the target genes of an ST cell in training.

Genes are grouped into at most `max_tokens` tokens (known and target genes apart, as
`token_layout`); a token reads, for each of its genes, the value, the prior, the neighbours'
mean and the two state flags. The context is the BiLSTM (`ContextEncoder`) over the cell (given
values and flags) and its k nearest atlas cells found on the cell's GIVEN known genes only, so
that a hidden gene never enters its own context. The prior of a gene, around which its residual
is diffused, is either those neighbours' mean or the reference's Gaussian conditional mean given
the GIVEN genes (`ConditionalGaussian`: a ridge regression for that split, computed for any
split from one correlation matrix).

Everything acts on each cell separately: a cell's output never depends on the other cells of
its batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from spalstf.network.context import ContextEncoder
from spalstf.network.denoiser import group_genes, timestep_embedding, token_layout
from spalstf.network.xca import XCABlock, modulate, zero_init

#: Gene states (the values of a state matrix).
ABSENT, GIVEN, PREDICT = 0, 1, 2
#: Features per gene in a token: value, prior, neighbours' mean, is-given, is-predict.
GENE_FEATURES = 5


def gene_layout(n_known: int, n_target: int, max_tokens: int) -> tuple[int, int, int, int]:
    """(known tokens, genes per known token, target tokens, genes per target token) of G.

    As `token_layout`, and defined too when there is no target gene (a model of the known genes
    alone: only splits of the known genes are asked of it).
    """
    if n_target == 0:
        tokens = min(n_known, max_tokens)
        per = math.ceil(n_known / tokens)
        return math.ceil(n_known / per), per, 0, 1
    return token_layout(n_known, n_target, max_tokens)


class MaskedDenoiser(nn.Module):
    """XCA-Transformer over the genes of one cell, each GIVEN, PREDICT or ABSENT.

    Parameters
    ----------
    n_known, n_target
        The gene list G: n_known known genes, then n_target target genes.
    d_model, depth, n_heads, mlp_ratio, max_tokens, use_xca, dropout
        Transformer settings (as `spalstf.Config`).
    use_context, lstm_hidden, lstm_layers
        The BiLSTM context over the cell and its neighbours (`context_sequence`).
    use_source
        Condition on the source of the cell (0: reference, 1: ST) as well, a learned embedding
        added to the timestep's: the network may then learn the platforms' differences apart.
    """

    def __init__(self, n_known: int, n_target: int, *, d_model: int = 64, depth: int = 3,
                 n_heads: int = 4, mlp_ratio: float = 2.0, max_tokens: int = 64,
                 use_xca: bool = True, dropout: float = 0.0, use_context: bool = True,
                 lstm_hidden: int = 64, lstm_layers: int = 1, use_source: bool = False) -> None:
        super().__init__()
        if n_known < 1:
            raise ValueError(f"`n_known` must be at least 1; received {n_known}")
        if n_target < 0:
            raise ValueError(f"`n_target` must be at least 0; received {n_target}")
        self.n_known, self.n_target = n_known, n_target
        self.n_genes = n_known + n_target
        self.d_model = d_model
        (self.known_tokens, self.per_known,
         self.target_tokens, self.per_target) = gene_layout(n_known, n_target, max_tokens)
        n_tokens = self.known_tokens + self.target_tokens
        self.known_embed = nn.Linear(GENE_FEATURES * self.per_known, d_model)
        self.target_embed = (nn.Linear(GENE_FEATURES * self.per_target, d_model)
                             if self.target_tokens else None)
        # Each token holds a fixed set of genes: a learned position is a gene-group identity.
        self.position = nn.Parameter(torch.randn(1, n_tokens, d_model) * 0.02)
        self.time_embed = nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(),
                                        nn.Linear(d_model, d_model))
        self.source_embed = nn.Embedding(2, d_model) if use_source else None
        self.context = (ContextEncoder(sequence_features(self.n_genes), lstm_hidden, d_model,
                                       lstm_layers) if use_context else None)
        self.blocks = nn.ModuleList(
            XCABlock(d_model, n_tokens, n_heads, mlp_ratio, use_xca=use_xca, dropout=dropout)
            for _ in range(depth))
        self.final_norm = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d_model, 2 * d_model))
        self.known_head = nn.Linear(d_model, 2 * self.per_known)  # noise and v per gene
        self.target_head = (nn.Linear(d_model, 2 * self.per_target) if self.target_tokens
                            else None)
        zero_init(self.final_ada[1], self.known_head, self.target_head)

    def encode_context(self, sequence: torch.Tensor | None) -> torch.Tensor | None:
        """The context embedding (batch, d_model); computed once per cell, reused at every step."""
        if self.context is None or sequence is None:
            return None
        return self.context(sequence)

    def forward(self, values: torch.Tensor, state: torch.Tensor, prior: torch.Tensor,
                knn: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                source: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted (noise, v), each (batch, n_genes); meaningful on the PREDICT genes only.

        `values` must be 0 on ABSENT genes and the (noised) residual on PREDICT genes (the
        caller builds them: `spalstf.prior.masked.train`, `spalstf.prior.masked.sample`);
        `state` holds ABSENT / GIVEN / PREDICT per gene; `prior` the prior of every gene (what
        the residual is taken around), `knn` the mean of every gene over the cell's neighbours.
        """
        given = (state == GIVEN).to(values.dtype)
        predict = (state == PREDICT).to(values.dtype)
        features = torch.stack([values, prior, knn, given, predict], dim=-1)
        tokens = [self.known_embed(group_genes(features[:, :self.n_known], self.known_tokens,
                                               self.per_known))]
        if self.target_embed is not None:
            tokens.append(self.target_embed(group_genes(features[:, self.n_known:],
                                                        self.target_tokens, self.per_target)))
        x = torch.cat(tokens, dim=1) + self.position
        cond = self.time_embed(timestep_embedding(t, self.d_model))
        if context is not None:
            cond = cond + context
        if self.source_embed is not None:
            if source is None:
                raise ValueError("this network conditions on the source: pass `source` "
                                 "(0: reference, 1: ST) for each cell")
            cond = cond + self.source_embed(source.long())
        for block in self.blocks:
            x = block(x, cond)
        shift, scale = self.final_ada(cond).chunk(2, dim=-1)
        x = modulate(self.final_norm(x), shift, scale)
        batch = x.shape[0]
        parts = [self.known_head(x[:, :self.known_tokens]).reshape(batch, -1, 2, self.per_known)
                 .transpose(2, 3).reshape(batch, -1, 2)[:, :self.n_known]]
        if self.target_head is not None:
            out = self.target_head(x[:, self.known_tokens:])
            parts.append(out.reshape(batch, -1, 2, self.per_target).transpose(2, 3)
                         .reshape(batch, -1, 2)[:, :self.n_target])
        out = torch.cat(parts, dim=1)
        return out[..., 0], out[..., 1]


def sequence_features(n_genes: int) -> int:
    """Features per element of the context sequence: values and availability of every gene,
    a flag for the cell itself, the distance to the cell."""
    return 2 * n_genes + 2


def context_sequence(values: torch.Tensor, given: torch.Tensor, atlas: torch.Tensor,
                     neighbour_idx: torch.Tensor, neighbour_dist: torch.Tensor) -> torch.Tensor:
    """The (batch, 1 + k, 2 n_genes + 2) context sequence of each cell.

    First the cell itself: its GIVEN values (0 elsewhere) and its GIVEN flags; then its k
    nearest atlas cells, nearest first, each with its full profile (every gene available) and
    its distance. `given` is a (batch, n_genes) 0/1 mask.
    """
    batch, n_genes = values.shape
    own = torch.cat([values * given, given, values.new_ones(batch, 1),
                     values.new_zeros(batch, 1)], dim=-1)[:, None]
    neigh = atlas[neighbour_idx]  # (batch, k, n_genes)
    k = neigh.shape[1]
    neigh = torch.cat([neigh, neigh.new_ones(batch, k, n_genes), neigh.new_zeros(batch, k, 1),
                       neighbour_dist[..., None].to(neigh.dtype)], dim=-1)
    return torch.cat([own, neigh], dim=1)


def unit_given(values: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    """Each row's given values divided by their norm (0 elsewhere): on such rows the
    Euclidean distance is sqrt(2 - 2 cos), the cosine distance over the given genes."""
    masked = values * given
    norm = masked.norm(dim=1, keepdim=True)
    return masked / torch.where(norm > 1e-6, norm, torch.ones_like(norm))


def masked_neighbours(aligned: torch.Tensor, given_known: torch.Tensor,
                      atlas_known: torch.Tensor, k: int,
                      self_index: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest atlas cells of each cell by cosine similarity on ITS given known genes
    (training's search).

    `aligned` (batch, n_known) holds each cell's known genes z-scored over its own data set
    (the reference's cells over the reference, the ST's over the ST: the two platforms are
    aligned by their own statistics, as SpaGE and `spalstf.prior.AlignedNeighbours` do); each
    cell has its own mask (`given_known`, (batch, n_known) of 0/1) and the similarity uses its
    given genes only, by matrix products (fast; their rounding may depend on the batch, which
    training does not mind; sampling, where a cell's result must not depend on its chunk,
    uses the exact `spalstf.network.NeighbourIndex` on the common given genes). Distances are
    sqrt(2 - 2 cos) / sqrt(genes given), the scale `NeighbourIndex` gives unit rows.
    `self_index[i]` (or -1) is the atlas row of cell i itself, never its own neighbour.
    Returns (indices, distances), each (batch, k), nearest first.
    """
    mask = given_known.to(aligned.dtype)
    query = unit_given(aligned, mask)
    norms = (mask @ (atlas_known ** 2).T).sqrt()
    cos = (query @ atlas_known.T) / torch.where(norms > 1e-6, norms, torch.ones_like(norms))
    sq = (2.0 - 2.0 * cos).clamp(min=0.0)
    if self_index is not None:
        own = (self_index >= 0).nonzero()[:, 0]
        sq[own, self_index[own]] = float("inf")
    k = min(k, atlas_known.shape[0] - (0 if self_index is None else 1))
    near, idx = torch.topk(sq, k, dim=1, largest=False, sorted=True)
    n_given = mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    return idx, (near / n_given).sqrt()


class ConditionalGaussian:
    """The reference's Gaussian conditional mean of every gene given any set of known genes.

    From the rows' mean, standard deviations and correlation matrix R over G: for given
    known genes S, z_G = R[G, S] (R[S, S] + penalty I)^-1 z_S, in z-scores of the rows. It is
    the ridge regression of every gene on S (on standardised genes, penalty per row), for any
    S from one matrix: the prior of a masked-gene network, whichever split it is asked.

    Parameters
    ----------
    mean, sd
        (n_genes,) of the rows it was fitted on.
    corr
        (n_genes, n_known) correlations of every gene with the known genes.
    penalty
        The ridge penalty on the correlation scale (spalstf's ridge penalty divided by its
        number of rows).
    """

    def __init__(self, mean: torch.Tensor, sd: torch.Tensor, corr: torch.Tensor,
                 penalty: float) -> None:
        self.mean, self.sd, self.corr = mean, sd, corr
        self.penalty = float(penalty)

    @classmethod
    def fit(cls, rows: torch.Tensor, n_known: int, penalty: float) -> ConditionalGaussian:
        """From (n_rows, n_genes) rows (float64 inside)."""
        x = rows.double()
        mean = x.mean(dim=0)
        sd = x.std(dim=0, unbiased=False)
        sd = torch.where(sd > 1e-6, sd, torch.ones_like(sd))
        z = (x - mean) / sd
        corr = z.T @ z[:, :n_known] / len(z)
        return cls(mean.float(), sd.float(), corr.float(), penalty)

    @property
    def n_known(self) -> int:
        return self.corr.shape[1]

    def _gram(self, given: torch.Tensor) -> torch.Tensor:
        """(masks, n_known, n_known): R[S, S] + penalty I on each mask's given genes S, the
        other genes decoupled identity rows (so the solve is that of R[S, S] alone)."""
        g = given.to(self.corr.dtype)
        eye = torch.eye(self.n_known, dtype=g.dtype, device=g.device)
        return self.corr[:self.n_known][None] * g[:, :, None] * g[:, None, :] \
            + eye * (self.penalty * g + (1 - g))[:, None, :]

    def weights(self, given: torch.Tensor) -> torch.Tensor:
        """(masks, n_genes, n_known) maps from given z-scores to every gene's, one per mask
        (`given`, (masks, n_known) of 0/1); for sampling, where one mask serves every cell."""
        g = given.to(self.corr.dtype)
        eye = torch.eye(self.n_known, dtype=g.dtype, device=g.device)
        inverse = torch.linalg.solve(self._gram(g).double(),
                                     (eye * g[:, None, :]).double()).float()
        return self.corr[None] @ (inverse * g[:, :, None])

    def _z(self, known: torch.Tensor) -> torch.Tensor:
        return (known - self.mean[:self.n_known]) / self.sd[:self.n_known]

    def predict(self, known: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """(rows, n_genes) conditional means of the rows `known` (n_known columns, read only
        where the mask of `weights` (the first) gives them)."""
        return self.mean + self.sd * (self._z(known) @ weights[0].T)

    def predict_masked(self, known: torch.Tensor, given: torch.Tensor,
                       groups: torch.Tensor) -> torch.Tensor:
        """(rows, n_genes) conditional means, row i given the genes of `given[groups[i]]`.

        For training, where each mini-batch holds many masks: a Cholesky solve per mask on its
        rows only, never a (genes x known genes) map per mask, which with thousands of genes
        would cost more than the network's update. The penalty (at least 1 on the correlation
        scale: `spalstf.prior.choose_alpha`'s floor) keeps the solve well conditioned.
        """
        g = given.to(self.corr.dtype)
        z = self._z(known) * g[groups]
        chol = torch.linalg.cholesky(self._gram(g))
        out = z.new_empty(len(z), self.corr.shape[0])
        for mask in torch.unique(groups).tolist():
            rows = (groups == mask).nonzero()[:, 0]
            solved = torch.cholesky_solve(z[rows].T, chol[mask])  # (n_known, rows)
            out[rows] = (self.corr @ (solved * g[mask][:, None])).T
        return self.mean + self.sd * out

    def state(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "sd": self.sd, "corr": self.corr,
                "penalty": torch.tensor(self.penalty)}
