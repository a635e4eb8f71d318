"""The prior: fast base predictors of the target genes, each a column of the learnt combination.

- `base`: the interface (`BasePredictor`) and the reference predictors are fitted on.
- `ridge`: the ridge map from known to target genes (`RidgePrior`), its penalty by GCV.
- `spots`: pseudo-spots, mixtures of reference cells, which the ridge and the estimate read.
- `neighbours`: the aligned-neighbour estimate (`AlignedNeighbours`).
- `spage`: the SpaGE-style projection (`SpageProjection`).
- `transport`: the Tangram-style optimal-transport mapping (`TransportMapping`).
- `likelihood`: reference clusters weighed by the likelihood of a cell's counts
  (`CountLikelihood`).
- `deconvolve`: each cell or spot as a mixture of reference units, its proportions by Poisson
  maximum likelihood (`SpotDeconvolution`).
- `masked`: the masked-gene network, trained on the ST's known genes too (`MaskedNetwork`).

Each predictor is an estimator with its own few settings (`base`); `build` makes one from a
`spalstf.Config`. A new predictor is one module here, its class registered in `PREDICTORS`
(and its name in `spalstf.config.PREDICTOR_NAMES`, which `spalstf --help` lists without
loading torch; tests/test_config.py checks the two agree).
"""

from spalstf.config import Config
from spalstf.prior.base import (
    EXPRESSION,
    MODEL,
    STAT_CELLS,
    BasePredictor,
    ProfilePredictor,
    Reference,
    landmarks,
    spaced_blocks,
)
from spalstf.prior.deconvolve import SpotDeconvolution
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

#: Every predictor by its class's `name`, in the order of `spalstf.config.PREDICTOR_NAMES`:
#: how a saved model finds the class of each state it holds, and how `build` finds the class
#: of a name of `Config.predictors`.
PREDICTORS: dict[str, type[BasePredictor]] = {
    cls.name: cls for cls in (RidgePrior, AlignedRidge, AlignedNeighbours, ReferenceNeighbours,
                               SpageProjection, TransportMapping, CountLikelihood,
                               SpotDeconvolution, MaskedNetwork)}


def build(name: str, config: Config) -> BasePredictor:
    """The predictor `name` (a key of `PREDICTORS`), not yet fitted, with its settings read
    from `config`: the one factory of the model's fitting."""
    return PREDICTORS[name].from_config(config)


__all__ = ["ALPHA_GRID", "ESTIMATE_MIXTURES_PER_SIZE", "EXPRESSION", "MIXTURES_PER_SIZE",
           "MIXTURE_SIZES", "MODEL", "PREDICTORS", "STAT_CELLS", "AlignedNeighbours",
           "AlignedRidge", "BasePredictor", "CountLikelihood", "MaskedNetwork",
           "ProfilePredictor", "Reference", "ReferenceNeighbours", "RidgePrior",
           "SpageProjection", "SpotDeconvolution", "TransportMapping", "build", "choose_alpha", "fit_prior",
           "fit_ridge", "knn_estimate", "landmarks", "pseudo_spots", "spaced_blocks",
           "unit_rows"]
