"""The matrices the evaluation takes: any cells x genes matrix (numpy, scipy sparse, DataFrame
or AnnData) as one dense float array, for the metrics and the clustering alike."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp


def _as_dense(x: Any, name: str) -> np.ndarray:
    """Return a float64 2-D copy-free (when possible) view of ``x``."""
    if hasattr(x, "X") and hasattr(x, "obs_names"):  # AnnData
        x = x.X
    if isinstance(x, pd.DataFrame):
        x = x.to_numpy()
    if sp.issparse(x):
        x = x.toarray()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(
            f"`{name}` must be a cells x genes matrix (2-D). Expected ndim 2, received {arr.ndim}."
        )
    return arr
