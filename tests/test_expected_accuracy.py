"""The expected accuracy (issue 26): the self-check's accuracy, measured with part of the known
genes hidden, carried to the run's full set of known genes along a curve measured on the
user's own data, with how sure the estimate is."""

import anndata as ad
import numpy as np
import pytest
from conftest import FAST

import spalstf
from spalstf.combine import expected as accuracy


def _pair(n_genes, *, n_st=400, n_ref=600, seed=0):
    """Counts of an ST and a reference drawn from one low-rank model (no names needed)."""
    rng = np.random.default_rng(seed)
    loadings = rng.gamma(2.0, 1.0, size=(4, n_genes))

    def draw(n, depth):
        programs = rng.gamma(0.6, 1.0, size=(n, 4))
        rate = programs @ loadings
        rate = rate / rate.sum(1, keepdims=True) * depth
        return rng.poisson(rate).astype(np.float64)

    return draw(n_st, 300.0), draw(n_ref, 1500.0)


def test_the_saturating_curve_is_recovered_and_extrapolated():
    m = np.array([12.0, 18.0, 21.0])
    a, b = accuracy.saturating_fit(m, 0.5 - 6.0 / m)
    assert a == pytest.approx(0.5) and b == pytest.approx(6.0)
    # the gain from 12 to 24 known genes along it, read off the medians over genes
    pcc = np.stack([np.full(5, 0.5 - 6.0 / v) for v in m])
    assert accuracy.panel_gain(m, pcc, 24) == pytest.approx(6.0 / 12 - 6.0 / 24)
    # an accuracy falling with more genes (noise) claims no gain; one point: flat
    assert accuracy.saturating_fit(m, 0.2 + 6.0 / m)[1] == 0.0
    assert accuracy.saturating_fit([10.0], [0.3]) == (0.3, 0.0)


def test_the_median_is_carried_by_the_cheap_predictors_relative_gain():
    m = np.array([10.0, 15.0, 17.5])
    ridge = np.stack([np.full(4, 0.3 - 1.0 / v) for v in m])  # 0.2 at 10 genes, 0.25 at 20
    knn = np.stack([np.full(4, 0.4 - 2.0 / v) for v in m])    # 0.2 at 10 genes, 0.3 at 20
    ratio = np.mean([0.25 / 0.2, 0.3 / 0.2])
    assert accuracy.carried(0.3, [ridge, knn], m, 20) == pytest.approx(0.3 * ratio)
    # capped; and where the medians are near 0, the mean absolute gain is added instead
    steep = np.stack([np.full(4, 0.6 - 4.0 / v) for v in m])  # 0.2 -> 0.4: x2
    assert accuracy.carried(0.3, [steep], m, 20) == pytest.approx(0.3 * 1.5)
    assert accuracy.carried(-0.05, [ridge, knn], m, 20) == pytest.approx(
        -0.05 + np.mean([0.05, 0.1]))
    assert accuracy.carried(0.3, [ridge - 0.18, knn], m, 20) == pytest.approx(
        0.3 + np.mean([0.05, 0.1]))


def test_reference_predictability_with_nearly_all_genes_exceeds_that_with_half():
    _, ref = _pair(30, n_ref=800)
    names = [f"g{i:02d}" for i in range(30)]
    kw = dict(seed=0, scale_factor=1e4, log_normalized=False, alpha=None)
    most = accuracy.panel_reference_pcc(ref, names, n_groups=8, **kw)
    half = accuracy.panel_reference_pcc(ref, names, n_groups=2, **kw)
    assert most.shape == (30,) and np.isfinite(most).all()
    assert np.median(most) > np.median(half)


def test_the_curve_rises_with_the_known_genes_and_its_extrapolation_meets_the_full_panel():
    st, ref = _pair(40)
    names = [f"g{i:02d}" for i in range(40)]
    curve = accuracy.panel_curve(st, ref, names, n_folds=2, seed=0, scale_factor=1e4,
                                  log_normalized=False)
    np.testing.assert_allclose(curve["n_known"], [20, 30, 35])
    medians = [np.nanmedian(row) for row in curve["st"]]
    assert medians[0] < medians[1] <= medians[2] + 0.01  # more known genes: more accurate
    assert curve["st"].shape == curve["reference"].shape == (3, 40)
    # what the curve says for all but one gene hidden at a time (39 known) against what the
    # same predictor measures there
    loo = accuracy.panel_curve(st, ref, names, n_folds=40, seed=0, scale_factor=1e4,
                                log_normalized=False, multiples=(1,))
    reached = medians[0] + accuracy.panel_gain(curve["n_known"], curve["st"], 39)
    assert reached == pytest.approx(np.nanmedian(loo["st"][0]), abs=0.03)
    assert reached > medians[0]


def test_the_estimate_rises_with_the_panel_and_its_uncertainty_shrinks_with_more_genes():
    rng = np.random.default_rng(1)

    def estimate(n_genes):
        curve = {"n_known": np.array([n_genes / 2, 3 * n_genes / 4, 7 * n_genes / 8]),
                 "st": np.stack([np.clip(0.5 - 4.0 / m + rng.normal(0, 0.1, n_genes), -1, 1)
                                 for m in (n_genes / 2, 3 * n_genes / 4, 7 * n_genes / 8)]),
                 "reference": np.full((3, n_genes), 0.6)}
        hidden = np.clip(0.5 - 4.0 / (n_genes / 2) + rng.normal(0, 0.1, n_genes), -1, 1)
        return accuracy.full_panel(hidden, curve, n_genes, seed=0)

    small, large = estimate(24), estimate(240)
    for e in (small, large):
        assert e["lower"] <= e["median_pcc"] <= e["upper"] and e["se"] > 0
        assert e["gain"] > 0 and e["reference_gain"] == 0
    assert large["se"] < small["se"] / 2  # ten times the genes: about a third of the spread
    # the real curve gives 0.5 - 4/24 = 0.333 and 0.5 - 4/240 = 0.483 with every known gene
    assert small["median_pcc"] == pytest.approx(0.5 - 4 / 24, abs=2.5 * small["se"] + 0.02)
    assert large["median_pcc"] == pytest.approx(0.5 - 4 / 240, abs=2.5 * large["se"] + 0.02)
    assert large["median_pcc"] > small["median_pcc"]


def test_the_summary_and_the_per_gene_expectation_are_stored(tiny_pair, tmp_path):
    from spalstf.cli.commands import _format_self_check

    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:4]
    out = spalstf.impute(st, sc, genes, self_check=True, self_check_folds=2, **FAST)
    check = out.uns["spalstf"]["self_check"]
    lower, upper = check["expected_median_pcc_interval"]
    assert lower <= check["expected_median_pcc"] <= upper
    assert check["expected_median_pcc_se"] >= 0
    expected = check["expected"]
    assert expected["n_known"] == st.n_vars and len(expected["curve_n_known"]) == 3
    assert expected["median_pcc"] == pytest.approx(check["median_pcc"] + expected["gain"])
    assert expected["gene_sd"] > 0
    # the line read per gene is the one refitted at the full panel, the half panel's kept
    cal = check["calibration"]
    assert set(cal) == set(expected["half_panel_line"]) == {"intercept", "slope", "r", "n"}
    # the per-gene values: the model's (agreement and spread need the stack's statistics on
    # the ST), centred on the run's estimate
    assert expected["gene_model"]["n"] == st.n_vars
    assert np.median(out.var["expected_pcc"]) == pytest.approx(check["expected_median_pcc"],
                                                               abs=1e-6)
    # the CLI prints it on a line of its own, after the self-check's
    text = _format_self_check(check)
    first, second = text.split("\n")
    assert first.startswith("self-check: median PCC")
    assert second == (f"spalstf: expected with all {st.n_vars} known genes: median PCC "
                      f"{check['expected_median_pcc']:.3f} +- "
                      f"{check['expected_median_pcc_se']:.3f} (90% {lower:.3f} to {upper:.3f})")
    # and it survives a round trip through .h5ad
    out.write_h5ad(tmp_path / "out.h5ad")
    back = ad.read_h5ad(tmp_path / "out.h5ad").uns["spalstf"]["self_check"]
    assert back["expected_median_pcc"] == pytest.approx(check["expected_median_pcc"])
    assert _format_self_check(back) == text
