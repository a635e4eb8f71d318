"""Accuracy benchmark: leave-genes-out cross-validation of spalstf and the baselines.

Runs :func:`spalstf.cross_validate` (5 folds, KFold shuffle, random_state 0: the protocol of
Li et al. 2022 and of ../shared/data/benchmarks.md) on every paired set of ``../shared/data``
the Python side can read, and on simulated data; prints a table per data set (median and mean
over genes of PCC, SPCC, SSIM, RMSE, JS; NaN count; AS; ARI; wall time) and writes
``benchmarks/results/accuracy.md``, ``accuracy_per_gene.csv`` and ``accuracy_per_gene.png``.

    .venv/bin/python benchmarks/accuracy.py                       # everything
    .venv/bin/python benchmarks/accuracy.py --datasets osmfish --methods mean,knn,spage
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spalstf.datasets import _loaders as L  # noqa: E402
from spalstf.evaluate._cli import markdown_table, plot_per_gene, report_table  # noqa: E402
from spalstf.evaluate.cv import cross_validate  # noqa: E402

DATA = ROOT / ".." / "shared" / "data"
REAL = ("osmfish", "visium_brain", "visium_lymph")


def simulated():
    """The lead's simulator at a benchmark size: CV over its measured genes."""
    from spalstf.datasets import simulate

    return simulate(n_st=1000, n_sc=1500, n_genes=120, n_measured=60, seed=0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default=",".join(REAL + ("simulated",)))
    ap.add_argument("--methods", default="mean,knn,spage,ridge,spalstf")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--name", default="accuracy", help="file name stem of the outputs")
    ap.add_argument("--epochs", type=int, default=None, help="spalstf epochs (default: its own)")
    ap.add_argument("--max-time", type=float, default=None, help="spalstf seconds per fold")
    ap.add_argument("--no-clustering", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    sp_opts = {k: v for k, v in (("epochs", args.epochs), ("max_time", args.max_time)) if v}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections: list[str] = []
    per_gene: list[pd.DataFrame] = []
    skipped: list[str] = []
    for name in [d for d in args.datasets.split(",") if d]:
        try:
            st, sc = simulated() if name == "simulated" else L.load(name, data_dir=DATA)
        except (FileNotFoundError, ImportError, TypeError) as err:
            print(f"[skip] {name}: {err}")
            skipped.append(f"{name}: {err}")
            continue
        t0 = time.perf_counter()
        res = cross_validate(
            st,
            sc,
            n_folds=5,
            seed=0,
            methods=args.methods,
            method_options={"spalstf": sp_opts} if sp_opts else None,
            clustering=not args.no_clustering,
        )
        n_shared = len(sum(res.folds, []))
        head = (
            f"## {name}\n\nST {st.n_obs} cells x {st.n_vars} genes, reference {sc.n_obs} x "
            f"{sc.n_vars}, {n_shared} shared genes; run took {time.perf_counter() - t0:.0f} s."
        )
        tabs = []
        for truth, label in (
            ("lognorm", "Truth: ST log1p(count / total over the shared genes * 1e4)"),
            ("counts", "Truth: ST raw counts (as Li et al. 2022 score)"),
        ):
            tab = markdown_table(report_table(res.summary.xs(truth)))
            tabs.append(f"{label}:\n\n{tab}")
            if truth == "lognorm":
                print(f"\n{name} ({label})\n{tab}")
        sections.append(head + "\n\n" + "\n\n".join(tabs))
        per_gene.append(res.per_gene.assign(dataset=name))

    if not per_gene:
        print("No data set could be run.")
        return 1
    allg = pd.concat(per_gene, ignore_index=True)
    allg.to_csv(out / f"{args.name}_per_gene.csv", index=False, float_format="%.4f")
    png = plot_per_gene(allg, out / f"{args.name}_per_gene.png")
    cmd = "python benchmarks/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv)
    md = [
        "# Accuracy benchmark (leave-genes-out cross-validation)",
        "",
        f"Made by `{cmd.strip()}` on {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch thread(s), no GPU.",
        "",
        "Protocol: the genes shared by ST and reference (ST order), KFold(5, shuffle=True, "
        "random_state=0); each method sees the ST without the held-out genes (raw counts) and the "
        "whole reference. Metrics per gene (spalstf.metrics), then median and mean over genes; "
        "'NaN PCC' counts genes without a correlation (constant truth or prediction), left out "
        "of medians and means. AS: Li et al. accuracy score among the methods of the table. "
        "ARI: Leiden clusters of the imputed vs the measured (log-normalised) ST. Time: all five "
        "folds, fitting included.",
        "",
        *(f"Skipped: {s}" for s in skipped),
        "",
        "\n\n".join(sections),
        "",
        f"Per-gene box plots: `{png.name}`; per-gene values: `{args.name}_per_gene.csv`.",
    ]
    (out / f"{args.name}.md").write_text("\n".join(md) + "\n")
    print(f"\nWrote {out / (args.name + '.md')} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
