"""The spot deconvolution (`spalstf.prior.deconvolve`): proportions of known mixtures recovered,
their constraints, bad input, a saved model with it, and the proportions in the imputation."""

import numpy as np
import pandas as pd
import pytest

import spalstf
from spalstf.preprocess import Standardizer
from spalstf.prior import PREDICTORS, Reference, SpotDeconvolution
from spalstf.prior.deconvolve import fit_proportions


def _units(rng, n_units=3, n_genes=40):
    """Distinct known-gene shares of `n_units` units (rows sum to 1)."""
    return rng.dirichlet(np.full(n_genes, 0.3), size=n_units)


def _spots(rng, profiles, proportions, depth):
    """Poisson counts of spots mixing the units at `proportions`, log-normalised (1e4)."""
    counts = rng.poisson(depth * proportions @ profiles)
    return np.log1p(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) * 1e4)


def test_the_proportions_of_known_mixtures_are_recovered():
    rng = np.random.default_rng(0)
    profiles = _units(rng)
    truth = rng.dirichlet(np.ones(3), size=200)
    counts = rng.poisson(3000 * truth @ profiles)
    estimated = fit_proportions(counts / counts.sum(axis=1, keepdims=True), profiles)
    assert np.abs(estimated - truth).mean() < 0.03
    assert np.abs(estimated - truth).max() < 0.15


def test_the_proportions_are_non_negative_and_sum_to_one_and_a_cell_without_counts_is_even():
    rng = np.random.default_rng(1)
    profiles = _units(rng, n_units=4)
    cell_shares = rng.dirichlet(np.ones(40), size=50)
    cell_shares[7] = 0
    w = fit_proportions(cell_shares, profiles)
    assert w.shape == (50, 4) and (w >= 0).all()
    np.testing.assert_allclose(w.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(w[7], 0.25)


def _typed_reference(rng, profiles, n_cells=300, n_target=5, with_types=True):
    """A deep reference of cells of the units (model space), its targets the unit's own."""
    types = rng.integers(0, len(profiles), n_cells)
    counts = np.stack([rng.multinomial(5000, profiles[t]) for t in types])
    known = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    levels = rng.uniform(0, 50, size=(len(profiles), n_target))
    target = np.log1p(levels[types])
    scalers = (Standardizer.fit(known), Standardizer.fit(target))
    known_z, target_z = scalers[0].transform(known), scalers[1].transform(target)
    names = np.array(["B cell", "T cell", "neuron"])[types] if with_types else None
    return Reference(known_z, target_z, scalers=scalers, cell_types=names,
                     atlas=np.concatenate([known_z, target_z], axis=1)), levels, scalers[1]


def test_spots_of_a_typed_reference_get_their_proportions_and_targets():
    """Fitted on a reference with cell types, the predictor names its units by them, recovers
    the spots' proportions (on a platform capturing 8 of the 40 genes 30 times better too: the
    capture is learnt on the ST; error 0.15 without it) and predicts the mixture of the units'
    targets."""
    rng = np.random.default_rng(2)
    profiles = _units(rng)
    reference, levels, target_scaler = _typed_reference(rng, profiles)
    predictor = SpotDeconvolution()
    predictor.fit(reference, seed=0)
    assert predictor.names == ["B cell", "T cell", "neuron"]
    truth = rng.dirichlet(np.ones(3), size=300)
    biased = profiles.copy()
    biased[:, :8] *= 30
    biased /= biased.sum(axis=1, keepdims=True)
    st = _spots(rng, biased, truth, 3000)
    predictor.prepare(lambda: iter([st[:150], st[150:]]))
    estimated = predictor.proportions(st)
    # the spots mix the units' shares as the ST captures them: with the capture learnt, the
    # proportions are the mixing proportions themselves
    assert np.abs(estimated - truth).mean() < 0.05
    predicted = np.expm1(target_scaler.inverse(predictor.predict(st), clip=False))
    expected = estimated @ levels
    np.testing.assert_allclose(predicted, expected, rtol=1e-3, atol=1e-3)


def test_clusters_are_the_units_without_cell_types():
    rng = np.random.default_rng(3)
    reference, _, _ = _typed_reference(rng, _units(rng), with_types=False)
    predictor = SpotDeconvolution()
    predictor.fit(reference, seed=0)
    assert predictor.names[0] == "cluster1" and len(predictor.names) == len(predictor.sizes)


def test_bad_input_is_refused_with_what_was_expected():
    rng = np.random.default_rng(4)
    reference, _, _ = _typed_reference(rng, _units(rng))
    reference.cell_types = reference.cell_types[:-1]
    with pytest.raises(ValueError, match=r"`cell_types` must give one type per atlas cell "
                                         r"\(300\); received 299"):
        SpotDeconvolution().fit(reference, seed=0)
    reference.cell_types = None
    predictor = SpotDeconvolution()
    predictor.fit(reference, seed=0)
    with pytest.raises(RuntimeError, match="prepare must run before predict"):
        predictor.predict(np.zeros((2, 40), np.float32))
    state = predictor.state()
    with pytest.raises(ValueError, match="'target_std' must hold the target genes' scales"):
        SpotDeconvolution.check_state({**state, "target_std": 0 * state["target_std"]}, 40, 5)
    with pytest.raises(ValueError, match=r"entry 'unit_targets' has shape"):
        SpotDeconvolution.check_state({**state, "unit_targets": state["unit_targets"][:, :2]},
                                      40, 5)
    assert PREDICTORS["deconvolution"] is SpotDeconvolution
    with pytest.raises(ValueError, match="the spot deconvolution needs the reference's atlas"):
        SpotDeconvolution().fit(Reference(reference.known, reference.target), seed=0)


@pytest.fixture(scope="module")
def deconvolved(tiny_pair):
    st, sc = tiny_pair
    targets = list(st.obsm["truth"].columns)
    model = spalstf.fit(sc, list(st.var_names), targets, seed=0, progress=False,
                        predictors=("ridge", "deconvolution"))
    return model, st, sc


def test_a_saved_model_with_it_predicts_the_same_and_keeps_the_unit_names(deconvolved,
                                                                          tmp_path):
    model, st, _ = deconvolved
    model.save(tmp_path / "m")
    loaded = spalstf.load(tmp_path / "m")
    assert loaded.predictors["deconvolution"].names == model.predictors["deconvolution"].names
    assert set(model.predictors["deconvolution"].names) <= {f"type{i}" for i in range(1, 20)}
    first = model.impute(st, progress=False)
    again = loaded.impute(st, progress=False)
    np.testing.assert_array_equal(np.asarray(first.X), np.asarray(again.X))
    pd.testing.assert_frame_equal(first.obsm["spalstf_proportions"],
                                  again.obsm["spalstf_proportions"])


def test_the_imputation_carries_the_proportions_and_leaves_the_input_alone(deconvolved):
    model, st, sc = deconvolved
    before = st.copy()
    out = model.impute(st, progress=False)
    proportions = out.obsm["spalstf_proportions"]
    assert isinstance(proportions, pd.DataFrame)
    assert list(proportions.index) == list(st.obs_names)
    assert list(proportions.columns) == model.predictors["deconvolution"].names
    assert (proportions.to_numpy() >= 0).all()
    np.testing.assert_allclose(proportions.sum(axis=1), 1, atol=1e-4)
    assert "spalstf_proportions" not in st.obsm
    np.testing.assert_array_equal(np.asarray(before.X), np.asarray(st.X))
    # a model without it writes none
    plain = spalstf.fit(sc, list(st.var_names),
                        list(st.obsm["truth"].columns)[:2], seed=0, progress=False,
                        predictors=("ridge",))
    assert "spalstf_proportions" not in plain.impute(st, progress=False).obsm
