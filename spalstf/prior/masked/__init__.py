"""The masked-gene network: the SpaLSTF diffusion trained on the ST's known genes too.

- `network`: the `MaskedDenoiser` (any split of the genes into given and predicted ones) and
  the reference's `ConditionalGaussian`, the prior of any split.
- `train`: its fit on the reference and the ST under random gene masks (`fit_masked`, its
  settings `MaskedOptions`), through the shared loop (`spalstf.train.loop`).
- `sample`: the fitted `MaskedModel`, which predicts any split of an ST's genes.
- `predictor`: the network as a base predictor of the prior (`MaskedNetwork`, "masked").
"""

from spalstf.prior.masked.predictor import MaskedNetwork
from spalstf.prior.masked.sample import MaskedModel
from spalstf.prior.masked.train import MaskedOptions, fit_masked

__all__ = ["MaskedModel", "MaskedNetwork", "MaskedOptions", "fit_masked"]
