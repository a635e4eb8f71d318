"""Baseline imputation methods: shapes, scale, no leakage, hand-checkable cases."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from spalstf.evaluate import baselines as B
from spalstf.evaluate import metrics as M


def tiny_pair(
    n_st: int = 60, n_sc: int = 90, n_genes: int = 12, n_types: int = 3, seed: int = 0
) -> tuple[ad.AnnData, ad.AnnData]:
    """ST and reference counts drawn from the same cell-type profiles, different depths."""
    rng = np.random.default_rng(seed)
    profiles = rng.gamma(0.7, 1.0, size=(n_types, n_genes)) + 0.05
    profiles /= profiles.sum(axis=1, keepdims=True)
    genes = [f"G{i}" for i in range(n_genes)]

    def draw(n: int, depth: float) -> tuple[np.ndarray, np.ndarray]:
        t = rng.integers(0, n_types, size=n)
        lib = rng.lognormal(np.log(depth), 0.3, size=n)
        return rng.poisson(profiles[t] * lib[:, None]).astype(np.float32), t

    xs, ts = draw(n_st, 150.0)
    xr, tr = draw(n_sc, 600.0)
    st = ad.AnnData(xs, obs=pd.DataFrame(index=[f"s{i}" for i in range(n_st)]))
    st.var_names = genes
    st.obs["true_type"] = ts
    st.obsm["spatial"] = rng.uniform(0, 100, size=(n_st, 2))
    # the reference has two extra genes the ST lacks, and its genes in another order
    extra = rng.poisson(5, size=(n_sc, 2)).astype(np.float32)
    order = rng.permutation(n_genes)
    sc = ad.AnnData(
        np.hstack([xr[:, order], extra]), obs=pd.DataFrame(index=[f"r{i}" for i in range(n_sc)])
    )
    sc.var_names = [genes[i] for i in order] + ["X1", "X2"]
    sc.obs["cell_type"] = pd.Categorical([f"T{t}" for t in tr])
    return st, sc


TARGETS = ["G1", "G4", "G7"]


@pytest.fixture
def pair() -> tuple[ad.AnnData, ad.AnnData]:
    st, sc = tiny_pair()
    known = [g for g in st.var_names if g not in TARGETS]
    return st[:, known].copy(), sc


@pytest.mark.parametrize("name", ["mean", "libsize", "knn", "spage", "ridge"])
def test_baseline_contract(name: str, pair: tuple[ad.AnnData, ad.AnnData]) -> None:
    st_known, sc = pair
    st0, sc0 = st_known.copy(), sc.copy()
    out = B.get_method(name)(st_known, sc, TARGETS, seed=0)
    assert isinstance(out, np.ndarray) and out.shape == (st_known.n_obs, len(TARGETS))
    assert np.isfinite(out).all() and (out >= 0).all()
    np.testing.assert_array_equal(st_known.X, st0.X)
    np.testing.assert_array_equal(sc.X, sc0.X)
    assert list(sc.var_names) == list(sc0.var_names)
    again = B.get_method(name)(st_known, sc, TARGETS, seed=0)
    np.testing.assert_array_equal(out, again)


def test_reference_mean_hand_computed() -> None:
    st = ad.AnnData(np.array([[1.0, 1.0], [2.0, 0.0]], dtype=np.float32))
    st.var_names = ["a", "b"]
    sc = ad.AnnData(np.array([[1.0, 1.0, 2.0], [0.0, 4.0, 0.0], [0.0, 0.0, 7.0]], np.float32))
    sc.var_names = ["a", "b", "t"]
    out = B.reference_mean(st, sc, ["t"], seed=0)
    # the third reference cell has no known-gene count: left out; library over known genes
    expected = (np.log1p(2 / 2 * 1e4) + np.log1p(0.0)) / 2
    np.testing.assert_allclose(out, [[expected], [expected]])


def test_library_size_is_depth_alone(pair: tuple[ad.AnnData, ad.AnnData]) -> None:
    # log1p(L / L * 1e4) for every cell and gene: on the known-gene-normalised scale the depth
    # prediction is a constant; expm1(value) * L / 1e4 gives the depth L back
    st_known, sc = pair
    out = B.get_method("libsize")(st_known, sc, TARGETS, seed=0)
    np.testing.assert_allclose(out, np.log1p(1e4))
    depth = np.asarray(st_known.X).sum(axis=1)
    np.testing.assert_allclose(np.expm1(out[:, 0]) * depth / 1e4, depth, rtol=1e-12)
    assert "libsize" in B.BASELINES


def test_knn_k1_copies_the_nearest_reference_cell() -> None:
    st, sc = tiny_pair(seed=3)
    known = [g for g in st.var_names if g not in TARGETS]
    st_known = ad.AnnData(sc[:5, known].X.copy())  # ST cells identical to reference cells
    st_known.var_names = known
    out = B.knn(st_known, sc, TARGETS, seed=0, k=1)
    lib = sc[:5, known].X.sum(axis=1, keepdims=True)
    expected = np.log1p(sc[:5, TARGETS].X / lib * 1e4)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_structured_data_is_predicted(pair: tuple[ad.AnnData, ad.AnnData]) -> None:
    st, _ = tiny_pair()
    st_known, sc = pair
    truth = B.lognormalize(st[:, TARGETS].X.astype(float), st.X.sum(axis=1))
    for name in ("knn", "spage", "ridge"):
        pred = B.get_method(name)(st_known, sc, TARGETS, seed=0)
        assert np.nanmedian(M.pcc(truth, pred)) > 0.5, name


def test_prediction_ignores_hidden_reference_noise(pair: tuple[ad.AnnData, ad.AnnData]) -> None:
    """Known-gene inputs only: changing a non-target reference gene the ST lacks changes
    nothing."""
    st_known, sc = pair
    sc2 = sc.copy()
    sc2.X[:, list(sc2.var_names).index("X1")] += 100
    for name in ("knn", "spage", "ridge", "mean"):
        a = B.get_method(name)(st_known, sc, TARGETS, seed=0)
        b = B.get_method(name)(st_known, sc2, TARGETS, seed=0)
        np.testing.assert_allclose(a, b, err_msg=name)


def test_errors(pair: tuple[ad.AnnData, ad.AnnData]) -> None:
    st_known, sc = pair
    with pytest.raises(ValueError, match="absent from `sc`"):
        B.knn(st_known, sc, ["NOPE"], seed=0)
    with pytest.raises(ValueError, match="unknown|Unknown"):
        B.get_method("magic")
    other = ad.AnnData(np.ones((3, 2), np.float32))
    other.var_names = ["u", "v"]
    with pytest.raises(ValueError, match="share no known gene"):
        B.knn(other, sc, TARGETS, seed=0)


def test_get_method_binds_options(pair: tuple[ad.AnnData, ad.AnnData]) -> None:
    st_known, sc = pair
    a = B.get_method("knn", k=1)(st_known, sc, TARGETS, seed=0)
    b = B.knn(st_known, sc, TARGETS, seed=0, k=1)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name, module", [("tangram", "tangram"), ("gimvi", "scvi")])
def test_optional_methods_say_what_to_install(
    name: str, module: str, pair: tuple[ad.AnnData, ad.AnnData]
) -> None:
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed")
    st_known, sc = pair
    with pytest.raises(ImportError, match="pip install"):
        B.get_method(name)(st_known, sc, TARGETS, seed=0)


needs_tangram = pytest.mark.skipif(
    importlib.util.find_spec("tangram") is None, reason="tangram-sc (benchmark extra) absent"
)


@needs_tangram
@pytest.mark.parametrize("with_types", [True, False])
def test_tangram_contract_and_mode(
    with_types: bool, pair: tuple[ad.AnnData, ad.AnnData], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tangram as tg

    st_known, sc = pair
    if not with_types:
        del sc.obs["cell_type"]
    st0, sc0 = st_known.copy(), sc.copy()
    modes: list[str] = []
    real = tg.map_cells_to_space

    def spy(*args, **kwargs):
        modes.append((kwargs["mode"], kwargs["cluster_label"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(tg, "map_cells_to_space", spy)
    out, counts = B.tangram(st_known, sc, TARGETS, seed=0, num_epochs=200)
    # clusters mode maps the reference's cell types; without them, its Leiden clusters
    assert modes == [("clusters", "cell_type" if with_types else "leiden")]
    assert out.shape == counts.shape == (st_known.n_obs, len(TARGETS))
    assert np.isfinite(out).all() and (out >= 0).all()
    assert np.isfinite(counts).all() and (counts >= 0).all()
    # the counts are those of the mapped cells' mean profile at each cell's known-gene depth:
    # back on the log-normalised scale, within the range of the reference's per-cell values of
    # each gene (the projection, a sum over the mapped cells, is not: several cells a spot)
    mean_profile = B.lognormalize(counts, np.asarray(st_known.X).sum(axis=1))
    _, _, sc_y, _ = B._prepare(st_known, sc, TARGETS)
    assert (mean_profile <= sc_y.max(axis=0) + 1e-6).all()
    assert (mean_profile >= sc_y.min(axis=0) - 1e-6).all()
    assert (out > sc_y.max(axis=0)).any()
    np.testing.assert_array_equal(st_known.X, st0.X)
    np.testing.assert_array_equal(sc.X, sc0.X)
    assert list(sc.var_names) == list(sc0.var_names) and list(sc.obs) == list(sc0.obs)
    again = B.tangram(st_known, sc, TARGETS, seed=0, num_epochs=200)
    np.testing.assert_array_equal(out, again[0])
    np.testing.assert_array_equal(counts, again[1])
    # the mapping carries the cell-type structure of the hidden genes
    st_full, _ = tiny_pair()
    x = st_full[:, TARGETS].X
    truth = B.lognormalize(np.asarray(x, dtype=float), st_full.X.sum(axis=1))
    assert np.nanmedian(M.pcc(truth, out)) > 0.5


@needs_tangram
def test_tangram_leaves_the_callers_logging_alone(tmp_path) -> None:
    # tangram's import sets the root logger to INFO; in a fresh process, the first call must
    # not leave it so (or every INFO record of every library would be printed from then on)
    import subprocess
    import sys

    code = (
        "import logging, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_baselines import TARGETS, tiny_pair\n"
        "from spalstf.evaluate import baselines as B\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "st, sc = tiny_pair()\n"
        "known = [g for g in st.var_names if g not in TARGETS]\n"
        "B.tangram(st[:, known].copy(), sc, TARGETS, seed=0, num_epochs=5)\n"
        "print(logging.getLogger().level)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == str(logging.WARNING)
    assert "INFO:root" not in run.stderr


@needs_tangram
def test_tangram_seed_zero_is_reproducible_and_leaves_global_rngs(
    pair: tuple[ad.AnnData, ad.AnnData],
) -> None:
    import torch

    st_known, sc = pair
    np.random.seed(123)
    torch.manual_seed(123)
    expected_np, expected_torch = np.random.random(), torch.rand(1).item()
    np.random.seed(123)
    torch.manual_seed(123)
    a = B.tangram(st_known, sc, TARGETS, seed=0, num_epochs=50)
    # the caller's generators continue as if tangram had not run
    assert np.random.random() == expected_np and torch.rand(1).item() == expected_torch
    b = B.tangram(st_known, sc, TARGETS, seed=0, num_epochs=50)
    np.testing.assert_array_equal(a, b)
    c = B.tangram(st_known, sc, TARGETS, seed=1, num_epochs=50)
    assert not np.array_equal(a, c)


@needs_tangram
def test_tangram_cells_maps_cells_with_the_count_prior(
    pair: tuple[ad.AnnData, ad.AnnData], monkeypatch: pytest.MonkeyPatch
) -> None:
    import tangram as tg

    st_known, sc = pair
    st0, sc0 = st_known.copy(), sc.copy()
    calls: list[dict] = []
    real_map, real_project = tg.map_cells_to_space, tg.project_genes
    projections: list[np.ndarray] = []

    def spy(ad_sc, ad_sp, **kwargs):
        # Li et al.'s inputs: the ST as raw counts, the reference log-normalised
        np.testing.assert_array_equal(ad_sp.X, np.asarray(st_known.X))
        calls.append({"mode": kwargs["mode"], "density_prior": kwargs["density_prior"]})
        return real_map(ad_sc, ad_sp, **kwargs)

    def project(*args, **kwargs):
        out = real_project(*args, **kwargs)
        projections.append(np.asarray(out[:, [g.lower() for g in TARGETS]].X))
        return out

    monkeypatch.setattr(tg, "map_cells_to_space", spy)
    monkeypatch.setattr(tg, "project_genes", project)
    out = B.get_method("tangram_cells")(st_known, sc, TARGETS, seed=0, num_epochs=30)
    assert calls == [{"mode": "cells", "density_prior": "rna_count_based"}]
    assert out.shape == (st_known.n_obs, len(TARGETS)) and np.isfinite(out).all()
    np.testing.assert_array_equal(st_known.X, st0.X)
    np.testing.assert_array_equal(sc.X, sc0.X)
    # turned back into counts at each cell's depth, it is Tangram's own projection
    depth = np.asarray(st_known.X, dtype=np.float64).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.expm1(out) * depth / 1e4, projections[0], rtol=1e-5, atol=1e-9)
    again = B.get_method("tangram_cells")(st_known, sc, TARGETS, seed=0, num_epochs=30)
    np.testing.assert_array_equal(out, again)


@needs_tangram
@pytest.mark.parametrize("mode", ["cells", "clusters"])
def test_tangram_map_is_tangrams_own_to_the_bit(
    mode: str, pair: tuple[ad.AnnData, ad.AnnData]
) -> None:
    # _seeded_map leaves out Tangram's entropy term at its default weight 0 (a third of an
    # epoch's time): the map must be the one Tangram's own loss gives, and Tangram's class is
    # left as it was
    import tangram as tg

    st_known, sc = pair
    ad_sc, ad_sp, _ = B.tangram_cells_inputs(tg, st_known, sc, TARGETS)
    options = {"mode": mode, "num_epochs": 40, "density_prior": "rna_count_based"}
    if mode == "clusters":
        options["cluster_label"] = "cell_type"
    own_loss = tg.mapping_optimizer.Mapper._loss_fn
    ours = B._seeded_map(tg, ad_sc.copy(), ad_sp.copy(), seed=3, device="cpu", **options)
    assert tg.mapping_optimizer.Mapper._loss_fn is own_loss
    np.random.seed(3)
    theirs = tg.map_cells_to_space(ad_sc.copy(), ad_sp.copy(), device="cpu", random_state=3,
                                   verbose=False, **options)
    np.testing.assert_array_equal(ours.X, theirs.X)
    assert np.isfinite(ours.X).all()
    # what the unweighted terms read in the history is unchanged too (0/0: NaN)
    for key in ("total_loss", "main_loss", "kl_reg", "entropy_reg"):
        assert ours.uns["training_history"][key] == theirs.uns["training_history"][key], key
