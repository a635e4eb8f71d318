"""Accuracy check of the float32 profile searches of large STs (`FLOAT32_SEARCH_CELLS`).

Above `spalstf.prior.neighbours.FLOAT32_SEARCH_CELLS` ST cells the base predictors' profile
searches take the float32 path (`ProfileIndex._query_float32`: the same neighbours, certified,
ranked within the set by float32 distances). Large simulated runs take long, so this runs the
default imputation of smaller data twice, with the threshold as it is (float64 searches) and
lowered to 0 (float32 searches), and prints the largest difference of the outputs and the
median PCC of each against the simulation's truth, with the share of searches the float32
path could not certify (they take the float64 path).

    python benchmarks/float32_search.py                     # simulated, 6,000 ST cells
    python benchmarks/float32_search.py --st-cells 20000 --known 300
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--st-cells", type=int, default=6000)
    p.add_argument("--ref-cells", type=int, default=3000)
    p.add_argument("--known", type=int, default=150)
    p.add_argument("--targets", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import spalstf
    import spalstf.combine.columns as columns
    import spalstf.prior.neighbours as neighbours
    from spalstf.evaluate import metrics

    st, sc = spalstf.datasets.simulate(n_st=args.st_cells, n_sc=args.ref_cells,
                                       n_genes=args.known + args.targets,
                                       n_measured=args.known, seed=args.seed)
    truth = st.obsm.pop("truth")
    st.obsm.pop("unmeasured_counts", None)
    counted = {"queries": 0, "uncertified": 0}
    original = neighbours.ProfileIndex._query_float32

    def counting(self, queries, k):
        before = self.uncertified
        out = original(self, queries, k)
        counted["queries"] += len(queries)
        counted["uncertified"] += self.uncertified - before
        return out

    neighbours.ProfileIndex._query_float32 = counting
    results = {}
    for label, threshold in (("float64 searches", columns.FLOAT32_SEARCH_CELLS),
                             ("float32 searches", 0)):
        columns.FLOAT32_SEARCH_CELLS = threshold
        out = spalstf.impute(st, sc, seed=args.seed, progress=False)
        genes = [g for g in truth.columns if g in out.var_names]
        pred = out[:, genes].X
        results[label] = (pred, float(np.nanmedian(metrics.pcc(truth[genes].to_numpy(),
                                                               pred))))
    a, b = results["float64 searches"][0], results["float32 searches"][0]
    print(f"simulated: {args.st_cells:,} ST cells, {args.ref_cells:,} reference cells, "
          f"{args.known} known genes, {args.targets} targets, seed {args.seed}")
    print("| searches | median PCC vs truth |\n|---|---|")
    for label, (_, median) in results.items():
        print(f"| {label} | {median:.4f} |")
    print(f"largest difference of the outputs: {np.abs(a - b).max():.3g} (values up to "
          f"{np.abs(a).max():.3g}); outputs equal: {np.array_equal(a, b)}; float32 queries "
          f"{counted['queries']:,}, not certified (float64 path) {counted['uncertified']:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
