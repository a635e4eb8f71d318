"""Data: the simulator (the embedded default data set), the osmFISH example pair shipped with
the package (:func:`osmfish_example`) and loaders for real paired data."""

from spalstf.datasets._loaders import (
    DATASETS,
    load,
    osmfish_example,
    read_h5ad_pair,
    read_li_format,
    read_rctd_csv,
    read_rctd_pair,
)
from spalstf.datasets._simulate import simulate

__all__ = ["DATASETS", "load", "osmfish_example", "read_h5ad_pair", "read_li_format",
           "read_rctd_csv", "read_rctd_pair", "simulate"]
