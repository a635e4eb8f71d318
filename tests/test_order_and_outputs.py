"""The same genes give the same imputation in any column order; `out` is refused before any
fitting; the result carries the coordinates it used in obsm["spatial"].

Order: the default predictors are invariant to the order of the ST's and the reference's
columns (the self-check's folds and the count-likelihood's halves are drawn from the genes, not
their positions). The diffusion network (not a default predictor) is not, by its architecture:
it groups the known genes into tokens by position, each token with a learnt position
embedding, so a permutation of the known genes changes which genes share a token.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless tests; the library itself never sets the backend

import anndata as ad  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import FAST  # noqa: E402

import spalstf  # noqa: E402
from spalstf import _validate  # noqa: E402
from spalstf.combine import expected  # noqa: E402
from spalstf.config import DEFAULT_PREDICTORS  # noqa: E402
from spalstf.model import core  # noqa: E402
from spalstf.prior.likelihood import CountLikelihood  # noqa: E402

#: FAST's training settings with the default predictors (FAST adds the network, which is
#: order-dependent by its architecture: see the module's docstring).
DEFAULT = {**FAST, "predictors": DEFAULT_PREDICTORS}


def _permuted(adata: ad.AnnData, seed: int) -> ad.AnnData:
    return adata[:, np.random.default_rng(seed).permutation(adata.n_vars)].copy()


# --- order of the columns -----------------------------------------------------------------

def test_self_check_folds_are_the_same_in_any_gene_order():
    genes = [f"g{i:02d}" for i in range(23)]
    folds = expected.inner_folds(genes, 3, seed=0)
    assert sorted(g for fold in folds for g in fold) == genes  # each gene in one fold
    for seed in range(4):
        shuffled = list(np.random.default_rng(seed).permutation(genes))
        assert expected.inner_folds(shuffled, 3, seed=0) == folds
    assert expected.inner_folds(genes, 3, seed=1) != folds  # still drawn by the seed


def test_likelihood_depth_is_the_same_in_any_gene_order():
    """The depth is chosen by predicting one half of the known genes from the other: the
    halves must be the same genes whatever their columns."""
    rng = np.random.default_rng(0)
    n_clusters, n_genes, n_cells = 8, 14, 300
    shares = rng.dirichlet(np.full(n_genes, 0.5), n_clusters)
    sizes = rng.integers(5, 40, n_clusters).astype(np.float64)
    known_means = np.log1p(shares * 1e4).astype(np.float32)
    targets = rng.normal(size=(n_clusters, 3)).astype(np.float32)
    members = rng.integers(0, n_clusters, n_cells)
    counts = np.stack([rng.multinomial(rng.integers(20, 80), shares[k]) for k in members])
    total = np.maximum(counts.sum(axis=1, keepdims=True), 1)
    values = np.log1p(counts / total * 1e4).astype(np.float32)

    def fitted(order):
        predictor = CountLikelihood(profile_shares=shares[:, order],
                                    known_means=known_means[:, order], targets=targets,
                                    sizes=sizes)
        predictor.prepare(lambda: [values[:, order]])
        return predictor.depth, predictor.predict(values[:, order])

    depth, predicted = fitted(np.arange(n_genes))
    for seed in range(6):
        order = np.random.default_rng(seed).permutation(n_genes)
        other_depth, other = fitted(order)
        assert other_depth == depth
        np.testing.assert_allclose(other, predicted, atol=1e-5)


@pytest.mark.parametrize("permute", ["st", "both"])
def test_impute_is_the_same_in_any_column_order(tiny_pair, permute):
    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)
    expected = spalstf.impute(st, sc, genes, seed=0, **DEFAULT)
    st_in = _permuted(st, 1) if permute in ("st", "both") else st
    sc_in = _permuted(sc, 2) if permute in ("sc", "both") else sc
    got = spalstf.impute(st_in, sc_in, genes, seed=0, **DEFAULT)
    assert list(got.var_names) == genes == list(expected.var_names)
    # the same folds and weights, so the same values (float round-off of summing the known
    # genes in another order aside)
    mine, theirs = got.uns["spalstf"]["self_check"], expected.uns["spalstf"]["self_check"]
    assert list(mine["genes"]) == list(theirs["genes"])
    assert list(mine["fold"]) == list(theirs["fold"])
    assert mine["weights"].keys() == theirs["weights"].keys()
    for column, weight in theirs["weights"].items():
        assert mine["weights"][column] == pytest.approx(weight, abs=1e-5)
    np.testing.assert_allclose(got.X, expected.X, atol=1e-5)
    for layer in expected.layers:
        np.testing.assert_allclose(got.layers[layer], expected.layers[layer], atol=1e-5)


def test_default_genes_keep_their_order_when_the_st_columns_move(tiny_pair):
    st, sc = tiny_pair
    expected = spalstf.impute(st, sc, seed=0, **DEFAULT)
    got = spalstf.impute(_permuted(st, 3), sc, seed=0, **DEFAULT)
    assert list(got.var_names) == list(expected.var_names)
    np.testing.assert_allclose(got.X, expected.X, atol=1e-5)


# --- `out` is checked before any fitting ----------------------------------------------------

@pytest.fixture
def no_fit(monkeypatch):
    """spalstf.impute's fits (the main one and the self-check's) replaced by a recorder that
    fails: a refused `out` must be refused before any of them."""
    calls = []

    def fit(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a fit ran before `out` was checked")

    monkeypatch.setattr(core, "fit_model", fit)
    return calls


def test_existing_out_is_refused_before_fitting(tiny_pair, tmp_path, no_fit):
    st, sc = tiny_pair
    existing = tmp_path / "result.h5ad"
    existing.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match=r"`out`.*result\.h5ad.*overwrite=True"):
        spalstf.impute(st, sc, seed=0, out=existing, **DEFAULT)
    assert no_fit == []
    assert existing.read_bytes() == b"keep me"


@pytest.mark.parametrize("name, error, message", [
    ("x.csv", ValueError, r"`out` must be an \.h5ad file.*x\.csv"),
    ("x", ValueError, r"`out` must be an \.h5ad file"),
    ("folder.h5ad", IsADirectoryError, r"`out` must be a file.*folder\.h5ad.*is a folder"),
    ("a_file/x.h5ad", NotADirectoryError, r"`out`.*a_file.*is a file, not a folder"),
])
def test_bad_out_is_refused_before_fitting(tiny_pair, tmp_path, no_fit, name, error,
                                           message):
    st, sc = tiny_pair
    (tmp_path / "folder.h5ad").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(error, match=message):
        spalstf.impute(st, sc, seed=0, out=tmp_path / name, overwrite=True, **DEFAULT)
    assert no_fit == []


def test_out_in_an_unwritable_folder_is_refused_before_fitting(tiny_pair, tmp_path,
                                                                monkeypatch, no_fit):
    st, sc = tiny_pair
    # os.access says what the user may write; simulated, since tests may run as root
    monkeypatch.setattr(_validate.os, "access", lambda path, mode: False)
    with pytest.raises(PermissionError, match=r"`out`.*is not writable"):
        spalstf.impute(st, sc, seed=0, out=tmp_path / "new" / "x.h5ad", **DEFAULT)
    assert no_fit == []


def test_out_of_a_wrong_type_and_a_bad_overwrite_are_refused_before_fitting(tiny_pair, no_fit):
    st, sc = tiny_pair
    with pytest.raises(TypeError, match=r"`out` must be the path of an \.h5ad file.*int"):
        spalstf.impute(st, sc, seed=0, out=3, **DEFAULT)
    with pytest.raises((TypeError, ValueError), match="overwrite"):
        spalstf.impute(st, sc, seed=0, out="x.h5ad", overwrite="yes", **DEFAULT)
    assert no_fit == []


# --- the coordinates used are in obsm["spatial"] -----------------------------------------

@pytest.fixture
def st_with_obs_xy(tiny_pair):
    """The tiny ST with its coordinates as obs columns x/y and no obsm["spatial"]."""
    st, _ = tiny_pair
    st = st.copy()
    xy = np.asarray(st.obsm.pop("spatial"), np.float64)
    st.obs["x"], st.obs["y"] = xy[:, 0], xy[:, 1]
    return st, xy


def _plots(result, gene):
    import scanpy

    scanpy.pl.embedding(result, basis="spatial", color=gene, show=False)
    spalstf.pl.spatial(result, [gene])
    plt.close("all")


def test_obs_coordinates_reach_obsm_spatial(tiny_pair, st_with_obs_xy):
    _, sc = tiny_pair
    st, xy = st_with_obs_xy
    out = spalstf.impute(st, sc, seed=0, **DEFAULT)
    assert "spatial" not in st.obsm  # the input is not modified
    np.testing.assert_array_equal(out.obsm["spatial"], xy)
    assert out.obsm["spatial"].shape == (st.n_obs, 2)
    _plots(out, out.var_names[0])


def test_obs_x_coord_y_coord_are_coordinates_too(tiny_pair, st_with_obs_xy):
    """osmFISH's h5ad files name their coordinates x_coord / y_coord."""
    _, sc = tiny_pair
    st, xy = st_with_obs_xy
    st = st.copy()
    st.obs = st.obs.rename(columns={"x": "x_coord", "y": "y_coord"})
    out = spalstf.impute(st, sc, seed=0, **DEFAULT)
    np.testing.assert_array_equal(out.obsm["spatial"], xy)


def test_spatial_argument_reaches_obsm_spatial(tiny_pair, st_with_obs_xy):
    _, sc = tiny_pair
    st, xy = st_with_obs_xy
    st = st.copy()
    del st.obs["x"], st.obs["y"]
    given = xy[:, ::-1] * 2.0
    out = spalstf.impute(st, sc, seed=0, spatial=given, **DEFAULT)
    np.testing.assert_array_equal(out.obsm["spatial"], given)
    _plots(out, out.var_names[0])
    # Model.impute too, and a shard keeps its own cells' coordinates
    model = spalstf.fit(sc, list(st.var_names), list(out.var_names), seed=0, **DEFAULT)
    part = model.impute(st, spatial=given, shard=(1, 2), progress=False)
    np.testing.assert_array_equal(part.obsm["spatial"], given[st.n_obs // 2:])
    # an input's own obsm["spatial"] is kept as it is, whatever `spatial` gives
    original, _ = tiny_pair
    kept = model.impute(original, spatial=given, progress=False)
    np.testing.assert_array_equal(kept.obsm["spatial"], original.obsm["spatial"])
    # no coordinates, or spatial=False (which turns the obs columns off): none are added
    assert "spatial" not in model.impute(st, progress=False).obsm
    with_xy, _ = st_with_obs_xy
    assert "spatial" not in model.impute(with_xy, spatial=False, progress=False).obsm


def test_streamed_result_has_obsm_spatial(tiny_pair, st_with_obs_xy, tmp_path):
    _, sc = tiny_pair
    st, xy = st_with_obs_xy
    genes = list(tiny_pair[0].obsm["truth"].columns)[:3]
    # the early check of `out` refuses nothing the writer accepts: folders that do not exist
    # yet are made, and an existing file is replaced with overwrite=True
    path = tmp_path / "new" / "deeper" / "out.h5ad"
    assert spalstf.impute(st, sc, genes, seed=0, out=path, **DEFAULT) == path
    np.testing.assert_array_equal(ad.read_h5ad(path).obsm["spatial"], xy)
    path.write_bytes(b"old")
    assert spalstf.impute(st, sc, genes, seed=0, out=path, overwrite=True, **DEFAULT) == path
    written = ad.read_h5ad(path)
    assert list(written.var_names) == genes
    np.testing.assert_array_equal(written.obsm["spatial"], xy)

