"""Real data: osmFISH mouse cortex with a SMART-seq reference (the paper's demo pair).

    python examples/osmfish.py [PATH]             # the defaults (seconds)
    python examples/osmfish.py [PATH] --network   # and the SpaLSTF network (about 2 min)
    python examples/osmfish.py [PATH] --fast      # a smoke run in seconds (subsampled, short)

PATH is a folder with dataset1_spatial_33.h5ad and dataset1_seq_33.h5ad (the paper's pair:
3405 cells, 5613 reference cells) or with the Li et al. text files (Spatial_count.txt,
scRNA_count.txt, Locations.txt). Without PATH: the paper's pair in $SPALSTF_DATA/osmfish when
SPALSTF_DATA is set, else in ../shared/data/osmfish (from the working directory, then beside
the checkout); where it is absent (a fresh clone, an installed package), the osmFISH pair
shipped with spalstf, spalstf.datasets.osmfish_example() (the same 3405 cells, 1000 of the
reference cells; MIT, from the TISSUE repository). The first line printed says which.

Every one of the 33 genes is measured in both data sets, so the example hides some of them
(--genes, default: the first of five folds), predicts them from the others, and compares with
their measured values. Along the way it shows the two-step use: fit a model once, learn its
combination on the ST's known genes, save it, load it and impute. With --network the SpaLSTF
diffusion network joins the learnt combination as one more predictor (it is not a default: see
docs/results.md) and its training loss curve is drawn. Results go to --out (default
osmfish_out/).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd

import spalstf

#: --fast: a small network and short training, for a smoke run (not for results).
FAST = dict(epochs=3, n_steps=3, n_samples=2, d_model=32, depth=1, lstm_hidden=16,
            n_neighbors=4)


PAIR = ("dataset1_spatial_33.h5ad", "dataset1_seq_33.h5ad")


def default_folder() -> Path | None:
    """The paper's pair: $SPALSTF_DATA/osmfish when SPALSTF_DATA is set (only there), else
    ../shared/data/osmfish from the working directory, then beside the checkout; None when
    none holds it."""
    env = os.environ.get("SPALSTF_DATA")
    roots = [Path(env)] if env else [Path.cwd() / ".." / "shared" / "data",
                                     Path(__file__).resolve().parents[2] / "shared" / "data"]
    return next((r / "osmfish" for r in roots if all((r / "osmfish" / f).is_file()
                                                      for f in PAIR)), None)


def read_data(path: str | None, parser: argparse.ArgumentParser):
    """(st, sc, what was read): PATH, else the paper's pair, else the shipped example pair."""
    if path is None:
        folder = default_folder()
        if folder is None:
            st, sc = spalstf.datasets.osmfish_example()
            return st, sc, ("the osmFISH example pair shipped with spalstf "
                            "(spalstf.datasets.osmfish_example(); no data folder found)")
    else:
        folder = Path(path)
    if (folder / "Spatial_count.txt").is_file():
        st, sc = spalstf.datasets.read_li_format(folder)
    elif all((folder / f).is_file() for f in PAIR):
        st, sc = spalstf.datasets.read_h5ad_pair(*(folder / f for f in PAIR))
    else:
        parser.error(f"{str(folder)!r} holds neither {PAIR[0]} and {PAIR[1]} nor the Li et al. "
                     "text files (Spatial_count.txt, scRNA_count.txt, Locations.txt); leave "
                     "PATH out to use the osmFISH pair shipped with spalstf")
    return st, sc, str(folder)


def measured_truth(st, genes: list[str], known: list[str]) -> pd.DataFrame:
    """The measured values of `genes` on spalstf's output scale: log1p(count / total of the
    known genes * 1e4) per cell."""
    counts = st[:, genes].to_df()
    total = np.asarray(st[:, known].X.sum(axis=1)).ravel()
    return np.log1p(counts.div(np.maximum(total, 1), axis=0) * 1e4)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=None,
                        help="folder of an osmFISH pair (default: $SPALSTF_DATA/osmfish or "
                             "../shared/data/osmfish, else the pair shipped with spalstf)")
    parser.add_argument("--genes", default=None,
                        help="comma-separated genes to hide and predict (default: fold 1 of 5)")
    parser.add_argument("--network", action="store_true",
                        help="add the SpaLSTF network to the predictors; draw its loss curve")
    parser.add_argument("--fast", action="store_true", help="subsampled data, short training")
    parser.add_argument("--out", default="osmfish_out", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    out = Path(args.out)
    st, sc, source = read_data(args.path, parser)
    print(f"data: {source}")
    out.mkdir(parents=True, exist_ok=True)
    if args.fast:
        rng = np.random.default_rng(args.seed)
        st = st[np.sort(rng.choice(st.n_obs, min(st.n_obs, 300), replace=False))].copy()
        sc = sc[np.sort(rng.choice(sc.n_obs, min(sc.n_obs, 500), replace=False))].copy()
    print(f"osmFISH: {st.n_obs} cells x {st.n_vars} genes; reference {sc.n_obs} cells x "
          f"{sc.n_vars} genes")

    shared = [g for g in st.var_names if g in set(sc.var_names)]
    if args.genes:
        hidden = [g.strip() for g in args.genes.split(",") if g.strip()]
    else:  # the first fold of the five-fold protocol of benchmarks/ (KFold, shuffle, seed 0)
        hidden = spalstf.evaluate.cv.gene_folds(shared, 5, seed=0)[0]
    known = [g for g in shared if g not in hidden]
    print(f"hidden and predicted: {', '.join(hidden)} (from the {len(known)} other genes)")

    # Fit once on the reference, save; later sessions load the folder and impute new sections.
    options = dict(FAST) if args.fast else {}
    if args.network:
        options["predictors"] = spalstf.config.PREDICTOR_NAMES
    model = spalstf.fit(sc, known, hidden, seed=args.seed, progress=not args.fast,
                        config=options or None)
    # A model fitted on the reference alone blends its base predictions with fixed weights.
    # The self-check learns their combination (and the intervals) on the ST's own known genes,
    # hidden in turn; the model keeps it, saved with it, for this section and others like it.
    check = model.self_check(st[:, known], sc, seed=args.seed, progress=not args.fast)
    print(model)
    print(f"self-check on the known genes: median Pearson r {check.median_pcc:.3f}")
    model.save(out / "model", overwrite=True)
    model = spalstf.load(out / "model")
    written = ["model/", "imputed.h5ad", "spatial.png", "uncertainty.png"]
    if args.network:
        print(f"network training stopped: {model.info['stop_reason']}")
        spalstf.pl.loss_curve(model, path=out / "loss.png")
        written.append("loss.png")

    # The hidden genes' measured values are never read: only the known genes are.
    imputed = model.impute(st[:, known], seed=args.seed, progress=not args.fast)
    truth = measured_truth(st, hidden, known)
    scores = spalstf.metrics.score_genes(truth.to_numpy(), imputed.X, hidden)
    print(scores.round(3).to_string())
    print(f"median Pearson r: {scores['pcc'].median():.3f}")

    spalstf.io.write_h5ad(imputed, out / "imputed.h5ad", overwrite=True)
    top = list(scores["pcc"].sort_values(ascending=False).index[:3])
    spalstf.pl.spatial(imputed, top, measured=truth, point_size=3, path=out / "spatial.png")
    spalstf.pl.uncertainty(imputed, hidden, relative=True, point_size=3,
                           path=out / "uncertainty.png")
    print(f"wrote {out}/: {', '.join(written)}")


if __name__ == "__main__":
    main()
