"""The counts-scale output: `layers["counts"]` puts the imputed values back on the ST's count
scale at each cell's own depth (`obs["spalstf_depth"]`, its total over the known genes), the
scale on which Li et al. 2022's tables score: the expected count, the Poisson mean whose
expected measurement the learnt combination's value is; with log-normalised input there is no
depth and neither is written."""

from __future__ import annotations

import anndata as ad
import numpy as np
from conftest import FAST, as_counts

import spalstf
from spalstf.config import DEFAULT_PREDICTORS
from spalstf.preprocess import counts_at_depth, expected_at_depth, expected_count_at_depth

DEFAULT = {**FAST, "predictors": DEFAULT_PREDICTORS}


def _targets(st):
    return list(st.obsm["truth"].columns)[:4]


def test_counts_layer_is_the_values_at_each_cells_known_gene_depth(tiny_pair):
    st, sc = tiny_pair
    before = as_counts(st.X).copy()
    out = spalstf.impute(st, sc, _targets(st), seed=0, **DEFAULT)
    np.testing.assert_array_equal(as_counts(st.X), before)  # the input is left as it was
    known = [g for g in st.var_names if g in set(sc.var_names)]
    depth = as_counts(st[:, known].X).sum(axis=1)
    np.testing.assert_allclose(out.obs["spalstf_depth"].to_numpy(), depth)
    counts = out.layers["counts"]
    assert np.ptp(depth) > 0 and counts.dtype == np.float32
    # the learnt combination predicts what the ST measures: the counts are the Poisson means
    # whose expected measurement at each cell's depth is X
    measured = expected_at_depth(np.log1p(counts / depth[:, None] * 1e4), depth)
    np.testing.assert_allclose(measured, out.X, rtol=3e-3, atol=3e-3)
    np.testing.assert_array_equal(counts, expected_count_at_depth(out.X, depth))
    # a measured value stands for a larger mean than expm1(X) x depth where counts are few
    naive = counts_at_depth(out.X, depth)
    assert (counts >= naive * (1 - 1e-5)).all() and (counts > naive * 1.01).any()


def test_the_blend_of_the_expression_gives_its_counts(tiny_pair):
    st, sc = tiny_pair
    out = spalstf.impute(st, sc, _targets(st), seed=0, self_check=False, **DEFAULT)
    depth = out.obs["spalstf_depth"].to_numpy()
    np.testing.assert_allclose(out.layers["counts"], counts_at_depth(out.X, depth),
                               rtol=1e-5, atol=1e-6)


def test_expected_count_at_depth_inverts_expected_at_depth(monkeypatch):
    rng = np.random.default_rng(0)
    depth = np.concatenate([[0.0, 1.0, 3.0, 1e5], rng.integers(1, 5000, 3000)]).astype(float)
    mean = np.exp(rng.uniform(np.log(1e-6), np.log(2000), (len(depth), 30)))
    per_count = 1e4 / np.where(depth > 0, depth, 1)[:, None]
    measured = expected_at_depth(np.log1p(mean * per_count), depth)
    back = expected_count_at_depth(measured, depth)
    assert back.dtype == np.float32 and (back[0] == 0).all()  # depth 0: no counts
    rel = np.abs(back[1:] - mean[1:]) / mean[1:]
    assert np.quantile(rel, 0.99) < 2e-3 and rel.max() < 5e-3, rel.max()
    # with many counts the measurement is the expression: the plain transform agrees
    deep = mean[3] > 100
    np.testing.assert_allclose(back[3][deep], counts_at_depth(measured[3:4], depth[3:4])[0][deep],
                               rtol=1e-2)
    # in blocks of cells (each with its own table of depths): the same values
    import spalstf.preprocess

    monkeypatch.setattr(spalstf.preprocess, "_COUNT_BLOCK", 256)
    np.testing.assert_array_equal(expected_count_at_depth(measured, depth), back)


def test_streamed_file_holds_the_same_counts(tiny_pair, tmp_path):
    st, sc = tiny_pair
    memory = spalstf.impute(st, sc, _targets(st), seed=0, **DEFAULT)
    path = spalstf.impute(st, sc, _targets(st), seed=0, out=tmp_path / "o.h5ad", **DEFAULT)
    written = ad.read_h5ad(path)
    np.testing.assert_array_equal(written.layers["counts"], memory.layers["counts"])
    np.testing.assert_array_equal(written.obs["spalstf_depth"], memory.obs["spalstf_depth"])


def test_log_normalised_input_has_no_depth_and_no_counts(tiny_pair, tiny_model):
    st, _ = tiny_pair
    lognorm = st.copy()
    x = as_counts(st.X).astype(np.float64)
    lognorm.X = np.log1p(x / np.maximum(x.sum(axis=1, keepdims=True), 1) * 1e4)
    out = tiny_model.impute(lognorm, log_normalized=True, progress=False)
    assert "counts" in tiny_model.impute(st, progress=False).layers  # the same model, counts
    assert "counts" not in out.layers and "spalstf_depth" not in out.obs


def test_counts_at_depth_overflows_to_inf_not_nan():
    values = np.array([[0.0, np.log1p(1e4), 800.0]], np.float32)
    out = counts_at_depth(values, np.array([10.0]), scale_factor=1e4)
    assert out[0, 0] == 0 and np.isclose(out[0, 1], 10.0) and np.isinf(out[0, 2])
