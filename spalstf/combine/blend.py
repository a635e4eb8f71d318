"""The prior of a chunk of cells: a weighted sum of base predictors, the centre of the samples.

`Blend.from_config` gives today's blend, (1 - knn_weight) x ridge + knn_weight x aligned
neighbours (`Config.knn_weight`); other combinations are other weights over the same
predictors. The sampler receives the blend's prediction for each chunk (`Blend.reader`) and
never sees the predictors themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from spalstf.config import Config
from spalstf.prior.base import BasePredictor, spaced_blocks

logger = logging.getLogger(__name__)

#: `read(scale, cells)`: the known genes of the ST cells `cells` (sorted indices) on `scale`
#: (`spalstf.prior.base.MODEL` or `EXPRESSION`).
Read = Callable[[str, np.ndarray], np.ndarray]


class Blend:
    """sum_i weight_i x predictor_i, the predictors' outputs in model space.

    Parameters
    ----------
    parts
        (predictor, weight) pairs, summed in this order; parts of weight 0 are left out (and
        never predicted).
    """

    def __init__(self, parts: Sequence[tuple[BasePredictor, float]]) -> None:
        self.parts = [(p, float(w)) for p, w in parts if w != 0]
        if not self.parts:
            raise ValueError("a Blend needs at least one predictor of non-zero weight")

    @classmethod
    def from_config(cls, predictors: Mapping[str, BasePredictor], config: Config
                    ) -> Blend | None:
        """The prior of `config`: with the ridge prior, (1 - knn_weight) x ridge + knn_weight x
        the aligned-neighbour estimate; None for the other priors (`Config.prior`), which the
        network computes itself. Each predictor is a fresh copy reading `config` (the
        imputation's sample-stage settings), so preparing it leaves the model's untouched."""
        if config.prior != "ridge" or "ridge" not in predictors:
            return None
        weight = config.knn_weight
        if weight > 0 and "aligned" not in predictors:
            logger.warning("this model keeps no reference atlas: `knn_weight` is ignored")
            weight = 0.0

        def fresh(name: str) -> BasePredictor:
            p = predictors[name]
            return type(p).from_state(p.state(), config)

        parts = [(fresh("ridge"), 1 - weight)]
        if weight > 0:
            parts.append((fresh("aligned"), weight))
        return cls(parts)

    def prepare(self, read: Read, n_cells: int, *, block: int,
                device: torch.device | str = "cpu") -> None:
        """Each predictor's `prepare` over the ST's `n_cells` cells, read `block` at a time
        (the statistics from at most `spalstf.prior.base.STAT_CELLS` evenly spaced cells)."""
        for predictor, _ in self.parts:
            scale = predictor.reads
            predictor.prepare(spaced_blocks(lambda cells, s=scale: read(s, cells), n_cells,
                                            block), device=device)

    def predict(self, read: Read, cells: np.ndarray) -> np.ndarray:
        """The prior (cells, n_target) in model space of the ST cells `cells`."""
        out = None
        for predictor, weight in self.parts:
            value = predictor.predict(read(predictor.reads, cells))
            term = value if weight == 1 else weight * value
            out = term if out is None else out + term
        return out

    def reader(self, read: Read, cells: np.ndarray) -> Callable[[slice], np.ndarray]:
        """`prior(chunk)`: the prior of `cells[chunk]`, as the sampler asks for it."""
        return lambda chunk: self.predict(read, cells[chunk])
