"""Leave-genes-out cross-validation."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from sklearn.model_selection import KFold
from test_baselines import tiny_pair

from spalstf.evaluate.baselines import lognormalize
from spalstf.evaluate.cv import cross_validate, gene_folds, st_trained_ridge


@pytest.fixture(scope="module")
def pair() -> tuple[ad.AnnData, ad.AnnData]:
    return tiny_pair(n_st=50, n_sc=80, n_genes=10)


def test_gene_folds_are_sklearn_kfold() -> None:
    genes = [f"g{i}" for i in range(11)]
    folds = gene_folds(genes, 5, seed=3)
    kf = KFold(n_splits=5, shuffle=True, random_state=3)
    assert folds == [[genes[i] for i in t] for _, t in kf.split(genes)]
    assert sorted(sum(folds, [])) == sorted(genes)
    with pytest.raises(ValueError, match="n_folds"):
        gene_folds(genes[:3], 5)


def test_cv_never_shows_held_out_genes(pair: tuple[ad.AnnData, ad.AnnData]) -> None:
    st, sc = pair
    seen: list[tuple[list[str], list[str]]] = []

    def spy(st_known, sc_, target_genes, *, seed):
        seen.append((list(st_known.var_names), list(target_genes)))
        assert st_known.n_obs == st.n_obs and sc_.n_vars == sc.n_vars
        return np.ones((st_known.n_obs, len(target_genes)))

    res = cross_validate(st, sc, n_folds=5, methods={"spy": spy}, clustering=False)
    assert len(seen) == 5
    for known, targets in seen:
        assert not set(known) & set(targets)
        assert set(known) | set(targets) == set(st.var_names)
    assert [t for _, t in seen] == res.folds


def test_cv_scores_align_genes_and_truths(pair: tuple[ad.AnnData, ad.AnnData]) -> None:
    st, sc = pair
    x = st.X.astype(float)
    truth = lognormalize(x, x.sum(axis=1))
    genes = list(st.var_names)

    def oracle(st_known, sc_, target_genes, *, seed):
        return truth[:, [genes.index(g) for g in target_genes]]

    def anti(st_known, sc_, target_genes, *, seed):
        return truth[:, [genes.index(g) for g in target_genes]].max() - oracle(
            st_known, sc_, target_genes, seed=seed
        )

    st0, sc0 = st.copy(), sc.copy()
    res = cross_validate(st, sc, methods=[oracle, anti, "mean", "knn"], seed=1)
    np.testing.assert_array_equal(st.X, st0.X)
    np.testing.assert_array_equal(sc.X, sc0.X)
    pg = res.per_gene
    assert set(pg.columns) >= {
        "truth",
        "method",
        "fold",
        "gene",
        "pcc",
        "spcc",
        "ssim",
        "rmse",
        "js",
    }
    assert len(pg) == 2 * 4 * st.n_vars
    lg = pg[(pg.truth == "lognorm") & (pg.method == "oracle")]
    np.testing.assert_allclose(lg["pcc"], 1.0)
    np.testing.assert_allclose(lg["rmse"], 0.0, atol=1e-6)
    np.testing.assert_allclose(pg[(pg.truth == "lognorm") & (pg.method == "anti")]["pcc"], -1.0)
    tab = res.table("lognorm")
    assert tab.loc["oracle", "AS"] == pytest.approx(1.0)
    assert tab.loc["oracle", "ari"] == pytest.approx(1.0)
    # the constant reference mean: every correlation NaN and counted, never dropped
    assert tab.loc["mean", "pcc_n_nan"] == st.n_vars and np.isnan(tab.loc["mean", "pcc"])
    assert res.predictions["knn"].shape == st.shape
    assert not res.predictions["knn"].isna().any().any()
    # the raw-count truth is scored too
    assert np.isfinite(res.table("counts").loc["knn", "pcc"])
    assert (res.summary["wall_time_s"] >= 0).all()


def test_cv_errors(pair: tuple[ad.AnnData, ad.AnnData]) -> None:
    st, sc = pair

    def bad(st_known, sc_, target_genes, *, seed):
        return np.ones((3, 1))

    with pytest.raises(ValueError, match="'bad' returned shape"):
        cross_validate(st, sc, methods=[bad], clustering=False)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        cross_validate(st, sc, methods="nope")
    with pytest.raises(KeyError, match="st_layer"):
        cross_validate(st, sc, methods="mean", st_layer="counts")
    with pytest.raises(TypeError, match="AnnData"):
        cross_validate(st.X, sc, methods="mean")


def test_cv_method_options_and_string(pair: tuple[ad.AnnData, ad.AnnData]) -> None:
    st, sc = pair
    a = cross_validate(
        st, sc, methods="knn,ridge", method_options={"knn": {"k": 3}}, clustering=False
    )
    b = cross_validate(st, sc, methods=["knn"], method_options={"knn": {"k": 40}}, clustering=False)
    assert list(a.table().index) == ["knn", "ridge"]
    assert not np.allclose(a.predictions["knn"], b.predictions["knn"])


def test_cv_runs_spalstf_itself(pair: tuple[ad.AnnData, ad.AnnData]) -> None:
    pytest.importorskip("spalstf.api")
    st, sc = pair
    res = cross_validate(
        st,
        sc,
        methods=["spalstf"],
        method_options={"spalstf": {"epochs": 1, "n_steps": 2, "n_samples": 1}},
        clustering=False,
    )
    p = res.predictions["spalstf"].to_numpy()
    assert p.shape == st.shape and np.isfinite(p).all() and (p >= 0).all()


def test_benchmark_cli(pair: tuple[ad.AnnData, ad.AnnData], tmp_path) -> None:
    import argparse

    from spalstf.evaluate import _cli

    st, sc = pair
    st.write_h5ad(tmp_path / "st.h5ad")
    sc.write_h5ad(tmp_path / "sc.h5ad")
    parser = argparse.ArgumentParser(prog="spalstf")
    _cli.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    args_list = [
        "benchmark",
        "--st",
        str(tmp_path / "st.h5ad"),
        "--sc",
        str(tmp_path / "sc.h5ad"),
        "--methods",
        "knn,mean",
        "--out",
        str(out),
        "--no-clustering",
    ]
    args = parser.parse_args(args_list)
    assert args.func(args) == 0
    for f in ("per_gene.csv", "summary.csv", "summary.md", "per_gene.png"):
        assert (out / f).is_file(), f
    assert "| knn |" in (out / "summary.md").read_text()
    # with --checkpoint, each method's folds are saved for a resumed run
    args = parser.parse_args([*args_list, "--checkpoint", str(tmp_path / "saved")])
    assert args.func(args) == 0
    assert len(list((tmp_path / "saved" / "knn").glob("fold*.npz"))) == 5
    bad = parser.parse_args(
        [
            "benchmark",
            "--st",
            str(tmp_path / "nope.h5ad"),
            "--sc",
            str(tmp_path / "sc.h5ad"),
            "--out",
            str(out),
        ]
    )
    assert bad.func(bad) == 2


def test_markdown_table_keeps_bars_inside_a_cell() -> None:
    """The stack's column names hold "|": escaped, every row keeps as many cells as the head."""
    import re

    import pandas as pd

    from spalstf.evaluate._cli import markdown_table

    table = markdown_table(pd.DataFrame({"weight": [0.5, 0.25]},
                                        index=["ridge|spatial|expression", "knn|raw|at_depth"]),
                           index_name="column")
    rows = table.splitlines()
    cells = [len(re.split(r"(?<!\\)\|", row)) for row in rows]
    assert len(set(cells)) == 1, table
    assert rows[2] == "| ridge\\|spatial\\|expression | 0.500 |"


@pytest.fixture(scope="module")
def wide_pair() -> tuple[ad.AnnData, ad.AnnData]:
    return tiny_pair(n_st=40, n_sc=60, n_genes=23)


def test_li2022_uses_ten_unshuffled_folds_and_adds_libsize(
    wide_pair: tuple[ad.AnnData, ad.AnnData],
) -> None:
    st, sc = wide_pair
    res = cross_validate(st, sc, methods="mean", protocol="li2022", clustering=False)
    genes = list(st.var_names)
    kf = KFold(n_splits=10)  # Li et al.'s kfold: no shuffle
    assert res.folds == [[genes[i] for i in t] for _, t in kf.split(genes)]
    assert res.protocol == "li2022"
    assert set(res.per_gene["method"]) == {"mean", "libsize"}
    assert set(res.counts_predictions) == {"mean", "libsize"}
    # the project protocol keeps its 5 shuffled folds and leaves the counts predictions empty
    proj = cross_validate(st, sc, methods="mean", clustering=False)
    assert proj.folds == gene_folds(genes, 5, 0) and proj.counts_predictions == {}
    assert set(proj.per_gene["method"]) == {"mean"}


def _known_depth(st_known: ad.AnnData) -> np.ndarray:
    return np.asarray(st_known.X, dtype=np.float64).sum(axis=1)


def test_li2022_scores_counts_at_each_cells_depth(wide_pair: tuple[ad.AnnData, ad.AnnData]) -> None:
    st, sc = wide_pair
    x = np.asarray(st.X, dtype=np.float64)
    genes = list(st.var_names)

    def depth_scaled_truth(st_known, sc_, target_genes, *, seed):
        # the truth's counts on the log-normalised scale of the known genes: turned back into
        # counts at the cell's depth, they are the truth itself
        return lognormalize(x[:, [genes.index(g) for g in target_genes]], _known_depth(st_known))

    res = cross_validate(
        st, sc, methods={"exact": depth_scaled_truth}, protocol="li2022", clustering=False
    )
    counts = res.per_gene.query("truth == 'counts' and method == 'exact'")
    varying = [g for g in genes if x[:, genes.index(g)].std() > 0]
    np.testing.assert_allclose(counts.set_index("gene").loc[varying, "pcc"], 1.0, atol=1e-9)
    np.testing.assert_allclose(res.counts_predictions["exact"].to_numpy(), x, rtol=1e-5)
    # under the project protocol the same log values against raw counts are not exact
    proj = cross_validate(st, sc, methods={"exact": depth_scaled_truth}, clustering=False)
    assert proj.per_gene.query("truth == 'counts'")["pcc"].median() < 0.999


def test_li2022_libsize_is_the_depth_truth_correlation(
    wide_pair: tuple[ad.AnnData, ad.AnnData],
) -> None:
    from scipy.stats import pearsonr

    st, sc = wide_pair
    x = np.asarray(st.X, dtype=np.float64)
    genes = list(st.var_names)
    res = cross_validate(st, sc, methods="libsize", protocol="li2022", clustering=False)
    rows = res.per_gene.query("truth == 'counts' and method == 'libsize'").set_index("gene")
    for held in res.folds:
        depth = np.delete(x, [genes.index(g) for g in held], axis=1).sum(axis=1)
        for g in held:
            want = pearsonr(depth, x[:, genes.index(g)])[0]
            assert rows.loc[g, "pcc"] == pytest.approx(want, abs=1e-9)
    # on the log-normalised scale it is a constant: no correlation
    assert res.per_gene.query("truth == 'lognorm'")["pcc"].isna().all()


def test_bad_protocol_is_refused(pair: tuple[ad.AnnData, ad.AnnData]) -> None:
    st, sc = pair
    with pytest.raises(ValueError, match="`protocol`.*'li2022'.*'Li'"):
        cross_validate(st, sc, methods="mean", protocol="Li", clustering=False)


def _interruptible_knn() -> tuple[dict, object]:
    """The kNN baseline as a method that counts its folds and raises on the fold named by
    ``state["stop_at"]`` (counted from 1), as an interrupted run would stop there."""
    from spalstf.evaluate.baselines import knn

    state: dict = {"calls": 0, "stop_at": None}

    def interruptible(st_known, sc_, target_genes, *, seed, k=10):
        state["calls"] += 1
        if state["calls"] == state["stop_at"]:
            raise RuntimeError("interrupted")
        return knn(st_known, sc_, target_genes, seed=seed, k=k)

    return state, interruptible


def test_checkpoint_resumes_an_interrupted_run(
    pair: tuple[ad.AnnData, ad.AnnData], tmp_path
) -> None:
    import pandas as pd

    st, sc = pair
    state, method = _interruptible_knn()
    plain = cross_validate(st, sc, methods={"m": method}, clustering=False)
    assert state["calls"] == 5 and plain.resumed == {}

    state.update(calls=0, stop_at=4)
    with pytest.raises(RuntimeError, match="interrupted"):
        cross_validate(st, sc, methods={"m": method}, clustering=False, checkpoint=tmp_path)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "fold00.npz", "fold01.npz", "fold02.npz"
    ]

    state.update(calls=0, stop_at=None)
    resumed = cross_validate(st, sc, methods={"m": method}, clustering=False,
                             checkpoint=tmp_path)
    assert state["calls"] == 2  # only the folds the interruption left unmade
    assert resumed.resumed == {"m": [0, 1, 2]}
    pd.testing.assert_frame_equal(resumed.per_gene, plain.per_gene)
    pd.testing.assert_frame_equal(resumed.predictions["m"], plain.predictions["m"])

    # all five saved now: a rerun makes none and reports the times recorded when they were made
    state.update(calls=0)
    again = cross_validate(st, sc, methods={"m": method}, clustering=False, checkpoint=tmp_path)
    assert state["calls"] == 0 and again.resumed == {"m": [0, 1, 2, 3, 4]}
    pd.testing.assert_frame_equal(again.summary, resumed.summary)


def test_checkpoint_makes_again_what_was_saved_for_other_inputs(
    pair: tuple[ad.AnnData, ad.AnnData], tmp_path, caplog
) -> None:
    st, sc = pair
    state, method = _interruptible_knn()
    first = cross_validate(st, sc, methods={"m": method}, clustering=False, checkpoint=tmp_path)
    assert state["calls"] == 5

    other_st = st.copy()
    other_st.X[0, 0] += 1
    changes = {
        "data": dict(st=other_st),
        "seed": dict(seed=1),
        "options": dict(method_options={"m": {"k": 3}}),
        "folds": dict(n_folds=4),
    }
    for what, change in changes.items():
        state.update(calls=0)
        args = {"st": st, "sc": sc, "methods": {"m": method}, "clustering": False,
                "checkpoint": tmp_path, **change}
        res = cross_validate(args.pop("st"), args.pop("sc"), **args)
        assert res.resumed == {}, what
        assert state["calls"] == len(res.folds), what
    # every saved fold was overwritten by another input's: the original inputs make all again
    state.update(calls=0)
    back = cross_validate(st, sc, methods={"m": method}, clustering=False, checkpoint=tmp_path)
    assert state["calls"] == 5 and back.resumed == {}
    assert np.allclose(back.predictions["m"].to_numpy(), first.predictions["m"].to_numpy())

    # a damaged file is made again, with a warning that names it
    (tmp_path / "m" / "fold04.npz").write_bytes(b"not a zip file")
    state.update(calls=0)
    with caplog.at_level("WARNING", logger="spalstf.evaluate.cv"):
        cross_validate(st, sc, methods={"m": method}, clustering=False, checkpoint=tmp_path)
    assert state["calls"] == 1
    assert "fold04.npz" in caplog.text


def test_li2022_scores_a_methods_own_counts(pair: tuple[ad.AnnData, ad.AnnData],
                                            tmp_path) -> None:
    """A method may return its own counts-scale prediction beside the log-normalised one: Li
    et al.'s protocol scores those counts (spalstf's `layers["counts"]`), saved and loaded by
    the checkpoint with it."""
    st, sc = pair
    counts = np.asarray(st.X, dtype=np.float64)
    genes = list(st.var_names)

    def counts_oracle(st_known, sc_, target_genes, *, seed):
        idx = [genes.index(g) for g in target_genes]
        return np.zeros((st_known.n_obs, len(idx))), counts[:, idx]

    for _ in range(2):  # made, then loaded from the checkpoint
        res = cross_validate(st, sc, methods={"own": counts_oracle}, protocol="li2022",
                             n_folds=5, clustering=False, checkpoint=tmp_path)
        scores = res.per_gene.set_index(["truth", "method"]).sort_index()
        own = scores.loc[("counts", "own"), "pcc"].dropna()
        assert len(own) and np.allclose(own, 1.0)  # its counts, not expm1(0) x depth
        assert scores.loc[("lognorm", "own"), "pcc"].isna().all()  # its constant prediction
        np.testing.assert_allclose(res.counts_predictions["own"].to_numpy(), counts, rtol=1e-6)
    assert res.resumed == {"own": list(range(5)), "libsize": list(range(5))}

    def bad(st_known, sc_, target_genes, *, seed):
        return np.zeros((st_known.n_obs, len(target_genes))), np.zeros((2, 2))

    with pytest.raises(ValueError, match="returned counts of shape"):
        cross_validate(st, sc, methods={"bad": bad}, clustering=False)


def test_li2022_scores_spalstf_counts_layer(pair: tuple[ad.AnnData, ad.AnnData]) -> None:
    import spalstf

    st, sc = pair
    fast = {"predictors": ["knn", "ridge"], "self_check_folds": 2}
    res = cross_validate(st, sc, methods={"spalstf": "spalstf"}, protocol="li2022", n_folds=2,
                         method_options={"spalstf": fast}, clustering=False)
    held = res.folds[0]
    known = [g for g in st.var_names if g not in set(held)]
    out = spalstf.impute(st[:, known].copy(), sc, held, seed=0, progress=False, **fast)
    np.testing.assert_allclose(res.counts_predictions["spalstf"][held].to_numpy(),
                               out.layers["counts"], rtol=1e-5)


def test_st_trained_ridge_scores_only_cells_it_did_not_see() -> None:
    # the anchor learns a held-out gene that follows the known genes, and does not score an
    # unpredictable one above chance: each cell is predicted by a ridge fitted without it
    rng = np.random.default_rng(0)
    n, known = 400, 20
    base = rng.gamma(2.0, 2.0, size=(n, known))
    counts = rng.poisson(base * 5).astype(float)
    following = rng.poisson(base[:, :3].sum(axis=1) * 5)  # follows three known genes
    noise = rng.poisson(20.0, size=n)  # independent of everything
    x = np.column_stack([counts, following, noise])
    st = ad.AnnData(x)
    st.var_names = [f"g{i}" for i in range(known)] + ["following", "noise"]
    st0 = st.copy()
    folds = [["following", "noise"], [f"g{i}" for i in range(known)]]
    scores = st_trained_ridge(st, folds).set_index("gene")["pcc"]
    assert list(scores.index) == ["following", "noise", *[f"g{i}" for i in range(known)]]
    assert scores["following"] > 0.6
    # in sample, 20 inputs on 400 cells would correlate about sqrt(20 / 400) ~ 0.2 by chance
    assert abs(scores["noise"]) < 0.12
    np.testing.assert_array_equal(st.X, st0.X)
    with pytest.raises(ValueError, match="`folds`.*absent"):
        st_trained_ridge(st, [["following", "absent"], ["noise"]])
    with pytest.raises(ValueError, match="`cell_folds`"):
        st_trained_ridge(st, folds, cell_folds=1)
