"""Shared fixtures: a tiny simulated pair and fast settings, so the suite stays quick."""

import numpy as np
import pytest

import spalstf
from spalstf.config import PREDICTOR_NAMES

#: Training and sampling settings that make a fit take a second or two. Every base predictor,
#: the network too (not a default one: `spalstf.config.DEFAULT_PREDICTORS`), so that the suite
#: exercises the diffusion wherever it uses these settings; the masked-gene network, which
#: trains at every imputation, only where a test names it (tests/test_masked.py). No
#: `max_time`: a budget of seconds stops a fit wherever the machine's load has got it to, so
#: two fits that must agree (a resumed one and a whole one, say) would agree only on a quiet
#: machine; `epochs` bounds every fit here.
FAST = dict(epochs=2, n_steps=3, n_samples=2, progress=False, d_model=16,
            depth=1, n_heads=2, lstm_hidden=16, n_neighbors=4,
            predictors=tuple(p for p in PREDICTOR_NAMES if p != "masked"))


@pytest.fixture(scope="session")
def tiny_pair():
    st, sc = spalstf.datasets.simulate(n_st=60, n_sc=150, n_genes=30, n_measured=22, seed=3)
    return st, sc


@pytest.fixture(scope="session")
def tiny_model(tiny_pair):
    st, sc = tiny_pair
    targets = list(st.obsm["truth"].columns)
    return spalstf.fit(sc, list(st.var_names), targets, seed=0, **FAST)


def as_counts(a):
    return np.asarray(a.toarray() if hasattr(a, "toarray") else a)
