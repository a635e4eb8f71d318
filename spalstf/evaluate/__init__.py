"""Evaluation: per-gene metrics, leave-genes-out cross-validation and baseline methods.

- :mod:`spalstf.evaluate.metrics`: PCC, SPCC, SSIM, RMSE, JS, accuracy score, clustering
  (the clustering defined in :mod:`spalstf.evaluate.clustering`).
- :mod:`spalstf.evaluate.cv`: :func:`cross_validate`, the Li et al. 2022 protocol.
- :mod:`spalstf.evaluate.baselines`: reference mean, kNN, SpaGE-style, ridge, Tangram, gimVI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["metrics", "cross_validate", "baselines"]


def __getattr__(name: str) -> Any:
    # Lazy: importing spalstf.metrics must not pull in the cross-validation machinery.
    import importlib

    if name in ("metrics", "clustering", "baselines", "cv"):
        return importlib.import_module(f"spalstf.evaluate.{name}")
    if name == "cross_validate":
        from spalstf.evaluate.cv import cross_validate

        return cross_validate
    raise AttributeError(f"module 'spalstf.evaluate' has no attribute {name!r}")
