"""Reliability (issue 7): bad input is a clear error, interrupted work is kept, files stay whole.

Each test names one bad input or fault and asserts what the user sees: the error type, that
its message names the argument and what was received, or that the result is complete and finite.
"""

import copy
import logging
import os

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from conftest import FAST
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st_
from hypothesis.extra import numpy as hnp

import spalstf
import spalstf.train.denoiser
import spalstf.train.loop
from spalstf.data import as_expression, check_values, is_integer_valued
from spalstf.model.folder import seal

HYPOTHESIS = settings(max_examples=40, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])


def _known_targets(pair):
    st, _ = pair
    return list(st.var_names), list(st.obsm["truth"].columns)


def _finite_result(out, n_cells):
    assert out.X.shape[0] == n_cells
    assert np.all(np.isfinite(out.X)) and np.all(out.X >= 0)


# --- values -------------------------------------------------------------------------------
@HYPOTHESIS
@given(data=st_.data(), bad=st_.sampled_from([np.nan, np.inf, -np.inf, -1.0, -0.5, 2.5]),
       sparse=st_.booleans())
def test_any_bad_value_anywhere_is_refused_naming_its_cell_and_gene(data, bad, sparse):
    """NaN, Inf, negative and (for counts) fractional values, at any position of a dense or
    sparse matrix: ValueError naming the argument, the first offending cell and gene."""
    counts = data.draw(hnp.arrays(np.float64, st_.tuples(st_.integers(1, 30),
                                                         st_.integers(1, 8)),
                                  elements=st_.integers(0, 50).map(float)))
    row = data.draw(st_.integers(0, counts.shape[0] - 1))
    col = data.draw(st_.integers(0, counts.shape[1] - 1))
    counts[row, col] = bad
    matrix = sp.csr_matrix(counts) if sparse else counts
    genes = [f"g{j}" for j in range(counts.shape[1])]
    expr = as_expression(matrix, genes=genes, arg="st", genes_arg="st_genes")
    with pytest.raises(ValueError) as info:
        check_values(expr, log_normalized=False, arg="st", block=7)  # several blocks
    message = str(info.value)
    assert message.startswith("`st`")
    kind = ("NaN or infinite" if not np.isfinite(bad) else "negative" if bad < 0
            else "non-integer")
    assert kind in message
    with np.errstate(invalid="ignore"):
        flagged = ~np.isfinite(counts) | (counts < 0) | (counts % 1 != 0)
    bad_rows, bad_cols = np.nonzero(flagged)
    first = np.lexsort((bad_cols, bad_rows))[0]  # row-major order: how blocks are read
    assert f"cell 'cell_{bad_rows[first]}', gene 'g{bad_cols[first]}'" in message


@HYPOTHESIS
@given(values=hnp.arrays(np.float64, st_.tuples(st_.integers(1, 20), st_.integers(1, 6)),
                         elements=st_.floats(0, 12, allow_nan=False)))
def test_log_normalised_values_pass_when_declared(values):
    expr = as_expression(values, genes=[f"g{j}" for j in range(values.shape[1])], arg="sc")
    if not values.any():  # nothing to learn from: refused (issue 21)
        with pytest.raises(ValueError, match="`sc` holds only zeros"):
            check_values(expr, log_normalized=True, arg="sc")
        return
    if is_integer_valued(values):  # counts, never log values: refused
        with pytest.raises(ValueError, match="`sc` is declared log-normalised .* only integers"):
            check_values(expr, log_normalized=True, arg="sc")
        return
    check_values(expr, log_normalized=True, arg="sc")  # no error


def test_non_integer_counts_get_a_hint_and_log_values_declared_work(tiny_pair):
    st, sc = tiny_pair
    logged = st.copy()
    logged.X = np.log1p(st.X)
    with pytest.raises(ValueError, match=r"`st` is read as raw counts.*log_normalized=True"):
        spalstf.impute(logged, sc, **FAST)


def test_counts_declared_log_normalised_are_refused(tiny_pair):
    st, _ = tiny_pair
    big = st.X * 0 + 500
    with pytest.raises(ValueError, match=r"`st` is declared log-normalised .* only integers "
                                         r"\(max 500\)"):
        check_values(as_expression(big, genes=list(st.var_names)), log_normalized=True,
                     arg="st")


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint16, np.float16, np.float32,
                                   np.float64])
@pytest.mark.parametrize("sparse", [False, True])
def test_every_numeric_dtype_gives_the_same_imputation(tiny_pair, tiny_model, dtype, sparse):
    if sparse and dtype in (np.float16, np.uint16):
        pytest.skip("scipy.sparse does not hold float16 / uint16 matrices")
    st, _ = tiny_pair
    expected = tiny_model.impute(st, seed=1, progress=False).X
    typed = st.copy()
    typed.X = np.asarray(st.X).astype(dtype)
    if sparse:
        typed.X = sp.csr_matrix(typed.X)
    np.testing.assert_allclose(tiny_model.impute(typed, seed=1, progress=False).X, expected,
                               atol=1e-5)


def test_object_and_string_matrices_are_type_errors(tiny_pair):
    st, sc = tiny_pair
    frame = pd.DataFrame(st.X, columns=st.var_names).astype(object)
    frame.iloc[0, 0] = "n/a"
    with pytest.raises(TypeError, match="`st` must hold numbers only"):
        spalstf.impute(frame, sc, **FAST)
    with pytest.raises(TypeError, match="`st` must hold numbers; received dtype object"):
        spalstf.impute(np.asarray(st.X).astype(object), sc, st_genes=list(st.var_names),
                       **FAST)


def test_all_zero_cells_and_genes_are_kept_with_finite_predictions(tiny_pair):
    st, sc = tiny_pair
    st0, sc0 = st.copy(), sc.copy()
    st0.X[3] = 0  # a spot with no counts at all
    st0.X[:, 2] = 0  # a known gene never detected in the ST
    sc0.X[5] = 0
    sc0.X[:, 0] = 0  # a known gene never detected in the reference
    genes = list(st.obsm["truth"].columns)
    sc0.X[:, list(sc.var_names).index(genes[0])] = 0  # a target gene never detected
    out = spalstf.impute(st0, sc0, genes, **FAST)
    _finite_result(out, st.n_obs)
    assert list(out.obs_names) == list(st.obs_names)
    np.testing.assert_allclose(out.X[:, 0], 0, atol=1e-6)  # never seen: predicted absent


# --- shapes and names -----------------------------------------------------------------------
def test_empty_matrices_are_refused(tiny_pair):
    st, sc = tiny_pair
    for bad, shape in ((st[:0], "0 cells x 22 genes"), (st[:, :0], "60 cells x 0 genes")):
        with pytest.raises(ValueError, match=f"`st` is empty: {shape}"):
            spalstf.impute(bad, sc, **FAST)
    with pytest.raises(ValueError, match="`sc` is empty"):
        spalstf.fit(np.zeros((0, 3)), ["a"], ["b"], sc_genes=["a", "b", "c"])


def test_one_cell_and_one_gene_work(tiny_pair):
    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:2]
    _finite_result(spalstf.impute(st[:1], sc, genes, **FAST), 1)
    _finite_result(spalstf.impute(st[:, :1], sc, genes, **FAST), st.n_obs)
    _finite_result(spalstf.impute(st, sc[:1], genes, **FAST), st.n_obs)  # one reference cell
    one_gene = spalstf.impute(st, sc, genes[:1], **FAST)
    assert one_gene.shape == (st.n_obs, 1)


@HYPOTHESIS
@given(n_names=st_.integers(0, 12), n_columns=st_.integers(1, 8))
def test_gene_lists_of_the_wrong_length_are_refused(n_names, n_columns):
    matrix = np.ones((3, n_columns))
    names = [f"g{i}" for i in range(n_names)]
    if n_names == n_columns:
        assert as_expression(matrix, genes=names).genes == names
        return
    with pytest.raises(ValueError, match=rf"`st_genes` must name each of the {n_columns} "
                                         rf"columns of `st`; received {n_names} names"):
        as_expression(matrix, genes=names, arg="st", genes_arg="st_genes")


def test_duplicated_gene_names_are_refused_everywhere(tiny_pair):
    st, sc = tiny_pair
    genes = list(st.var_names)
    genes[1] = genes[0]
    with pytest.raises(ValueError, match=rf"`st_genes` has duplicated gene names.*{genes[0]}"):
        spalstf.impute(np.asarray(st.X), sc, st_genes=genes, **FAST)
    frame = pd.DataFrame(np.asarray(sc.X), columns=list(sc.var_names))
    frame.columns = [sc.var_names[0]] + list(sc.var_names[:-1])
    with pytest.raises(ValueError, match="`sc.columns` has duplicated gene names"):
        spalstf.fit(frame, genes[2:5], genes[5:7])
    with pytest.raises(ValueError, match="`genes` lists genes more than once"):
        spalstf.impute(st, sc, ["Gene0001", "Gene0001"], **FAST)


def test_duplicated_cell_names_warn_and_keep_every_cell(tiny_pair, tiny_model, caplog):
    st, _ = tiny_pair
    dup = st.copy()
    dup.obs_names = ["spot"] * st.n_obs
    with caplog.at_level(logging.WARNING, logger="spalstf"):
        out = tiny_model.impute(dup, seed=2, progress=False)
    assert "duplicated cell names" in caplog.text and out.n_obs == st.n_obs
    assert list(out.obs_names) == ["spot"] * st.n_obs
    _finite_result(out, st.n_obs)


def test_anndata_views_give_the_values_of_copies_and_stay_views(tiny_pair, tiny_model):
    st, _ = tiny_pair
    view = st[5:40]
    assert view.is_view
    got = tiny_model.impute(view, seed=4, progress=False)
    assert view.is_view  # not turned into an actual AnnData by a write
    expected = tiny_model.impute(st[5:40].copy(), seed=4, progress=False)
    np.testing.assert_array_equal(got.X, expected.X)


def test_case_only_mismatches_are_matched_and_reported(tiny_pair, caplog):
    st, sc = tiny_pair
    lower = st.copy()
    lower.var_names = [g.lower() for g in st.var_names]
    target = list(st.obsm["truth"].columns)[0]
    with caplog.at_level(logging.INFO, logger="spalstf"):
        out = spalstf.impute(lower, sc, [target.upper()], **FAST)
    assert "ignoring case" in caplog.text
    assert list(out.var_names) == [target.upper()]  # the name as requested
    assert out.uns["spalstf"]["known_genes"] == list(st.var_names)  # matched to the reference


def test_no_shared_genes_and_no_known_genes_left_are_errors(tiny_pair):
    st, sc = tiny_pair
    with pytest.raises(ValueError, match="share no genes"):
        spalstf.impute(st.X, sc, st_genes=[f"X{i}" for i in range(st.n_vars)], **FAST)
    with pytest.raises(ValueError, match="no known genes are left"):
        spalstf.impute(st[:, :2], sc, list(st.var_names[:2]), **FAST)
    with pytest.raises(ValueError, match="`genes` is empty"):
        spalstf.impute(st, sc, [], **FAST)


def test_a_model_applied_to_other_genes_names_them(tiny_pair, tiny_model):
    st, _ = tiny_pair
    other = ad.AnnData(np.asarray(st.X), var=pd.DataFrame(index=[f"Q{i}" for i in
                                                                 range(st.n_vars)]))
    with pytest.raises(ValueError, match=r"`st` lacks 22 of the model's 22 known genes.*Q0"):
        tiny_model.impute(other, progress=False)


# --- options ----------------------------------------------------------------------------
@pytest.mark.parametrize("option,value,match", [
    ("epochs", 0, "`epochs` must be a positive integer; received 0"),
    ("batch_size", -8, "`batch_size` must be a positive integer; received -8"),
    ("learning_rate", float("nan"), "`learning_rate` must be a positive number; received nan"),
    ("eta", float("nan"), "`eta` must be a finite number >= 0; received nan"),
    ("patience", 0, "`patience` must be a positive integer"),
    ("max_time", 0, "`max_time` must be positive seconds"),
    ("max_steps", 0, "`max_steps` must be a positive integer; received 0"),
    ("device", "gpu0", "`device` must be 'auto', 'cpu', 'cuda'"),
    ("log_normalized", "yes", "`log_normalized` must be True or False; received 'yes'"),
    ("progress", 1, "`progress` must be True or False"),
    ("prior_mixtures", "yes", "`prior_mixtures` must be True or False; received 'yes'"),
    ("checkpoint_every", 0, "`checkpoint_every` must be a positive integer"),
    ("checkpoint", 3, "`checkpoint` must be a file path"),
    ("resume", "no_such_checkpoint.pt", "`resume` 'no_such_checkpoint.pt' does not exist"),
])
def test_fit_options_out_of_range_name_the_option(tiny_pair, option, value, match):
    _, sc = tiny_pair
    known, targets = _known_targets(tiny_pair)
    with pytest.raises((ValueError, TypeError), match=match):
        spalstf.fit(sc, known, targets, **{**FAST, option: value})


def test_model_impute_options_are_checked(tiny_pair, tiny_model):
    st, _ = tiny_pair
    for option, value in (("n_steps", 0), ("n_samples", -1), ("batch_size", 0),
                          ("seed", 1.5), ("device", "tpu"), ("progress", "no")):
        with pytest.raises((ValueError, TypeError), match=f"`{option}`"):
            tiny_model.impute(st, **{"progress": False, option: value})


# --- training faults ---------------------------------------------------------------------
def _fault_at_training_step(monkeypatch, n: int, fault):
    """Make the n-th training batch (validation batches are not counted) fail with `fault`."""
    real = spalstf.train.denoiser.batch_loss
    calls = {"train": 0}

    def faulty(network, *args, **kwargs):
        if network.training:
            calls["train"] += 1
            if calls["train"] == n:
                return fault(real(network, *args, **kwargs))
        return real(network, *args, **kwargs)

    monkeypatch.setattr(spalstf.train.denoiser, "batch_loss", faulty)
    return calls


def test_a_nan_loss_stops_with_an_error_naming_the_step(tiny_pair, monkeypatch):
    st, sc = tiny_pair
    known, targets = _known_targets(tiny_pair)

    def nan_loss(terms):
        terms.total = terms.total * float("nan")
        return terms

    _fault_at_training_step(monkeypatch, 3, nan_loss)
    with pytest.raises(FloatingPointError, match=r"loss became nan at epoch 1, step 3"):
        spalstf.fit(sc, known, targets, **{**FAST, "batch_size": 32})
    _fault_at_training_step(monkeypatch, 2, nan_loss)
    with pytest.raises(FloatingPointError, match="step 2"):
        spalstf.impute(st, sc, **{**FAST, "batch_size": 32})  # no NaN imputation comes back


def _interrupt(terms):
    raise KeyboardInterrupt


def test_ctrl_c_keeps_the_best_model_so_far(tiny_pair, monkeypatch, caplog):
    st, sc = tiny_pair
    known, targets = _known_targets(tiny_pair)
    options = {**FAST, "epochs": 5, "batch_size": 64}  # 3 steps per epoch
    calls = _fault_at_training_step(monkeypatch, 8, _interrupt)  # in epoch 3
    with caplog.at_level(logging.WARNING, logger="spalstf"):
        model = spalstf.fit(sc, known, targets, **options)
    assert calls["train"] == 8 and "interrupted" in caplog.text
    assert len(model.history) == 2 and model.info["best_epoch"] in (1, 2)
    assert model.info["stop_reason"].startswith("interrupted")
    _finite_result(model.impute(st, progress=False), st.n_obs)
    # Interrupted before the first epoch ended: nothing to keep, the interrupt goes on.
    _fault_at_training_step(monkeypatch, 2, _interrupt)
    with pytest.raises(KeyboardInterrupt):
        spalstf.fit(sc, known, targets, **options)


# --- training budget ----------------------------------------------------------------------
def test_training_stops_after_max_steps_updates(tiny_pair):
    _, sc = tiny_pair
    known, targets = _known_targets(tiny_pair)
    # 135 training cells in batches of 32: 5 updates per epoch; 7 end in epoch 2
    model = spalstf.fit(sc, known, targets, **{**FAST, "epochs": 50, "batch_size": 32,
                                               "max_steps": 7, "patience": None})
    assert model.info["stop_reason"] == "7 updates done"
    assert model.info["epochs_trained"] == len(model.history) == 2


def test_same_seed_same_model_on_a_slow_machine(tiny_pair, monkeypatch):
    """The default budget counts updates, not seconds: a machine on which every step seems to
    take 100 s trains the very model a fast one does (a default wall-clock budget would stop
    it after the first update)."""
    _, sc = tiny_pair
    known, targets = _known_targets(tiny_pair)
    options = {**FAST, "epochs": 3, "batch_size": 64}
    fast = spalstf.fit(sc, known, targets, **options)
    clock = iter(range(0, 10**9, 100))
    monkeypatch.setattr(spalstf.train.loop.time, "perf_counter", lambda: float(next(clock)))
    slow = spalstf.fit(sc, known, targets, **options)
    assert slow.info["epochs_trained"] == fast.info["epochs_trained"] == 3
    for (name, a), b in zip(fast.network.state_dict().items(),
                            slow.network.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# --- checkpoints --------------------------------------------------------------------------
def _weights(model):
    return {k: v.clone() for k, v in model.network.state_dict().items()}


def _assert_same_model(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
    assert [h["val_mse"] for h in a.history] == [h["val_mse"] for h in b.history]


CKPT = {**FAST, "batch_size": 48, "seed": 4}  # 3 steps per epoch: warm-up, EMA and Adam matter


def test_an_interrupted_fit_resumed_from_its_checkpoint_equals_an_uninterrupted_one(
        tiny_pair, tmp_path, monkeypatch):
    _, sc = tiny_pair
    known, targets = _known_targets(tiny_pair)
    whole = spalstf.fit(sc, known, targets, **{**CKPT, "epochs": 5})
    ckpt = tmp_path / "fit.ckpt"
    calls = _fault_at_training_step(monkeypatch, 11, _interrupt)  # Ctrl-C in epoch 4
    spalstf.fit(sc, known, targets, **{**CKPT, "epochs": 5}, checkpoint=ckpt,
                checkpoint_every=3)
    assert calls["train"] == 11
    monkeypatch.undo()
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 3 and len(saved["history"]) == 3  # the last checkpoint, epoch 3
    assert {"network", "ema", "optimizer", "scheduler", "numpy_rng", "torch_rng",
            "best_state", "bad_epochs", "seconds"} <= set(saved)
    resumed = spalstf.fit(sc, known, targets, **{**CKPT, "epochs": 5}, resume=ckpt,
                          checkpoint=ckpt)
    _assert_same_model(resumed, whole)
    assert resumed.info["resumed_after_epoch"] == 3 and resumed.info["epochs_trained"] == 5
    assert torch.load(ckpt, weights_only=True)["epoch"] == 5  # the final state written too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.ckpt"]  # no temporary left


def test_a_short_fit_extended_by_resume_equals_a_long_one(tiny_pair, tmp_path):
    st, sc = tiny_pair
    known, targets = _known_targets(tiny_pair)
    ckpt = tmp_path / "c.pt"
    spalstf.fit(sc, known, targets, **{**CKPT, "epochs": 2}, checkpoint=ckpt)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2  # written at the end
    whole = spalstf.impute(st, sc, **{**CKPT, "epochs": 4})
    resumed = spalstf.impute(st, sc, **{**CKPT, "epochs": 4}, resume=ckpt)
    np.testing.assert_array_equal(resumed.X, whole.X)


def test_resume_equals_a_long_fit_however_slow_the_machine(tiny_pair, tmp_path, monkeypatch):
    """How busy the machine is cannot change a result of the suite's settings: with every clock
    reading 100 s after the one before (slower than any loaded CI machine), a resumed fit
    still equals the whole one. With a budget of seconds in FAST, the self-check's inner fits
    and the resumed fit (which counts the checkpoint's seconds too) stopped wherever the load
    had got them to, and the test above failed now and then under load (issue 28)."""
    clock = iter(range(0, 10**9, 100))
    monkeypatch.setattr(spalstf.train.loop.time, "perf_counter", lambda: float(next(clock)))
    st, sc = tiny_pair
    known, targets = _known_targets(tiny_pair)
    ckpt = tmp_path / "c.pt"
    spalstf.fit(sc, known, targets, **{**CKPT, "epochs": 2}, checkpoint=ckpt)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
    whole = spalstf.impute(st, sc, **{**CKPT, "epochs": 4})
    resumed = spalstf.impute(st, sc, **{**CKPT, "epochs": 4}, resume=ckpt)
    np.testing.assert_array_equal(resumed.X, whole.X)


def test_resume_refuses_other_data_seed_options_and_damaged_files(tiny_pair, tmp_path):
    _, sc = tiny_pair
    known, targets = _known_targets(tiny_pair)
    ckpt = tmp_path / "c.pt"
    spalstf.fit(sc, known, targets, **{**CKPT, "epochs": 1}, checkpoint=ckpt)
    with pytest.raises(FileExistsError, match="`checkpoint` .* exists; pass resume="):
        spalstf.fit(sc, known, targets, **CKPT, checkpoint=ckpt)
    cases = [
        (dict(seed=5), "seed=4; this call has seed=5"),
        (dict(depth=2), r"other options \(depth=1 there, 2 here\)"),
        (dict(batch_size=64), "batch_size=48 there, 64 here"),
    ]
    for change, match in cases:
        with pytest.raises(ValueError, match=match):
            spalstf.fit(sc, known, targets, **{**CKPT, **change}, resume=ckpt)
    with pytest.raises(ValueError, match="other target genes"):
        spalstf.fit(sc, known, targets[:-1], **CKPT, resume=ckpt)
    other = sc.copy()
    other.X[0, 0] += 1
    with pytest.raises(ValueError, match="other reference data"):
        spalstf.fit(other, known, targets, **CKPT, resume=ckpt)
    spalstf.fit(sc, known, targets, **{**CKPT, "epochs": 2, "max_time": 30}, resume=ckpt)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        spalstf.fit(sc, known, targets, **CKPT, resume=ckpt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="not a spalstf checkpoint"):
        spalstf.fit(sc, known, targets, **CKPT, resume=foreign)


def test_a_checkpoint_of_another_format_version_is_refused(tiny_pair, tmp_path):
    _, sc = tiny_pair
    known, targets = _known_targets(tiny_pair)
    ckpt = tmp_path / "c.pt"
    spalstf.fit(sc, known, targets, **{**CKPT, "epochs": 1}, checkpoint=ckpt)
    state = torch.load(ckpt, weights_only=True)
    state["format_version"] = 99
    torch.save(state, ckpt)
    with pytest.raises(ValueError, match="checkpoint format 99.*resumes format 1"):
        spalstf.fit(sc, known, targets, **CKPT, resume=ckpt)


# --- files --------------------------------------------------------------------------------
def test_an_interrupted_h5ad_write_leaves_no_file_under_the_final_name(tiny_pair, tmp_path,
                                                                        monkeypatch):
    st, _ = tiny_pair
    out = tmp_path / "out.h5ad"
    real = ad.AnnData.write_h5ad

    def half_written(self, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"\x89HDF\r\n half")
        raise KeyboardInterrupt

    monkeypatch.setattr(ad.AnnData, "write_h5ad", half_written)
    with pytest.raises(KeyboardInterrupt):
        spalstf.io.write_h5ad(st, out)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(ad.AnnData, "write_h5ad", real)
    spalstf.io.write_h5ad(st, out)
    before = out.read_bytes()
    monkeypatch.setattr(ad.AnnData, "write_h5ad", half_written)
    with pytest.raises(KeyboardInterrupt):
        spalstf.io.write_h5ad(st, out, overwrite=True)
    assert out.read_bytes() == before  # the previous file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5ad"]


def test_an_interrupted_model_save_keeps_the_previous_model(tiny_model, tmp_path, monkeypatch):
    path = tiny_model.save(tmp_path / "model")
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        tiny_model.save(path, overwrite=True)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_damaged_or_foreign_model_folders_give_a_clear_error(tiny_model, tmp_path):
    path = tiny_model.save(tmp_path / "m")
    meta = (path / "model.json").read_text()
    (path / "model.json").write_text(meta[: len(meta) // 2])
    with pytest.raises(ValueError, match="model.json does not match its checksum"):
        spalstf.load(path)
    seal(path)  # as if saved so: the parts are then checked themselves
    with pytest.raises(ValueError, match="model.json cannot be read.*truncated or corrupted"):
        spalstf.load(path)
    (path / "model.json").write_text(meta.replace('"format_version": 3', '"format_version": 7'))
    seal(path)
    with pytest.raises(ValueError, match="model format 7.*reads format 1, 2 and 3"):
        spalstf.load(path)
    (path / "model.json").write_text(meta.replace('"d_model": 16', '"d_model": 32'))
    seal(path)
    with pytest.raises(ValueError, match="inconsistent in weights.pt: network.*incompatible "
                                         "spalstf version"):
        spalstf.load(path)
    (path / "model.json").write_text('{"format": "something-else"}')
    seal(path)
    with pytest.raises(ValueError, match="not a spalstf model description"):
        spalstf.load(path)


# --- inputs are never modified ---------------------------------------------------------
def _snapshot(adata):
    x = adata.X
    return {"X": x.copy() if sp.issparse(x) else np.array(x, copy=True), "type": type(x),
            "dtype": x.dtype, "obs": adata.obs.copy(), "var": adata.var.copy(),
            "obs_names": list(adata.obs_names), "var_names": list(adata.var_names),
            "obsm": {k: np.array(v, copy=True) for k, v in adata.obsm.items()
                     if not isinstance(v, pd.DataFrame)},
            "obsm_frames": {k: v.copy() for k, v in adata.obsm.items()
                            if isinstance(v, pd.DataFrame)},
            "layers": sorted(adata.layers), "uns": copy.deepcopy(dict(adata.uns))}


def _assert_unchanged(adata, before):
    after = _snapshot(adata)
    assert after["type"] is before["type"] and after["dtype"] == before["dtype"]
    if sp.issparse(before["X"]):
        assert (after["X"] != before["X"]).nnz == 0
    else:
        np.testing.assert_array_equal(after["X"], before["X"])
    pd.testing.assert_frame_equal(after["obs"], before["obs"])
    pd.testing.assert_frame_equal(after["var"], before["var"])
    for key in ("obs_names", "var_names", "layers"):
        assert after[key] == before[key], key
    for k, v in before["obsm"].items():
        np.testing.assert_array_equal(after["obsm"][k], v)
    for k, v in before["obsm_frames"].items():
        pd.testing.assert_frame_equal(after["obsm_frames"][k], v)
    assert after["uns"].keys() == before["uns"].keys()


def _entry_points(tmp_path):
    """(name, call(st, sc, model)) for every public function that takes data."""
    opts = {**FAST, "epochs": 1}
    return [
        ("impute", lambda st, sc, m: spalstf.impute(st, sc, **opts)),
        ("fit", lambda st, sc, m: spalstf.fit(sc, list(st.var_names),
                                              list(st.obsm["truth"].columns), **opts)),
        ("Model.impute", lambda st, sc, m: m.impute(st, progress=False)),
        ("cross_validate", lambda st, sc, m: spalstf.cross_validate(
            st, sc, n_folds=2, methods="mean", clustering=False)),
        ("io.write_h5ad", lambda st, sc, m: spalstf.io.write_h5ad(st, tmp_path / "w.h5ad",
                                                                  overwrite=True)),
        ("metrics", lambda st, sc, m: [f(st.X, st.X) for f in (
            spalstf.metrics.pcc, spalstf.metrics.spcc, spalstf.metrics.rmse,
            spalstf.metrics.ssim, spalstf.metrics.js)]),
        ("pl.spatial", lambda st, sc, m: spalstf.pl.spatial(
            st, list(st.var_names[:2]), path=tmp_path / "p.png")),
    ]


@pytest.mark.parametrize("index", range(7))
@pytest.mark.parametrize("layout", ["dense-lowercase", "sparse-float64"])
def test_no_public_function_modifies_its_inputs(tiny_pair, tiny_model, tmp_path, index,
                                                layout):
    name, call = _entry_points(tmp_path)[index]
    st, sc = (a.copy() for a in tiny_pair)
    if layout == "dense-lowercase":
        st.X = np.asarray(st.X, dtype=np.float32)
        st.var_names = [g.lower() for g in st.var_names]  # matched ignoring case
        if name in ("cross_validate", "fit"):
            st.var_names = list(tiny_pair[0].var_names)  # these match names exactly
    else:
        st.X = sp.csr_matrix(np.asarray(st.X, dtype=np.float64))
        sc.X = sp.csc_matrix(sc.X)
    st.uns["user"] = {"note": "mine"}
    st_before, sc_before = _snapshot(st), _snapshot(sc)
    call(st, sc, tiny_model)
    _assert_unchanged(st, st_before)
    _assert_unchanged(sc, sc_before)


def test_model_save_does_not_change_the_model(tiny_pair, tiny_model, tmp_path):
    st, _ = tiny_pair
    before = tiny_model.impute(st, seed=9, progress=False).X
    weights = _weights(tiny_model)
    tiny_model.save(tmp_path / "m")
    for k, v in _weights(tiny_model).items():
        torch.testing.assert_close(v, weights[k], rtol=0, atol=0)
    np.testing.assert_array_equal(tiny_model.impute(st, seed=9, progress=False).X, before)
    assert os.listdir(tmp_path) == ["m"]
