"""The stacked combination: base predictors, their columns, the weights learnt on the ST's own
genes, and the calibrated interval."""

import numpy as np
import pytest
from conftest import FAST

import spalstf
from spalstf.combine.columns import ColumnSource, candidate_columns
from spalstf.combine.stack import Stack, learn_weights
from spalstf.data import as_expression
from spalstf.evaluate import metrics
from spalstf.preprocess import Standardizer
from spalstf.prior import (
    AlignedRidge,
    CountLikelihood,
    Reference,
    ReferenceNeighbours,
    SpageProjection,
    TransportMapping,
)
from spalstf.prior import transport as transport_module


def test_learn_weights_finds_the_informative_column_and_ignores_noise():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(500, 12))
    truth = 3 * signal + rng.normal(scale=0.5, size=signal.shape) + 7
    columns = {"good|raw|expression": signal + 100,  # level and scale do not matter
               "noise|raw|expression": rng.normal(size=signal.shape),
               "anti|raw|expression": -signal}
    w = learn_weights(columns, truth)
    assert w["good|raw|expression"] > 0.95
    assert w["anti|raw|expression"] == 0
    assert all(v >= 0 for v in w.values()) and sum(w.values()) == pytest.approx(1)


def test_learn_weights_blends_two_columns_that_err_differently():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(800, 10)) + 10  # log-expression is positive: nothing clipped
    a = truth + rng.normal(size=truth.shape)
    b = truth + rng.normal(size=truth.shape)
    w = learn_weights({"a|raw|expression": a, "b|raw|expression": b}, truth)
    assert 0.35 < w["a|raw|expression"] < 0.65
    blend = Stack(w)
    combined = blend.combine({"a|raw|expression": a, "b|raw|expression": b},
                             blend.statistics({"a|raw|expression": a, "b|raw|expression": b}))
    assert np.median(metrics.pcc(truth, combined)) > np.median(metrics.pcc(truth, a)) + 0.05


def test_learn_weights_leaves_out_light_columns_and_refits_the_rest(monkeypatch):
    from spalstf.combine import stack as stack_module
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(600, 8)) + 10
    columns = {f"p{i}|raw|expression": truth + rng.normal(scale=s, size=truth.shape)
               for i, s in enumerate((0.6, 1.0, 1.6, 2.5))}
    monkeypatch.setattr(stack_module, "MIN_WEIGHT", 0.0)
    unpruned = learn_weights(columns, truth)
    assert 0 < min(unpruned.values()) < 0.15  # the noisiest column earns a little weight
    monkeypatch.setattr(stack_module, "MIN_WEIGHT", 0.15)
    pruned = learn_weights(columns, truth)
    assert all(w == 0 or w >= 0.15 for w in pruned.values())
    assert sum(pruned.values()) == pytest.approx(1)
    kept = [n for n, w in pruned.items() if w > 0]
    assert 1 < len(kept) < len(columns)
    # the weights kept are those learnt on the kept columns alone (refit, not rescaled)
    monkeypatch.setattr(stack_module, "MIN_WEIGHT", 0.0)
    alone = learn_weights({n: columns[n] for n in kept}, truth)
    assert pruned == pytest.approx({**dict.fromkeys(columns, 0.0), **alone})
    rescaled = {n: unpruned[n] / sum(unpruned[m] for m in kept) for n in kept}
    assert alone != pytest.approx(rescaled)


def test_a_stack_of_one_column_returns_it_and_values_are_never_negative():
    rng = np.random.default_rng(2)
    values = rng.gamma(2.0, size=(50, 4)).astype(np.float32)
    one = Stack({"ridge|raw|expression": 1.0})
    out = one.combine({"ridge|raw|expression": values},
                      one.statistics({"ridge|raw|expression": values}))
    np.testing.assert_allclose(out, values, rtol=1e-5, atol=1e-5)
    two = Stack({"ridge|raw|expression": 0.5, "knn|raw|expression": 0.5})
    preds = {"ridge|raw|expression": values, "knn|raw|expression": -5 * values}
    assert (two.combine(preds, two.statistics(preds)) >= 0).all()


@pytest.mark.parametrize(("weights", "error"), [
    ({}, "at least one column"), ({"ridge|raw|expression": 0.0}, "at least one column"),
    ({"ridge": 1.0}, "predictor\\|view\\|readout")])
def test_a_stack_refuses_bad_weights(weights, error):
    with pytest.raises(ValueError, match=error):
        Stack(weights)


def test_the_conformal_interval_covers_its_level_on_fresh_values():
    rng = np.random.default_rng(3)

    def draw(n):
        combined = rng.gamma(2.0, size=(n, 20))
        spread = rng.uniform(0.1, 1.0, size=combined.shape)
        # measured values are log-expression: never negative
        truth = np.clip(combined + spread * rng.standard_t(5, size=combined.shape), 0, None)
        return truth, combined, spread

    stack = Stack({"ridge|raw|expression": 1.0})
    stack.calibrate(*draw(300), level=0.9)
    truth, combined, spread = draw(2000)
    lower, upper = stack.interval(combined.astype(np.float32), spread.astype(np.float32))
    coverage = ((truth >= lower) & (truth <= upper)).mean()
    assert 0.87 < coverage < 0.93, coverage
    assert (lower >= 0).all()
    with pytest.raises(ValueError, match="`level` must be in"):
        stack.calibrate(*draw(10), level=1.5)


def _reference(model):
    """The tiny model's reference as predictors are fitted on it (from its atlas)."""
    ridge = model.predictors["ridge"]
    n_known = len(model.known_genes)
    atlas = model.predictors["aligned"].atlas
    return Reference(atlas[:, :n_known], atlas[:, n_known:],
                     scalers=(model.known_scaler, model.target_scaler), atlas=atlas), ridge


@pytest.mark.parametrize("cls", [SpageProjection, TransportMapping, ReferenceNeighbours,
                                 AlignedRidge, CountLikelihood])
def test_each_new_predictor_is_chunk_free_and_survives_saving(tiny_model, cls):
    reference, ridge = _reference(tiny_model)
    predictor = (AlignedRidge.of(ridge) if cls is AlignedRidge
                 else cls.from_config(tiny_model.config))
    if cls is not AlignedRidge:
        predictor.fit(reference, seed=0)
    st = np.abs(np.random.default_rng(4).normal(2, 1, size=(90, len(tiny_model.known_genes))))
    st = st.astype(np.float32)
    predictor.prepare(lambda: iter([st[:50], st[50:]]))
    whole = predictor.predict(st)
    assert whole.shape == (90, len(tiny_model.target_genes)) and np.isfinite(whole).all()
    order = np.random.default_rng(0).permutation(90)
    parts = np.concatenate([predictor.predict(st[order[s:s + 7]]) for s in range(0, 90, 7)])
    np.testing.assert_allclose(parts, whole[order], rtol=1e-5, atol=1e-5)
    copy = cls.from_state(predictor.state(), tiny_model.config)
    copy.prepare(lambda: iter([st[:50], st[50:]]))
    np.testing.assert_allclose(copy.predict(st), whole, rtol=1e-5, atol=1e-5)


def test_predictors_that_align_the_st_need_their_prepare(tiny_model):
    reference, _ = _reference(tiny_model)
    for cls in (SpageProjection, TransportMapping, CountLikelihood):
        predictor = cls.from_config(tiny_model.config)
        predictor.fit(reference, seed=0)
        with pytest.raises(RuntimeError, match="prepare must run before predict"):
            predictor.predict(np.zeros((2, len(tiny_model.known_genes)), np.float32))


def _typed_counts(rng, shares_by_type, types, depth):
    """Multinomial counts of cells of the given types at a depth, log-normalised (1e4)."""
    counts = np.stack([rng.multinomial(depth, shares_by_type[t]) for t in types])
    return np.log1p(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) * 1e4)


def _likelihood_fitted_on_types(rng, shares_by_type, type_targets):
    """A CountLikelihood fitted on a deep reference of the given cell types (model space)."""
    types = rng.integers(0, len(shares_by_type), 600)
    known = _typed_counts(rng, shares_by_type, types, 5000)
    target = type_targets[types] + rng.normal(scale=0.1, size=(600, type_targets.shape[1]))
    scalers = (Standardizer.fit(known), Standardizer.fit(target))
    known_z, target_z = scalers[0].transform(known), scalers[1].transform(target)
    reference = Reference(known_z, target_z, scalers=scalers,
                          atlas=np.concatenate([known_z, target_z], axis=1))
    predictor = CountLikelihood(use_mixtures=False)
    predictor.fit(reference, seed=0)
    return predictor, scalers[1]


def test_the_count_likelihood_learns_the_st_depth_and_capture_from_the_st():
    """Shallow ST cells get a softer posterior (a smaller learnt depth) than deep ones, and a
    platform that captures some genes 30 times better than the reference does not mislead it:
    it learns the capture from the ST's own mean shares."""
    rng = np.random.default_rng(0)
    n_types, n_known = 5, 24
    shares_by_type = rng.dirichlet(np.full(n_known, 0.5), size=n_types)
    type_targets = rng.normal(size=(n_types, 6)) * 2
    predictor, target_scaler = _likelihood_fitted_on_types(rng, shares_by_type, type_targets)
    types = rng.integers(0, n_types, 800)

    def accuracy(st_shares, depth):
        st = _typed_counts(rng, st_shares, types, depth)
        predictor.prepare(lambda: iter([st[:400], st[400:]]))
        predicted = target_scaler.inverse(predictor.predict(st), clip=False)
        return np.median(metrics.pcc(type_targets[types], predicted)), predictor.depth

    shallow_pcc, shallow_depth = accuracy(shares_by_type, 8)
    deep_pcc, deep_depth = accuracy(shares_by_type, 100)
    assert deep_depth > 4 * shallow_depth
    assert deep_pcc > 0.99 and deep_pcc > shallow_pcc
    biased = shares_by_type.copy()
    biased[:, :6] *= 30
    biased /= biased.sum(axis=1, keepdims=True)
    biased_pcc, _ = accuracy(biased, 100)  # 0.86 when the capture is not learnt
    assert biased_pcc > 0.99


def test_the_count_likelihood_gives_an_all_zero_cell_the_reference_mean(tiny_model):
    reference, _ = _reference(tiny_model)
    predictor = CountLikelihood.from_config(tiny_model.config)
    predictor.fit(reference, seed=0)
    st = np.abs(np.random.default_rng(6).normal(2, 1, size=(40, len(tiny_model.known_genes))))
    predictor.prepare(lambda: iter([st]))
    zero = predictor.predict(np.zeros((1, len(tiny_model.known_genes)), np.float32))
    mean = predictor.sizes @ predictor.targets / predictor.sizes.sum()
    np.testing.assert_allclose(zero[0], mean, rtol=1e-4, atol=1e-5)


def test_the_transport_never_holds_a_cells_by_cells_matrix(tiny_model, monkeypatch):
    """Its potentials are learnt on at most LANDMARKS ST cells against the profiles, and a
    chunk's plan is chunk x profiles: memory is bounded whatever the number of ST cells."""
    monkeypatch.setattr(transport_module, "LANDMARKS", 64)
    reference, _ = _reference(tiny_model)
    predictor = TransportMapping.from_config(tiny_model.config)
    predictor.fit(reference, seed=0)
    n_profiles = len(predictor.profiles)
    shapes = []
    real_exp = np.exp

    def recording_exp(x, *args, **kwargs):
        shapes.append(np.shape(x))
        return real_exp(x, *args, **kwargs)

    monkeypatch.setattr(transport_module.np, "exp", recording_exp)
    st = np.abs(np.random.default_rng(5).normal(2, 1, size=(3000, len(tiny_model.known_genes))))
    predictor.prepare(lambda: (st[s:s + 500] for s in range(0, 3000, 500)))
    assert shapes and all(s[0] <= 64 and s[1] == n_profiles for s in shapes if len(s) == 2)


def test_the_spage_predictor_agrees_with_the_spage_baseline(tiny_pair):
    """The library's SpaGE-style projection and the benchmark's SpaGE-style baseline implement
    the same method (z-scores per data set, PRECISE principal vectors, cosine neighbours)."""
    from spalstf.evaluate.baselines import spage

    st, sc = tiny_pair
    known = list(st.var_names)[:14]
    targets = list(st.var_names)[14:]
    model = spalstf.fit(sc, known, targets, seed=0, progress=False,
                        config={"predictors": ("ridge", "spage"), "knn_neighbors": 20})
    source = ColumnSource(model, as_expression(st, arg="st"), known,
                          model.config.replace(expression_weight=0.0),
                          ["spage|raw|expression"], log_normalized=False, spatial=False,
                          seed=0, device=model.device)
    mine = source.predict(np.arange(st.n_obs))["spage|raw|expression"]
    theirs = spage(st[:, known], sc, targets, k=20)
    r = np.nanmedian(metrics.pcc(theirs, mine))
    assert r > 0.9, r


def test_impute_combines_by_the_learnt_stack_with_intervals(tiny_pair):
    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:6]
    out = spalstf.impute(st, sc, genes, seed=0, **FAST)
    info = out.uns["spalstf"]
    assert info["combination"]["kind"] == "stack"
    weights = info["self_check"]["weights"]
    assert weights and sum(weights.values()) == pytest.approx(1, abs=1e-6)
    assert set(weights) == set(info["combination"]["weights"])
    lower, upper = out.layers["lower"], out.layers["upper"]
    # counts input: the count model's interval (what the ST would measure: it may be [0, 0]
    # where a count is almost surely 0, so it need not hold the mean X)
    assert "counts" in info["combination"]
    assert (lower <= upper).all() and (lower >= 0).all() and (upper > 0).any()
    assert (out.layers["std"] >= 0).all()
    # the scores table lists every candidate column and its weight
    cand = info["self_check"]["candidates"]
    assert set(weights) <= set(cand["column"])
    assert np.isclose(sum(cand["weight"]), 1)


def test_without_a_self_check_the_fixed_blend_is_used(tiny_pair):
    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:4]
    out = spalstf.impute(st, sc, genes, seed=0, self_check=False, **FAST)
    assert out.uns["spalstf"]["combination"]["kind"] == "blend"
    assert "lower" not in out.layers


def test_a_model_adopts_the_stack_its_self_check_learns_and_keeps_it(tiny_pair, tmp_path):
    st, sc = tiny_pair
    known = list(st.var_names)
    targets = list(st.obsm["truth"].columns)[:5]
    model = spalstf.fit(sc, known, targets, seed=0, **FAST)
    assert model.stack is None
    check = model.self_check(st, sc, seed=0, progress=False)
    assert model.stack is check.stack and check.weights
    first = model.impute(st, seed=0, progress=False)
    assert first.uns["spalstf"]["combination"]["kind"] == "stack"
    model.save(tmp_path / "m")
    again = spalstf.load(tmp_path / "m", device="cpu").impute(st, seed=0, progress=False)
    np.testing.assert_array_equal(again.X, first.X)
    np.testing.assert_array_equal(again.layers["upper"], first.layers["upper"])
    blend = model.impute(st, seed=0, progress=False, combine="blend")
    assert blend.uns["spalstf"]["combination"]["kind"] == "blend"
    assert not np.array_equal(blend.X, first.X)
    other = spalstf.fit(sc, known, targets, seed=0, **FAST)
    kept = other.self_check(st, sc, seed=0, progress=False, adopt=False)
    assert other.stack is None and kept.stack is not None


def test_a_model_without_the_network_trains_nothing_and_still_imputes(tiny_pair, tmp_path):
    st, sc = tiny_pair
    targets = list(st.obsm["truth"].columns)[:4]
    preds = ("ridge", "knn", "spage")
    model = spalstf.fit(sc, list(st.var_names), targets, seed=0,
                        config={"predictors": preds}, progress=False)
    assert model.network is None and model.history == []
    assert set(model.predictors) == {"ridge", "knn", "spage"}
    assert all(c.split("|")[0] in preds for c in candidate_columns(
        model, model.config, ["raw"], ["expression"]))
    out = spalstf.impute(st, sc, targets, seed=0, progress=False, config={"predictors": preds})
    assert not any(c.startswith("network|") for c in out.uns["spalstf"]["self_check"]["weights"])
    with pytest.raises(ValueError, match="`checkpoint` and `resume`"):
        spalstf.fit(sc, list(st.var_names), targets, config={"predictors": preds},
                    checkpoint=str(tmp_path / "fit.ckpt"), progress=False)


@pytest.mark.parametrize(("value", "error"), [
    (("ridge", "magic"), "`predictors` must be"), ((), "`predictors` must be"),
    (("ridge", "ridge"), "`predictors` must be"), ("ridge", "`predictors` must be")])
def test_bad_predictor_lists_are_refused(value, error):
    with pytest.raises(ValueError, match=error):
        spalstf.Config(predictors=value).validate()


def test_the_self_check_estimate_is_cross_fitted(tiny_pair, monkeypatch):
    """Each fold's hidden genes are combined with the weights learnt on the other folds: the
    weights seen while scoring fold 0 never come from fold 0's own genes."""
    from spalstf.combine import expected
    from spalstf.combine import stack as stack_module

    seen = []
    real = stack_module.learn_weights

    def recording(predictions, truth):
        seen.append(truth.shape[1])
        return real(predictions, truth)

    monkeypatch.setattr(stack_module, "learn_weights", recording)
    st, sc = tiny_pair
    out = spalstf.impute(st, sc, list(st.obsm["truth"].columns)[:3], seed=0,
                         self_check_folds=2, **FAST)
    n = out.uns["spalstf"]["self_check"]["n_genes"]
    folds = expected.inner_folds(list(st.var_names), 2, 0)
    # all genes once (the stack used), then each fold's complement once
    assert seen[0] == n and sorted(seen[1:]) == sorted(n - len(f) for f in folds)
