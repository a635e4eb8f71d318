"""Leave-genes-out cross-validation, under two protocols.

- ``"project"`` (the default): 5 shuffled gene folds; each method's log-normalised prediction
  scored against the ST's log-normalised values and, as is, against its raw counts.
- ``"li2022"``: the published protocol of Li et al. 2022 (Nature Methods; code
  QuKunLab/SpatialBenchmarking): 10 gene folds in the genes' order, each method's prediction
  turned into counts at each cell's own depth and scored against the ST's raw counts.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import time
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spalstf._atomic import atomic_path
from spalstf.data import as_expression, check_values
from spalstf.evaluate import metrics as _m
from spalstf.evaluate.baselines import BASELINES, SCALE, lognormalize
from spalstf.preprocess import counts_at_depth

logger = logging.getLogger(__name__)

__all__ = ["cross_validate", "CrossValidationResult", "gene_folds", "expected_counts", "PROTOCOLS"]

TRUTHS = ("lognorm", "counts")
#: Scoring protocols of :func:`cross_validate`.
PROTOCOLS = ("project", "li2022")
#: Gene folds per protocol when ``n_folds`` is not given.
DEFAULT_FOLDS = {"project": 5, "li2022": 10}


@dataclass
class CrossValidationResult:
    """What :func:`cross_validate` returns.

    Attributes
    ----------
    per_gene
        One row per (truth, method, fold, gene): columns ``truth`` (``"lognorm"``: the ST's
        ``log1p(count / total over all its shared genes * 1e4)``; ``"counts"``: raw counts, as
        Li et al. score; under ``protocol="li2022"`` the prediction is first turned into
        counts, see :func:`cross_validate`), ``method``, ``fold``, ``gene`` and the metrics ``pcc``, ``spcc``,
        ``ssim``, ``rmse``, ``js``.
    summary
        One row per (truth, method): median and mean over genes of each metric with the count
        of NaN genes (:func:`spalstf.metrics.summarize`), the accuracy score ``AS`` (ranks of
        the means, among the methods of this run), the clustering scores (``ari``, ``ami``,
        ``nmi``, ``homogeneity``, against the log-normalised truth) and ``wall_time_s``
        (all folds).
    predictions
        Per method, the assembled cells x shared-genes prediction (each gene predicted while
        hidden), as the method returned it (log-normalised).
    folds
        The held-out genes of each fold.
    protocol
        The scoring protocol (``"project"`` or ``"li2022"``).
    counts_predictions
        Under ``protocol="li2022"``, per method, the assembled counts-scale prediction that was
        scored against the raw counts (expected counts at each cell's depth); else empty.
    resumed
        Per method, the folds whose prediction was loaded from ``checkpoint`` instead of made
        (their time in ``wall_time_s`` is the time recorded when they were made); empty
        without a checkpoint.
    """

    per_gene: pd.DataFrame
    summary: pd.DataFrame
    predictions: dict[str, pd.DataFrame] = field(repr=False)
    folds: list[list[str]]
    protocol: str = "project"
    counts_predictions: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)
    resumed: dict[str, list[int]] = field(default_factory=dict)

    def table(self, truth: str = "lognorm", stat: str = "median") -> pd.DataFrame:
        """A compact methods x metrics table: ``stat`` (median or mean) of each metric, the
        NaN count of PCC, AS, ARI and wall time, for one ``truth``."""
        if truth not in TRUTHS:
            raise ValueError(f"`truth` must be one of {TRUTHS}; received {truth!r}.")
        if stat not in ("median", "mean"):
            raise ValueError(f"`stat` must be 'median' or 'mean'; received {stat!r}.")
        s = self.summary.xs(truth, level="truth")
        cols = {m: s[f"{m}_{stat}"] for m in _m.METRICS}
        cols["pcc_n_nan"] = s["pcc_n_nan"]
        for c in ("AS", "ari", "wall_time_s"):
            if c in s:
                cols[c] = s[c]
        return pd.DataFrame(cols)


def gene_folds(
    genes: Sequence[str], n_folds: int = 5, seed: int = 0, *, shuffle: bool = True
) -> list[list[str]]:
    """Held-out genes per fold: scikit-learn ``KFold(n_folds, shuffle=True, random_state=seed)``
    over ``genes`` in the given order; with ``shuffle=False``, ``KFold(n_folds)``: contiguous
    runs of ``genes`` in their order (``seed`` unused), as Li et al.'s ``kfold`` splits."""
    from sklearn.model_selection import KFold

    genes = list(genes)
    if n_folds < 2 or n_folds > len(genes):
        raise ValueError(
            f"`n_folds` must be between 2 and the number of shared genes ({len(genes)}); "
            f"received {n_folds}."
        )
    kf = (KFold(n_splits=n_folds, shuffle=True, random_state=seed) if shuffle
          else KFold(n_splits=n_folds))
    return [[genes[i] for i in test] for _, test in kf.split(np.arange(len(genes)))]


def expected_counts(prediction: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """A log-normalised prediction turned into counts: ``expm1(prediction) * depth / 1e4``.

    The package's log-normalised scale is ``log1p(count / depth * 1e4)`` with ``depth`` the
    cell's total over the known genes (``spalstf.preprocess``, ``scale_factor=1e4``), so this is
    the count the prediction stands for at each cell's own depth: the expected count when the
    prediction is the log of an expected proportion (not the mean of the log). It brings back
    the depth that the normalisation took out, which is what a raw-counts truth rewards.

    Parameters
    ----------
    prediction
        Cells x genes, log-normalised.
    depth
        One total per cell: its count over the known genes.

    Returns
    -------
    numpy.ndarray
        Cells x genes, a new array.
    """
    return counts_at_depth(prediction, depth, scale_factor=SCALE)


def st_trained_ridge(st: ad.AnnData, folds: Sequence[Sequence[str]], *, cell_folds: int = 5,
                     seed: int = 0) -> pd.DataFrame:
    """What the ST's own known genes can tell of its held-out genes: an anchor for the
    leave-genes-out scores (issue 27), not a method (it is trained on the genes it predicts).

    For each gene fold, a ridge from the fold's known genes to its held-out genes, trained on
    the ST's own cells and scored on cells it did not see: the cells split by
    ``KFold(cell_folds, shuffle=True, random_state=seed)``, each part predicted by the ridge
    fitted on the others, as a perfect reference of the same platform could teach. The inputs
    are what the methods see (the known genes log-normalised by their own total, standardised
    on the training cells), the truth is :func:`cross_validate`'s log-normalised one (over
    every gene of ``folds``); the penalty per held-out gene by efficient leave-one-out
    (scikit-learn ``RidgeCV``) on the training cells.

    Parameters
    ----------
    st
        The ST, raw counts in ``X``, holding every gene of ``folds``.
    folds
        The held-out genes of each fold (``CrossValidationResult.folds``).

    Returns
    -------
    pandas.DataFrame
        One row per (fold, gene): ``pcc`` of the out-of-sample predictions against the truth.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold
    from sklearn.preprocessing import StandardScaler

    shared = [g for fold in folds for g in fold]
    where = st.var_names.get_indexer(shared)
    if (where < 0).any() or len(set(shared)) != len(shared):
        absent = [g for g, i in zip(shared, where, strict=True) if i < 0]
        raise ValueError(f"`folds` must hold distinct genes of `st`; received {len(absent)} "
                         f"absent (e.g. {absent[:5]}) among {len(shared)}.")
    if not 2 <= cell_folds <= st.n_obs:
        raise ValueError(f"`cell_folds` must be between 2 and the number of cells "
                         f"({st.n_obs}); received {cell_folds}.")
    x = _matrix(st, None, "st")[:, where]
    counts = (x.toarray() if sp.issparse(x) else np.asarray(x)).astype(np.float64)
    truth = lognormalize(counts, counts.sum(axis=1))
    splits = list(KFold(cell_folds, shuffle=True, random_state=seed).split(counts))
    rows = []
    for f, held in enumerate(folds):
        idx = [shared.index(g) for g in held]
        known = np.delete(counts, idx, axis=1)
        inputs = lognormalize(known, known.sum(axis=1))
        pred = np.empty((counts.shape[0], len(idx)))
        for train, test in splits:
            scale = StandardScaler().fit(inputs[train])
            model = RidgeCV(alphas=np.logspace(-2, 5, 15), alpha_per_target=True)
            model.fit(scale.transform(inputs[train]), truth[np.ix_(train, idx)])
            pred[test] = model.predict(scale.transform(inputs[test]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            rows.append(pd.DataFrame({"fold": f, "gene": list(held),
                                      "pcc": _m.pcc(truth[:, idx], pred)}))
    return pd.concat(rows, ignore_index=True)


def _matrix(adata: ad.AnnData, layer: str | None, name: str) -> Any:
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        raise KeyError(
            f"`{name}_layer`={layer!r} is not a layer of `{name}` ({list(adata.layers)})."
        )
    return adata.layers[layer]


def _resolve_methods(
    methods: str | Sequence[str | Callable] | Mapping[str, Callable | str],
    method_options: Mapping[str, Mapping[str, Any]] | None,
) -> dict[str, Callable[..., np.ndarray]]:
    from functools import partial

    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    items: list[tuple[str, Callable | str]]
    if isinstance(methods, Mapping):
        items = list(methods.items())
    else:
        items = []
        for m in methods:
            if isinstance(m, str):
                items.append((m, m))
            elif callable(m):
                items.append((getattr(m, "__name__", f"method_{len(items)}"), m))
            else:
                raise TypeError(
                    f"`methods` entries must be names or callables; received {type(m).__name__}."
                )
    out: dict[str, Callable[..., np.ndarray]] = {}
    for name, m in items:
        if isinstance(m, str):
            if m not in BASELINES:
                raise ValueError(
                    f"`methods`: unknown method {m!r}; expected one of {sorted(BASELINES)} "
                    "or a callable."
                )
            m = BASELINES[m]
        if name in out:
            raise ValueError(f"`methods`: duplicate method name {name!r}.")
        opts = dict((method_options or {}).get(name, {}))
        out[name] = partial(m, **opts) if opts else m
    if not out:
        raise ValueError("`methods` must name at least one method; received none.")
    return out


def _data_fingerprint(counts: np.ndarray, st: ad.AnnData, shared: Sequence[str],
                      sc: ad.AnnData) -> str:
    """A digest of everything the methods see: the ST's counts over the shared genes, its cell
    names, obs and coordinates, and the reference's values, genes and obs."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(counts))
    for names in (st.obs_names, shared, sc.var_names, sc.obs_names):
        h.update("\0".join(map(str, names)).encode() + b"\1")
    for obs in (st.obs, sc.obs):
        if obs.shape[1]:
            try:
                h.update(pd.util.hash_pandas_object(obs, index=False).to_numpy())
            except TypeError:  # a column of unhashable values (lists, arrays)
                h.update(obs.to_csv().encode())
    if "spatial" in st.obsm:
        h.update(np.ascontiguousarray(np.asarray(st.obsm["spatial"], dtype=np.float64)))
    x = sc.X
    if sp.issparse(x):
        x = x.tocsr()
        for part in (x.data, x.indices, x.indptr):
            h.update(np.ascontiguousarray(part))
    else:
        h.update(np.ascontiguousarray(x))
    h.update(str(x.shape).encode())
    return h.hexdigest()


def _method_identity(fn: Callable[..., np.ndarray]) -> str:
    """The function a method name stands for and its options, as text."""
    options: dict[str, Any] = {}
    while isinstance(fn, functools.partial):
        options = {**fn.keywords, **options}
        fn = fn.func
    return (f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
            f"{sorted(options.items())!r}")


class _FoldCheckpoint:
    """Each method's prediction of each fold, saved as it is made (one ``.npz`` per method and
    fold, written atomically) and loaded back when a rerun asks for the same fold of the same
    method on the same data, so that an interrupted cross-validation resumes where it stopped.
    A saved fold made from other inputs (data, seed, held-out genes, method or its options) is
    made again and overwritten."""

    def __init__(self, folder: str | os.PathLike, data: str, seed: int) -> None:
        self.folder = Path(folder)
        self.data = data
        self.seed = seed

    def _path_key(self, name: str, fn: Callable, fold: int, held: Sequence[str]
                  ) -> tuple[Path, str]:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        key = hashlib.blake2b(json.dumps(
            [self.data, name, _method_identity(fn), self.seed, list(held)]
        ).encode(), digest_size=16).hexdigest()
        return self.folder / safe / f"fold{fold:02d}.npz", key

    def load(self, name: str, fn: Callable, fold: int, held: Sequence[str],
             shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None, float] | None:
        """The saved prediction, its own counts (None where the method gave none) and the
        seconds it took; or None (none saved, or another's)."""
        path, key = self._path_key(name, fn, fold, held)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) != key or z["prediction"].shape != shape:
                    logger.info("%s: saved for other inputs; made again", path)
                    return None
                own = np.array(z["counts"], dtype=np.float64) if "counts" in z else None
                return (np.array(z["prediction"], dtype=np.float64), own,
                        float(z["seconds"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            logger.warning("%s cannot be read (%s); the fold is made again", path, err)
            return None

    def save(self, name: str, fn: Callable, fold: int, held: Sequence[str],
             prediction: tuple[np.ndarray, np.ndarray | None], seconds: float) -> None:
        path, key = self._path_key(name, fn, fold, held)
        values, own = prediction
        extra = {} if own is None else {"counts": own}
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, key=np.array(key), prediction=values, seconds=np.array(seconds),
                     **extra)


def cross_validate(
    st: ad.AnnData,
    sc: ad.AnnData,
    *,
    n_folds: int | None = None,
    seed: int = 0,
    methods: str | Sequence[str | Callable] | Mapping[str, Callable | str] = (
        "mean",
        "knn",
        "spage",
    ),
    st_layer: str | None = None,
    sc_layer: str | None = None,
    genes: Sequence[str] | None = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    clustering: bool = True,
    protocol: str = "project",
    checkpoint: str | os.PathLike | None = None,
) -> CrossValidationResult:
    """Leave-genes-out cross-validation of imputation methods.

    The genes shared by ``st`` and ``sc`` (in ``st``'s order) are split by scikit-learn
    ``KFold(n_splits=n_folds, shuffle=True, random_state=seed)``. For each fold, every method
    gets the ST cut to the other shared genes (raw counts; the held-out genes are absent) and
    the whole reference, and predicts the held-out genes. The ST is first cut to the shared
    genes, as the benchmark does; the reference keeps all its genes.

    ``protocol="li2022"`` scores as the published benchmark of Li et al. 2022 (Nature Methods)
    does, after its code (QuKunLab/SpatialBenchmarking: ``Benchmarking.py``, ``kfold``:
    ``KFold(n_splits=k)`` over the gene list, unshuffled; ``Benchmarking/GenesMetrics.py``,
    ``count.pearsonr``: per-gene ``scipy.stats.pearsonr`` of the imputed values against the
    ST's raw count file): 10 folds of contiguous genes in ``st``'s order (``seed`` then only
    seeds the methods), and the ``"counts"`` truth compared with each method's prediction on
    the counts scale: its own where it returns one (spalstf: its ``layers["counts"]``;
    ``"tangram"``: the mean profile of the reference cells it maps to the cell, at its depth), else
    its log-normalised prediction turned into counts, :func:`expected_counts`:
    ``expm1(prediction) * L / 1e4`` with ``L`` the cell's total over that fold's known genes,
    the count at the cell's own depth (every method here predicts on the log-normalised scale
    of ``spalstf.preprocess``). Raw counts
    carry each cell's depth, so much of a score on them is depth alone: the ``"libsize"``
    baseline, added to ``methods`` under this protocol when absent (the reference ``"mean"``
    scores the same there: a constant per gene times the depth). The ``"lognorm"`` truth is
    scored as in the project protocol, on the same folds.

    Parameters
    ----------
    st
        Spatial data, cells x genes, raw counts (in ``X`` or ``layers[st_layer]``).
    sc
        Reference, cells x genes, raw counts; ``obs["cell_type"]`` used by methods that want it.
    n_folds
        Number of gene folds; None: 5 under the project protocol, 10 under ``"li2022"``.
    seed
        ``random_state`` of the split, and the ``seed`` passed to each method.
    methods
        Names from :data:`spalstf.evaluate.baselines.BASELINES` (``"mean"``, ``"libsize"``,
        ``"knn"``, ``"spage"``, ``"ridge"``, ``"tangram"``, ``"tangram_cells"``, ``"gimvi"``,
        ``"spalstf"``), a comma-separated string of them, callables, or a mapping ``{name: name or callable}``. A callable has
        the signature ``method(st_known, sc, target_genes, *, seed) -> ndarray`` of
        :mod:`spalstf.evaluate.baselines`: ST cells x targets, log-normalised, non-negative;
        or a pair ``(prediction, counts)`` with its own counts-scale prediction (same shape),
        which ``"li2022"`` scores against the raw counts instead of :func:`expected_counts`.
    st_layer, sc_layer
        Layers holding the counts; None for ``X``.
    genes
        Restrict the evaluation to these shared genes (ST order kept).
    method_options
        Keyword arguments per method name, e.g. ``{"knn": {"k": 20}, "spalstf": {"epochs": 5}}``.
    clustering
        Also compare Leiden clusters of the truth and of each assembled prediction
        (:func:`spalstf.metrics.clustering_scores`, with scanpy).
    protocol
        ``"project"`` (the default: shuffled folds, predictions scored as returned) or
        ``"li2022"`` (Li et al. 2022's unshuffled folds, predictions scored against raw counts
        on the counts scale), described above.
    checkpoint
        A folder (created) where each method's prediction of each fold is saved as soon as it is
        made; None (the default) saves nothing. Run again with the same folder, a
        cross-validation that was interrupted (or extended by further methods) loads the folds
        already made and makes only the others: for long runs, such as ``"tangram_cells"``'s
        minutes per fold. A saved fold is used only for the same data, seed, held-out genes,
        method name, function and options; otherwise it is made again and overwritten. The
        methods' code is not part of that match: use a new folder after changing it.

    Returns
    -------
    CrossValidationResult
        ``per_gene`` (truth, method, fold, gene, metrics), ``summary`` (per truth and method:
        medians, means, NaN counts, AS, clustering, wall time), ``predictions``, ``folds``,
        ``protocol``, (under ``"li2022"``) ``counts_predictions`` and (with a ``checkpoint``)
        ``resumed``. Inputs are not modified.
    """
    if not isinstance(st, ad.AnnData) or not isinstance(sc, ad.AnnData):
        raise TypeError(
            f"`st` and `sc` must be AnnData; received {type(st).__name__} and {type(sc).__name__}."
        )
    if protocol not in PROTOCOLS:
        raise ValueError(f"`protocol` must be one of {PROTOCOLS}; received {protocol!r}.")
    if n_folds is None:
        n_folds = DEFAULT_FOLDS[protocol]
    fns = _resolve_methods(methods, method_options)
    if protocol == "li2022" and "libsize" not in fns:
        # the reader of a raw-counts score needs to see how much of it is depth alone
        fns["libsize"] = BASELINES["libsize"]
    # Counts are checked up front: a NaN or a log-normalised matrix would otherwise give NaN
    # or meaningless scores, not an error.
    for data, layer, arg in ((st, st_layer, "st"), (sc, sc_layer, "sc")):
        _matrix(data, layer, arg)
        check_values(as_expression(data, layer=layer, arg=arg), log_normalized=False, arg=arg)
    sc_names = set(sc.var_names)
    shared = [g for g in st.var_names if g in sc_names]
    if genes is not None:
        wanted = set(genes)
        absent = [g for g in wanted if g not in set(shared)]
        if absent:
            raise ValueError(
                f"`genes`: {len(absent)} are not shared by `st` and `sc`, e.g. {absent[:5]}."
            )
        shared = [g for g in shared if g in wanted]
    if len(set(shared)) != len(shared):
        raise ValueError("`st` has duplicate gene names among the shared genes.")
    folds = gene_folds(shared, n_folds, seed, shuffle=protocol == "project")
    logger.info(
        "Cross-validation: %d shared genes, %d folds, methods %s", len(shared), n_folds, list(fns)
    )

    x = _matrix(st, st_layer, "st")[:, st.var_names.get_indexer(shared)]
    counts = x.toarray() if sp.issparse(x) else np.array(x, dtype=np.float64)
    counts = counts.astype(np.float64)
    st_cut = ad.AnnData(counts.astype(np.float32), obs=st.obs.copy())
    st_cut.var_names = shared
    for k in ("spatial",):
        if k in st.obsm:
            st_cut.obsm[k] = np.array(st.obsm[k])
    truths = {"lognorm": lognormalize(counts, counts.sum(axis=1)), "counts": counts}

    sc_x = _matrix(sc, sc_layer, "sc")
    sc_base = ad.AnnData(sc_x.copy() if sp.issparse(sc_x) else np.array(sc_x), obs=sc.obs.copy())
    sc_base.var_names = sc.var_names.copy()
    saved = (None if checkpoint is None else
             _FoldCheckpoint(checkpoint, _data_fingerprint(counts, st_cut, shared, sc_base), seed))

    rows: list[pd.DataFrame] = []
    preds: dict[str, pd.DataFrame] = {}
    times: dict[str, float] = {}
    li = protocol == "li2022"
    counts_preds: dict[str, pd.DataFrame] = {}
    resumed: dict[str, list[int]] = {}
    for name, fn in fns.items():
        full = np.full(counts.shape, np.nan)
        full_counts = np.full(counts.shape, np.nan)
        elapsed = 0.0
        for f, held in enumerate(folds):
            loaded = (None if saved is None
                      else saved.load(name, fn, f, held, (st.n_obs, len(held))))
            if loaded is not None:
                p, own_counts, seconds = loaded
                resumed.setdefault(name, []).append(f)
            else:
                p, own_counts, seconds = _predict_fold(
                    name, fn, f, st_cut=st_cut, sc_base=sc_base, shared=shared, held=held,
                    seed=seed)
                if saved is not None:
                    saved.save(name, fn, f, held, (p, own_counts), seconds)
            elapsed += seconds
            if (p < 0).any():
                warnings.warn(
                    f"Method {name!r} returned negative values on fold {f}; JS is NaN for "
                    "those genes.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            idx = [shared.index(g) for g in held]
            full[:, idx] = p
            scored = {"lognorm": p, "counts": p}
            if li:
                # the depth the methods' normalisation took out: the fold's known-gene total
                depth = np.delete(counts, idx, axis=1).sum(axis=1)
                scored["counts"] = (expected_counts(p, depth) if own_counts is None
                                    else own_counts)
                full_counts[:, idx] = scored["counts"]
            for tname, t in truths.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    s = _m.score_genes(t[:, idx], scored[tname], held).reset_index()
                s.insert(0, "fold", f)
                s.insert(0, "method", name)
                s.insert(0, "truth", tname)
                rows.append(s)
            logger.info("%s fold %d: %.2fs", name, f, elapsed)
        times[name] = elapsed
        preds[name] = pd.DataFrame(full.astype(np.float32), index=st.obs_names, columns=shared)
        if li:
            counts_preds[name] = pd.DataFrame(
                full_counts.astype(np.float32), index=st.obs_names, columns=shared
            )

    per_gene = pd.concat(rows, ignore_index=True)
    summary = _m.summarize(per_gene, by=["truth", "method"])
    as_col = pd.Series(np.nan, index=summary.index)
    for tname in TRUTHS:
        means = (
            per_gene[per_gene["truth"] == tname]
            .groupby("method", sort=False)[["pcc", "ssim", "rmse", "js"]]
            .mean()
        )
        a = _m.accuracy_score(means, nan_policy="worst")
        for meth, v in a.items():
            as_col[(tname, meth)] = v
    summary["AS"] = as_col
    if clustering:
        clus = {
            name: _m.clustering_scores(truths["lognorm"], pr.to_numpy(), seed=seed)
            for name, pr in preds.items()
        }
        for c in ("ari", "ami", "nmi", "homogeneity"):
            summary[c] = [clus[meth][c] for _, meth in summary.index]
    summary["wall_time_s"] = [times[meth] for _, meth in summary.index]
    return CrossValidationResult(
        per_gene=per_gene,
        summary=summary,
        predictions=preds,
        folds=folds,
        protocol=protocol,
        counts_predictions=counts_preds,
        resumed=resumed,
    )


def _predict_fold(name: str, fn: Callable[..., np.ndarray], fold: int, *, st_cut: ad.AnnData,
                  sc_base: ad.AnnData, shared: Sequence[str], held: Sequence[str], seed: int
                  ) -> tuple[np.ndarray, np.ndarray | None, float]:
    """One method's prediction of one fold's held-out genes, its own counts-scale prediction
    (None where it gives none), both checked, and the seconds it took; the method gets copies,
    so that nothing it does to them reaches the next fold."""
    held_set = set(held)
    known = [g for g in shared if g not in held_set]
    st_known = st_cut[:, known].copy()
    sc_in = sc_base.copy()
    t0 = time.perf_counter()
    out = fn(st_known, sc_in, list(held), seed=seed)
    seconds = time.perf_counter() - t0
    p, own_counts = out if isinstance(out, tuple) else (out, None)
    shape = (st_cut.n_obs, len(held))

    def checked(x: Any, what: str) -> np.ndarray:  # what: "" (the prediction) or "counts "
        x = x.toarray() if sp.issparse(x) else np.asarray(x, dtype=np.float64)
        if x.shape != shape:
            raise ValueError(f"Method {name!r} returned {what and what + 'of '}shape {x.shape} "
                             f"on fold {fold}; expected {shape} (ST cells x held-out genes).")
        if not np.isfinite(x).all():
            raise ValueError(f"Method {name!r} returned non-finite {what}values on fold {fold}.")
        return x.astype(np.float64, copy=False)

    return (checked(p, ""), None if own_counts is None else checked(own_counts, "counts "),
            seconds)
