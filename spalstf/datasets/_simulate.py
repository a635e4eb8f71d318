"""A simulator of paired spatial + scRNA-seq data: the embedded default data set.

Cells have a type (marker genes) and a continuous state (gene programs shared across genes, so
that measured genes carry information about unmeasured ones beyond the type). The spatial data
has domains with their own type mixtures and the platform effects seen in real pairs: a per-gene
capture bias, lower sequencing depth and extra dropout. It measures a subset of the genes; the
truth of the others is kept for scoring.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Gamma shape (negative-binomial size) of the counts of each platform: the spatial counts are
#: the more overdispersed.
SC_DISPERSION, ST_DISPERSION = 4.0, 3.0


def _counts(rng: np.random.Generator, rates: np.ndarray, depth: np.ndarray,
            dispersion: float) -> np.ndarray:
    """Negative-binomial counts (gamma-Poisson) with mean depth * rates."""
    mean = depth[:, None] * rates
    return rng.poisson(rng.gamma(dispersion, mean / dispersion)).astype(np.float32)


def _shares(base: np.ndarray, type_effect: np.ndarray, loadings: np.ndarray,
            cell_types: np.ndarray, state: np.ndarray) -> np.ndarray:
    """Expression shares (rows sum to 1) of cells of the given types and program states."""
    log_rate = base + type_effect[cell_types] + state @ loadings
    r = np.exp(log_rate - log_rate.max(axis=1, keepdims=True))
    return r / r.sum(axis=1, keepdims=True)


@dataclass
class SimulationModel:
    """The parameters that generated a simulated spatial data set.

    For benchmarks only: a method that knew them could compute each cell's posterior over
    type and state from its measured counts, which bounds what any imputation can reach
    (the ceilings benchmark, `git show 91fdd2f:benchmarks/ceilings.py`).
    """

    genes: list[str]
    base: np.ndarray  # (genes,) log rates shared by all cells
    type_effect: np.ndarray  # (types, genes)
    loadings: np.ndarray  # (programs, genes)
    capture: np.ndarray  # (genes,) the spatial platform's capture efficiency
    domain: np.ndarray  # (ST cells,) each cell's domain
    mixtures: np.ndarray  # (domains, types) type proportions of each domain
    domain_shift: np.ndarray  # (domains, programs) mean state of each domain
    st_dispersion: float  # gamma shape of the spatial counts (negative binomial size)
    dropout: float
    st_cell_shares: np.ndarray  # (ST cells, genes) each ST cell's noise-free shares

    def st_shares(self, cell_types: np.ndarray, state: np.ndarray) -> np.ndarray:
        """Expression shares on the spatial platform (capture included; rows sum to 1)."""
        r = _shares(self.base, self.type_effect, self.loadings, cell_types, state) * self.capture
        return r / r.sum(axis=1, keepdims=True)

    def sample_st_cells(self, n: int, rng: np.random.Generator
                        ) -> tuple[np.ndarray, np.ndarray]:
        """(types, states) of n cells drawn as the spatial data's were, domains in proportion
        to their cells."""
        domains = rng.choice(self.domain, n)
        cum = self.mixtures.cumsum(axis=1)[domains]
        types = np.minimum((rng.random((n, 1)) > cum).sum(axis=1), self.mixtures.shape[1] - 1)
        state = rng.normal(0.0, 1.0, (n, self.loadings.shape[0])) + self.domain_shift[domains]
        return types, state


def simulate(*, n_st: int = 1500, n_sc: int = 2000, n_genes: int = 200, n_measured: int = 150,
             n_cell_types: int = 6, n_domains: int = 4, n_programs: int = 6,
             st_depth: float = 400.0, sc_depth: float = 3000.0, capture_bias: float = 0.4,
             dropout: float = 0.1, seed: int = 0):
    """Simulate a spatial data set and a scRNA-seq reference of the same tissue.

    Parameters
    ----------
    n_st, n_sc
        Cells in the spatial data and in the reference.
    n_genes
        Genes in the reference (all of them).
    n_measured
        Genes the spatial data measures (a random subset); the others are unmeasured.
    n_cell_types, n_domains, n_programs
        Cell types, spatial domains and continuous gene programs.
    st_depth, sc_depth
        Mean counts per cell of each platform.
    capture_bias
        Standard deviation of the per-gene log capture efficiency of the spatial platform.
    dropout
        Extra fraction of spatial counts lost.
    seed
        Random seed: the same seed gives the same data.

    Returns
    -------
    (st, sc)
        AnnData objects with raw counts in X. `sc.obs["cell_type"]`; `st.obs["cell_type"]`,
        `st.obs["domain"]`, `st.obsm["spatial"]` (x, y), and for scoring the unmeasured genes:
        `st.obsm["truth"]`, a DataFrame of their noise-free expression on spalstf's output scale
        (log1p(rate / total rate of the measured genes * 1e4), platform effects included), and
        `st.obsm["unmeasured_counts"]`, the counts the platform would have measured.
    """
    st, sc, _ = _generate(
        n_st=n_st, n_sc=n_sc, n_genes=n_genes, n_measured=n_measured,
        n_cell_types=n_cell_types, n_domains=n_domains, n_programs=n_programs,
        st_depth=st_depth, sc_depth=sc_depth, capture_bias=capture_bias, dropout=dropout,
        seed=seed)
    return st, sc


def simulate_with_model(**options):
    """`simulate(**options)` (the same keyword arguments and defaults), also returning the
    `SimulationModel` that generated the spatial data: (st, sc, model)."""
    return _generate(**{**simulate.__kwdefaults__, **options})


def _generate(*, n_st: int, n_sc: int, n_genes: int, n_measured: int, n_cell_types: int,
              n_domains: int, n_programs: int, st_depth: float, sc_depth: float,
              capture_bias: float, dropout: float, seed: int):
    """The simulation itself (see `simulate`): (st, sc, model)."""
    import anndata

    if not 0 < n_measured < n_genes:
        raise ValueError(f"`n_measured` must be between 1 and n_genes - 1 ({n_genes - 1}); "
                         f"received {n_measured}")
    for name, value in (("n_st", n_st), ("n_sc", n_sc), ("n_cell_types", n_cell_types),
                        ("n_domains", n_domains), ("n_programs", n_programs)):
        if value < 1:
            raise ValueError(f"`{name}` must be a positive integer; received {value}")
    rng = np.random.default_rng(seed)
    genes = [f"Gene{i:04d}" for i in range(1, n_genes + 1)]
    types = [f"type{i + 1}" for i in range(n_cell_types)]

    base = rng.normal(0.0, 1.0, n_genes)
    type_effect = rng.normal(0.0, 0.3, (n_cell_types, n_genes))
    for c in range(n_cell_types):  # marker genes of each type
        markers = rng.choice(n_genes, max(1, n_genes // 12), replace=False)
        type_effect[c, markers] += rng.uniform(1.0, 2.5, len(markers))
    loadings = rng.normal(0.0, 0.45, (n_programs, n_genes)) * (rng.random((n_programs, n_genes))
                                                              < 0.3)

    def rates(cell_types: np.ndarray, state: np.ndarray) -> np.ndarray:
        return _shares(base, type_effect, loadings, cell_types, state)

    # Reference: types at fixed proportions, states around zero.
    type_freq = rng.dirichlet(np.full(n_cell_types, 3.0))
    sc_types = rng.choice(n_cell_types, n_sc, p=type_freq)
    sc_state = rng.normal(0.0, 1.0, (n_sc, n_programs))
    sc_depths = sc_depth * rng.lognormal(0.0, 0.4, n_sc)
    sc_counts = _counts(rng, rates(sc_types, sc_state), sc_depths, dispersion=SC_DISPERSION)

    # Spatial data: domains (nearest of n_domains centres), each with its own mixture of types
    # and a shift of the state, so that expression varies smoothly in space.
    xy = rng.uniform(0.0, 100.0, (n_st, 2))
    centres = rng.uniform(0.0, 100.0, (n_domains, 2))
    domain = np.argmin(((xy[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    mixtures = rng.dirichlet(np.full(n_cell_types, 0.5), n_domains)
    st_types = np.array([rng.choice(n_cell_types, p=mixtures[d]) for d in domain])
    domain_shift = rng.normal(0.0, 0.5, (n_domains, n_programs))
    st_state = rng.normal(0.0, 1.0, (n_st, n_programs)) + domain_shift[domain]
    capture = rng.lognormal(0.0, capture_bias, n_genes)
    st_rates = rates(st_types, st_state) * capture
    st_rates /= st_rates.sum(axis=1, keepdims=True)
    st_depths = st_depth * rng.lognormal(0.0, 0.4, n_st)
    st_counts = _counts(rng, st_rates, st_depths, dispersion=ST_DISPERSION)
    st_counts *= rng.random(st_counts.shape) >= dropout

    measured = np.sort(rng.choice(n_genes, n_measured, replace=False))
    unmeasured = np.setdiff1d(np.arange(n_genes), measured)
    cells_st = [f"spot{i:05d}" for i in range(n_st)]
    known_total = st_rates[:, measured].sum(axis=1, keepdims=True)
    truth = pd.DataFrame(np.log1p(st_rates[:, unmeasured] / known_total * 1e4).astype(np.float32),
                         index=cells_st, columns=[genes[i] for i in unmeasured])
    hidden_counts = pd.DataFrame(st_counts[:, unmeasured], index=cells_st,
                                 columns=[genes[i] for i in unmeasured])

    sc = anndata.AnnData(
        X=sc_counts,
        obs=pd.DataFrame({"cell_type": pd.Categorical([types[i] for i in sc_types],
                                                      categories=types)},
                         index=[f"cell{i:05d}" for i in range(n_sc)]),
        var=pd.DataFrame(index=genes),
    )
    st = anndata.AnnData(
        X=st_counts[:, measured],
        obs=pd.DataFrame({"cell_type": pd.Categorical([types[i] for i in st_types],
                                                      categories=types),
                          "domain": pd.Categorical([f"domain{d + 1}" for d in domain])},
                         index=cells_st),
        var=pd.DataFrame(index=[genes[i] for i in measured]),
        obsm={"spatial": xy.astype(np.float32), "truth": truth,
              "unmeasured_counts": hidden_counts},
    )
    st.uns["simulation"] = {"seed": seed, "capture_bias": capture_bias, "dropout": dropout,
                            "st_depth": st_depth, "sc_depth": sc_depth}
    model = SimulationModel(genes=genes, base=base, type_effect=type_effect, loadings=loadings,
                            capture=capture, domain=domain, mixtures=mixtures,
                            domain_shift=domain_shift, st_dispersion=ST_DISPERSION, dropout=dropout,
                            st_cell_shares=st_rates)
    return st, sc, model
