"""The ridge prior: a linear map from standardised known to standardised target genes.

Fitted on the reference cells and on pseudo-spots (`spalstf.prior.spots`), its penalty chosen
by generalised cross-validation. The network conditions on the ridge it was trained with (its
`prior_weights` / `prior_bias` buffers are this fit); as a `BasePredictor` the same map gives
the prior the samples are centred on.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from spalstf.preprocess import Standardizer
from spalstf.prior.base import EXPRESSION, MODEL, BasePredictor, Reference
from spalstf.prior.spots import MIXTURE_SIZES, MIXTURES_PER_SIZE, pseudo_spots
from spalstf.runtime import to_device

logger = logging.getLogger(__name__)


def _moments(known, target, rows: np.ndarray, block: int, spots=None):
    """(n, sum of x, sum of y, x'x, x'y, per-target sum of y^2) over the cells `rows` and
    the (x, y) blocks `spots()` yields. Arrays are read whole; matrices read on demand
    (`spalstf.data.CellRows`) a block of rows at a time."""
    n, sum_x, sum_y = 0, np.zeros(known.shape[1]), np.zeros(target.shape[1])
    gram, cross = np.zeros((known.shape[1],) * 2), np.zeros((known.shape[1], target.shape[1]))
    squares = np.zeros(target.shape[1])

    def blocks():
        if isinstance(known, np.ndarray) and isinstance(target, np.ndarray):
            yield known[rows], target[rows]
        else:
            for start in range(0, len(rows), block):
                part = np.sort(rows[start:start + block])
                yield known[part], target[part]
        if spots is not None:
            yield from spots()

    for x, y in blocks():
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        n += len(x)
        sum_x += x.sum(0)
        sum_y += y.sum(0)
        gram += x.T @ x
        cross += x.T @ y
        squares += (y ** 2).sum(0)
    return n, sum_x, sum_y, gram, cross, squares


def fit_ridge(known: np.ndarray, target: np.ndarray, alpha: float | None,
              rows: np.ndarray | None = None, block: int = 16384,
              return_alpha: bool = False):
    """Ridge weights (n_known, n_target) from standardised known to standardised target genes.

    On the cells `rows` (all when None). Arrays are used whole; matrices read on demand are
    accumulated a block of rows at a time. `alpha=None` chooses the penalty (see
    `choose_alpha`); `return_alpha` also returns the penalty used.
    """
    rows = np.arange(known.shape[0]) if rows is None else np.asarray(rows)
    if (isinstance(known, np.ndarray) and isinstance(target, np.ndarray)
            and known.shape[1] >= DUAL_MIN_GENES and known.shape[1] > len(rows)):
        return _fit_ridge_dual(known[rows], target[rows], alpha, return_alpha=return_alpha)
    _, _, _, gram, cross, squares = _moments(known, target, rows, block)
    squares = float(squares.sum())
    if alpha is None:
        alpha = choose_alpha(gram, cross, squares, len(rows))
    weights = np.linalg.solve(gram + alpha * np.eye(gram.shape[0]), cross).astype(np.float32)
    return (weights, float(alpha)) if return_alpha else weights


#: Known genes from which `fit_ridge` solves in its dual form where there are more known genes
#: than cells: the same weights and penalty (up to float rounding) from the cells x cells kernel
#: instead of the genes x genes Gram matrix. With 5,000 known genes the self-check's cheap
#: measurements of predictability (`spalstf.combine.expected`: 2,500 or 500 cells a fit) spent
#: most of their time in eigen-decompositions of 5,000 x 5,000 Gram matrices. Above any panel
#: of the data sets the outputs are pinned on (at most 558 known genes), so those keep the
#: primal path and their exact numbers.
DUAL_MIN_GENES = 1000


def _fit_ridge_dual(x: np.ndarray, y: np.ndarray, alpha: float | None, *,
                    return_alpha: bool = False):
    """`fit_ridge` on arrays with more columns than rows: W = X' (XX' + alpha I)^-1 Y.

    The Gram matrix X'X has the kernel XX''s non-zero eigenvalues, and its other
    eigen-directions are orthogonal to X'Y, so `choose_alpha`'s generalised cross-validation
    reads the same sums from the kernel's eigen-decomposition (an eigenvector u with
    eigenvalue e stands for X'u / sqrt(e), whose projection of X'Y is sqrt(e) u'Y)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    kernel = x @ x.T
    eig, vec = np.linalg.eigh(kernel)
    eig = np.clip(eig, 0.0, None)
    rotated = vec.T @ y  # (cells, targets)
    if alpha is None:
        alpha = choose_alpha_eigen(eig, eig * (rotated ** 2).sum(axis=1),
                                   float((y ** 2).sum()), len(x))
    weights = (x.T @ (vec @ (rotated / (eig + alpha)[:, None]))).astype(np.float32)
    return (weights, float(alpha)) if return_alpha else weights


def fit_prior(known: np.ndarray, target: np.ndarray, rows: np.ndarray, alpha: float | None,
              *, spots=None, block: int = 16384):
    """The ridge prior: (weights, bias, penalty), target ~ known @ weights + bias.

    Fitted on the cells `rows` and, when `spots` is given, on the blocks of (known, target)
    rows it yields (`pseudo_spots`). The rows are centred and scaled to unit variance per
    gene (their own, so the penalty means the same with and without pseudo-spots); the
    penalty `alpha` is chosen by `choose_alpha` when None. Everything is accumulated as
    moments, a block of rows at a time.
    """
    n, sum_x, sum_y, gram, cross, squares = _moments(known, target, np.asarray(rows), block,
                                                     spots)
    n = max(n, 1)
    mean_x, mean_y = sum_x / n, sum_y / n
    gram -= n * np.outer(mean_x, mean_x)
    cross -= n * np.outer(mean_x, mean_y)
    squares -= n * mean_y ** 2
    sd_x = np.sqrt(np.clip(np.diag(gram), 0, None) / n)
    sd_x = np.where(sd_x > 1e-6, sd_x, 1.0)
    sd_y = np.sqrt(np.clip(squares, 0, None) / n)
    sd_y = np.where(sd_y > 1e-6, sd_y, 1.0)
    gram = gram / np.outer(sd_x, sd_x)
    cross = cross / np.outer(sd_x, sd_y)
    if alpha is None:
        alpha = choose_alpha(gram, cross, float((squares / sd_y ** 2).sum()), n)
    scaled = np.linalg.solve(gram + alpha * np.eye(gram.shape[0]), cross)
    weights = scaled / sd_x[:, None] * sd_y[None, :]
    bias = mean_y - mean_x @ weights
    return weights.astype(np.float32), bias.astype(np.float32), float(alpha)


#: Penalties `choose_alpha` compares, in units of the number of cells.
ALPHA_GRID = tuple(10 ** (k / 4) for k in range(9))  # 1 to 100


def choose_alpha(gram: np.ndarray, cross: np.ndarray, squares: float, n: int) -> float:
    """The ridge penalty: generalised cross-validation on the reference, at least n.

    GCV (Golub, Heath and Wahba 1979) picks, among n x `ALPHA_GRID`, the penalty whose
    leave-one-out error on the reference cells is smallest, computed exactly from the Gram
    matrix (no pass over the cells). The floor of n (on z-scored genes: a penalty as large as
    the data's own diagonal) is for the other platform: the map must transfer to the ST, and a
    fit tuned to the reference alone under-shrinks. Measured, 5-fold median PCC of the prior:
    at least as good as a fixed penalty of 10 on every data set here, and far better where
    the reference has fewer cells than known genes (benchmarks/results/accuracy.md).
    """
    if n < 2:
        return float(max(n, 1))
    eig, vec = np.linalg.eigh(gram)
    eig = np.clip(eig, 0.0, None)
    proj = ((vec.T @ cross) ** 2).sum(axis=1)  # per eigen-direction, summed over targets
    return choose_alpha_eigen(eig, proj, squares, n)


def choose_alpha_eigen(eig: np.ndarray, proj: np.ndarray, squares: float, n: int) -> float:
    """`choose_alpha` from the Gram matrix's eigenvalues `eig` and the squared projections of
    x'y on its eigen-directions, summed over targets (`proj`)."""
    if n < 2:
        return float(max(n, 1))
    best, best_alpha = np.inf, float(n)
    for unit in ALPHA_GRID:
        alpha = unit * n
        shrink = 1.0 / (eig + alpha)
        rss = squares - 2 * (proj * shrink).sum() + (eig * proj * shrink ** 2).sum()
        dof = (eig * shrink).sum()
        gcv = n * max(rss, 0.0) / max(n - dof, 1e-9) ** 2
        if gcv < best:
            best, best_alpha = gcv, alpha
    return best_alpha


class RidgePrior(BasePredictor):
    """target ~ known @ weights + bias on standardised genes (`fit_prior`).

    Parameters
    ----------
    alpha
        The penalty (`Config.prior_alpha`); None: chosen by GCV. After `fit`, `alpha_` is the
        penalty used.
    use_mixtures
        Fit on pseudo-spots too (`Config.prior_mixtures`).
    """

    name = "ridge"
    reads = MODEL
    config_fields = {"alpha": "prior_alpha", "use_mixtures": "prior_mixtures"}

    def __init__(self, *, alpha: float | None = None, use_mixtures: bool = True,
                 weights: np.ndarray | None = None, bias: np.ndarray | None = None) -> None:
        super().__init__()
        self.alpha, self.use_mixtures = alpha, use_mixtures
        self.weights = None if weights is None else np.asarray(weights, np.float32)
        self.bias = None if bias is None else np.asarray(bias, np.float32)
        self.alpha_: float | None = None
        self._tensors: tuple[torch.Tensor, torch.Tensor] | None = None

    def fit(self, reference: Reference, *, seed: int) -> None:
        rows = reference.fit_rows()
        spots = None
        if self.use_mixtures and reference.scalers is not None and len(rows):
            def spots():
                return pseudo_spots(reference, rows, seed=seed)
        self.weights, self.bias, self.alpha_ = fit_prior(
            reference.known, reference.target, rows, self.alpha, spots=spots)
        self._tensors = None
        logger.debug("ridge prior: penalty %.4g on %d cells%s%s", self.alpha_, len(rows),
                     "" if spots is None else
                     f" and {len(MIXTURE_SIZES) * MIXTURES_PER_SIZE} pseudo-spots",
                     " (chosen by GCV, at least the number of rows)"
                     if self.alpha is None else "")

    def prepare(self, st_blocks, *, device: torch.device | str = "cpu") -> None:
        super().prepare(st_blocks, device=device)
        # Copies in torch's own memory, as the network's buffers are: the product below is
        # then the one the network computes from its buffers, to the last bit.
        self._tensors = (torch.tensor(self.weights, device=self.device),
                         torch.tensor(self.bias, device=self.device))

    def predict(self, known: np.ndarray) -> np.ndarray:
        if self._tensors is None:
            self.prepare(lambda: iter(()), device=self.device)
        weights, bias = self._tensors
        return (to_device(known, self.device) @ weights + bias).cpu().numpy()

    def state(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights, "bias": self.bias}

    @classmethod
    def state_shapes(cls, n_known: int, n_target: int) -> dict:
        return {"weights": (n_known, n_target), "bias": (n_target,)}


class AlignedRidge(RidgePrior):
    """The same ridge map read from the ST's known genes z-scored over the ST itself instead
    of with the reference's statistics: each data set aligned by its own (as SpaGE aligns
    two platforms), so a gene the ST measures at another level or spread than the reference
    enters the map on the reference's footing. Fitted, saved and set as `RidgePrior` (whose
    weights a model shares: `of`); only the reading differs."""

    name = "ridge_aligned"
    reads = EXPRESSION

    def __init__(self, *, alpha: float | None = None, use_mixtures: bool = True,
                 weights: np.ndarray | None = None, bias: np.ndarray | None = None) -> None:
        super().__init__(alpha=alpha, use_mixtures=use_mixtures, weights=weights, bias=bias)
        self._scaler = None

    @classmethod
    def of(cls, ridge: RidgePrior) -> AlignedRidge:
        """The aligned reading of a fitted `RidgePrior` (the same arrays)."""
        return cls(alpha=ridge.alpha, use_mixtures=ridge.use_mixtures, weights=ridge.weights,
                   bias=ridge.bias)

    def prepare(self, st_blocks, *, device: torch.device | str = "cpu") -> None:
        # the ST's own statistics, not `RidgePrior.prepare`'s tensors: it reads another scale
        BasePredictor.prepare(self, st_blocks, device=device)
        self._scaler = Standardizer.fit_blocks(lambda: ((None, b) for b in st_blocks()))

    def predict(self, known: np.ndarray) -> np.ndarray:
        if self._scaler is None:
            raise RuntimeError("AlignedRidge.prepare must run before predict (it z-scores the "
                               "ST over itself)")
        return (self._scaler.transform(known) @ self.weights + self.bias).astype(np.float32)
