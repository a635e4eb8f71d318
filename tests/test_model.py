"""The four parts of the method, each present, switchable, and behaving as specified."""

import numpy as np
import pytest
import torch
from conftest import FAST

import spalstf
from spalstf.network import ContextEncoder, Denoiser, NeighbourIndex, XCABlock, XCAttention


def test_xca_attends_between_channels_of_one_cell():
    torch.manual_seed(0)
    attn = XCAttention(dim=16, n_heads=4)
    x = torch.randn(3, 10, 16)  # 3 cells, 10 gene tokens, 16 channels
    amap = attn.attention_map(x)
    assert amap.shape == (3, 4, 4, 4)  # channels x channels per head, per cell
    torch.testing.assert_close(amap.sum(-1), torch.ones(3, 4, 4))
    # Batch-free: a cell's output is the same alone and among others.
    torch.testing.assert_close(attn(x)[1:2], attn(x[1:2]), atol=1e-6, rtol=1e-5)
    assert attn.temperature.requires_grad


def test_adaln_zero_blocks_start_as_the_identity():
    block = XCABlock(dim=16, n_tokens=5, n_heads=2)
    x = torch.randn(4, 5, 16)
    torch.testing.assert_close(block(x, torch.randn(4, 16)), x)


def test_context_lstm_is_truly_bidirectional():
    torch.manual_seed(0)
    enc = ContextEncoder(n_features=6, hidden=8, out_dim=4)
    seq = torch.randn(2, 5, 6)
    later = seq.clone()
    later[:, -1] += 1.0  # change only the last element of the sequence
    states = enc.lstm(enc.input(seq))[0]
    states_later = enc.lstm(enc.input(later))[0]
    # The first position's backward half has read the last element; the forward half has not.
    assert not torch.allclose(states[:, 0, 8:], states_later[:, 0, 8:])
    torch.testing.assert_close(states[:, 0, :8], states_later[:, 0, :8])
    assert enc(seq).shape == (2, 4)


def test_neighbours_are_exact_sorted_and_skip_the_cell_itself():
    rng = np.random.default_rng(0)
    atlas = rng.normal(size=(50, 3)).astype(np.float32)
    index = NeighbourIndex(atlas)
    idx, dist = index.query(atlas[:5], k=4, self_index=np.arange(5))
    assert not np.any(idx == np.arange(5)[:, None])
    assert np.all(np.diff(dist, axis=1) >= 0)
    brute = np.linalg.norm(atlas[:5, None] - atlas[None], axis=-1)
    brute[np.arange(5), np.arange(5)] = np.inf
    np.testing.assert_array_equal(idx, np.argsort(brute, axis=1, kind="stable")[:, :4])
    # The same query alone or in a batch gives the same neighbours.
    one, _ = index.query(atlas[3:4], k=4, self_index=np.array([3]))
    np.testing.assert_array_equal(one[0], idx[3])


def test_neighbour_search_is_exact_where_the_matrix_product_cannot_tell():
    """Near-ties at the border of the candidate pool (here: 60 identical atlas cells) make the
    fast stage's certificate fail; the search widens and still returns the exact answer."""
    rng = np.random.default_rng(1)
    atlas = rng.normal(size=(300, 20)).astype(np.float32)
    atlas[100:160] = atlas[100]  # 60 duplicates: ties broken by atlas row
    queries = np.concatenate([atlas[100:103] + 1e-3, rng.normal(size=(20, 20))]).astype(np.float32)
    index = NeighbourIndex(atlas)
    index.margin = 2
    idx, dist = index.query(queries, k=8, self_index=np.r_[101, -1, 102, -np.ones(20, int)])
    assert index.widened > 0
    brute = np.sqrt(((queries[:, None].astype(np.float64) - atlas[None]) ** 2).sum(-1))
    brute[0, 101] = brute[2, 102] = np.inf
    expected = np.argsort(brute.round(5), axis=1, kind="stable")[:, :8]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(dist * index.distance_scale,
                               np.take_along_axis(brute, expected, 1), rtol=1e-5)
    for i in (0, 5, 22):  # any query alone gives what it got in the batch
        alone, _ = index.query(queries[i:i + 1], k=8,
                               self_index=None if i else np.array([101]))
        np.testing.assert_array_equal(alone[0], idx[i])


def test_denoiser_groups_many_genes_into_bounded_tokens():
    net = Denoiser(300, 100, d_model=16, depth=1, n_heads=2, max_tokens=32, lstm_hidden=8)
    assert net.known_tokens + net.target_tokens <= 32
    eps, v = net(torch.randn(2, 300), torch.randn(2, 100), torch.tensor([5, 900]))
    assert eps.shape == v.shape == (2, 100)


@pytest.mark.parametrize("switch", [
    {"use_xca": False}, {"use_context": False}, {"diffusion": False}, {"vlb_weight": 0.0},
    {"kl_weight": 0.0}, {"prior": "none"}, {"prior": "neighbours"}, {"sampler": "ddpm"},
])
def test_each_part_can_be_switched_off(tiny_pair, switch):
    st, sc = tiny_pair
    out = spalstf.impute(st, sc, **{**FAST, **switch})
    assert np.all(np.isfinite(out.X)) and np.all(out.X >= 0)
    params = out.uns["spalstf"]["params"]
    for key, value in switch.items():
        assert params[key] == value


def test_switches_remove_the_parts_from_the_network(tiny_pair):
    st, sc = tiny_pair
    genes = list(st.obsm["truth"].columns)
    bare = spalstf.fit(sc, list(st.var_names), genes, use_xca=False, use_context=False, **FAST)
    assert bare.network.context is None
    assert all(block.attn is None for block in bare.network.blocks)
    full = spalstf.fit(sc, list(st.var_names), genes, **FAST)
    assert isinstance(full.network.context.lstm, torch.nn.LSTM)
    assert full.network.context.lstm.bidirectional
    assert all(isinstance(block.attn, XCAttention) for block in full.network.blocks)


def test_training_records_every_loss_component(tiny_model):
    record = tiny_model.history[-1]
    for key in ("train_total", "train_mse", "train_vlb", "train_kl", "val_mse"):
        assert np.isfinite(record[key])
    assert record["train_vlb"] > 0 and record["train_kl"] > 0


def test_neighbour_queries_keep_only_k_columns_in_memory():
    """A regression test: the kept neighbours must not hold the whole sorted distance block
    (memory grew with the number of queried cells: 18 GB for 10^5 cells x a 20000-cell atlas)."""
    rng = np.random.default_rng(0)
    index = NeighbourIndex(rng.normal(size=(500, 4)).astype(np.float32))
    index.max_elements = 4 * 500 * 3  # three query rows per block
    captured = []
    real_cat = torch.cat

    def spy(tensors, *args, **kwargs):
        captured.extend(tensors)
        return real_cat(tensors, *args, **kwargs)

    torch.cat = spy
    try:
        idx, dist = index.query(rng.normal(size=(10, 4)).astype(np.float32), 5)
    finally:
        torch.cat = real_cat
    assert idx.shape == (10, 5) and dist.shape == (10, 5)
    for t in captured:  # each kept block owns just its k columns
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()


def test_ridge_penalty_is_chosen_by_exact_gcv_and_floored_at_the_cell_count():
    from spalstf.prior import ALPHA_GRID, choose_alpha, fit_ridge

    rng = np.random.default_rng(0)
    n, p, t = 60, 12, 3
    x = rng.normal(size=(n, p))
    y = x[:, :2] @ rng.normal(size=(2, t)) + rng.normal(size=(n, t)) * 3.0

    def explicit_gcv(alpha):  # the textbook formula, with the hat matrix itself
        hat = x @ np.linalg.solve(x.T @ x + alpha * np.eye(p), x.T)
        rss = ((y - hat @ y) ** 2).sum()
        return n * rss / (n - np.trace(hat)) ** 2

    grid = [u * n for u in ALPHA_GRID]
    expected = grid[int(np.argmin([explicit_gcv(a) for a in grid]))]
    chosen = choose_alpha(x.T @ x, x.T @ y, float((y ** 2).sum()), n)
    assert chosen == pytest.approx(expected)
    assert chosen >= n
    # strong signal, little noise: GCV wants less shrinkage, and the floor holds at n
    y_clean = x @ rng.normal(size=(p, t))
    assert choose_alpha(x.T @ x, x.T @ y_clean, float((y_clean ** 2).sum()), n) == n
    # fit_ridge(alpha=None) uses it
    w, used = fit_ridge(x.astype(np.float32), y.astype(np.float32), None, return_alpha=True)
    assert used == pytest.approx(chosen)
    np.testing.assert_allclose(w, np.linalg.solve(x.T @ x + used * np.eye(p), x.T @ y),
                               rtol=1e-4, atol=1e-5)


def test_ridge_prior_has_an_intercept_and_standardises_its_own_rows():
    from spalstf.prior import fit_prior

    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 3.0, size=(400, 5))  # neither centred nor unit-scaled
    weights = rng.normal(size=(5, 2))
    y = x @ weights + np.array([5.0, -3.0])
    w, b, alpha = fit_prior(x, y, np.arange(400), 1e-6)
    np.testing.assert_allclose(w, weights, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(b, [5.0, -3.0], rtol=1e-4, atol=1e-3)
    # extra rows (pseudo-spots) count as rows of the fit, a block at a time
    more = rng.normal(-1.0, 0.5, size=(300, 5))
    w2, b2, _ = fit_prior(x, y, np.arange(200), 1e-6,
                          spots=lambda: iter([(x[200:300], y[200:300]),
                                              (more, more @ weights + [5.0, -3.0])]))
    np.testing.assert_allclose(w2, weights, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(b2, [5.0, -3.0], rtol=1e-4, atol=1e-3)
    # the penalty applies to standardised genes: rescaling a known gene leaves the fit's
    # predictions unchanged whatever the penalty
    noisy = y + rng.normal(size=y.shape) * 4.0
    scaled = x * np.array([100.0, 1, 1, 1, 1])
    p1 = x @ fit_prior(x, noisy, np.arange(400), 400.0)[0]
    p2 = scaled @ fit_prior(scaled, noisy, np.arange(400), 400.0)[0]
    np.testing.assert_allclose(p1, p2, rtol=1e-4, atol=1e-4)


def test_pseudo_spots_sum_the_counts_of_their_cells():
    from spalstf.preprocess import Standardizer, log_normalize
    from spalstf.prior import MIXTURES_PER_SIZE, Reference, pseudo_spots

    counts = np.array([[30.0, 10.0, 5.0, 0.0],    # a shallow cell: known genes 0-1, target 2-3
                       [100.0, 300.0, 0.0, 80.0]])  # a deep one
    known_log, target_log = log_normalize(counts[:, :2], counts[:, 2:])
    scalers = Standardizer.fit(known_log), Standardizer.fit(target_log)
    data = Reference(scalers[0].transform(known_log), scalers[1].transform(target_log),
                     scalers=scalers, depth=counts[:, :2].sum(1, keepdims=True))

    def expected(c):  # a spot as the ST measures one: its cells' counts summed, normalised
        total = c[:2].sum()
        return np.concatenate([scalers[0].transform(np.log1p(c[None, :2] / total * 1e4)),
                               scalers[1].transform(np.log1p(c[None, 2:] / total * 1e4))], 1)[0]

    spots = np.concatenate([np.concatenate(block, 1)
                            for block in pseudo_spots(data, np.arange(2), seed=0)])
    assert len(spots) == 4 * MIXTURES_PER_SIZE
    first = spots[:MIXTURES_PER_SIZE]  # the size-2 mixtures: aa, bb or ab in either order
    candidates = np.stack([expected(2 * counts[0]), expected(2 * counts[1]),
                           expected(counts[0] + counts[1])])
    dist = np.abs(first[:, None, :] - candidates[None]).max(-1)
    assert (dist.min(1) < 1e-4).all()
    assert (np.bincount(dist.argmin(1), minlength=3) > 0).all()
    # the same mixtures every call (seeded), others for another seed
    again = np.concatenate([np.concatenate(b, 1) for b in pseudo_spots(data, np.arange(2), seed=0)])
    np.testing.assert_array_equal(spots, again)
    other = np.concatenate([np.concatenate(b, 1) for b in pseudo_spots(data, np.arange(2), seed=1)])
    assert not np.array_equal(spots, other)


def test_pseudo_spots_make_the_prior_transfer_to_spots_that_mix_cells():
    from spalstf.datasets import simulate
    from spalstf.evaluate import metrics
    from spalstf.preprocess import Standardizer, log_normalize
    from spalstf.prior import Reference, fit_prior, pseudo_spots

    _, sc = simulate(n_st=50, n_sc=1500, n_genes=80, n_measured=40, seed=0)
    counts = np.asarray(sc.X, np.float64)
    ref, other = counts[:1000], counts[1000:]
    # spots of 10 cells the reference has not seen, as a Visium spot sums its cells' counts
    spots = other[np.random.default_rng(0).integers(0, len(other), (300, 10))].sum(1)
    known_log, target_log = log_normalize(ref[:, :40], ref[:, 40:])
    scalers = Standardizer.fit(known_log), Standardizer.fit(target_log)
    data = Reference(scalers[0].transform(known_log), scalers[1].transform(target_log),
                     scalers=scalers, depth=ref[:, :40].sum(1))
    spot_known, spot_truth = log_normalize(spots[:, :40], spots[:, 40:])
    error, pcc = {}, {}
    for name, extra in (("cells", None),
                        ("mixtures", lambda: pseudo_spots(data, np.arange(1000), seed=0))):
        weights, bias, _ = fit_prior(data.known, data.target, np.arange(1000), None, spots=extra)
        pred = (scalers[0].transform(spot_known) @ weights + bias) * scalers[1].std \
            + scalers[1].mean
        error[name] = np.mean((pred - spot_truth) ** 2)
        pcc[name] = np.nanmedian(metrics.pcc(spot_truth, pred))
    assert error["mixtures"] < 0.6 * error["cells"]  # measured: 0.096 vs 0.202
    assert pcc["mixtures"] > pcc["cells"]  # measured: 0.544 vs 0.534


def test_a_network_saved_before_the_prior_had_an_intercept_loads_with_a_zero_bias():
    from spalstf.config import Config
    from spalstf.network import build_network

    cfg = Config(d_model=16, n_heads=2, depth=1)
    saved = build_network(6, 4, cfg)
    saved.prior_weights.normal_()
    state = {k: v for k, v in saved.state_dict().items() if k != "prior_bias"}
    loaded = build_network(6, 4, cfg)
    loaded.prior_bias.fill_(3.0)
    loaded.load_state_dict(state)
    torch.testing.assert_close(loaded.prior_weights, saved.prior_weights)
    assert torch.count_nonzero(loaded.prior_bias) == 0
    with pytest.raises(RuntimeError):  # other missing parts are still errors
        loaded.load_state_dict({k: v for k, v in state.items() if k != "prior_weights"})
