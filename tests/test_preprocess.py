"""From counts to the model's space and back: the expected measurement at a cell's depth."""

import numpy as np
from scipy.stats import poisson

from spalstf.preprocess import Standardizer, expected_at_depth


def brute_force(values, depth, scale_factor=1e4):
    """E[log1p(K / depth * scale)] for K ~ Poisson(depth * expm1(values) / scale), summed over
    every count that carries probability, one entry at a time."""
    out = np.zeros(values.shape)
    for idx in np.ndindex(values.shape):
        d = depth[idx[-2]]
        if d <= 0:
            continue
        lam = d * np.expm1(values[idx]) / scale_factor
        ks = np.arange(int(lam + 20 * np.sqrt(lam) + 30))
        out[idx] = (poisson.pmf(ks, lam) * np.log1p(ks / d * scale_factor)).sum()
    return out


def test_the_expected_measurement_matches_the_poisson_sum():
    rng = np.random.default_rng(0)
    # means from far below one count to hundreds (every band and the delta method above them)
    values = rng.uniform(0, 9, size=(2, 30, 12)).astype(np.float32)
    depth = np.concatenate([[0.0, 3.0], rng.uniform(10, 20000, 28)])
    out = expected_at_depth(values, depth)
    assert out.shape == values.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, brute_force(values.astype(np.float64), depth), atol=1e-3)
    assert (out[:, 0] == 0).all()  # a cell without counts measures nothing


def test_shallow_cells_measure_less_and_deep_cells_approach_the_expression():
    values = np.full((4, 1), 2.0, dtype=np.float32)
    depth = np.array([10.0, 100.0, 1e4, 1e7])
    out = expected_at_depth(values, depth)[:, 0]
    assert (np.diff(out) > 0).all()  # deeper: closer to the expression, from below
    assert out[0] < 0.1 and abs(out[-1] - 2.0) < 1e-3


def test_standardizer_from_blocks_keeps_the_variance_of_values_far_from_zero():
    # one pass over uneven blocks: a running sum of squares would lose the 1e-3 spread of values
    # near 1e5 to rounding; merging each block's own deviations keeps it
    rng = np.random.default_rng(0)
    values = 1e5 + rng.normal(0.0, 1e-3, size=(1000, 3))
    values[:, 2] = 7.0  # no variance: unit scale
    sizes = [1, 250, 0, 499, 250]
    edges = np.cumsum([0] + sizes)
    fitted = Standardizer.fit_blocks(lambda: ((None, values[a:b])
                                              for a, b in zip(edges[:-1], edges[1:], strict=True)))
    whole = Standardizer.fit(values)
    np.testing.assert_allclose(fitted.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(fitted.std, whole.std, rtol=1e-4)
    assert fitted.std[2] == 1.0
    np.testing.assert_allclose(fitted.low, whole.low, rtol=1e-4)
    np.testing.assert_allclose(fitted.high, whole.high, rtol=1e-4)
