"""The count-likelihood mixture: reference profiles weighed by how likely they make a cell's counts.

The other predictors compare a cell with the reference by distances between z-scores, which
treat a gene seen 2 times and one seen 200 times alike. At the depth of most ST platforms (a
few counts per gene) the cell's measured profile is mostly sampling noise, and the right
comparison is a likelihood: under a multinomial, the log-probability of a cell's counts x
given a profile with expression shares q is sum_g x_g log q_g. Here:

- the reference profiles (atlas cells and, with `Config.prior_mixtures`, pseudo-spots, as the
  transport mapping's) are grouped into `N_CLUSTERS` clusters by k-means on their known genes;
  each cluster keeps its mean known-gene shares and its mean target genes (model space);
- `prepare` learns two things from the user's ST itself, on its known genes: each gene's
  capture relative to the reference (the ratio of the mean shares: a platform's per-gene bias),
  and the likelihood's effective depth D, which sets how sharply a cell picks its clusters.
  D is chosen by predicting one half of the known genes from the other (both ways, over
  `SPLITS` splits drawn from the genes, not their columns, on up to `LANDMARKS` cells) over
  the grid `DEPTHS`, keeping the D whose predictions have the highest
  median per-gene PCC: the platform's real depth and overdispersion, not a constant tuned on
  our data sets, decide it;
- a cell's prediction is the mean of the clusters' targets weighed by the posterior
  softmax(D * sum_g s_g log q_kg), s the cell's known-gene shares (read from its
  log-normalised values), q_k cluster k's shares with the capture applied.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from sklearn.cluster import KMeans

from spalstf.prior.base import EXPRESSION, BasePredictor, Blocks, Reference, landmarks
from spalstf.prior.transport import reference_profiles

#: Clusters of reference profiles (fewer when there are fewer than 5 profiles per cluster).
N_CLUSTERS = 100
#: Effective depths tried (counts over the known genes): from a posterior close to the
#: reference's mean to one that picks a single cluster.
DEPTHS = np.geomspace(1.0, 1e4, 17)
#: ST cells (evenly spaced) the capture and the depth are learnt on.
LANDMARKS = 2000
#: Splits of the known genes into halves whose scores the depth is chosen on (summed): with
#: one split the depth chosen hangs on which genes fall together (on a simulated set, from 31
#: to 562 by the split alone); four give the same depth as eight there.
SPLITS = 4
#: Landmark cells the depth is chosen on (evenly spaced among them).
DEPTH_CELLS = 1000
#: Smallest share of a gene in a cluster, relative to a uniform share: keeps log q finite.
FLOOR = 1e-3


def shares(log_normalized: np.ndarray, scale_factor: float) -> np.ndarray:
    """Expression shares (rows sum to 1; all-zero rows stay zero) of log-normalised values."""
    values = np.clip(np.expm1(np.asarray(log_normalized, np.float64)), 0, None) / scale_factor
    total = values.sum(axis=1, keepdims=True)
    return np.divide(values, total, out=np.zeros_like(values), where=total > 0)


def log_profiles(profile_shares: np.ndarray, capture: np.ndarray, genes: np.ndarray
                 ) -> np.ndarray:
    """log q of each profile over `genes`, the capture applied, renormalised over `genes`."""
    q = profile_shares[:, genes] * capture[genes]
    q = q / np.maximum(q.sum(axis=1, keepdims=True), 1e-300)
    q = np.maximum(q, FLOOR / len(genes))
    return np.log(q / q.sum(axis=1, keepdims=True))


def posterior(cell_shares: np.ndarray, log_q: np.ndarray, depth: float,
              log_size: np.ndarray) -> np.ndarray:
    """Each cell's weights over the profiles: softmax of depth x its log-likelihood, the
    profiles' sizes as the prior."""
    logits = depth * (torch.as_tensor(cell_shares) @ torch.as_tensor(log_q).T)
    return torch.softmax(logits + torch.as_tensor(log_size), dim=1).numpy()


def median_gene_pcc(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Median over genes of the PCC of the columns (genes without variance left out)."""
    p = predicted - predicted.mean(axis=0)
    t = truth - truth.mean(axis=0)
    denominator = np.sqrt((p ** 2).sum(axis=0) * (t ** 2).sum(axis=0))
    ok = denominator > 0
    if not ok.any():
        return -np.inf
    return float(np.median((p * t).sum(axis=0)[ok] / denominator[ok]))


class CountLikelihood(BasePredictor):
    """Targets of each ST cell as the posterior mean over clusters of reference profiles.

    `use_mixtures`: cluster pseudo-spots beside the atlas cells (`Config.prior_mixtures`);
    `scale_factor`: the per-cell normalisation's target sum (`Config.scale_factor`), which
    leads log-normalised values back to shares.
    """

    name = "likelihood"
    reads = EXPRESSION
    config_fields = {"use_mixtures": "prior_mixtures", "scale_factor": "scale_factor"}

    def __init__(self, *, use_mixtures: bool = True, scale_factor: float = 1e4,
                 profile_shares: np.ndarray | None = None,
                 known_means: np.ndarray | None = None, targets: np.ndarray | None = None,
                 sizes: np.ndarray | None = None) -> None:
        super().__init__()
        self.use_mixtures, self.scale_factor = use_mixtures, scale_factor
        #: (clusters, n_known) mean known-gene shares, (clusters, n_known) mean known genes
        #: and (clusters, n_target) mean target genes in model space, (clusters,) profiles
        self.profile_shares, self.known_means = profile_shares, known_means
        self.targets, self.sizes = targets, sizes
        # (log q with the capture, depth, log cluster sizes): learnt on the ST by prepare
        self._fitted: tuple | None = None

    def fit(self, reference: Reference, *, seed: int) -> None:
        reference.atlas_for("count-likelihood mixture", scalers=True)
        n_known = reference.known.shape[1]
        # other draws than the transport's (salt): the two err apart
        profiles = reference_profiles(reference, use_mixtures=self.use_mixtures, seed=seed,
                                      salt=11)
        known, target = profiles[:, :n_known], profiles[:, n_known:]
        n_clusters = max(1, min(N_CLUSTERS, len(profiles) // 5))
        labels = KMeans(n_clusters, n_init=1, random_state=seed % 2**32).fit_predict(known)
        one_hot = np.eye(n_clusters)[labels]
        sizes = one_hot.sum(axis=0)
        used = sizes > 0
        one_hot, sizes = one_hot[:, used], sizes[used]
        means = (one_hot.T / sizes[:, None])
        profile_shares = shares(reference.scalers[0].inverse(known), self.scale_factor)
        self.profile_shares = (means @ profile_shares).astype(np.float64)
        self.known_means = (means @ known).astype(np.float32)
        self.targets = (means @ target).astype(np.float32)
        self.sizes = sizes.astype(np.float64)
        self._fitted = None

    def prepare(self, st_blocks: Blocks, *, device: torch.device | str = "cpu") -> None:
        """The ST's capture per known gene and the likelihood's depth (see the module)."""
        super().prepare(st_blocks, device=device)
        sf = self.scale_factor
        values = landmarks(st_blocks, LANDMARKS)
        cell_shares = shares(values, sf)
        log_size = np.log(self.sizes / self.sizes.sum())
        reference_mean = (self.sizes @ self.profile_shares) / self.sizes.sum()
        st_mean = cell_shares.mean(axis=0) if len(cell_shares) else reference_mean
        # a gene the ST never detects keeps the reference's share (nothing to learn from)
        capture = np.where((st_mean > 0) & (reference_mean > 0),
                           st_mean / np.maximum(reference_mean, 1e-300), 1.0)
        genes = np.arange(self.n_known)
        depth = self._choose_depth(cell_shares, values, capture, log_size)
        self._fitted = (log_profiles(self.profile_shares, capture, genes), depth, log_size)

    @property
    def n_known(self) -> int:
        return self.profile_shares.shape[1]

    def _choose_depth(self, cell_shares: np.ndarray, values: np.ndarray, capture: np.ndarray,
                      log_size: np.ndarray) -> float:
        """The depth in `DEPTHS` whose posterior from one half of the known genes best predicts
        the other half (median per-gene PCC, both ways, summed over `SPLITS` seeded splits);
        the middle of the grid when there are too few genes or cells to tell."""
        if self.n_known < 4 or len(values) < 10:
            return float(DEPTHS[len(DEPTHS) // 2])
        # The halves are drawn over the genes ranked by their own statistics, not by their
        # columns: the same genes then give the same halves (and depth) in any column order
        # (drawn by position, the ST's column order alone moved osmFISH's results). The
        # predictor holds no gene names (arrays only, in its saved state too), so the rank is
        # by the gene's mean share in the reference, ties by its mean share in the ST (genes
        # equal in both are interchangeable).
        reference_mean = (self.sizes @ self.profile_shares) / self.sizes.sum()
        ranked = np.lexsort((cell_shares.mean(axis=0), reference_mean))
        # the search reads at most DEPTH_CELLS of the landmarks (evenly spaced): a median of
        # correlations over that many cells, summed over the splits, ranks the depths alike
        rows = np.unique(np.linspace(0, len(values) - 1, min(len(values), DEPTH_CELLS))
                         .astype(int))
        cell_shares, values = cell_shares[rows], values[rows]
        prior = torch.as_tensor(log_size)
        parts = []
        for split in range(SPLITS):
            order = ranked[np.random.default_rng(split).permutation(self.n_known)]
            halves = (np.sort(order[: self.n_known // 2]), np.sort(order[self.n_known // 2:]))
            for given, hidden in (halves, halves[::-1]):
                log_q = log_profiles(self.profile_shares, capture, given)
                # the cell's shares over the given genes, as a fraction of all its known
                # counts: the depth means the same whichever genes it reads. The
                # log-likelihood does not depend on the depth: computed once, then scaled by
                # each depth (as `posterior` does).
                loglik = torch.as_tensor(cell_shares[:, given]) @ torch.as_tensor(log_q).T
                parts.append((loglik, self.known_means[:, hidden], values[:, hidden]))
        scores = np.full(len(DEPTHS), -np.inf)

        def score(i: int) -> None:
            if np.isfinite(scores[i]):
                return
            scores[i] = sum(median_gene_pcc(
                torch.softmax(DEPTHS[i] * loglik + prior, dim=1).numpy() @ means, truth)
                for loglik, means, truth in parts)

        # coarse to fine: every other depth of the grid, then the two beside the best
        for i in range(0, len(DEPTHS), 2):
            score(i)
        best = int(np.argmax(scores))
        for i in (best - 1, best + 1):
            if 0 <= i < len(DEPTHS):
                score(i)
        return float(DEPTHS[int(np.argmax(scores))])

    def cluster_posterior(self, known: np.ndarray) -> np.ndarray:
        """Each cell's posterior over the reference clusters (cells x clusters, rows summing
        to 1) from its known genes (log-normalised, as `predict` reads them)."""
        if self._fitted is None:
            raise RuntimeError("CountLikelihood.prepare must run before predict (it learns the "
                               "capture and the depth on the whole ST)")
        log_q, depth, log_size = self._fitted
        return posterior(shares(known, self.scale_factor), log_q, depth, log_size)

    def predict(self, known: np.ndarray) -> np.ndarray:
        return (self.cluster_posterior(known) @ self.targets).astype(np.float32)

    @property
    def depth(self) -> float | None:
        """The depth `prepare` chose (None before it ran)."""
        return None if self._fitted is None else self._fitted[1]

    def state(self) -> dict[str, np.ndarray]:
        return {"profile_shares": self.profile_shares, "known_means": self.known_means,
                "targets": self.targets, "sizes": self.sizes}

    @classmethod
    def state_shapes(cls, n_known: int, n_target: int) -> dict:
        return {"profile_shares": ("clusters", n_known), "known_means": ("clusters", n_known),
                "targets": ("clusters", n_target), "sizes": ("clusters",)}

    @classmethod
    def check_state(cls, state: Mapping[str, np.ndarray], n_known: int, n_target: int, *,
                    prefix: str = "") -> None:
        super().check_state(state, n_known, n_target, prefix=prefix)
        # the clusters' sizes are the posterior's prior through their log: one not above 0
        # would give NaN or a cluster never chosen
        sizes = np.asarray(state["sizes"])
        if not (sizes > 0).all():
            raise ValueError(f"entry {prefix + 'sizes'!r} must hold the clusters' sizes, all "
                             f"above 0; received {sizes.min()} among them")
