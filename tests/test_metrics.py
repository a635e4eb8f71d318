"""Per-gene metrics against hand-computed values and edge cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial.distance import jensenshannon
from scipy.stats import pearsonr, spearmanr

from spalstf.evaluate import metrics as M

C1, C2 = 1e-4, 9e-4
C3 = C2 / 2


def col(*v: float) -> np.ndarray:
    return np.asarray(v, dtype=float)[:, None]


# ---------------------------------------------------------------- hand-computed values


def test_pcc_hand_computed() -> None:
    # t centred (-1, 0, 1); p = (2, 4, 7) centred (-7/3, -1/3, 8/3); sum of products 5.
    expected = 5 / (math.sqrt(2) * math.sqrt(114) / 3)
    assert M.pcc(col(1, 2, 3), col(2, 4, 7))[0] == pytest.approx(expected, abs=1e-12)
    assert M.pcc(col(1, 2, 3), col(3, 2, 1))[0] == pytest.approx(-1.0)


def test_spcc_ties_get_average_ranks() -> None:
    # ranks (1.5, 1.5, 3, 4) vs (1, 2, 3, 4)
    r1 = np.array([1.5, 1.5, 3, 4])
    r2 = np.array([1.0, 2, 3, 4])
    expected = np.corrcoef(r1, r2)[0, 1]
    assert M.spcc(col(1, 1, 2, 3), col(1, 2, 3, 4))[0] == pytest.approx(expected, abs=1e-12)
    # monotone but non-linear gives 1 for Spearman, less than 1 for Pearson
    assert M.spcc(col(1, 2, 3, 4), col(1, 10, 100, 1000))[0] == pytest.approx(1.0)
    assert M.pcc(col(1, 2, 3, 4), col(1, 10, 100, 1000))[0] < 0.9


def test_ssim_hand_computed() -> None:
    # truth (1, 2) -> (0.5, 1); pred (1, 0) -> (1, 0)
    mu_t, mu_p, s_t, s_p, s_tp = 0.75, 0.5, 0.25, 0.5, -0.125
    lum = (2 * mu_t * mu_p + C1) / (mu_t**2 + mu_p**2 + C1)
    con = (2 * s_t * s_p + C2) / (s_t**2 + s_p**2 + C2)
    stru = (s_tp + C3) / (s_t * s_p + C3)
    assert M.ssim(col(1, 2), col(1, 0))[0] == pytest.approx(lum * con * stru, abs=1e-12)
    # max-scaling makes SSIM blind to the scale of a gene
    assert M.ssim(col(0, 1, 3), col(0, 10, 30))[0] == pytest.approx(1.0)


def test_ssim_constant_prediction_is_small_but_finite() -> None:
    t = col(0, 1, 2, 3)  # scaled (0, 1/3, 2/3, 1)
    p = col(5, 5, 5, 5)  # scaled all ones
    tt = np.array([0, 1 / 3, 2 / 3, 1])
    mu, s = tt.mean(), tt.std()
    expected = (2 * mu + C1) / (mu**2 + 1 + C1) * C2 / (s**2 + C2) * 1.0
    assert M.ssim(t, p)[0] == pytest.approx(expected, abs=1e-12)


def test_rmse_hand_computed() -> None:
    assert M.rmse(col(1, 2, 3), col(3, 2, 1))[0] == pytest.approx(2.0)
    assert M.rmse(col(1, 2, 3), col(10, 20, 30))[0] == pytest.approx(0.0, abs=1e-12)
    # z-scores (-1, -1, 1, 1) and (-1, 1, -1, 1): squared differences (0, 4, 4, 0)
    assert M.rmse(col(0, 0, 1, 1), col(0, 1, 0, 1))[0] == pytest.approx(math.sqrt(2))


def test_js_hand_computed() -> None:
    assert M.js(col(1, 0), col(0, 1))[0] == pytest.approx(math.log(2))
    assert M.js(col(1, 2, 3), col(2, 4, 6))[0] == pytest.approx(0.0, abs=1e-12)
    p, q = np.array([0.5, 0.5]), np.array([1.0, 0.0])
    m = (p + q) / 2
    expected = 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)) + 0.5 * math.log(
        1 / 0.75
    )
    assert M.js(col(1, 1), col(1, 0))[0] == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(jensenshannon(p, q) ** 2)
    assert m.sum() == pytest.approx(1.0)


def test_metrics_agree_with_scipy_on_random_data() -> None:
    rng = np.random.default_rng(0)
    t = rng.poisson(2.0, size=(50, 4)).astype(float)
    p = t + rng.normal(0, 1, size=t.shape) ** 2
    for j in range(4):
        assert M.pcc(t, p)[j] == pytest.approx(pearsonr(t[:, j], p[:, j])[0], abs=1e-10)
        assert M.spcc(t, p)[j] == pytest.approx(spearmanr(t[:, j], p[:, j])[0], abs=1e-10)
        assert M.js(t, p)[j] == pytest.approx(jensenshannon(t[:, j], p[:, j]) ** 2, abs=1e-10)


# ---------------------------------------------------------------- edge cases


def test_constant_gives_nan_correlation() -> None:
    t = np.c_[[1, 2, 3], [1, 2, 3]]
    p = np.c_[[4, 4, 4], [1, 3, 2]]
    assert np.isnan(M.pcc(t, p)[0]) and np.isnan(M.spcc(t, p)[0])
    assert np.isfinite(M.pcc(t, p)[1])
    # constant prediction: z-scores to zero, RMSE 1 (not the sqrt(2) rounding artefact)
    assert M.rmse(t, p)[0] == pytest.approx(1.0)
    # a constant stored as float sums with rounding error is still constant
    q = np.full((3, 1), 0.1 + 0.2)
    assert np.isnan(M.pcc(col(1, 2, 3), q)[0])
    assert M.rmse(col(1, 2, 3), q)[0] == pytest.approx(1.0)


def test_zero_columns() -> None:
    t = np.zeros((4, 1))
    p = col(0, 1, 2, 3)
    assert np.isnan(M.pcc(t, p)[0])
    assert np.isnan(M.js(t, p)[0]) and np.isnan(M.js(p, t)[0])
    s = M.ssim(t, p)[0]
    assert np.isfinite(s) and abs(s) < 0.05
    assert M.ssim(t, t)[0] == pytest.approx(1.0)


def test_one_cell() -> None:
    t, p = np.array([[1.0, 2.0]]), np.array([[3.0, 0.0]])
    assert np.isnan(M.pcc(t, p)).all() and np.isnan(M.spcc(t, p)).all()
    assert np.isnan(M.rmse(t, p)).all()
    assert M.ssim(t, p)[0] == pytest.approx(1.0)  # both scale to 1
    assert M.js(t, p)[0] == pytest.approx(0.0)
    assert np.isnan(M.js(t, p)[1])


def test_negative_values_make_js_nan_with_warning() -> None:
    with pytest.warns(RuntimeWarning, match="negative"):
        out = M.js(col(1, 2, 3), col(-1, 2, 3))
    assert np.isnan(out[0])


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(3, 1\).*\(2, 1\)"):
        M.pcc(col(1, 2, 3), col(1, 2))


def test_input_types_and_inputs_not_modified() -> None:
    rng = np.random.default_rng(1)
    t = rng.poisson(3, size=(20, 3)).astype(float)
    p = rng.poisson(3, size=(20, 3)).astype(float)
    t0, p0 = t.copy(), p.copy()
    ref = M.score_genes(t, p)
    df = M.score_genes(pd.DataFrame(t, columns=list("abc")), sp.csr_matrix(p))
    np.testing.assert_allclose(ref.to_numpy(), df.to_numpy())
    assert list(df.index) == ["a", "b", "c"]
    np.testing.assert_array_equal(t, t0)
    np.testing.assert_array_equal(p, p0)


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float64, (12, 2), elements=st.floats(0, 100, allow_nan=False)),
    arrays(np.float64, (12, 2), elements=st.floats(0, 100, allow_nan=False)),
)
def test_metric_ranges(t: np.ndarray, p: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = M.score_genes(t, p)
    for name, lo, hi in [
        ("pcc", -1, 1),
        ("spcc", -1, 1),
        ("ssim", -1, 1),
        ("rmse", 0, 2),
        ("js", 0, math.log(2)),
    ]:
        v = s[name].dropna().to_numpy()
        assert ((v >= lo - 1e-9) & (v <= hi + 1e-9)).all(), name
    # symmetry of correlations and JS
    s2 = M.score_genes(p, t)
    for name in ("pcc", "spcc", "js", "rmse"):
        np.testing.assert_allclose(s[name], s2[name], equal_nan=True, atol=1e-9)


# ---------------------------------------------------------------- summaries and AS


def test_summarize_counts_nan_and_skips_them() -> None:
    per_gene = pd.DataFrame(
        {
            "method": ["a", "a", "a", "b", "b", "b"],
            "pcc": [0.1, np.nan, 0.5, 0.2, 0.4, 0.9],
            "ssim": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        }
    )
    s = M.summarize(per_gene)
    assert s.loc["a", "pcc_n_nan"] == 1 and s.loc["b", "pcc_n_nan"] == 0
    assert s.loc["a", "pcc_median"] == pytest.approx(0.3)
    assert s.loc["b", "pcc_mean"] == pytest.approx(0.5)
    assert s.loc["a", "n_genes"] == 3
    assert list(s.index) == ["a", "b"]


def test_accuracy_score_hand_computed() -> None:
    scores = {
        "x": {"pcc": 0.5, "ssim": 0.3, "rmse": 1.0, "js": 0.2},
        "y": {"pcc": 0.4, "ssim": 0.3, "rmse": 1.2, "js": 0.1},
        "z": {"pcc": 0.1, "ssim": 0.1, "rmse": 1.4, "js": 0.3},
    }
    a = M.accuracy_score(scores)
    # x: pcc 3, ssim 2.5 (tie), rmse 3, js 2 -> 10.5 / 12
    assert a["x"] == pytest.approx(10.5 / 12)
    assert a["y"] == pytest.approx((2 + 2.5 + 2 + 3) / 12)
    assert a["z"] == pytest.approx(4 / 12)
    assert list(a.index) == ["x", "y", "z"]


def test_accuracy_score_rejects_nan() -> None:
    with pytest.raises(ValueError, match="pcc"):
        M.accuracy_score({"x": {"pcc": np.nan, "ssim": 0, "rmse": 1, "js": 0}})


# ---------------------------------------------------------------- clustering


def test_clustering_scores_blobs() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 8, size=(3, 10))
    x = np.vstack([c + rng.normal(0, 1, size=(40, 10)) for c in centres])
    s = M.clustering_scores(x, x.copy())
    assert s["ari"] == pytest.approx(1.0)
    assert s["nmi"] == pytest.approx(1.0)
    noise = rng.normal(size=x.shape)
    s2 = M.clustering_scores(x, noise)
    assert s2["ari"] < 0.3
    with pytest.raises(ValueError, match="120"):
        M.clustering_scores(x, x[:5])


def test_leiden_clusters_are_scanpys() -> None:
    # The labels are those a scanpy user gets with the documented calls, so the clustering
    # scores can be reproduced (and extended) in scanpy.
    import anndata as ad
    import scanpy as sc

    rng = np.random.default_rng(3)
    centres = rng.normal(0, 2, size=(4, 12))
    x = np.vstack([c + rng.normal(0, 1.5, size=(60, 12)) for c in centres])
    x0 = x.copy()
    labels = M.leiden_clusters(x, n_pcs=5, n_neighbors=15, resolution=0.8, seed=4)
    np.testing.assert_array_equal(x, x0)  # input untouched
    a = ad.AnnData(x.astype(np.float32))
    sc.pp.pca(a, n_comps=5, svd_solver="arpack", random_state=4)
    sc.pp.neighbors(a, n_neighbors=15, use_rep="X_pca", transformer="sklearn", random_state=4)
    sc.tl.leiden(a, resolution=0.8, flavor="igraph", n_iterations=2, directed=False,
                 random_state=4)
    np.testing.assert_array_equal(labels, a.obs["leiden"].astype(int).to_numpy())
    assert labels.min() == 0 and len(np.unique(labels)) == labels.max() + 1
    # the same seed gives the same labels; the seed reaches Leiden
    np.testing.assert_array_equal(
        labels, M.leiden_clusters(x, n_pcs=5, n_neighbors=15, resolution=0.8, seed=4)
    )
    noise = rng.normal(size=(200, 12))  # no structure: the partition depends on the seed
    a, b = (M.leiden_clusters(noise, n_neighbors=15, seed=s) for s in (0, 1))
    assert not np.array_equal(a, b)


def test_leiden_clusters_leave_torch_threads_alone() -> None:
    # numba's threading layer, started by a process's first neighbour graph, set OpenMP's
    # (and so torch's) thread count to every core over OMP_NUM_THREADS=1; run in a fresh
    # process, where that first graph is leiden_clusters'
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np, torch\n"
        "from spalstf.evaluate.metrics import leiden_clusters\n"
        "leiden_clusters(np.random.default_rng(0).normal(size=(120, 6)), n_neighbors=10)\n"
        "print(torch.get_num_threads())\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"}
    env.pop("SPALSTF_NUM_THREADS", None)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "1"


def test_leiden_clusters_degenerate_inputs() -> None:
    rng = np.random.default_rng(0)
    assert (M.leiden_clusters(np.ones((50, 4))) == 0).all()  # constant prediction: one cluster
    assert (M.leiden_clusters(rng.normal(size=(2, 4))) == 0).all()  # too few cells
    one_gene = np.r_[rng.normal(0, 0.1, 40), rng.normal(5, 0.1, 40)][:, None]
    labels = M.leiden_clusters(one_gene, n_neighbors=10)  # no PCA on one gene
    assert labels.shape == (80,) and len(np.unique(labels)) >= 2
    assert set(labels[:40]).isdisjoint(labels[40:])  # the two groups never share a cluster
