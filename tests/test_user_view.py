"""What a user sees: the phases and warnings shown by default, coordinates found in obs, a
result that scanpy reads as log-transformed and draws on the tissue, files with the user's
permissions (issue 21)."""

import contextlib
import logging
import os
import stat

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import FAST

import spalstf
import spalstf.train.loop
from spalstf.spatial import coordinates, resolve


@contextlib.contextmanager
def unconfigured_logging():
    """Logging as in a fresh notebook: no handler on the root logger (pytest installs its
    capture there, which spalstf rightly takes for the user's own configuration). The list is
    emptied and refilled in place, so that pytest later removes its handlers from it."""
    saved = logging.root.handlers[:]
    logging.root.handlers.clear()
    try:
        yield
    finally:
        logging.root.handlers[:] = saved


class RecordedBar:
    """A stand-in for tqdm in `spalstf.train.loop` that records each bar made and its updates."""

    made: list = []

    def __init__(self, iterable=None, **options):
        self.options, self.updates = options, 0
        RecordedBar.made.append(self)

    def update(self, n=1):
        self.updates += n

    def set_postfix(self, **_):
        pass

    def close(self):
        pass


def _obs_xy(st):
    """`st` with its coordinates in obs "x"/"y" and no obsm["spatial"]."""
    moved = st.copy()
    moved.obs["x"], moved.obs["y"] = moved.obsm["spatial"][:, 0], moved.obsm["spatial"][:, 1]
    del moved.obsm["spatial"]
    return moved


def _spalstf_lines(err):
    return [line for line in err.splitlines() if line.startswith("spalstf")]


def test_phases_and_warnings_are_shown_by_default_one_line_and_one_bar_each(
        tiny_pair, monkeypatch, capsys):
    st, sc = tiny_pair
    RecordedBar.made = []
    monkeypatch.setattr(spalstf.train.loop, "tqdm", RecordedBar)
    targets = list(st.obsm["truth"].columns)[:2]
    measured = str(st.var_names[0])
    options = {**FAST, "progress": True, "epochs": 10, "max_steps": 3}
    with unconfigured_logging():
        result = spalstf.impute(_obs_xy(st), sc, [*targets, measured, "NotAGene"],
                                self_check=True, self_check_folds=2, **options)
    lines = _spalstf_lines(capsys.readouterr().err)
    text = "\n".join(lines)
    # one line per phase: each fold, the fit, the imputation; the inner fits say nothing
    assert sum("self-check fold 1/2" in line for line in lines) == 1, text
    assert sum("self-check fold 2/2" in line for line in lines) == 1, text
    assert sum(line.startswith("spalstf: fitting on") for line in lines) == 1, text
    assert sum(line.startswith("spalstf: imputed 3 genes") for line in lines) == 1, text
    assert not any("ridge prior" in line for line in lines), text  # a detail: DEBUG
    # the request's measured gene is announced, the dropped one a warning
    assert ("spalstf: 1 requested genes are measured by the ST (for example "
            f"['{measured}']); they are predicted as if hidden (their measured values are not "
            "read)") in lines, text
    assert any(line.startswith("spalstf warning: 1 requested genes are not in the reference")
               and "NotAGene" in line for line in lines), text
    # coordinates found in obs, said once, and used: the self-check weighs spatial columns
    assert sum("coordinates from obs columns ['x', 'y']" in line for line in lines) == 1, text
    check = result.uns["spalstf"]["self_check"]
    assert any("|spatial|" in c for c in check["candidates"]["column"])
    # one bar: the main fit's, sized to the update budget (3), not the 10 epochs
    shown = [bar for bar in RecordedBar.made if not bar.options.get("disable")]
    assert len(shown) == 1
    assert shown[0].options["total"] == 3 and shown[0].options["unit"] == "update"
    assert shown[0].updates == 3
    # nothing outlives the call
    logger = logging.getLogger("spalstf")
    assert logger.level == logging.NOTSET
    assert all(isinstance(h, logging.NullHandler) for h in logger.handlers)


def test_progress_false_leaves_the_warnings_and_the_users_logging_wins(
        tiny_pair, capsys, caplog):
    st, sc = tiny_pair
    known, target = list(st.var_names), str(st.obsm["truth"].columns[0])
    cheap = {**FAST, "predictors": ("ridge", "knn")}
    with unconfigured_logging():
        spalstf.fit(sc, known, [target, "NotAGene"], **cheap)  # FAST: progress=False
    lines = _spalstf_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("spalstf warning: 1 requested genes"), lines
    # A user's own configuration (here pytest's capture on the root logger) receives the
    # records; spalstf adds nothing of its own to stderr.
    with caplog.at_level(logging.INFO, logger="spalstf"):
        spalstf.fit(sc, known, [target], **{**cheap, "progress": True})
    assert "fitting on" in caplog.text
    assert not _spalstf_lines(capsys.readouterr().err)


def test_model_impute_announces_target_genes_the_st_measures(tiny_pair, caplog):
    """A saved model reused on an ST that measures some of its targets says so, as
    spalstf.impute does for a request: the values are predictions, not the measurement."""
    st, sc = tiny_pair
    target = str(st.obsm["truth"].columns[0])
    model = spalstf.fit(sc, list(st.var_names[1:]), [target, str(st.var_names[0])],
                        **{**FAST, "predictors": ("ridge",)})
    with caplog.at_level(logging.INFO, logger="spalstf"):
        model.impute(st, progress=False)
    assert (f"1 of the model's target genes are measured by the ST (for example "
            f"['{st.var_names[0]}'])") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="spalstf"):
        model.impute(st[:, 1:], progress=False)
    assert "measured by the ST" not in caplog.text


def _with_obs(columns, values):
    obs = pd.DataFrame({c: v for c, v in zip(columns, values, strict=True)},
                       index=[f"c{i}" for i in range(len(values[0]))])
    return ad.AnnData(np.zeros((len(obs), 1), np.float32), obs=obs)


def test_coordinates_are_read_from_obs_columns(caplog):
    xs, ys = np.arange(5.0), np.arange(5.0) * 2
    cells = _with_obs(["x", "y"], [xs, ys])
    np.testing.assert_array_equal(coordinates(cells, None, 5), np.c_[xs, ys])
    with caplog.at_level(logging.INFO, logger="spalstf"):
        assert resolve(cells, None) == ["x", "y"]
    assert "coordinates from obs columns ['x', 'y']" in caplog.text
    grid = _with_obs(["array_row", "array_col", "label"], [ys, xs, list("abcde")])
    np.testing.assert_array_equal(coordinates(grid, None, 5), np.c_[xs, ys])
    np.testing.assert_array_equal(coordinates(grid, "array_row,array_col", 5), np.c_[ys, xs])
    np.testing.assert_array_equal(coordinates(grid, ["array_col", "array_row"], 5),
                                  np.c_[xs, ys])
    with pytest.raises(ValueError, match=r"obs columns \['nope'\]"):
        coordinates(grid, "array_row,nope", 5)
    with pytest.raises(ValueError, match="must be numbers"):
        coordinates(grid, "array_row,label", 5)
    # obsm["spatial"] wins; a text column named x is not taken for coordinates
    cells.obsm["spatial"] = np.ones((5, 2))
    assert resolve(cells, None) is None
    np.testing.assert_array_equal(coordinates(cells, None, 5), np.ones((5, 2)))
    texts = _with_obs(["x", "y"], [list("abcde"), list("abcde")])
    assert coordinates(texts, None, 5) is None and resolve(texts, None) is None


def test_the_result_is_log1p_for_scanpy_and_draws_on_the_tissue(tiny_pair, tiny_model):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    st, _ = tiny_pair
    st = st.copy()
    st.uns["spatial"] = {"slide": {
        "images": {"hires": np.zeros((8, 8, 3), np.float32)},
        "scalefactors": {"tissue_hires_scalef": 1.0, "spot_diameter_fullres": 0.5}}}
    result = tiny_model.impute(st, progress=False)
    # scanpy's marker of log-transformed X: its log1p warns instead of taking the log twice
    assert result.uns["log1p"] == {"base": None}
    # the tissue's images and scale factors: sc.pl.spatial needs no spot_size
    assert result.uns["spatial"]["slide"]["scalefactors"] == st.uns["spatial"]["slide"][
        "scalefactors"]
    axes = sc.pl.spatial(result, color=result.var_names[0], show=False)
    assert axes
    plt.close("all")
    result.uns["spatial"]["slide"]["scalefactors"]["spot_diameter_fullres"] = 9.0
    assert st.uns["spatial"]["slide"]["scalefactors"]["spot_diameter_fullres"] == 0.5  # a copy


@pytest.fixture()
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_have_the_users_permissions(tiny_model, tmp_path, umask_022):
    from spalstf.io import H5adWriter, write_h5ad

    cells = ad.AnnData(np.ones((3, 2), np.float32))
    assert _mode(write_h5ad(cells, tmp_path / "whole.h5ad")) == 0o644
    with H5adWriter(tmp_path / "streamed.h5ad", ad.AnnData(shape=(3, 2))) as writer:
        writer.write(slice(0, 3), np.ones((3, 2)))
    assert _mode(tmp_path / "streamed.h5ad") == 0o644
    folder = tiny_model.save(tmp_path / "model")
    assert _mode(folder) == 0o755
    assert {p.name: _mode(p) for p in folder.iterdir()} == {
        p.name: 0o644 for p in folder.iterdir()}
