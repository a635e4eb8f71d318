"""Panels of thousands of known genes (issue 27, Xenium 5k): the bounds that keep the costs that
grow with the known genes small, each engaging only above a panel size the pinned outputs
never reach, tried here with the threshold lowered."""

import numpy as np
import pytest
from conftest import FAST

import spalstf
from spalstf.combine import expected as accuracy
from spalstf.combine import selfcheck
from spalstf.prior import ridge


def test_the_dual_ridge_gives_the_primal_weights_and_penalty(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 1100))
    y = x[:, :20] @ rng.normal(size=(20, 7)) + rng.normal(size=(120, 7)) * 3
    assert x.shape[1] >= ridge.DUAL_MIN_GENES  # more genes than cells: the dual path
    for alpha in (None, 30.0):
        dual, dual_alpha = ridge.fit_ridge(x, y, alpha, return_alpha=True)
        monkeypatch.setattr(ridge, "DUAL_MIN_GENES", 10**9)
        primal, primal_alpha = ridge.fit_ridge(x, y, alpha, return_alpha=True)
        monkeypatch.undo()
        assert dual_alpha == primal_alpha
        np.testing.assert_allclose(dual, primal, rtol=1e-4, atol=1e-6)
    # on rows of a larger matrix, as `reference_predictability` fits its halves
    rows = np.arange(0, 120, 2)
    np.testing.assert_allclose(ridge.fit_ridge(x, y, 30.0, rows=rows),
                               ridge.fit_ridge(x[rows], y[rows], 30.0))


def test_a_fold_scores_a_seeded_sample_of_its_hidden_genes_only_when_it_hides_many():
    hidden = [f"g{i:03d}" for i in range(30)]
    assert selfcheck.scored_genes(hidden, 0, 1) == hidden  # under MAX_SCORED_GENES: all
    some = selfcheck.scored_genes(hidden, 0, 1, max_genes=8)
    assert len(some) == 8 and some == sorted(some) and set(some) <= set(hidden)
    assert some == selfcheck.scored_genes(hidden, 0, 1, max_genes=8)  # seeded
    assert some != selfcheck.scored_genes(hidden, 0, 2, max_genes=8)  # per fold


def test_the_self_check_bound_engages_on_large_panels_and_keeps_its_results_sane(
        tiny_pair, monkeypatch):
    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:3]
    full = spalstf.impute(st, sc, genes, self_check=True, self_check_folds=2, seed=0,
                          **FAST).uns["spalstf"]["self_check"]
    monkeypatch.setattr(selfcheck, "MAX_SCORED_GENES", 6)  # 22 known genes: 11 hidden a fold
    out = spalstf.impute(st, sc, genes, self_check=True, self_check_folds=2, seed=0, **FAST)
    check = out.uns["spalstf"]["self_check"]
    assert check["n_genes"] == 12 and set(check["genes"]) < set(st.var_names)
    assert sorted(np.bincount(check["fold"])) == [6, 6]
    # the scored genes are a sample of those the full self-check scored, with the same folds
    fold_of = dict(zip(full["genes"], full["fold"], strict=True))
    assert all(fold_of[g] == f for g, f in zip(check["genes"], check["fold"], strict=True))
    assert np.isfinite(check["median_pcc"]) and abs(check["median_pcc"]) <= 1
    assert np.isfinite(check["expected_median_pcc"])
    assert check["expected_median_pcc"] == pytest.approx(full["expected_median_pcc"], abs=0.25)
    assert np.isfinite(out.var["expected_pcc"]).all()
    assert np.isfinite(out.X).all()


def _counts(n_genes, n_cells, seed=0):
    rng = np.random.default_rng(seed)
    loadings = rng.gamma(2.0, 1.0, size=(4, n_genes))
    rate = rng.gamma(0.6, 1.0, size=(n_cells, 4)) @ loadings
    return rng.poisson(rate / rate.sum(1, keepdims=True) * 1500.0).astype(np.float64)


def test_the_panel_measurements_of_a_sample_of_genes_match_those_of_all():
    st, ref = _counts(40, 300, seed=1), _counts(40, 600)
    names = [f"g{i:02d}" for i in range(40)]
    some = names[3::4]
    kw = dict(seed=0, scale_factor=1e4, log_normalized=False)
    curve = accuracy.panel_curve(st, ref, names, n_folds=2, **kw)
    part = accuracy.panel_curve(st, ref, names, n_folds=2, scored=some, **kw)
    # the same groups hidden (the same known genes), only the sample predicted
    columns = [names.index(g) for g in some]
    np.testing.assert_allclose(part["n_known"], curve["n_known"])
    for key in ("st", "st_knn", "reference"):
        np.testing.assert_allclose(part[key], curve[key][:, columns], rtol=1e-6, atol=1e-9)
    everyone = accuracy.panel_reference_pcc(ref, names, n_groups=8, alpha=None, **kw)
    # all the genes as the sample: the default's groups
    np.testing.assert_array_equal(
        accuracy.panel_reference_pcc(ref, names, n_groups=8, alpha=None, scored=names, **kw),
        everyone)
    # a sample of 10 hidden in groups of at most 40 / 8 genes: 2 fits, as many known genes
    sample = accuracy.panel_reference_pcc(ref, names, n_groups=8, alpha=None, scored=some,
                                          **kw)
    assert sample.shape == (10,) and np.isfinite(sample).all()
    assert np.corrcoef(sample, everyone[columns])[0, 1] > 0.8


def test_spage_copies_over_the_same_profiles_share_the_reference_axes(tiny_model, tiny_pair,
                                                                       monkeypatch):
    from spalstf.prior import spage

    st, _ = tiny_pair
    original = tiny_model.predictors["spage"]
    x = np.log1p(np.asarray(st[:, tiny_model.known_genes].X, np.float64))
    computed = []
    monkeypatch.setattr(spage, "principal_axes", lambda cov, n: computed.append(n) or
                        spage.np.linalg.eigh(cov)[1][:, ::-1][:, :n].T)
    spage._LAST_REFERENCE_AXES.clear()
    out = []
    for shift in (0.0, 0.0, 0.5):  # views: each a fresh copy of the model's predictor
        copy = type(original).from_state(original.state(), tiny_model.config)
        copy.prepare(lambda s=shift: iter([x + s]))
        out.append(copy.predict(x))
    # the ST's axes each time; the reference's once for all copies
    assert len(computed) == 3 + 1
    np.testing.assert_array_equal(out[0], out[1])
    spage._LAST_REFERENCE_AXES.clear()
    fresh = type(original).from_state(original.state(), tiny_model.config)
    fresh.prepare(lambda: iter([x + 0.5]))
    np.testing.assert_array_equal(fresh.predict(x), out[2])


def test_leading_axes_span_the_full_decompositions_leading_subspace():
    from spalstf.preprocess import leading_axes

    rng = np.random.default_rng(2)
    signal = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 40)) * 3
    x = signal + rng.normal(size=(300, 40)) * 0.3
    full = np.linalg.eigh(x.T @ x)[1][:, ::-1][:, :6].T
    part = leading_axes(x, 6)
    assert part.shape == (6, 40)
    np.testing.assert_allclose(part @ part.T, np.eye(6), atol=1e-5)  # orthonormal
    # the same subspace: the full axes lie in it
    np.testing.assert_allclose(np.linalg.norm(full @ part.T, axis=1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(part, leading_axes(x, 6))  # seeded: the same
    with pytest.raises(ValueError, match=r"n must be between 1 and the rows' smaller "
                                         r"dimension \(40\); got 41"):
        leading_axes(x, 41)


def _prepared(model, name, x):
    original = model.predictors[name]
    copy = type(original).from_state(original.state(), model.config)
    copy.prepare(lambda: iter([x]))
    return copy


def _index(predictor):
    from spalstf.prior.neighbours import ProfileIndex

    items = [v for v in vars(predictor).values()
             for v in (v if isinstance(v, tuple) else (v,))]
    return next(v for v in items if isinstance(v, ProfileIndex))


@pytest.fixture
def few_components(monkeypatch):
    """The large-panel searches engaged on the tiny model's 22 known genes, in 5 components."""
    from spalstf.prior import neighbours, spage

    for module in (neighbours, spage):
        monkeypatch.setattr(module, "COMPONENT_SEARCH_MIN_GENES", 10)
        monkeypatch.setattr(module, "SEARCH_COMPONENTS", 5)
    neighbours._SHARED_SEARCHES.clear()
    spage._LAST_REFERENCE_AXES.clear()
    yield
    neighbours._SHARED_SEARCHES.clear()
    spage._LAST_REFERENCE_AXES.clear()


def _inputs(model, st):
    log = np.log1p(np.asarray(st[:, model.known_genes].X, np.float64))
    return {"knn": log, "aligned": log, "spage": log}


def test_large_panels_search_in_the_reference_leading_components(tiny_model, tiny_pair,
                                                                 request):
    st, _ = tiny_pair
    inputs = _inputs(tiny_model, st)
    n_known = len(tiny_model.known_genes)
    full = {name: _prepared(tiny_model, name, x) for name, x in inputs.items()}
    # below the panel size: every known gene (the pinned outputs' path)
    assert _index(full["knn"]).profiles.shape[1] == n_known
    assert _index(full["aligned"]).profiles.shape[1] == n_known
    request.getfixturevalue("few_components")
    part = {name: _prepared(tiny_model, name, x) for name, x in inputs.items()}
    assert _index(part["knn"]).profiles.shape[1] == 5
    assert _index(part["aligned"]).profiles.shape[1] == 5
    assert part["spage"]._search[1].shape == (n_known, part["spage"]._search[1].shape[1])
    assert 1 <= part["spage"]._search[1].shape[1] <= 5  # at most 5 principal vectors
    for name, x in inputs.items():
        a, b = full[name].predict(x), part[name].predict(x)
        assert a.shape == b.shape and np.isfinite(b).all()
        assert not np.array_equal(a, b)
        # the same kind of prediction: per target gene, the two agree across cells
        pcc = [np.corrcoef(a[:, g], b[:, g])[0, 1] for g in range(a.shape[1])
               if a[:, g].std() > 0 and b[:, g].std() > 0]
        assert np.median(pcc) > 0.5, name


def test_the_views_copies_share_one_reference_search_but_not_its_float32_switch(
        tiny_model, tiny_pair, few_components):
    from spalstf.prior import neighbours

    st, _ = tiny_pair
    x = _inputs(tiny_model, st)["knn"]
    for name in ("knn", "aligned"):
        # two views of an ST (the aligned estimate z-scores each over itself)
        one, two = _prepared(tiny_model, name, x), _prepared(tiny_model, name, x + 0.1)
        assert _index(one) is not _index(two)
        assert _index(one).profiles is _index(two).profiles  # one copy of the profiles
        neighbours.search_in_float32(one)
        assert _index(one).float32 and not _index(two).float32
        # the same predictions as a copy that made its own search
        neighbours._SHARED_SEARCHES.clear()
        alone = _prepared(tiny_model, name, x + 0.1)
        assert _index(alone).profiles is not _index(two).profiles
        np.testing.assert_array_equal(two.predict(x), alone.predict(x))


def test_a_new_fit_gets_a_new_reference_search(tiny_pair, few_components):
    st, sc = tiny_pair
    targets = list(st.obsm["truth"].columns)
    x = None
    indices = []
    for seed in (0, 1):
        model = spalstf.fit(sc, list(st.var_names), targets, seed=seed, **FAST)
        x = _inputs(model, st)["knn"] if x is None else x
        indices.append(_index(_prepared(model, "aligned", x)))
    assert indices[0].profiles is not indices[1].profiles


def test_the_expression_graph_of_a_large_panel_takes_its_axes_from_a_partial_decomposition(
        monkeypatch):
    from spalstf import spatial

    rng = np.random.default_rng(4)
    groups = rng.integers(0, 5, size=400)
    values = rng.normal(size=(5, 60))[groups] * 2 + rng.normal(size=(400, 60))
    read = values.__getitem__
    calls = []
    partial = spatial.leading_axes
    monkeypatch.setattr(spatial, "leading_axes",
                        lambda rows, n: calls.append(rows.shape) or partial(rows, n))
    rows = np.arange(400)
    full = spatial.expression_graph(read, 400, 8)(rows)
    assert calls == []  # the default: the full eigen-decomposition, as before
    monkeypatch.setattr(spatial, "AXES_CELLS", 150)
    part = spatial.expression_graph(read, 400, 8, partial_axes=True)(rows)
    assert calls == [(134, 60)]  # every third of the 400 landmarks
    assert part.shape == full.shape and (part != rows[:, None]).all()  # never the cell itself
    # the same kind of neighbours: of the cell's own group, mostly
    assert (groups[part] == groups[:, None]).mean() > 0.9
    assert np.mean([len(set(a) & set(b)) / 8 for a, b in zip(part, full, strict=True)]) > 0.5


def test_a_large_panels_column_source_asks_its_graph_for_the_partial_axes(tiny_pair,
                                                                           monkeypatch):
    from spalstf.combine import columns as columns_module
    from spalstf.prior import neighbours

    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:3]
    asked = []
    graph = columns_module.expression_graph

    def recording(*args, **kwargs):
        asked.append(kwargs["partial_axes"])
        return graph(*args, **kwargs)

    monkeypatch.setattr(columns_module, "expression_graph", recording)
    spalstf.impute(st, sc, genes, self_check=False, seed=0, **FAST)
    assert asked and not any(asked)  # 22 known genes: the full decomposition
    asked.clear()
    monkeypatch.setattr(neighbours, "COMPONENT_SEARCH_MIN_GENES", 10)
    out = spalstf.impute(st, sc, genes, self_check=False, seed=0, **FAST)
    assert asked and all(asked)
    assert np.isfinite(out.X).all()
