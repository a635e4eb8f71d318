"""spalstf: impute the genes a spatial transcriptomics experiment did not measure.

SpaLSTF (Yuan et al., PLOS Comput Biol 2026, doi 10.1371/journal.pcbi.1013954): a conditional
diffusion model with an XCA-Transformer denoiser and a BiLSTM cell-context encoder, trained on
a scRNA-seq reference and sampled on the spatial data with the measured genes clamped. By
default spalstf does not train it: it combines fast base predictors (ridge, neighbours,
SpaGE-style, Tangram-style transport, a count-likelihood mixture) with weights learnt on the
ST's own known genes, hidden in turn, with a 90% interval (``predictors=[..., "network"]``
adds the network).

>>> import spalstf
>>> st, sc = spalstf.datasets.simulate()
>>> imputed = spalstf.impute(st, sc)   # AnnData: X imputed, layers["lower"]/["upper"] interval
"""

import importlib
import logging
from typing import TYPE_CHECKING, Any

from spalstf._version import __version__

if TYPE_CHECKING:  # what type checkers see; at run time each loads on first use (below)
    from spalstf import datasets, io, metrics, pl
    from spalstf.api import fit, impute
    from spalstf.config import Config
    from spalstf.evaluate.cv import cross_validate
    from spalstf.model import Model, load

#: The public functions and classes, by the module that defines them. They, and the
#: sub-modules (`spalstf.datasets`, `spalstf.io`, ...), load on first use (PEP 562): importing
#: the package, or a light part of it such as `spalstf.config` or the command line's --help,
#: does not load torch, anndata or scanpy.
_DEFINED_IN = {"fit": "spalstf.api", "impute": "spalstf.api", "Config": "spalstf.config",
               "cross_validate": "spalstf.evaluate.cv", "Model": "spalstf.model",
               "load": "spalstf.model"}


def __getattr__(name: str) -> Any:
    if name in _DEFINED_IN:
        value = getattr(importlib.import_module(_DEFINED_IN[name]), name)
        globals()[name] = value
        return value
    try:  # a sub-module: spalstf.datasets, spalstf.prior, ...
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# A library never configures logging; it only makes sure its messages are not lost as "no
# handler" warnings (the standard NullHandler recipe).
logging.getLogger("spalstf").addHandler(logging.NullHandler())

__all__ = ["Config", "Model", "__version__", "cross_validate", "datasets", "fit", "impute",
           "io", "load", "metrics", "pl"]
