"""The per-gene expected accuracy (issue 26): the model learnt on the self-check's hidden genes
from each gene's evidence, its median set to the run's estimate, and how sure it is."""

from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from spalstf.combine import expected as accuracy
from spalstf.combine.stack import Stack
from spalstf.model.core import Model


def test_centred_sets_the_median_and_leaves_the_input_alone():
    values = np.array([0.1, 0.2, 0.4, np.nan, 0.9])
    out = accuracy.centred(values, 0.5)
    assert np.nanmedian(out) == pytest.approx(0.5)
    np.testing.assert_allclose(np.diff(out[[0, 1, 2]]), np.diff(values[[0, 1, 2]]))
    assert out[4] == 1.0 and np.isnan(out[3])  # clipped to a correlation's range
    assert np.isnan(values[3]) and values[0] == 0.1
    np.testing.assert_array_equal(accuracy.centred(values, float("nan")), values)


def synthetic_genes(n, rng):
    """Genes whose PCC rises with the columns' agreement and the prediction's spread, while
    their predictability in the reference says nothing (as on a shallow reference)."""
    features = {"reference_pcc": rng.uniform(0, 1, n), "agreement": rng.uniform(0.4, 1, n),
                "spread": rng.uniform(0.1, 1, n)}
    pcc = (0.6 * features["agreement"] + 0.3 * features["spread"] - 0.3
           + 0.03 * rng.normal(size=n))
    return features, pcc


def test_the_gene_model_ranks_genes_by_the_evidence_that_carries():
    rng = np.random.default_rng(0)
    hidden, pcc = synthetic_genes(40, rng)
    model = accuracy.fit_gene_model(hidden, pcc, fold_of=np.arange(40) % 2)
    assert model["features"] == list(accuracy.GENE_FEATURES) and model["n"] == 40
    assert model["r"] > 0.8 and 0 < model["residual_sd"] < 0.1
    assert abs(model["coef"][0]) < 0.02 < model["coef"][1]  # the reference says nothing
    imputed, real = synthetic_genes(200, rng)
    assert stats.spearmanr(accuracy.predict_gene_model(model, imputed), real)[0] > 0.9
    # the line from the predictability alone cannot rank them
    line = accuracy.calibrate(hidden["reference_pcc"], pcc)
    assert abs(stats.spearmanr(accuracy.expected_pcc(line, imputed["reference_pcc"]),
                               real)[0]) < 0.3


def test_too_few_genes_give_a_flat_model():
    model = accuracy.fit_gene_model({"agreement": [0.5, 0.9, np.nan]}, [0.1, 0.3, 0.2],
                                    fold_of=[0, 1, 0])
    assert model["coef"] == [0.0] and model["intercept"] == pytest.approx(0.2)
    np.testing.assert_allclose(accuracy.predict_gene_model(model, {"agreement": [0.1, 1.0]}),
                               [0.2, 0.2])


@pytest.mark.parametrize("kwargs, match", [
    ({"pcc": [0.1, 0.2]}, "one value per gene"),
    ({"fold_of": [0, 1]}, "one value per gene"),
    ({"penalty": 0.0}, "`penalty` must be > 0"),
])
def test_bad_input_to_the_gene_model_is_refused(kwargs, match):
    args = {"features": {"agreement": [0.5, 0.9, 0.7, 0.6]}, "pcc": [0.1, 0.3, 0.2, 0.2],
            "fold_of": [0, 1, 0, 1], **kwargs}
    with pytest.raises(ValueError, match=match):
        accuracy.fit_gene_model(args.pop("features"), args.pop("pcc"), **args)


def test_predicting_without_a_feature_of_the_model_is_refused():
    model = accuracy.fit_gene_model({"agreement": [0.5, 0.9, 0.7, 0.6]}, [0.1, 0.3, 0.2, 0.2],
                                    fold_of=[0, 1, 0, 1])
    with pytest.raises(ValueError, match="lacks \\['agreement'\\]"):
        accuracy.predict_gene_model(model, {"spread": [0.1]})


def test_gene_features_read_the_stacks_statistics():
    rng = np.random.default_rng(1)
    signal = rng.normal(size=(300, 2))
    # gene 0: both columns say the same; gene 1: they are unrelated
    a = signal.copy()
    b = np.column_stack([2 * signal[:, 0], rng.normal(size=300)])
    stack = Stack({"knn|raw|expression": 0.5, "ridge|raw|expression": 0.5})
    features = accuracy.gene_features(stack.statistics({"knn|raw|expression": a,
                                                       "ridge|raw|expression": b}),
                                      stack.weights,
                                      [0.3, 0.4])
    assert features["agreement"][0] == pytest.approx(1.0)
    assert features["agreement"][1] == pytest.approx(np.sqrt(0.5), abs=0.1)
    np.testing.assert_allclose(features["spread"][0], 0.5 * a[:, 0].std() + 0.5 * b[:, 0].std())
    np.testing.assert_allclose(features["reference_pcc"], [0.3, 0.4])


def stand_in(reference):
    return SimpleNamespace(info={"reference_pcc": reference}, output_names=["g1", "g2", "g3"],
                           stack=Stack({"knn|raw|expression": 1.0}))


def test_a_self_check_recorded_before_the_gene_model_still_gives_the_line():
    # as saved before: the line alone, no run estimate, no gene model
    old = {"calibration": {"intercept": 0.1, "slope": 0.5, "r": 0.6, "n": 10}}
    conf = Model._gene_confidence(stand_in([0.2, 0.4, 0.8]), old)
    np.testing.assert_allclose(conf["expected_pcc"], [0.2, 0.3, 0.5])
    assert np.isnan(conf["expected_pcc_sd"]).all()
    # with the run's estimate (and no statistics, as with the fixed blend): the line, centred
    newer = {**old, "expected_median_pcc": 0.4, "expected_median_pcc_se": 0.03,
             "expected": {"gene_sd": 0.04}}
    conf = Model._gene_confidence(stand_in([0.2, 0.4, 0.8]), newer)
    np.testing.assert_allclose(conf["expected_pcc"], [0.3, 0.4, 0.6])
    np.testing.assert_allclose(conf["expected_pcc_sd"], 0.05)


def test_the_gene_model_is_read_with_the_stacks_statistics():
    rng = np.random.default_rng(2)
    hidden, pcc = synthetic_genes(30, rng)
    model = accuracy.fit_gene_model(hidden, pcc, fold_of=np.arange(30) % 2)
    check = {"calibration": {"intercept": 0.1, "slope": 0.5, "r": 0.6, "n": 10},
             "expected_median_pcc": 0.35, "expected_median_pcc_se": 0.02,
             "expected": {"gene_sd": 0.2, "gene_model": model}}
    statistics = SimpleNamespace(z_sd=np.array([0.5, 0.9, 0.7]),
                                 sd={"knn|raw|expression": np.array([0.5, 0.9, 0.2])})
    conf = Model._gene_confidence(stand_in([0.9, 0.1, 0.5]), check, statistics)
    values = np.array(conf["expected_pcc"])
    assert np.median(values) == pytest.approx(0.35)
    assert values[1] > values[2] > values[0]  # agreement and spread, not the reference
    np.testing.assert_allclose(conf["expected_pcc_sd"], np.hypot(model["residual_sd"], 0.02))
