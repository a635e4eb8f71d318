"""spalstf.pl: every plot returns its Figure, saves to a file that is a real image, and
rejects bad input with a message that names it."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless tests; the library itself never sets the backend

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from spalstf import pl  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def imputed(tiny_pair, tiny_model):
    st, _ = tiny_pair
    return tiny_model.impute(st, progress=False, n_samples=2)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _check_png(path, fig):
    """The file is a PNG of the figure's size, and not blank."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    image = mpimg.imread(path)
    width, height = fig.get_size_inches() * pl.DPI
    assert abs(image.shape[1] - width) <= 2 and abs(image.shape[0] - height) <= 2
    assert image[..., :3].std() > 0.01  # something was drawn


def test_spatial_measured_imputed_and_std_side_by_side(tiny_pair, imputed, tmp_path):
    st, _ = tiny_pair
    genes = list(imputed.var_names[:2])
    path = tmp_path / "spatial.png"
    fig = pl.spatial(imputed, genes, measured=st.obsm["truth"], path=path)
    assert isinstance(fig, Figure)
    _check_png(path, fig)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[:3] == [f"{genes[0]}: measured", titles[1], f"{genes[0]}: uncertainty"]
    assert titles[1].startswith(f"{genes[0]}: imputed (r = ")
    assert len(titles) == 6  # 2 genes x (measured, imputed, std)
    # measured and imputed share one colour scale
    maps = [ax.collections[0] for ax in fig.axes if ax.get_title()]
    assert maps[0].get_clim() == maps[1].get_clim()
    # without truth or std: one panel per gene, and PDF by suffix
    pdf = tmp_path / "spatial.pdf"
    fig = pl.spatial(imputed, genes[0], show_std=False, path=pdf)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == [f"{genes[0]}: imputed"]
    assert pdf.read_bytes()[:5] == b"%PDF-"


def _maps(fig):
    """The maps of a figure (colour bars have no title), row by row."""
    return [ax for ax in fig.axes if ax.get_title()]


def _texts(fig):
    """Every piece of text drawn in the figure: titles, axis and colour-bar labels, ticks."""
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def test_spatial_names_the_truth_as_told_and_labels_every_colour_bar(tiny_pair, imputed):
    st, _ = tiny_pair
    genes = list(imputed.var_names[:2])
    fig = pl.spatial(imputed, genes, truth=st.obsm["truth"], truth_label="simulated truth",
                     labels={genes[1]: "median r"}, title="what this is")
    maps = _maps(fig)
    assert [ax.get_title().split(" (r = ")[0] for ax in maps] == [
        f"{g}: {c}" for g in genes for c in ("simulated truth", "imputed", "uncertainty")]
    # The truth is what the caller says it is: no map is called measured.
    assert not [t for t in _texts(fig) if "measured" in t]
    assert fig.get_suptitle() == "what this is"
    assert [ax.get_ylabel() for ax in maps[::3]] == ["", "median r"]
    # Every map has a colour bar with the units of its values.
    units = "log1p(count / known-gene total x 1e4)"
    bars = [ax.collections[0].colorbar for ax in maps]
    assert all(bar is not None for bar in bars)
    assert [bar.ax.get_ylabel() for bar in bars[:3]] == [
        units, units, "std over 2 samples, same units as the values"]
    # r in the imputed map's title is that of the drawn values.
    truth = st.obsm["truth"].loc[list(imputed.obs_names), genes[0]].to_numpy()
    r = np.corrcoef(truth, imputed[:, genes[0]].X.ravel())[0, 1]
    assert maps[1].get_title() == f"{genes[0]}: imputed (r = {r:.2f})"


def test_spatial_units_say_when_values_are_partly_at_the_spots_depth(imputed):
    gene = imputed.var_names[0]
    blended = imputed.copy()
    blended.uns["spalstf"]["params"]["depth_weight"] = 0.5
    bar = pl.spatial(blended, gene).axes[0].collections[0].colorbar
    assert bar.ax.get_ylabel().endswith("\n50% expected at the spot's depth")
    blended.uns["spalstf"]["params"]["output"] = "at_depth"
    bar = pl.spatial(blended, gene).axes[0].collections[0].colorbar
    assert bar.ax.get_ylabel().endswith("\nexpected at the spot's depth")
    bar = pl.spatial(blended, gene, units="my units").axes[0].collections[0].colorbar
    assert bar.ax.get_ylabel() == "my units"
    # Values spalstf did not write have no units to claim.
    foreign = imputed.copy()
    del foreign.uns["spalstf"]
    bar = pl.spatial(foreign, gene, show_std=False).axes[0].collections[0].colorbar
    assert bar.ax.get_ylabel() == ""
    assert imputed.uns["spalstf"]["params"]["depth_weight"] == 0  # the input is untouched


def test_spatial_colour_scale_matched_or_separate(tiny_pair, imputed):
    st, _ = tiny_pair
    gene = imputed.var_names[0]
    truth = st.obsm["truth"].loc[list(imputed.obs_names), gene].to_numpy()
    values = imputed[:, gene].X.ravel()
    fig = pl.spatial(imputed, gene, truth=st.obsm["truth"], show_std=False)
    both = tuple(np.percentile(np.concatenate([truth, values]), [1, 99]))
    assert [ax.collections[0].get_clim() for ax in _maps(fig)] == [both, both]
    fig = pl.spatial(imputed, gene, truth=st.obsm["truth"], show_std=False, scale="separate")
    np.testing.assert_allclose([ax.collections[0].get_clim() for ax in _maps(fig)],
                               [np.percentile(truth, [1, 99]), np.percentile(values, [1, 99])],
                               rtol=1e-6)


def test_spatial_scale_both_draws_the_imputation_on_the_truths_scale_and_its_own(
        tiny_pair, imputed):
    st, _ = tiny_pair
    gene = imputed.var_names[0]
    truth = st.obsm["truth"].loc[list(imputed.obs_names), gene].to_numpy()
    values = imputed[:, gene].X.ravel()
    fig = pl.spatial(imputed, gene, truth=st.obsm["truth"], scale="both",
                     truth_label="simulated truth")
    maps = _maps(fig)
    r = np.corrcoef(truth, values)[0, 1]
    assert [ax.get_title() for ax in maps] == [
        f"{gene}: simulated truth", f"{gene}: imputed\non the truth's colour scale",
        f"{gene}: imputed (r = {r:.2f})\non their own colour scale", f"{gene}: uncertainty"]
    clims = [ax.collections[0].get_clim() for ax in maps]
    both = tuple(np.percentile(np.concatenate([truth, values]), [1, 99]))
    assert clims[0] == clims[1] == both  # the level: one scale with the truth
    np.testing.assert_allclose(clims[2], np.percentile(values, [1, 99]), rtol=1e-6)
    for ax in maps[1:3]:  # both maps draw the imputed values
        np.testing.assert_allclose(ax.collections[0].get_array(), values, rtol=1e-6)
    # Without a truth there is no level to match: one imputed map.
    fig = pl.spatial(imputed, gene, scale="both", show_std=False)
    assert [ax.get_title() for ax in _maps(fig)] == [f"{gene}: imputed"]


def test_spatial_wraps_a_long_title_inside_the_figure(imputed):
    title = "A title longer than the figure is wide, " * 8 + "\nsecond line"
    fig = pl.spatial(imputed, imputed.var_names[0], title=title, show_std=False)
    fig.canvas.draw()
    suptitle, = [t for t in fig.texts if t.get_text() == fig.get_suptitle()]
    box = suptitle.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width  # not cut at the edges
    text = fig.get_suptitle()
    assert " ".join(text.split()) == " ".join(title.split())  # words kept, in order
    assert text.count("\n") >= 2 and text.endswith("\nsecond line")


def test_spatial_std_bar_says_what_the_values_keep_of_the_samples(imputed):
    gene = imputed.var_names[0]
    shrunk = imputed.copy()
    shrunk.uns["spalstf"]["params"]["residual_weight"] = 0.0
    bar = _maps(pl.spatial(shrunk, gene))[-1].collections[0].colorbar
    assert bar is not None and bar.ax.get_ylabel() == (
        "std over 2 samples, same units as the values\n"
        "unused by the values (the prior alone)")
    shrunk.uns["spalstf"]["params"]["residual_weight"] = 0.5
    bar = _maps(pl.spatial(shrunk, gene))[-1].collections[0].colorbar
    assert bar.ax.get_ylabel().endswith("\nthe values keep 50% of their refinement")
    assert imputed.uns["spalstf"]["params"]["residual_weight"] == 1  # the input is untouched


def test_spatial_std_bar_of_the_learnt_combination_names_its_interval(imputed):
    stacked = imputed.copy()
    stacked.uns["spalstf"]["combination"] = {"kind": "stack"}
    stacked.uns["spalstf"]["params"]["interval_level"] = 0.8
    bar = _maps(pl.spatial(stacked, stacked.var_names[0]))[-1].collections[0].colorbar
    # std = half-width / z of the level (1.28 at 80%): not a spread of samples
    assert bar.ax.get_ylabel() == ("half-width of the 80% interval / 1.28,\n"
                                   "same units as the values")


def test_uncertainty_maps_one_panel_per_gene(imputed, tmp_path):
    genes = list(imputed.var_names[:3])
    path = tmp_path / "std.png"
    fig = pl.uncertainty(imputed, genes, ncols=2, path=path)
    _check_png(path, fig)
    drawn = [ax for ax in fig.axes if ax.get_title()]  # colour bars have no title
    assert [ax.get_title() for ax in drawn] == [f"{g}: std" for g in genes]
    np.testing.assert_allclose(drawn[0].collections[0].get_array(),
                               imputed[:, genes[0]].layers["std"].ravel(), rtol=1e-6)
    assert drawn[0].collections[0].colorbar.ax.get_ylabel() == (
        "std over 2 samples, same units as the values")
    fig = pl.uncertainty(imputed, genes[:1], relative=True)
    assert fig.axes[0].get_title() == f"{genes[0]}: std / (value + 0.1)"
    assert fig.axes[0].collections[0].colorbar.ax.get_ylabel() == "std / (value + 0.1)"


def test_metric_boxplot_one_box_per_method(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"truth": t, "method": m, "fold": 0, "gene": f"g{i}", "pcc": rng.uniform(),
             "ssim": rng.uniform(), "rmse": rng.uniform(), "js": rng.uniform()}
            for t in ("lognorm", "counts") for m in ("mean", "knn", "spalstf") for i in range(8)]
    table = pd.DataFrame(rows)
    table.loc[(table["method"] == "mean") & (table["truth"] == "lognorm"), "pcc"] = np.nan
    path = tmp_path / "box.png"
    fig = pl.metric_boxplot(table, ["pcc", "rmse"], path=path)
    _check_png(path, fig)
    assert [ax.get_title() for ax in fig.axes] == ["PCC", "RMSE"]
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["mean\n(8 NaN)", "knn", "spalstf"]
    medians = [t.get_text() for t in fig.axes[1].texts]
    expected = (table[table["truth"] == "lognorm"].groupby("method", sort=False)["rmse"]
                .median())
    assert medians == [f"{v:.3f}" for v in expected]
    fig = pl.metric_boxplot(table, "pcc", methods=["spalstf", "knn"], truth="counts")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["spalstf", "knn"]


def test_metric_boxplot_of_a_cross_validation_result(tiny_pair, tmp_path):
    import spalstf

    st, sc = tiny_pair
    cv = spalstf.cross_validate(st, sc, n_folds=2, methods="mean,knn", clustering=False)
    path = tmp_path / "cv.png"
    fig = pl.metric_boxplot(cv, path=path)
    _check_png(path, fig)
    assert [ax.get_title() for ax in fig.axes] == ["PCC", "SSIM", "RMSE", "JS"]


def test_loss_curve_of_a_model(tiny_model, tmp_path):
    path = tmp_path / "loss.png"
    fig = pl.loss_curve(tiny_model, path=path)
    _check_png(path, fig)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert "train: total" in lines and "validation: MSE" in lines
    np.testing.assert_allclose(lines["train: total"].get_ydata(),
                               [h["train_total"] for h in tiny_model.history])
    best = tiny_model.info["best_epoch"]
    assert f"kept: epoch {best}" in lines
    fig = pl.loss_curve(tiny_model.history, log_scale=True)
    assert fig.axes[0].get_yscale() == "log"


def test_plots_reject_bad_input(imputed, tiny_model):
    gene = imputed.var_names[0]
    with pytest.raises(ValueError, match="not in the imputed data"):
        pl.spatial(imputed, ["NOT_A_GENE"])
    with pytest.raises(ValueError, match="no 'umap' coordinates"):
        pl.uncertainty(imputed, [gene], basis="umap")
    with pytest.raises(ValueError, match=r"no layers\['std'\]"):
        pl.uncertainty(_without_std(imputed), [gene])
    with pytest.raises(ValueError, match="`genes` is empty"):
        pl.spatial(imputed, [])
    with pytest.raises(ValueError, match="`scale` must be one of 'matched', 'separate', 'both'; "
                                         "received 'x'"):
        pl.spatial(imputed, [gene], scale="x")
    with pytest.raises(ValueError, match="`truth` or as `measured`, not both"):
        pl.spatial(imputed, [gene], truth=imputed, measured=imputed)
    with pytest.raises(ValueError, match="`labels` names genes that are not drawn"):
        pl.spatial(imputed, [gene], labels={"other": "x"})
    with pytest.raises(TypeError, match="cross_validate"):
        pl.metric_boxplot([1, 2, 3])
    with pytest.raises(ValueError, match="not in the table"):
        pl.metric_boxplot(pd.DataFrame({"method": ["a"], "pcc": [0.1]}), "ssim")
    with pytest.raises(ValueError, match="no training history"):
        pl.loss_curve([])
    with pytest.raises(TypeError, match="spalstf.Model"):
        pl.loss_curve("model")
    assert tiny_model.history  # the fixture itself is untouched


def _without_std(adata):
    out = adata.copy()
    del out.layers["std"]
    return out


@pytest.fixture(scope="module")
def checked(tiny_pair):
    """A result with a self-check: intervals, expected PCC per gene, the run's expectation."""
    from conftest import FAST

    import spalstf

    st, sc = tiny_pair
    return spalstf.impute(st, sc, seed=0, self_check=True, **FAST)


def test_confidence_maps_a_gene_its_interval_width_and_the_runs_accuracy(checked, tmp_path):
    path = tmp_path / "confidence.png"
    gene = checked.var_names[1]
    fig = pl.confidence(checked, gene, path=path)
    _check_png(path, fig)
    values, width, accuracy = _maps(fig)
    expected_r = float(checked.var["expected_pcc"].iloc[1])
    assert values.get_title() == f"{gene}: imputed\nexpected r {expected_r:.2f}"
    np.testing.assert_allclose(values.collections[0].get_array(),
                               checked[:, gene].X.ravel(), rtol=1e-6)
    assert width.get_title() == f"{gene}: width of the 90% interval"
    np.testing.assert_allclose(
        width.collections[0].get_array(),
        (checked[:, gene].layers["upper"] - checked[:, gene].layers["lower"]).ravel(),
        rtol=1e-5)
    assert width.collections[0].colorbar.ax.get_ylabel() == (
        "upper - lower, same units as the values")
    # The run's expected median with its interval, in the accuracy panel's title and as a band.
    check = checked.uns["spalstf"]["self_check"]
    median = check["expected_median_pcc"]
    lower, upper = check["expected_median_pcc_interval"]
    assert accuracy.get_title() == (
        f"expected median r {median:.2f} (90%: {lower:.2f} to {upper:.2f})\n"
        "with all known genes; the self-check hid half")
    band, = accuracy.patches
    ys = band.get_path().transformed(band.get_patch_transform()).vertices[:, 1]
    np.testing.assert_allclose([ys.min(), ys.max()], [lower, upper], rtol=1e-6)
    # The record holds no expectation per hidden gene: their measured r, ranked.
    dots = accuracy.collections[0].get_offsets()
    measured = np.asarray(check["pcc"], dtype=float)
    np.testing.assert_allclose(dots[:, 1], np.sort(measured[np.isfinite(measured)]))
    assert accuracy.get_xlabel() == "hidden known genes, ranked by measured r"
    labels = [t.get_text() for t in accuracy.get_legend().get_texts()]
    assert labels[0] == f"{np.isfinite(measured).sum()} hidden known genes"
    assert "run's expected median, 90% interval" in labels


def test_confidence_default_gene_is_the_typical_one(checked):
    expected = checked.var["expected_pcc"].to_numpy()
    typical = checked.var_names[np.argsort(expected)[(len(expected) - 1) // 2]]
    title = _maps(pl.confidence(checked))[0].get_title()
    assert title.startswith(f"{typical}: imputed")


def test_confidence_plots_expected_against_measured_when_the_record_has_it(checked):
    """With each hidden gene's reference predictability in the record, the panel is expected
    (along the half-panel calibration line) against measured PCC, with the identity line."""
    result = checked.copy()
    check = result.uns["spalstf"]["self_check"]
    measured = np.asarray(check["pcc"], dtype=float)
    reference = np.linspace(0.1, 0.9, len(measured))
    check["reference_pcc"] = list(reference)
    line = check["expected"]["half_panel_line"]
    accuracy = _maps(pl.confidence(result, result.var_names[0]))[2]
    ok = np.isfinite(measured)
    np.testing.assert_allclose(accuracy.collections[0].get_offsets(),
                               np.column_stack([line["intercept"] + line["slope"]
                                                * reference, measured])[ok], rtol=1e-6)
    identity = [ln for ln in accuracy.get_lines() if ln.get_label() == "identity"]
    assert len(identity) == 1
    np.testing.assert_allclose(identity[0].get_xdata(), identity[0].get_ydata())
    assert accuracy.get_xlabel() == "expected r (self-check's calibration)"
    # A stored expectation per hidden gene is drawn as it is.
    check["expected_pcc"] = list(measured * 0 + 0.3)
    accuracy = _maps(pl.confidence(result, result.var_names[0]))[2]
    assert np.allclose(accuracy.collections[0].get_offsets()[:, 0], 0.3)


def test_confidence_rejects_a_result_without_what_it_draws(checked, imputed):
    gene = checked.var_names[0]
    with pytest.raises(ValueError, match=r"no interval \(layers \['lower', 'upper'\] missing\)"):
        pl.confidence(imputed, imputed.var_names[0])  # a model's imputation: no self-check
    no_check = checked.copy()
    del no_check.uns["spalstf"]["self_check"]
    with pytest.raises(ValueError, match=r"no self-check \(uns\['spalstf'\]\['self_check'\]\)"):
        pl.confidence(no_check, gene)
    with pytest.raises(ValueError, match=r"no 'umap' coordinates \(`basis`\)"):
        pl.confidence(checked, gene, basis="umap")
    with pytest.raises(ValueError, match="`gene` 'NOT_A_GENE' is not in the imputed data"):
        pl.confidence(checked, "NOT_A_GENE")
    with pytest.raises(TypeError, match="`gene` must be one gene's name"):
        pl.confidence(checked, [gene])
    with pytest.raises(TypeError, match="`imputed` must be the AnnData"):
        pl.confidence(checked.to_df())
    assert "self_check" in checked.uns["spalstf"]  # the fixture is untouched
