"""The chunk loop of a large imputation (`spalstf.model.predict.predict_stack`) timed alone with
one and two worker threads (`spalstf.runtime.ordered_map`) with each op on one thread, beside
one worker with torch and numpy's BLAS threading each op on two (the earlier default at
OMP_NUM_THREADS=2, whose values may differ from the others' by float rounding: BLAS on two
threads).

The data are the scale benchmark's (`benchmarks/scale.py _make`). A model is fitted on the
reference with its defaults, its combination learnt by the self-check on the first --cells
cells of the ST, and the stack's landmarks predicted on them (as the command line does); then
the first --rows of those cells are predicted, chunk by chunk, with the results dropped (the
command line writes them to a file a chunk at a time), --repeats times per setting, the
settings taken in turn so that a change in the machine's load falls on all of them. --views:
"held" (every cell's views computed once, as up to 1.5x10^5 cells at 300 genes) and/or
"chunked" (read a chunk at a time, as above `HELD_VIEW_BYTES`: the regime of 10^6 cells).
Each setting's outputs are checked equal to the first's of its views, bit for bit. Wall and CPU seconds per 1,000 cells, and the load
of the machine (shared with other jobs) before each run.

    OMP_NUM_THREADS=2 python benchmarks/chunk_threads.py \\
        --st /tmp/data/st_100000_300.h5ad --sc /tmp/data/sc_10000_300_200.h5ad

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

#: (name, worker threads, torch threads of the caller, each op on one thread): the default at
#: OMP_NUM_THREADS=1, the earlier default at 2 threads (one chunk at a time, torch and BLAS
#: threading each op), the default at 2 threads now
SETTINGS = (("1 worker, 1 thread per op", 1, 1, True),
            ("1 worker, 2 threads per op (earlier default at 2 threads)", 1, 2, False),
            ("2 workers, 1 thread per op (default at 2 threads)", 2, 2, True))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--st", required=True, help="ST .h5ad (benchmarks/scale.py _make)")
    p.add_argument("--sc", required=True, help="reference .h5ad")
    p.add_argument("--cells", type=int, default=100000, help="ST cells imputed (1e5)")
    p.add_argument("--rows", type=int, default=16384, help="cells of the chunk loop timed")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--views", nargs="+", default=["held", "chunked"],
                   choices=["held", "chunked"],
                   help="views held, or read a chunk at a time as at 10^6 cells (both)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "chunk_threads"))
    args = p.parse_args(argv)

    import anndata as ad
    import torch

    import spalstf
    from spalstf.combine import columns
    from spalstf.data import as_expression
    from spalstf.model.predict import stack_landmarks

    held_bytes = columns.HELD_VIEW_BYTES
    sc = ad.read_h5ad(args.sc)
    st = ad.read_h5ad(args.st)[:args.cells].to_memory()
    known = list(st.var_names)
    targets = [g for g in sc.var_names if g not in set(known)]
    start = time.perf_counter()
    model = spalstf.fit(sc, known, targets, seed=0, progress=False)
    model.self_check(st, sc, progress=False)
    expr = as_expression(st, genes=known, arg="st")
    cfg = model.config
    options = dict(log_normalized=False, seed=0, device=torch.device("cpu"), spatial=None)
    print(f"fit and self-check: {time.perf_counter() - start:.0f} s", flush=True)
    rows = []
    for views in args.views:
        columns.HELD_VIEW_BYTES = held_bytes if views == "held" else 0
        torch.set_num_threads(2)
        start = time.perf_counter()
        landmarks = stack_landmarks(model, expr, cfg, progress=False, **options)
        print(f"landmarks, views {views}: {time.perf_counter() - start:.0f} s", flush=True)
        rows += time_settings(model, expr, cfg, landmarks, options, views, args)
    report(rows, args)
    return 0 if all(r["same"] for r in rows) else 1


def time_settings(model, expr, cfg, landmarks, options, views, args) -> list[dict]:
    """The rows of one kind of views: each setting --repeats times, in turn."""
    import torch

    from spalstf.model.predict import predict_stack

    rows, first = [], {}
    for repeat in range(args.repeats):
        for name, workers, threads, one_thread in SETTINGS:
            torch.set_num_threads(threads)
            landmarks.source.workers = workers
            landmarks.source.one_thread_ops = one_thread
            kept = []
            load = os.getloadavg()[0]
            wall, cpu = time.perf_counter(), time.process_time()
            predict_stack(model, expr, cfg, progress=False, rows=(0, args.rows),
                          landmarks=landmarks,
                          sink=lambda part, mean, layers, kept=kept: kept.append(
                              (part.start, mean, layers)), **options)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            kept.sort(key=lambda item: item[0])
            out = np.concatenate([m for _, m, _ in kept])
            lower = np.concatenate([layer["lower"] for _, _, layer in kept])
            if not first:
                first.update(X=out, lower=lower)
            same = bool(np.array_equal(out, first["X"])
                        and np.array_equal(lower, first["lower"]))
            rows.append({"views": views, "setting": name, "repeat": repeat,
                         "load": round(load, 2),
                         "wall_s_per_1000": round(1e3 * wall / args.rows, 3),
                         "cpu_s_per_1000": round(1e3 * cpu / args.rows, 3), "same": same})
            print(rows[-1], flush=True)
    return rows


def report(rows: list[dict], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from spalstf._atomic import atomic_path

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    with atomic_path(out.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    best = table.groupby(["views", "setting"], sort=False).agg(
        wall=("wall_s_per_1000", "min"), cpu=("cpu_s_per_1000", "min"),
        loads=("load", lambda v: ", ".join(f"{x:.1f}" for x in v)),
        same=("same", "all"))
    lines = ["# The chunk loop with one and two worker threads", "",
             f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python "
             f"benchmarks/chunk_threads.py {' '.join(sys.argv[1:])}`", "",
             f"{args.rows:,} cells of a {args.cells:,}-cell ST; the best of "
             f"{args.repeats} runs per setting (settings in turn), seconds per 1,000 cells; "
             "the 1-minute load average before each run (a shared 2-core machine).", "",
             "| views | setting | wall s | CPU s | wall speed-up vs 1 worker, 1 thread | "
             "loads | outputs equal |", "|---|---|---|---|---|---|---|"]
    for (views, name), r in best.iterrows():
        base = best.loc[(views, SETTINGS[0][0]), "wall"]
        lines.append(f"| {views} | {name} | {r['wall']:.3f} | {r['cpu']:.3f} | "
                     f"{base / r['wall']:.2f}x | {r['loads']} | "
                     f"{'yes' if r['same'] else 'NO'} |")
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"{views}: {name}" for views, name in best.index]
    ax.barh(labels, best["wall"], color="tab:blue", label="wall")
    ax.barh(labels, best["cpu"], color="none", edgecolor="k", label="CPU")
    ax.set_xlabel("seconds per 1,000 cells")
    ax.legend()
    fig.tight_layout()
    with atomic_path(out.with_suffix(".png")) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


if __name__ == "__main__":
    sys.exit(main())
