"""Clustering agreement: Leiden clusters of cells the scanpy way, and how well the clusters of
an imputation match those of the measured expression (ARI, AMI, NMI, homogeneity).
Re-exported by :mod:`spalstf.evaluate.metrics` and :mod:`spalstf.metrics`."""

from __future__ import annotations

from typing import Any

import numpy as np

from spalstf.evaluate._matrices import _as_dense

__all__ = ["leiden_clusters", "clustering_scores"]


def leiden_clusters(
    x: Any,
    *,
    n_pcs: int = 30,
    n_neighbors: int = 30,
    resolution: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """Leiden clusters of the cells of a cells x genes matrix, the scanpy way.

    ``sc.pp.pca`` (centred, ARPACK, ``n_pcs`` components, at most
    ``min(n_cells, n_genes) - 1``), ``sc.pp.neighbors`` on the components (``n_neighbors``
    cells, the cell itself included as scanpy counts them, exact search by scikit-learn, UMAP
    connectivities), then ``sc.tl.leiden`` with igraph's implementation (modularity at
    ``resolution``, 2 iterations: scanpy's recommended settings). Every random step takes
    ``seed``, and the neighbour search is exact (not the approximate search scanpy switches to
    above 4096 cells), so the same seed gives the same labels.

    Parameters
    ----------
    x
        Cells x genes (log-normalised expression). Not modified.
    n_pcs, n_neighbors, resolution, seed
        Clustering settings.

    Returns
    -------
    numpy.ndarray
        Integer cluster label per cell, from 0.
    """
    import anndata as ad
    import scanpy as sc

    a = _as_dense(x, "x")
    n_cells, n_genes = a.shape
    if n_cells < 3 or not (a.std(axis=0) > 0).any():
        # too few cells, or every cell identical (a constant prediction): one cluster
        return np.zeros(n_cells, dtype=int)
    adata = ad.AnnData(np.array(a, dtype=np.float32))  # a copy: x is never modified
    if n_genes > 1:
        n_comp = max(1, min(n_pcs, n_cells - 1, n_genes - 1))
        sc.pp.pca(adata, n_comps=n_comp, svd_solver="arpack", random_state=seed)
        rep = "X_pca"
    else:
        rep = "X"  # one gene: nothing to reduce
    import torch

    # The first neighbour graph of a process starts numba's OpenMP threading layer, which sets
    # OpenMP's thread count, torch's with it, to every core whatever OMP_NUM_THREADS says: the
    # torch work after it ran on two threads beside another job on 2 cores, and small ops
    # (Tangram's clusters mode) 20x slower. The caller's count is put back.
    threads = torch.get_num_threads()
    try:
        sc.pp.neighbors(
            adata,
            n_neighbors=min(n_neighbors, n_cells),
            use_rep=rep,
            transformer="sklearn",
            random_state=seed,
        )
    finally:
        torch.set_num_threads(threads)
    sc.tl.leiden(
        adata,
        resolution=resolution,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=seed,
    )
    return adata.obs["leiden"].astype(int).to_numpy()


def clustering_scores(
    measured: Any,
    imputed: Any,
    *,
    n_pcs: int = 30,
    n_neighbors: int = 30,
    resolution: float = 1.0,
    seed: int = 0,
) -> dict[str, float]:
    """Agreement of Leiden clusters of the measured ST and of the imputed matrix.

    Parameters
    ----------
    measured
        Cells x genes, the measured (log-normalised) ST expression.
    imputed
        Cells x genes, the imputation of the same cells (genes may differ).
    n_pcs, n_neighbors, resolution, seed
        See :func:`leiden_clusters`.

    Returns
    -------
    dict
        ``ari``, ``ami``, ``nmi``, ``homogeneity`` (of the imputed clusters with respect to the
        measured ones) and the numbers of clusters ``n_clusters_measured``,
        ``n_clusters_imputed``.
    """
    from sklearn import metrics as skm

    a = _as_dense(measured, "measured")
    b = _as_dense(imputed, "imputed")
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            "`measured` and `imputed` must hold the same cells. "
            f"Expected {a.shape[0]} rows, received {b.shape[0]}."
        )
    kw = dict(n_pcs=n_pcs, n_neighbors=n_neighbors, resolution=resolution, seed=seed)
    la = leiden_clusters(a, **kw)
    lb = leiden_clusters(b, **kw)
    return {
        "ari": float(skm.adjusted_rand_score(la, lb)),
        "ami": float(skm.adjusted_mutual_info_score(la, lb)),
        "nmi": float(skm.normalized_mutual_info_score(la, lb)),
        "homogeneity": float(skm.homogeneity_score(la, lb)),
        "n_clusters_measured": int(la.max() + 1),
        "n_clusters_imputed": int(lb.max() + 1),
    }
