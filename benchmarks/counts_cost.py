"""The cost of `layers["counts"]`'s expected counts at scale.

The learnt combination's `layers["counts"]` inverts `expected_at_depth`
(`spalstf.preprocess.expected_count_at_depth`). This times it, one thread, in the chunks of an
imputation (`spalstf.model.predict.STACK_CHUNK` cells; the table per distinct depth is made per
chunk), on the known-gene depths of a simulated ST and 200 target values per
cell, beside `expected_at_depth` (the stack's "at_depth" readout, which a default run computes
too) and the plain `counts_at_depth` (expm1(X) x depth / 1e4) on the same values; prints a table
and writes `benchmarks/results/counts_cost.{md,png}`.

    python benchmarks/counts_cost.py --st /tmp/spalstf_scale/st_100000_300.h5ad

The ST is one of `benchmarks/scale.py`'s (`--workdir`); without `--st` a 20,000-cell
simulation (`spalstf.datasets.simulate`, 300 known genes) is made here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import write_report  # noqa: E402

from spalstf.model.predict import STACK_CHUNK  # noqa: E402
from spalstf.preprocess import (  # noqa: E402
    counts_at_depth,
    expected_at_depth,
    expected_count_at_depth,
)

CHUNK = STACK_CHUNK  # the sink of an imputation converts one chunk at a time
TARGETS = 200


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--st", default=None, help="ST .h5ad of raw counts (its genes: the known)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "counts_cost"))
    args = p.parse_args(argv)
    import anndata as ad
    import torch

    torch.set_num_threads(1)
    if args.st:
        st = ad.read_h5ad(args.st)
    else:
        import spalstf

        st, _ = spalstf.datasets.simulate(n_st=20000, n_sc=2000, n_genes=300 + TARGETS,
                                          n_measured=300, seed=0)
    x = st.X
    depth = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
    # values as the stack predicts them: expected measurements of log-normal means
    mean = np.exp(np.random.default_rng(0).normal(-1.0, 2.0, (len(depth), TARGETS)))
    per_count = 1e4 / np.maximum(depth, 1.0)
    values = expected_at_depth(np.log1p(mean * per_count[:, None]), depth)
    rows = []
    for fn in (counts_at_depth, expected_at_depth, expected_count_at_depth):
        cpu = time.process_time()
        for start in range(0, len(depth), CHUNK):
            fn(values[start:start + CHUNK], depth[start:start + CHUNK])
        seconds = time.process_time() - cpu
        rows.append((fn.__name__, seconds, seconds / len(depth) * 1e6))
    back = expected_count_at_depth(values, depth)
    live = depth > 0
    rel = np.abs(back[live] - mean[live]) / mean[live]
    lines = ["# The cost of the expected counts (`layers[\"counts\"]`)", "",
             f"Command: `python benchmarks/counts_cost.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
             "", f"{len(depth):,} ST cells (known-gene depth median {np.median(depth):.0f}), "
             f"{TARGETS} values per cell, chunks of {CHUNK:,} cells, one thread; CPU seconds.",
             "", "| function | CPU s | CPU s per 10^6 cells |", "|---|---|---|"]
    lines += [f"| `{name}` | {s:.2f} | {per:.1f} |" for name, s, per in rows]
    lines += ["", f"Inversion error, |mean recovered - mean| / mean: median {np.median(rel):.1e}, "
              f"99th percentile {np.quantile(rel, 0.99):.1e}, largest {rel.max():.1e}."]
    def draw(ax) -> None:
        ax.barh([r[0] for r in rows], [r[2] for r in rows])
        ax.set_xlabel("CPU seconds per 10^6 cells x 200 values")

    write_report(args.out, "\n".join(lines) + "\n", draw, figsize=(6, 2.5))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
