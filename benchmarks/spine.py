"""Spine benchmark: the defaults of `spalstf.impute`, end to end, against simple baselines.

1. Simulated data (the demo's): median per-gene Pearson r of spalstf with its defaults, the
   reference mean (constant, so r is undefined) and kNN (mean of the 50 nearest reference cells
   in standardised log-normalised known-gene space), against the simulated truth.
2. osmFISH (../shared/data/osmfish): `fit` + `impute` with the defaults, the 7 genes of the
   first KFold(5, shuffle, random_state 0) fold held out; wall time and peak memory (RSS).

Prints a table, writes benchmarks/results/spine.md and spine.png.

    .venv/bin/python benchmarks/spine.py
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import spalstf  # noqa: E402
from spalstf._atomic import atomic_path  # noqa: E402
from spalstf.preprocess import log_normalize  # noqa: E402

OUT = ROOT / "benchmarks" / "results"


def pcc_per_gene(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.array([np.corrcoef(truth[:, j], pred[:, j])[0, 1]
                         for j in range(truth.shape[1])])


def knn50(st_known, sc_known, sc_target, k=50):
    from sklearn.neighbors import NearestNeighbors

    ref_k, ref_t = log_normalize(sc_known, sc_target)
    st_k, _ = log_normalize(st_known)
    mu, sd = ref_k.mean(0), ref_k.std(0) + 1e-6
    nn = NearestNeighbors(n_neighbors=k).fit((ref_k - mu) / sd)
    _, idx = nn.kneighbors((st_k - mu) / sd)
    return ref_t[idx].mean(1)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> int:
    rows = []
    st, sc = spalstf.datasets.simulate()
    start = time.perf_counter()
    out = spalstf.impute(st, sc, progress=False)
    seconds = time.perf_counter() - start
    genes = list(out.var_names)
    truth = st.obsm["truth"][genes].to_numpy()
    known = list(st.var_names)
    sc_known, sc_target = sc[:, known].X, sc[:, genes].X
    preds = {"spalstf (defaults)": out.X,
             "reference mean": np.tile(log_normalize(sc_known, sc_target)[1].mean(0),
                                       (st.n_obs, 1)),
             "kNN, k = 50": knn50(st.X, sc_known, sc_target)}
    sim_pcc = {}
    for name, pred in preds.items():
        r = pcc_per_gene(truth, pred)
        sim_pcc[name] = r
        med = "n/a (constant)" if np.all(np.isnan(r)) else f"{np.nanmedian(r):.3f}"
        rows.append(("simulated", name, med, f"{seconds:.0f} s" if "spalstf" in name else ""))

    osm = ROOT / ".." / "shared" / "data" / "osmfish"
    osm_line = "osmFISH data not found: skipped"
    if osm.exists():
        import anndata as ad
        from sklearn.model_selection import KFold

        st = ad.read_h5ad(osm / "dataset1_spatial_33.h5ad")
        sc = ad.read_h5ad(osm / "dataset1_seq_33.h5ad")
        shared = [g for g in st.var_names if g in set(sc.var_names)]
        fold = next(iter(KFold(5, shuffle=True, random_state=0).split(shared)))[1]
        hidden = [shared[i] for i in fold]
        known = [g for g in shared if g not in set(hidden)]
        rss0 = peak_rss_gib()
        start = time.perf_counter()
        model = spalstf.fit(sc, known, hidden, progress=False)
        fit_s = time.perf_counter() - start
        result = model.impute(st[:, known], progress=False)
        total_s = time.perf_counter() - start
        counts = st[:, shared].X
        truth = np.log1p(st[:, hidden].X / counts.sum(1, keepdims=True) * 1e4)
        r = pcc_per_gene(truth, result.X)
        osm_line = (f"osmFISH, 7 held-out genes ({', '.join(hidden)}): fit {fit_s:.0f} s "
                    f"({model.info['epochs_trained']} epochs, {model.info['stop_reason']}), "
                    f"fit + impute {total_s:.0f} s, peak RSS {peak_rss_gib():.2f} GiB "
                    f"(before: {rss0:.2f} GiB), median PCC {np.nanmedian(r):.3f}")
        rows.append(("osmFISH (7 genes)", "spalstf (defaults)", f"{np.nanmedian(r):.3f}",
                     f"{total_s:.0f} s, {peak_rss_gib():.2f} GiB peak"))

    table = ["| data | method | median PCC | cost |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = "\n".join(table)
    print(text)
    print(osm_line)
    OUT.mkdir(parents=True, exist_ok=True)
    with atomic_path(OUT / "spine.md") as tmp:
        tmp.write_text(
            "# Spine benchmark\n\n`.venv/bin/python benchmarks/spine.py` on 2 CPU cores.\n\n"
            + text + "\n\n" + osm_line + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    names = [n for n in sim_pcc if not np.all(np.isnan(sim_pcc[n]))]
    ax.boxplot([sim_pcc[n][~np.isnan(sim_pcc[n])] for n in names])
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_ylabel("per-gene Pearson r (simulated truth)")
    ax.set_title("simulated data, 50 unmeasured genes")
    fig.tight_layout()
    with atomic_path(OUT / "spine.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
