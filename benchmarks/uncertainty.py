"""Uncertainty benchmark: are spalstf's intervals and expected accuracies worth reading?

Five-fold leave-genes-out on every paired set of ``../shared/data`` and on simulated data
(the folds of :func:`spalstf.evaluate.cv.gene_folds`: KFold shuffle, random_state 0). Each
fold hides its genes from the ST and imputes them with ``spalstf.impute`` at its defaults;
everything is scored on those truly held-out genes, never on the known genes the self-check
calibrated the interval on. The truth is what the interval claims to cover: the held-out
gene's ``log1p(count / the cell's total over the fold's known genes * 1e4)``.

Per set it reports
- coverage of the 90% interval (``layers["lower"/"upper"]``): overall, and its spread over
  genes (10th and 90th percentile of the per-gene coverage);
- median width;
- the interval score (Gneiting & Raftery 2007: width + 2/alpha x the distance of each miss,
  alpha = 0.1; lower is better), mean over all values, beside three reference intervals that
  are each given something spalstf is not:
  ``range``: the gene's own 5-95% range across the ST's cells (knows the truth's distribution,
  nothing about the cell); ``constant``: the prediction +- the one constant that covers 90%
  of this set's values (knows the truth's errors); ``decile``: per gene, the point prediction
  binned into deciles and the truth's 5-95% range in each bin (the best any interval built on
  the point value alone can do);
- ``expected_pcc`` (``var["expected_pcc"]``) against each gene's real PCC: Spearman r, median
  bias (median expected - median real), mean absolute error; and the run's estimate
  (``uns["spalstf"]["self_check"]["median_pcc"]``) against the fold's real median;
- seconds per fold.

Writes ``benchmarks/results/<name>.md`` and ``<name>.png`` (coverage and interval-score ratio
per set; expected vs real per-gene PCC).

    .venv/bin/python benchmarks/uncertainty.py                      # every set
    .venv/bin/python benchmarks/uncertainty.py --datasets osmfish,simulated --name quick
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import spalstf  # noqa: E402
from spalstf._atomic import atomic_path  # noqa: E402
from spalstf.datasets import _loaders as L  # noqa: E402
from spalstf.evaluate._cli import markdown_table  # noqa: E402
from spalstf.evaluate.cv import gene_folds  # noqa: E402

DATASETS = ("osmfish", "visium_brain", "visium_lymph", "exseq_cortex", "starmap_cortex",
            "simulated")
ALPHA = 0.1
SCALE = 1e4


def load(name: str):
    if name == "simulated":
        return spalstf.datasets.simulate(n_st=1000, n_sc=1500, n_genes=120, n_measured=60,
                                         seed=0)
    return L.load(name)


def dense(m) -> np.ndarray:
    return np.asarray(m.toarray() if hasattr(m, "toarray") else m, dtype=np.float64)


def fold_truth(counts: np.ndarray, shared: list[str], held: list[str]
               ) -> tuple[list[str], np.ndarray]:
    """(the fold's known genes, the held-out genes' truth): each held-out gene's
    ``log1p(count / the cell's total over the known genes * SCALE)``, 0 in empty cells."""
    known = [g for g in shared if g not in set(held)]
    kidx = [shared.index(g) for g in known]
    hidx = [shared.index(g) for g in held]
    total = counts[:, kidx].sum(1, keepdims=True)
    truth = np.log1p(np.divide(counts[:, hidx] * SCALE, total,
                               out=np.zeros((len(counts), len(hidx))), where=total > 0))
    return known, truth


def interval_score(truth, lower, upper, alpha: float = ALPHA) -> np.ndarray:
    """Per value: width + 2/alpha x the distance by which the truth falls outside."""
    return ((upper - lower) + (2 / alpha) * np.clip(lower - truth, 0, None)
            + (2 / alpha) * np.clip(truth - upper, 0, None))


def reference_intervals(truth: np.ndarray, pred: np.ndarray) -> dict[str, tuple]:
    """The three reference intervals of the module's docstring, each cells x genes."""
    lo = np.quantile(truth, ALPHA / 2, axis=0)
    hi = np.quantile(truth, 1 - ALPHA / 2, axis=0)
    out = {"range": (np.broadcast_to(lo, truth.shape), np.broadcast_to(hi, truth.shape))}
    c = np.quantile(np.abs(truth - pred), 1 - ALPHA)
    out["constant"] = (np.clip(pred - c, 0, None), pred + c)
    dlo, dhi = np.empty_like(truth), np.empty_like(truth)
    for g in range(truth.shape[1]):
        edges = np.unique(np.quantile(pred[:, g], np.linspace(0, 1, 11)))
        bins = np.clip(np.searchsorted(edges, pred[:, g], side="right") - 1, 0,
                       max(len(edges) - 2, 0))
        for b in np.unique(bins):
            rows = bins == b
            dlo[rows, g] = np.quantile(truth[rows, g], ALPHA / 2)
            dhi[rows, g] = np.quantile(truth[rows, g], 1 - ALPHA / 2)
    out["decile"] = (dlo, dhi)
    return out


def per_gene_pcc(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    t = truth - truth.mean(0)
    p = pred - pred.mean(0)
    denom = np.sqrt((t ** 2).sum(0) * (p ** 2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (t * p).sum(0) / denom, np.nan)


def run_set(name: str, options: dict) -> dict:
    st, sc = load(name)
    shared = [g for g in st.var_names if g in set(sc.var_names)]
    st = st[:, shared].copy()
    counts = dense(st.X)
    genes, cov_rows, scores, pcc_rows, runs = [], [], {}, [], []
    seconds = []
    for fold, held in enumerate(gene_folds(shared, 5, 0)):
        known, truth = fold_truth(counts, shared, held)
        t0 = time.perf_counter()
        res = spalstf.impute(st[:, known].copy(), sc, genes=list(held), seed=0, progress=False,
                             **options)
        seconds.append(time.perf_counter() - t0)
        res = res[:, list(held)]
        pred = dense(res.X)
        lower, upper = dense(res.layers["lower"]), dense(res.layers["upper"])
        keep = truth.std(0) > 0  # a constant truth has no correlation and no spread to cover
        truth, pred, lower, upper = truth[:, keep], pred[:, keep], lower[:, keep], upper[:, keep]
        fold_genes = [g for g, k in zip(held, keep, strict=True) if k]
        inside = (truth >= lower) & (truth <= upper)
        cov_rows.append(pd.DataFrame({"gene": fold_genes, "coverage": inside.mean(0),
                                      "width": np.median(upper - lower, 0)}))
        ints = {"spalstf": (lower, upper), **reference_intervals(truth, pred)}
        for k, (lo, hi) in ints.items():
            scores.setdefault(k, []).append(interval_score(truth, lo, hi).ravel())
        genes.extend(fold_genes)
        real = per_gene_pcc(truth, pred)
        expected = res.var["expected_pcc"].to_numpy()[keep]
        expected_sd = (res.var["expected_pcc_sd"].to_numpy()[keep]
                       if "expected_pcc_sd" in res.var else np.full(len(expected), np.nan))
        pcc_rows.append(pd.DataFrame({"gene": fold_genes, "fold": fold, "real": real,
                                      "expected": expected, "expected_sd": expected_sd}))
        check = res.uns["spalstf"].get("self_check") or {}
        runs.append({"fold": fold, "hidden": check.get("median_pcc", np.nan),
                     "estimate": check.get("expected_median_pcc", np.nan),
                     "lower": (check.get("expected_median_pcc_interval") or [np.nan])[0],
                     "upper": (check.get("expected_median_pcc_interval") or [np.nan, np.nan])[1],
                     "real": np.nanmedian(real)})
    cov = pd.concat(cov_rows, ignore_index=True)
    pcc = pd.concat(pcc_rows, ignore_index=True)
    run = pd.DataFrame(runs)
    mean_score = {k: float(np.mean(np.concatenate(v))) for k, v in scores.items()}
    ok = pcc.dropna(subset=["real", "expected"])
    all_values = np.concatenate(scores["spalstf"])  # only its size is used: values scored
    row = {
        "dataset": name,
        "coverage": float(np.average(cov["coverage"])),
        "cov_gene_p10": float(cov["coverage"].quantile(0.1)),
        "cov_gene_p90": float(cov["coverage"].quantile(0.9)),
        "median_width": float(cov["width"].median()),
        "score": mean_score["spalstf"],
        "score_range": mean_score["range"],
        "score_constant": mean_score["constant"],
        "score_decile": mean_score["decile"],
        "ratio_range": mean_score["spalstf"] / mean_score["range"],
        "ratio_decile": mean_score["spalstf"] / mean_score["decile"],
        "exp_spearman": float(stats.spearmanr(ok["expected"], ok["real"])[0]),
        "real_median": float(ok["real"].median()),
        "exp_median": float(ok["expected"].median()),
        "exp_bias": float(ok["expected"].median() - ok["real"].median()),
        "exp_mae": float(np.mean(np.abs(ok["expected"] - ok["real"]))),
        "real_spread": float(ok["real"].quantile(0.9) - ok["real"].quantile(0.1)),
        # genes whose real PCC lies within expected_pcc +- the 90% normal quantile x its sd
        "exp_cov90": float(np.mean(np.abs(ok["expected"] - ok["real"])
                                   <= stats.norm.ppf(0.95) * ok["expected_sd"]))
        if ok["expected_sd"].notna().any() else float("nan"),
        "hidden_bias": float(np.nanmean(run["hidden"] - run["real"])),
        "run_bias": float(np.nanmean(run["estimate"] - run["real"])),
        "run_covered": int(((run["lower"] <= run["real"]) & (run["real"] <= run["upper"])).sum()),
        "seconds_per_fold": float(np.mean(seconds)),
        "n_values": int(all_values.size),
    }
    return {"row": row, "pcc": pcc.assign(dataset=name)}


def write(out: Path, name: str, cmd: str, rows: list[dict], pcc: pd.DataFrame) -> None:
    tab = pd.DataFrame(rows)
    show = tab[["dataset", "coverage", "cov_gene_p10", "cov_gene_p90", "median_width", "score",
                "score_range", "score_constant", "score_decile", "ratio_range",
                "ratio_decile"]]
    exp = tab[["dataset", "real_median", "exp_median", "exp_bias", "exp_spearman", "exp_mae",
               "real_spread", "exp_cov90", "hidden_bias", "run_bias", "run_covered",
               "seconds_per_fold"]]
    text = (f"# Uncertainty: 90% intervals and expected accuracy on held-out genes\n\n"
            f"Command: `{cmd}`\n\n"
            "Interval score: mean over values of width + 20 x each miss (lower is better); "
            "`range`: the gene's 5-95% range across ST cells; `constant`: prediction +- the "
            "constant covering 90%; `decile`: the truth's 5-95% range per decile of the "
            "prediction (an oracle). ratio_* = spalstf's score / the reference's.\n\n"
            + markdown_table(show.set_index("dataset").round(3), index_name="data set")
            + "\n\n"
            "Expected vs real per-gene PCC (exp_*: `var['expected_pcc']`; median bias = median "
            "expected - median real; exp_cov90: held-out genes whose real PCC lies within "
            "expected_pcc +- 1.645 x `var['expected_pcc_sd']`). The run's estimate against the fold's real median, mean "
            "over the 5 folds: hidden_bias for the hidden known genes' median "
            "(`self_check.median_pcc`, half the panel), run_bias for the estimate with all "
            "known genes (`self_check.expected_median_pcc`); run_covered: folds whose real "
            "median lies in that estimate's 90% interval (of 5):\n\n"
            + markdown_table(exp.set_index("dataset").round(3), index_name="data set") + "\n")
    with atomic_path(out / f"{name}.md") as tmp:
        tmp.write_text(text)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    x = np.arange(len(tab))
    axes[0].bar(x, tab["coverage"], color="tab:blue")
    axes[0].axhspan(0.87, 0.93, color="tab:green", alpha=0.2, label="target 0.87-0.93")
    axes[0].set_xticks(x, tab["dataset"], rotation=30, ha="right")
    axes[0].set_ylim(0.5, 1.0)
    axes[0].set_title("coverage of the 90% interval (held-out genes)")
    axes[0].legend(loc="lower right")
    for i, ref in enumerate(("range", "constant", "decile")):
        axes[1].bar(x + (i - 1) * 0.27, tab["score"] / tab[f"score_{ref}"], width=0.27,
                    label=f"vs {ref}")
    axes[1].axhline(1.0, color="k", lw=0.8)
    axes[1].axhline(0.95, color="tab:green", lw=0.8, ls="--", label="target vs range: 0.95")
    axes[1].set_xticks(x, tab["dataset"], rotation=30, ha="right")
    axes[1].set_title("interval score / reference's (lower is better)")
    axes[1].legend(fontsize=8)
    for ds, part in pcc.dropna(subset=["real", "expected"]).groupby("dataset", sort=False):
        axes[2].scatter(part["real"], part["expected"], s=8, label=ds)
    lim = [min(-0.1, pcc[["real", "expected"]].min().min()), 1]
    axes[2].plot(lim, lim, "k", lw=0.8)
    axes[2].set_xlabel("real per-gene PCC (held out)")
    axes[2].set_ylabel("var['expected_pcc']")
    axes[2].set_title("expected vs real accuracy")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out / f"{name}.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--name", default="uncertainty")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cmd = "python benchmarks/uncertainty.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, pccs = [], []
    for name in [d for d in args.datasets.split(",") if d]:
        try:
            result = run_set(name, {})
        except FileNotFoundError as err:
            print(f"[skip] {name}: {err}")
            continue
        rows.append(result["row"])
        pccs.append(result["pcc"])
        r = result["row"]
        print(f"{name}: coverage {r['coverage']:.3f} (genes {r['cov_gene_p10']:.2f}-"
              f"{r['cov_gene_p90']:.2f}), width {r['median_width']:.2f}, score {r['score']:.2f}"
              f" vs range {r['score_range']:.2f} / constant {r['score_constant']:.2f} / decile "
              f"{r['score_decile']:.2f}; expected {r['exp_median']:.3f} vs real "
              f"{r['real_median']:.3f} (r {r['exp_spearman']:.2f}); "
              f"{r['seconds_per_fold']:.1f} s/fold", flush=True)
        write(out, args.name, cmd, rows, pd.concat(pccs, ignore_index=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
