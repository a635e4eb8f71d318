"""Per-gene imputation metrics: ``spalstf.metrics.pcc(truth, pred)`` etc.

A re-export of :mod:`spalstf.evaluate.metrics`; see there for the definitions.
"""

from spalstf.evaluate.metrics import (
    HIGHER_IS_BETTER,
    METRICS,
    accuracy_score,
    clustering_scores,
    js,
    leiden_clusters,
    pcc,
    rmse,
    score_genes,
    spcc,
    ssim,
    summarize,
)

__all__ = [
    "METRICS",
    "HIGHER_IS_BETTER",
    "pcc",
    "spcc",
    "ssim",
    "rmse",
    "js",
    "score_genes",
    "summarize",
    "accuracy_score",
    "leiden_clusters",
    "clustering_scores",
]
