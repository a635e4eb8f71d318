"""Scale: backed inputs, results streamed to disk, lazy training data, shards, DDP on gloo."""

import os
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from conftest import FAST, as_counts

import spalstf
from spalstf import spatial as spatial_module
from spalstf.cli import main
from spalstf.combine import columns as columns_module
from spalstf.data import CellRows, as_expression, cell_factors
from spalstf.model import fitting as fitting_module
from spalstf.preprocess import Standardizer, log_normalize

REPO = Path(__file__).resolve().parents[1]


def _assert_same_result(got, expected):
    np.testing.assert_array_equal(np.asarray(got.X), expected.X)
    np.testing.assert_array_equal(np.asarray(got.layers["std"]), expected.layers["std"])
    assert list(got.obs_names) == list(expected.obs_names)
    assert list(got.var_names) == list(expected.var_names)
    pd.testing.assert_frame_equal(got.obs, expected.obs)
    for key in expected.obsm:
        np.testing.assert_array_equal(np.asarray(got.obsm[key]), np.asarray(expected.obsm[key]))


@pytest.mark.parametrize("sparse", [False, True])
def test_a_backed_st_gives_the_in_memory_result(tiny_pair, tiny_model, tmp_path, sparse):
    st, _ = tiny_pair
    st = st.copy()
    if sparse:
        st.X = sp.csr_matrix(st.X)
    st.write_h5ad(tmp_path / "st.h5ad")
    expected = tiny_model.impute(st, batch_size=16, seed=3, progress=False)
    backed = ad.read_h5ad(tmp_path / "st.h5ad", backed="r")
    got = tiny_model.impute(backed, batch_size=16, seed=3, progress=False)
    backed.file.close()
    _assert_same_result(got, expected)


def test_streamed_output_equals_the_in_memory_result(tiny_pair, tiny_model, tmp_path):
    st, _ = tiny_pair
    expected = tiny_model.impute(st, batch_size=16, seed=3, progress=False)
    path = tiny_model.impute(st, batch_size=16, seed=3, progress=False,
                             out=tmp_path / "out.h5ad")
    assert path == tmp_path / "out.h5ad"
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5ad"]  # no temporary left behind
    got = ad.read_h5ad(path)
    _assert_same_result(got, expected)
    assert list(got.uns["spalstf"]["known_genes"]) == expected.uns["spalstf"]["known_genes"]
    assert got.uns["spalstf"]["seed"] == 3
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tiny_model.impute(st, progress=False, out=path)
    assert tiny_model.impute(st, progress=False, out=path, overwrite=True) == path


def test_streaming_keeps_memory_bounded_by_the_chunk():
    st, sc = spalstf.datasets.simulate(n_st=200, n_sc=200, n_genes=70, n_measured=20, seed=1)
    model = spalstf.fit(sc, list(st.var_names), list(st.obsm["truth"].columns), seed=0,
                        **FAST)
    big = ad.AnnData(np.tile(st.X, (20, 1)), var=st.var)  # 4000 cells x 20 genes
    big.obs_names = [f"c{i}" for i in range(big.n_obs)]
    output_bytes = 2 * 4 * big.n_obs * len(model.target_genes)  # X and std: 1.6 MB

    def peak(**kwargs):
        tracemalloc.start()
        # without the expression neighbours' search over all ST cells, whose transient memory
        # (the same streamed or not) is as large as this small output
        model.impute(big, batch_size=64, n_steps=1, progress=False, expression_weight=0.0,
                     **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        streamed = peak(out=Path(tmp) / "out.h5ad")
    in_memory = peak()
    assert in_memory - streamed > 0.7 * output_bytes, (in_memory, streamed)


def test_cell_rows_read_blocks_as_log_normalize_does(tiny_pair):
    _, sc = tiny_pair
    expr = as_expression(sp.csr_matrix(sc.X), genes=list(sc.var_names))
    known, target = list(sc.var_names[:10]), list(sc.var_names[10:])
    k_ref, t_ref = log_normalize(expr.columns(known), expr.columns(target))
    factor = cell_factors(expr, known, scale_factor=1e4, log_normalized=False, block=7)
    rows = CellRows(expr, target, factor)
    np.testing.assert_array_equal(rows.to_array(block=11), t_ref)
    pick = np.array([5, 2, 40, 3])
    np.testing.assert_array_equal(rows[pick], t_ref[pick])
    sub = CellRows(expr, known, factor[[4, 9]], rows=np.array([4, 9]))
    np.testing.assert_array_equal(sub[0:2], k_ref[[4, 9]])
    blocks = Standardizer.fit_blocks(lambda: rows.blocks(13))
    whole = Standardizer.fit(t_ref)
    for a, b in zip(blocks.state().values(), whole.state().values(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_large_sparse_reference_is_never_densified(tiny_pair, monkeypatch, tmp_path):
    st, sc = tiny_pair
    known, targets = list(st.var_names), list(st.obsm["truth"].columns)
    dense_model = spalstf.fit(sc, known, targets, seed=0, **FAST)
    sc_sparse = sc.copy()
    sc_sparse.X = sp.csr_matrix(sc.X)
    sc_sparse.write_h5ad(tmp_path / "sc.h5ad")
    monkeypatch.setattr(fitting_module, "DENSE_TRAINING_BYTES", 0)

    def refuse(*args, **kwargs):
        raise AssertionError("the reference was densified whole")

    monkeypatch.setattr(CellRows, "to_array", refuse)
    lazy_model = spalstf.fit(sc_sparse, known, targets, seed=0, **FAST)
    backed = ad.read_h5ad(tmp_path / "sc.h5ad", backed="r")
    backed_model = spalstf.fit(backed, known, targets, seed=0, **FAST)
    backed.file.close()
    for name in ("known_scaler", "target_scaler"):
        for a, b in zip(getattr(lazy_model, name).state().values(),
                        getattr(dense_model, name).state().values(), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_array_equal(lazy_model.atlas, backed_model.atlas)
    expected = dense_model.impute(st, seed=1, progress=False).X
    # The same training up to float rounding (the ridge prior sums its rows in another order).
    np.testing.assert_allclose(lazy_model.impute(st, seed=1, progress=False).X, expected,
                               atol=1e-3)
    np.testing.assert_array_equal(backed_model.impute(st, seed=1, progress=False).X,
                                  lazy_model.impute(st, seed=1, progress=False).X)


def test_max_cells_trains_on_a_seeded_subsample(tiny_pair):
    st, sc = tiny_pair
    known, targets = list(st.var_names), list(st.obsm["truth"].columns)
    a = spalstf.fit(sc, known, targets, seed=0, max_cells=100, **FAST)
    b = spalstf.fit(sc, known, targets, seed=0, max_cells=100, **FAST)
    assert a.info["n_training_cells"] == 100 and a.info["n_reference_cells"] == sc.n_obs
    assert a.atlas.shape[0] == 100
    np.testing.assert_array_equal(a.atlas, b.atlas)
    with pytest.raises(ValueError, match="max_cells"):
        spalstf.fit(sc, known, targets, max_cells=0, **FAST)


@pytest.mark.parametrize("align", ["reference", "per_dataset"])
def test_shards_merged_equal_the_unsharded_run(tiny_pair, tiny_model, tmp_path, align):
    st, _ = tiny_pair
    model = tiny_model
    if align == "per_dataset":
        model = spalstf.Model(tiny_model.network, tiny_model.config.replace(align=align),
                              tiny_model.known_genes, tiny_model.target_genes,
                              tiny_model.known_scaler, tiny_model.target_scaler,
                              tiny_model.atlas, output_names=tiny_model.output_names)
    expected = model.impute(st, seed=2, progress=False)
    parts = [model.impute(st, seed=2, progress=False, shard=(i, 3),
                          out=tmp_path / f"part{i}.h5ad") for i in range(3)]
    in_memory = model.impute(st, seed=2, progress=False, shard=(1, 3))
    assert in_memory.n_obs == 20 and in_memory.uns["spalstf"]["shard"]["start"] == 20
    np.testing.assert_array_equal(in_memory.X, expected.X[20:40])
    merged = spalstf.io.merge_h5ad(parts[::-1], tmp_path / "merged.h5ad")
    got = ad.read_h5ad(merged)
    _assert_same_result(got, expected)
    assert got.uns["spalstf"]["merged_shards"] == 3 and "shard" not in got.uns["spalstf"]
    with pytest.raises(ValueError, match="expected each of the shards 0 to 2 once"):
        spalstf.io.merge_h5ad(parts[:2], tmp_path / "bad.h5ad")
    with pytest.raises(ValueError, match="shard"):
        model.impute(st, progress=False, shard=(3, 3))


def test_cli_streams_shards_and_merges(tiny_pair, tmp_path, capsys):
    st, sc = tiny_pair
    st_path, sc_path, model_dir = tmp_path / "st.h5ad", tmp_path / "sc.h5ad", tmp_path / "m"
    st.write_h5ad(st_path)
    sc.write_h5ad(sc_path)
    genes = ",".join(st.obsm["truth"].columns[:4])
    common = ["--quiet", "--n-steps", "2", "--n-samples", "2", "--seed", "4"]
    # the network's sampling is what shards must reproduce: name it (not a default predictor)
    assert main(["fit", "--sc", str(sc_path), "--st", str(st_path), "--genes", genes,
                 "--model-out", str(model_dir), "--epochs", "1", "--quiet",
                 "--predictors", ",".join(FAST["predictors"])]) == 0
    whole = tmp_path / "whole.h5ad"
    assert main(["impute", "--model", str(model_dir), "--st", str(st_path), "--out", str(whole),
                 *common]) == 0
    parts = [tmp_path / f"part{i}.h5ad" for i in range(2)]
    for i, part in enumerate(parts):
        assert main(["impute", "--model", str(model_dir), "--st", str(st_path), "--out",
                     str(part), "--shard", f"{i}/2", *common]) == 0
    assert "(shard 1/2)" in capsys.readouterr().out
    merged = tmp_path / "merged.h5ad"
    assert main(["merge", *map(str, parts), "--out", str(tmp_path / "merged.csv")]) == 2
    assert "--out must name an .h5ad file" in capsys.readouterr().err
    assert not (tmp_path / "merged.csv").exists()
    assert main(["merge", *map(str, parts), "--out", str(merged)]) == 0
    _assert_same_result(ad.read_h5ad(merged), ad.read_h5ad(whole))
    assert main(["impute", "--sc", str(sc_path), "--st", str(st_path), "--out",
                 str(tmp_path / "x.h5ad"), "--shard", "0/2", *common]) == 2
    assert "--shard needs --model" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_training_equals_one_process(tiny_pair, tmp_path):
    """torchrun, gloo, 2 CPU processes: the model of a single process up to float noise."""
    st, sc = tiny_pair
    sc_path = tmp_path / "sc.h5ad"
    sc.write_h5ad(sc_path)
    genes = ",".join(st.obsm["truth"].columns)
    args = ["fit", "--sc", str(sc_path), "--known", ",".join(st.var_names), "--genes", genes,
            "--epochs", "2", "--batch-size", "37", "--quiet", "--seed", "5",
            "--predictors", ",".join(FAST["predictors"])]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                          "-m", "spalstf.cli", "-v", *args, "--model-out", str(tmp_path / "ddp")],
                         env=env, capture_output=True, text=True, timeout=180)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "joined a gloo process group: rank 1 of 2" in ddp.stderr
    assert "process 1 of 2 trains on cells 18 to 36 of each mini-batch of 37" in ddp.stderr
    assert ddp.stdout.count("fitted") == 1  # only rank 0 writes
    b = spalstf.load(tmp_path / "ddp")
    a = spalstf.fit(sc, list(st.var_names), list(st.obsm["truth"].columns), seed=5, epochs=2,
                    batch_size=37, progress=False, config={"predictors": FAST["predictors"]})
    assert len(a.history) == len(b.history) == 2
    for ra, rb in zip(a.history, b.history, strict=True):
        assert ra["val_mse"] == pytest.approx(rb["val_mse"], rel=1e-4)
        assert ra["train_total"] == pytest.approx(rb["train_total"], rel=1e-4)
    wa, wb = a.network.state_dict(), b.network.state_dict()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-3, atol=1e-4, msg=key)
    np.testing.assert_allclose(b.impute(st, progress=False).X, a.impute(st, progress=False).X,
                               atol=1e-3)


def test_the_depth_output_is_the_same_streamed_sharded_and_in_memory(tiny_pair, tiny_model,
                                                                    tmp_path):
    """output="at_depth" reads each chunk's known-gene totals from the input: from a backed
    file, a chunk or a shard at a time, they give the in-memory values."""
    st, _ = tiny_pair
    opts = dict(seed=4, progress=False, output="at_depth", batch_size=16)
    expected = tiny_model.impute(st, **opts)
    st.write_h5ad(tmp_path / "st.h5ad")
    backed = ad.read_h5ad(tmp_path / "st.h5ad", backed="r")
    streamed = tiny_model.impute(backed, out=tmp_path / "out.h5ad", **opts)
    parts = [tiny_model.impute(backed, shard=(i, 2), out=tmp_path / f"p{i}.h5ad", **opts)
             for i in range(2)]
    backed.file.close()
    _assert_same_result(ad.read_h5ad(streamed), expected)
    _assert_same_result(ad.read_h5ad(spalstf.io.merge_h5ad(parts, tmp_path / "m.h5ad")),
                        expected)
    assert not np.allclose(expected.X, tiny_model.impute(st, seed=4, progress=False).X)


def test_each_st_cell_is_smoothed_at_most_twice_per_imputation(tiny_model, tiny_pair,
                                                                 monkeypatch):
    # Smoothing a cell searches its expression neighbours and reads their rows: once for the
    # ST's statistics (the aligned-neighbour estimate z-scores over the ST), once in its chunk,
    # where the network and the estimate share the same read.
    st, _ = tiny_pair
    reads = []
    smoothed = columns_module.expression_smoothed_reader

    def counting(*args, **kwargs):
        reader = smoothed(*args, **kwargs)

        def read(rows):
            reads.append(np.array(rows))
            return reader(rows)
        return read

    monkeypatch.setattr(columns_module, "expression_smoothed_reader", counting)
    out = tiny_model.impute(st, seed=0, progress=False, knn_weight=0.5, batch_size=16)
    assert out.uns["spalstf"]["params"]["expression_weight"] > 0
    times = np.bincount(np.concatenate(reads), minlength=st.n_obs)
    assert times.min() >= 1 and times.max() <= 2, times


def test_views_read_a_chunk_at_a_time_give_the_held_result_with_one_search(tiny_pair,
                                                                           monkeypatch):
    """Above HELD_VIEW_BYTES the views are read a chunk at a time: the default path then gives
    the values of held views, and each cell's expression neighbours are searched once per
    pass over the cells (the statistics' and the predictions'), shared by every predictor and
    by the expression and spatial views."""
    st, sc = tiny_pair
    opts = dict(seed=0, progress=False, batch_size=16)
    held = spalstf.impute(st, sc, **opts)
    searched = []
    graph = columns_module.expression_graph

    def counting(*args, **kwargs):
        neighbours, rows = graph(*args, **kwargs), []
        searched.append(rows)

        def search(cells):
            rows.append(np.array(cells))
            return neighbours(cells)
        return search

    monkeypatch.setattr(columns_module, "expression_graph", counting)
    monkeypatch.setattr(columns_module, "HELD_VIEW_BYTES", 0)
    chunked = spalstf.impute(st, sc, **opts)
    _assert_same_result(chunked, held)
    assert len(searched) == 3  # the self-check's two folds and the run: one graph each
    for rows in searched:
        times = np.bincount(np.concatenate(rows), minlength=st.n_obs)
        assert times.max() <= 2, times


def test_profile_searches_reusing_the_shared_scratch_find_the_nearest_profiles():
    """`ProfileIndex` computes its distances in a scratch shared by every index and reused from
    call to call: indices of other sizes, and queries of other sizes in between, leave each
    query's neighbours those of a plain search."""
    from spalstf.prior.neighbours import ProfileIndex

    rng = np.random.default_rng(0)
    small, large = ProfileIndex(rng.normal(size=(30, 5))), ProfileIndex(rng.normal(size=(90, 5)))
    default = ProfileIndex.max_elements, ProfileIndex.scratch_kept
    ProfileIndex.max_elements = 90 * 7  # blocks of 7 queries in the large index
    ProfileIndex.scratch_kept = 30 * 3  # the small index's 3 queries: kept; the large's not
    try:
        for index, queries in ((large, rng.normal(size=(20, 5))),
                               (small, rng.normal(size=(3, 5))),
                               (large, rng.normal(size=(11, 5)))):
            idx, dist = index.query(queries, 4)
            assert (index.device in ProfileIndex._scratch) == (index is small)
            profiles = index.profiles.numpy()
            plain = ((queries[:, None, :] - profiles[None]) ** 2).sum(axis=2)
            np.testing.assert_array_equal(idx, np.argsort(plain, axis=1)[:, :4])
            np.testing.assert_allclose(dist, np.sqrt(np.sort(plain, axis=1)[:, :4]))
    finally:
        ProfileIndex.max_elements, ProfileIndex.scratch_kept = default


def test_expression_searches_in_blocks_with_a_reused_scratch_find_the_exact_neighbours():
    """`NeighbourIndex` ranks its candidates by a product into a scratch kept between blocks
    and calls: blocks and calls of other sizes give each query the exact nearest rows (the
    cell itself left out), as a plain pairwise sort does."""
    from spalstf.network import NeighbourIndex

    rng = np.random.default_rng(1)
    atlas = rng.normal(size=(200, 6)).astype(np.float32)
    index = NeighbourIndex(atlas)
    index.max_elements = 200 * 7  # blocks of 7 queries
    for rows in (np.arange(0, 30), np.arange(50, 53), np.arange(100, 200)):
        idx, _ = index.query(atlas[rows], 5, self_index=rows)
        plain = ((atlas[rows, None, :].astype(np.float64) - atlas[None]) ** 2).sum(axis=2)
        plain[np.arange(len(rows)), rows] = np.inf
        np.testing.assert_array_equal(idx, np.argsort(plain, axis=1, kind="stable")[:, :5])


def test_float32_profile_searches_find_the_float64_neighbours():
    """The float32 path of `ProfileIndex` returns the float64 path's neighbours: certified
    where the k-th and the next are far apart, and decided in float64 where they are not
    (here: profiles repeated, so the k-th ties with the next: the copy of the lower row, as
    the exact pairwise distances rank them; the float64 product's rounding may split such
    a tie either way)."""
    from spalstf.prior.neighbours import ProfileIndex

    rng = np.random.default_rng(2)
    profiles = rng.normal(size=(300, 20)).astype(np.float32)
    profiles[150:] = profiles[:150]  # every profile twice: ties at every border
    queries = rng.normal(size=(40, 20)).astype(np.float32)
    exact = ProfileIndex(profiles).query(queries, 7)
    fast = ProfileIndex(profiles)
    fast.float32 = True
    idx, dist = fast.query(queries, 7)
    assert fast.uncertified > 0  # the ties were decided in float64
    plain = ((queries[:, None, :].astype(np.float64) - profiles[None]) ** 2).sum(axis=2)
    ranked = np.argsort(plain, axis=1, kind="stable")[:, :7]  # ties by row
    for got, want in zip(idx, ranked, strict=True):
        assert set(got) == set(want)
    np.testing.assert_allclose(dist, exact[1], rtol=1e-5, atol=1e-5)
    distinct = ProfileIndex(profiles[:150])
    distinct.float32 = True
    idx, _ = distinct.query(queries, 7)
    assert distinct.uncertified == 0
    np.testing.assert_array_equal(np.sort(idx, axis=1),
                                  np.sort(ProfileIndex(profiles[:150]).query(queries, 7)[0],
                                          axis=1))


def test_float32_near_ties_at_the_kth_profile_are_settled_among_the_candidates():
    """A near-tie at the k-th profile (within float32 rounding) is decided among the float32
    candidates by float64 distances, not by a float64 search over every profile, and gives the
    float64 path's neighbours; a query whose candidates are all within rounding of the k-th
    (no gap after the pool) still takes the float64 search."""
    from spalstf.prior.neighbours import ProfileIndex

    rng = np.random.default_rng(3)
    profiles = rng.normal(size=(400, 30)) * 10  # large squares: a wide rounding bound
    queries = rng.normal(size=(60, 30)) * 10
    k = 6
    # each query's 6th and 7th nearest profiles 1e-9 apart in squared distance: far below
    # float32 rounding, far above float64's
    for q in range(len(queries)):
        d2 = ((profiles - queries[q]) ** 2).sum(axis=1)
        order = np.argsort(d2)
        direction = profiles[order[6]] - queries[q]
        target = d2[order[5]] + 1e-9
        profiles[order[6]] = queries[q] + direction * np.sqrt(target / (direction ** 2).sum())
    exact = ProfileIndex(profiles).query(queries, k)
    fast = ProfileIndex(profiles)
    fast.float32 = True
    idx, dist = fast.query(queries, k)
    assert fast.uncertified > 0 and fast.full_searches == 0
    np.testing.assert_array_equal(np.sort(idx, axis=1), np.sort(exact[0], axis=1))
    np.testing.assert_allclose(dist, exact[1], rtol=1e-5)
    same = np.repeat(profiles[:1], 40, axis=0)  # 40 copies: all candidates tie at the border
    tied = ProfileIndex(np.vstack([profiles, same]))
    tied.float32, tied.margin = True, 4
    idx, _ = tied.query(same[:1] + 1e-3, k)
    assert tied.full_searches == 1
    np.testing.assert_array_equal(np.sort(idx, axis=1),
                                  np.sort(ProfileIndex(np.vstack([profiles, same])).query(
                                      same[:1] + 1e-3, k)[0], axis=1))


def test_float32_searches_are_used_only_from_the_size_threshold(tiny_pair, monkeypatch):
    """Below `FLOAT32_SEARCH_CELLS` ST cells no profile search takes the float32 path (the
    outputs stay those of float64 searches); with the threshold lowered to the ST's size the
    searches take it, and the imputation is the same to float rounding."""
    from spalstf.prior.neighbours import ProfileIndex

    st, sc = tiny_pair
    calls = []
    original = ProfileIndex._query_float32

    def counting(self, queries, k):
        calls.append(len(queries))
        return original(self, queries, k)

    monkeypatch.setattr(ProfileIndex, "_query_float32", counting)
    opts = dict(seed=0, progress=False, batch_size=16)
    exact = spalstf.impute(st, sc, **opts)
    assert not calls
    monkeypatch.setattr(columns_module, "FLOAT32_SEARCH_CELLS", st.n_obs)
    fast = spalstf.impute(st, sc, **opts)
    assert sum(calls) > st.n_obs
    np.testing.assert_allclose(fast.X, exact.X, atol=1e-4)


def test_a_source_predicting_few_cells_reads_only_them_and_the_statistics_cells(
        tiny_model, tiny_pair, monkeypatch):
    """A `ColumnSource` told it will predict few cells (the self-check's) does not compute the
    views of every cell: only those `prepare` reads and those predicted, with the values of a
    source that holds every view."""
    from spalstf.model.predict import st_known_genes
    from spalstf.prior import base

    st, _ = tiny_pair
    cfg = tiny_model.config.replace(batch_size=16)
    expr = as_expression(st)
    columns = ["knn|expression|expression", "ridge|spatial|expression"]
    opts = dict(log_normalized=False, spatial=None, seed=0, device=torch.device("cpu"))
    searched = []
    graph = columns_module.expression_graph

    def counting(*args, **kwargs):
        neighbours = graph(*args, **kwargs)

        def search(cells):
            searched.append(np.array(cells))
            return neighbours(cells)
        return search

    monkeypatch.setattr(columns_module, "expression_graph", counting)
    known = st_known_genes(tiny_model, expr)
    held = columns_module.ColumnSource(tiny_model, expr, known, cfg, columns, **opts)
    assert len(np.unique(np.concatenate(searched))) == st.n_obs
    # statistics on 10 cells, 5 cells predicted: 15 of the 60 read
    monkeypatch.setattr(columns_module, "STAT_CELLS", 10)
    monkeypatch.setattr(columns_module, "spaced_blocks", lambda read, n, block: base.spaced_blocks(
        read, n, block, max_cells=10))
    held = columns_module.ColumnSource(tiny_model, expr, known, cfg, columns, **opts)
    searched.clear()
    few = columns_module.ColumnSource(tiny_model, expr, known, cfg, columns, n_predicted=5,
                                      **opts)
    cells = np.array([3, 17, 30, 41, 58])
    got, want = few.predict(cells), held.predict(cells)
    assert len(np.unique(np.concatenate(searched))) <= 15
    for name in columns:
        np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_neighbour_mean_is_numpys_mean_of_the_gathered_rows(dtype):
    from spalstf.spatial import neighbour_mean

    rng = np.random.default_rng(3)
    values = (rng.random((80, 9)) * 50).astype(dtype)
    for k in (1, 2, 8, 15):
        nbrs = rng.integers(0, 80, size=(30, k))
        got = neighbour_mean(values, nbrs)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, values[nbrs].mean(axis=1))


def _count_normalised_rows(monkeypatch) -> list[int]:
    """The rows of every call of the sources' `log_normalize`, recorded from now on."""
    normalised: list[int] = []
    plain = columns_module.log_normalize

    def counting(known, *args, **kwargs):
        normalised.append(len(known))
        return plain(known, *args, **kwargs)

    monkeypatch.setattr(columns_module, "log_normalize", counting)
    return normalised


def test_views_read_a_chunk_at_a_time_normalise_each_cell_once_where_the_values_fit(
        tiny_pair, monkeypatch):
    """Above HELD_VIEW_BYTES but within HELD_VALUES_BYTES every cell's log-normalised known
    genes are held: the chunks' smoothing reads its neighbours' neighbours from them, so each
    cell is normalised once per source (the self-check's two folds and the run), not once per
    chunk that reads it, and the result is that of held views."""
    st, sc = tiny_pair
    opts = dict(seed=0, progress=False, batch_size=16)
    held = spalstf.impute(st, sc, **opts)
    normalised = _count_normalised_rows(monkeypatch)
    monkeypatch.setattr(columns_module, "HELD_VIEW_BYTES", 0)
    chunked = spalstf.impute(st, sc, **opts)
    _assert_same_result(chunked, held)
    assert sum(normalised) == 3 * st.n_obs, normalised
    normalised.clear()
    monkeypatch.setattr(columns_module, "HELD_VALUES_BYTES", 0)  # nothing held: many more reads
    _assert_same_result(spalstf.impute(st, sc, **opts), held)
    assert sum(normalised) > 3 * st.n_obs, normalised


def test_held_rows_are_served_from_the_held_values_and_others_read():
    from spalstf.spatial import held_rows_reader

    values = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    asked = []

    def read(rows):
        asked.append(np.array(rows))
        return values[rows] * 2

    reader = held_rows_reader(read, np.array([3, 7, 20, 41]), 50, block=3)
    assert [len(a) for a in asked] == [3, 1]  # the held rows, in blocks
    asked.clear()
    np.testing.assert_array_equal(reader(np.array([7, 41])), values[[7, 41]] * 2)
    assert asked == []  # all held: nothing read
    rows = np.array([0, 3, 8, 20, 49])
    np.testing.assert_array_equal(reader(rows), values[rows] * 2)
    np.testing.assert_array_equal(asked[0], [0, 8, 49])  # only the rows not held


def test_chunked_spatial_views_hold_the_landmarks_values_with_the_same_result(tiny_pair,
                                                                            monkeypatch):
    """Where the spatial view is read a chunk at a time, the spatial values of the expression
    graph's landmarks (every cell's expression neighbours) are held: the result is that of held
    views, and of the path that recomputes them per chunk, and each landmark's spatial
    smoothing is computed once per source instead of once per chunk that reads it."""
    st, sc = tiny_pair
    opts = dict(seed=0, progress=False, batch_size=16)
    held = spalstf.impute(st, sc, **opts)
    monkeypatch.setattr(spatial_module, "EXPRESSION_LANDMARKS", 40)  # some cells only
    held_few = spalstf.impute(st, sc, **opts)
    smoothed_rows = []
    plain = columns_module.smoothed_reader

    def counting(read, nbrs, weight):
        reader = plain(read, nbrs, weight)
        if callable(nbrs):  # the expression smoothing: not counted
            return reader

        def read_spatial(rows):
            smoothed_rows.append(np.array(rows))
            return reader(rows)
        return read_spatial

    monkeypatch.setattr(columns_module, "smoothed_reader", counting)
    monkeypatch.setattr(columns_module, "HELD_VIEW_BYTES", 0)
    chunked = spalstf.impute(st, sc, **opts)
    _assert_same_result(chunked, held_few)
    landmarks = spatial_module.expression_landmarks(st.n_obs)
    with_cache = np.bincount(np.concatenate(smoothed_rows), minlength=st.n_obs)[landmarks]
    smoothed_rows.clear()
    monkeypatch.setattr(columns_module, "LANDMARK_VIEW_BYTES", 0)  # recomputed per chunk
    _assert_same_result(spalstf.impute(st, sc, **opts), held_few)
    without = np.bincount(np.concatenate(smoothed_rows), minlength=st.n_obs)[landmarks]
    assert with_cache.sum() < without.sum(), (with_cache.sum(), without.sum())
    assert not np.allclose(held_few.X, held.X)  # the landmarks changed the neighbours


def test_every_cells_values_are_held_once_not_beside_a_list_of_their_blocks():
    """The held normalised values (1.2 GB at 10^6 cells x 300 known genes) are filled a block at
    a time: memory at most the values and the blocks in flight, not the values twice."""
    import tracemalloc
    from types import SimpleNamespace

    source = object.__new__(columns_module.ColumnSource)
    source.expr, source.st_known = SimpleNamespace(n_cells=80_000), [f"g{i}" for i in range(100)]
    source.workers, source.one_thread_ops = 1, False

    def read(rows):
        return np.repeat(rows[:, None].astype(np.float32), 100, axis=1)

    tracemalloc.start()
    try:
        held = source._every_cell(read)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(held, read(np.arange(80_000)))
    assert peak < 1.5 * held.nbytes, (peak, held.nbytes)


def test_chunked_views_without_held_values_hold_the_landmarks_known_genes(tiny_pair,
                                                                         monkeypatch):
    """Where neither the views nor every cell's known genes are held (HELD_VALUES_BYTES: 10^6
    cells x 600 genes), the landmarks' known genes are, for the expression view's smoothing
    (every expression neighbour is a landmark): the result is that of held views, and fewer
    rows are read and normalised from the input than when each chunk reads them again.
    Without coordinates: the spatial view's own landmark values are another test's."""
    st, sc = tiny_pair
    opts = dict(seed=0, progress=False, batch_size=16, spatial=False)
    monkeypatch.setattr(spatial_module, "EXPRESSION_LANDMARKS", 40)  # some cells only
    held = spalstf.impute(st, sc, **opts)
    normalised = _count_normalised_rows(monkeypatch)
    monkeypatch.setattr(columns_module, "HELD_VIEW_BYTES", 0)
    monkeypatch.setattr(columns_module, "HELD_VALUES_BYTES", 0)
    _assert_same_result(spalstf.impute(st, sc, **opts), held)
    with_cache = sum(normalised)
    normalised.clear()
    monkeypatch.setattr(columns_module, "LANDMARK_VIEW_BYTES", 0)  # read per chunk
    _assert_same_result(spalstf.impute(st, sc, **opts), held)
    assert with_cache < sum(normalised), (with_cache, sum(normalised))


def test_known_depth_reads_fewer_cells_at_a_time_on_large_panels(tiny_pair, tiny_model,
                                                                  monkeypatch):
    """`known_depth` reads at most DEPTH_VALUES values at a time (65,536 cells x 5,000 genes
    was a 2.6 GB block), DEPTH_CHUNK cells on small panels, with the same totals."""
    from spalstf.model import predict as predict_module

    st, _ = tiny_pair
    expr = as_expression(st)
    whole = predict_module.known_depth(tiny_model, expr, 5, 60)
    np.testing.assert_array_equal(whole, as_counts(st.X)[5:, :].sum(axis=1))
    read = []
    plain = expr.columns

    def counting(genes, rows=None):
        read.append(rows.stop - rows.start)
        return plain(genes, rows)

    monkeypatch.setattr(expr, "columns", counting)
    monkeypatch.setattr(predict_module, "DEPTH_VALUES", 10 * len(tiny_model.known_genes))
    np.testing.assert_array_equal(predict_module.known_depth(tiny_model, expr, 5, 60), whole)
    assert read == [10] * 5 + [5]
    read.clear()
    monkeypatch.setattr(predict_module, "DEPTH_CHUNK", 7)  # the cap on small panels
    predict_module.known_depth(tiny_model, expr, 5, 60)
    assert max(read) == 7


def test_landmarks_spatial_values_read_from_the_input_in_blocks_bounded_by_the_panel(
        tiny_pair, monkeypatch):
    """Where the known genes are read from the input, the landmarks' spatial values are
    computed LANDMARK_BLOCK_VALUES // known genes landmarks at a time (each block reads its
    landmarks' spatial neighbours: at 5,000 genes, 8,192 landmarks read most of a 2x10^5-cell
    ST at once), BLOCK where the known genes are held; the result is the same."""
    st, sc = tiny_pair
    opts = dict(seed=0, progress=False, batch_size=16)
    monkeypatch.setattr(spatial_module, "EXPRESSION_LANDMARKS", 40)
    held = spalstf.impute(st, sc, **opts)
    blocks = []
    plain = columns_module.held_rows_reader

    def recording(read, rows, n_cells, block=8192):
        blocks.append(block)
        return plain(read, rows, n_cells, block)

    monkeypatch.setattr(columns_module, "held_rows_reader", recording)
    monkeypatch.setattr(columns_module, "HELD_VIEW_BYTES", 0)
    monkeypatch.setattr(columns_module, "LANDMARK_BLOCK_VALUES", 7 * st.n_vars)
    _assert_same_result(spalstf.impute(st, sc, **opts), held)
    assert set(blocks) == {columns_module.BLOCK}, blocks  # the known genes held
    blocks.clear()
    monkeypatch.setattr(columns_module, "HELD_VALUES_BYTES", 0)
    _assert_same_result(spalstf.impute(st, sc, **opts), held)
    assert 7 in blocks, blocks


def test_prepare_reads_the_raw_view_from_held_known_genes_not_a_copy(tiny_model, tiny_pair,
                                                                     monkeypatch):
    """Where views are read a chunk at a time but every cell's known genes are held, the cells
    `prepare` reads are copied once per smoothed view for all predictors, not for the raw view
    (a gather from the held values: 1 GB of copies at 50,000 cells x 5,000 genes): each
    predictor of the raw view reads its blocks itself, with the values of held views."""
    from spalstf.model.predict import st_known_genes
    from spalstf.prior import base

    st, _ = tiny_pair
    cfg = tiny_model.config.replace(batch_size=16)
    expr = as_expression(st)
    columns = ["knn|raw|expression", "ridge|raw|expression", "knn|spatial|expression"]
    opts = dict(log_normalized=False, spatial=None, seed=0, device=torch.device("cpu"))
    known = st_known_genes(tiny_model, expr)
    held = columns_module.ColumnSource(tiny_model, expr, known, cfg, columns, **opts)
    calls = []

    def counting(read, n, block, **kwargs):
        calls.append(n)
        return base.spaced_blocks(read, n, block, **kwargs)

    monkeypatch.setattr(columns_module, "spaced_blocks", counting)
    monkeypatch.setattr(columns_module, "HELD_VIEW_BYTES", 0)
    chunked = columns_module.ColumnSource(tiny_model, expr, known, cfg, columns, **opts)
    assert chunked._held is not None
    assert len(calls) == 3  # the smoothed views' cells once, then each raw predictor's
    cells = np.arange(st.n_obs)
    got, want = chunked.predict(cells), held.predict(cells)
    for name in columns:
        np.testing.assert_array_equal(got[name], want[name])
