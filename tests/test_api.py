"""The public contract of spalstf.impute / fit / Model / load."""

import copy
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import FAST, as_counts

import spalstf
from spalstf.preprocess import expected_at_depth
from spalstf.prior import AlignedNeighbours


def test_impute_returns_a_new_anndata_with_the_documented_slots(tiny_pair):
    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:5][::-1]  # a requested order, not the reference's
    out = spalstf.impute(st, sc, genes, seed=1, **FAST)
    assert out is not st
    assert list(out.obs_names) == list(st.obs_names)
    assert list(out.var_names) == genes
    assert out.X.dtype == np.float32 and out.X.shape == (st.n_obs, 5)
    assert np.all(out.X >= 0) and np.all(np.isfinite(out.X))
    assert out.layers["std"].shape == out.X.shape and np.all(out.layers["std"] >= 0)
    # obs copied, with each cell's known-gene depth beside it (raw-counts input)
    pd.testing.assert_frame_equal(out.obs.drop(columns="spalstf_depth"), st.obs)
    assert out.layers["counts"].shape == out.X.shape
    np.testing.assert_array_equal(out.obsm["spatial"], st.obsm["spatial"])
    info = out.uns["spalstf"]
    assert info["version"] == spalstf.__version__ and info["seed"] == 1
    assert info["known_genes"] == list(st.var_names) and info["target_genes"] == genes
    assert info["timings"]["fit_seconds"] > 0 and info["timings"]["impute_seconds"] > 0
    assert info["params"]["n_samples"] == 2


def test_output_is_on_the_log_normalised_scale(tiny_pair):
    """Imputations are bounded by the reference's log-normalised range, never the model space."""
    st, sc = tiny_pair
    out = spalstf.impute(st, sc, **FAST)
    known = list(st.var_names)
    ref = sc[:, known].X.sum(1, keepdims=True)
    ref_log = np.log1p(sc[:, list(out.var_names)].X / np.maximum(ref, 1) * 1e4)
    assert out.X.max() <= ref_log.max() + 1e-4
    assert out.X.mean() > 0.1  # not z-scores around 0


@pytest.mark.parametrize("kind", ["numpy", "csr", "csc", "dataframe", "layer"])
def test_every_input_type_gives_the_same_values(tiny_pair, tiny_model, kind):
    st, _ = tiny_pair
    st = st.copy()
    st.obs_names = [f"cell_{i}" for i in range(st.n_obs)]  # the names bare matrices get
    # bare matrices carry no coordinates: the AnnData's are left out to compare like with like
    expected = tiny_model.impute(st, progress=False, spatial=False).X
    genes = list(st.var_names)
    if kind == "numpy":
        got = tiny_model.impute(st.X.copy(), st_genes=genes, progress=False)
    elif kind in ("csr", "csc"):
        got = tiny_model.impute(getattr(sp, f"{kind}_matrix")(st.X), st_genes=genes,
                                progress=False)
    elif kind == "dataframe":
        frame = pd.DataFrame(st.X, index=st.obs_names, columns=genes)
        got = tiny_model.impute(frame, progress=False)
        assert isinstance(got, pd.DataFrame)
        assert list(got.columns) == tiny_model.output_names
        assert list(got.index) == list(frame.index)
        got = got.to_numpy()
    else:
        layered = ad.AnnData(np.zeros_like(st.X), obs=st.obs, var=st.var,
                             layers={"counts": st.X.copy()})
        got = tiny_model.impute(layered, st_layer="counts", progress=False, spatial=False).X
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_a_cell_does_not_depend_on_its_batch_or_order(tiny_pair, tiny_model, monkeypatch):
    st, _ = tiny_pair
    base = tiny_model.impute(st, batch_size=64, seed=5, progress=False)
    # The denoiser's passes on CPU take a few cells at a time: one cell per pass changes nothing.
    monkeypatch.setattr(spalstf.diffusion.sample, "CPU_PASS_ROWS", 1)
    one_per_pass = tiny_model.impute(st, batch_size=64, seed=5, progress=False)
    np.testing.assert_allclose(one_per_pass.X, base.X, atol=1e-5)
    np.testing.assert_allclose(one_per_pass.layers["std"], base.layers["std"], atol=1e-5)
    monkeypatch.undo()
    small = tiny_model.impute(st, batch_size=7, seed=5, progress=False)
    order = np.random.default_rng(0).permutation(st.n_obs)
    shuffled = tiny_model.impute(st[order], batch_size=13, seed=5, progress=False)
    np.testing.assert_allclose(small.X, base.X, atol=1e-5)
    np.testing.assert_allclose(shuffled.X, base.X[order], atol=1e-5)
    np.testing.assert_allclose(shuffled.layers["std"], base.layers["std"][order], atol=1e-5)
    # Alone, a cell gets what it got among the others, once what it reads from them is left
    # out: the aligned-neighbour estimate's z-scores over the ST, its expression neighbours
    # and its spatial neighbours
    alone = tiny_model.impute(st[[10]], seed=5, progress=False, knn_weight=0.0,
                              expression_weight=0.0, spatial_weight=0.0)
    among = tiny_model.impute(st, seed=5, progress=False, knn_weight=0.0, expression_weight=0.0,
                              spatial_weight=0.0)
    np.testing.assert_allclose(alone.X[0], among.X[10], atol=1e-5)
    assert not np.allclose(among.X, base.X, atol=1e-3)  # the default blends it in


def test_the_aligned_neighbour_estimate_reads_only_data_set_statistics(tiny_pair, tiny_model):
    """The ST twice over has the same per-gene mean and std: every cell keeps its values."""
    st, _ = tiny_pair
    twice = ad.concat([st, st], index_unique="-")
    # different cell names draw different noise: compare the prior (residual weight 0);
    # each cell's twin would be its nearest expression and spatial neighbour: leave those out
    base = tiny_model.impute(st, seed=5, progress=False, residual_weight=0.0,
                             expression_weight=0.0, spatial_weight=0.0)
    doubled = tiny_model.impute(twice, seed=5, progress=False, residual_weight=0.0,
                                expression_weight=0.0, spatial_weight=0.0)
    np.testing.assert_allclose(doubled.X[:st.n_obs], base.X, atol=1e-5)
    np.testing.assert_allclose(doubled.X[st.n_obs:], base.X, atol=1e-5)
    # and the estimate matters: without it the imputation differs
    plain = tiny_model.impute(st, seed=5, progress=False, residual_weight=0.0, knn_weight=0.0,
                              expression_weight=0.0, spatial_weight=0.0)
    assert np.abs(plain.X - base.X).max() > 1e-3


def test_the_estimate_can_be_turned_on_at_impute_time(tiny_pair):
    """knn_weight is a sampling-time option: a model fitted without it (and without the
    context, which also reads the atlas) still keeps what the estimate needs."""
    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:3]
    model = spalstf.fit(sc, list(st.var_names), genes, seed=0,
                        **{**FAST, "use_context": False, "knn_weight": 0.0})
    off = model.impute(st, seed=5, progress=False, residual_weight=0.0)
    on = model.impute(st, seed=5, progress=False, residual_weight=0.0, knn_weight=0.5)
    assert np.abs(on.X - off.X).max() > 1e-3


def test_the_estimate_reads_the_models_pseudo_spots(tiny_pair, tiny_model, tmp_path):
    """The model keeps pseudo-spots beside its atlas (`prior_mixtures`), saved with it, and the
    aligned-neighbour estimate reads them; a model fitted without them keeps none."""
    st, sc = tiny_pair
    n_known = len(tiny_model.known_genes)
    assert tiny_model.mixtures.shape == (2000, tiny_model.atlas.shape[1])
    base = tiny_model.impute(st, seed=5, progress=False, residual_weight=0.0, knn_weight=1.0)

    def with_mixtures(mixtures):  # a copy of the model whose estimate reads other pseudo-spots
        aligned = tiny_model.predictors["aligned"]
        other = copy.copy(tiny_model)
        other.predictors = {**tiny_model.predictors, "aligned": AlignedNeighbours(
            knn_neighbors=aligned.knn_neighbors, atlas=aligned.atlas, mixtures=mixtures,
            n_known=aligned.n_known)}
        return other

    # pseudo-spots whose targets lie far above every atlas cell's pull the estimate up
    shifted = tiny_model.mixtures.copy()
    shifted[:, n_known:] += 5.0
    pulled = with_mixtures(shifted).impute(st, seed=5, progress=False, residual_weight=0.0,
                                           knn_weight=1.0)
    assert (pulled.X > base.X + 0.1).mean() > 0.9
    # without them, the cells alone
    alone = with_mixtures(None).impute(st, seed=5, progress=False, residual_weight=0.0,
                                       knn_weight=1.0)
    assert np.abs(alone.X - base.X).max() > 1e-3
    tiny_model.save(tmp_path / "m")
    np.testing.assert_array_equal(spalstf.load(tmp_path / "m").mixtures, tiny_model.mixtures)
    genes = list(st.obsm["truth"].columns)[:3]
    without = spalstf.fit(sc, list(st.var_names), genes, seed=0,
                          **{**FAST, "prior_mixtures": False})
    assert without.mixtures is None


def test_at_depth_output_is_the_expected_measurement_at_each_cells_depth(tiny_pair, tiny_model):
    """output="at_depth" maps each imputation through the cell's own known-gene total; the
    uncertainty is the spread of the mapped samples; log-normalised input has no depth."""
    st, sc = tiny_pair
    expression = tiny_model.impute(st, seed=5, progress=False)
    at_depth = tiny_model.impute(st, seed=5, progress=False, output="at_depth")
    depth = as_counts(st.X).sum(axis=1)  # the model's known genes are all of st's
    np.testing.assert_allclose(at_depth.X, expected_at_depth(expression.X, depth), atol=1e-5)
    assert (at_depth.X <= expression.X + 1e-5).all() and (at_depth.X < expression.X - 0.01).any()
    assert not np.allclose(at_depth.layers["std"], expression.layers["std"])
    assert at_depth.uns["spalstf"]["params"]["output"] == "at_depth"
    st_log = st.copy()
    st_log.X = np.log1p(as_counts(st.X))
    with pytest.raises(ValueError, match="`output='at_depth'` needs the ST's counts"):
        tiny_model.impute(st_log, log_normalized=True, output="at_depth", progress=False)
    sc_log = sc.copy()
    sc_log.X = np.log1p(as_counts(sc.X))  # counts declared log-normalised are refused first
    with pytest.raises(ValueError, match="`output='at_depth'` needs the ST's counts"):
        spalstf.impute(st_log, sc_log, log_normalized=True, output="at_depth",
                       self_check=False, **FAST)


def test_the_depth_weight_blends_the_two_outputs(tiny_pair, tiny_model):
    """depth_weight b gives (1 - b) x the expression + b x the value at the cell's depth; 1 is
    "at_depth"; above 0 it needs counts."""
    st, _ = tiny_pair
    ends = [tiny_model.impute(st, seed=5, progress=False, residual_weight=0.0, depth_weight=w)
            for w in (0.0, 1.0)]
    at_depth = tiny_model.impute(st, seed=5, progress=False, residual_weight=0.0,
                                 output="at_depth")
    np.testing.assert_array_equal(ends[1].X, at_depth.X)
    blend = tiny_model.impute(st, seed=5, progress=False, residual_weight=0.0, depth_weight=0.25)
    np.testing.assert_allclose(blend.X, 0.75 * ends[0].X + 0.25 * ends[1].X, atol=1e-5)
    assert np.abs(blend.X - ends[0].X).max() > 1e-2
    assert blend.uns["spalstf"]["params"]["depth_weight"] == 0.25
    st_log = st.copy()
    st_log.X = np.log1p(as_counts(st.X))
    with pytest.raises(ValueError, match="`depth_weight` above 0 needs the ST's counts"):
        tiny_model.impute(st_log, log_normalized=True, depth_weight=0.5, progress=False)
    with pytest.raises(ValueError, match="`depth_weight` must be in"):
        tiny_model.impute(st, depth_weight=1.5, progress=False)


def test_the_same_seed_gives_identical_output(tiny_pair):
    st, sc = tiny_pair
    a = spalstf.impute(st, sc, seed=7, **FAST)
    b = spalstf.impute(st, sc, seed=7, **FAST)
    c = spalstf.impute(st, sc, seed=8, **FAST)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.layers["std"], b.layers["std"])
    assert not np.allclose(a.X, c.X)


def test_target_genes_measured_in_st_never_reach_the_prediction(tiny_pair):
    st, sc = tiny_pair
    genes = list(st.var_names)[:3]  # measured genes asked for: predicted as if hidden
    a = spalstf.impute(st, sc, genes, seed=2, **FAST)
    changed = st.copy()
    changed.X[:, :3] = np.random.default_rng(0).poisson(50, (st.n_obs, 3))
    b = spalstf.impute(changed, sc, genes, seed=2, **FAST)
    np.testing.assert_array_equal(a.X, b.X)
    assert not set(genes) & set(a.uns["spalstf"]["known_genes"])


def test_inputs_are_never_modified(tiny_pair):
    st, sc = tiny_pair
    st, sc = st.copy(), sc.copy()
    st.X = st.X.astype(np.float64)
    sc.X = sp.csr_matrix(sc.X)
    st.var_names = [g.lower() for g in st.var_names]  # matched ignoring case; must stay lower
    before = [copy.deepcopy(x) for x in (st.X, st.obs, st.var, st.obsm["spatial"])]
    sc_before = (sc.X.copy(), sc.obs.copy(), sc.var.copy())
    spalstf.impute(st, sc, **FAST)
    np.testing.assert_array_equal(st.X, before[0])
    assert st.X.dtype == np.float64
    pd.testing.assert_frame_equal(st.obs, before[1])
    pd.testing.assert_frame_equal(st.var, before[2])
    np.testing.assert_array_equal(st.obsm["spatial"], before[3])
    assert sp.isspmatrix_csr(sc.X) and (sc.X != sc_before[0]).nnz == 0
    pd.testing.assert_frame_equal(sc.var, sc_before[2])
    arr = np.asarray(st.X).copy()
    frozen = arr.copy()
    frozen.setflags(write=False)  # arrays from R arrive read-only
    spalstf.impute(frozen, sc, st_genes=list(st.var_names), **FAST)
    np.testing.assert_array_equal(frozen, arr)


def test_save_load_gives_the_same_output(tiny_pair, tiny_model, tmp_path):
    st, _ = tiny_pair
    path = tiny_model.save(tmp_path / "model")
    loaded = spalstf.load(path, device="cpu")
    assert loaded.known_genes == tiny_model.known_genes
    np.testing.assert_array_equal(loaded.impute(st, seed=3, progress=False).X,
                                  tiny_model.impute(st, seed=3, progress=False).X)
    with pytest.raises(FileExistsError, match="overwrite"):
        tiny_model.save(path)
    tiny_model.save(path, overwrite=True)
    assert sorted(p.name for p in path.iterdir()) == ["checksums.sha256", "model.json",
                                                      "weights.pt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_a_model_refuses_data_without_its_genes(tiny_pair, tiny_model):
    st, _ = tiny_pair
    dropped = list(st.var_names[:2])
    with pytest.raises(ValueError, match=dropped[0]):
        tiny_model.impute(st[:, list(st.var_names[2:])], progress=False)


def test_damaged_model_files_give_a_clear_error(tiny_model, tmp_path):
    path = tiny_model.save(tmp_path / "m")
    data = (path / "weights.pt").read_bytes()
    (path / "weights.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        spalstf.load(path)
    with pytest.raises(ValueError, match="not a spalstf model"):
        spalstf.load(tmp_path)


def test_gene_names_match_exactly_then_ignoring_case(tiny_pair, caplog):
    st, sc = tiny_pair
    upper = st.copy()
    upper.var_names = [g.upper() for g in st.var_names]
    with caplog.at_level(logging.INFO, logger="spalstf"):
        out = spalstf.impute(upper, sc, **FAST)
    assert "ignoring case" in caplog.text
    assert out.uns["spalstf"]["known_genes"] == list(st.var_names)


def test_missing_genes_are_dropped_with_a_warning_and_none_left_is_an_error(tiny_pair, caplog):
    st, sc = tiny_pair
    target = list(st.obsm["truth"].columns)[0]
    with caplog.at_level(logging.WARNING, logger="spalstf"):
        out = spalstf.impute(st, sc, [target, "NotAGene"], **FAST)
    assert list(out.var_names) == [target] and "NotAGene" in caplog.text
    with pytest.raises(ValueError, match="none of `genes`"):
        spalstf.impute(st, sc, ["NotAGene"], **FAST)


def test_bad_gene_inputs_are_errors_that_name_examples(tiny_pair):
    st, sc = tiny_pair
    dup = ad.AnnData(st.X.copy(), var=pd.DataFrame(index=["A"] * st.n_vars))
    with pytest.raises(ValueError, match=r"duplicated gene names.*'A'"):
        spalstf.impute(dup, sc, **FAST)
    other = st.copy()
    other.var_names = [f"X{i}" for i in range(st.n_vars)]
    with pytest.raises(ValueError, match="share no genes.*X0"):
        spalstf.impute(other, sc, **FAST)
    with pytest.raises(ValueError, match="st_genes"):
        spalstf.impute(st.X, sc)
    with pytest.raises(ValueError, match="st_genes.*22 columns.*received 3"):
        spalstf.impute(st.X, sc, st_genes=["a", "b", "c"])


def test_default_genes_are_the_lacking_ones_capped_by_variance(tiny_pair, caplog):
    st, sc = tiny_pair
    out = spalstf.impute(st, sc, **FAST)
    lacking = [g for g in sc.var_names if g not in set(st.var_names)]
    assert list(out.var_names) == lacking
    with caplog.at_level(logging.WARNING, logger="spalstf"):
        capped = spalstf.impute(st, sc, max_genes=3, **FAST)
    assert capped.n_vars == 3 and set(capped.var_names) <= set(lacking)
    assert "most variable" in caplog.text
    full = sc[:, list(st.var_names) + lacking]
    with pytest.raises(ValueError, match="nothing to impute"):
        spalstf.impute(full, sc, **FAST)


def test_log_normalized_inputs_are_used_as_given(tiny_pair):
    st, sc = tiny_pair
    st_log, sc_log = st.copy(), sc.copy()
    st_log.X = np.log1p(st.X)
    sc_log.X = np.log1p(sc.X)
    out = spalstf.impute(st_log, sc_log, log_normalized=True, **FAST)
    assert out.uns["spalstf"]["log_normalized_input"] is True
    assert out.X.max() <= sc_log.X.max() + 1e-4


@pytest.mark.parametrize("option,value,match", [
    ("n_steps", 0, "n_steps"), ("batch_size", -1, "batch_size"), ("device", "tpu", "device"),
    ("n_samples", 1.5, "n_samples"), ("sampler", "euler", "sampler"), ("seed", -1, "seed"),
    ("max_genes", 0, "max_genes"), ("nonsense", 1, "unknown option"),
    ("knn_weight", 1.5, "knn_weight"), ("knn_neighbors", 0, "knn_neighbors"),
    ("expression_weight", 1.0, "expression_weight"),
    ("expression_neighbors", 0, "expression_neighbors"), ("output", "counts", "output"),
])
def test_options_out_of_range_name_the_option(tiny_pair, option, value, match):
    st, sc = tiny_pair
    with pytest.raises((ValueError, TypeError), match=match):
        spalstf.impute(st, sc, **{**FAST, option: value})


def test_inputs_of_the_wrong_type_or_with_bad_values_are_refused(tiny_pair):
    st, sc = tiny_pair
    with pytest.raises(TypeError, match="`st` must be an AnnData"):
        spalstf.impute([[1, 2]], sc)
    bad = st.copy()
    bad.X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        spalstf.impute(bad, sc, **FAST)
    bad.X[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        spalstf.impute(bad, sc, **FAST)
