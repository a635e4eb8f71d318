"""The model: a fitted `Model`, how it is fitted, how it predicts and how it is saved.

- `core`: the `Model` class, `fit_model` (fit one on a reference), `load` (read one back) and
  `fit_and_impute` (what `spalstf.impute` runs: self-check, fit, impute).
- `fitting`: the parts of a model fitted on a reference (the network, the base predictors).
- `predict`: how a model predicts an ST (the learnt stack or the fixed blend) and packs the
  result.
- `saved`: the saved format (model.json, weights.pt) and its checks.
- `folder`: the model folder on disk: checksums, atomic replacement, recovery after a crash.

How the base predictions become the result is `spalstf.combine`'s; the checks of the user's
options are `spalstf._validate`'s.
"""

from spalstf.model.core import Model, fit_and_impute, fit_model, load

__all__ = ["Model", "fit_and_impute", "fit_model", "load"]
