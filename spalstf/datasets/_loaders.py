"""Readers for the formats paired ST + scRNA-seq data come in, :func:`load` for the paired
sets of the shared data folder, and :func:`osmfish_example`, the one real pair shipped with
the package (``data/osmfish_example.npz``, MIT; see ``data/NOTICE``).

Every reader returns AnnData objects of raw counts (cells x genes, float32), with spatial
coordinates in ``obsm["spatial"]`` (ST) and cell types in ``obs["cell_type"]`` (reference)
where the files hold them.
"""

from __future__ import annotations

import logging
import os
import warnings
from importlib import resources
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "load",
    "read_li_format",
    "read_rctd_csv",
    "read_rctd_pair",
    "read_h5ad_pair",
    "default_data_dirs",
    "osmfish_example",
]

#: Paired data sets :func:`load` knows, with the sub-folder each lives in.
DATASETS: dict[str, str] = {
    "osmfish": "osmfish",
    "osmfish_li_format": "osmfish_li_format",
    "visium_brain": "visium_brain",
    "visium_lymph": "visium_lymph",
    "exseq_cortex": "exseq_cortex",
    "starmap_cortex": "starmap_cortex",
}

#: The pairs stored as ``spatial.h5ad`` + ``reference.h5ad`` (raw counts, cells x genes,
#: coordinates in the ST's ``obs["x_coord"]``, ``obs["y_coord"]``; no cell types).
_H5AD_PAIRS: tuple[str, ...] = ("exseq_cortex", "starmap_cortex")


def _check_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: expected a file at {str(path)!r}; it does not exist.")
    return path


def _counts_matrix(values: np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=np.float32)
    if np.isnan(x).any():
        raise ValueError("Count matrix holds NaN values; expected raw counts.")
    return x


def read_li_format(
    folder: str | os.PathLike,
    *,
    spatial: str = "Spatial_count.txt",
    reference: str = "scRNA_count.txt",
    locations: str = "Locations.txt",
) -> tuple[ad.AnnData, ad.AnnData]:
    """Read the text layout of the Li et al. 2022 benchmark.

    Parameters
    ----------
    folder
        Folder holding the three files.
    spatial
        Cells x genes, tab-separated, a header of gene names, no index column.
    reference
        Genes x cells, tab-separated, gene names in the first column, cell names in the header.
    locations
        Cells x 2 (``X``, ``Y`` header), in the order of ``spatial``; optional.

    Returns
    -------
    (st, sc)
        AnnData of raw counts; when ``locations`` exists, the coordinates in
        ``st.obsm["spatial"]`` and in ``st.obs["x_coord"]``, ``st.obs["y_coord"]``.
    """
    folder = Path(folder)
    st_df = pd.read_csv(_check_file(folder / spatial, "`spatial`"), sep="\t", header=0)
    st = ad.AnnData(_counts_matrix(st_df.to_numpy()))
    st.var_names = st_df.columns.astype(str)
    st.obs_names = [f"cell_{i}" for i in range(st.n_obs)]
    loc_path = folder / locations
    if loc_path.is_file():
        loc = pd.read_csv(loc_path, sep="\t", header=0)
        if len(loc) != st.n_obs:
            raise ValueError(
                f"{str(loc_path)!r} must have one row per ST cell. "
                f"Expected {st.n_obs}, received {len(loc)}."
            )
        st.obsm["spatial"] = loc.iloc[:, :2].to_numpy(dtype=np.float64)
        st.obs["x_coord"] = st.obsm["spatial"][:, 0]
        st.obs["y_coord"] = st.obsm["spatial"][:, 1]
    else:
        logger.info("No %s in %s: no spatial coordinates.", locations, folder)
    sc_df = pd.read_csv(_check_file(folder / reference, "`reference`"), sep="\t", index_col=0)
    sc = ad.AnnData(_counts_matrix(sc_df.to_numpy().T))
    sc.obs_names = sc_df.columns.astype(str)
    sc.var_names = sc_df.index.astype(str)
    sc.obs_names_make_unique()
    return st, sc


def read_rctd_csv(folder: str | os.PathLike) -> ad.AnnData:
    """Read one RCTD/spacexr CSV folder (a ``SpatialRNA`` or a ``Reference``).

    Parameters
    ----------
    folder
        Holds ``counts.csv`` (genes x cells, gene names in the first column, cell barcodes in
        the header) and optionally ``coords.csv`` (barcode, x, y), ``cell_types.csv``
        (barcode, type) and ``nUMI.csv`` (barcode, total UMI of the cell).

    Returns
    -------
    anndata.AnnData
        Raw counts, cells x genes (CSR, float32); ``obsm["spatial"]`` from ``coords.csv``,
        ``obs["cell_type"]`` (categorical) from ``cell_types.csv``, ``obs["nUMI"]`` from
        ``nUMI.csv`` (the total over all genes the experiment measured, which can exceed the
        sum over the genes in ``counts.csv``).
    """
    folder = Path(folder)
    counts = pd.read_csv(_check_file(folder / "counts.csv", "RCTD `counts.csv`"), index_col=0)
    adata = ad.AnnData(sp.csr_matrix(_counts_matrix(counts.to_numpy().T)))
    adata.obs_names = counts.columns.astype(str)
    adata.var_names = counts.index.astype(str)

    def _side(name: str) -> pd.DataFrame | None:
        p = folder / name
        if not p.is_file():
            return None
        df = pd.read_csv(p, index_col=0)
        df.index = df.index.astype(str)
        missing = adata.obs_names.difference(df.index)
        if len(missing):
            raise ValueError(
                f"{str(p)!r} lacks {len(missing)} cell(s) of counts.csv, e.g. {list(missing[:3])}."
            )
        return df.loc[adata.obs_names]

    coords = _side("coords.csv")
    if coords is not None:
        adata.obsm["spatial"] = coords.iloc[:, :2].to_numpy(dtype=np.float64)
    types = _side("cell_types.csv")
    if types is not None:
        adata.obs["cell_type"] = pd.Categorical(types.iloc[:, 0].astype(str))
    numi = _side("nUMI.csv")
    if numi is not None:
        adata.obs["nUMI"] = numi.iloc[:, 0].to_numpy(dtype=np.float64)
    return adata


def read_rctd_pair(folder: str | os.PathLike) -> tuple[ad.AnnData, ad.AnnData]:
    """Read an RCTD/spacexr pair: ``folder/SpatialRNA`` and ``folder/Reference`` CSV folders.

    Parameters
    ----------
    folder
        Parent of the two folders read by :func:`read_rctd_csv`.

    Returns
    -------
    (st, sc)
        AnnData of raw counts.
    """
    folder = Path(folder)
    return read_rctd_csv(folder / "SpatialRNA"), read_rctd_csv(folder / "Reference")


def read_h5ad_pair(
    st_path: str | os.PathLike,
    sc_path: str | os.PathLike,
    *,
    coords: tuple[str, str] = ("x_coord", "y_coord"),
    cell_type_key: str | None = None,
) -> tuple[ad.AnnData, ad.AnnData]:
    """Read an ST and a reference ``.h5ad`` file.

    Parameters
    ----------
    st_path, sc_path
        The two files.
    coords
        ``obs`` columns copied into ``st.obsm["spatial"]`` when ``obsm["spatial"]`` is absent.
    cell_type_key
        ``sc.obs`` column copied into ``sc.obs["cell_type"]`` when given.

    Returns
    -------
    (st, sc)
        AnnData as stored (expected raw counts in ``X``).
    """
    with warnings.catch_warnings():
        # files written by old anndata versions (the authors' demo data) warn on every element
        warnings.filterwarnings("ignore", message=".*without encoding metadata.*")
        st = ad.read_h5ad(_check_file(Path(st_path), "`st_path`"))
        sc = ad.read_h5ad(_check_file(Path(sc_path), "`sc_path`"))
    if "spatial" not in st.obsm and all(c in st.obs for c in coords):
        st.obsm["spatial"] = st.obs[list(coords)].to_numpy(dtype=np.float64)
    if cell_type_key is not None:
        if cell_type_key not in sc.obs:
            raise KeyError(
                f"`cell_type_key`={cell_type_key!r} is not a column of sc.obs "
                f"({list(sc.obs.columns)})."
            )
        sc.obs["cell_type"] = pd.Categorical(sc.obs[cell_type_key].astype(str))
    return st, sc


def default_data_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders :func:`load` searches, in order.

    ``data_dir`` when given (only it); otherwise ``$SPALSTF_DATA`` when set; then
    ``../shared/data`` relative to the working directory and to the project root.
    """
    if data_dir is not None:
        return [Path(data_dir)]
    dirs: list[Path] = []
    env = os.environ.get("SPALSTF_DATA")
    if env:
        dirs.append(Path(env))
    dirs.append(Path.cwd() / ".." / "shared" / "data")
    dirs.append(Path(__file__).resolve().parents[2] / ".." / "shared" / "data")
    out: list[Path] = []
    for d in dirs:
        if d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


#: The real pair shipped with the package (see data/NOTICE; rebuilt by
#: scripts/make_example_data.py from the osmfish_li_format folder).
EXAMPLE_FILE = "osmfish_example.npz"


def osmfish_example() -> tuple[ad.AnnData, ad.AnnData]:
    """The osmFISH example pair shipped with spalstf: real data, no download, no data folder.

    The ``osmfish_li_format`` pair (the test data of github sunericd/TISSUE, MIT licence; the
    package's ``datasets/data/NOTICE`` gives the source and licence): the osmFISH mouse
    somatosensory cortex (Codeluppi et al. 2018), 3405 cells x 33 genes with their positions,
    and 1000 SMART-seq reference cells x the same 33 genes. The values equal those
    :func:`read_li_format` reads from the original files (``load("osmfish_li_format")``).
    All 33 genes are measured on both sides, so imputation is checked by hiding some of
    them (``examples/osmfish.py``, :func:`spalstf.cross_validate`).

    Returns
    -------
    (st, sc)
        AnnData of raw counts (integer values, float32), cells x genes. ``st``: obs names
        ``cell_0`` ... ``cell_3404``, coordinates in ``obsm["spatial"]`` and in
        ``obs["x_coord"]``, ``obs["y_coord"]``. ``sc``: obs names the reference's cell names,
        no cell types. ``uns["dataset"]`` is ``"osmfish_example"`` on both.

    Examples
    --------
    >>> import spalstf
    >>> st, sc = spalstf.datasets.osmfish_example()  # 3405 x 33 and 1000 x 33
    >>> cv = spalstf.cross_validate(st, sc, n_folds=5, methods="mean,knn,spalstf")
    """
    source = resources.files("spalstf.datasets") / "data" / EXAMPLE_FILE
    with resources.as_file(source) as path, np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    st = ad.AnnData(arrays["st_counts"].astype(np.float32))
    st.var_names = arrays["st_genes"].astype(str)
    st.obs_names = [f"cell_{i}" for i in range(st.n_obs)]
    xy = arrays["st_xy"].astype(np.float64)
    st.obsm["spatial"] = xy
    st.obs["x_coord"] = xy[:, 0]
    st.obs["y_coord"] = xy[:, 1]
    sc = ad.AnnData(arrays["sc_counts"].astype(np.float32))
    sc.var_names = arrays["sc_genes"].astype(str)
    sc.obs_names = arrays["sc_cells"].astype(str)
    st.uns["dataset"] = sc.uns["dataset"] = "osmfish_example"
    return st, sc


def _load_visium_lymph(folder: Path) -> tuple[ad.AnnData, ad.AnnData]:
    """The Seurat v4 objects of ``seurat/`` (the same data as the RCTD objects beside them),
    read through R: counts in X, coordinates in obsm["spatial"], cell types of the reference
    in obs["cell_type"]."""
    try:
        from spalstf.io import read_rds
    except ImportError as err:
        raise ImportError(
            "load('visium_lymph') reads R .rds files and needs spalstf.io.read_rds (the R "
            f"bridge), which could not be imported: {err}"
        ) from err
    st = read_rds(_check_file(folder / "seurat" / "st_seurat.rds", "visium_lymph ST"))
    sc = read_rds(_check_file(folder / "seurat" / "sc_seurat.rds", "visium_lymph reference"))
    if "cell_type" not in sc.obs:
        for column in ("cell_types", "celltype", "CellType", "cell.type"):
            if column in sc.obs:
                sc.obs["cell_type"] = sc.obs[column]
                break
    return st, sc


def load(name: str, data_dir: str | os.PathLike | None = None) -> tuple[ad.AnnData, ad.AnnData]:
    """Load a paired real data set (ST, scRNA-seq reference) from a local data folder.

    ``"osmfish_li_format"`` loads without one too: when no folder searched holds it (and
    ``data_dir`` is None) it is read from the copy shipped with the package, the same values
    (:func:`osmfish_example`).

    Parameters
    ----------
    name
        One of ``"osmfish"`` (osmFISH cortex, 3405 x 33; reference 5613 x 33),
        ``"osmfish_li_format"`` (the same ST, 1000 reference cells), ``"visium_brain"``
        (Visium hippocampus, 313 spots x 276 genes; reference 510 x 307, 17 cell types) or
        ``"visium_lymph"`` (Visium lymph node; needs the R bridge ``spalstf.io.read_rds``),
        ``"exseq_cortex"`` (ExSeq visual cortex, 1154 cells x 42 genes; deep SMART-seq
        reference 14231 x 42) or ``"starmap_cortex"`` (STARmap cortex, 1380 cells x 141 genes;
        shallow 10x reference 7466 x 141). The last two carry no cell types.
        ``"osmfish_li_format"`` is also shipped with the package: see above.
    data_dir
        Folder that holds one sub-folder per data set. When None: ``$SPALSTF_DATA``, then
        ``../shared/data`` (from the working directory, then from the project root).

    Returns
    -------
    (st, sc)
        AnnData of raw counts, cells x genes; ``st.obsm["spatial"]`` and
        ``sc.obs["cell_type"]`` where the data set has them.

    Raises
    ------
    ValueError
        Unknown ``name``.
    FileNotFoundError
        The data set is in none of the folders searched (and is not the shipped one, or
        ``data_dir`` was given); the message lists them.
    """
    if name not in DATASETS:
        raise ValueError(f"`name` must be one of {sorted(DATASETS)}; received {name!r}.")
    searched = default_data_dirs(data_dir)
    folder = next((d / DATASETS[name] for d in searched if (d / DATASETS[name]).is_dir()), None)
    if folder is None and name == "osmfish_li_format" and data_dir is None:
        logger.info("Loading %s from the copy shipped with spalstf (%s)", name, EXAMPLE_FILE)
        st, sc = osmfish_example()
        st.uns["dataset"] = sc.uns["dataset"] = name
        return st, sc
    if folder is None:
        looked = ", ".join(repr(str(d / DATASETS[name])) for d in searched)
        shipped = {
            "osmfish": " A smaller osmFISH pair, the same ST with 1000 reference cells, ships "
                       "with spalstf: spalstf.datasets.osmfish_example().",
            "osmfish_li_format": " It ships with spalstf too: spalstf.datasets.osmfish_example(), "
                                 "or leave `data_dir` out.",
        }.get(name, "")
        raise FileNotFoundError(
            f"Data set {name!r} not found; looked in {looked}. Pass `data_dir` or set the "
            f"SPALSTF_DATA environment variable to the folder that holds it.{shipped}"
        )
    logger.info("Loading %s from %s", name, folder)
    if name == "osmfish":
        st, sc = read_h5ad_pair(
            folder / "dataset1_spatial_33.h5ad", folder / "dataset1_seq_33.h5ad"
        )
    elif name == "osmfish_li_format":
        st, sc = read_li_format(folder)
    elif name == "visium_brain":
        st, sc = read_rctd_pair(folder)
    elif name in _H5AD_PAIRS:
        st, sc = read_h5ad_pair(folder / "spatial.h5ad", folder / "reference.h5ad")
    else:
        st, sc = _load_visium_lymph(folder)
    st.uns["dataset"] = name
    sc.uns["dataset"] = name
    return st, sc
