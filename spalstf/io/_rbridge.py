"""Helpers the SpaLSTF R package calls through reticulate, and spalstf.io through rpy2.

The one bridge between R objects and AnnData: the R package builds plain parts of Seurat and
SingleCellExperiment objects in pure R (r_wrapper/R/convert.R) and this module assembles the
AnnData (``anndata_from_parts``), or takes an AnnData apart for R (``anndata_parts``). The R
package imports this module from the spalstf it runs (``spalstf.io._rbridge``) and hands the
parts over through reticulate; ``spalstf.io.read_rds`` / ``write_rds`` (Python embedding R
through rpy2) call the same R functions and this same module, so both directions are written
once, and the Python package depends on no file of the R package.

R hands over plain parts (vectors, column encodings, the slots of a dgCMatrix) and gets plain
parts back, so that no conversion depends on reticulate's own handling of pandas, scipy.sparse
or missing values (reticulate 1.28 turns logical NA into True and cannot convert scipy sparse
matrices). Arrays that arrive from R are read-only views: everything is copied.

Matrices travel genes x cells (the R orientation) and are cells x genes in AnnData.
Column encoding (one dict per column):
  {"type": "categorical", "codes": int (-1 = NA), "categories": str, "ordered": bool}
  {"type": "numeric", "values": float (NaN = NA)}
  {"type": "integer" | "logical" | "character", "values": ..., "na": bool}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp


def _vec(x: Any, dtype: Any = None) -> np.ndarray:
    """A 1-d copy of ``x`` (reticulate passes length-one R vectors as scalars)."""
    if x is None:
        return np.asarray([], dtype=dtype if dtype is not None else object)
    if isinstance(x, (list, tuple)):
        arr = np.asarray(list(x), dtype=dtype)
    else:
        arr = np.array(x, dtype=dtype, copy=True)
    return np.atleast_1d(arr).reshape(-1).copy()


def _strs(x: Any) -> list[str]:
    return [str(v) for v in _vec(x, dtype=object)]


# ---------------------------------------------------------------------------------- matrices
def matrix_from_parts(parts: dict) -> np.ndarray | sp.csr_matrix:
    """Cells x genes matrix from the parts of an R genes x cells matrix."""
    n_genes, n_cells = (int(v) for v in _vec(parts["dim"]))
    if parts["kind"] == "dgCMatrix":
        data = _vec(parts["x"], dtype=np.float64)
        indices = _vec(parts["i"], dtype=np.int32)
        indptr = _vec(parts["p"], dtype=np.int32)
        gxc = sp.csc_matrix((data, indices, indptr), shape=(n_genes, n_cells))
        return gxc.T.tocsr()
    values = _vec(parts["values"], dtype=np.float64)
    # R stores column-major: element (g, c) at g + c * n_genes.
    return np.ascontiguousarray(values.reshape((n_cells, n_genes)))


def matrix_to_parts(x: Any, dtype: str = "float64") -> dict:
    """Parts of a genes x cells R matrix from a cells x genes matrix."""
    if sp.issparse(x):
        gxc = sp.csc_matrix(x.T)  # genes x cells, column = cell
        gxc.sum_duplicates()
        gxc.sort_indices()
        return {
            "kind": "dgCMatrix",
            "x": np.asarray(gxc.data, dtype=np.float64),
            "i": np.asarray(gxc.indices, dtype=np.int32),
            "p": np.asarray(gxc.indptr, dtype=np.int32),
            "dim": np.asarray(gxc.shape, dtype=np.int32),
        }
    arr = np.asarray(x, dtype=dtype)
    if arr.ndim != 2:
        raise ValueError(f"Expected a 2-d matrix, received an array of shape {arr.shape}.")
    return {
        "kind": "dense",
        # cells x genes, C order == genes x cells, column-major (R order)
        "values": np.ascontiguousarray(arr, dtype=np.float64).reshape(-1),
        "dim": np.asarray(arr.shape[::-1], dtype=np.int32),
    }


# ---------------------------------------------------------------------------------- data frames
def _column_from_encoding(enc: dict, n: int) -> Any:
    kind = enc["type"]
    if kind == "categorical":
        codes = _vec(enc["codes"], dtype=np.int64) if n else np.zeros(0, dtype=np.int64)
        cats = _strs(enc["categories"]) if enc["categories"] is not None else []
        return pd.Categorical.from_codes(codes, categories=cats, ordered=bool(enc["ordered"]))
    if kind == "numeric":
        return _vec(enc["values"], dtype=np.float64) if n else np.zeros(0)
    na = _vec(enc["na"], dtype=bool) if n else np.zeros(0, dtype=bool)
    if kind == "integer":
        vals = _vec(enc["values"], dtype=np.int64) if n else np.zeros(0, dtype=np.int64)
        if na.any():
            return pd.arrays.IntegerArray(np.where(na, 0, vals).astype(np.int32), na)
        return vals.astype(np.int32) if np.abs(vals).max(initial=0) < 2**31 else vals
    if kind == "logical":
        vals = _vec(enc["values"], dtype=bool) if n else np.zeros(0, dtype=bool)
        if na.any():
            return pd.arrays.BooleanArray(vals, na)
        return vals
    if kind == "character":
        vals = _strs(enc["values"]) if n else []
        return np.asarray([None if m else v for v, m in zip(vals, na, strict=False)], dtype=object)
    raise ValueError(f"Unknown column type {kind!r}.")


def frame_from_columns(index: Any, names: Any, columns: Any) -> pd.DataFrame:
    """A DataFrame indexed by ``index`` from encoded columns (see the module docstring)."""
    idx = pd.Index(_strs(index), dtype=object)
    names = _strs(names) if names is not None else []
    columns = list(columns) if columns is not None else []
    if isinstance(columns, dict):  # pragma: no cover - defensive
        columns = list(columns.values())
    data = {nm: _column_from_encoding(enc, len(idx)) for nm, enc in zip(names, columns, strict=False)}
    return pd.DataFrame(data, index=idx)


def _encode_column(col: pd.Series) -> dict:
    dtype = col.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return {
            "type": "categorical",
            "codes": np.asarray(col.cat.codes, dtype=np.int32),
            "categories": np.asarray([str(c) for c in dtype.categories], dtype=str),
            "ordered": bool(dtype.ordered),
        }
    na = np.asarray(col.isna(), dtype=bool)
    if pd.api.types.is_bool_dtype(dtype):
        vals = np.asarray(col.fillna(False), dtype=bool)
        return {"type": "logical", "values": vals, "na": na}
    if pd.api.types.is_integer_dtype(dtype):
        vals = np.asarray(col.fillna(0), dtype=np.int64)
        if np.abs(vals).max(initial=0) < 2**31 - 1:
            return {"type": "integer", "values": vals.astype(np.int32), "na": na}
        return {"type": "numeric", "values": np.where(na, np.nan, vals.astype(np.float64))}
    if pd.api.types.is_numeric_dtype(dtype):
        return {"type": "numeric", "values": np.asarray(col, dtype=np.float64)}
    vals = np.asarray(["" if m else str(v) for v, m in zip(col.tolist(), na, strict=False)], dtype=str)
    return {"type": "character", "values": vals, "na": na}


def frame_to_columns(df: pd.DataFrame) -> dict:
    """Encoded columns of ``df`` for R (names, index, columns)."""
    return {
        "index": np.asarray([str(i) for i in df.index], dtype=str),
        "names": np.asarray([str(c) for c in df.columns], dtype=str),
        "columns": [_encode_column(df[c]) for c in df.columns],
    }


# ---------------------------------------------------------------------------------- AnnData
#: ``uns`` entries the R converters read back (Visium images, the Seurat and SCE records).
R_UNS_KEYS = ("spatial", "seurat", "sce")


def anndata_from_parts(parts: dict):
    """An AnnData (cells x genes) from the parts of an R object (see R/convert.R).

    ``parts``: ``x`` (matrix parts), ``obs`` and ``var`` (frame parts: ``index``, ``names``,
    ``columns``), and optionally ``layers``, ``obsm``, ``uns``.
    """
    obs = frame_from_columns(parts["obs"]["index"], parts["obs"]["names"],
                             parts["obs"]["columns"])
    var = frame_from_columns(parts["var"]["index"], parts["var"]["names"],
                             parts["var"]["columns"])
    return make_anndata(parts["x"], obs, var, layers=parts.get("layers"),
                        obsm=parts.get("obsm"), uns=parts.get("uns"))


def make_anndata(
    x_parts: dict,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    layers: dict | None = None,
    obsm: dict | None = None,
    uns: dict | None = None,
):
    """An AnnData (cells x genes) from parts built by the R package."""
    import anndata as ad

    x = matrix_from_parts(x_parts)
    adata = ad.AnnData(X=x, obs=obs.copy(), var=var.copy())
    for name, parts in dict(layers or {}).items():
        adata.layers[str(name)] = matrix_from_parts(parts)
    for name, values in dict(obsm or {}).items():
        arr = np.array(values, dtype=np.float64, copy=True)
        if arr.ndim == 1:
            arr = arr.reshape(adata.n_obs, -1)
        adata.obsm[str(name)] = arr
    for key, value in dict(uns or {}).items():
        adata.uns[str(key)] = _copy_tree(value)
    return adata


def _copy_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _copy_tree(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.copy()
    return value


def anndata_parts(adata, x_dtype: str = "float64", layers: list | None = None,
                  x_layer: str | None = None) -> dict:
    """Everything the R converters need from an AnnData, as plain parts.

    ``layers``: the names of the layers to include (None: all); ``x_layer``: a layer that
    takes the place of ``X``.
    """
    names = list(adata.layers.keys()) if layers is None else [str(k) for k in layers]
    layers = {str(k): matrix_to_parts(adata.layers[k]) for k in names}
    x = adata.layers[x_layer] if x_layer is not None else adata.X
    obsm = {}
    for k, v in adata.obsm.items():
        arr = v.to_numpy() if isinstance(v, pd.DataFrame) else np.asarray(v)
        if arr.ndim == 2 and np.issubdtype(arr.dtype, np.number):
            obsm[str(k)] = np.asfortranarray(arr, dtype=np.float64)
    return {
        "x": matrix_to_parts(x, dtype=x_dtype) if x is not None else None,
        "obs": frame_to_columns(adata.obs),
        "var": frame_to_columns(adata.var),
        "layers": layers,
        "obsm": obsm,
        "uns_keys": [str(k) for k in adata.uns.keys()],
        "uns": {k: _copy_tree(adata.uns[k]) for k in R_UNS_KEYS if k in adata.uns},
    }


def read_h5ad(path: str):
    import anndata as ad

    return ad.read_h5ad(path)


def var_names(adata) -> np.ndarray:
    return np.asarray([str(v) for v in adata.var_names], dtype=str)


def plain(value: Any) -> Any:
    """JSON-like copy of ``value`` (numpy scalars and arrays to Python numbers and lists)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def result_layers(result, *, names=("std", "lower", "upper", "counts")) -> dict:
    """The matrices of an imputation result (AnnData from spalstf) beside its values, as parts
    for R: of the layers `names`, "std" and, where the learnt stack made them, "lower" and
    "upper" (the interval), and, with raw-counts input, "counts" (the values at each cell's
    depth), each None where absent; with the spot deconvolution, "proportions" (units x
    cells in R) and "proportion_units", their unit names."""
    layers = {name: matrix_to_parts(np.asarray(result.layers[name])) if name in result.layers
              else None for name in names}
    proportions = result.obsm.get("spalstf_proportions")
    if proportions is not None:
        units = [str(u) for u in getattr(proportions, "columns", range(proportions.shape[1]))]
        layers["proportions"] = matrix_to_parts(np.asarray(proportions))
        layers["proportion_units"] = np.asarray(units, dtype=str)
    return layers


def result_parts(result) -> dict:
    """Parts of an imputation result (AnnData from spalstf) for R: the values, the matrices
    of `result_layers` and the provenance (``uns["spalstf"]``)."""
    return {
        "obs_names": np.asarray([str(v) for v in result.obs_names], dtype=str),
        "var_names": np.asarray([str(v) for v in result.var_names], dtype=str),
        "x": matrix_to_parts(np.asarray(result.X)),
        **result_layers(result),
        "provenance": plain(result.uns.get("spalstf", {})),
    }
