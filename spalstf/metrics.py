"""Per-gene imputation metrics: ``spalstf.metrics.pcc(truth, pred)`` etc.

A re-export of :mod:`spalstf.evaluate.metrics`, name for name; see there for the definitions.
"""

# the names of spalstf.evaluate.metrics' __all__, and that list itself: written once, there
from spalstf.evaluate.metrics import *  # noqa: F403
from spalstf.evaluate.metrics import __all__  # noqa: F401
