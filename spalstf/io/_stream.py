""".h5ad files written a block of cells at a time, and part files merged.

An imputation of millions of cells need not be held in memory: `H5adWriter` writes the
annotations (obs, var, obsm, uns) through anndata, then fills `X` and the layers with h5py
block by block, in anndata's on-disk format (dense arrays: ``encoding-type`` "array",
``encoding-version`` "0.2.0"). The file is written beside its destination and renamed at
`close`, so an interrupted run never leaves a half file under the final name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spalstf._atomic import move_into_place, user_mode

#: Target size of one HDF5 chunk (bytes) of X and the layers.
_CHUNK_BYTES = 1 << 20
#: Cells copied at once when merging part files.
_MERGE_BLOCK = 65536


class H5adWriter:
    """An .h5ad file whose dense X and layers are written block by block.

    Parameters
    ----------
    path
        Destination (.h5ad).
    annotations
        An AnnData without X (obs, var, obsm, uns: what is not written block by block); its
        shape is the shape of X.
    layers
        Names of the dense layers to create besides X.
    overwrite
        Replace an existing file at `close`. Without it, a file that appeared at `path` while
        this one was written is kept: `close` raises FileExistsError (and removes its own).

    Use as a context manager: ``with H5adWriter(...) as w: w.write(rows, x, {"std": s})``.
    """

    def __init__(self, path: str | os.PathLike, annotations: Any, *,
                 layers: Sequence[str] = (), overwrite: bool = False) -> None:
        import h5py

        self.path = Path(path)
        self.overwrite = overwrite
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{str(self.path)!r} exists; pass overwrite=True (--force) "
                                  "to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                   dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self.shape = annotations.shape
        try:
            annotations.write_h5ad(self.tmp)
            self.file = h5py.File(self.tmp, "r+")
            rows = int(max(1, min(self.shape[0], _CHUNK_BYTES // (4 * max(self.shape[1], 1)))))
            chunks = (rows, max(self.shape[1], 1)) if self.shape[0] and self.shape[1] else None

            def create(group: Any, name: str) -> Any:
                ds = group.create_dataset(name, shape=self.shape, dtype=np.float32,
                                          chunks=chunks)
                ds.attrs["encoding-type"] = "array"
                ds.attrs["encoding-version"] = "0.2.0"
                return ds

            self.X = create(self.file, "X")
            group = self.file.require_group("layers")
            self.layers = {name: create(group, name) for name in layers}
        except BaseException:
            self.abort()
            raise

    def write(self, rows: slice, x: np.ndarray, layers: dict[str, np.ndarray] | None = None
              ) -> None:
        """Write the cells `rows` of X and of the named layers."""
        self.X[rows] = np.asarray(x, dtype=np.float32)
        for name, values in (layers or {}).items():
            self.layers[name][rows] = np.asarray(values, dtype=np.float32)

    def write_uns(self, uns: dict) -> None:
        """Write these entries of the file's `uns` (provenance known only once the data are
        written), replacing those of the same name; the annotations' other entries stay."""
        from anndata.io import write_elem

        if "uns" not in self.file:
            write_elem(self.file, "uns", {})
        for key, value in uns.items():
            if key in self.file["uns"]:
                del self.file["uns"][key]
            write_elem(self.file["uns"], key, value)

    def close(self) -> Path:
        """Finish the file and move it to its destination."""
        self.file.close()
        with open(self.tmp, "rb+") as handle:  # on disk before the rename (see spalstf._atomic)
            os.fsync(handle.fileno())
        os.chmod(self.tmp, user_mode())  # mkstemp made it 0600
        try:  # a file that appeared meanwhile is replaced only with `overwrite`
            move_into_place(self.tmp, self.path, overwrite=self.overwrite)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Drop the temporary file."""
        file = getattr(self, "file", None)
        if file is not None and file.id.valid:
            file.close()
        if self.tmp.exists():
            self.tmp.unlink()

    def __enter__(self) -> H5adWriter:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def merge_h5ad(parts: Sequence[str | os.PathLike], path: str | os.PathLike, *,
               overwrite: bool = False) -> Path:
    """Join the part files of a sharded imputation (`spalstf impute --shard i/n`) into one.

    The parts must be the n shards of one run (each records its shard in
    ``uns["spalstf"]["shard"]``), given in any order; cells come back in the order of the input.
    X and the layers are copied a block of cells at a time.

    Parameters
    ----------
    parts
        The part files (.h5ad).
    path
        The merged file to write.
    overwrite
        Replace an existing file.

    Returns
    -------
    The path written.
    """
    import anndata
    import h5py
    import pandas as pd
    from anndata.io import read_elem

    if not parts:
        raise ValueError("no part files to merge")
    heads = []  # (shard index, shard count, annotations, open h5py file, path)
    try:
        for p in parts:
            if not Path(p).is_file():
                raise FileNotFoundError(f"no such file: {str(p)!r}")
            f = h5py.File(p, "r")
            heads.append([None, None, None, f, Path(p)])
            uns = read_elem(f["uns"]) if "uns" in f else {}
            shard = uns.get("spalstf", {}).get("shard")
            if shard is None or "X" not in f:
                raise ValueError(f"{str(p)!r} is not the part of a sharded spalstf imputation "
                                 "(no uns['spalstf']['shard'])")
            notes = {"uns": uns, "obs": read_elem(f["obs"]), "var": read_elem(f["var"]),
                     "obsm": read_elem(f["obsm"]) if "obsm" in f else {},
                     "layers": sorted(f["layers"].keys()) if "layers" in f else []}
            heads[-1][:3] = [int(shard["index"]), int(shard["count"]), notes]
        heads.sort(key=lambda h: h[0])
        count = heads[0][1]
        indices = [h[0] for h in heads]
        if any(h[1] != count for h in heads) or indices != list(range(count)):
            raise ValueError(f"the parts are shards {indices} of {sorted({h[1] for h in heads})}"
                             f"; expected each of the shards 0 to {count - 1} once")
        first = heads[0][2]
        var_names = list(first["var"].index)
        layers = first["layers"]
        for _, _, notes, _, p in heads[1:]:
            if list(notes["var"].index) != var_names or notes["layers"] != layers:
                raise ValueError(f"{str(p)!r} has other genes or layers than "
                                 f"{str(heads[0][4])!r}; the parts come from different runs")
        obs = pd.concat([h[2]["obs"] for h in heads])
        obsm = {k: _concat([h[2]["obsm"][k] for h in heads]) for k in first["obsm"]}
        uns = dict(first["uns"])
        info = dict(uns["spalstf"])
        info.pop("shard", None)
        timings = dict(info.get("timings", {}))
        timings["impute_seconds"] = float(sum(
            h[2]["uns"]["spalstf"].get("timings", {}).get("impute_seconds", 0.0) for h in heads))
        info["timings"] = timings
        info["merged_shards"] = count
        uns["spalstf"] = info
        skeleton = anndata.AnnData(obs=obs, var=first["var"], obsm=obsm, uns=uns)
        with H5adWriter(path, skeleton, layers=layers, overwrite=overwrite) as writer:
            offset = 0
            for _, _, _, f, _ in heads:
                n = f["X"].shape[0]
                for s in range(0, n, _MERGE_BLOCK):
                    e = min(s + _MERGE_BLOCK, n)
                    writer.write(slice(offset + s, offset + e), f["X"][s:e],
                                 {k: f["layers"][k][s:e] for k in layers})
                offset += n
    finally:
        for h in heads:
            h[3].close()
    return Path(path)


def _concat(values: list[Any]) -> Any:
    import pandas as pd

    if isinstance(values[0], pd.DataFrame):
        return pd.concat(values)
    return np.concatenate([np.asarray(v) for v in values])
