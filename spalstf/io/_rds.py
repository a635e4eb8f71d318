"""Read and write R's .rds files (Seurat, SingleCellExperiment, matrices, RCTD objects).

Needs R with the R package SpaLSTF of the same version as spalstf (``r_wrapper/`` of this
repository: ``bash scripts/r_setup.sh`` or ``R CMD INSTALL r_wrapper``), SeuratObject / Seurat
to read or write Seurat objects, SingleCellExperiment for those, and the optional extra
``spalstf[r]`` (``rpy2<3.6``). R runs embedded in this Python process through rpy2.

One bridge between R objects and AnnData: the R package's converters (``SeuratToAnnData``,
``AnnDataToSeurat``, ``SCEToAnnData``, and the assays ``Impute`` adds) take objects apart
into plain parts in pure R and assemble the AnnData with the Python helpers of
:mod:`spalstf.io._rbridge`. This module calls the same R functions (``SpaLSTF:::.rds_read`` /
``.rds_write``, in ``r_wrapper/R/rds.R``) through rpy2 and the same Python helpers, so an .rds
read here and a Seurat object converted in R give the same AnnData.
R never calls back into this Python (no reticulate), which a process embedding R through
rpy2 does not survive.

Conventions (those of the R package):
- AnnData is cells x genes; R matrices are genes x cells.
- Seurat (4.x) writes ``_`` (and ``|``) in feature names as ``-``; the original names live in
  the feature meta data column ``feature_name``, which :func:`read_rds` reads back and
  :func:`write_rds` writes.
- Spatial coordinates are ``obsm["spatial"]`` (x, y): FOV centroids, Visium full-resolution
  pixel coordinates (column, row, as scanpy; the image and scale factors in
  ``uns["spatial"]``), ``coords`` of an RCTD ``SpatialRNA``, or the meta data columns
  ``x``/``y``.
- An imputation's standard deviation is the assay ``"<assay>.std"`` beside the assay of the
  values (``"SpaLSTF.std"``), as ``SpaLSTF::Impute`` writes it.
"""

from __future__ import annotations

import atexit
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from spalstf._atomic import atomic_path
from spalstf._version import __version__
from spalstf.io import _rbridge

logger = logging.getLogger(__name__)

__all__ = ["read_rds", "write_rds"]

_INSTALL_HINT = (
    "Reading and writing .rds files needs R with the R package SpaLSTF (of this version of "
    "spalstf: `bash scripts/r_setup.sh .venv` in a clone of the repository, or "
    "`R CMD INSTALL r_wrapper`) and the optional Python package rpy2<3.6: "
    "pip install 'spalstf[r]' (and the R packages Matrix, reticulate, SeuratObject, Seurat, "
    "SingleCellExperiment; on Debian: apt-get install r-base-core r-cran-seurat "
    "r-cran-reticulate r-bioc-singlecellexperiment)."
)

_STATE: dict[str, Any] = {}


def _r() -> dict[str, Any]:
    """Start embedded R and load the R package SpaLSTF, once; returns the handles."""
    if "bridge" in _STATE:
        return _STATE
    try:
        import rpy2.rinterface as ri
        import rpy2.robjects as ro
    except Exception as err:  # ImportError, or R itself missing / not loadable
        raise ImportError(f"{_INSTALL_HINT} ({type(err).__name__}: {err})") from err
    # R packages that load reticulate (SpaLSTF, Seurat) make rpy2's atexit R shutdown abort
    # the process; R needs no orderly shutdown for what we do, so skip it.
    try:
        atexit.unregister(ri.endr)
    except Exception:  # pragma: no cover - older rpy2
        pass
    # rpy2 prints a warning when reticulate loads; reticulate >= 1.23 has the fix it warns
    # about, and the R package SpaLSTF needs reticulate >= 1.28.
    ro.r('setHook(packageEvent("reticulate", "onLoad"), NULL, "replace")')
    found = ro.r(
        'isTRUE(suppressPackageStartupMessages(requireNamespace("SpaLSTF", quietly = TRUE)))')
    if not bool(found[0]):
        raise ImportError(f"The R package SpaLSTF is not installed in R. {_INSTALL_HINT}")
    r_version = str(ro.r('as.character(utils::packageVersion("SpaLSTF"))')[0])
    ns = ro.r('asNamespace("SpaLSTF")')
    if r_version != __version__ or not all(
        bool(ro.r["exists"](name, envir=ns, inherits=False)[0])
        for name in (".rds_call", ".rds_read", ".rds_write")
    ):
        # The R functions change together with this module and its Python helpers
        # (spalstf.io._rbridge); another version could take the parts apart differently.
        raise ImportError(
            f"The R package SpaLSTF installed in R is version {r_version}, spalstf is "
            f"{__version__} (or the R package predates spalstf.io's use of it): install the R "
            f"package of this spalstf, e.g. `bash scripts/r_setup.sh .venv`. {_INSTALL_HINT}"
        )
    _STATE.update(ri=ri, ro=ro, call=ns[".rds_call"], read=ns[".rds_read"],
                  write=ns[".rds_write"], bridge=_rbridge)
    return _STATE


def _call(name: str, *args: Any, **kwargs: Any) -> Any:
    """``SpaLSTF:::.rds_<name>(...)`` in R: its value as plain Python; an R error is a
    ValueError with R's message, R warnings are Python warnings."""
    state = _r()
    out = _to_py(state["call"](state[name], *args, **kwargs))
    messages = out.get("warnings")
    if messages is None:
        messages = []
    for message in [messages] if isinstance(messages, str) else list(messages):
        warnings.warn(f"R: {message}", stacklevel=3)
    if out.get("error") is not None:
        raise ValueError(str(out["error"]))
    return out.get("value")


# --------------------------------------------------------------------- R <-> plain Python
# The plain values that reticulate would give the Python helpers: named lists as dicts,
# unnamed lists as lists, vectors of length one as scalars, longer vectors and arrays as numpy
# arrays (R's column-major order kept), NULL as None; and the same way back.
_NUMPY = {14: np.float64, 13: np.int32}  # REALSXP, INTSXP


def _to_py(x: Any) -> Any:
    ri = _STATE["ri"]
    kind = x.typeof
    if kind == ri.RTYPES.NILSXP:
        return None
    if kind == ri.RTYPES.VECSXP:
        items = [_to_py(v) for v in x]
        names = x.names
        if names is not ri.NULL and len(items) and all(names):
            return dict(zip((str(n) for n in names), items, strict=True))
        return items
    if kind in (ri.RTYPES.REALSXP, ri.RTYPES.INTSXP, ri.RTYPES.LGLSXP):
        arr = np.array(x.memoryview(), copy=True)  # keeps the dim (column-major strides)
        if kind == ri.RTYPES.LGLSXP:
            arr = arr.astype(bool)
        else:
            arr = arr.astype(_NUMPY[int(kind)], copy=False)
    elif kind == ri.RTYPES.STRSXP:
        arr = np.asarray([str(v) for v in x], dtype=object)
        try:
            arr = arr.reshape(tuple(x.do_slot("dim")), order="F")
        except LookupError:
            pass
    else:
        raise TypeError(f"Unexpected R value of type {kind} from the R package SpaLSTF")
    if arr.ndim == 1 and arr.size == 1:
        try:
            x.do_slot("dim")
        except LookupError:
            return arr[0].item() if kind != ri.RTYPES.STRSXP else str(arr[0])
    return arr


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (bool, int, float, str, np.generic))


def _to_r(v: Any) -> Any:
    ri = _STATE["ri"]
    if v is None:
        return ri.NULL
    if isinstance(v, dict):
        out = ri.ListSexpVector([_to_r(item) for item in v.values()])
        out.do_slot_assign("names", ri.StrSexpVector([str(k) for k in v]))
        return out
    if isinstance(v, (list, tuple)):
        # a list of scalars of one kind is an R vector (as reticulate makes it)
        kinds = {np.asarray(item).dtype.kind for item in v if _is_scalar(item)}
        if v and all(_is_scalar(item) for item in v) and (
                len(kinds) == 1 or kinds == {"i", "f"}):
            return _to_r(np.asarray(v))
        return ri.ListSexpVector([_to_r(item) for item in v])
    if _is_scalar(v):
        return _to_r(np.asarray([v]))
    arr = np.asarray(v)
    flat = arr.reshape(-1, order="F")
    if arr.dtype.kind == "b":
        out = ri.BoolSexpVector(flat.tolist())
    elif arr.dtype.kind in "iu" and (flat.size == 0 or np.abs(flat).max() < 2**31 - 1):
        out = ri.IntSexpVector.from_memoryview(memoryview(np.ascontiguousarray(flat, np.int32)))
    elif arr.dtype.kind in "iuf":
        out = ri.FloatSexpVector.from_memoryview(
            memoryview(np.ascontiguousarray(flat, np.float64)))
    else:
        out = ri.StrSexpVector([str(item) for item in flat.tolist()])
    if arr.ndim > 1:
        out.do_slot_assign("dim", ri.IntSexpVector(list(arr.shape)))
    return out


# --------------------------------------------------------------------- read / write
def read_rds(path: str | os.PathLike, *, assay: str | None = None,
             slot: str = "counts") -> Any:
    """Read an .rds file into an AnnData (cells x genes).

    Parameters
    ----------
    path
        An .rds file holding a Seurat (v4) object, a SingleCellExperiment, a matrix (dense,
        dgCMatrix, dgTMatrix; genes x cells), or an RCTD/spacexr ``Reference`` or
        ``SpatialRNA`` object (read without spacexr).
    assay
        Seurat: the assay to read (default: the default assay). SingleCellExperiment: the assay
        that becomes ``X`` (default ``"counts"``; the others become layers).
    slot
        Seurat: the slot that becomes ``X`` (``"counts"`` default, or ``"data"``).

    Returns
    -------
    AnnData
        What the R package's ``SeuratToAnnData`` / ``SCEToAnnData`` give: ``X`` the counts
        (float64; CSR for sparse input), ``obs`` the meta data (Seurat), colData (SCE), or
        ``cell_type``/``nUMI`` (RCTD), ``var`` the feature meta data, ``layers["data"]`` the
        Seurat ``data`` slot when it differs from the counts, ``obsm["spatial"]`` the
        coordinates (see the module docstring), ``obsm["X_<name>"]`` the reductions,
        ``uns["rds"]`` the file, class (and Seurat assay and slot). Gene names are the
        original names (Seurat's ``feature_name`` column where present).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`path` {str(path)!r} does not exist or is not a file")
    if slot not in ("counts", "data"):
        raise ValueError(f"`slot` must be 'counts' or 'data', received {slot!r}")
    if assay is not None and (not isinstance(assay, str) or not assay):
        raise ValueError(f"`assay` must be None or an assay name, received {assay!r}")
    state = _r()
    ri = state["ri"]
    res = _call("read", str(path), ri.NULL if assay is None else assay, slot)
    adata = state["bridge"].anndata_from_parts(res["parts"])
    adata.uns["rds"] = {"path": str(path), "class": res["kind"]}
    if res["kind"] == "Seurat":
        adata.uns["rds"].update(assay=res["assay"], slot=slot)
    return adata


def write_rds(adata: Any, path: str | os.PathLike, *, base: str | os.PathLike | None = None,
              assay: str = "RNA", new_assay: str = "SpaLSTF", layer: str | None = None,
              slot: str | None = None, overwrite: bool = False) -> Path:
    """Write an AnnData as a Seurat object (.rds), or add it as assays to a given one.

    Parameters
    ----------
    adata
        Cells x genes. An imputation result of :func:`spalstf.impute` (``uns["spalstf"]``)
        is written to the ``data`` slot, its ``layers["std"]`` to the assay ``"<assay>.std"``.
    path
        The .rds file to write.
    base
        An .rds holding a Seurat object with the same cells: the result is that object with
        the assays ``new_assay`` (``data`` = ``X``) and ``new_assay + ".std"`` (``data`` =
        ``layers["std"]``, when present) added, as ``SpaLSTF::Impute`` adds them in R (the
        same R code); assays of these names are replaced, with a warning. An imputation
        result brings, as there, its interval (assays ``".lower"`` and ``".upper"``), its
        ``layers["counts"]`` (the ``counts`` slot of ``new_assay``), its
        ``obsm["spalstf_proportions"]`` (assay ``".proportions"``, units x cells) and its
        genes' ``expected_pcc``, ``expected_pcc_sd`` and ``reference_pcc`` (feature meta
        data of ``new_assay``), where the run made them.
    assay
        Name of the assay of a new Seurat object.
    new_assay
        Name of the assay added to ``base``.
    layer
        Write this layer instead of ``X``.
    slot
        ``"counts"`` or ``"data"`` for a new object (default: ``"data"`` for imputation
        results, else ``"counts"``). With ``"counts"``, the layer ``"data"`` or
        ``"logcounts"``, when present, fills the ``data`` slot.
    overwrite
        Replace an existing file.

    Returns
    -------
    Path
        ``path``. What the R package's ``AnnDataToSeurat`` makes: gene names with ``_`` or
        ``|`` become ``-`` in Seurat, the original names kept in the assay's feature meta data
        column ``feature_name``; ``obs`` becomes the meta data, ``var`` the feature meta data,
        ``obsm["spatial"]`` an FOV named ``"fov"`` (a ``VisiumV1`` image with the Visium
        image and scale factors of ``uns["spatial"]``), other ``obsm`` entries reductions.
    """
    import anndata as ad

    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"`adata` must be an AnnData, received {type(adata).__name__}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"`path` {str(path)!r} exists; pass overwrite=True to replace it")
    if base is not None and not Path(base).is_file():
        raise FileNotFoundError(f"`base` {str(base)!r} does not exist or is not a file")
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"`layer` {layer!r} is not in adata.layers ({list(adata.layers)})")
    is_result = "spalstf" in adata.uns
    if slot is None:
        slot = "data" if is_result else "counts"
    if slot not in ("counts", "data"):
        raise ValueError(f"`slot` must be 'counts', 'data' or None, received {slot!r}")
    for name, value in (("assay", assay), ("new_assay", new_assay)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"`{name}` must be a non-empty string, received {value!r}")
    state = _r()
    ri = state["ri"]
    bridge = state["bridge"]
    # The data slot of a new object from counts: the layer the R converter reads there.
    data_layers = [k for k in ("data", "logcounts")
                   if k in adata.layers and layer is None and slot == "counts" and base is None]
    parts = bridge.anndata_parts(adata, layers=data_layers, x_layer=layer)
    std = None
    if "std" in adata.layers and layer is None and (slot == "data" or base is not None):
        std = bridge.matrix_to_parts(adata.layers["std"])
    provenance = bridge.plain(adata.uns["spalstf"]) if is_result and base is not None else None
    # Added to `base`, an imputation result brings what Impute() adds in R: its interval, its
    # values at each cell's depth and its spot proportions, where the run made them (the same
    # parts the R package receives); not when another layer stands in for the values.
    companions = {}
    if is_result and base is not None and layer is None:
        every = bridge.result_layers(adata, names=("lower", "upper", "counts"))
        companions = {name: _to_r(every.get(name))
                      for name in ("lower", "upper", "counts", "proportions")}
        companions["proportion.units"] = _to_r(every.get("proportion_units"))
    # saveRDS writes in place: write beside the target and rename, so that an interrupted
    # write never leaves a half .rds under the final name.
    with atomic_path(path, overwrite=overwrite) as tmp:
        _call("write", str(tmp), _to_r(parts), ri.NULL if base is None else str(base),
              assay, new_assay, slot, _to_r(std), _to_r(provenance), **companions)
    return path
