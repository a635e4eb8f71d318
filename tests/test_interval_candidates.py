"""benchmarks/intervals.py, the side-by-side measure of interval candidates: its conformalised
quantile regression covers new genes at the nominal level where the truth's distribution is
known, and its choice by leaving data sets out reads only the other sets."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("interval_candidates",
                                                  REPO / "benchmarks" / "intervals.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic(rng, n_cells, n_genes):
    """y = m + noise whose scale grows with a known feature s (the truth's 5-95% range is
    m +- 1.645 s): a calibrated interval must follow s."""
    m = rng.uniform(0, 3, (n_cells, n_genes))
    s = rng.uniform(0.1, 1.0, (n_cells, n_genes))
    return {"m": m, "s": s}, m + s * rng.standard_normal((n_cells, n_genes))


def test_cqr_covers_new_genes_at_the_nominal_level_and_follows_the_scale():
    bench = load_benchmark()
    rng = np.random.default_rng(0)
    f_in, y_in = synthetic(rng, 150, 20)
    f_out, y_out = synthetic(rng, 2000, 10)
    y_in, y_out = np.clip(y_in, 0, None), np.clip(y_out, 0, None)
    fold_of = np.repeat([0, 1], 10)
    low, high = bench.cqr("linear", f_in, y_in, fold_of, f_out)
    inside = (y_out >= low) & (y_out <= high)
    assert 0.87 <= inside.mean() <= 0.94
    width = high - low
    wide = f_out["s"] > 0.8
    narrow = (f_out["s"] < 0.3) & (f_out["m"] > 1.5)  # away from the floor at 0
    assert np.median(width[wide]) > 2 * np.median(width[narrow])


def test_leave_sets_out_chooses_on_the_other_sets_within_the_coverage_window():
    bench = load_benchmark()
    rows = []
    for i, ds in enumerate(["a", "b", "c"]):
        rows += [{"dataset": ds, "method": "nb", "ratio_range": 1.05, "coverage": 0.90},
                 # best on every set but over-covers on "c": not chosen where "c" is among
                 # the others
                 {"dataset": ds, "method": "cqr_linear", "ratio_range": 0.8,
                  "coverage": 0.97 if ds == "c" else 0.9},
                 {"dataset": ds, "method": "nb_by_rank", "ratio_range": 0.9 + 0.2 * (i == 0),
                  "coverage": 0.9}]
    chosen = bench.leave_sets_out(pd.DataFrame(rows)).set_index("left_out")["chosen"]
    assert chosen.to_dict() == {"a": "nb_by_rank", "b": "nb_by_rank", "c": "cqr_linear"}


def brute_quantile(w, mu, p, size):
    """The smallest count whose mixture CDF reaches p, by scipy over every count."""
    from scipy import stats

    counts = np.arange(0, 2000)[:, None]
    if np.isinf(size):
        cdf = stats.poisson.cdf(counts, mu[None])
    else:
        cdf = stats.nbinom.cdf(counts, size, size / (size + mu[None]))
    return int(np.argmax((cdf * w[None]).sum(1) >= p - 1e-12))


def test_mixture_quantiles_are_those_of_the_mixture_poisson_and_nb():
    bench = load_benchmark()
    rng = np.random.default_rng(1)
    w = rng.dirichlet(np.ones(3), 40)
    mu = rng.gamma(1.0, 10.0, (40, 3))
    mu[0] = 0.0  # a component (here all) surely 0
    mu[1, 0] = 400.0  # a deep cell: large counts, no underflow
    for size in (np.inf, 2.0):
        mixture = bench.Mixture(w, mu, np.full(40, 500.0), size)
        got = mixture.quantiles((0.05, 0.95))
        for i in range(40):
            assert got[0, i] == brute_quantile(w[i], mu[i], 0.05, size)
            assert got[1, i] == brute_quantile(w[i], mu[i], 0.95, size)
    # on the truth's scale: log1p(count / depth x 1e4); a depth of 0 gives 0
    mixture = bench.Mixture(w[:2], mu[:2], np.array([500.0, 0.0]))
    low, high = mixture.interval((0.05, 0.05))
    assert low[1] == high[1] == 0.0
    assert high[0] == 0.0  # all components at 0


def test_mixture_tails_calibrated_on_hidden_counts_cover_new_counts():
    """Counts drawn from a wider distribution than the mixture says: the tails learnt on one
    draw cover 90% of another, where the uncalibrated 5-95% covers less."""
    bench = load_benchmark()
    rng = np.random.default_rng(2)

    def draw(n):
        w = rng.dirichlet(np.ones(4), n)
        mu = rng.gamma(2.0, 5.0, (n, 4))
        k = np.array([rng.choice(4, p=row) for row in w])
        true_mu = mu[np.arange(n), k] * rng.gamma(2.0, 0.5, n)  # extra spread
        return bench.Mixture(w, mu, np.full(n, 100.0)), rng.poisson(true_mu)

    hidden, x_hidden = draw(3000)
    new, x_new = draw(3000)
    levels = hidden.tail_levels(x_hidden)
    low, high = new.quantiles((levels[0], 1 - levels[1]))
    assert 0.87 <= ((x_new >= low) & (x_new <= high)).mean() <= 0.93
    low, high = new.quantiles((0.05, 0.95))
    assert ((x_new >= low) & (x_new <= high)).mean() < 0.87


def test_posterior_mixture_moved_to_the_combined_level():
    bench = load_benchmark()
    rng = np.random.default_rng(3)
    weights = rng.dirichlet(np.ones(5), 6)
    targets = rng.uniform(0, 2, (5, 3))
    depth = np.full(6 * 3, 1e4)
    cells, genes = bench.everywhere((6, 3))
    m = np.full(len(cells), np.log1p(3.0))
    mixture = bench.posterior_mixture(weights, targets, depth, cells, genes, m=m)
    mean = (mixture.w.numpy() * mixture.mu.numpy()).sum(1)
    np.testing.assert_allclose(mean, 3.0)  # expm1(m) x depth / 1e4
    plain = bench.posterior_mixture(weights, targets, depth, cells, genes)
    np.testing.assert_allclose((plain.w.numpy() * plain.mu.numpy()).sum(1),
                               (weights @ np.expm1(targets))[cells, genes])


def test_mixture_quantiles_beyond_the_walk_by_bisection():
    bench = load_benchmark()
    w = np.array([[1.0], [1.0]])
    mu = np.array([[5.0], [1500.0]])
    for size in (np.inf, 0.5):
        mixture = bench.Mixture(w, mu, np.full(2, 1e4), size)
        got = mixture.quantiles((0.05, 0.999))
        for i in range(2):
            for j, p in enumerate((0.05, 0.999)):
                q = got[j, i]
                below = bench.Mixture(w[i:i + 1], mu[i:i + 1], np.ones(1), size)
                assert below.cdf(np.array([q]))[0] >= p - 1e-12
                assert below.cdf(np.array([q - 1]))[0] < p


def test_network_only_run_writes_one_section_with_every_set_and_the_command(tmp_path,
                                                                              monkeypatch):
    bench = load_benchmark()
    record, without_samples = tmp_path / "record.npz", tmp_path / "without_samples.npz"
    np.savez(record, o_lik_w=np.zeros(1), o_net=np.zeros(1))
    np.savez(without_samples, o_lik_w=np.zeros(1))

    def table(name, paths, tag, *, reuse):
        assert paths == [record]  # the network's candidates scored on every fold scored
        return pd.DataFrame([{"dataset": name, "method": m, "coverage": c, "score": 1.0,
                              "ratio_range": r, "cost": 0.0}
                             for m, r, c in (("nb", 1.2, 0.9), ("network_raw", 1.7, 0.8),
                                             ("range", 1.0, np.nan))])

    monkeypatch.setattr(bench, "cache_paths",
                        lambda name, network=None: [record, without_samples])
    monkeypatch.setattr(bench, "scored", table)
    old = tmp_path / "net.md"
    old.write_text("an earlier run's file\n")
    bench.main(["--datasets", "", "--network", "set_a,set_b", "--score-only", "--out",
                str(tmp_path), "--name", "net"])
    text = old.read_text()
    assert "an earlier run's file" not in text
    assert text.count("## The SpaLSTF network's samples") == 1
    assert "Command: `python benchmarks/intervals.py --datasets  --network set_a,set_b" in text
    assert "| method | set_a | set_b |" in text


def test_network_records_without_the_held_out_genes_samples_are_made_again(tmp_path):
    bench = load_benchmark()
    path = tmp_path / "record.npz"
    assert not bench.recorded(path)
    np.savez(path, o_lik_w=np.zeros(1))
    assert bench.recorded(path)  # the default run's record
    assert not bench.recorded(path, network=300)  # the network dropped by the stack
    np.savez(path, o_lik_w=np.zeros(1), o_net=np.zeros(1))
    assert bench.recorded(path, network=300)
