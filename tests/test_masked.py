"""The masked-gene network: one fit on the reference and the ST, any split of the genes."""

import numpy as np
import pytest
import torch

from spalstf.config import Config
from spalstf.diffusion import GaussianDiffusion
from spalstf.prior import fit_prior
from spalstf.prior.masked import MaskedModel, MaskedOptions, fit_masked
from spalstf.prior.masked.network import ConditionalGaussian, MaskedDenoiser, masked_neighbours
from spalstf.prior.masked.train import hide_known

N_KNOWN, N_TARGET = 8, 4
TINY = Config(d_model=16, depth=1, n_heads=2, lstm_hidden=16, n_neighbors=4, max_steps=8,
              batch_size=32, n_samples=2, n_steps=3, max_tokens=8)


def _data(seed=0, n_ref=120, n_st=60):
    rng = np.random.default_rng(seed)
    load = rng.normal(size=(3, N_KNOWN + N_TARGET))
    ref = rng.normal(size=(n_ref, 3)) @ load + 0.5 * rng.normal(size=(n_ref, N_KNOWN + N_TARGET))
    st = (rng.normal(size=(n_st, 3)) @ load)[:, :N_KNOWN] + 0.3 + 0.5 * rng.normal(
        size=(n_st, N_KNOWN))
    return (ref[:, :N_KNOWN].astype(np.float32), ref[:, N_KNOWN:].astype(np.float32),
            st.astype(np.float32))


@pytest.fixture(scope="module")
def data():
    return _data()


@pytest.fixture(scope="module")
def model(data):
    return fit_masked(*data, config=TINY, seed=0)


def cells(n, prefix="c"):
    return [f"{prefix}{i}" for i in range(n)]


GIVEN = np.arange(6)
PREDICT = np.array([6, 7, 8, 11])  # two hidden known genes and two targets


def test_a_predicted_gene_never_reaches_the_output(model, data):
    st = data[2]
    base, base_std = model.predict(st, GIVEN, PREDICT, cells(len(st)), seed=3)
    moved = st.copy()
    moved[:, 6:8] += 100.0  # the hidden known genes' true values
    out, out_std = model.predict(moved, GIVEN, PREDICT, cells(len(st)), seed=3)
    np.testing.assert_array_equal(out, base)
    np.testing.assert_array_equal(out_std, base_std)
    # Given genes are read: moving one changes the prediction.
    moved = st.copy()
    moved[:, 0] += 3.0
    assert not np.allclose(model.predict(moved, GIVEN, PREDICT, cells(len(st)), seed=3)[0], base)


def test_hidden_genes_never_choose_the_neighbours_in_training():
    rng = np.random.default_rng(1)
    atlas = torch.as_tensor(rng.normal(size=(50, 6)), dtype=torch.float32)
    query = torch.as_tensor(rng.normal(size=(10, 6)), dtype=torch.float32)
    given = torch.ones(10, 6)
    given[:, 4:] = 0
    idx, dist = masked_neighbours(query, given, atlas, 5)
    moved = query.clone()
    moved[:, 4:] += 50.0
    idx2, dist2 = masked_neighbours(moved, given, atlas, 5)
    assert torch.equal(idx, idx2) and torch.allclose(dist, dist2)
    # Cosine on the given genes: the nearest is the atlas cell with the largest cosine.
    q = query[:, :4] / query[:, :4].norm(dim=1, keepdim=True)
    a = atlas[:, :4] / atlas[:, :4].norm(dim=1, keepdim=True)
    assert torch.equal(idx[:, 0], (q @ a.T).argmax(dim=1))
    # A cell in the atlas is never its own neighbour.
    own = torch.arange(10)
    idx3, _ = masked_neighbours(atlas[:10], torch.ones(10, 6), atlas, 3, own)
    assert not (idx3 == own[:, None]).any()


def test_a_cell_does_not_depend_on_its_chunk(model, data):
    st = data[2]
    names = cells(len(st))
    base, base_std = model.predict(st, GIVEN, PREDICT, names, seed=5, batch_size=64)
    order = np.random.default_rng(0).permutation(len(st))
    out, out_std = model.predict(st[order], GIVEN, PREDICT, [names[i] for i in order], seed=5,
                                 batch_size=7)
    np.testing.assert_allclose(out, base[order], atol=1e-5)
    np.testing.assert_allclose(out_std, base_std[order], atol=1e-5)
    alone, _ = model.predict(st[3:4], GIVEN, PREDICT, names[3:4], seed=5)
    np.testing.assert_allclose(alone[0], base[3], atol=1e-5)
    # The draws are keyed by the seed and the cell's name.
    other, _ = model.predict(st, GIVEN, PREDICT, names, seed=6)
    assert not np.allclose(other, base)


def test_the_same_seed_gives_the_same_weights(data):
    first = fit_masked(*data, config=TINY, seed=4).state()
    again = fit_masked(*data, config=TINY, seed=4).state()
    other = fit_masked(*data, config=TINY, seed=5).state()
    for key, value in first.items():
        np.testing.assert_array_equal(value, again[key], err_msg=key)
    assert any(not np.array_equal(v, other[k]) for k, v in first.items()
               if k.startswith("network."))


def test_the_st_rows_enter_training(data):
    ref_known, ref_target, st = data
    with_st = fit_masked(ref_known, ref_target, st, config=TINY, seed=0)
    without = fit_masked(ref_known, ref_target, st, config=TINY, seed=0,
                         options=MaskedOptions(use_st=False))
    other_st = fit_masked(ref_known, ref_target, st + 1.0, config=TINY, seed=0)
    assert with_st.info["st_rows"] == len(st) and without.info["st_rows"] == 0
    assert with_st.info["rows_per_batch"]["st"] == TINY.batch_size // 2

    def weights(m):
        return torch.cat([p.detach().flatten() for p in m.network.parameters()])

    assert not torch.allclose(weights(with_st), weights(without))
    assert not torch.allclose(weights(with_st), weights(other_st))
    # No ST given: the reference alone, as use_st=False.
    none = fit_masked(ref_known, ref_target, None, config=TINY, seed=0)
    assert torch.equal(weights(none), weights(without))


def test_inputs_are_not_modified(data):
    copies = [a.copy() for a in data]
    m = fit_masked(*data, config=TINY, seed=0)
    m.predict(data[2], GIVEN, PREDICT, cells(len(data[2])))
    for a, b in zip(data, copies, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bad_masks_are_clear_errors(model, data):
    st = data[2]
    names = cells(len(st))
    with pytest.raises(ValueError, match="`given` must hold at least one"):
        model.predict(st, np.array([], dtype=int), PREDICT, names)
    with pytest.raises(ValueError, match="`predict` must hold at least one"):
        model.predict(st, GIVEN, np.array([], dtype=int), names)
    with pytest.raises(ValueError, match="both given and predicted.*\\[5\\]"):
        model.predict(st, GIVEN, np.array([5, 9]), names)
    with pytest.raises(ValueError, match=r"`given` indices must lie in \[0, 8\)"):
        model.predict(st, np.array([0, 8]), PREDICT, names)
    with pytest.raises(ValueError, match=r"`predict` indices must lie in \[0, 12\)"):
        model.predict(st, GIVEN, np.array([12]), names)
    with pytest.raises(ValueError, match="`known` must be a \\(cells, 8\\)"):
        model.predict(st[:, :5], GIVEN[:3], PREDICT, names)
    with pytest.raises(ValueError, match="`cells` must name each of the 60"):
        model.predict(st, GIVEN, PREDICT, names[:10])
    with pytest.raises(ValueError, match="`st_known_z` must be a 2-D \\(cells, 8 genes\\)"):
        fit_masked(data[0], data[1], st[:, :5], config=TINY)
    with pytest.raises(ValueError, match="`st_share` must be in"):
        fit_masked(*data, config=TINY, options=MaskedOptions(st_share=1.0))


def test_state_is_numpy_and_round_trips(model, data, tmp_path):
    state = model.state()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    path = tmp_path / "w.pt"
    torch.save({k: torch.as_tensor(v) for k, v in state.items()}, path)
    loaded = torch.load(path, weights_only=True)
    again = MaskedModel.from_state({k: v.numpy() for k, v in loaded.items()}, TINY)
    st = data[2]
    np.testing.assert_array_equal(again.predict(st, GIVEN, PREDICT, cells(len(st)))[0],
                                  model.predict(st, GIVEN, PREDICT, cells(len(st)))[0])
    with pytest.raises(ValueError, match="not a complete masked-model state"):
        MaskedModel.from_state({k: v for k, v in state.items() if k != "atlas"}, TINY)


def test_the_gaussian_prior_is_the_ridge_of_the_split():
    rng = np.random.default_rng(2)
    rows = rng.normal(size=(300, 7)) @ rng.normal(size=(7, 7)) + rng.normal(size=7)
    gauss = ConditionalGaussian.fit(torch.as_tensor(rows), 5, penalty=0.7)
    given = np.array([0, 2, 3])
    mask = torch.zeros(1, 5)
    mask[0, given] = 1
    out = gauss.predict(torch.as_tensor(rows[:, :5], dtype=torch.float32) * mask,
                        gauss.weights(mask)).numpy()
    w, b, _ = fit_prior(rows[:, given], rows[:, [1, 4, 5, 6]], np.arange(300), 0.7 * 300)
    np.testing.assert_allclose(out[:, [1, 4, 5, 6]], rows[:, given] @ w + b, atol=1e-3)
    # Training's path (a solve per mask, many masks in a batch) gives the same means, and a
    # hidden gene's value does not enter them.
    masks = torch.tensor([[1, 0, 1, 1, 0], [1, 1, 1, 1, 0]], dtype=torch.float32)
    groups = torch.as_tensor(np.arange(300) % 2)
    known = torch.as_tensor(rows[:, :5], dtype=torch.float32)
    both = gauss.predict_masked(known, masks, groups).numpy()
    np.testing.assert_allclose(both[::2], out[::2], atol=1e-4)
    second = gauss.predict(known * masks[1], gauss.weights(masks[1:])).numpy()
    np.testing.assert_allclose(both[1::2], second[1::2], atol=1e-4)
    moved = known.clone()
    moved[:, 4] += 100.0
    np.testing.assert_array_equal(gauss.predict_masked(moved, masks, groups).numpy(), both)


def test_each_rows_hidden_genes_follow_the_rules():
    rng = np.random.default_rng(0)
    hidden, groups = hide_known(rng, 50, 6, (0.0, 0.99), True, group=4)
    assert hidden.shape == (13, 6) and np.array_equal(groups, np.arange(50) // 4)
    assert hidden.any(axis=1).all() and (~hidden).any(axis=1).all()


def test_the_masked_loss_reads_only_the_masked_genes():
    d = GaussianDiffusion(100)
    gen = torch.Generator().manual_seed(0)
    x0, noise, eps = (torch.randn(16, 6, generator=gen) for _ in range(3))
    t = torch.randint(0, 100, (16,), generator=gen)
    xt = d.add_noise(x0, noise, t)
    v = torch.zeros(16, 6)
    mask = torch.zeros(16, 6)
    mask[:, :3] = 1
    masked = d.training_losses(eps, v, x0, xt, noise, t, vlb_weight=0.01, kl_weight=0.1,
                               mask=mask)
    sub = d.training_losses(eps[:, :3], v[:, :3], x0[:, :3], xt[:, :3], noise[:, :3], t,
                            vlb_weight=0.01, kl_weight=0.1)
    for name in ("mse", "vlb", "kl", "total"):
        assert float(getattr(masked, name)) == pytest.approx(float(getattr(sub, name)),
                                                             rel=1e-5)
    eps2 = eps.clone()
    eps2[:, 3:] += 10.0
    moved = d.training_losses(eps2, v, x0, xt, noise, t, vlb_weight=0.01, kl_weight=0.1,
                              mask=mask)
    assert float(moved.total) == pytest.approx(float(masked.total), rel=1e-6)
    with pytest.raises(ValueError, match="`mask` marks no gene"):
        d.training_losses(eps, v, x0, xt, noise, t, mask=torch.zeros(16, 6))


@pytest.mark.parametrize("switch", ["diffusion", "use_xca", "use_context", "vlb", "kl"])
def test_each_switch_changes_what_it_should(data, switch):
    changes = {"diffusion": {"diffusion": False}, "use_xca": {"use_xca": False},
               "use_context": {"use_context": False}, "vlb": {"vlb_weight": 0.0},
               "kl": {"kl_weight": 0.0}}[switch]
    m = fit_masked(*data, config=TINY.replace(**changes), seed=0)
    st = data[2]
    mean, std = m.predict(st, GIVEN, PREDICT, cells(len(st)), seed=1)
    last = m.info["history"][-1]
    if switch == "diffusion":  # one deterministic pass: no spread, no seed
        assert std is None
        np.testing.assert_array_equal(
            m.predict(st, GIVEN, PREDICT, cells(len(st)), seed=2)[0], mean)
        assert last["vlb"] == 0 and last["kl"] == 0
    elif switch == "use_xca":
        assert all(block.attn is None for block in m.network.blocks)
    elif switch == "use_context":
        assert m.network.context is None
    elif switch == "vlb":
        assert last["vlb"] == 0 and last["kl"] > 0
        assert not m.diffusion().learn_sigma
    else:
        assert last["kl"] == 0 and last["vlb"] > 0
    assert std is None or std.shape == mean.shape


def test_the_context_reads_the_cell_and_its_neighbours_in_both_directions():
    net = MaskedDenoiser(4, 2, d_model=8, depth=1, n_heads=2, lstm_hidden=8)
    seq = torch.randn(3, 5, 14)
    base = net.encode_context(seq)
    for position in (0, 4):  # the first element (the cell) and the last neighbour both count
        moved = seq.clone()
        moved[:, position] += 1.0
        assert not torch.allclose(net.encode_context(moved), base)


def test_ddpm_is_an_option_and_a_model_of_known_genes_alone_works(data):
    ref_known, _, st = data
    m = fit_masked(ref_known, np.zeros((len(ref_known), 0), np.float32), st, config=TINY)
    assert m.n_target == 0
    mean, std = m.predict(st, GIVEN, np.array([6, 7]), cells(len(st)), sampler="ddpm",
                          n_steps=4)
    ddim, _ = m.predict(st, GIVEN, np.array([6, 7]), cells(len(st)))
    assert mean.shape == (len(st), 2) and not np.allclose(mean, ddim)


@pytest.mark.parametrize("option", [{"prior": "neighbours"}, {"use_source": True},
                                    {"align_st": True}])
def test_each_option_is_kept_by_the_state(data, option):
    m = fit_masked(*data, config=TINY, seed=0, options=MaskedOptions(**option))
    base = fit_masked(*data, config=TINY, seed=0)
    st = data[2]
    out = m.predict(st, GIVEN, PREDICT, cells(len(st)))[0]
    assert not np.allclose(out, base.predict(st, GIVEN, PREDICT, cells(len(st)))[0])
    again = MaskedModel.from_state(m.state(), TINY)
    np.testing.assert_array_equal(again.predict(st, GIVEN, PREDICT, cells(len(st)))[0], out)
    if "use_source" in option:
        assert m.network.source_embed is not None
    if "align_st" in option:  # the ST read on its own scale, known genes mapped back
        assert m.align_st and again.align_st
        shifted = fit_masked(data[0], data[1], st + 5.0, config=TINY, seed=0,
                             options=MaskedOptions(**option))
        known_out = shifted.predict(st + 5.0, GIVEN, PREDICT, cells(len(st)))[0][:, :2]
        np.testing.assert_allclose(known_out.mean(axis=0), st[:, 6:8].mean(axis=0) + 5.0,
                                   atol=1.0)


def test_withheld_genes_of_the_st_never_enter_training(data):
    ref_known, ref_target, st = data
    options = MaskedOptions(st_withheld=(6, 7))
    base = fit_masked(ref_known, ref_target, st, config=TINY, seed=0, options=options)
    moved = st.copy()
    moved[:, 6:8] += 7.0
    same = fit_masked(ref_known, ref_target, moved, config=TINY, seed=0, options=options)
    for key, value in base.state().items():
        if key not in ("st_mean", "st_sd"):  # statistics, read only where a gene is given
            np.testing.assert_array_equal(value, same.state()[key], err_msg=key)
    moved[:, 5] += 7.0  # a gene the ST rows do teach
    other = fit_masked(ref_known, ref_target, moved, config=TINY, seed=0, options=options)
    assert not np.array_equal(base.state()["network.known_embed.weight"],
                              other.state()["network.known_embed.weight"])
    with pytest.raises(ValueError, match="`st_withheld` must hold distinct known-gene"):
        fit_masked(*data, config=TINY, options=MaskedOptions(st_withheld=(8,)))
    with pytest.raises(ValueError, match="leaves 1 of 8"):
        fit_masked(*data, config=TINY, options=MaskedOptions(st_withheld=tuple(range(7))))


# --- the masked network as a base predictor of the product (spalstf.prior.masked.predictor) -------

def _masked_predictor(data, seed=0):
    from spalstf.prior import MaskedNetwork, Reference

    ref_known, ref_target, _ = data
    atlas = np.concatenate([ref_known, ref_target], axis=1)
    predictor = MaskedNetwork(TINY)
    predictor.fit(Reference(ref_known, ref_target, atlas=atlas), seed=seed)
    return predictor


def test_the_masked_predictor_learns_from_the_st_it_is_prepared_on(data):
    """It trains in `prepare` on the ST's known genes: a cell's prediction does not depend on
    its chunk, the saved state trains the same network again, and another ST (the same cells
    shifted) gives another network."""
    from spalstf.prior import MaskedNetwork

    st = data[2]
    predictor = _masked_predictor(data)
    with pytest.raises(RuntimeError, match="prepare must run before predict"):
        predictor.predict(st)
    predictor.prepare(lambda: iter([st[:25], st[25:]]))
    whole = predictor.predict(st)
    assert whole.shape == (len(st), N_TARGET) and np.isfinite(whole).all()
    order = np.random.default_rng(1).permutation(len(st))
    parts = np.concatenate([predictor.predict(st[order[s:s + 7]])
                            for s in range(0, len(st), 7)])
    np.testing.assert_allclose(parts, whole[order], rtol=1e-5, atol=1e-5)
    copy = MaskedNetwork.from_state(predictor.state(), TINY)
    copy.prepare(lambda: iter([st]))
    np.testing.assert_allclose(copy.predict(st), whole, rtol=1e-5, atol=1e-5)
    other = MaskedNetwork.from_state(predictor.state(), TINY)
    other.prepare(lambda: iter([st + 1.5]))
    assert not np.allclose(other.predict(st), whole, atol=1e-3)


def test_impute_with_the_masked_predictor_never_trains_on_the_genes_it_is_scored_on(
        tiny_pair, monkeypatch):
    """Through `spalstf.impute`: each inner fold of the self-check trains the masked network on
    that fold's known genes only (the hidden ones never enter as ST rows), and its columns are
    candidates of the combination; the imputation trains it on every known gene when they
    earn a weight."""
    import spalstf
    import spalstf.prior.masked.predictor as predictor

    st, sc = tiny_pair
    targets = list(st.obsm["truth"].columns)[:3]
    real_fit, trained_on = predictor.fit_masked, []

    def recording_fit(reference_known_z, reference_target_z, st_known_z, **kwargs):
        trained_on.append((np.shape(reference_known_z)[1], np.shape(st_known_z)))
        return real_fit(reference_known_z, reference_target_z, st_known_z, **kwargs)

    monkeypatch.setattr(predictor, "fit_masked", recording_fit)
    out = spalstf.impute(st, sc, targets, seed=0, progress=False, config={
        "predictors": ("ridge", "masked"), "max_steps": 10, "d_model": 16, "depth": 1,
        "n_heads": 2, "lstm_hidden": 16, "n_neighbors": 4, "n_samples": 2, "n_steps": 3})
    n_known = st.n_vars
    inner, final = trained_on[:2], trained_on[2:]
    assert sorted(k for k, _ in inner) == sorted([n_known // 2, n_known - n_known // 2])
    assert all(shape == (st.n_obs, k) for k, shape in inner)
    info = out.uns["spalstf"]["self_check"]
    assert {"masked|raw|expression", "masked|raw|at_depth"} <= set(info["candidates"]["column"])
    weighted = any(c.startswith("masked|") and w > 0 for c, w in info["weights"].items())
    assert final == ([(n_known, (st.n_obs, n_known))] if weighted else [])
    assert np.isfinite(out.X).all()
