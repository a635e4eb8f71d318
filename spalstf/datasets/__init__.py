"""Data: the simulator (the embedded default data set) and loaders for real paired data."""

from spalstf.datasets._loaders import (
    DATASETS,
    load,
    read_h5ad_pair,
    read_li_format,
    read_rctd_csv,
    read_rctd_pair,
)
from spalstf.datasets._simulate import simulate

__all__ = ["DATASETS", "load", "read_h5ad_pair", "read_li_format", "read_rctd_csv",
           "read_rctd_pair", "simulate"]
