"""Scale benchmark of the default command-line path: wall time, CPU time and peak memory of
`spalstf impute --st ST.h5ad --sc SC.h5ad --out OUT.h5ad` against the number of ST cells.

The command runs with its defaults (self-check, learnt combination, every default predictor),
as a user runs it. The data are simulated (`spalstf.datasets.simulate`: a reference of R
cells and an ST of S cells measuring K known genes, with coordinates; T more genes, measured
by the reference only, are the targets) and written to --workdir first, in a child process
of their own, not measured. Each imputation runs in its own child process, whose own
resource usage the parent reads with `os.wait4`: wall time, CPU time (user + system: the
steadier number on a shared machine) and peak resident memory (ru_maxrss; the parent stays
small, since Linux keeps a process's peak across the execve that starts the child).

Prints a table and writes OUT.csv, OUT.md and a log-log plot OUT.png.

    python benchmarks/scale.py                                 # 10^4 and 5x10^4 cells: minutes
    python benchmarks/scale.py --st-cells 1e5 1e6              # the issue's targets: an hour+
    python benchmarks/scale.py --st-cells 1e5 --known 5000     # a 5,000-gene panel

`--repo` measures another checkout's package (say, the code before a change) with the same
driver and data; `--label` names it in the table, so that two runs can be compared row by
row (give both the same --out prefix with --append to put them in one table).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _size(text: str) -> int:
    return int(float(text))


# --- simulated data (a child process, not measured) ---------------------------------------------
#: Above this many ST cells the simulator's own memory (13.6 GiB at 10^6 cells) would outgrow
#: the machine: larger STs are tiles of a simulation of this size (`tiled`).
SIMULATED_CELLS = 200_000


def make_data(st_path: Path, sc_path: Path, n_st: int, n_sc: int, known: int,
              targets: int) -> None:
    """The ST (known genes, coordinates) and reference (every gene) of one simulation; above
    `SIMULATED_CELLS` ST cells, the ST is that simulation tiled (`tiled`)."""
    import spalstf

    st, sc = spalstf.datasets.simulate(n_st=min(n_st, SIMULATED_CELLS), n_sc=n_sc,
                                       n_genes=known + targets, n_measured=known, seed=0)
    for key in ("truth", "unmeasured_counts"):  # the score's, not the user's
        st.obsm.pop(key, None)
    if n_st > SIMULATED_CELLS:
        st = tiled(st, n_st)
    st.write_h5ad(st_path)
    if not sc_path.exists():
        sc.write_h5ad(sc_path)


def tiled(st, n_st: int, *, keep: float = 0.9, seed: int = 0):
    """An ST of `n_st` cells from copies of `st` laid side by side in space (each copy shifted
    along x past the previous one), every copy after the first with its counts thinned
    binomially to `keep` of them, so that no two cells are the same: the tissue repeated, as a
    larger section of it would look, at the simulator's per-cell cost of this size."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    counts = np.asarray(st.X, dtype=np.float32)
    xy = np.asarray(st.obsm["spatial"], dtype=np.float32)
    step = float(xy[:, 0].max() - xy[:, 0].min()) * 1.05
    x = np.empty((n_st, st.n_vars), np.float32)
    spatial = np.empty((n_st, xy.shape[1]), np.float32)
    frames = []
    for copy, start in enumerate(range(0, n_st, st.n_obs)):
        rows = slice(start, min(start + st.n_obs, n_st))
        n = rows.stop - rows.start
        x[rows] = counts[:n] if copy == 0 else rng.binomial(
            counts[:n].astype(np.int64), keep).astype(np.float32)
        spatial[rows] = xy[:n] + np.float32([copy * step] + [0.0] * (xy.shape[1] - 1))
        frame = st.obs.iloc[:n].copy()
        frame.index = [f"{name}_{copy}" for name in frame.index]
        frames.append(frame)
    out = ad.AnnData(x, obs=pd.concat(frames), var=st.var.copy())
    out.obsm["spatial"] = spatial
    return out


def run_measured(cmd: list[str], env: dict, cwd: str) -> dict:
    """Run `cmd` in `cwd` to its end; its wall and CPU seconds and peak resident memory (GiB).
    (`python -m` puts its working directory first on the module path, before PYTHONPATH: run
    in the checkout measured.)"""
    import tempfile

    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        child = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                                 cwd=cwd)
        # wait4 rather than wait: it returns this child's own resource usage
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        text = log.read()
    if child.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({child.returncode}):\n{text[-3000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_gib": usage.ru_maxrss / 2**20, "output": text.strip()}  # KiB on Linux


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "_make":
        st, sc, n_st, n_sc, known, targets = argv[1:]
        make_data(Path(st), Path(sc), int(n_st), int(n_sc), int(known), int(targets))
        return 0

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--st-cells", nargs="+", type=_size, default=[10**4, 5 * 10**4],
                   help="ST sizes (default 1e4 5e4; 1e5 and 1e6 are the issue's targets)")
    p.add_argument("--ref-cells", type=_size, default=10**4, help="reference cells (1e4)")
    p.add_argument("--known", nargs="+", type=int, default=[300],
                   help="known genes, measured by both (default 300; 50 to 5000)")
    p.add_argument("--targets", type=int, default=200, help="target genes (default 200)")
    p.add_argument("--repo", default=str(REPO), type=lambda path: str(Path(path).resolve()),
                   help="the checkout whose spalstf runs (default: this one)")
    p.add_argument("--label", default="", help="names this run's rows (say, before/after)")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS of the command (default: the environment's)")
    p.add_argument("--workdir", default="/tmp/spalstf_scale", help="simulated data")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scale_default"),
                   help="prefix of the .csv, .md and .png written")
    p.add_argument("--append", action="store_true",
                   help="add the rows to OUT.csv's instead of replacing them")
    args = p.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{args.repo}{os.pathsep}"
                                       f"{os.environ.get('PYTHONPATH', '')}"}
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    threads = env.get("OMP_NUM_THREADS", f"all {os.cpu_count()}")
    rows = []
    for known in args.known:
        sc = work / f"sc_{args.ref_cells}_{known}_{args.targets}.h5ad"
        for n in args.st_cells:
            st = work / f"st_{n}_{known}.h5ad"
            if not st.exists() or not sc.exists():
                subprocess.run([sys.executable, __file__, "_make", str(st), str(sc), str(n),
                                str(args.ref_cells), str(known), str(args.targets)],
                               env=env, check=True)
            out = work / "out.h5ad"
            res = run_measured([sys.executable, "-m", "spalstf.cli", "impute", "--st", str(st),
                                "--sc", str(sc), "--out", str(out), "--force", "--quiet"], env,
                               cwd=args.repo)
            row = {"label": args.label, "st_cells": n, "ref_cells": args.ref_cells,
                   "known": known, "targets": args.targets, "threads": threads,
                   "wall_s": round(res["wall_s"], 2), "cpu_s": round(res["cpu_s"], 2),
                   "peak_gib": round(res["peak_gib"], 3)}
            rows.append(row)
            print(f"{args.label:>8s} ST {n:>9,d} x {known} known -> {args.targets} targets, "
                  f"reference {args.ref_cells:,}: wall {row['wall_s']:8.1f} s  CPU "
                  f"{row['cpu_s']:8.1f} s  peak {row['peak_gib']:5.2f} GiB  "
                  f"({1e3 * row['cpu_s'] / n:.2f} CPU ms per cell)", flush=True)
    report(rows, args)
    return 0


def report(rows: list[dict], args) -> None:
    import pandas as pd

    from spalstf._atomic import atomic_path

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    if args.append and out.with_suffix(".csv").exists():
        table = pd.concat([pd.read_csv(out.with_suffix(".csv"), keep_default_na=False),
                           table], ignore_index=True)
    with atomic_path(out.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    lines = ["# spalstf scale: the default command line", "",
             "`spalstf impute --st ST.h5ad --sc SC.h5ad --out OUT.h5ad` with its defaults "
             "(self-check, learnt combination, every default predictor) on simulated data "
             "(`spalstf.datasets.simulate`, ST with coordinates), one child process per row: "
             "wall time, CPU time (user + system) and peak resident memory of that process. "
             "Input reading and output writing included, data generation not.", "",
             f"Command: `python benchmarks/scale.py {' '.join(sys.argv[1:])}`", "",
             "| run | ST cells | reference cells | known genes | targets | threads | wall s | "
             "CPU s | CPU ms per cell | peak GiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        lines.append(f"| {r['label']} | {r['st_cells']:,} | {r['ref_cells']:,} | {r['known']} "
                     f"| {r['targets']} | {r['threads']} | {r['wall_s']:.1f} | "
                     f"{r['cpu_s']:.1f} | {1e3 * r['cpu_s'] / r['st_cells']:.2f} | "
                     f"{r['peak_gib']:.2f} |")
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(table, out.with_suffix(".png"))


def plot(table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for (label, known), part in table.groupby(["label", "known"]):
        part = part.sort_values("st_cells")
        name = f"{label + ', ' if label else ''}{known} known genes"
        axes[0].plot(part["st_cells"], part["cpu_s"], "o-", label=f"CPU, {name}")
        axes[0].plot(part["st_cells"], part["wall_s"], "x--", label=f"wall, {name}")
        axes[1].plot(part["st_cells"], part["peak_gib"], "o-", label=name)
    for ax, what in zip(axes, ("seconds", "peak resident memory (GiB)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("ST cells")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("spalstf impute (default command line)")
    fig.tight_layout()
    from spalstf._atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
