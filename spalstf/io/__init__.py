"""Files: .h5ad read and written atomically, and R's .rds through rpy2 (optional extra `r`).

`read_rds` / `write_rds` import rpy2 only when called, so the package works without R; they
run the converters of the R package SpaLSTF (`r_wrapper/`) in R embedded through rpy2.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from spalstf._atomic import atomic_path
from spalstf.io._stream import H5adWriter, merge_h5ad


def write_h5ad(adata: Any, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write `adata` to `path` atomically: a temporary file beside it, then a rename.

    An interrupted write never leaves a half file under the final name.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True (--force) to replace it")
    with atomic_path(path, overwrite=overwrite) as tmp:  # checked again at the rename
        adata.write_h5ad(tmp)
    return path


def read(path: str | os.PathLike, **kwargs: Any) -> Any:
    """Read .h5ad (anndata) or .rds (through R) into an AnnData, by the file's suffix."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix == ".h5ad":
        import anndata

        try:
            return anndata.read_h5ad(path, **kwargs)
        except TypeError:
            raise  # a wrong keyword argument: the caller's error, not the file's
        except Exception as err:  # noqa: BLE001 - h5py and anndata raise many types here
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ValueError(f"cannot read {str(path)!r} as .h5ad ({type(err).__name__}: "
                             f"{first[:200]}); the file may be truncated or corrupted") from err
    if suffix == ".rds":
        return read_rds(path, **kwargs)
    raise ValueError(f"cannot read {str(path)!r}: expected a .h5ad or .rds file")


def read_rds(path: str | os.PathLike, **kwargs: Any) -> Any:
    """An AnnData from an .rds file (Seurat, SingleCellExperiment, matrix, RCTD objects).

    See `spalstf.io._rds.read_rds`; needs R with the R package SpaLSTF and
    `pip install 'spalstf[r]'`.
    """
    from spalstf.io._rds import read_rds as _read_rds

    return _read_rds(path, **kwargs)


def write_rds(adata: Any, path: str | os.PathLike, **kwargs: Any) -> Any:
    """Write an AnnData as a Seurat object (or add it as assays to `base=`); see `_rds`."""
    from spalstf.io._rds import write_rds as _write_rds

    return _write_rds(adata, path, **kwargs)


__all__ = ["H5adWriter", "merge_h5ad", "read", "read_rds", "write_h5ad", "write_rds"]
