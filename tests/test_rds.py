"""spalstf.io read_rds / write_rds: R .rds files <-> AnnData through the R package's converters
(needs R with the R package SpaLSTF, and rpy2<3.6)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

pytest.importorskip("rpy2", reason="rpy2 (spalstf[r]) not installed")
if shutil.which("R") is None:  # pragma: no cover
    pytest.skip("R is not installed", allow_module_level=True)

import anndata as ad  # noqa: E402

from spalstf.io._rds import read_rds, write_rds  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "visium_lymph"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/visium_lymph absent")


def _r(code: str):
    """Runs R code in the R that read_rds embeds."""
    from spalstf.io import _rds

    return _rds._r()["ro"].r(code)


def _r_has(pkg: str) -> bool:
    found = _r(f'isTRUE(suppressMessages(requireNamespace("{pkg}", quietly = TRUE)))')
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


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


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
    np.testing.assert_allclose(_dense(back.X), res[st.obs_names].X, rtol=1e-6)
    # the uncertainty is an assay of its own, aligned with the values (as Impute writes it)
    std = read_rds(out, assay="SpaLSTF.std", slot="data")
    assert list(std.var_names) == ["CD3E", "MY_GENE"]
    assert list(std.obs_names) == list(st.obs_names)
    np.testing.assert_allclose(_dense(std.X), res[st.obs_names].layers["std"], rtol=1e-6)
    counts = read_rds(out)  # the default assay is still the measured one
    assert counts.shape == st.shape
    assert _r(f'as.character(readRDS("{out}")[["SpaLSTF"]]@misc$spalstf$version)')[0] == "0.1.0"
    bad = res[:10].copy()
    with pytest.raises(ValueError, match="must be those of `base`"):
        write_rds(bad, tmp_path / "bad.rds", base=DATA / "seurat" / "st_seurat.rds")
    # R's warnings arrive as Python warnings: here, adding to an object that has the assays
    with pytest.warns(UserWarning, match='Assays "SpaLSTF" and "SpaLSTF.std" replaced'):
        write_rds(res, tmp_path / "again.rds", base=out)


@needs_data
def test_a_result_added_to_a_seurat_object_brings_what_impute_adds_in_r(tmp_path):
    """Interval, counts at depth, spot proportions and per-gene expected accuracy: the
    assays and feature meta data SpaLSTF::Impute() adds, in the object's cell order."""
    st = read_rds(DATA / "seurat" / "st_seurat.rds")
    rng = np.random.default_rng(1)
    cells = st.obs_names[::-1]
    genes = ["CD3E", "MY_GENE"]
    res = ad.AnnData(X=rng.random((st.n_obs, 2)), obs=pd.DataFrame(index=cells),
                     var=pd.DataFrame(index=genes))
    res.layers["std"] = res.X * 0.1
    res.layers["lower"] = res.X - 0.5
    res.layers["upper"] = res.X + 0.5
    depth = rng.integers(50, 500, st.n_obs).astype(float)
    res.layers["counts"] = np.expm1(res.X) * depth[:, None] / 1e4
    shares = rng.dirichlet(np.ones(3), st.n_obs)
    res.obsm["spalstf_proportions"] = pd.DataFrame(shares, index=cells, columns=["B", "T", "M"])
    res.uns["spalstf"] = {"version": "0.1.0", "gene_confidence": {
        "genes": genes, "reference_pcc": [0.7, 0.2], "expected_pcc": [0.55, 0.1],
        "expected_pcc_sd": [0.08, 0.08]}}
    out = write_rds(res, tmp_path / "full.rds", base=DATA / "seurat" / "st_seurat.rds")
    order = res[st.obs_names]
    for suffix, name in ((".lower", "lower"), (".upper", "upper")):
        back = read_rds(out, assay="SpaLSTF" + suffix, slot="data")
        assert list(back.obs_names) == list(st.obs_names)
        np.testing.assert_allclose(_dense(back.X), order.layers[name], rtol=1e-6)
    counts = read_rds(out, assay="SpaLSTF", slot="counts")
    np.testing.assert_allclose(_dense(counts.X), order.layers["counts"], rtol=1e-6)
    props = read_rds(out, assay="SpaLSTF.proportions", slot="data")
    assert list(props.var_names) == ["B", "T", "M"]
    np.testing.assert_allclose(_dense(props.X), shares[::-1], rtol=1e-6)
    meta = _r(f'readRDS("{out}")[["SpaLSTF"]]@meta.features$expected_pcc_sd')
    np.testing.assert_allclose(np.asarray(meta), [0.08, 0.08])
    expected = _r(f'readRDS("{out}")[["SpaLSTF"]]@meta.features$expected_pcc')
    np.testing.assert_allclose(np.asarray(expected), [0.55, 0.1])
    # another layer written as the values: its companions would not match it, none are added
    only = write_rds(res, tmp_path / "std_only.rds", base=DATA / "seurat" / "st_seurat.rds",
                     layer="std")
    assays = set(_r(f'SeuratObject::Assays(readRDS("{only}"))'))
    assert "SpaLSTF.lower" not in assays and "SpaLSTF.proportions" not in assays


def test_a_result_written_as_a_new_object_keeps_its_uncertainty_in_an_assay(tmp_path):
    res = ad.AnnData(X=np.array([[0.5, 1.0], [2.0, 0.0], [1.5, 0.25]], dtype=np.float32),
                     obs=pd.DataFrame(index=["a", "b", "c"]),
                     var=pd.DataFrame(index=["G_1", "G2"]))
    res.layers["std"] = res.X / 4
    res.uns["spalstf"] = {"version": "0.1.0"}
    out = write_rds(res, tmp_path / "res.rds")
    values = read_rds(out, slot="data")  # a result goes to the data slot of the assay "RNA"
    np.testing.assert_allclose(_dense(values.X), res.X)
    std = read_rds(out, assay="RNA.std", slot="data")
    assert list(std.var_names) == ["G_1", "G2"] and list(std.obs_names) == ["a", "b", "c"]
    np.testing.assert_allclose(_dense(std.X), res.layers["std"])


def test_reductions_data_layer_and_visium_images_go_both_ways(tmp_path):
    """What the R package's converters carry that a separate reader did not: reductions
    (obsm X_<name>), the data slot from a layer, Visium images and scale factors."""
    path = tmp_path / "visium.rds"
    _r(f"""
      suppressPackageStartupMessages(library(Seurat))
      m <- matrix(c(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11), 2,
                  dimnames = list(c("g1", "g2"), paste0("s", 1:6)))
      obj <- CreateSeuratObject(Matrix::Matrix(m, sparse = TRUE), assay = "Spatial")
      crd <- data.frame(tissue = rep(1L, 6), row = 1:6, col = 6:1,
                        imagerow = c(10, 20, 30, 40, 50, 60), imagecol = c(5, 15, 25, 35, 45, 55),
                        row.names = colnames(obj))
      obj[["slice1"]] <- methods::new(
        "VisiumV1", image = array(seq(0, 1, length.out = 60), c(4, 5, 3)),
        scale.factors = scalefactors(spot = 90, fiducial = 140, hires = 0.2, lowres = 0.05),
        coordinates = crd, spot.radius = 0.01, assay = "Spatial", key = "slice1_")
      pcs <- matrix(c(1:6 / 2, 6:1), 6, dimnames = list(colnames(obj), c("PC_1", "PC_2")))
      obj[["pca"]] <- CreateDimReducObject(embeddings = pcs, key = "PC_", assay = "Spatial")
      saveRDS(obj, "{path}")
    """)
    adata = read_rds(path)
    np.testing.assert_array_equal(adata.obsm["spatial"], [[5, 10], [15, 20], [25, 30],
                                                         [35, 40], [45, 50], [55, 60]])
    np.testing.assert_array_equal(adata.obsm["X_pca"], np.c_[np.arange(1, 7) / 2,
                                                            np.arange(6, 0, -1)])
    image = adata.uns["spatial"]["slice1"]["images"]["lowres"]
    np.testing.assert_allclose(image, np.linspace(0, 1, 60).reshape((4, 5, 3), order="F"))
    assert adata.uns["spatial"]["slice1"]["scalefactors"]["tissue_lowres_scalef"] == 0.05
    adata.layers["data"] = adata.X * 2.0
    out = write_rds(adata, tmp_path / "back.rds", assay="Spatial")
    back = read_rds(out)
    np.testing.assert_array_equal(back.obsm["spatial"], adata.obsm["spatial"])
    np.testing.assert_array_equal(back.obsm["X_pca"], adata.obsm["X_pca"])
    np.testing.assert_allclose(back.uns["spatial"]["slice1"]["images"]["lowres"], image)
    np.testing.assert_allclose(_dense(back.layers["data"]), _dense(adata.X) * 2.0)
    assert _r(f'class(readRDS("{out}")[["slice1"]])')[0] == "VisiumV1"


def test_read_single_cell_experiment(tmp_path):
    if not _r_has("SingleCellExperiment"):
        pytest.skip("R package SingleCellExperiment absent")
    path = tmp_path / "sce.rds"
    _r(f"""
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
