"""Inputs that once gave a silent wrong answer or a foreign error: each now gives the right
answer or a clear error naming the argument (reported on osmFISH, reproduced here small)."""

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import FAST

import spalstf
from spalstf.data import LOG_MAX, CellRows, as_expression, check_values, match_genes
from spalstf.preprocess import expected_at_depth
from spalstf.spatial import coordinates


def _log_normalised(counts, scale_factor=1e4):
    counts = np.asarray(counts, np.float64)
    total = counts.sum(axis=1, keepdims=True)
    return np.log1p(counts / np.where(total > 0, total, 1) * scale_factor)


# --- A. a coordinates DataFrame with pandas' default index ------------------------------------
def test_spatial_frame_with_default_index_is_taken_by_position_not_by_numeric_names():
    n = 8
    order = np.random.default_rng(0).permutation(n)
    cells = [str(i) for i in order]  # named "0".."7" as osmFISH's, in another order
    xy = np.arange(2 * n, dtype=float).reshape(n, 2)
    frame = pd.DataFrame(xy, columns=["x", "y"])  # built from an array: RangeIndex 0..7
    got = coordinates(None, frame, n, cells)
    np.testing.assert_array_equal(got, xy)  # row i is cell i of `st`, not the cell named "i"
    same_as_int64 = frame.set_axis(pd.Index(np.arange(n), dtype="int64"))
    np.testing.assert_array_equal(coordinates(None, same_as_int64, n, cells), xy)


def test_spatial_frame_indexed_by_names_is_aligned_and_ambiguous_integers_refused():
    n = 8
    order = np.random.default_rng(1).permutation(n)
    cells = [str(i) for i in order]
    xy = np.arange(2 * n, dtype=float).reshape(n, 2)
    by_name = pd.DataFrame(xy, columns=["x", "y"], index=[str(i) for i in range(n)])
    before = by_name.copy()
    got = coordinates(None, by_name, n, cells)
    np.testing.assert_array_equal(got, xy[order])  # cell named "k" takes the row named "k"
    pd.testing.assert_frame_equal(by_name, before)  # the input is not modified
    with pytest.raises(ValueError, match=r"`spatial` .* lacks 1 of the 8 cells of `st`, for "
                                         r"example \['7'\]"):
        coordinates(None, by_name.drop(index="7"), n, cells)
    shuffled = pd.DataFrame(xy, columns=["x", "y"], index=order[::-1])  # not 0..n-1, nor `st`
    with pytest.raises(ValueError, match=r"`spatial` \(a DataFrame\) has an integer index other "
                                         r"than 0\.\.7 in order.*astype\(str\).*to_numpy"):
        coordinates(None, shuffled, n, cells)


# --- B. integers declared log-normalised ------------------------------------------------------
def test_integers_declared_log_normalised_are_refused_naming_the_argument(tiny_pair):
    st, sc = tiny_pair
    small = np.minimum(np.rint(np.asarray(sc.X)), 20)  # counts with a max of at most 20
    expr = as_expression(small, genes=list(sc.var_names), arg="sc")
    with pytest.raises(ValueError, match=r"`sc` is declared log-normalised \(log_normalized="
                                         r"True\) but holds only integers \(max 20\).*"
                                         r"log_normalized=False"):
        check_values(expr, log_normalized=True, arg="sc")
    binary = st.copy()
    binary.X = (np.asarray(st.X) > 0).astype(np.float32)  # max 1
    with pytest.raises(ValueError, match=r"`st` is declared log-normalised .* only integers "
                                         r"\(max 1\)"):
        spalstf.impute(binary, sc, log_normalized=True, **FAST)
    # log values that are mostly exact zeros still pass
    genes = [f"g{j}" for j in range(6)]
    few = np.zeros((50, 6))
    few[3, 2], few[17, 5] = 1.0986123, 2.3978953  # all zero but two log values
    check_values(as_expression(few, genes=genes), log_normalized=True, arg="sc")
    counts = np.random.default_rng(0).poisson(0.2, (200, 6))  # ~80% zeros
    logged = _log_normalised(counts)
    assert (logged == 0).mean() > 0.7
    check_values(as_expression(logged, genes=genes), log_normalized=True, arg="sc")


# --- C. genes that match the same gene ignoring case; scanpy's log base ----------------------
def test_two_names_of_one_gene_are_refused_not_imputed_twice(tiny_pair):
    st, sc = tiny_pair
    target = list(st.obsm["truth"].columns)[0]
    with pytest.raises(ValueError, match=rf"`genes` has 1 group of gene names that match the "
                                         rf"same gene of `sc`.*'{target}' and "
                                         rf"'{target.upper()}' -> '{target}'"):
        spalstf.impute(st, sc, [target, target.upper()], **FAST)
    with pytest.raises(ValueError, match=r"`known_genes` has 1 group"):
        spalstf.fit(sc, ["Gene0002", "GENE0002"], [target], **FAST)
    assert match_genes(["a", "A"], ["a", "A"], arg="x") == {"a": "a", "A": "A"}  # both exist


def test_log2_values_marked_by_scanpy_are_read_in_natural_log(tiny_pair):
    _, sc = tiny_pair
    natural = _log_normalised(sc.X)
    log2 = ad.AnnData(X=(natural / math.log(2)).astype(np.float32),
                      var=pd.DataFrame(index=sc.var_names), obs=pd.DataFrame(index=sc.obs_names))
    log2.uns["log1p"] = {"base": 2}
    before = log2.X.copy()
    expr = as_expression(log2, arg="sc")
    genes = list(sc.var_names[:5])
    np.testing.assert_allclose(expr.columns(genes), natural[:, :5], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(CellRows(expr, genes, None).to_array(), natural[:, :5],
                               rtol=1e-6, atol=1e-6)
    check_values(expr, log_normalized=True, arg="sc")
    np.testing.assert_array_equal(log2.X, before)  # the input is not modified
    # a layer of counts beside the logged X keeps scanpy's mark: counts are read as they are
    log2.layers["counts"] = np.asarray(sc.X)
    counts = as_expression(log2, layer="counts", arg="sc")
    check_values(counts, log_normalized=False, arg="sc")
    np.testing.assert_array_equal(counts.columns(genes), np.asarray(sc.X)[:, :5])
    log2.uns["log1p"] = {"base": "two"}
    with pytest.raises(ValueError, match=r"`sc.uns\['log1p'\]\['base'\]` must be None .* "
                                         r"received 'two'"):
        as_expression(log2, arg="sc")


# --- D. foreign errors replaced by clear ones -------------------------------------------------
def test_values_too_large_for_log_normalised_are_refused_before_fitting(tiny_pair):
    st, sc = tiny_pair
    decimals = sc.copy()
    decimals.X = np.asarray(sc.X) * 1.5 + 0.25  # normalised counts, not logged: up to > 14
    assert decimals.X.max() > LOG_MAX
    st_log = st.copy()
    st_log.X = _log_normalised(st.X).astype(np.float32)
    with pytest.raises(ValueError, match=r"`sc` is declared log-normalised .* holds values up "
                                         r"to .* above log1p\(1e6\) = 13\.82"):
        spalstf.impute(st_log, decimals, log_normalized=True, **FAST)
    raw = sc.copy()
    raw.X = np.asarray(sc.X) * 0 + 500.0  # raw counts with max 500: integers, refused too
    with pytest.raises(ValueError, match=r"`sc` .* holds only integers \(max 500\)"):
        spalstf.impute(st_log, raw, log_normalized=True, **FAST)


def test_expected_at_depth_stays_finite_for_extrapolated_values():
    # A reference of a few cells lets a predictor extrapolate to values of 100 and more, which
    # made this NaN (inf / inf) and the stack's nnls fail with "infs or NaNs".
    values = np.array([[0.5, 9.0, 60.0, 100.0, 400.0]] * 2, np.float32)
    out = expected_at_depth(values, np.array([3.0, 2000.0]))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[:, 3:], values[:, 3:], rtol=1e-6)  # many counts: the value


def test_two_st_genes_on_one_reference_gene_name_st(tiny_pair):
    st, sc = tiny_pair
    clash = st.copy()
    names = list(st.var_names)
    names[1] = names[0].upper()  # "Gene0002" and "GENE0002"; the reference has "Gene0002"
    clash.var_names = names
    with pytest.raises(ValueError, match=rf"`st` has 1 group of gene names that match the same "
                                         rf"gene of `sc`.*'{names[0]}' and '{names[1]}'"):
        spalstf.impute(clash, sc, **FAST)


def test_float32_round_off_counts_pass_and_real_decimals_show_their_digits(tiny_pair):
    st, _ = tiny_pair
    genes = list(st.var_names)
    counts = np.rint(np.asarray(st.X, np.float32))
    nudged = np.nextafter(counts, np.float32(np.inf))  # 41 -> 41.0000038: a float32 step
    assert (nudged != counts).all()
    check_values(as_expression(nudged, genes=genes), log_normalized=False, arg="st")
    bad = counts.copy()
    bad[0, 0] = 123456.5  # ":g" printed it as "123456"
    with pytest.raises(ValueError, match=r"non-integer values \(first 123456\.5 at cell "
                                         r"'cell_0', gene 'Gene0002'\)"):
        check_values(as_expression(bad, genes=genes), log_normalized=False, arg="st")
