"""Data: the simulator (the embedded default data set), the osmFISH example pair shipped with
the package (:func:`osmfish_example`), loaders for real paired data and :func:`pool_spots`,
which turns a single-cell-resolution ST into spots of several cells."""

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
from spalstf.datasets._spots import pool_spots

__all__ = ["DATASETS", "load", "osmfish_example", "pool_spots", "read_h5ad_pair",
           "read_li_format", "read_rctd_csv", "read_rctd_pair", "simulate"]
