"""The self-check (inner leave-genes-out over the ST's known genes) and the spatial context."""

import numpy as np
import pytest
from conftest import FAST, as_counts

import spalstf
from spalstf import selfcheck, spatial
from spalstf.spatial import expression_smoothed_reader, neighbours

#: A small selection grid: two spatial weights x two refinement weights.
GRID = {"spatial_weight": [0.0, 0.5], "residual_weight": [0.0, 1.0]}


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
    plain = tiny_model.impute(st, seed=0, progress=False)
    smooth = tiny_model.impute(st, seed=0, progress=False, spatial_weight=0.5)
    off = tiny_model.impute(st, seed=0, progress=False, spatial_weight=0.5, spatial=False)
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
    out = spalstf.impute(st, sc, genes, self_check=True, self_check_folds=2, select=GRID,
                         **FAST)
    check = out.uns["spalstf"]["self_check"]
    assert sorted(check["genes"]) == sorted(st.var_names)  # every known gene hidden once
    assert check["n_genes"] == st.n_vars and len(check["pcc"]) == st.n_vars
    assert np.isfinite(check["median_pcc"]) and -1 <= check["median_pcc"] <= 1
    assert check["selected"] in selfcheck.candidates(GRID)
    # stage 1 scores the spatial weights on the prior alone, stage 2 samples the chosen one
    stages = check["candidates"]["stage"]
    assert stages.count("prior") == 2 and stages.count("model") == 2
    # the selected setting is the one the main run used
    for name, value in check["selected"].items():
        assert out.uns["spalstf"]["params"][name] == value


def test_the_self_check_never_reads_the_target_genes(tiny_pair):
    """Target genes measured in the ST: change them, and neither estimate nor output moves."""
    st, sc = tiny_pair
    targets = list(st.var_names)[:3]
    a = spalstf.impute(st, sc, targets, self_check=True, self_check_folds=2, select=GRID,
                       seed=4, **FAST)
    changed = st.copy()
    changed.X[:, :3] = np.random.default_rng(1).poisson(30, (st.n_obs, 3))
    b = spalstf.impute(changed, sc, targets, self_check=True, self_check_folds=2,
                       select=GRID, seed=4, **FAST)
    ca, cb = a.uns["spalstf"]["self_check"], b.uns["spalstf"]["self_check"]
    assert not set(targets) & set(ca["genes"])
    assert ca["pcc"] == cb["pcc"] and ca["selected"] == cb["selected"]
    np.testing.assert_array_equal(a.X, b.X)


def test_selection_is_reproducible_with_a_seed(tiny_pair):
    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:3]
    runs = [spalstf.impute(st, sc, genes, self_check=True, self_check_folds=2, select=GRID,
                           seed=7, **FAST).uns["spalstf"]["self_check"] for _ in range(2)]
    assert runs[0]["candidates"] == runs[1]["candidates"]
    assert runs[0]["selected"] == runs[1]["selected"]


def test_the_inner_fits_share_half_the_update_budget(tiny_pair, monkeypatch):
    st, sc = tiny_pair
    budgets = []
    fit = spalstf.api.fit_model

    def recording(*args, **kwargs):
        budgets.append((args[4].max_steps, args[4].max_time))
        return fit(*args, **kwargs)

    monkeypatch.setattr(spalstf.api, "fit_model", recording)
    spalstf.impute(st, sc, list(st.obsm["truth"].columns)[:2], self_check=True,
                   self_check_folds=2, **{**FAST, "max_steps": 40, "max_time": 60})
    # two inner fits of 40 x 0.5 / 2 updates (and seconds), then the main fit
    assert budgets == [(10, 15.0), (10, 15.0), (40, 60)]


def test_self_check_off_and_auto(tiny_pair):
    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:2]
    off = spalstf.impute(st, sc, genes, self_check=False, **FAST)
    assert "self_check" not in off.uns["spalstf"]
    few = st[:, list(st.var_names)[:spalstf.api.SELF_CHECK_MIN_GENES - 1]]
    auto = spalstf.impute(few, sc, genes, **FAST)  # too few known genes: skipped
    assert "self_check" not in auto.uns["spalstf"]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(self_check="yes"), ValueError, "`self_check` must be"),
    (dict(self_check_folds=1), ValueError, "`self_check_folds` must be"),
    (dict(select={"depth": [1, 2]}), ValueError, "`select` can choose among"),
    (dict(select={"residual_weight": []}), ValueError, "non-empty list"),
    (dict(select="best"), ValueError, "`select` must be"),
    (dict(select=[0.5]), TypeError, "`select` must be a dict"),
    (dict(select={"residual_weight": [2.0]}), ValueError, "`residual_weight` must be in"),
])
def test_bad_self_check_options_are_refused_before_any_fit(tiny_pair, kwargs, error, match):
    st, sc = tiny_pair
    with pytest.raises(error, match=match):
        spalstf.impute(st, sc, list(st.obsm["truth"].columns)[:2], self_check=kwargs.pop(
            "self_check", True), **kwargs, **FAST)


def test_the_calibration_line_and_the_expected_accuracy():
    cal = selfcheck.calibrate([0.1, 0.3, 0.5, 0.7], [0.05, 0.15, 0.25, 0.35])
    assert cal["slope"] == pytest.approx(0.5) and cal["intercept"] == pytest.approx(0.0)
    assert cal["r"] == pytest.approx(1.0) and cal["n"] == 4
    np.testing.assert_allclose(selfcheck.expected_pcc(cal, [0.2, 4.0]), [0.1, 1.0])
    flat = selfcheck.calibrate([0.2, np.nan], [0.1, 0.3])  # too few genes: the median, flat
    assert flat["slope"] == 0 and flat["n"] == 1


def test_reference_predictability_ranks_genes_by_how_well_known_genes_predict_them():
    rng = np.random.default_rng(0)
    known = rng.normal(size=(600, 5))
    target = np.stack([known[:, 0] + 0.1 * rng.normal(size=600),  # predictable
                       rng.normal(size=600)], axis=1)              # not at all
    r = selfcheck.reference_predictability(known, target, alpha=1.0, seed=0)
    assert r[0] > 0.9 and abs(r[1]) < 0.2


def test_imputed_genes_get_a_calibrated_expected_accuracy(tiny_pair):
    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:4]
    out = spalstf.impute(st, sc, genes, self_check=True, self_check_folds=2, select=GRID,
                         **FAST)
    conf = out.uns["spalstf"]["gene_confidence"]
    cal = out.uns["spalstf"]["self_check"]["calibration"]
    assert conf["genes"] == genes and set(cal) == {"intercept", "slope", "r", "n"}
    expected = selfcheck.expected_pcc(cal, conf["reference_pcc"])
    np.testing.assert_allclose(out.var["expected_pcc"], expected, rtol=1e-6)
    assert np.all(np.abs(out.var["expected_pcc"]) <= 1)


def test_model_self_check_scores_the_known_genes_and_leaves_the_model_alone(tiny_model,
                                                                            tiny_pair):
    st, sc = tiny_pair
    before = {k: v.clone() for k, v in tiny_model.network.state_dict().items()}
    result = tiny_model.self_check(st, sc, n_folds=2, progress=False)
    assert sorted(result.per_gene["gene"]) == sorted(tiny_model.known_genes)
    assert np.isfinite(result.median_pcc)
    again = tiny_model.self_check(st, sc, n_folds=2, progress=False)
    assert result.to_dict()["pcc"] == again.to_dict()["pcc"]  # seeded: reproducible
    for k, v in tiny_model.network.state_dict().items():
        assert torch_equal(v, before[k])
    with pytest.raises(ValueError, match="must hold the model's known genes"):
        tiny_model.self_check(st[:, 1:], sc, progress=False)


def torch_equal(a, b):
    return bool((a == b).all())


def test_the_prior_alone_skips_sampling_and_equals_a_zero_refinement(tiny_model, tiny_pair):
    """Stage 1 of the selection reads the prior without a denoiser pass or neighbour search;
    it must equal the imputation that keeps none of the refinement."""
    import torch

    from spalstf.data import as_expression

    st, _ = tiny_pair
    expr = as_expression(st, arg="st")
    common = dict(log_normalized=False, seed=0, device=torch.device("cpu"), spatial=None,
                  progress=False)
    alone, std = tiny_model._predict(expr, tiny_model.config, prior_only=True, **common)
    zero = tiny_model.impute(st, seed=0, progress=False, residual_weight=0.0)
    assert std is None
    np.testing.assert_allclose(alone, zero.X, rtol=1e-6, atol=1e-6)


def test_the_aligned_neighbour_weight_is_chosen_on_the_prior_alone(tiny_pair):
    """Stage 1 tries each knn_weight on the prior's predictions; stage 2 samples the winner.
    The model here neither needs the atlas (no context) nor uses the estimate (weight 0):
    the inner models must keep the atlas for the candidate that reads it."""
    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:3]
    grid = {"knn_weight": [0.0, 0.5], "residual_weight": [0.0, 1.0]}
    out = spalstf.impute(st, sc, genes, self_check=True, self_check_folds=2, select=grid,
                         **{**FAST, "use_context": False, "knn_weight": 0.0})
    check = out.uns["spalstf"]["self_check"]
    cand = check["candidates"]
    prior = [i for i, s in enumerate(cand["stage"]) if s == "prior"]
    model = [i for i, s in enumerate(cand["stage"]) if s == "model"]
    assert [cand["knn_weight"][i] for i in prior] == [0.0, 0.5]
    assert cand["median_pcc"][prior[0]] != cand["median_pcc"][prior[1]]  # both computed
    best = max(prior, key=lambda i: cand["median_pcc"][i])
    assert {cand["knn_weight"][i] for i in model} == {cand["knn_weight"][best]}
    assert check["selected"]["knn_weight"] == cand["knn_weight"][best]
    assert out.uns["spalstf"]["params"]["knn_weight"] == check["selected"]["knn_weight"]


def test_auto_selection_keeps_the_settings_a_user_gave(tiny_pair):
    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:2]
    for given in (dict(knn_weight=0.25, residual_weight=0.5),
                  dict(config=spalstf.Config(knn_weight=0.25, residual_weight=0.5))):
        out = spalstf.impute(st, sc, genes, self_check=True, self_check_folds=2,
                             **{**FAST, **given})
        check = out.uns["spalstf"]["self_check"]
        assert "spatial_weight" in check["selected"]  # the others are still chosen
        assert not {"knn_weight", "residual_weight"} & set(check["selected"])
        assert set(check["candidates"]["knn_weight"]) == {0.25}
        cand = check["candidates"]  # stage 1 rows are the prior alone (residual weight 0)
        assert {w for w, s in zip(cand["residual_weight"], cand["stage"], strict=True)
                if s == "model"} == {0.5}
        params = out.uns["spalstf"]["params"]
        assert params["knn_weight"] == 0.25 and params["residual_weight"] == 0.5


def spots_of_uneven_depth(seed: int = 3):
    """A simulated pair whose ST cells keep between about 1% and 100% of their counts (as
    Visium spots differ in depth), so that what a spot measures depends on its depth."""
    st, sc = spalstf.datasets.simulate(n_st=120, n_sc=200, n_genes=30, n_measured=22,
                                       seed=seed)
    rng = np.random.default_rng(0)
    counts = as_counts(st.X).astype(np.int64)
    keep = np.exp(rng.normal(np.log(0.1), 2.0, size=(st.n_obs, 1))).clip(0, 1)
    st.X = rng.binomial(counts, np.broadcast_to(keep, counts.shape)).astype(np.float32)
    return st, sc


def test_on_spots_of_uneven_depth_the_output_at_their_depth_is_chosen():
    """Both outputs are scored on the prior alone; on spots of uneven depth the expected
    measurement at each spot's depth predicts most hidden genes better, and is chosen."""
    st, sc = spots_of_uneven_depth()
    genes = list(st.obsm["truth"].columns)[:2]
    out = spalstf.impute(st, sc, genes, self_check=True, self_check_folds=2,
                         select={"output": ["expression", "at_depth"],
                                 "residual_weight": [0.0, 1.0]}, **FAST)
    check = out.uns["spalstf"]["self_check"]
    cand = check["candidates"]
    prior = [i for i, s in enumerate(cand["stage"]) if s == "prior"]
    assert [cand["output"][i] for i in prior] == ["expression", "at_depth"]
    scores = {cand["output"][i]: cand["median_pcc"][i] for i in prior}
    assert scores["at_depth"] > scores["expression"] + 0.02
    # chosen gene by gene: it predicts most hidden genes better
    assert cand["genes_better"][prior[1]] > selfcheck.OUTPUT_WIN_SHARE
    assert check["selected"]["output"] == "at_depth"
    assert out.uns["spalstf"]["params"]["output"] == "at_depth"
    # stage 2 samples the chosen output only
    assert {cand["output"][i] for i, s in enumerate(cand["stage"]) if s == "model"} \
        == {"at_depth"}


def test_the_depth_weight_is_offered_only_for_counts(tiny_pair):
    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:2]
    counts = spalstf.impute(st, sc, genes, self_check=True, **FAST)
    candidates = counts.uns["spalstf"]["self_check"]["candidates"]
    assert set(candidates["depth_weight"]) == set(selfcheck.DEFAULT_SELECT["depth_weight"])
    assert set(candidates["output"]) == {"expression"}  # offered only when asked for
    st_log, sc_log = st.copy(), sc.copy()
    st_log.X, sc_log.X = np.log1p(as_counts(st.X)), np.log1p(as_counts(sc.X))
    logged = spalstf.impute(st_log, sc_log, genes, log_normalized=True, self_check=True, **FAST)
    check = logged.uns["spalstf"]["self_check"]
    assert set(check["candidates"]["depth_weight"]) == {0.0}
    assert "depth_weight" not in check["selected"]
    assert logged.uns["spalstf"]["params"]["depth_weight"] == 0.0
    with pytest.raises(ValueError, match=r"`select\['output'\]` offers 'at_depth'"):
        spalstf.impute(st_log, sc_log, genes, log_normalized=True, self_check=True,
                       select={"output": ["expression", "at_depth"]}, **FAST)
    with pytest.raises(ValueError, match=r"`select\['depth_weight'\]` offers weights above 0"):
        spalstf.impute(st_log, sc_log, genes, log_normalized=True, self_check=True,
                       select={"depth_weight": [0.0, 0.5]}, **FAST)
    # an output you give is kept whole: the depth weight is then not chosen
    given = spalstf.impute(st, sc, genes, self_check=True, output="expression", **FAST)
    assert set(given.uns["spalstf"]["self_check"]["candidates"]["depth_weight"]) == {0.0}


def test_the_self_check_scores_a_blended_depth_weight_as_the_imputation_gives_it(tiny_pair):
    """Stage 1 blends the predictions at depth weights 0 and 1 instead of predicting each
    weight: the score of 0.5 equals that of an imputation made at 0.5 (checked alone, where
    there is no stage 1)."""
    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:2]

    def check(weights):
        out = spalstf.impute(st, sc, genes, self_check=True, self_check_folds=2, seed=2,
                             select={"depth_weight": weights, "residual_weight": [0.0]},
                             **FAST)
        return out.uns["spalstf"]["self_check"]["candidates"]

    grid, alone = check([0.0, 0.5, 1.0]), check([0.5])
    row = [i for i, (s, w) in enumerate(zip(grid["stage"], grid["depth_weight"], strict=True))
           if s == "prior" and w == 0.5]
    assert len(row) == 1 and alone["stage"] == ["model"]
    assert grid["median_pcc"][row[0]] == pytest.approx(alone["median_pcc"][0], abs=1e-6)
    scores = {w: p for s, w, p in zip(grid["stage"], grid["depth_weight"], grid["median_pcc"],
                                      strict=True) if s == "prior"}
    assert len(set(scores.values())) == 3  # the three weights do differ


def test_another_output_is_tried_only_at_the_chosen_prior_settings():
    """The prior's settings are chosen at the first output; "at_depth" is then scored at the
    chosen settings only, and kept only if it predicts most hidden genes better."""
    st, sc = spots_of_uneven_depth()
    genes = list(st.obsm["truth"].columns)[:2]
    out = spalstf.impute(st, sc, genes, self_check=True, self_check_folds=2,
                         select={"spatial_weight": [0.0, 0.5],
                                 "output": ["expression", "at_depth"],
                                 "residual_weight": [0.0]}, **FAST)
    check = out.uns["spalstf"]["self_check"]
    cand = check["candidates"]
    prior = [i for i, s in enumerate(cand["stage"]) if s == "prior"]
    assert [cand["output"][i] for i in prior] == ["expression", "expression", "at_depth"]
    best = max(prior[:2], key=lambda i: cand["median_pcc"][i])
    assert cand["spatial_weight"][prior[2]] == cand["spatial_weight"][best]
    share = cand["genes_better"][prior[2]]
    assert check["selected"]["output"] == ("at_depth" if share > selfcheck.OUTPUT_WIN_SHARE
                                           else "expression")
    assert check["selected"]["spatial_weight"] == cand["spatial_weight"][best]
