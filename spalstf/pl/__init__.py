"""Plots: imputed expression in space, its uncertainty, method comparisons, training loss.

Every function returns the matplotlib ``Figure`` and, given ``path``, also saves it there (the
format follows the suffix: ``.png``, ``.pdf``, ``.svg``...). The user's matplotlib backend is
left alone; in a session without a display matplotlib falls back to its non-interactive Agg
backend by itself.

- :func:`spatial`: imputed expression in space, beside a truth (simulated or held-out measured
  values) and the uncertainty, per gene.
- :func:`uncertainty`: maps of the per-value uncertainty ``layers["std"]``.
- :func:`confidence`: how far to trust a run: one gene's values and the width of their
  intervals in space, and the self-check's measured accuracy beside the expected one.
- :func:`metric_boxplot`: per-gene metrics of cross-validation, one box per method.
- :func:`loss_curve`: the training and validation loss of a model, per epoch.

One module per kind of figure (`maps`: spatial and uncertainty; `trust`: confidence;
`comparison`: metric_boxplot; `training`: loss_curve), and `_common` for what they share
(saving, colour maps of cells in space, the labels of values and their units).
"""

from __future__ import annotations

# the figures' settings, public names of spalstf.pl (the resolution of saved figures, ...)
from spalstf.pl._common import DPI, SCALES, TITLE_FONTSIZE  # noqa: F401
from spalstf.pl.comparison import metric_boxplot
from spalstf.pl.maps import spatial, uncertainty
from spalstf.pl.training import loss_curve
from spalstf.pl.trust import confidence

__all__ = ["confidence", "loss_curve", "metric_boxplot", "spatial", "uncertainty"]
