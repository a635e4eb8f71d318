"""Read and write R's .rds files (Seurat, SingleCellExperiment, matrices, RCTD objects).

Needs R (with the Matrix package; SeuratObject / Seurat to read or write Seurat objects,
SingleCellExperiment for those) and the optional extra ``spalstf[r]`` (``rpy2<3.6`` and
``anndata2ri``). R runs embedded in this Python process through rpy2.

Conventions shared with the R package SpaLSTF (``r_wrapper/``):
- AnnData is cells x genes; R matrices are genes x cells.
- Seurat (4.x) writes ``_`` (and ``|``) in feature names as ``-``; the original names live in
  the feature meta data column ``feature_name``, which :func:`read_rds` reads back and
  :func:`write_rds` writes.
- Spatial coordinates are ``obsm["spatial"]`` (x, y): FOV centroids, Visium full-resolution
  pixel coordinates (column, row, as scanpy), ``coords`` of an RCTD ``SpatialRNA``, or the
  meta data columns ``x``/``y``.
"""

from __future__ import annotations

import atexit
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from spalstf._atomic import atomic_path

logger = logging.getLogger(__name__)

__all__ = ["read_rds", "write_rds"]

_INSTALL_HINT = (
    "Reading and writing .rds files needs R and the optional Python packages rpy2<3.6 and "
    "anndata2ri: pip install 'spalstf[r]' (and R with the packages Matrix, SeuratObject, "
    "Seurat, SingleCellExperiment; on Debian: apt-get install r-base-core r-cran-seurat "
    "r-bioc-singlecellexperiment)."
)

# R helpers, evaluated once in their own environment. Every function returns plain parts.
_R_CODE = r"""
local({
  coord_cols <- list(c("x", "y"), c("imagecol", "imagerow"), c("x_coord", "y_coord"),
                     c("X", "Y"), c("x_centroid", "y_centroid"))
  meta_coords <- function(md) {
    for (cc in coord_cols) {
      if (all(cc %in% colnames(md)) && all(vapply(md[cc], is.numeric, TRUE))) {
        return(as.matrix(md[, cc, drop = FALSE]))
      }
    }
    NULL
  }
  sparse_parts <- function(m) {
    m <- methods::as(methods::as(methods::as(m, "CsparseMatrix"), "generalMatrix"), "dMatrix")
    list(x = as.numeric(m@x), i = as.integer(m@i), p = as.integer(m@p),
         dim = as.integer(dim(m)), rownames = as.character(rownames(m)),
         colnames = as.character(colnames(m)))
  }
  plain_df <- function(df, n) {
    df <- as.data.frame(df, optional = TRUE, stringsAsFactors = FALSE)
    keep <- vapply(df, function(v) is.atomic(v) && is.null(dim(v)), TRUE)
    df <- df[, keep, drop = FALSE]
    for (nm in names(df)) if (is.logical(df[[nm]]) && anyNA(df[[nm]])) {
      df[[nm]] <- as.character(df[[nm]])  # keep NA through pandas2ri
    }
    rownames(df) <- NULL
    if (!ncol(df)) df <- data.frame(.dummy = integer(n))[, 0L, drop = FALSE]
    df
  }
  seurat_coords <- function(obj) {
    cells <- colnames(obj)
    out <- matrix(NA_real_, length(cells), 2L, dimnames = list(cells, NULL))
    found <- FALSE
    for (img in names(obj@images)) {
      im <- obj@images[[img]]
      if (methods::is(im, "VisiumV1")) {
        crd <- im@coordinates
        cc <- intersect(rownames(crd), cells)
        out[cc, ] <- cbind(as.numeric(crd[cc, "imagecol"]), as.numeric(crd[cc, "imagerow"]))
        found <- TRUE
      } else if (methods::is(im, "FOV")) {
        crd <- SeuratObject::GetTissueCoordinates(im, which = "centroids")
        cc <- intersect(as.character(crd$cell), cells)
        rownames(crd) <- as.character(crd$cell)
        out[cc, ] <- cbind(as.numeric(crd[cc, "x"]), as.numeric(crd[cc, "y"]))
        found <- TRUE
      }
    }
    if (!found) {
      m <- meta_coords(obj@meta.data)
      if (is.null(m)) return(NULL)
      out[] <- m
    }
    out
  }
  read <- function(path, assay, slot) {
    obj <- suppressMessages(suppressPackageStartupMessages(readRDS(path)))
    cls <- class(obj)
    is_a <- function(what) isTRUE(tryCatch(methods::is(obj, what), error = function(e) FALSE))
    at <- attributes(obj)
    rctd <- cls[1L] %in% c("Reference", "SpatialRNA") && !is.null(at$counts)
    if (!rctd && inherits(obj, "Seurat")) {
      suppressPackageStartupMessages(requireNamespace("SeuratObject"))
      if (is.null(assay)) assay <- SeuratObject::DefaultAssay(obj)
      if (!assay %in% names(obj@assays)) {
        stop(sprintf("`assay` must be one of %s, received: %s",
                     paste(names(obj@assays), collapse = ", "), assay))
      }
      a <- obj@assays[[assay]]
      m <- methods::slot(a, slot)
      genes <- rownames(a)
      mf <- a@meta.features
      if ("feature_name" %in% colnames(mf)) {
        orig <- as.character(mf[genes, "feature_name"])
        ok <- !is.na(orig) & nzchar(orig)
        genes[ok] <- orig[ok]
        mf <- mf[, setdiff(colnames(mf), "feature_name"), drop = FALSE]
      }
      parts <- sparse_parts(m)
      parts$rownames <- genes
      layers <- list()
      if (identical(slot, "counts")) {
        d <- a@data
        if (prod(dim(d)) > 0 && !identical(d, m)) layers$data <- sparse_parts(d)
      }
      return(list(kind = "Seurat", x = parts, obs = plain_df(obj@meta.data, ncol(obj)),
                  var = plain_df(mf, nrow(a)), spatial = seurat_coords(obj), layers = layers,
                  assay = assay))
    }
    if (!rctd && is_a("SingleCellExperiment")) {
      return(list(kind = "SingleCellExperiment", object = obj))
    }
    if (!rctd && (is_a("Matrix") || is.matrix(obj))) {
      return(list(kind = "matrix", x = sparse_parts(obj)))
    }
    if (rctd) {
      x <- sparse_parts(at$counts)
      n <- ncol(at$counts)
      obs <- data.frame(.dummy = integer(n))[, 0L, drop = FALSE]
      if (!is.null(at$nUMI)) obs$nUMI <- as.numeric(at$nUMI[colnames(at$counts)])
      if (!is.null(at$cell_types)) {
        ct <- at$cell_types
        obs$cell_type <- factor(as.character(ct[colnames(at$counts)]), levels = levels(ct))
      }
      spatial <- NULL
      if (!is.null(at$coords)) {
        crd <- as.data.frame(at$coords)
        spatial <- as.matrix(crd[colnames(at$counts), 1:2])
      }
      return(list(kind = class(obj)[1L], x = x, obs = obs, spatial = spatial))
    }
    stop(sprintf(paste0("%s holds an object of class %s; read_rds reads Seurat objects, ",
                        "SingleCellExperiment objects, matrices and RCTD Reference / ",
                        "SpatialRNA objects"), path, paste(cls, collapse = "/")))
  }
  safe_names <- function(x) {
    s <- gsub("[_|]", "-", x)
    if (anyDuplicated(s)) s <- make.unique(s)
    s
  }
  make_matrix <- function(kind, x, i, p, dims, genes, cells) {
    dn <- list(safe_names(genes), cells)
    if (identical(kind, "sparse")) {
      methods::new("dgCMatrix", i = i, p = p, x = x, Dim = dims, Dimnames = dn)
    } else {
      matrix(x, nrow = dims[1L], ncol = dims[2L], dimnames = dn)
    }
  }
  write <- function(path, base, mat, std, genes, cells, meta, var, spatial, slot, assay,
                    new_assay, project) {
    suppressPackageStartupMessages({
      requireNamespace("SeuratObject")
      requireNamespace("Seurat")
    })
    if (!is.null(base)) {
      obj <- suppressMessages(suppressPackageStartupMessages(readRDS(base)))
      if (!methods::is(obj, "Seurat")) {
        stop(sprintf("`base` (%s) must hold a Seurat object, it holds a %s", base,
                     paste(class(obj), collapse = "/")))
      }
      if (!setequal(colnames(obj), cells) || length(cells) != ncol(obj)) {
        stop(sprintf(paste0("the cells of `adata` (%d) must be those of `base` (%d); ",
                            "%d of them differ"), length(cells), ncol(obj),
                     length(union(setdiff(cells, colnames(obj)), setdiff(colnames(obj), cells)))))
      }
      ord <- match(colnames(obj), cells)
      mat <- mat[, ord, drop = FALSE]
      a <- SeuratObject::CreateAssayObject(data = mat)
      a@meta.features$feature_name <- genes
      if (!is.null(std)) SeuratObject::Misc(a, slot = "std") <- std[, ord, drop = FALSE]
      SeuratObject::Key(a) <- paste0(tolower(gsub("[^A-Za-z0-9]", "", new_assay)), "_")
      if (new_assay %in% names(obj@assays)) obj[[new_assay]] <- NULL
      obj[[new_assay]] <- a
      saveRDS(obj, path)
      return(invisible(path))
    }
    a <- if (identical(slot, "counts")) {
      SeuratObject::CreateAssayObject(counts = methods::as(mat, "CsparseMatrix"))
    } else {
      SeuratObject::CreateAssayObject(data = mat)
    }
    if (!is.null(std)) SeuratObject::Misc(a, slot = "std") <- std
    var <- if (ncol(var)) var else data.frame(row.names = seq_along(genes))
    rownames(var) <- rownames(a)
    var$feature_name <- genes
    a@meta.features <- var
    SeuratObject::Key(a) <- paste0(tolower(gsub("[^A-Za-z0-9]", "", assay)), "_")
    obj <- SeuratObject::CreateSeuratObject(a, assay = assay, project = project,
                                            names.delim = "\001")
    meta <- if (ncol(meta)) meta else data.frame(row.names = seq_along(cells))
    rownames(meta) <- cells
    extra <- setdiff(colnames(obj@meta.data), colnames(meta))
    obj@meta.data <- cbind(meta, obj@meta.data[cells, extra, drop = FALSE])
    if (!is.null(spatial)) {
      ok <- stats::complete.cases(spatial)
      df <- data.frame(x = spatial[ok, 1], y = spatial[ok, 2], cell = cells[ok])
      obj[["fov"]] <- SeuratObject::CreateFOV(df, type = "centroids", assay = assay,
                                              key = "fov_")
    }
    saveRDS(obj, path)
    invisible(path)
  }
  sce_reorder <- function(obj, assay) {
    an <- SummarizedExperiment::assayNames(obj)
    first <- if (!is.null(assay)) assay else if ("counts" %in% an) "counts" else an[1L]
    if (!first %in% an) {
      stop(sprintf("`assay` must be one of %s, received: %s", paste(an, collapse = ", "), first))
    }
    SummarizedExperiment::assays(obj) <- SummarizedExperiment::assays(obj)[c(first, setdiff(an, first))]
    obj
  }
  safe <- function(f) function(...) {
    tryCatch(suppressMessages(suppressPackageStartupMessages(f(...))),
             error = function(e) list(kind = "error", message = conditionMessage(e)))
  }
  list(read = safe(read), write = safe(write), sce_reorder = safe(sce_reorder),
       make_matrix = make_matrix)
})
"""

_STATE: dict[str, Any] = {}


def _r() -> Any:
    """Start embedded R once; returns the R helper functions."""
    if "helpers" in _STATE:
        return _STATE["helpers"]
    try:
        import rpy2.rinterface as ri
        import rpy2.robjects as ro
    except Exception as err:  # ImportError, or R itself missing / not loadable
        raise ImportError(f"{_INSTALL_HINT} ({type(err).__name__}: {err})") from err
    # R that calls back into Python (reticulate) makes rpy2's atexit R shutdown abort the
    # process; R needs no orderly shutdown for what we do, so skip it.
    try:
        atexit.unregister(ri.endr)
    except Exception:  # pragma: no cover - older rpy2
        pass
    # rpy2 prints a warning when reticulate loads (Seurat imports it); reticulate >= 1.23 has
    # the fix it warns about, and the R package SpaLSTF needs reticulate >= 1.28.
    ro.r('setHook(packageEvent("reticulate", "onLoad"), NULL, "replace")')
    ro.r("suppressPackageStartupMessages(requireNamespace('Matrix'))")
    _STATE["ro"] = ro
    _STATE["helpers"] = ro.r(_R_CODE)
    return _STATE["helpers"]


def _r_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from rpy2.rinterface_lib.embedded import RRuntimeError

    try:
        out = fn(*args, **kwargs)
    except RRuntimeError as err:
        msg = str(err).strip()
        for prefix in ("Error in (function (", "Error in "):
            if msg.startswith(prefix) and ":" in msg:
                msg = msg.split(":", 1)[1].strip()
        if msg.startswith("Error: "):
            msg = msg[len("Error: "):]
        raise ValueError(msg) from err
    names = getattr(out, "names", None)
    if names is not None and names is not _STATE["ro"].NULL and "kind" in list(names):
        kind = out.rx2("kind")
        if len(kind) and str(kind[0]) == "error":
            raise ValueError(str(out.rx2("message")[0]))
    return out


def _rget(lst: Any, name: str) -> Any:
    names = list(lst.names) if lst.names is not None else []
    if name not in names:
        return None
    value = lst[names.index(name)]
    ro = _STATE["ro"]
    return None if value is ro.NULL else value


def _sparse_from_parts(parts: Any) -> tuple[sp.csr_matrix, list[str], list[str]]:
    """Cells x genes CSR from the parts of an R genes x cells dgCMatrix."""
    x = np.array(_rget(parts, "x"), dtype=np.float64)
    i = np.array(_rget(parts, "i"), dtype=np.int32)
    p = np.array(_rget(parts, "p"), dtype=np.int32)
    n_genes, n_cells = (int(v) for v in _rget(parts, "dim"))
    genes = [str(g) for g in _rget(parts, "rownames")] if _rget(parts, "rownames") else [
        str(k) for k in range(n_genes)]
    cells = [str(c) for c in _rget(parts, "colnames")] if _rget(parts, "colnames") else [
        str(k) for k in range(n_cells)]
    gxc = sp.csc_matrix((x, i, p), shape=(n_genes, n_cells))
    return gxc.T.tocsr(), genes, cells


def _frame(df: Any, index: list[str]) -> pd.DataFrame:
    from rpy2.robjects import pandas2ri
    from rpy2.robjects.conversion import localconverter

    ro = _STATE["ro"]
    with localconverter(ro.default_converter + pandas2ri.converter):
        out = ro.conversion.rpy2py(df)
    out = pd.DataFrame(out).copy()
    out.index = pd.Index(index, dtype=object)
    for col in out.columns:
        if out[col].dtype == object:
            vals = out[col]
            if set(vals.dropna().unique()) <= {"TRUE", "FALSE"}:
                out[col] = pd.array([None if v is None or v is pd.NA or v == "NA" else v == "TRUE"
                                     for v in vals], dtype="boolean")
    return out


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
        ``X`` the counts (float64, CSR for sparse input), ``obs`` the meta data (Seurat), colData
        (SCE), or ``cell_type``/``nUMI`` (RCTD), ``var`` the feature meta data, ``layers["data"]``
        the Seurat ``data`` slot when it differs from the counts, ``obsm["spatial"]`` the
        coordinates (see the module docstring). Gene names are the original names
        (Seurat's ``feature_name`` column where present).
    """
    import anndata as ad

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`path` {str(path)!r} does not exist or is not a file")
    if slot not in ("counts", "data"):
        raise ValueError(f"`slot` must be 'counts' or 'data', received {slot!r}")
    helpers = _r()
    ro = _STATE["ro"]
    res = _r_call(helpers.rx2("read"), str(path), ro.NULL if assay is None else assay, slot)
    kind = str(_rget(res, "kind")[0])
    if kind == "SingleCellExperiment":
        import anndata2ri
        from rpy2.robjects.conversion import localconverter

        obj = _r_call(helpers.rx2("sce_reorder"), _rget(res, "object"),
                      ro.NULL if assay is None else assay)
        with localconverter(anndata2ri.converter):
            adata = ro.conversion.rpy2py(obj)
        adata = adata.copy()
        if not sp.issparse(adata.X) and adata.X is not None:
            adata.X = np.array(adata.X, dtype=np.float64)
        adata.obs_names = [str(c) for c in adata.obs_names]
        adata.var_names = [str(g) for g in adata.var_names]
        return adata
    x, genes, cells = _sparse_from_parts(_rget(res, "x"))
    obs = (_frame(_rget(res, "obs"), cells) if _rget(res, "obs") is not None
           else pd.DataFrame(index=pd.Index(cells, dtype=object)))
    var = (_frame(_rget(res, "var"), genes) if _rget(res, "var") is not None
           else pd.DataFrame(index=pd.Index(genes, dtype=object)))
    adata = ad.AnnData(X=x, obs=obs, var=var)
    layers = _rget(res, "layers")
    if layers is not None and len(layers):
        for name in layers.names:
            adata.layers[str(name)] = _sparse_from_parts(layers.rx2(name))[0]
    spatial = _rget(res, "spatial")
    if spatial is not None:
        arr = np.array(spatial, dtype=np.float64)
        if arr.ndim == 1:  # column-major R matrix delivered flat
            arr = arr.reshape((len(cells), 2), order="F")
        arr = np.ascontiguousarray(arr)
        adata.obsm["spatial"] = arr
    adata.uns["rds"] = {"path": str(path), "class": kind}
    if kind == "Seurat":
        adata.uns["rds"]["assay"] = str(_rget(res, "assay")[0])
        adata.uns["rds"]["slot"] = slot
    return adata


def write_rds(adata: Any, path: str | os.PathLike, *, base: str | os.PathLike | None = None,
              assay: str = "RNA", new_assay: str = "SpaLSTF", layer: str | None = None,
              slot: str | None = None, overwrite: bool = False) -> Path:
    """Write an AnnData as a Seurat object (.rds), or add it as an assay to a given one.

    Parameters
    ----------
    adata
        Cells x genes. An imputation result of :func:`spalstf.impute` (``uns["spalstf"]``)
        is written to the ``data`` slot, with ``layers["std"]`` in ``Misc(assay, "std")``.
    path
        The .rds file to write.
    base
        An .rds holding a Seurat object with the same cells: the result is that object with
        the assay ``new_assay`` added (``data`` = ``X``), as ``SpaLSTF::Impute`` does in R.
    assay
        Name of the assay of a new Seurat object.
    new_assay
        Name of the assay added to ``base``.
    layer
        Write this layer instead of ``X``.
    slot
        ``"counts"`` or ``"data"`` for a new object (default: ``"data"`` for imputation
        results, else ``"counts"``).
    overwrite
        Replace an existing file.

    Returns
    -------
    Path
        ``path``. Gene names with ``_`` or ``|`` become ``-`` in Seurat; the original names are
        kept in the assay's feature meta data column ``feature_name``. ``obs`` becomes the meta
        data, ``var`` the feature meta data, ``obsm["spatial"]`` an FOV named ``"fov"``.
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
    helpers = _r()
    ro = _STATE["ro"]
    x = adata.layers[layer] if layer is not None else adata.X
    genes = [str(g) for g in adata.var_names]
    cells = [str(c) for c in adata.obs_names]
    mat = _r_matrix(x, genes, cells, sparse=(slot == "counts" and base is None))
    std = None
    if "std" in adata.layers and layer is None and slot == "data":
        std = _r_matrix(adata.layers["std"], genes, cells, sparse=False)
    meta = _r_frame(adata.obs)
    var = _r_frame(adata.var)
    spatial = ro.NULL
    if "spatial" in adata.obsm:
        arr = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
        spatial = ro.r.matrix(ro.FloatVector(arr.ravel(order="F")), nrow=arr.shape[0])
    # saveRDS writes in place: write beside the target and rename, so that an interrupted
    # write never leaves a half .rds under the final name.
    with atomic_path(path) as tmp:
        _r_call(helpers.rx2("write"), str(tmp), ro.NULL if base is None else str(base), mat,
                ro.NULL if std is None else std, ro.StrVector(genes), ro.StrVector(cells), meta,
                var, spatial, slot, assay, new_assay, "SpaLSTF")
    return path


def _r_matrix(x: Any, genes: list[str], cells: list[str], *, sparse: bool) -> Any:
    """An R genes x cells matrix (dgCMatrix when `sparse`) from a cells x genes matrix."""
    ro = _STATE["ro"]
    make = _STATE["helpers"].rx2("make_matrix")
    dims = ro.IntVector([len(genes), len(cells)])
    if sparse:
        gxc = sp.csc_matrix(sp.csr_matrix(x).T) if not sp.issparse(x) else sp.csc_matrix(x.T)
        gxc.sum_duplicates()
        gxc.sort_indices()
        return make("sparse", ro.FloatVector(gxc.data.astype(np.float64)),
                    ro.IntVector(gxc.indices.astype(np.int32)),
                    ro.IntVector(gxc.indptr.astype(np.int32)), dims, ro.StrVector(genes),
                    ro.StrVector(cells))
    dense = x.toarray() if sp.issparse(x) else np.asarray(x)
    values = np.ascontiguousarray(dense, dtype=np.float64).ravel(order="C")
    return make("dense", ro.FloatVector(values), ro.NULL, ro.NULL, dims, ro.StrVector(genes),
                ro.StrVector(cells))


def _r_frame(df: pd.DataFrame) -> Any:
    """An R data.frame from a pandas DataFrame (row names dropped; R code sets them)."""
    from rpy2.robjects import pandas2ri
    from rpy2.robjects.conversion import localconverter

    ro = _STATE["ro"]
    plain = pd.DataFrame(index=range(len(df)))
    for col in df.columns:
        values = df[col]
        if isinstance(values.dtype, pd.CategoricalDtype):
            plain[str(col)] = pd.Categorical(values.astype(object).where(values.notna(), None),
                                             categories=[str(c) for c in values.cat.categories])
        elif pd.api.types.is_bool_dtype(values.dtype) and not values.isna().any():
            plain[str(col)] = values.to_numpy(dtype=bool)
        elif pd.api.types.is_numeric_dtype(values.dtype):
            plain[str(col)] = values.to_numpy(dtype=np.float64, na_value=np.nan) if \
                values.isna().any() or not pd.api.types.is_integer_dtype(values.dtype) else \
                values.to_numpy(dtype=np.int32)
        else:
            plain[str(col)] = [None if pd.isna(v) else str(v) for v in values]
    with localconverter(ro.default_converter + pandas2ri.converter):
        return ro.conversion.py2rpy(plain)
