"""The masked-gene network as a base predictor: the SpaLSTF diffusion trained on the ST too.

The "network" predictor learns from the reference alone. This one (`spalstf.prior.masked.train`)
trains the same parts (conditional diffusion, XCA attention, BiLSTM context, variational bound
and KL, each switchable in `spalstf.Config`) on the reference's cells AND on the ST's own known
genes under random gene masks, so that it sees the ST's platform; the target genes are learnt
from the reference only (the ST never has them).

Its training therefore needs the ST, and happens in `prepare` (once per imputation, on up to
`spalstf.prior.STAT_CELLS` evenly spaced ST cells): `fit` keeps the reference cells it trains
on. In the self-check each inner fold's model knows only that fold's known genes, so the ST
rows it trains on hold only those: the genes it is scored on are never seen on the ST (no
leakage). It reads each cell's own known genes (the raw view: `spalstf.combine.columns`), and
costs a training per imputation (about a minute on 2 CPU cores with the default budget of
`Config.max_steps` updates): it is not a default predictor.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import torch

from spalstf._logging import phase_level
from spalstf.config import Config
from spalstf.prior.base import MODEL, BasePredictor, Blocks, Reference
from spalstf.prior.masked.train import MaskedOptions, fit_masked

logger = logging.getLogger(__name__)


def row_keys(values: np.ndarray) -> list[str]:
    """A name per row from its values: the key of the row's random draws, so that a cell's
    prediction depends on the cell, not on the chunk it is asked in (rows with equal values
    get equal draws)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    return [hashlib.blake2b(row.tobytes(), digest_size=8).hexdigest() for row in values]


class MaskedNetwork(BasePredictor):
    """Targets of each ST cell sampled by the masked-gene network (model space).

    `config`: its settings are a network's, those of the model, train and sample stages of
    `spalstf.Config` (it trains one in `prepare`), so it takes the whole Config.
    """

    name = "masked"
    reads = MODEL
    network = True

    def __init__(self, config: Config, *, rows: np.ndarray | None = None,
                 n_known: int | None = None, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        #: (cells, n_known + n_target) the reference cells trained on (the atlas), model space
        self.rows, self.n_known, self.seed = rows, n_known, seed
        self.model = None  # the `spalstf.prior.masked.sample.MaskedModel` trained by prepare

    def fit(self, reference: Reference, *, seed: int) -> None:
        if reference.atlas is None:
            raise ValueError("the masked-gene network needs the reference's atlas")
        self.rows = np.asarray(reference.atlas, np.float32)
        self.n_known, self.seed = reference.known.shape[1], seed
        self.model = None

    def prepare(self, st_blocks: Blocks, *, device: torch.device | str = "cpu") -> None:
        """Train on the reference cells and the ST's known genes (see the module)."""
        super().prepare(st_blocks, device=device)
        st = [np.asarray(b, np.float32) for b in st_blocks()]
        st = np.concatenate(st) if st else np.zeros((0, self.n_known), np.float32)
        # a phase line, quiet inside the self-check's folds (their one line stands for it)
        logger.log(phase_level(), "training the masked-gene network on %d reference cells "
                   "and %d ST cells (%d known genes)", len(self.rows), len(st), self.n_known)
        # ST rows need two known genes (one given, one hidden): with fewer, the reference alone
        options = MaskedOptions(use_st=self.n_known >= 2)
        self.model = fit_masked(self.rows[:, :self.n_known], self.rows[:, self.n_known:], st,
                                config=self.config, seed=self.seed, device=self.device,
                                options=options)

    def predict(self, known: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("MaskedNetwork.prepare must run before predict (it trains the "
                               "network on the ST)")
        n_target = self.rows.shape[1] - self.n_known
        if len(known) == 0:
            return np.zeros((0, n_target), np.float32)
        mean, _ = self.model.predict(known, np.arange(self.n_known),
                                     self.n_known + np.arange(n_target), row_keys(known),
                                     seed=self.seed)
        return mean.astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return {"rows": self.rows, "n_known": np.asarray(self.n_known, dtype=np.int64),
                "seed": np.asarray(self.seed, dtype=np.int64)}

    @classmethod
    def state_shapes(cls, n_known: int, n_target: int) -> dict:
        return {"rows": ("cells", n_known + n_target), "n_known": n_known, "seed": ()}

    @classmethod
    def from_config(cls, config: Config, **fitted) -> MaskedNetwork:
        return cls(config, **fitted)
