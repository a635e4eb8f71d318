"""The prior's room: base predictors behind one interface, blended into the centre of the samples."""

import json

import numpy as np
import pytest
import torch
from conftest import FAST

import spalstf
from spalstf.combine.blend import Blend
from spalstf.model.folder import CHECKSUMS, seal
from spalstf.prior import (
    EXPRESSION,
    MODEL,
    PREDICTORS,
    AlignedNeighbours,
    BasePredictor,
    Reference,
    RidgePrior,
)


def _chunks_agree(predictor, known):
    """A cell's prediction is the same alone, in any chunk, in any order."""
    whole = predictor.predict(known)
    order = np.random.default_rng(0).permutation(len(known))
    shuffled = np.concatenate([predictor.predict(known[order[s:s + 7]])
                               for s in range(0, len(known), 7)])
    np.testing.assert_array_equal(shuffled, whole[order])
    np.testing.assert_array_equal(predictor.predict(known[3:4])[0], whole[3])
    return whole


def test_the_ridge_predictor_is_the_map_the_network_reads(tiny_model):
    ridge = tiny_model.predictors["ridge"]
    known = np.random.default_rng(1).normal(size=(40, len(tiny_model.known_genes)))
    known = known.astype(np.float32)
    net = tiny_model.network
    expected = (torch.as_tensor(known) @ net.prior_weights + net.prior_bias).numpy()
    ridge = RidgePrior.from_state(ridge.state(), tiny_model.config)
    ridge.prepare(lambda: iter(()))
    np.testing.assert_array_equal(_chunks_agree(ridge, known), expected)


def test_the_aligned_estimate_z_scores_the_st_over_itself(tiny_model):
    aligned = AlignedNeighbours.from_state(tiny_model.predictors["aligned"].state(),
                                           tiny_model.config.replace(knn_neighbors=5))
    with pytest.raises(RuntimeError, match="prepare"):
        aligned.predict(np.zeros((2, aligned.n_known), np.float32))
    rng = np.random.default_rng(2)
    st = rng.gamma(2.0, 1.0, size=(50, aligned.n_known)).astype(np.float32)
    aligned.prepare(lambda: iter([st[:20], st[20:]]))
    first = _chunks_agree(aligned, st)
    assert first.shape == (50, len(tiny_model.target_genes))
    # a platform that measures every gene 4 times higher gives the same estimate: the ST is
    # z-scored over itself (a power of 2, so that the z-scores are equal to the last bit)
    aligned.prepare(lambda: iter([st * 4.0]))
    np.testing.assert_array_equal(aligned.predict(st * 4.0), first)


class MeanPredictor(BasePredictor):
    """A predictor from outside the package: the reference's mean targets for every cell."""

    name = "mean"
    reads = EXPRESSION

    def __init__(self, *, mean=None):
        super().__init__()
        self.mean = mean

    def fit(self, reference, *, seed):
        self.mean = np.asarray(reference.target[reference.fit_rows()]).mean(0)

    def predict(self, known):
        return np.repeat(self.mean[None].astype(np.float32), len(known), axis=0)

    def state(self):
        return {"mean": self.mean}


def test_a_blend_sums_its_parts_each_read_on_its_own_scale(tiny_model):
    rng = np.random.default_rng(3)
    n_known = len(tiny_model.known_genes)
    target = rng.normal(size=(30, len(tiny_model.target_genes)))
    mean = MeanPredictor()
    mean.fit(Reference(np.zeros((30, n_known)), target, rows=np.arange(10)), seed=0)
    np.testing.assert_allclose(mean.mean, target[:10].mean(0))
    ridge = RidgePrior.from_state(tiny_model.predictors["ridge"].state(), tiny_model.config)
    expression = rng.gamma(2.0, 1.0, size=(12, n_known)).astype(np.float32)
    model_space = tiny_model.known_scaler.transform(expression)
    asked = []

    def read(scale, cells):
        asked.append(scale)
        return {MODEL: model_space, EXPRESSION: expression}[scale][cells]

    blend = Blend([(ridge, 0.75), (mean, 0.25), (MeanPredictor(), 0.0)])
    blend.prepare(read, 12, block=5)
    cells = np.arange(4, 12)
    got = blend.predict(read, cells)
    expected = 0.75 * ridge.predict(model_space[cells]) + 0.25 * mean.predict(expression[cells])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert set(asked) == {MODEL, EXPRESSION}  # the part of weight 0 is never asked
    np.testing.assert_array_equal(blend.reader(read, cells)(slice(2, 5)), got[2:5])
    with pytest.raises(ValueError, match="non-zero weight"):
        Blend([(ridge, 0.0)])


def test_the_configured_blend_weighs_ridge_and_estimate_by_knn_weight(tiny_model, caplog):
    cfg = tiny_model.config
    blend = Blend.from_config(tiny_model.predictors, cfg.replace(knn_weight=0.25))
    assert [(p.name, w) for p, w in blend.parts] == [("ridge", 0.75), ("aligned", 0.25)]
    assert tiny_model.predictors["aligned"]._search is None  # the model's own stay unprepared
    alone = Blend.from_config(tiny_model.predictors, cfg.replace(knn_weight=0.0))
    assert [(p.name, w) for p, w in alone.parts] == [("ridge", 1.0)]
    assert Blend.from_config(tiny_model.predictors, cfg.replace(prior="neighbours")) is None
    with caplog.at_level("WARNING", logger="spalstf"):
        ridge_only = Blend.from_config({"ridge": tiny_model.predictors["ridge"]}, cfg)
    assert [p.name for p, _ in ridge_only.parts] == ["ridge"] and "knn_weight" in caplog.text


def test_the_model_file_keeps_each_predictors_state_once(tiny_model, tiny_pair, tmp_path):
    st, _ = tiny_pair
    path = tiny_model.save(tmp_path / "m")
    meta = json.loads((path / "model.json").read_text())
    fitted = [name for name in tiny_model.config.predictors if name != "network"]
    assert meta["format_version"] == 3 and meta["prior"] == fitted
    tensors = torch.load(path / "weights.pt", weights_only=True)

    def storage(key):
        return tensors[key].untyped_storage().data_ptr()

    # the estimate's atlas is the context's, the ridge is the network's buffers: stored once
    assert storage("prior.aligned.atlas") == storage("atlas")
    assert storage("prior.ridge.weights") == storage("network.prior_weights")
    loaded = spalstf.load(path, device="cpu")
    assert set(loaded.predictors) == set(fitted) <= set(PREDICTORS)
    for name, predictor in tiny_model.predictors.items():
        for key, value in predictor.state().items():
            np.testing.assert_array_equal(loaded.predictors[name].state()[key], value)
    # an unknown predictor (from a newer spalstf) is refused by name
    (path / "model.json").write_text(json.dumps({**meta, "prior": ["ridge", "tangram"]}))
    seal(path)  # as a newer spalstf would have written it
    with pytest.raises(ValueError, match="tangram"):
        spalstf.load(path)


def test_a_model_of_format_1_loads_and_imputes_as_before(tiny_model, tiny_pair, tmp_path):
    """Format 1 kept the estimate's pseudo-spots as "mixtures" and its ridge in the network."""
    st, _ = tiny_pair
    path = tiny_model.save(tmp_path / "m")
    meta = json.loads((path / "model.json").read_text())
    tensors = torch.load(path / "weights.pt", weights_only=True)
    old = {k: v.clone() for k, v in tensors.items() if not k.startswith("prior.")}
    old["mixtures"] = tensors["prior.aligned.mixtures"].clone()
    torch.save(old, path / "weights.pt")
    del meta["prior"]
    (path / "model.json").write_text(json.dumps({**meta, "format_version": 1}))
    (path / CHECKSUMS).unlink()  # format 1 kept no checksums
    loaded = spalstf.load(path, device="cpu")
    np.testing.assert_array_equal(loaded.mixtures, tiny_model.mixtures)
    for knn in (0.0, 0.5):
        np.testing.assert_array_equal(
            loaded.impute(st, seed=2, progress=False, knn_weight=knn).X,
            tiny_model.impute(st, seed=2, progress=False, knn_weight=knn).X)


def test_a_fit_keeps_the_predictors_asked_for_and_the_ridge_always(tiny_pair):
    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)[:3]
    model = spalstf.fit(sc, list(st.var_names), genes, seed=0,
                        **{**FAST, "predictors": ["knn", "spage"]})
    # the ridge anchors the stack's scale and the network's prior: fitted even when not named
    assert list(model.predictors) == ["ridge", "knn", "spage"] and model.network is None
    out = model.impute(st, seed=0, progress=False)
    assert out.shape == (st.n_obs, 3) and np.isfinite(out.X).all()
