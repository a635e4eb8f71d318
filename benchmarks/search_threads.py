"""The per-cell parts of a large imputation, timed alone at one and two threads: each base
predictor's prediction in each view (its profile search and the mean over the neighbours found),
the expression-neighbour search among the landmarks, and the readout at the cell's depth.

The data are the scale benchmark's (`benchmarks/scale.py _make`): a model is fitted on the
reference with its defaults, and its predictors are prepared on the first --cells cells of the
ST (from 5x10^4, `FLOAT32_SEARCH_CELLS`, the profile searches take the float32 path, as in a
large run); then --queries evenly spaced cells are predicted, the best of --repeats, with
``torch.set_num_threads`` at each --threads (numpy's own work stays on one core). Wall and CPU
seconds per 1,000 cells; the speed-up of two threads is wall(1) / wall(2), on a machine shared
with other jobs (their load in the table).

    python benchmarks/search_threads.py --st /tmp/data/st_100000_300.h5ad \\
        --sc /tmp/data/sc_10000_300_200.h5ad --threads 1 2

Prints a table and writes OUT.csv, OUT.md and OUT.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def best_of(function, repeats: int) -> tuple[float, float]:
    """(wall, CPU) seconds of the fastest of `repeats` calls of `function`."""
    wall = cpu = np.inf
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        function()
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, time.process_time() - c)
    return wall, cpu


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--st", required=True, help="ST .h5ad (benchmarks/scale.py _make)")
    p.add_argument("--sc", required=True, help="reference .h5ad")
    p.add_argument("--cells", type=int, default=50000, help="ST cells prepared on (5e4)")
    p.add_argument("--queries", type=int, default=4096, help="cells predicted (4096)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "search_threads"))
    args = p.parse_args(argv)

    import anndata as ad
    import torch

    import spalstf
    from spalstf.config import Config
    from spalstf.data import as_expression
    from spalstf.preprocess import expected_at_depth

    sc = ad.read_h5ad(args.sc)
    st = ad.read_h5ad(args.st, backed="r")[:args.cells].to_memory()
    known = list(st.var_names)
    targets = [g for g in sc.var_names if g not in set(known)]
    torch.set_num_threads(1)
    model = spalstf.fit(sc, known, targets, seed=0, progress=False)
    columns = [f"{name}|{view}|expression" for name in ("knn", "spage", "aligned")
               for view in ("raw", "expression", "spatial") if name in model.predictors]
    source = model.columns(as_expression(st, arg="st"), Config(), columns,
                           log_normalized=False, seed=0, device=torch.device("cpu"),
                           spatial=None, n_predicted=args.queries)
    cells = np.unique(np.linspace(0, st.n_obs - 1, args.queries).astype(np.int64))
    inputs = {pair: source.read(pair[1], predictor.reads, cells)
              for pair, predictor in source.prepared.items()}
    graph = source._expression_graph()
    values = source.prepared["knn", "raw"].predict(inputs["knn", "raw"])
    depth = source.depth(cells)
    parts = {f"{name} ({view})": (lambda pr=source.prepared[name, view], x=inputs[name, view]:
                                  pr.predict(x)) for name, view in source.prepared}
    # the graph remembers its last cells: other cells first, so that each call searches
    parts["expression neighbours"] = lambda: (graph(cells[:1]), graph(cells))
    parts["expected_at_depth"] = lambda: expected_at_depth(values, depth)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        load = os.getloadavg()[0]
        for part, function in parts.items():
            wall, cpu = best_of(function, args.repeats)
            rows.append({"part": part, "threads": threads, "load": round(load, 1),
                         "wall_ms_per_1000": round(1e6 * wall / len(cells), 2),
                         "cpu_ms_per_1000": round(1e6 * cpu / len(cells), 2)})
            print(f"{threads} threads  {part:28s} wall {rows[-1]['wall_ms_per_1000']:8.1f} "
                  f"CPU {rows[-1]['cpu_ms_per_1000']:8.1f} ms per 1,000 cells", flush=True)
    report(rows, args)
    return 0


def report(rows: list[dict], args) -> None:
    import pandas as pd

    from spalstf._atomic import atomic_path

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    with atomic_path(out.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    wide = table.pivot(index="part", columns="threads", values="wall_ms_per_1000")
    wide = wide.loc[list(dict.fromkeys(table["part"]))]
    lines = ["# Per-cell parts of a large imputation at 1 and 2 threads", "",
             f"Command: `python benchmarks/search_threads.py {' '.join(sys.argv[1:])}`", "",
             "Wall milliseconds per 1,000 cells (best of the repeats); CPU in the .csv. Load: "
             + ", ".join(f"{t} threads {table[table.threads == t]['load'].iloc[0]}"
                         for t in args.threads) + " (1-minute load average of the machine).",
             "", "| part | " + " | ".join(f"{t} thread(s)" for t in wide.columns)
             + (" | speed-up |" if len(wide.columns) > 1 else " |"),
             "|---|" + "---|" * (len(wide.columns) + (len(wide.columns) > 1))]
    for part, r in wide.iterrows():
        cells = " | ".join(f"{v:.1f}" for v in r)
        speed = f" | {r.iloc[0] / r.iloc[-1]:.2f}x |" if len(r) > 1 else " |"
        lines.append(f"| {part} | {cells}{speed}")
    total = wide.sum()
    lines.append("| all parts | " + " | ".join(f"{v:.1f}" for v in total)
                 + (f" | {total.iloc[0] / total.iloc[-1]:.2f}x |" if len(total) > 1 else " |"))
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    wide.plot.barh(ax=ax)
    ax.set_xlabel("wall ms per 1,000 cells")
    ax.legend(title="threads")
    fig.tight_layout()
    with atomic_path(out.with_suffix(".png")) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
