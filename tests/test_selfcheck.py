"""The self-check (inner leave-genes-out over the ST's known genes) and the spatial context."""

import numpy as np
import pytest
from conftest import FAST

import spalstf
from spalstf import spatial
from spalstf.combine import expected as accuracy
from spalstf.combine import selfcheck
from spalstf.model import core
from spalstf.spatial import expression_smoothed_reader, neighbours


def test_spatial_neighbours_exclude_the_cell_and_do_not_depend_on_order():
    rng = np.random.default_rng(0)
    xy = rng.uniform(size=(200, 2))
    nb = neighbours(xy, 6)
    assert nb.shape == (200, 6)
    assert not (nb == np.arange(200)[:, None]).any()
    # the 6 returned are the 6 nearest others
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_array_equal(np.sort(nb, 1), np.sort(np.argsort(d, 1)[:, :6], 1))
    perm = rng.permutation(200)
    nb_perm = neighbours(xy[perm], 6)
    # the neighbours of cell perm[i] in the permuted data are the same cells
    np.testing.assert_array_equal(np.sort(perm[nb_perm], 1), np.sort(nb[perm], 1))


def test_duplicated_positions_still_exclude_the_cell_itself():
    xy = np.zeros((5, 2))
    nb = neighbours(xy, 3)
    assert nb.shape == (5, 3) and not (nb == np.arange(5)[:, None]).any()


def test_the_spatial_context_acts_only_where_the_st_has_coordinates(tiny_model, tiny_pair):
    st, _ = tiny_pair
    plain = tiny_model.impute(st, seed=0, progress=False, spatial_weight=0.0)
    smooth = tiny_model.impute(st, seed=0, progress=False, spatial_weight=0.5)
    off = tiny_model.impute(st, seed=0, progress=False, spatial_weight=0.5, spatial=False)
    assert smooth.X.tolist() == tiny_model.impute(st, seed=0, progress=False).X.tolist()
    assert not np.allclose(plain.X, smooth.X)
    np.testing.assert_array_equal(plain.X, off.X)
    # coordinates given as an array act as obsm["spatial"] does
    bare = st.copy()
    del bare.obsm["spatial"]
    given = tiny_model.impute(bare, seed=0, progress=False, spatial_weight=0.5,
                              spatial=st.obsm["spatial"])
    np.testing.assert_array_equal(given.X, smooth.X)
    with pytest.raises(ValueError, match="`spatial` must be cells x dimensions"):
        tiny_model.impute(bare, progress=False, spatial_weight=0.5, spatial=np.zeros((3, 2)))
    with pytest.raises(TypeError, match="fixed at fit"):
        tiny_model.impute(st, progress=False, depth=2)


def _clustered_counts(n_cells=300, n_genes=12, seed=0):
    """Poisson counts of three cell states: (log1p of the noise-free rates, log1p of the counts)."""
    rng = np.random.default_rng(seed)
    states = rng.integers(0, 3, n_cells)
    rates = rng.gamma(2.0, 2.0, size=(3, n_genes))[states]
    counts = rng.poisson(rates)
    return np.log1p(rates), np.log1p(counts.astype(float))


def _smoothed(values, k, weight, rows=None, **kw):
    read = lambda idx: values[idx]  # noqa: E731
    reader = expression_smoothed_reader(read, read, len(values), k, weight, **kw)
    return reader(np.arange(len(values)) if rows is None else rows)


def test_expression_neighbours_are_the_nearest_other_cells_in_pca_space():
    _, values = _clustered_counts()
    out = _smoothed(values, 5, 0.4)
    # brute force: z-scores, the leading principal components (12 genes: all of them), the
    # 5 nearest other cells
    z = (values - values.mean(0)) / values.std(0)
    d = np.linalg.norm(z[:, None] - z[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    nb = np.argsort(d, axis=1)[:, :5]
    np.testing.assert_allclose(out, 0.6 * values + 0.4 * values[nb].mean(1), atol=1e-4)
    # a cell's values do not depend on the cells read with it, nor on the chunk
    rows = np.array([3, 77, 250])
    np.testing.assert_array_equal(_smoothed(values, 5, 0.4, rows=rows), out[rows])
    np.testing.assert_array_equal(_smoothed(values, 5, 0.4, block=7), out)
    # weight 0 reads the cells as they are
    np.testing.assert_array_equal(_smoothed(values, 5, 0.0), values)


def test_expression_neighbours_come_from_evenly_spaced_landmarks(monkeypatch):
    _, values = _clustered_counts(n_cells=100)
    monkeypatch.setattr(spatial, "EXPRESSION_LANDMARKS", 10)
    landmarks = np.unique(np.linspace(0, 99, 10).astype(int))
    others = np.setdiff1d(np.arange(100), landmarks)
    # with every value outside the landmarks changed (not those the graph is built on), a
    # cell's smoothed values move only by its own share: its neighbours are landmarks
    shifted = values.copy()
    shifted[others] += 1.0
    reader = expression_smoothed_reader(lambda idx: values[idx], lambda idx: shifted[idx],
                                        100, 4, 0.5)
    base = _smoothed(values, 4, 0.5)
    out = reader(np.arange(100))
    np.testing.assert_allclose(out[others], base[others] + 0.5, atol=1e-5)
    np.testing.assert_allclose(out[landmarks], base[landmarks], atol=1e-5)


def test_the_expression_context_averages_out_measurement_noise():
    truth, values = _clustered_counts(n_cells=600)
    smooth = _smoothed(values, 15, 0.5)
    error = lambda x: np.mean((x - truth) ** 2)  # noqa: E731
    assert error(smooth) < 0.7 * error(values), (error(smooth), error(values))


def test_the_expression_context_acts_at_impute_time(tiny_model, tiny_pair):
    st, _ = tiny_pair
    on = tiny_model.impute(st, seed=0, progress=False, residual_weight=0.0)
    off = tiny_model.impute(st, seed=0, progress=False, residual_weight=0.0,
                            expression_weight=0.0)
    assert on.uns["spalstf"]["params"]["expression_weight"] == 0.5
    assert np.abs(on.X - off.X).max() > 1e-3


def test_the_self_check_is_recorded_and_scores_every_known_gene(tiny_pair):
    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:4]
    out = spalstf.impute(st, sc, genes, self_check=True, self_check_folds=2, **FAST)
    check = out.uns["spalstf"]["self_check"]
    assert sorted(check["genes"]) == sorted(st.var_names)  # every known gene hidden once
    assert check["n_genes"] == st.n_vars and len(check["pcc"]) == st.n_vars
    assert np.isfinite(check["median_pcc"]) and -1 <= check["median_pcc"] <= 1
    # every candidate column scored alone; the weights are those the imputation used
    cand = check["candidates"]
    assert len(cand["column"]) == len(set(cand["column"])) > 10
    assert {"raw", "expression", "spatial"} == set(cand["view"])
    assert {"expression", "at_depth"} == set(cand["readout"])
    assert out.uns["spalstf"]["combination"]["weights"] == check["weights"]


def test_the_self_check_never_reads_the_target_genes(tiny_pair):
    """Target genes measured in the ST: change them, and neither estimate nor output moves."""
    st, sc = tiny_pair
    targets = list(st.var_names)[:3]
    a = spalstf.impute(st, sc, targets, self_check=True, self_check_folds=2, seed=4, **FAST)
    changed = st.copy()
    changed.X[:, :3] = np.random.default_rng(1).poisson(30, (st.n_obs, 3))
    b = spalstf.impute(changed, sc, targets, self_check=True, self_check_folds=2, seed=4,
                       **FAST)
    ca, cb = a.uns["spalstf"]["self_check"], b.uns["spalstf"]["self_check"]
    assert not set(targets) & set(ca["genes"])
    assert ca["pcc"] == cb["pcc"] and ca["weights"] == cb["weights"]
    np.testing.assert_array_equal(a.X, b.X)


def test_the_self_check_is_reproducible_with_a_seed(tiny_pair):
    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:3]
    runs = [spalstf.impute(st, sc, genes, self_check=True, self_check_folds=2,
                           seed=7, **FAST).uns["spalstf"]["self_check"] for _ in range(2)]
    assert runs[0]["candidates"] == runs[1]["candidates"]
    assert runs[0]["weights"] == runs[1]["weights"]


def test_the_inner_fits_share_half_the_update_budget(tiny_pair, monkeypatch):
    st, sc = tiny_pair
    budgets = []
    fit = core.fit_model

    def recording(*args, **kwargs):
        budgets.append((args[4].max_steps, args[4].max_time))
        return fit(*args, **kwargs)

    monkeypatch.setattr(core, "fit_model", recording)
    spalstf.impute(st, sc, list(st.obsm["truth"].columns)[:2], self_check=True,
                   self_check_folds=2, **{**FAST, "max_steps": 40, "max_time": 60})
    # two inner fits of 40 x 0.5 / 2 updates (and seconds), then the main fit
    assert budgets == [(10, 15.0), (10, 15.0), (40, 60)]


def test_self_check_off_and_auto(tiny_pair):
    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:2]
    off = spalstf.impute(st, sc, genes, self_check=False, **FAST)
    assert "self_check" not in off.uns["spalstf"]
    few = st[:, list(st.var_names)[:selfcheck.MIN_GENES - 1]]
    auto = spalstf.impute(few, sc, genes, **FAST)  # too few known genes: skipped
    assert "self_check" not in auto.uns["spalstf"]
    assert auto.uns["spalstf"]["combination"]["kind"] == "blend"
    # select=None: the settings as given, the fixed blend, nothing learnt
    given = spalstf.impute(st, sc, genes, select=None, **FAST)
    assert "self_check" not in given.uns["spalstf"]
    assert given.uns["spalstf"]["combination"]["kind"] == "blend"
    assert given.uns["spalstf"]["params"]["combine"] == "blend"


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(self_check="yes"), ValueError, "`self_check` must be"),
    (dict(self_check_folds=1), ValueError, "`self_check_folds` must be"),
    (dict(select={"residual_weight": [0, 1]}), ValueError, "`select` chose among"),
    (dict(config={"interval_level": 1.0}), ValueError, "`interval_level` must be in"),
])
def test_bad_self_check_options_are_refused_before_any_fit(tiny_pair, kwargs, error, match):
    st, sc = tiny_pair
    with pytest.raises(error, match=match):
        spalstf.impute(st, sc, list(st.obsm["truth"].columns)[:2], self_check=kwargs.pop(
            "self_check", True), **kwargs, **FAST)


def test_the_calibration_line_and_the_expected_accuracy():
    cal = accuracy.calibrate([0.1, 0.3, 0.5, 0.7], [0.05, 0.15, 0.25, 0.35])
    assert cal["slope"] == pytest.approx(0.5) and cal["intercept"] == pytest.approx(0.0)
    assert cal["r"] == pytest.approx(1.0) and cal["n"] == 4
    np.testing.assert_allclose(accuracy.expected_pcc(cal, [0.2, 4.0]), [0.1, 1.0])
    flat = accuracy.calibrate([0.2, np.nan], [0.1, 0.3])  # too few genes: the median, flat
    assert flat["slope"] == 0 and flat["n"] == 1


def test_reference_predictability_ranks_genes_by_how_well_known_genes_predict_them():
    rng = np.random.default_rng(0)
    known = rng.normal(size=(600, 5))
    target = np.stack([known[:, 0] + 0.1 * rng.normal(size=600),  # predictable
                       rng.normal(size=600)], axis=1)              # not at all
    r = accuracy.reference_predictability(known, target, alpha=1.0, seed=0)
    assert r[0] > 0.9 and abs(r[1]) < 0.2


def test_imputed_genes_get_a_calibrated_expected_accuracy(tiny_pair):
    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:4]
    out = spalstf.impute(st, sc, genes, self_check=True, self_check_folds=2, **FAST)
    conf = out.uns["spalstf"]["gene_confidence"]
    cal = out.uns["spalstf"]["self_check"]["calibration"]
    assert conf["genes"] == genes and set(cal) == {"intercept", "slope", "r", "n"}
    # the per-gene model's values, their median the run's expected median PCC
    check = out.uns["spalstf"]["self_check"]
    assert list(check["expected"]["gene_model"]["features"]) == list(accuracy.GENE_FEATURES)
    assert np.median(out.var["expected_pcc"]) == pytest.approx(check["expected_median_pcc"],
                                                               abs=1e-6)
    assert np.all(np.abs(out.var["expected_pcc"]) <= 1)
    np.testing.assert_allclose(out.var["expected_pcc"], conf["expected_pcc"], rtol=1e-6)
    # how sure each value is: the model's cross-fitted error and the run's standard error
    sd = np.hypot(check["expected"]["gene_model"]["residual_sd"], check["expected_median_pcc_se"])
    np.testing.assert_allclose(out.var["expected_pcc_sd"], sd, rtol=1e-6)


def test_model_self_check_scores_the_known_genes_and_leaves_the_network_alone(tiny_model,
                                                                              tiny_pair):
    st, sc = tiny_pair
    before = {k: v.clone() for k, v in tiny_model.network.state_dict().items()}
    result = tiny_model.self_check(st, sc, n_folds=2, progress=False, adopt=False)
    assert sorted(result.per_gene["gene"]) == sorted(tiny_model.known_genes)
    assert np.isfinite(result.median_pcc)
    again = tiny_model.self_check(st, sc, n_folds=2, progress=False, adopt=False)
    assert result.to_dict()["pcc"] == again.to_dict()["pcc"]  # seeded: reproducible
    for k, v in tiny_model.network.state_dict().items():
        assert bool((v == before[k]).all())
    assert tiny_model.stack is None
    with pytest.raises(ValueError, match="must hold the model's known genes"):
        tiny_model.self_check(st[:, 1:], sc, progress=False)
