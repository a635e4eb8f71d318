"""Config in stages: every field has one, and the option lists are read from them."""

import dataclasses
import json

import numpy as np
import pytest

from spalstf import _validate
from spalstf.config import INFERENCE_STAGES, STAGES, Config
from spalstf.train import checkpoint


def test_every_field_has_one_stage_and_the_file_groups_them():
    stages = [f.metadata["stage"] for f in dataclasses.fields(Config)]
    assert set(stages) == set(STAGES)
    # grouped: the stages follow each other in STAGES order, each in one block
    assert list(dict.fromkeys(stages)) == list(STAGES)
    assert stages == sorted(stages, key=STAGES.index)
    assert sorted(sum((Config.fields(s) for s in STAGES), ())) == sorted(Config.fields())
    assert Config.stage("knn_weight") == "sample" and Config.stage("depth") == "model"
    with pytest.raises(ValueError, match="unknown stage.*'readout'"):
        Config.fields("sampling")
    with pytest.raises(ValueError, match="not a field of Config"):
        Config.stage("knn")


def test_the_option_lists_are_the_stages():
    inference = Config.fields(*INFERENCE_STAGES)
    assert _validate.INFERENCE_OPTIONS == inference
    assert {"n_steps", "n_samples", "knn_weight", "output", "residual_weight"} <= set(inference)
    assert not {"depth", "epochs", "batch_size", "prior"} & set(inference)
    # the fields that change the fixed blend's own prediction
    assert Config.fields(*INFERENCE_STAGES, prior=True) == (
        "spatial_weight", "spatial_neighbors", "expression_weight", "expression_neighbors",
        "knn_weight", "knn_neighbors", "depth_weight", "output")
    # how the predictions combine is an imputation's choice; what is fitted is the model's
    assert {"combine", "interval_level"} <= set(inference) and "predictors" not in inference
    # a resumed fit may change when to stop and how to sample, nothing that shapes training
    assert checkpoint.FREE_OPTIONS == {"epochs", "max_steps", "max_time", "patience",
                                       *inference}


def test_a_config_keeps_its_flat_form_and_saved_configs_load():
    cfg = Config(depth=2).replace(n_samples=3)
    assert (cfg.depth, cfg.n_samples) == (2, 3)
    # a model.json of an earlier version lists the fields in another order, some unknown
    saved = dict(reversed(list(cfg.to_dict().items())), retired_option=1)
    assert Config.from_dict(json.loads(json.dumps(saved))) == cfg
    with pytest.raises(TypeError, match="unknown option.*valid options are"):
        cfg.replace(knn=0.5)


def test_model_impute_takes_every_sampling_and_readout_field_and_no_other(tiny_model,
                                                                          tiny_pair):
    st, _ = tiny_pair
    cfg = tiny_model.config
    same = {name: getattr(cfg, name) for name in _validate.INFERENCE_OPTIONS}
    np.testing.assert_array_equal(tiny_model.impute(st, seed=1, progress=False, **same).X,
                                  tiny_model.impute(st, seed=1, progress=False).X)
    for name in ("depth", "epochs", "prior_mixtures"):
        with pytest.raises(TypeError, match=f"'{name}'.*fixed at fit"):
            tiny_model.impute(st, progress=False, **{name: getattr(cfg, name)})


def _settings():
    """conftest's FAST as Config fields (progress is an argument, not a setting)."""
    from conftest import FAST

    return {k: v for k, v in FAST.items() if k != "progress"}


def test_impute_and_fit_keep_a_dozen_options_and_take_the_rest_through_config():
    import inspect

    import spalstf

    plumbing = {"st", "sc", "st_genes", "sc_genes", "st_layer", "sc_layer", "max_genes",
                "checkpoint", "checkpoint_every", "resume", "options"}
    own = set(inspect.signature(spalstf.impute).parameters) - plumbing
    assert own == {"genes", "log_normalized", "seed", "device", "spatial", "max_steps",
                   "n_samples", "self_check", "select", "self_check_folds", "progress", "out",
                   "overwrite", "config"}
    assert not own & set(Config.fields()) - {"max_steps", "n_samples"}
    for func in (spalstf.fit, spalstf.Model.impute):
        params = inspect.signature(func).parameters
        assert "config" in params and "options" in params
        assert len(set(params) & set(Config.fields())) <= 3  # max_steps, n_samples, batch_size


def test_config_as_a_dict_is_the_same_as_keywords(tiny_pair):
    import spalstf

    st, sc = tiny_pair
    known, genes = list(st.var_names), list(st.obsm["truth"].columns)[:4]
    by_keyword = spalstf.fit(sc, known, genes, seed=0, progress=False, **_settings())
    by_config = spalstf.fit(sc, known, genes, seed=0, progress=False, config=_settings())
    assert by_config.config == by_keyword.config
    expected = by_keyword.impute(st, seed=1, progress=False, n_steps=2, knn_weight=0.0)
    np.testing.assert_array_equal(
        by_config.impute(st, seed=1, progress=False, config={"n_steps": 2, "knn_weight": 0.0}).X,
        expected.X)
    # a Config works when its fixed fields are the model's; a keyword wins over `config`
    np.testing.assert_array_equal(
        by_config.impute(st, seed=1, progress=False, n_steps=2,
                         config=by_config.config.replace(n_steps=4, knn_weight=0.0)).X,
        expected.X)
    with pytest.raises(ValueError, match=r"\['depth'\], fixed at fit"):
        by_config.impute(st, progress=False, config=by_config.config.replace(depth=2))
    with pytest.raises(TypeError, match="'depth'.*fixed at fit"):
        by_config.impute(st, progress=False, config={"depth": 2})
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['knn'\].*'knn_weight'"):
        by_config.impute(st, progress=False, config={"knn": 0.5})
    with pytest.raises(TypeError, match=r"`config` has unknown field\(s\) \['dept'\].*'depth'"):
        spalstf.fit(sc, known, genes, config={"dept": 2})
    with pytest.raises(ValueError, match="`n_heads`"):
        spalstf.fit(sc, known, genes, config={"n_heads": 0})
    with pytest.raises(TypeError, match="`config` must be a spalstf.Config or a dict"):
        spalstf.impute(st, sc, genes, config=[("depth", 2)])


def test_the_predictor_names_are_those_the_prior_knows_and_the_network():
    from spalstf.config import DEFAULT_PREDICTORS, NETWORKS, OPTIONAL, PREDICTOR_NAMES
    from spalstf.prior import PREDICTORS

    # config.py declares the names without loading torch (`spalstf --help` lists them); the
    # classes of spalstf.prior, registered in the same order, are the predictors themselves
    assert [p for p in PREDICTOR_NAMES if p != "network"] == list(PREDICTORS)
    # the networks cost a minute or more per fit on a CPU: options, not defaults
    assert set(NETWORKS) == {"network", *(n for n, cls in PREDICTORS.items() if cls.network)}
    assert Config().predictors == DEFAULT_PREDICTORS == tuple(
        p for p in PREDICTORS if p not in NETWORKS + OPTIONAL)
    # a model.json holds lists, and a list given by a user works too
    assert Config.from_dict({"predictors": ["ridge", "knn"]}).predictors == ("ridge", "knn")


def test_each_predictor_is_built_from_its_own_settings_of_a_config():
    """Each predictor takes its own few settings (`config_fields`: parameter -> Config field), and
    `spalstf.prior.build` reads them from a Config; a saved state comes back with them."""
    import inspect

    from spalstf.prior import PREDICTORS, MaskedNetwork, build

    cfg = Config(knn_neighbors=7, prior_mixtures=False, prior_alpha=3.0, scale_factor=500.0)
    for name, cls in PREDICTORS.items():
        predictor = build(name, cfg)
        assert type(predictor) is cls and predictor.name == name
        if cls is MaskedNetwork:  # a network's settings are the whole Config
            assert predictor.config is cfg
            continue
        parameters = inspect.signature(cls).parameters
        for parameter, field_name in cls.config_fields.items():
            assert field_name in Config.fields() and parameter in parameters
            assert getattr(predictor, parameter) == getattr(cfg, field_name)
    assert build("ridge", cfg).alpha == 3.0 and build("knn", cfg).knn_neighbors == 7
