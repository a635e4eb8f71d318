"""The prior: fast base predictors of the target genes, which the diffusion refines.

- `base`: the interface (`BasePredictor`) and the reference predictors are fitted on.
- `ridge`: the ridge map from known to target genes (`RidgePrior`), its penalty by GCV.
- `spots`: pseudo-spots, mixtures of reference cells, which the ridge and the estimate read.
- `neighbours`: the aligned-neighbour estimate (`AlignedNeighbours`).
- `spage`: the SpaGE-style projection (`SpageProjection`).
- `transport`: the Tangram-style optimal-transport mapping (`TransportMapping`).
- `likelihood`: reference clusters weighed by the likelihood of a cell's counts
  (`CountLikelihood`).
- `masked`: the masked-gene network, trained on the ST's known genes too (`MaskedNetwork`).

A new predictor is one module here, registered in `PREDICTORS`.
"""

from spalstf.prior.base import (
    EXPRESSION,
    MODEL,
    STAT_CELLS,
    BasePredictor,
    Reference,
    landmarks,
    spaced_blocks,
)
from spalstf.prior.likelihood import CountLikelihood
from spalstf.prior.masked import MaskedNetwork
from spalstf.prior.neighbours import (
    AlignedNeighbours,
    ReferenceNeighbours,
    knn_estimate,
    unit_rows,
)
from spalstf.prior.ridge import (
    ALPHA_GRID,
    AlignedRidge,
    RidgePrior,
    choose_alpha,
    fit_prior,
    fit_ridge,
)
from spalstf.prior.spage import SpageProjection
from spalstf.prior.spots import (
    ESTIMATE_MIXTURES_PER_SIZE,
    MIXTURE_SIZES,
    MIXTURES_PER_SIZE,
    pseudo_spots,
)
from spalstf.prior.transport import TransportMapping

#: Every predictor by name: how a saved model finds the class of each state it holds.
PREDICTORS: dict[str, type[BasePredictor]] = {
    cls.name: cls for cls in (RidgePrior, AlignedRidge, AlignedNeighbours, ReferenceNeighbours,
                               SpageProjection, TransportMapping, CountLikelihood,
                               MaskedNetwork)}

__all__ = ["ALPHA_GRID", "ESTIMATE_MIXTURES_PER_SIZE", "EXPRESSION", "MIXTURES_PER_SIZE",
           "MIXTURE_SIZES", "MODEL", "PREDICTORS", "STAT_CELLS", "AlignedNeighbours",
           "AlignedRidge", "BasePredictor", "CountLikelihood", "MaskedNetwork",
           "Reference", "ReferenceNeighbours", "RidgePrior", "SpageProjection", "TransportMapping", "choose_alpha",
           "fit_prior", "fit_ridge", "knn_estimate", "landmarks", "pseudo_spots", "spaced_blocks",
           "unit_rows"]
