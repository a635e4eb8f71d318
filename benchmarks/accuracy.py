"""Accuracy benchmark: leave-genes-out cross-validation of spalstf and the baselines.

Runs :func:`spalstf.cross_validate` (5 folds, KFold shuffle, random_state 0: the protocol of
Li et al. 2022 and of ../shared/data/benchmarks.md) on every paired set of ``../shared/data``
(osmFISH, Visium brain, Visium lymph node, ExSeq cortex, STARmap cortex) and on simulated
data, with every method in one run: the reference mean, kNN, SpaGE-style, ridge, Tangram (the
``benchmark`` extra) and spalstf. Prints a table per data set as it finishes (median and mean
over genes of PCC, SPCC, SSIM, RMSE, JS; NaN count; AS; ARI; wall time of the five folds) and
writes ``benchmarks/results/<name>.md`` (an overview of all sets first: median PCC / SPCC and
time per method, the best baseline per set and, under the project's protocol, the anchor:
the median PCC of a ridge trained on the ST's own cells, `spalstf.evaluate.cv.st_trained_ridge`),
``<name>_per_gene.csv`` and ``<name>_per_gene.png``, rewritten after each data set so a long
run leaves its finished sets.

    .venv/bin/python benchmarks/accuracy.py                       # everything
    .venv/bin/python benchmarks/accuracy.py --baselines --name baselines_all   # no spalstf
    .venv/bin/python benchmarks/accuracy.py --jobs 3    # three data sets side by side
    .venv/bin/python benchmarks/accuracy.py --datasets osmfish --methods mean,knn,spage
    .venv/bin/python benchmarks/accuracy.py --protocol li2022   # Li et al. 2022's scoring

Pooled-spot sets (`SPOTS`, not in the default run): the cells of osmFISH, ExSeq and STARmap
summed into square spots of about 5 and about 20 cells (:func:`spalstf.datasets.pool_spots`,
seed 0), the reference unchanged; named ``<set>_spots5`` and ``<set>_spots20``:

    .venv/bin/python benchmarks/accuracy.py --datasets osmfish_spots5,osmfish_spots20,\
        exseq_cortex_spots5,exseq_cortex_spots20,starmap_cortex_spots5,starmap_cortex_spots20

``--protocol li2022`` runs ``cross_validate(protocol="li2022")`` (10 unshuffled gene folds,
predictions as expected counts at each cell's depth against the raw counts, the library-size
baseline beside every method), leads with the raw-counts table and writes
``<name>_li2022.md`` and its CSV and PNG.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spalstf._atomic import atomic_path  # noqa: E402
from spalstf.datasets import _loaders as L  # noqa: E402
from spalstf.evaluate._cli import markdown_table, plot_per_gene, report_table  # noqa: E402
from spalstf.evaluate.cv import cross_validate, st_trained_ridge  # noqa: E402

DATA = ROOT / ".." / "shared" / "data"
REAL = ("osmfish", "visium_brain", "visium_lymph", "exseq_cortex", "starmap_cortex")
DATASETS = REAL + ("simulated",)
#: Spot sets with a known truth: single-cell-resolution sets pooled into spots of about
#: ``SPOT_SIZES`` cells each (`load_set`).
POOLED = ("osmfish", "exseq_cortex", "starmap_cortex")
SPOT_SIZES = (5, 20)
SPOTS = tuple(f"{name}_spots{size}" for name in POOLED for size in SPOT_SIZES)
#: Every method compared, spalstf last; ``--baselines`` runs all but spalstf.
BASELINES = ("mean", "knn", "spage", "ridge", "tangram")
METHODS = BASELINES + ("spalstf",)


def simulated():
    """The lead's simulator at a benchmark size: CV over its measured genes."""
    from spalstf.datasets import simulate

    return simulate(n_st=1000, n_sc=1500, n_genes=120, n_measured=60, seed=0)


def load_set(name: str):
    """(st, reference) of a data set of this benchmark: `simulated`, a pair of
    ``../shared/data``, or one of `SPOTS` (its ST pooled into spots, its reference as is)."""
    if name == "simulated":
        return simulated()
    if name in SPOTS:
        from spalstf.datasets import pool_spots

        base, size = name.rsplit("_spots", 1)
        st, sc = L.load(base, data_dir=DATA)
        return pool_spots(st, cells_per_spot=int(size), seed=0), sc
    return L.load(name, data_dir=DATA)


def tangram_mode(sc) -> str:
    """What :func:`spalstf.evaluate.baselines.tangram` maps on this reference (clusters mode
    always: cells mode takes hours per set on a CPU)."""
    return "clusters" if "cell_type" in sc.obs else "Leiden clusters"


def overview(summaries: dict[str, pd.DataFrame], truth: str = "lognorm",
             anchors: dict[str, float] | None = None) -> tuple[str, pd.DataFrame]:
    """One row per data set and method (``truth``, log-normalised by default): median PCC,
    SPCC and wall time; the best baseline per set (highest median PCC, spalstf, the
    constant mean and the library size aside); and, given ``anchors``, each set's median PCC
    of the ST-trained ridge (`spalstf.evaluate.cv.st_trained_ridge`)."""
    rows = []
    for name, s in summaries.items():
        t = s.xs(truth)
        for meth, r in t.iterrows():
            rows.append({"dataset": name, "method": meth, "pcc": r["pcc_median"],
                         "spcc": r["spcc_median"], "time_s": r["wall_time_s"]})
    tab = pd.DataFrame(rows)
    methods = list(dict.fromkeys(tab["method"]))
    anchor = " | anchor (ST-trained ridge)" if anchors else ""
    lines = ["| data set | " + " | ".join(methods) + " | best baseline" + anchor + " |",
             "|---|" + "---|" * (len(methods) + 1 + bool(anchors))]
    for name, part in tab.groupby("dataset", sort=False):
        by = part.set_index("method")
        cells = []
        for m in methods:
            if m not in by.index:
                cells.append("")
                continue
            r = by.loc[m]
            pcc = "n/a" if np.isnan(r["pcc"]) else f"{r['pcc']:.3f}"
            spcc = "n/a" if np.isnan(r["spcc"]) else f"{r['spcc']:.3f}"
            secs = f"{r['time_s']:.1f}" if r["time_s"] < 10 else f"{r['time_s']:.0f}"
            cells.append(f"{pcc} / {spcc} ({secs} s)")
        base = by.drop(index=[m for m in ("mean", "libsize", "spalstf")
                              if m in by.index])["pcc"].dropna()
        best = f"{base.idxmax()} ({base.max():.3f})" if len(base) else "n/a"
        if anchors:
            best += f" | {anchors[name]:.3f}" if name in anchors else " | n/a"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {best} |")
    return "\n".join(lines), tab


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default=",".join(DATASETS),
                    help="comma-separated (default: %(default)s)")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--methods", default=",".join(METHODS),
                       help="comma-separated (default: %(default)s)")
    which.add_argument("--baselines", action="store_true",
                       help=f"the baselines only, without spalstf: {','.join(BASELINES)}")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--name", default="accuracy", help="file name stem of the outputs")
    ap.add_argument("--epochs", type=int, default=None, help="spalstf epochs (default: its own)")
    ap.add_argument("--max-time", type=float, default=None, help="spalstf seconds per fold")
    ap.add_argument("--no-clustering", action="store_true")
    ap.add_argument("--protocol", choices=("project", "li2022"), default="project",
                    help="scoring: the project's (default) or Li et al. 2022's (10 gene folds, "
                         "counts-scale predictions against raw counts); names the outputs")
    ap.add_argument("--jobs", type=int, default=1,
                    help="data sets run side by side, each in its own process (default 1)")
    ap.add_argument("--checkpoint", default=None, metavar="DIR",
                    help="save each method's fold predictions under DIR/PROTOCOL/DATASET as "
                         "they are made, and load those already there: an interrupted run "
                         "resumes (spalstf.cross_validate's checkpoint)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    methods = ",".join(BASELINES) if args.baselines else args.methods

    if args.protocol != "project":
        args.name = f"{args.name}_{args.protocol}"
    sp_opts = {k: v for k, v in (("epochs", args.epochs), ("max_time", args.max_time)) if v}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = os.environ.get("OMP_NUM_THREADS")
    cmd = (f"OMP_NUM_THREADS={threads} " if threads else "") + "python benchmarks/accuracy.py "
    cmd += " ".join(sys.argv[1:] if argv is None else argv)
    names = [d for d in args.datasets.split(",") if d]
    unknown = [n for n in names if n not in ("simulated", *SPOTS) and n not in L.DATASETS]
    if unknown:
        ap.error(f"--datasets: unknown {unknown}; expected some of {list(DATASETS + SPOTS)}")
    jobs = max(1, min(args.jobs, len(names)))
    start = time.perf_counter()
    done: dict[str, dict] = {}
    skipped: list[str] = []

    def finished(name: str, result: dict | str) -> None:
        if isinstance(result, str):
            print(f"[skip] {name}: {result}")
            skipped.append(f"{name}: {result}")
            return
        done[name] = result
        print(f"\n{name} ({result['label']})\n{result['printed']}", flush=True)
        ready = [n for n in names if n in done]  # the report keeps the order of --datasets
        write(out, args.name, cmd, [done[n]["section"] for n in ready],
              [done[n]["per_gene"] for n in ready], {n: done[n]["summary"] for n in ready},
              skipped, time.perf_counter() - start, jobs, protocol=args.protocol,
              anchors={n: done[n]["anchor"] for n in ready if done[n]["anchor"] is not None})

    task = partial(run_one, methods=methods, sp_opts=sp_opts, clustering=not args.no_clustering,
                   protocol=args.protocol, checkpoint=args.checkpoint)
    if jobs == 1:
        for name in names:
            finished(name, task(name))
    else:
        # Whole data sets side by side, each in its own process (its five folds and all its
        # methods together, as in a single run); results are reported as they finish.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {pool.submit(task, name): name for name in names}
            for fut in as_completed(futures):
                finished(futures[fut], fut.result())

    if not done:
        print("No data set could be run.")
        return 1
    print(f"\nWrote {out / (args.name + '.md')}, {args.name}_per_gene.csv and .png")
    return 0


def run_one(name: str, *, methods: str, sp_opts: dict, clustering: bool,
            protocol: str = "project", checkpoint: str | None = None) -> dict | str:
    """Cross-validate every method on one data set: its report section, printed table,
    summary and per-gene rows; or why it was skipped."""
    logging.basicConfig(level=logging.WARNING)  # in a worker process too
    try:
        st, sc = load_set(name)
    except (FileNotFoundError, ImportError, TypeError) as err:
        return str(err)
    t0 = time.perf_counter()
    res = cross_validate(
        st,
        sc,
        n_folds=None,  # 5 under the project's protocol, 10 under Li et al.'s
        seed=0,
        methods=methods,
        method_options={"spalstf": sp_opts} if sp_opts else None,
        clustering=clustering,
        protocol=protocol,
        checkpoint=None if checkpoint is None else Path(checkpoint) / protocol / name,
    )
    n_shared = len(sum(res.folds, []))
    mode = ""
    if "tangram" in methods.split(","):
        why = ("on the reference's cell types" if tangram_mode(sc) == "clusters"
               else "on Leiden clusters of the reference's known genes: it has no cell types")
        mode = f" Tangram in clusters mode ({why})."
    head = (
        f"## {name}\n\nST {st.n_obs} {'spots' if 'spots' in st.uns else 'cells'} x "
        f"{st.n_vars} genes, reference {sc.n_obs} x "
        f"{sc.n_vars}, {n_shared} shared genes; run took {time.perf_counter() - t0:.0f} s."
        + mode
    )
    if res.resumed:
        made = len(res.folds) * len(res.predictions)
        loaded = sum(len(f) for f in res.resumed.values())
        head += (f" {loaded} of its {made} method folds were loaded from the checkpoint of an "
                 "earlier, interrupted run (their times as measured when they were made), so "
                 "this run took less than the methods' times.")
    anchor = None
    if protocol == "project":
        anchor = float(np.nanmedian(st_trained_ridge(st, res.folds)["pcc"]))
        head += (f" Anchor: a ridge from the known genes to the held-out genes trained on the "
                 f"ST's own cells, scored on cells it did not see (what a perfect reference of "
                 f"the same platform could teach), median PCC {anchor:.3f}.")
    tabs = []
    printed = ""
    label = "Truth: ST log1p(count / total over the shared genes * 1e4)"
    truths = (("lognorm", label), ("counts", "Truth: ST raw counts (as Li et al. 2022 score)"))
    if protocol == "li2022":
        label = ("Truth: ST raw counts; predictions as counts at each cell's known-gene depth, "
                 "expm1(prediction) * depth / 1e4, spalstf's as its layers[\"counts\"], "
                 "Tangram's as its mapped cells' mean profile at that depth (Li et al. 2022's "
                 "protocol)")
        truths = (("counts", label), ("lognorm", "Truth: ST log1p(count / total over the shared "
                                      "genes * 1e4), same folds"))
    for truth, lab in truths:
        tab = markdown_table(report_table(res.summary.xs(truth)))
        tabs.append(f"{lab}:\n\n{tab}")
        if not printed:
            printed = tab
    return {"section": head + "\n\n" + "\n\n".join(tabs), "printed": printed, "label": label,
            "per_gene": res.per_gene.assign(dataset=name), "summary": res.summary,
            "anchor": anchor}


def write(out: Path, name: str, cmd: str, sections: list[str], per_gene: list[pd.DataFrame],
          summaries: dict[str, pd.DataFrame], skipped: list[str], seconds: float,
          jobs: int = 1, *, protocol: str = "project",
          anchors: dict[str, float] | None = None) -> None:
    """The Markdown page, the per-gene CSV and the box plots of the sets finished so far."""
    allg = pd.concat(per_gene, ignore_index=True)
    with atomic_path(out / f"{name}_per_gene.csv") as tmp:
        allg.to_csv(tmp, index=False, float_format="%.4f")
    li = protocol == "li2022"
    plot_per_gene(allg, out / f"{name}_per_gene.png", truth="counts" if li else "lognorm")
    table, _ = overview(summaries, "counts" if li else "lognorm", anchors)
    md = [
        "# Accuracy benchmark (leave-genes-out cross-validation)",
        "",
        f"Made by `{cmd.strip()}` on {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch thread(s) per process, "
        f"no GPU; {seconds:.0f} s in all"
        + (f", {jobs} data sets at a time (each set's wall times include the others' load)."
           if jobs > 1 else "."),
        "",
        "Protocol: the genes shared by ST and reference (ST order), KFold(5, shuffle=True, "
        "random_state=0); each method sees the ST without the held-out genes (raw counts) and the "
        "whole reference. Metrics per gene (spalstf.metrics), then median and mean over genes; "
        "'NaN PCC' counts genes without a correlation (constant truth or prediction), left out "
        "of medians and means. AS: Li et al. accuracy score among the methods of the table. "
        "ARI: Leiden clusters (scanpy: PCA, neighbours, Leiden) of the imputed vs the measured "
        "(log-normalised) ST. Time: all five folds, fitting included.",
        *(["",
           "**Li et al. 2022's protocol** (`--protocol li2022`, their code's `kfold` and "
           "per-gene Pearson against raw counts): instead of the above, KFold(10) without "
           "shuffling (contiguous genes in the ST's order, ten folds' time), and each method's "
           "log-normalised prediction turned into counts at each cell's own depth "
           "(expm1(prediction) x the cell's total over the fold's known genes / 1e4; spalstf's "
           "own counts output instead, its `layers[\"counts\"]`: the expected counts, Poisson "
           "means whose expected measurement its values are; Tangram's, whose projection "
           "sums the profiles of the reference cells it maps to a cell, the mean of those "
           "profiles at that depth) and scored against the ST's raw "
           "counts. `libsize` predicts every gene by that depth alone: the part of each score "
           "that is depth."] if li else []),
        "",
        "## Overview",
        "",
        ("Median PCC / median SPCC over genes (truth: raw counts, predictions as expected "
         "counts) and the ten folds' wall time; the best baseline by median PCC (the constant "
         "mean, libsize and spalstf aside)." if li else
         "Median PCC / median SPCC over genes (truth log-normalised) and the five folds' wall "
         "time; the best baseline by median PCC (the constant mean and spalstf aside)."),
        "",
        table,
        "",
        *(f"Skipped: {s}" for s in skipped),
        "",
        "\n\n".join(sections),
        "",
        f"Per-gene box plots: `{name}_per_gene.png`; per-gene values: `{name}_per_gene.csv`.",
    ]
    with atomic_path(out / f"{name}.md") as tmp:
        tmp.write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
