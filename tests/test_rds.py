"""spalstf.io read_rds / write_rds: R .rds files <-> AnnData (needs R, rpy2<3.6, anndata2ri)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

pytest.importorskip("rpy2", reason="rpy2 (spalstf[r]) not installed")
pytest.importorskip("anndata2ri", reason="anndata2ri (spalstf[r]) not installed")
if shutil.which("R") is None:  # pragma: no cover
    pytest.skip("R is not installed", allow_module_level=True)

import anndata as ad  # noqa: E402

from spalstf.io._rds import read_rds, write_rds  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "visium_lymph"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/visium_lymph absent")


def _r_has(pkg: str) -> bool:
    from spalstf.io import _rds

    _rds._r()
    found = _rds._STATE["ro"].r(f'isTRUE(suppressMessages(requireNamespace("{pkg}", quietly = TRUE)))')
    return bool(found[0])


@needs_data
def test_read_seurat_fixtures():
    st = read_rds(DATA / "seurat" / "st_seurat.rds")
    assert st.shape == (1000, 2000)
    assert st.obs_names[0] == "CGAGGAGCTTCCATAT-1"
    assert list(st.obs.columns) == ["orig.ident", "nCount_Spatial", "nFeature_Spatial", "x", "y"]
    # coordinates: the FOV centroids, equal to the meta data columns here
    np.testing.assert_array_equal(st.obsm["spatial"], st.obs[["x", "y"]].to_numpy(float))
    # counts are counts: nCount_Spatial is the column sum
    np.testing.assert_allclose(np.asarray(st.X.sum(axis=1)).ravel(), st.obs["nCount_Spatial"])
    sc = read_rds(DATA / "seurat" / "sc_seurat.rds")
    assert sc.shape == (330, 10237)
    assert set(sc.obs["cell_type"]) >= {"B"}
    assert len(set(st.var_names) & set(sc.var_names)) == 558


@needs_data
def test_read_rctd_objects_and_matrices():
    ref = read_rds(DATA / "Reference" / "ref_downsampled.rds")
    assert ref.shape == (330, 10237)
    assert isinstance(ref.obs["cell_type"].dtype, pd.CategoricalDtype)
    assert ref.obs["cell_type"].cat.categories.size == 11
    # nUMI counts every gene of the original data, the matrix only the genes kept
    assert (ref.obs["nUMI"].to_numpy() >= np.asarray(ref.X.sum(axis=1)).ravel()).all()
    expr = read_rds(DATA / "SpatialRNA" / "expr.rds")  # a dgTMatrix, genes x spots
    assert expr.shape == (1000, 2000)
    st = read_rds(DATA / "seurat" / "st_seurat.rds")
    assert (expr[st.obs_names, st.var_names].X != st.X).nnz == 0
    with pytest.raises(ValueError, match="class data.frame"):
        read_rds(DATA / "SpatialRNA" / "coords.rds")


def _toy() -> ad.AnnData:
    x = sp.csr_matrix(np.array([[0, 1, 2, 0], [3, 0, 0, 4], [5, 6, 0, 7]], dtype=float))
    obs = pd.DataFrame(
        {"group": pd.Categorical(["a", None, "b"]), "flag": [True, False, True],
         "n": np.array([1, 2, 3], dtype=np.int32), "score": [0.5, np.nan, 2.0],
         "label": ["x", "y z", "w"]},
        index=["c1", "c_2", "c-3"],
    )
    var = pd.DataFrame({"kind": ["a", "b", "c", "d"]}, index=["GENE_1", "B", "C|x", "D-1"])
    adata = ad.AnnData(X=x, obs=obs, var=var)
    adata.obsm["spatial"] = np.array([[1.0, 2.0], [3.5, 4.0], [5.0, 6.25]])
    return adata


def test_write_read_round_trip_keeps_names_counts_meta_and_coordinates(tmp_path):
    adata = _toy()
    before = adata.copy()
    out = write_rds(adata, tmp_path / "toy.rds")
    assert out == tmp_path / "toy.rds"
    back = read_rds(out)
    assert list(back.var_names) == ["GENE_1", "B", "C|x", "D-1"]  # not Seurat's GENE-1
    assert list(back.obs_names) == ["c1", "c_2", "c-3"]
    np.testing.assert_array_equal(back.X.toarray(), adata.X.toarray())
    np.testing.assert_array_equal(back.obsm["spatial"], adata.obsm["spatial"])
    pd.testing.assert_series_equal(back.obs["group"], adata.obs["group"], check_categorical=False)
    assert back.obs["flag"].tolist() == [True, False, True]
    np.testing.assert_array_equal(back.obs["n"], [1, 2, 3])
    np.testing.assert_array_equal(back.obs["score"], [0.5, np.nan, 2.0])
    assert back.obs["label"].tolist() == ["x", "y z", "w"]
    assert back.var["kind"].tolist() == ["a", "b", "c", "d"]
    # input untouched
    np.testing.assert_array_equal(adata.X.toarray(), before.X.toarray())
    pd.testing.assert_frame_equal(adata.obs, before.obs)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_rds(adata, out)


@needs_data
def test_write_adds_imputed_assay_to_a_seurat_object(tmp_path):
    st = read_rds(DATA / "seurat" / "st_seurat.rds")
    rng = np.random.default_rng(0)
    cells = st.obs_names[::-1]  # another order: written in the object's order
    res = ad.AnnData(X=rng.random((st.n_obs, 2)).astype(np.float32),
                     obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=["CD3E", "MY_GENE"]))
    res.layers["std"] = res.X * 0.1
    res.uns["spalstf"] = {"version": "0.1.0"}
    out = write_rds(res, tmp_path / "st_imputed.rds", base=DATA / "seurat" / "st_seurat.rds")
    back = read_rds(out, assay="SpaLSTF", slot="data")
    assert list(back.var_names) == ["CD3E", "MY_GENE"]
    assert list(back.obs_names) == list(st.obs_names)
    np.testing.assert_allclose(back.X.toarray(), res[st.obs_names].X, rtol=1e-6)
    counts = read_rds(out)  # the default assay is still the measured one
    assert counts.shape == st.shape
    bad = res[:10].copy()
    with pytest.raises(ValueError, match="must be those of `base`"):
        write_rds(bad, tmp_path / "bad.rds", base=DATA / "seurat" / "st_seurat.rds")


def test_read_single_cell_experiment(tmp_path):
    if not _r_has("SingleCellExperiment"):
        pytest.skip("R package SingleCellExperiment absent")
    from spalstf.io import _rds

    path = tmp_path / "sce.rds"
    _rds._STATE["ro"].r(f"""
      suppressPackageStartupMessages(library(SingleCellExperiment))
      m <- matrix(c(0, 1, 2, 3, 4, 5), 2, dimnames = list(c("g_1", "g2"), c("a", "b", "c")))
      sce <- SingleCellExperiment(list(logcounts = log1p(m), counts = m),
                                  colData = DataFrame(type = c("x", "y", "x"),
                                                      row.names = c("a", "b", "c")))
      reducedDim(sce, "spatial") <- cbind(1:3, 4:6)
      saveRDS(sce, "{path}")
    """)
    adata = read_rds(path)
    assert list(adata.var_names) == ["g_1", "g2"]
    assert list(adata.obs_names) == ["a", "b", "c"]
    np.testing.assert_array_equal(np.asarray(adata.X), [[0, 1], [2, 3], [4, 5]])  # counts in X
    assert "logcounts" in adata.layers
    np.testing.assert_array_equal(adata.obsm["spatial"], [[1, 4], [2, 5], [3, 6]])
    assert adata.obs["type"].tolist() == ["x", "y", "x"]


def test_errors_name_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="`path`"):
        read_rds(tmp_path / "missing.rds")
    with pytest.raises(TypeError, match="`adata` must be an AnnData"):
        write_rds(np.zeros((2, 2)), tmp_path / "x.rds")
    with pytest.raises(ValueError, match="`slot` must be 'counts', 'data' or None"):
        write_rds(_toy(), tmp_path / "x.rds", slot="scale.data")
    if DATA.is_dir():
        with pytest.raises(ValueError, match="`assay` must be one of Spatial"):
            read_rds(DATA / "seurat" / "st_seurat.rds", assay="RNA")
