"""Time of the spot deconvolution (`spalstf.prior.deconvolve`) alone: fit on a reference, then
prepare and predict on ST cells, at 10^4 and 2x10^4 ST cells (linear in cells?), 300 known
genes, 200 targets, a 10^4-cell reference of 30 clusters (synthetic Poisson counts). One
torch thread. Prints the table and writes it to benchmarks/results/deconvolution_time.md.

    OMP_NUM_THREADS=1 python benchmarks/deconvolution_time.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spalstf._atomic import atomic_path  # noqa: E402
from spalstf.preprocess import Standardizer  # noqa: E402
from spalstf.prior import Reference, SpotDeconvolution  # noqa: E402


def lognorm(counts: np.ndarray) -> np.ndarray:
    return np.log1p(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) * 1e4)


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n_known, n_target, n_types = 300, 200, 30
    profiles = rng.dirichlet(np.full(n_known + n_target, 0.3), size=n_types)
    types = rng.integers(0, n_types, 10000)
    counts = rng.poisson(500 * profiles[types])
    known, target = lognorm(counts[:, :n_known]), np.log1p(counts[:, n_known:])
    scalers = (Standardizer.fit(known), Standardizer.fit(target))
    kz, tz = scalers[0].transform(known), scalers[1].transform(target)
    reference = Reference(kz, tz, scalers=scalers, atlas=np.concatenate([kz, tz], axis=1))
    start = time.perf_counter()
    predictor = SpotDeconvolution()
    predictor.fit(reference, seed=0)
    lines = ["# Time of the spot deconvolution alone", "",
             "Made by `OMP_NUM_THREADS=1 python benchmarks/deconvolution_time.py` on "
             f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores (shared: times under "
             f"load, load average {os.getloadavg()[0]:.1f}). One view; the stack reads up to "
             "three, and the self-check's two inner folds as many again.", "",
             f"Fit on 10^4 reference cells: {time.perf_counter() - start:.1f} s.", "",
             "| ST cells | prepare (s) | predict (s) | predict per 10^4 cells (s) |",
             "|---|---|---|---|"]
    for n in (10000, 20000):
        mix = rng.dirichlet(np.ones(n_types) * 0.3, size=n)
        st = lognorm(rng.poisson(200 * mix @ profiles[:, :n_known]))
        start = time.perf_counter()
        predictor.prepare(lambda st=st: (st[i:i + 4096] for i in range(0, len(st), 4096)))
        prepared = time.perf_counter()
        for i in range(0, n, 4096):
            predictor.predict(st[i:i + 4096])
        done = time.perf_counter()
        lines.append(f"| {n} | {prepared - start:.1f} | {done - prepared:.1f} | "
                     f"{(done - prepared) / n * 1e4:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    with atomic_path(Path(__file__).resolve().parent / "results"
                     / "deconvolution_time.md") as tmp:
        tmp.write_text(text)


if __name__ == "__main__":
    main()
