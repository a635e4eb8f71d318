"""The counts-scale output: `layers["counts"]` puts the imputed values back on the ST's count
scale at each cell's own depth (`obs["spalstf_depth"]`, its total over the known genes), the
scale on which Li et al. 2022's tables score; with log-normalised input there is no depth and
neither is written."""

from __future__ import annotations

import anndata as ad
import numpy as np
from conftest import FAST, as_counts

import spalstf
from spalstf.config import DEFAULT_PREDICTORS
from spalstf.preprocess import counts_at_depth

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
    expected = np.expm1(out.X.astype(np.float64)) * depth[:, None] / 1e4
    np.testing.assert_allclose(out.layers["counts"], expected, rtol=1e-5, atol=1e-6)
    # deeper cells get more counts for the same value: the depth, not a constant, is used
    assert np.ptp(depth) > 0 and out.layers["counts"].dtype == np.float32


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
