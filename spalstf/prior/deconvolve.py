"""Spot deconvolution: each ST cell or spot as a non-negative mixture of reference units.

The count-likelihood mixture (`spalstf.prior.likelihood`) treats a cell as ONE reference
cluster, uncertain which; a spot of a 55-100 um platform (Visium, pooled cells) holds several
cells of several types at once. Here the spot is a mixture, as in the deconvolution methods of
spot data (RCTD, cell2location, SPOTlight):

- the units are the reference's cell types where the reference AnnData has
  ``obs["cell_type"]`` (`Reference.cell_types`), otherwise at most `N_UNITS` k-means clusters
  of the atlas cells' known genes. Each unit keeps its mean known-gene shares p_k (over the
  known genes, summing to 1) and its mean normalised target expression t_k (counts per
  `scale_factor` known-gene counts, the scale of the per-cell normalisation);
- a spot's proportions w (w >= 0, sum w = 1) maximise the Poisson likelihood of its
  known-gene counts, x_g ~ Poisson(D sum_k w_k c_g p_kg), by the EM (multiplicative) update
  w_k <- w_k sum_g s_g c_g p_kg / (sum_j w_j c_g p_jg), with s the spot's known-gene shares
  (the maximum does not depend on its depth D, so the log-normalised values are enough), for
  a fixed `ITERATIONS` (a spot's result depends on the spot alone, never on its chunk);
- c_g, each known gene's capture on the ST relative to the reference (a platform's per-gene
  bias), is learnt by `prepare` on the user's ST: alternating the proportions of up to
  `LANDMARKS` cells and c_g = (their mean share of g) / (their fitted mean share of g), the
  joint maximum likelihood (composition is not mistaken for capture, as a ratio of plain means
  would);
- the prediction is the mixture of the units' target profiles, log1p(sum_k w_k t_k), in model
  space (standardised by the reference's target scaler, as every predictor's output). w_k is
  the share of the spot's known-gene counts that unit k gives, so this is the spot's expected
  normalised target expression.

The proportions are also the user's by-product: `proportions` gives them, and
`spalstf.Model.impute` writes them in ``obsm["spalstf_proportions"]`` when the model has this
predictor.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from sklearn.cluster import KMeans

from spalstf.prior.base import EXPRESSION, BasePredictor, Blocks, Reference, landmarks
from spalstf.prior.likelihood import shares

#: Units when the reference has no cell types: k-means clusters of the atlas cells (fewer when
#: there are fewer than 5 cells per cluster). A handful of profiles per broad type: few enough
#: that a spot's mixture is identifiable from a few dozen known genes, and the EM stays cheap.
N_UNITS = 30
#: EM iterations per spot (fixed, so a spot's proportions never depend on its chunk). The EM
#: converges slowly but the mixture it gives fast: on osmfish_spots5 (30 clusters, 33 genes),
#: the mixture's mean L1 distance from that of 1000 iterations is 0.030 after 25, 0.015 after
#: 50, 0.007 after 100, at a cost linear in the iterations (SQUAREM's extrapolation did no
#: better at equal cost there).
ITERATIONS = 50
#: Alternations of proportions and capture in `prepare`, each `ROUND_ITERATIONS` EM updates
#: of the proportions from the last round's: the alternation converges slowly where capture
#: and composition are confounded (a platform capturing 8 of 40 genes 30 times better: mean
#: proportion error 0.13 after 3 rounds of 100 updates, 0.012 after 30;
#: tests/test_deconvolution.py), so many short rounds.
CAPTURE_ROUNDS = 30
ROUND_ITERATIONS = 10
#: ST cells (evenly spaced) the capture is learnt on.
LANDMARKS = 1000
#: Bytes of a unit's name kept in the model file (`encode_names`).
NAME_BYTES = 128
#: Smallest share of a known gene in a unit, relative to a uniform share: a gene a unit never
#: shows in the reference may still appear in a spot (noise, another platform).
FLOOR = 1e-3


def encode_names(names: list[str]) -> np.ndarray:
    """Unit names as a (units, `NAME_BYTES`) uint8 array, each row a name's UTF-8 bytes (cut
    at `NAME_BYTES`) padded with zeros: the model file holds numeric arrays only."""
    out = np.zeros((len(names), NAME_BYTES), np.uint8)
    for row, name in zip(out, names, strict=True):
        raw = name.encode("utf-8")[:NAME_BYTES]
        row[:len(raw)] = np.frombuffer(raw, np.uint8)
    return out


def decode_names(encoded: np.ndarray | None, n_units: int) -> list[str]:
    """The names `encode_names` stored (unit1, unit2, ... when none are)."""
    if encoded is None or np.size(encoded) == 0:
        return [f"unit{i + 1}" for i in range(n_units)]
    return [bytes(row).rstrip(b"\0").decode("utf-8", errors="replace")
            for row in np.asarray(encoded, np.uint8)]


def fit_proportions(cell_shares: np.ndarray, profiles: np.ndarray, *,
                    iterations: int = ITERATIONS, start: np.ndarray | None = None
                    ) -> np.ndarray:
    """(cells, units) Poisson maximum-likelihood proportions (non-negative, rows sum to 1) of
    cells with known-gene shares `cell_shares` (cells, genes) as mixtures of the units'
    `profiles` (units, genes; rows sum to 1, all above 0), by `iterations` EM updates from
    `start` (default: equal proportions). A cell without counts keeps equal proportions."""
    s = torch.as_tensor(np.asarray(cell_shares, np.float32))
    p = torch.as_tensor(np.asarray(profiles, np.float32))
    w = (torch.full((s.shape[0], p.shape[0]), 1.0 / p.shape[0]) if start is None
         else torch.as_tensor(np.asarray(start, np.float32)).clone())
    empty = s.sum(dim=1) <= 0
    for _ in range(iterations):
        ratio = s / (w @ p).clamp_min(1e-30)
        w = w * (ratio @ p.T)
        w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-30)
    w[empty] = 1.0 / p.shape[0]
    return w.numpy()


class SpotDeconvolution(BasePredictor):
    """Targets of each ST cell or spot as the mixture of reference units at its Poisson
    maximum-likelihood proportions (see the module).

    `scale_factor`: the per-cell normalisation's target sum (`Config.scale_factor`), which
    leads log-normalised values back to shares and normalised expression.
    """

    name = "deconvolution"
    reads = EXPRESSION
    config_fields = {"scale_factor": "scale_factor"}
    optional_state = ("unit_names",)

    def __init__(self, *, scale_factor: float = 1e4, unit_shares: np.ndarray | None = None,
                 unit_targets: np.ndarray | None = None, target_mean: np.ndarray | None = None,
                 target_std: np.ndarray | None = None, sizes: np.ndarray | None = None,
                 unit_names: np.ndarray | None = None) -> None:
        super().__init__()
        self.scale_factor = scale_factor
        #: (units, n_known) mean known-gene shares; (units, n_target) mean normalised target
        #: expression; the reference's target scaler (n_target,) x 2; (units,) cells per unit;
        #: the units' names (`encode_names`)
        self.unit_shares, self.unit_targets = unit_shares, unit_targets
        self.target_mean, self.target_std = target_mean, target_std
        self.sizes, self.unit_names = sizes, unit_names
        self._profiles: np.ndarray | None = None  # the shares with the capture: by prepare

    def fit(self, reference: Reference, *, seed: int) -> None:
        atlas = reference.atlas_for("spot deconvolution", scalers=True)
        known_scaler, target_scaler = reference.scalers
        n_known = reference.known.shape[1]
        known_z, target_z = atlas[:, :n_known], atlas[:, n_known:]
        if reference.cell_types is not None:
            types = np.asarray(reference.cell_types).astype(str)
            if len(types) != len(atlas):
                raise ValueError(f"`cell_types` must give one type per atlas cell "
                                 f"({len(atlas)}); received {len(types)}")
            names, labels = np.unique(types, return_inverse=True)
            names = [str(n) for n in names]
        else:
            n_units = max(1, min(N_UNITS, len(atlas) // 5))
            labels = KMeans(n_units, n_init=1, random_state=seed % 2**32).fit_predict(known_z)
            names = [f"cluster{i + 1}" for i in range(n_units)]
        one_hot = np.eye(len(names))[labels]
        sizes = one_hot.sum(axis=0)
        used = sizes > 0
        one_hot, sizes = one_hot[:, used], sizes[used]
        names = [n for n, u in zip(names, used, strict=True) if u]
        means = one_hot.T / sizes[:, None]
        self.unit_shares = means @ shares(known_scaler.inverse(known_z), self.scale_factor)
        self.unit_targets = means @ np.expm1(target_scaler.inverse(target_z).astype(np.float64))
        self.target_mean = np.asarray(target_scaler.mean, np.float32)
        self.target_std = np.asarray(target_scaler.std, np.float32)
        self.sizes = sizes.astype(np.float64)
        self.unit_names = encode_names(names)
        self._profiles = None

    @property
    def names(self) -> list[str]:
        """The units' names: the reference's cell types, or cluster1, cluster2, ..."""
        return decode_names(self.unit_names, len(self.sizes))

    def _with_capture(self, capture: np.ndarray) -> np.ndarray:
        q = self.unit_shares * capture
        q = q / np.maximum(q.sum(axis=1, keepdims=True), 1e-300)
        q = np.maximum(q, FLOOR / q.shape[1])
        return q / q.sum(axis=1, keepdims=True)

    def prepare(self, st_blocks: Blocks, *, device: torch.device | str = "cpu") -> None:
        """The ST's capture per known gene (see the module)."""
        super().prepare(st_blocks, device=device)
        cell_shares = shares(landmarks(st_blocks, LANDMARKS), self.scale_factor)
        capture = np.ones(self.unit_shares.shape[1])
        measured = cell_shares.mean(axis=0) if len(cell_shares) else None
        proportions = None
        for _ in range(CAPTURE_ROUNDS if measured is not None else 0):
            profiles = self._with_capture(capture)
            proportions = fit_proportions(cell_shares, profiles, start=proportions,
                                          iterations=ROUND_ITERATIONS)
            fitted = (proportions @ profiles).mean(axis=0)
            # a gene the ST never detects keeps its capture (nothing to learn from)
            ok = (measured > 0) & (fitted > 0)
            capture = np.where(ok, capture * measured / np.maximum(fitted, 1e-300), capture)
        self._profiles = self._with_capture(capture)

    def proportions(self, known: np.ndarray) -> np.ndarray:
        """(cells, units) proportions of cells' known genes (log-normalised): each unit's
        share of the cell's known-gene counts. `prepare` must have run."""
        if self._profiles is None:
            raise RuntimeError("SpotDeconvolution.prepare must run before predict (it learns "
                               "the capture on the whole ST)")
        return fit_proportions(shares(known, self.scale_factor), self._profiles)

    def predict(self, known: np.ndarray) -> np.ndarray:
        mixture = self.proportions(known) @ self.unit_targets
        return ((np.log1p(np.maximum(mixture, 0)) - self.target_mean)
                / self.target_std).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return {"unit_shares": self.unit_shares, "unit_targets": self.unit_targets,
                "target_mean": self.target_mean, "target_std": self.target_std,
                "sizes": self.sizes, "unit_names": self.unit_names}

    @classmethod
    def state_shapes(cls, n_known: int, n_target: int) -> dict:
        return {"unit_shares": ("units", n_known), "unit_targets": ("units", n_target),
                "target_mean": (n_target,), "target_std": (n_target,), "sizes": ("units",),
                "unit_names": ("units", NAME_BYTES)}

    @classmethod
    def check_state(cls, state: Mapping[str, np.ndarray], n_known: int, n_target: int, *,
                    prefix: str = "") -> None:
        super().check_state(state, n_known, n_target, prefix=prefix)
        std = np.asarray(state["target_std"])
        if not (std > 0).all():
            raise ValueError(f"entry {prefix + 'target_std'!r} must hold the target genes' "
                             f"scales, all above 0; received {std.min()} among them")
