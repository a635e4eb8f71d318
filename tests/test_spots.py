"""spalstf.datasets.pool_spots: cells summed into square spots, counts conserved, every cell in
one spot, the spot size asked for, the input untouched, and clear errors."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from spalstf.datasets import pool_spots


def grid_st(side=40, *, sparse=False, seed=0):
    """side x side cells on a unit grid (jittered), Poisson counts of 6 genes, a cell type."""
    rng = np.random.default_rng(seed)
    n = side * side
    xy = np.stack(np.meshgrid(np.arange(side), np.arange(side)), axis=-1).reshape(-1, 2)
    xy = xy + rng.uniform(-0.3, 0.3, xy.shape)
    counts = rng.poisson(3.0, (n, 6)).astype(np.float32)
    st = ad.AnnData(sp.csr_matrix(counts) if sparse else counts,
                    obs=pd.DataFrame({"cell_type": pd.Categorical(rng.choice(["a", "b"], n)),
                                      "n_genes": (counts > 0).sum(1)},
                                     index=[f"c{i}" for i in range(n)]),
                    var=pd.DataFrame(index=[f"g{j}" for j in range(6)]))
    st.obsm["spatial"] = xy
    st.uns["dataset"] = "grid"
    return st


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_counts_are_conserved_per_gene_and_the_format_kept(sparse):
    st = grid_st(sparse=sparse)
    spots = pool_spots(st, cells_per_spot=5)
    assert sp.issparse(spots.X) == sparse
    assert spots.X.dtype == st.X.dtype
    total = lambda x: np.asarray(x.sum(axis=0), dtype=np.float64).ravel()  # noqa: E731
    np.testing.assert_array_equal(total(spots.X), total(st.X))
    assert list(spots.var_names) == list(st.var_names)


def test_every_cell_lands_in_exactly_one_spot_and_the_spot_sums_its_cells():
    st = grid_st()
    spots = pool_spots(st, cells_per_spot=5)
    cell_spot = spots.uns["spots"]["cell_spot"]
    assert cell_spot.shape == (st.n_obs,)
    assert cell_spot.min() == 0 and cell_spot.max() == spots.n_obs - 1
    np.testing.assert_array_equal(np.bincount(cell_spot, minlength=spots.n_obs),
                                  spots.obs["n_cells"].to_numpy())
    assert spots.obs["n_cells"].sum() == st.n_obs and spots.obs["n_cells"].min() >= 1
    one = 7
    np.testing.assert_allclose(spots.X[one], st.X[cell_spot == one].sum(axis=0))
    np.testing.assert_allclose(spots.obsm["spatial"][one],
                               st.obsm["spatial"][cell_spot == one].mean(axis=0))
    # Spots are squares: the cells of one spot lie within one side of each other.
    side = spots.uns["spots"]["side"]
    for s in range(0, spots.n_obs, 17):
        xy = st.obsm["spatial"][cell_spot == s]
        assert np.ptp(xy, axis=0).max() <= side


@pytest.mark.parametrize("size", [5, 20])
def test_the_mean_number_of_cells_per_spot_is_near_the_request(size):
    st = grid_st(60)
    spots = pool_spots(st, cells_per_spot=size)
    mean = st.n_obs / spots.n_obs
    assert abs(mean / size - 1) < 0.15, mean
    assert spots.uns["spots"]["mean_cells_per_spot"] == pytest.approx(mean)
    assert spots.uns["dataset"] == f"grid_spots{size}"


def test_cell_types_become_proportions_and_other_cell_columns_are_dropped():
    st = grid_st()
    spots = pool_spots(st, cells_per_spot=5)
    shares = spots.obsm["cell_type_proportions"]
    assert list(shares.columns) == ["a", "b"] and list(shares.index) == list(spots.obs_names)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    cell_spot = spots.uns["spots"]["cell_spot"]
    in_first = st.obs["cell_type"].to_numpy()[cell_spot == 0]
    assert shares.iloc[0]["a"] == pytest.approx(np.mean(in_first == "a"))
    assert "cell_type" not in spots.obs and "n_genes" not in spots.obs


def test_coordinates_from_obs_columns_and_a_seed_that_moves_the_grid():
    st = grid_st()
    st.obs["x"], st.obs["y"] = st.obsm["spatial"][:, 0], st.obsm["spatial"][:, 1]
    del st.obsm["spatial"]
    a = pool_spots(st, cells_per_spot=5, seed=0)
    assert a.obsm["spatial"].shape == (a.n_obs, 2)
    again = pool_spots(st, cells_per_spot=5, seed=0)
    np.testing.assert_array_equal(a.uns["spots"]["cell_spot"], again.uns["spots"]["cell_spot"])
    other = pool_spots(st, cells_per_spot=5, seed=1)
    assert not np.array_equal(a.uns["spots"]["cell_spot"], other.uns["spots"]["cell_spot"])


def test_the_input_is_not_modified():
    st = grid_st(sparse=True)
    before = st.copy()
    pool_spots(st, cells_per_spot=5)
    assert (st.X != before.X).nnz == 0
    np.testing.assert_array_equal(st.obsm["spatial"], before.obsm["spatial"])
    pd.testing.assert_frame_equal(st.obs, before.obs)
    assert dict(st.uns) == dict(before.uns) and list(st.obsm) == list(before.obsm)


def test_errors_name_the_argument():
    st = grid_st(10)
    for bad in (0, 0.5, -3, float("nan"), "5", True):
        with pytest.raises(ValueError, match="`cells_per_spot`"):
            pool_spots(st, cells_per_spot=bad)
    bare = st.copy()
    del bare.obsm["spatial"]
    with pytest.raises(ValueError, match="`st` has no coordinates"):
        pool_spots(bare)
    for values, what in ((np.log1p(st.X), "non-integer"), (st.X - 5, "negative")):
        odd = st.copy()
        odd.X = values
        with pytest.raises(ValueError, match=f"`st`: expected raw counts.*{what}"):
            pool_spots(odd)
    with pytest.raises(TypeError, match="`st` must be an AnnData"):
        pool_spots(st.X)


def test_one_spot_when_every_cell_fits_in_one():
    st = grid_st(3)
    spots = pool_spots(st, cells_per_spot=50)
    assert spots.n_obs == 1 and spots.obs["n_cells"].iloc[0] == st.n_obs


def test_the_spots_are_written_and_read_back_as_h5ad(tmp_path):
    spots = pool_spots(grid_st(sparse=True), cells_per_spot=5, seed=None)
    spots.write_h5ad(tmp_path / "spots.h5ad")
    back = ad.read_h5ad(tmp_path / "spots.h5ad")
    np.testing.assert_array_equal(back.uns["spots"]["cell_spot"], spots.uns["spots"]["cell_spot"])
    pd.testing.assert_frame_equal(back.obsm["cell_type_proportions"],
                                  spots.obsm["cell_type_proportions"])
