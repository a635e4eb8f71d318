"""Evaluate imputation methods by leave-genes-out cross-validation.

    python examples/cross_validation.py                           # simulated data, 5 folds
    python examples/cross_validation.py --dataset visium_brain    # a real pair (see below)
    python examples/cross_validation.py --fast                    # a smoke run in seconds

The genes measured in both data sets are split into folds (scikit-learn KFold, shuffled, seed
0); each method predicts each fold's genes from the other genes, and the predictions are scored
against the measured values per gene (Pearson and Spearman r, SSIM, RMSE, JS divergence), the
protocol of the Li et al. 2022 benchmark and of the SpaLSTF paper. Real pairs (--dataset
osmfish, visium_brain, ...) are read from --data-dir (default: $SPALSTF_DATA, then
../shared/data); --dataset osmfish_li_format runs without them, on the copy shipped with
spalstf (spalstf.datasets.osmfish_example). Writes the per-gene table, the summary and a box
plot to --out (default cv_out/). With the defaults, spalstf trains once per fold, 300 updates
each (`max_steps`, under a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import spalstf

#: --fast: small data, two folds and a small, briefly trained spalstf (not for results).
FAST_SPALSTF = dict(epochs=3, n_steps=3, n_samples=2, d_model=32, depth=1, lstm_hidden=16,
                    n_neighbors=4)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="simulated",
                        help="'simulated' or a name of spalstf.datasets.load: "
                             + ", ".join(sorted(spalstf.datasets.DATASETS)))
    parser.add_argument("--data-dir", default=None, help="folder holding the real data sets")
    parser.add_argument("--methods", default="mean,knn,spage,ridge,spalstf",
                        help="comma-separated methods (also tangram, gimvi when installed)")
    parser.add_argument("--folds", type=int, default=5, help="number of gene folds")
    parser.add_argument("--fast", action="store_true", help="small data, 2 folds, short training")
    parser.add_argument("--out", default="cv_out", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.dataset == "simulated":
        size = dict(n_st=200, n_sc=300, n_genes=40, n_measured=30) if args.fast else {}
        st, sc = spalstf.datasets.simulate(seed=args.seed, **size)
    else:
        st, sc = spalstf.datasets.load(args.dataset, data_dir=args.data_dir)
        if args.fast:  # random subsets of the cells
            rng = np.random.default_rng(args.seed)
            st = st[np.sort(rng.choice(st.n_obs, min(st.n_obs, 300), replace=False))].copy()
            sc = sc[np.sort(rng.choice(sc.n_obs, min(sc.n_obs, 500), replace=False))].copy()
    folds = 2 if args.fast else args.folds
    options = {"spalstf": dict(FAST_SPALSTF, progress=False) if args.fast
               else {"progress": False}}
    print(f"{args.dataset}: ST {st.n_obs} x {st.n_vars}, reference {sc.n_obs} x {sc.n_vars}; "
          f"{folds} folds; methods {args.methods}")

    cv = spalstf.cross_validate(st, sc, n_folds=folds, seed=args.seed, methods=args.methods,
                                method_options=options)
    # One row per method: medians over genes (truth: the ST's log-normalised values), the
    # accuracy score AS (ranks among these methods), clustering agreement and run time.
    table = cv.table()
    print(table.round(3).to_string())
    cv.per_gene.to_csv(out / "per_gene.csv", index=False)
    table.to_csv(out / "summary.csv")
    spalstf.pl.metric_boxplot(cv, path=out / "metrics.png")
    print(f"wrote {out / 'per_gene.csv'}, {out / 'summary.csv'}, {out / 'metrics.png'}")


if __name__ == "__main__":
    main()
