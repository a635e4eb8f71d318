"""A Tangram-style mapping: reference profiles mapped onto the ST by entropic optimal transport.

Tangram (Biancalani et al. 2021) learns a soft assignment between reference cells and spots and
projects the reference's genes through it. Here the assignment is an entropic optimal transport
plan (Cuturi 2013) between the ST's cells and reference profiles (atlas cells and pseudo-spots),
with the cost 1 - cosine similarity of their known genes, each data set z-scored over itself
(as SpaGE aligns two platforms), and uniform marginals: every ST cell is explained, and every
reference profile is used about equally, which corrects for cell types the reference over- or
under-samples (a kNN average follows the reference's composition).

Memory stays bounded in the number of ST cells: the reference side's dual potentials are
learnt by Sinkhorn iterations on at most `LANDMARKS` evenly spaced ST cells (`prepare`); a cell's
row of the plan is then a softmax over the profiles of (similarity - 1) / `EPSILON` + potential,
which depends on the cell and the fixed potentials only. No cells x cells matrix is ever held.
"""

from __future__ import annotations

import numpy as np
import torch

from spalstf.preprocess import Standardizer
from spalstf.prior.base import EXPRESSION, Blocks, ProfilePredictor, Reference, landmarks
from spalstf.prior.neighbours import unit_rows
from spalstf.prior.spots import pseudo_spots

#: Entropic regularisation, in units of cosine similarity: each cell's row spreads over the
#: profiles within a few hundredths of its best similarity.
EPSILON = 0.05
#: Sinkhorn iterations (the potentials change by less than 1e-3 after about 20 on the sets
#: of ../shared/data).
ITERATIONS = 30
#: ST cells (evenly spaced) the potentials are learnt on, and reference profiles mapped: they
#: bound the cost of `prepare` (a LANDMARKS x PROFILES matrix).
LANDMARKS = 2000
PROFILE_CELLS = 1500
PROFILE_MIXTURES_PER_SIZE = 125


def reference_profiles(reference: Reference, *, use_mixtures: bool, seed: int,
                       salt: int = 7) -> np.ndarray:
    """(profiles, n_known + n_target) in model space: at most `PROFILE_CELLS` atlas cells (a
    seeded subset) and, with `use_mixtures` (`Config.prior_mixtures`),
    `PROFILE_MIXTURES_PER_SIZE` pseudo-spots of each size. `salt` tells the draws of two
    predictors apart."""
    atlas = reference.atlas
    rng = np.random.default_rng([seed, salt])
    if len(atlas) > PROFILE_CELLS:
        atlas = atlas[np.sort(rng.choice(len(atlas), PROFILE_CELLS, replace=False))]
    parts = [atlas.astype(np.float32)]
    if use_mixtures and reference.scalers is not None:
        parts += [np.concatenate(block, axis=1).astype(np.float32)
                  for block in pseudo_spots(reference, reference.fit_rows(), seed=seed + salt,
                                            per_size=PROFILE_MIXTURES_PER_SIZE)]
    return np.concatenate(parts)


class TransportMapping(ProfilePredictor):
    """Targets of each ST cell through its row of the transport plan (model space), over
    `profiles`: reference cells and, with `use_mixtures` (`Config.prior_mixtures`),
    pseudo-spots."""

    name = "transport"
    reads = EXPRESSION
    config_fields = {"use_mixtures": "prior_mixtures"}

    def __init__(self, *, use_mixtures: bool = True, profiles: np.ndarray | None = None,
                 n_known: int | None = None) -> None:
        super().__init__(profiles=profiles, n_known=n_known)
        self.use_mixtures = use_mixtures
        self._plan: tuple | None = None

    def fit(self, reference: Reference, *, seed: int) -> None:
        reference.atlas_for("transport mapping")
        self.profiles = reference_profiles(reference, use_mixtures=self.use_mixtures, seed=seed)
        self.n_known = reference.known.shape[1]
        self._plan = None

    def prepare(self, st_blocks: Blocks, *, device: torch.device | str = "cpu") -> None:
        """The ST's z-scores and the profiles' dual potentials (Sinkhorn on landmarks)."""
        super().prepare(st_blocks, device=device)
        st_scaler = Standardizer.fit_blocks(lambda: ((None, b) for b in st_blocks()))
        known = self.profiles[:, :self.n_known]
        ref_unit = torch.as_tensor(unit_rows(Standardizer.fit(known).transform(known)),
                                   device=self.device)
        st_unit = torch.as_tensor(unit_rows(st_scaler.transform(landmarks(st_blocks, LANDMARKS))),
                                  device=self.device)
        # Sinkhorn's scalings (rows sum to 1/n, columns to 1/m), in float64: the kernel
        # exp((similarity - 1) / EPSILON) is at least exp(-2 / EPSILON) = 4e-18, far from
        # underflow, so the plain matrix-vector form is exact enough and much faster than
        # the log domain
        kernel = np.exp((st_unit @ ref_unit.T - 1.0).double().cpu().numpy() / EPSILON)
        n, m = kernel.shape
        column = np.ones(m)
        for _ in range(ITERATIONS):
            row = 1.0 / (n * (kernel @ column))
            column = 1.0 / (m * (kernel.T @ row))
        potential = torch.as_tensor(np.log(column), dtype=torch.float32, device=self.device)
        targets = torch.as_tensor(self.profiles[:, self.n_known:], device=self.device)
        self._plan = (st_scaler, ref_unit, potential, targets)

    def predict(self, known: np.ndarray) -> np.ndarray:
        if self._plan is None:
            raise RuntimeError("TransportMapping.prepare must run before predict (it learns "
                               "the plan's potentials on the whole ST)")
        st_scaler, ref_unit, potential, targets = self._plan
        query = torch.as_tensor(unit_rows(st_scaler.transform(known)), device=self.device)
        plan = torch.softmax((query @ ref_unit.T - 1.0) / EPSILON + potential, dim=1)
        return (plan @ targets).cpu().numpy().astype(np.float32)
