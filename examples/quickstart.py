"""Quick start: impute the genes a spatial data set did not measure, on simulated data.

    python examples/quickstart.py            # the library's defaults (training: up to 2 min)
    python examples/quickstart.py --fast     # a smoke run in seconds (small data, short training)

Simulates a spatial (ST) data set that measures part of the genes and a scRNA-seq reference
that measures all of them, imputes the genes the ST lacks, scores the imputation against the
simulated truth (which real data never has), and writes the result and three figures to
--out (default quickstart_out/).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import spalstf

#: --fast: a small network and short training, for a smoke run (not for results).
FAST = dict(epochs=3, n_steps=3, n_samples=2, d_model=32, depth=1, lstm_hidden=16,
            n_neighbors=4)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="small data, short training")
    parser.add_argument("--out", default="quickstart_out", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. Data: AnnData objects of raw counts, cells x genes. With your own data, read them
    #    with anndata.read_h5ad (or spalstf.io.read_rds for Seurat / SingleCellExperiment).
    if args.fast:
        st, sc = spalstf.datasets.simulate(n_st=200, n_sc=300, n_genes=40, n_measured=30,
                                           seed=args.seed)
    else:
        st, sc = spalstf.datasets.simulate(seed=args.seed)
    print(f"ST: {st.n_obs} cells x {st.n_vars} measured genes, coordinates in "
          f"obsm['spatial']; reference: {sc.n_obs} cells x {sc.n_vars} genes")

    # 2. Impute: fit the diffusion model on the reference, sample it on the ST. By default
    #    the genes imputed are the reference genes the ST lacks. The inputs are not modified.
    #    Settings beyond impute's own arguments go in `config` (a dict of spalstf.Config
    #    fields; docs/api.md "Settings" lists them).
    imputed = spalstf.impute(st, sc, seed=args.seed, progress=not args.fast,
                             config=FAST if args.fast else None)
    print(f"imputed {imputed.n_vars} genes: X holds log1p-normalised values, "
          "layers['std'] the uncertainty")
    info = imputed.uns["spalstf"]
    print(f"  spalstf {info['version']}, seed {info['seed']}, "
          f"{len(info['known_genes'])} known genes, fit {info['timings']['fit_seconds']:.0f} s")

    # 3. Score against the simulated truth (same scale: log1p(count / known-gene total * 1e4)).
    truth = st.obsm["truth"][list(imputed.var_names)]
    pcc = spalstf.metrics.pcc(truth.to_numpy(), imputed.X)
    print(f"Pearson r per gene with the truth: median {np.nanmedian(pcc):.3f}, "
          f"min {np.nanmin(pcc):.3f}, max {np.nanmax(pcc):.3f}")

    # 4. Save and plot: the simulated truth (which no platform measured) beside the imputation,
    # on the truth's colour scale and on its own, and the uncertainty; the 3 best genes.
    best = list(imputed.var_names[np.argsort(-np.nan_to_num(pcc, nan=-2))[:3]])
    spalstf.io.write_h5ad(imputed, out / "imputed.h5ad", overwrite=True)
    spalstf.pl.spatial(imputed, best, truth=truth, truth_label="simulated truth", scale="both",
                       title="The 3 genes of best r (simulated data)", path=out / "spatial.png")
    spalstf.pl.uncertainty(imputed, best, path=out / "uncertainty.png")
    print(f"wrote {out / 'imputed.h5ad'}, {out / 'spatial.png'}, {out / 'uncertainty.png'}")


if __name__ == "__main__":
    main()
