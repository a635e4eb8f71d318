"""The count model of the interval (spalstf.combine.intervals) and its place in the stack."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import FAST

import spalstf
from spalstf.combine import intervals
from spalstf.combine.intervals import CountInterval
from spalstf.combine.stack import Stack

SCALE = 1e4


def draw(n_cells=3000, n_genes=20, *, a=2.0, theta=3.0, seed=0):
    """Predictions m, depths D and counts X ~ NB(a expm1(m) D / s, theta)."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(0.0, 4.0, (n_cells, n_genes))
    depth = rng.uniform(50, 500, (n_cells, 1))
    mu = a * np.expm1(m) * depth / SCALE
    counts = rng.poisson(rng.gamma(theta, mu / theta)).astype(np.float64)
    spread = rng.uniform(0.1, 0.5, m.shape)
    return counts, depth, m, spread


def truth_of(counts, depth):
    return np.log1p(counts * SCALE / depth)


def test_the_fit_recovers_a_known_mean_scale_and_dispersion():
    counts, depth, m, spread = draw(a=2.0, theta=3.0)
    model = intervals.fit(counts, depth, m, spread, level=0.9, n_strata=1)
    assert model.a[0] == pytest.approx(2.0, rel=0.1)
    assert model.theta[0] == pytest.approx(3.0, rel=0.25)
    assert model.b[0] < 0.02 * model.a[0] * np.expm1(m).mean()  # b: a small floor


def test_intervals_collapse_where_a_count_is_almost_surely_zero_and_widen_with_it():
    counts, depth, m, spread = draw()
    model = intervals.fit(counts, depth, m, spread, level=0.9)
    cells = np.array([[0.0], [0.5], [2.0], [4.0], [6.0]])
    lower, upper = model.interval(cells, np.full_like(cells, 0.3), np.full_like(cells, 100.0))
    assert lower[0, 0] == 0 and upper[0, 0] == 0  # m = 0 at depth 100: a count of 0
    width = (upper - lower).ravel()
    assert (np.diff(upper.ravel()) >= 0).all() and width[-1] > width[1]
    # a shallow cell: one count is a large value; a tiny expected count stays [0, 0]
    lo, hi = model.interval(np.array([[0.05]]), np.array([[0.3]]), np.array([[20.0]]))
    assert lo[0, 0] == 0 and hi[0, 0] == 0


def test_coverage_on_held_out_values_is_near_the_level():
    model = intervals.fit(*draw(seed=1), level=0.9)
    counts, depth, m, spread = draw(seed=2)
    lower, upper = model.interval(m, spread, depth)
    truth = truth_of(counts, depth)
    covered = ((truth >= lower) & (truth <= upper)).mean()
    assert 0.87 <= covered <= 0.93, covered
    # a value equal to a bound counts as covered (the bounds are counts' own values)
    assert ((truth == 0) & (lower == 0)).any()


def test_a_cell_without_known_counts_gets_zero():
    model = intervals.fit(*draw(), level=0.9)
    lower, upper = model.interval(np.array([[3.0]]), np.array([[0.3]]), np.array([[0.0]]))
    assert lower[0, 0] == 0 and upper[0, 0] == 0


def test_nothing_to_learn_gives_none():
    counts, depth, m, spread = draw(n_cells=100, n_genes=2)
    assert intervals.fit(np.zeros_like(counts), depth, m, spread, level=0.9) is None
    with pytest.raises(ValueError):
        intervals.fit(counts, depth, m, spread, level=1.2)


def test_a_saved_and_loaded_stack_gives_identical_intervals():
    counts, depth, m, spread = draw()
    stack = Stack({"ridge|raw|expression": 0.6, "knn|raw|expression": 0.4})
    stack.calibrate(truth_of(counts, depth), m, spread, level=0.9)
    stack.calibrate_counts(counts, depth, m, spread=spread, level=0.9, scale_factor=SCALE)
    assert stack.counts is not None
    loaded = Stack.from_dict(json.loads(json.dumps(stack.to_dict())))
    for a, b in zip(stack.interval(m, spread, depth), loaded.interval(m, spread, depth),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    # a model saved before the count interval: read, with the normalised interval alone
    old = {k: v for k, v in stack.to_dict().items() if k != "counts"}
    before = Stack.from_dict(old)
    assert before.counts is None
    np.testing.assert_array_equal(before.interval(m, spread, depth)[1],
                                  stack.interval(m, spread)[1])
    with pytest.raises(ValueError):
        Stack.from_dict({**stack.to_dict(), "counts": [1, 2]})
    with pytest.raises(ValueError):
        CountInterval.from_dict({"a": [1.0]})


def test_without_depths_the_normalised_conformal_interval_is_kept():
    counts, depth, m, spread = draw()
    stack = Stack({"ridge|raw|expression": 1.0})
    stack.calibrate(truth_of(counts, depth), m, spread, level=0.9)
    stack.calibrate_counts(counts, depth, m, spread=spread, level=0.9, scale_factor=SCALE)
    lower, upper = stack.interval(m.astype(np.float32), spread.astype(np.float32))
    half = stack.quantile * (spread + stack.offset + 1e-6)
    np.testing.assert_allclose(upper, m + half, rtol=1e-5)
    assert (lower <= m + 1e-6).all()


def test_log_normalized_input_falls_back_to_the_normalised_interval(tiny_pair):
    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:4]

    def lognorm(data):
        out = data.copy()
        total = np.asarray(out.X.sum(axis=1)).reshape(-1, 1)
        out.X = np.log1p(np.asarray(out.X) / np.maximum(total, 1) * SCALE).astype(np.float32)
        return out

    out = spalstf.impute(lognorm(st), lognorm(sc), genes, seed=0, log_normalized=True, **FAST)
    combination = out.uns["spalstf"]["combination"]
    assert combination["kind"] == "stack" and "counts" not in combination
    lower, upper = out.layers["lower"], out.layers["upper"]
    assert (lower <= out.X + 1e-6).all() and (out.X <= upper + 1e-6).all()


def test_with_counts_the_self_check_keeps_the_count_model_even_where_the_other_scores_better():
    from spalstf.combine.selfcheck import InnerPredictions, learn

    counts, depth, m, spread = draw(n_cells=1500, n_genes=12)
    rng = np.random.default_rng(1)
    columns = {"ridge|raw|expression": (m + rng.normal(0, 0.3, m.shape)).astype(np.float32),
               "knn|raw|expression": (m + rng.normal(0, 0.3, m.shape)).astype(np.float32)}
    # the hidden genes' own truth is the prediction itself: a band around the value scores
    # far better there than the count model, which was once kept only where it scored better
    inner = InnerPredictions(columns=columns, truth=m, own_truth=m, genes=[f"g{i}" for i in
                             range(12)], fold_of=np.arange(12) % 3,
                             reference_pcc=np.full(12, 0.5), cells=np.arange(len(m)),
                             counts=counts, depth=depth * np.ones_like(m), scale_factor=SCALE)
    stack = learn(inner, level=0.9).stack
    assert stack.counts is not None and "interval_scores" not in stack.to_dict()
    # log-normalised input (no counts): the normalised interval alone
    plain = learn(dataclasses.replace(inner, counts=None, depth=None), level=0.9).stack
    assert plain.counts is None and np.isfinite(plain.quantile)


def test_a_model_saved_with_the_normalised_interval_chosen_behaves_as_before():
    # models saved while the self-check chose between the two intervals hold the scores and,
    # where the normalised one won, no count model: they load and give the normalised interval
    counts, depth, m, spread = draw()
    stack = Stack({"ridge|raw|expression": 1.0})
    stack.calibrate(truth_of(counts, depth), m, spread, level=0.9)
    saved = {**stack.to_dict(), "interval_scores": {"normalised": 1.0, "counts": 2.0}}
    loaded = Stack.from_dict(json.loads(json.dumps(saved)))
    assert loaded.counts is None and loaded.scores == {"normalised": 1.0, "counts": 2.0}
    for a, b in zip(loaded.interval(m, spread, depth), stack.interval(m, spread), strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded.to_dict() == saved
