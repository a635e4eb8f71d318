"""Scale benchmark: wall time and peak memory of fit and impute against data size.

Simulated data (written to --workdir first, not measured): a sparse reference of R cells x G
genes and an ST data set of S cells measuring the known genes. With G genes the model uses
K = min(300, 0.6 G) known genes and the other G - K as targets (G = 500: 300 known, 200
targets). Each measurement runs in its own child process, which reports its own peak resident
memory (VmHWM of /proc/self/status), so sizes never pollute each other:

- fit: read the reference .h5ad into memory (sparse stays sparse), `spalstf.fit` (training
  reads mini-batches from the sparse matrix), save the model;
- impute: open the ST .h5ad backed, `Model.impute(..., out=...)` writing the result .h5ad a
  chunk at a time (the command line's path); ``--modes memory`` also measures the in-memory
  result (ST read into memory, AnnData returned).

Prints a table, writes OUT.csv, OUT.md and a log-log plot OUT.png. It also counts the FLOPs of
one imputed cell (torch's FlopCounterMode on the denoiser and BiLSTM, plus the neighbour
search counted by hand) and turns them into an ESTIMATE of the time on one H100.

    python benchmarks/scale.py --st-cells 1e4 --ref-cells 1e4 --genes 50 500     # minutes
    python benchmarks/scale.py --st-cells 1e4 1e5 1e6 --ref-cells 1e4 1e5 \\
        --genes 50 500 2000 5000                                                 # hours
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: Peak dense bf16 / fp32 throughput of one H100 SXM (FLOP/s, vendor figures) and the fraction
#: of it assumed reachable by this workload's small matrix products (an assumption).
H100_BF16, H100_FP32, H100_EFFICIENCY = 989e12, 67e12, 0.25


def split(n_genes: int) -> tuple[int, int]:
    known = min(300, round(0.6 * n_genes))
    return known, n_genes - known


# --- simulated data (parent process, not measured) ----------------------------------------------
def _profiles(n_genes: int, n_types: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    log_rate = rng.normal(0, 1.0, n_genes) + rng.normal(0, 0.4, (n_types, n_genes))
    for t in range(n_types):
        log_rate[t, rng.choice(n_genes, max(1, n_genes // 10), replace=False)] += 2.0
    rates = np.exp(log_rate)
    return rates / rates.sum(axis=1, keepdims=True)


def _counts(rng, profiles, n, depth, genes=None):
    p = profiles if genes is None else profiles[:, genes]
    types = rng.integers(0, len(p), n)
    program = np.exp(rng.normal(0, 0.3, (n, 1)) * rng.normal(0, 1, (1, p.shape[1])))
    mean = depth * rng.lognormal(0, 0.3, (n, 1)) * p[types] * program
    return rng.poisson(rng.gamma(2.0, mean / 2.0)).astype(np.float32), types


def make_reference(path: Path, n_cells: int, n_genes: int) -> None:
    import anndata
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(1)
    profiles = _profiles(n_genes)
    parts = []
    for start in range(0, n_cells, 20000):
        x, _ = _counts(rng, profiles, min(20000, n_cells - start), 3000.0)
        parts.append(sp.csr_matrix(x))
    adata = anndata.AnnData(sp.vstack(parts, format="csr"),
                            var=pd.DataFrame(index=[f"G{i:05d}" for i in range(n_genes)]))
    adata.obs_names = [f"ref{i}" for i in range(n_cells)]
    adata.write_h5ad(path)


def make_st(path: Path, n_cells: int, n_genes: int) -> None:
    """Dense ST counts of the known genes, written block by block (bounded memory)."""
    import anndata
    import pandas as pd

    from spalstf.io import H5adWriter

    known, _ = split(n_genes)
    rng = np.random.default_rng(2)
    profiles = _profiles(n_genes)
    genes = np.arange(known)
    head = anndata.AnnData(obs=pd.DataFrame(index=[f"st{i}" for i in range(n_cells)]),
                           var=pd.DataFrame(index=[f"G{i:05d}" for i in genes]))
    with H5adWriter(path, head) as writer:
        for start in range(0, n_cells, 50000):
            stop = min(start + 50000, n_cells)
            writer.write(slice(start, stop), _counts(rng, profiles, stop - start, 400.0,
                                                     genes)[0])


# --- measurements (child processes) ------------------------------------------------------------
def _peak_gib() -> float:
    """This process's own peak resident memory.

    VmHWM, not getrusage: Linux keeps ru_maxrss across execve, so a child started by a large
    parent would report the parent's peak (measured: a parent holding 1.5 GiB made an empty
    child report 1.48 GiB).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:  # not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def child_fit(args) -> dict:
    import anndata

    import spalstf

    start = time.perf_counter()
    sc = anndata.read_h5ad(args.ref)
    known, _ = split(sc.n_vars)
    genes = list(sc.var_names)
    model = spalstf.fit(sc, genes[:known], genes[known:], epochs=args.epochs, max_time=None,
                        patience=None, progress=False, seed=0)
    model.save(args.model, overwrite=True)
    steps = model.info.get("epochs_trained", 0)
    return {"seconds": time.perf_counter() - start, "peak_gib": _peak_gib(), "epochs": steps}


def child_impute(args) -> dict:
    import anndata

    import spalstf

    model = spalstf.load(args.model, device="cpu")
    start = time.perf_counter()
    options = {"progress": False, "n_steps": args.n_steps, "n_samples": args.n_samples}
    if args.expression_weight is not None:
        options["expression_weight"] = args.expression_weight
    if args.mode == "stream":
        st = anndata.read_h5ad(args.st, backed="r")
        model.impute(st, out=args.out, overwrite=True, **options)
    else:
        st = anndata.read_h5ad(args.st)
        result = model.impute(st, **options)
        assert result.n_obs == st.n_obs
    return {"seconds": time.perf_counter() - start, "peak_gib": _peak_gib()}


def child_flops(args) -> dict:
    """FLOPs of one imputed cell: network passes counted by torch, neighbour search by hand."""
    import anndata
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import spalstf

    model = spalstf.load(args.model, device="cpu")
    st = anndata.read_h5ad(args.st, backed="r")[:256].to_memory()
    counter = FlopCounterMode(display=False)
    with counter:
        model.impute(st, progress=False, n_steps=args.n_steps, n_samples=args.n_samples)
    network = counter.get_total_flops() / st.n_obs
    n_atlas = 0 if model.atlas is None else model.atlas.shape[0]
    # Matrix-product candidates (2 FLOPs per atlas cell and gene), once for the context and
    # once more for the aligned-neighbour estimate; the exact re-ranking of the candidates
    # (difference, square, add) is small beside them.
    searches = 1 + (model.config.knn_weight > 0)
    search = searches * 2.0 * n_atlas * len(model.known_genes)
    torch.set_num_threads(1)
    return {"network_flops": network, "search_flops": search}


def run_child(kind: str, **kwargs) -> dict:
    cmd = [sys.executable, __file__, f"_{kind}"]
    for k, v in kwargs.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the driver ---------------------------------------------------------------------------------
def _size(text: str) -> int:
    return int(float(text))


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in ("_fit", "_impute", "_flops"):
        p = argparse.ArgumentParser()
        for name in ("ref", "st", "model", "out", "mode"):
            p.add_argument(f"--{name}")
        for name in ("epochs", "n_steps", "n_samples"):
            p.add_argument(f"--{name.replace('_', '-')}", type=int)
        p.add_argument("--expression-weight", type=float)
        args = p.parse_args(argv[1:])
        print(json.dumps({"_fit": child_fit, "_impute": child_impute,
                          "_flops": child_flops}[argv[0]](args)))
        return 0

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--st-cells", nargs="+", type=_size, default=[10**4])
    p.add_argument("--ref-cells", nargs="+", type=_size, default=[10**4])
    p.add_argument("--genes", nargs="+", type=int, default=[50, 500])
    p.add_argument("--impute-ref", type=_size, default=None,
                   help="reference size of the model used for impute (default: the smallest)")
    p.add_argument("--modes", nargs="+", default=["stream"], choices=["stream", "memory"])
    p.add_argument("--epochs", type=int, default=1, help="training epochs per fit (1)")
    p.add_argument("--n-steps", type=int, default=5, help="sampling steps (default 5)")
    p.add_argument("--n-samples", type=int, default=4, help="samples per cell (default 4)")
    p.add_argument("--expression-weight", type=float, default=None,
                   help="impute's expression context weight (default: the model's, 0.5)")
    p.add_argument("--workdir", default="/tmp/spalstf_scale", help="simulated data and models")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scale"),
                   help="prefix of the .csv, .md and .png written")
    args = p.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    import torch

    threads = torch.get_num_threads()
    rows = []

    def show(row):
        rows.append(row)
        print(f"{row['step']:>7s} {row['mode']:>6s} ref {row['ref_cells']:>8d} st "
              f"{row['st_cells']:>8d} genes {row['genes']:>5d} ({row['known']}+{row['targets']}): "
              f"{row['seconds']:9.1f} s  {row['peak_gib']:6.2f} GiB", flush=True)

    impute_ref = args.impute_ref or min(args.ref_cells)
    for g in args.genes:
        known, targets = split(g)
        for r in sorted(set(args.ref_cells) | {impute_ref}):
            ref = work / f"ref_{r}_{g}.h5ad"
            if not ref.exists():
                make_reference(ref, r, g)
            model = work / f"model_{r}_{g}"
            res = run_child("fit", ref=ref, model=model, epochs=args.epochs)
            if r in args.ref_cells:
                show({"step": "fit", "mode": "sparse", "ref_cells": r, "st_cells": 0,
                      "genes": g, "known": known, "targets": targets, **res})
        model = work / f"model_{impute_ref}_{g}"
        for s in args.st_cells:
            st = work / f"st_{s}_{g}.h5ad"
            if not st.exists():
                make_st(st, s, g)
            for mode in args.modes:
                extra = ({} if args.expression_weight is None
                         else {"expression_weight": args.expression_weight})
                res = run_child("impute", st=st, model=model, out=work / "out.h5ad", mode=mode,
                                n_steps=args.n_steps, n_samples=args.n_samples, **extra)
                show({"step": "impute", "mode": mode, "ref_cells": impute_ref, "st_cells": s,
                      "genes": g, "known": known, "targets": targets, **res})
        flops = run_child("flops", st=work / f"st_{min(args.st_cells)}_{g}.h5ad", model=model,
                          n_steps=args.n_steps, n_samples=args.n_samples)
        for row in rows:
            if row["step"] == "impute" and row["genes"] == g:
                row.update(flops)
    report(rows, args, threads)
    return 0


def report(rows, args, threads) -> None:
    import pandas as pd

    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out.with_suffix(".csv"), index=False)
    lines = [f"# spalstf scale benchmark ({threads} CPU threads, {args.epochs} epoch(s), "
             f"{args.n_steps} steps x {args.n_samples} samples)", "",
             f"Command: `python benchmarks/scale.py {' '.join(sys.argv[1:])}`", "",
             "| step | mode | reference cells | ST cells | genes (known+targets) | wall s | "
             "peak GiB | s per 10^4 cells |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = r["st_cells"] if r["step"] == "impute" else r["ref_cells"]
        lines.append(f"| {r['step']} | {r['mode']} | {r['ref_cells']:,} | {r['st_cells']:,} | "
                     f"{r['genes']} ({r['known']}+{r['targets']}) | {r['seconds']:.1f} | "
                     f"{r['peak_gib']:.2f} | {1e4 * r['seconds'] / n:.1f} |")
    est = [r for r in rows if r["step"] == "impute" and "network_flops" in r]
    if est:
        lines += ["", "ESTIMATE (not measured) for one H100, from the FLOPs counted per cell: "
                  f"network in bf16 at {H100_EFFICIENCY:.0%} of {H100_BF16 / 1e12:.0f} TFLOP/s, "
                  f"neighbour search in fp32 at {H100_EFFICIENCY:.0%} of "
                  f"{H100_FP32 / 1e12:.0f} TFLOP/s.", "",
                  "The last column scales the network FLOPs to the default sampling (5 steps x "
                  "4 samples) by the number of denoiser passes.", "",
                  "| ST cells | genes | GFLOP per cell (network + search) | measured CPU s | "
                  "estimated H100 s | estimated H100 s, default sampling |",
                  "|---|---|---|---|---|---|"]
        passes = 20 / (args.n_steps * args.n_samples)  # the defaults: 5 steps x 4 samples
        for r in est:
            def gpu(scale, r=r):
                return r["st_cells"] * (
                    scale * r["network_flops"] / (H100_BF16 * H100_EFFICIENCY)
                    + r["search_flops"] / (H100_FP32 * H100_EFFICIENCY))
            lines.append(f"| {r['st_cells']:,} | {r['genes']} | "
                         f"{r['network_flops'] / 1e9:.3f} + {r['search_flops'] / 1e9:.3f} | "
                         f"{r['seconds']:.1f} | ~{gpu(1.0):.2g} | ~{gpu(passes):.2g} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(table, out.with_suffix(".png"))


def plot(table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for (step, mode, genes), part in table.groupby(["step", "mode", "genes"]):
        x = part["st_cells"] if step == "impute" else part["ref_cells"]
        label = f"{step} ({mode}), {genes} genes"
        axes[0].plot(x, part["seconds"], "o-", label=label)
        axes[1].plot(x, part["peak_gib"], "o-", label=label)
    for ax, what in zip(axes, ("wall time (s)", "peak resident memory (GiB)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("cells (ST for impute, reference for fit)")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
