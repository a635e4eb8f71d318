"""Baseline imputation methods for :func:`spalstf.cross_validate`.

Every method has the signature of a *method callable*::

    method(st_known, sc, target_genes, *, seed) -> numpy.ndarray

- ``st_known``: AnnData of raw counts, ST cells x the known genes only (the held-out genes are
  absent, so no method can see them; ``obsm["spatial"]`` kept).
- ``sc``: AnnData of raw counts, reference cells x all reference genes (``obs["cell_type"]``
  where known).
- ``target_genes``: the genes to predict, all present in ``sc``.
- ``seed``: for any randomness.
- returns: float array, ST cells x ``len(target_genes)``, in the order of ``target_genes``, on
  the log-normalised scale, non-negative; or a pair of it and the same prediction on the
  counts scale (``spalstf_method``, ``tangram``), which ``protocol="li2022"`` scores. Methods
  must not modify their inputs.

Preprocessing shared by the baselines (no leakage): each ST cell and each reference cell is
normalised over the *known* genes only, ``log1p(count / total over the known genes * 1e4)``,
for the known and the target genes alike; reference cells with no known-gene count are left
out. The per-gene metrics are invariant to a per-gene scale, so predictions on this scale are
scored fairly against a truth normalised over all measured genes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spalstf.preprocess import counts_at_depth

logger = logging.getLogger(__name__)

__all__ = [
    "MethodFn",
    "BASELINES",
    "get_method",
    "reference_mean",
    "library_size",
    "knn",
    "spage",
    "ridge",
    "tangram",
    "tangram_cells",
    "gimvi",
    "spalstf_method",
    "lognormalize",
]

MethodFn = Callable[..., np.ndarray]

SCALE = 1e4


def _counts(adata: ad.AnnData, genes: Sequence[str]) -> np.ndarray:
    idx = adata.var_names.get_indexer(list(genes))
    if (idx < 0).any():
        missing = [g for g, i in zip(genes, idx, strict=True) if i < 0]
        raise KeyError(f"Genes {missing[:5]} (of {len(missing)}) are absent from the data.")
    x = adata.X[:, idx]
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    return x.astype(np.float64, copy=True)


def lognormalize(x: np.ndarray, library: np.ndarray) -> np.ndarray:
    """``log1p(x / library * 1e4)`` per cell (row); rows with a zero library give zeros.

    Parameters
    ----------
    x
        Cells x genes counts.
    library
        One total per cell.

    Returns
    -------
    numpy.ndarray
        A new array.
    """
    lib = np.asarray(library, dtype=np.float64).reshape(-1, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.log1p(x / lib * SCALE)
    out[(lib <= 0).ravel()] = 0.0
    return out


def _prepare(
    st_known: ad.AnnData, sc: ad.AnnData, target_genes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Log-normalised ST known genes, reference known genes and reference targets."""
    target_genes = list(target_genes)
    missing = [g for g in target_genes if g not in sc.var_names]
    if missing:
        raise ValueError(
            f"`target_genes` must be reference genes; {len(missing)} are absent from `sc`, "
            f"e.g. {missing[:5]}."
        )
    known = [g for g in st_known.var_names if g in set(sc.var_names) and g not in target_genes]
    if not known:
        raise ValueError(
            "`st_known` and `sc` share no known gene; expected at least one, received none."
        )
    st_c = _counts(st_known, known)
    sc_k = _counts(sc, known)
    sc_t = _counts(sc, target_genes)
    sc_lib = sc_k.sum(axis=1)
    keep = sc_lib > 0
    if not keep.all():
        logger.debug("Leaving out %d reference cells without known-gene counts", (~keep).sum())
    if not keep.any():
        raise ValueError("No reference cell has a count in the known genes.")
    st_x = lognormalize(st_c, st_c.sum(axis=1))
    sc_x = lognormalize(sc_k[keep], sc_lib[keep])
    sc_y = lognormalize(sc_t[keep], sc_lib[keep])
    return st_x, sc_x, sc_y, known


def reference_mean(
    st_known: ad.AnnData, sc: ad.AnnData, target_genes: Sequence[str], *, seed: int = 0
) -> np.ndarray:
    """Every ST cell gets the mean log-normalised reference expression (constant per gene).

    Correlations are undefined for it (NaN); it is the floor the other methods must beat.
    """
    st_x, _, sc_y, _ = _prepare(st_known, sc, target_genes)
    return np.repeat(sc_y.mean(axis=0, keepdims=True), st_x.shape[0], axis=0)


def library_size(
    st_known: ad.AnnData, sc: ad.AnnData, target_genes: Sequence[str], *, seed: int = 0
) -> np.ndarray:
    """Depth alone: every held-out gene of a cell predicted by the cell's total count over the
    known genes, ``L``.

    What it measures: how much of a score is sequencing depth and nothing else. On the raw-counts
    scale (Li et al. 2022's truth, ``protocol="li2022"`` of :func:`spalstf.cross_validate`) its
    prediction is ``L`` itself, so its per-gene Pearson is that of the cells' depth with the
    gene's counts: the part of any method's counts-scale score a method gets by knowing only how
    deep each cell was sequenced. On the log-normalised scale of this module the same prediction
    is ``log1p(L / L * 1e4) = log1p(1e4)``, a constant (it says nothing about composition), so
    its correlations there are undefined (NaN); the cross-validation turns it back into ``L``
    with the same depth conversion it applies to every method.
    """
    st_x, _, _, _ = _prepare(st_known, sc, target_genes)
    return np.full((st_x.shape[0], len(list(target_genes))), np.log1p(SCALE))


def knn(
    st_known: ad.AnnData,
    sc: ad.AnnData,
    target_genes: Sequence[str],
    *,
    seed: int = 0,
    k: int = 50,
) -> np.ndarray:
    """Mean target expression of the ``k`` nearest reference cells (Euclidean distance in
    log-normalised known-gene space)."""
    from sklearn.neighbors import NearestNeighbors

    st_x, sc_x, sc_y, _ = _prepare(st_known, sc, target_genes)
    k = int(min(k, sc_x.shape[0]))
    if k < 1:
        raise ValueError(f"`k` must be at least 1; received {k}.")
    idx = NearestNeighbors(n_neighbors=k).fit(sc_x).kneighbors(st_x, return_distance=False)
    return sc_y[idx].mean(axis=1)


def _zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=0)
    sd[sd == 0] = 1.0
    return (x - x.mean(axis=0)) / sd


def _principal_vectors(src: np.ndarray, tgt: np.ndarray, n_pv: int, seed: int):
    """PRECISE principal vectors (Mourragui et al. 2019) between two data sets' PCA spaces."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import normalize

    ps = PCA(n_components=n_pv, random_state=seed).fit(src).components_
    pt = PCA(n_components=n_pv, random_state=seed).fit(tgt).components_
    u, _, vt = np.linalg.svd(ps @ pt.T)
    s_pv = normalize((u.T @ ps)[:n_pv], axis=1)
    t_pv = normalize((vt @ pt)[:n_pv], axis=1)
    cos = np.diag(s_pv @ t_pv.T)
    return s_pv, cos


def spage(
    st_known: ad.AnnData,
    sc: ad.AnnData,
    target_genes: Sequence[str],
    *,
    seed: int = 0,
    n_pv: int | None = None,
    k: int = 50,
    min_cosine: float = 0.3,
) -> np.ndarray:
    """SpaGE-style imputation (Abdelaal et al. 2020).

    The known genes are z-scored within each data set; PCA of each data set gives
    ``n_pv`` components (default: half the number of known genes, as the Li et al. 2022
    benchmark calls SpaGE), aligned by PRECISE principal vectors; the reference's principal
    vectors with a cosine similarity above ``min_cosine`` to the ST's span the shared space.
    Each ST cell takes the weighted mean target expression of its ``k`` nearest reference cells
    there (cosine distance, SpaGE's weights ``1 - d / sum(d)`` over neighbours with ``d < 1``).
    """
    from sklearn.neighbors import NearestNeighbors

    st_x, sc_x, sc_y, known = _prepare(st_known, sc, target_genes)
    zs, zt = _zscore(sc_x), _zscore(st_x)
    max_pv = max(1, min(len(known), sc_x.shape[0], st_x.shape[0]))
    n = max(1, len(known) // 2) if n_pv is None else int(n_pv)
    n = min(n, max_pv)
    s_pv, cos = _principal_vectors(zs, zt, n, seed)
    eff = int((cos > min_cosine).sum())
    if eff == 0:
        logger.warning("SpaGE: no principal vector with cosine > %s; using the first", min_cosine)
        eff = 1
    proj = s_pv[:eff].T
    ps, pt = zs @ proj, zt @ proj
    k = int(min(k, ps.shape[0]))
    dist, idx = NearestNeighbors(n_neighbors=k, metric="cosine").fit(ps).kneighbors(pt)
    out = np.empty((st_x.shape[0], sc_y.shape[1]))
    for j in range(st_x.shape[0]):
        ok = dist[j] < 1
        d, nb = dist[j][ok], idx[j][ok]
        if d.size == 0:
            d, nb = dist[j][:1], idx[j][:1]
        if d.size == 1 or d.sum() == 0:
            w = np.full(d.size, 1.0 / d.size)
        else:
            w = (1 - d / d.sum()) / (d.size - 1)
        out[j] = w @ sc_y[nb]
    return out


def ridge(
    st_known: ad.AnnData,
    sc: ad.AnnData,
    target_genes: Sequence[str],
    *,
    seed: int = 0,
    alpha: float = 10.0,
) -> np.ndarray:
    """Ridge regression from log-normalised known genes to targets, fitted on the reference,
    predictions clipped at 0 (a simple baseline, not a published tool)."""
    from sklearn.linear_model import Ridge

    st_x, sc_x, sc_y, _ = _prepare(st_known, sc, target_genes)
    model = Ridge(alpha=alpha).fit(sc_x, sc_y)
    return np.clip(model.predict(st_x), 0.0, None)


def _cell_type_key(sc: ad.AnnData) -> str | None:
    return "cell_type" if "cell_type" in sc.obs else None


def tangram(
    st_known: ad.AnnData,
    sc: ad.AnnData,
    target_genes: Sequence[str],
    *,
    seed: int = 0,
    mode: str = "clusters",
    device: str = "cpu",
    num_epochs: int = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """Tangram (``tangram-sc``), called as its documentation shows: ``pp_adatas`` on the known
    genes, ``map_cells_to_space``, ``project_genes``. Inputs log-normalised as above. Needs the
    ``benchmark`` extra.

    ``mode="clusters"`` maps the reference's clusters: ``sc.obs["cell_type"]`` when present,
    else Leiden clusters of the reference's log-normalised known genes
    (`spalstf.evaluate.clustering.leiden_clusters`, seeded), since mapping every cell
    (``mode="cells"``, a cells x spots map trained for ``num_epochs``) takes hours on a CPU for
    the references of ../shared/data (osmFISH: more than 25 minutes for one fold of five).

    Returns a pair (see :func:`spalstf.cross_validate`): Tangram's projection, the prediction,
    and its counts-scale form, which the ``"li2022"`` protocol scores. ``project_genes`` sums
    the log-normalised profiles of the reference cells mapped to a spot, so the projection
    grows with how many cells Tangram put there (5 to 19 per ExSeq cell) and is not itself a
    log-normalised value: the counts are :func:`spalstf.evaluate.cv.expected_counts` of the
    projection divided by that number (the mapped cells' mean profile) at the cell's known-gene
    depth. Turning the sum itself into counts (exponentials of values up to 84) scored 0.070
    on ExSeq under that protocol, the mean 0.517 (``benchmarks/results/tangram_counts.md``).
    """
    tg = _import_tangram("tangram")
    st_x, sc_x, sc_y, known = _prepare(st_known, sc, target_genes)
    targets = list(target_genes)
    st_c = _counts(st_known, known)
    ad_sp = ad.AnnData(st_x.astype(np.float32))
    ad_sp.var_names = known
    keep = _counts(sc, known).sum(axis=1) > 0
    ad_sc = ad.AnnData(np.hstack([sc_x, sc_y]).astype(np.float32))
    ad_sc.var_names = known + targets
    key = _cell_type_key(sc)
    if key is not None:
        ad_sc.obs[key] = sc.obs[key].to_numpy()[keep]
    elif mode == "clusters":
        from spalstf.evaluate.clustering import leiden_clusters

        logger.info("Tangram in clusters mode on Leiden clusters of the reference's known "
                    "genes: it has no obs['cell_type']")
        key = "leiden"
        ad_sc.obs[key] = pd.Categorical(leiden_clusters(sc_x, seed=seed).astype(str))
    tg.pp_adatas(ad_sc, ad_sp, genes=known)
    ad_map = _seeded_map(
        tg,
        ad_sc,
        ad_sp,
        seed=seed,
        device=device,
        mode=mode,
        cluster_label=key if mode == "clusters" else None,
        num_epochs=num_epochs,
    )
    ad_ge = tg.project_genes(
        adata_map=ad_map, adata_sc=ad_sc, cluster_label=key if mode == "clusters" else None
    )
    projection = np.clip(_projected(ad_ge, targets), 0.0, None)
    # In clusters mode each cluster's profile is the sum over its cells, so the projection is
    # the sum over the cells mapped to a spot (in cells mode, likewise over the cells), not a
    # log-normalised value: divided by that number of cells it is the mixture's mean
    # log-normalised profile, which turns into counts at the cell's depth as every method's
    # prediction does. The projection itself stays the prediction: on the log-normalised truth
    # it scores better than the mean (0.338 against 0.313 on ExSeq, tangram_counts.md).
    if mode == "clusters":
        sizes = ad_sc.obs[key].value_counts()
        cells = sizes.reindex(ad_map.obs[key].to_numpy()).to_numpy(np.float64)
    else:
        cells = np.ones(ad_map.n_obs)
    mapped = np.asarray(ad_map.X, np.float64).T @ cells  # reference cells mapped to each spot
    mixture = projection / np.where(mapped > 0, mapped, 1.0)[:, None]
    return projection, counts_at_depth(mixture, st_c.sum(axis=1), scale_factor=SCALE)


def _import_tangram(method: str) -> Any:
    root = logging.getLogger()
    level = root.level
    try:
        import tangram as tg
    except ImportError as err:
        raise ImportError(
            f"method {method!r} needs tangram-sc: pip install 'spalstf[benchmark]' "
            "(or pip install tangram-sc)"
        ) from err
    finally:
        # tangram's import sets the root logger to INFO, which would flood the caller's output
        # with its per-run messages (and everyone else's INFO records)
        root.setLevel(level)
    return tg


def _seeded_map(tg: Any, ad_sc: ad.AnnData, ad_sp: ad.AnnData, *, seed: int, device: str,
                **options: Any) -> ad.AnnData:
    """``tg.map_cells_to_space`` with numpy's and torch's generators seeded inside saved
    states."""
    import torch

    # Tangram draws its starting map from numpy's global generator and seeds it (and torch's)
    # only when `random_state` is truthy, so seed 0 gave a different map on every call. Seed
    # both here, inside saved states, so that the caller's generators are left as they were.
    np_state = np.random.get_state()
    cuda = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    mapper = tg.mapping_optimizer.Mapper
    # the loss is swapped on Tangram's class, for every caller in the process: one map at a
    # time, so that a thread never restores another's swap as Tangram's own
    with _TANGRAM_LOSS_SWAP:
        own_loss = mapper._loss_fn
        try:
            with torch.random.fork_rng(devices=cuda):
                np.random.seed(seed % 2**32)
                torch.manual_seed(seed)
                mapper._loss_fn = _loss_without_unweighted_entropy(own_loss)
                return tg.map_cells_to_space(
                    ad_sc, ad_sp, device=device, random_state=seed, verbose=False, **options
                )
        finally:
            mapper._loss_fn = own_loss
            np.random.set_state(np_state)


#: Held while `_seeded_map` runs Tangram with its loss swapped.
_TANGRAM_LOSS_SWAP = threading.Lock()


def _loss_without_unweighted_entropy(own_loss: Callable) -> Callable:
    """Tangram's ``Mapper._loss_fn``, the same map in a third less time.

    Its entropy regulariser, ``lambda_r * (log(P) * P).sum()`` over the cells x spots matrix
    ``P``, is computed and differentiated on every epoch even at ``lambda_r = 0``, the default
    that ``map_cells_to_space`` uses: a third of an epoch's time on a CPU (0.57 s against 0.38 s
    at osmFISH's 5,613 x 3,405, one thread; ``benchmarks/tangram_speed.py``,
    ``benchmarks/results/tangram_speed.md``). Its gradient is then exactly zero, so leaving the
    term out gives the same map, to the bit (tested against Tangram's own loss), unless a
    probability underflows to 0, where Tangram's term would turn the whole map into NaN
    (0 x log 0). Any other case, printing included, runs Tangram's own loss.
    """
    import torch
    from torch.nn.functional import cosine_similarity, softmax

    def loss(self: Any, verbose: bool = True) -> tuple:
        if verbose or self.lambda_r != 0:
            return own_loss(self, verbose=verbose)
        # Tangram's _loss_fn (tangram-sc 1.0), line by line, without the entropy term
        m_probs = softmax(self.M, dim=1)
        density_term = None
        if self.target_density_enabled and self.source_density_enabled:
            d_pred = torch.log(self.d_source @ m_probs)
            density_term = self.lambda_d * self._density_criterion(d_pred, self.d)
        elif self.target_density_enabled:
            d_pred = torch.log(m_probs.sum(axis=0) / self.M.shape[0])
            density_term = self.lambda_d * self._density_criterion(d_pred, self.d)
        g_pred = torch.matmul(m_probs.t(), self.S)
        gv_term = self.lambda_g1 * cosine_similarity(g_pred, self.G, dim=0).mean()
        vg_term = self.lambda_g2 * cosine_similarity(g_pred, self.G, dim=1).mean()
        total_loss = -(gv_term + vg_term)
        kl_reg = np.nan
        if density_term is not None:
            total_loss = total_loss + density_term
            kl_reg = (density_term / self.lambda_d).tolist()
        # the history's entries as Tangram's loss gives them (0/0 for the unweighted terms)
        return (total_loss, (gv_term / self.lambda_g1).tolist(),
                (vg_term / self.lambda_g2).tolist(), kl_reg, np.nan)

    return loss


def _projected(ad_ge: ad.AnnData, targets: Sequence[str]) -> np.ndarray:
    """The targets' columns of ``tg.project_genes``'s output, in the order of ``targets``."""
    names = [g.lower() for g in targets]  # Tangram lower-cases gene names
    # project_genes leaves out genes its clusters' profiles hold none of (zero in every kept
    # reference cell): Tangram's projection of them is 0
    present = [n for n in names if n in ad_ge.var_names]
    x = ad_ge[:, present].X
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    out = np.zeros((ad_ge.n_obs, len(names)), np.float64)
    out[:, [names.index(n) for n in present]] = x
    return out


def tangram_cells(
    st_known: ad.AnnData,
    sc: ad.AnnData,
    target_genes: Sequence[str],
    *,
    seed: int = 0,
    device: str = "cpu",
    num_epochs: int = 1000,
) -> np.ndarray:
    """Tangram as Li et al. 2022 run it (QuKunLab/SpatialBenchmarking,
    ``Benchmarking/SpatialGenes.py``, ``Tangram_impute``): the reference
    ``sc.pp.normalize_total`` (to the median total over all its genes) and ``log1p``, the ST
    as raw counts, ``pp_adatas`` on the known genes, ``map_cells_to_space`` in cells mode with
    its default count-based density prior (``density_prior="rna_count_based"``: spots with
    more counts receive more cells) and ``project_genes``. Needs the ``benchmark`` extra; a
    cells x spots map, so minutes per fold on a CPU for references of ten thousand cells.

    Tangram's projection already carries each spot's depth (through the density prior), so it
    is returned as ``log1p(projection / L * 1e4)``, ``L`` the cell's known-gene total: on the
    log-normalised scale of this module, and turned back by
    :func:`spalstf.evaluate.cv.expected_counts` into Tangram's own output, which is what the
    ``"li2022"`` protocol of :func:`spalstf.cross_validate` scores against the raw counts, as
    their code does.
    """
    tg = _import_tangram("tangram_cells")
    targets = list(target_genes)
    ad_sc, ad_sp, depth = tangram_cells_inputs(tg, st_known, sc, targets)
    ad_map = _seeded_map(
        tg, ad_sc, ad_sp, seed=seed, device=device, mode="cells", num_epochs=num_epochs,
        density_prior="rna_count_based",
    )
    proj = np.clip(_projected(tg.project_genes(adata_map=ad_map, adata_sc=ad_sc), targets), 0,
                   None)
    return lognormalize(proj, depth)


def tangram_cells_inputs(tg: Any, st_known: ad.AnnData, sc: ad.AnnData,
                         target_genes: Sequence[str]
                         ) -> tuple[ad.AnnData, ad.AnnData, np.ndarray]:
    """(reference, ST, the ST cells' known-gene totals): the first two as :func:`tangram_cells`
    hands them to ``map_cells_to_space``, after Tangram's ``pp_adatas`` on the known genes: the
    reference log-normalised to its median total (its cells with counts, their ``obs`` kept), the
    ST as raw counts of the known genes."""
    _, _, _, known = _prepare(st_known, sc, list(target_genes))
    st_c = _counts(st_known, known)
    ad_sp = ad.AnnData(st_c.astype(np.float32))
    ad_sp.var_names = known
    x = sc.X.toarray() if sp.issparse(sc.X) else np.asarray(sc.X)
    total = x.sum(axis=1)
    keep = total > 0
    x = x[keep].astype(np.float64)
    # scanpy's normalize_total default: every cell to the median total of the cells
    ad_sc = ad.AnnData(np.log1p(x / total[keep, None] * np.median(total[keep])).astype(np.float32),
                       obs=sc.obs[keep].copy())
    ad_sc.var_names = list(sc.var_names)
    tg.pp_adatas(ad_sc, ad_sp, genes=known)
    return ad_sc, ad_sp, st_c.sum(axis=1)


def gimvi(
    st_known: ad.AnnData,
    sc: ad.AnnData,
    target_genes: Sequence[str],
    *,
    seed: int = 0,
    max_epochs: int = 200,
) -> np.ndarray:
    """gimVI (``scvi-tools``), called as its tutorial shows: raw counts, the ST cut to the known
    genes, ``GIMVI.setup_anndata`` on both, ``train(max_epochs)``, ``get_imputed_values
    (normalized=True)``; returned as ``log1p(value * 1e4)``. Needs the ``benchmark`` extra."""
    try:
        import scvi
        from scvi.external import GIMVI
    except ImportError as err:
        raise ImportError(
            "method 'gimvi' needs scvi-tools: pip install 'spalstf[benchmark]' "
            "(or pip install scvi-tools)"
        ) from err
    targets = list(target_genes)
    known = [g for g in st_known.var_names if g in set(sc.var_names) and g not in targets]
    genes = known + [g for g in targets if g not in known]
    seq = ad.AnnData(_counts(sc, genes).astype(np.float32))
    seq.var_names = genes
    seq = seq[seq.X[:, : len(known)].sum(axis=1) > 0].copy()
    spatial = ad.AnnData(_counts(st_known, known).astype(np.float32))
    spatial.var_names = known
    scvi.settings.seed = seed
    GIMVI.setup_anndata(seq)
    GIMVI.setup_anndata(spatial)
    model = GIMVI(seq, spatial)
    model.train(max_epochs=max_epochs)
    _, imputed = model.get_imputed_values(normalized=True)
    idx = [genes.index(g) for g in targets]
    return np.log1p(np.asarray(imputed)[:, idx] * SCALE)


def spalstf_method(
    st_known: ad.AnnData,
    sc: ad.AnnData,
    target_genes: Sequence[str],
    *,
    seed: int = 0,
    **options: Any,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """spalstf itself, as a user calls it: ``spalstf.impute(st_known, sc, targets, seed=seed,
    **options)`` (the self-check and its selection included: they read only ``st_known``):
    its ``X`` and, with raw-counts input, its ``layers["counts"]`` (a pair, see
    :func:`spalstf.cross_validate`).
    ``options`` are those of :func:`spalstf.impute` (``epochs``, ``max_time``, ``n_steps``,
    ``n_samples``, ``self_check``, ``device``, ...)."""
    # from the module that defines it, not the package: `spalstf` would name the whole public
    # API (cross_validate included, which imports this module) where only `impute` is used
    from spalstf.api import impute

    targets = list(target_genes)
    options.setdefault("progress", False)
    out = impute(st_known, sc, targets, seed=seed, **options)
    x = out[:, targets].X
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    if "counts" not in out.layers:
        return x.astype(np.float64)
    return x.astype(np.float64), np.asarray(out[:, targets].layers["counts"], np.float64)


#: Methods callable by name in :func:`spalstf.cross_validate`.
BASELINES: dict[str, MethodFn] = {
    "mean": reference_mean,
    "libsize": library_size,
    "knn": knn,
    "spage": spage,
    "ridge": ridge,
    "tangram": tangram,
    "tangram_cells": tangram_cells,
    "gimvi": gimvi,
    "spalstf": spalstf_method,
}


def get_method(name: str, **options: Any) -> MethodFn:
    """A method callable by name, with ``options`` bound (e.g. ``get_method("knn", k=20)``).

    Parameters
    ----------
    name
        One of :data:`BASELINES`.
    **options
        Keyword arguments of that method.

    Returns
    -------
    callable
        ``method(st_known, sc, target_genes, *, seed)``.
    """
    if name not in BASELINES:
        raise ValueError(f"Unknown method {name!r}; expected one of {sorted(BASELINES)}.")
    fn = BASELINES[name]
    return partial(fn, **options) if options else fn
