"""spalstf: impute the genes a spatial transcriptomics experiment did not measure.

SpaLSTF (Yuan et al., PLOS Comput Biol 2026, doi 10.1371/journal.pcbi.1013954): a conditional
diffusion model with an XCA-Transformer denoiser and a BiLSTM cell-context encoder, trained on
a scRNA-seq reference and sampled on the spatial data with the measured genes clamped.

>>> import spalstf
>>> st, sc = spalstf.datasets.simulate()
>>> imputed = spalstf.impute(st, sc)            # AnnData: X imputed, layers["std"] uncertainty
"""

import logging

from spalstf import datasets, io, metrics, pl
from spalstf._version import __version__
from spalstf.api import fit, impute
from spalstf.config import Config
from spalstf.evaluate.cv import cross_validate
from spalstf.model import Model, load

# A library never configures logging; it only makes sure its messages are not lost as "no
# handler" warnings (the standard NullHandler recipe).
logging.getLogger("spalstf").addHandler(logging.NullHandler())

__all__ = ["Config", "Model", "__version__", "cross_validate", "datasets", "fit", "impute",
           "io", "load", "metrics", "pl"]
