"""How long an epoch of Tangram's map takes: Tangram's own loss against the baselines' form.

`spalstf.evaluate.baselines` runs Tangram's training without its entropy regulariser where
that term's weight is 0 (Tangram's default; `baselines._loss_without_unweighted_entropy`).
This times both on the real pairs, in cells mode as `tangram_cells` runs it (the reference's
cells x the ST's cells; the first of ten unshuffled gene folds hidden, as Li et al. split), alternating the two
forms `--repeats` times and keeping each one's fastest, and checks that the two maps are the
same to the bit. Prints a table and writes ``benchmarks/results/tangram_speed.{md,png}``.

    OMP_NUM_THREADS=1 python benchmarks/tangram_speed.py --epochs 30
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import write_report  # noqa: E402
from accuracy import load_set  # noqa: E402

from spalstf.evaluate import baselines as B  # noqa: E402
from spalstf.evaluate._cli import markdown_table  # noqa: E402
from spalstf.evaluate.cv import gene_folds  # noqa: E402

SETS = ("osmfish", "exseq_cortex", "starmap_cortex")


def time_set(name: str, epochs: int, repeats: int) -> dict:
    """Seconds per epoch of each form (the fastest of `repeats`), and whether the maps agree."""
    import tangram as tg
    import torch

    st, sc = load_set(name)
    shared = [g for g in st.var_names if g in set(sc.var_names)]
    held = gene_folds(shared, 10, shuffle=False)[0]
    known = [g for g in st.var_names if g not in set(held)]
    ad_sc, ad_sp, _ = B.tangram_cells_inputs(tg, st[:, known].copy(), sc, held)
    options = {"mode": "cells", "num_epochs": epochs, "density_prior": "rna_count_based"}

    def own() -> np.ndarray:  # Tangram's loss, seeded as _seeded_map seeds it
        np.random.seed(0)
        torch.manual_seed(0)
        return tg.map_cells_to_space(ad_sc, ad_sp, device="cpu", random_state=0,
                                     verbose=False, **options).X

    def ours() -> np.ndarray:
        return B._seeded_map(tg, ad_sc, ad_sp, seed=0, device="cpu", **options).X

    seconds: dict[str, list[float]] = {"own": [], "ours": []}
    maps: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        for form, run in (("own", own), ("ours", ours)):
            start = time.perf_counter()
            maps[form] = run()
            seconds[form].append((time.perf_counter() - start) / epochs)
    return {"data set": name, "map (cells x spots)": f"{ad_sc.n_obs:,} x {ad_sp.n_obs:,}",
            "Tangram's loss, s per epoch": min(seconds["own"]),
            "without the unweighted entropy, s per epoch": min(seconds["ours"]),
            "time saved": 1 - min(seconds["ours"]) / min(seconds["own"]),
            "same map": bool(np.array_equal(maps["own"], maps["ours"]))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default=",".join(SETS))
    p.add_argument("--epochs", type=int, default=30, help="epochs per timed map")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tangram_speed"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    table = pd.DataFrame([time_set(s, args.epochs, args.repeats)
                          for s in args.datasets.split(",")]).set_index("data set")
    lines = ["# Tangram's map: seconds per epoch", "",
             f"Command: `python benchmarks/tangram_speed.py "
             f"{' '.join(sys.argv[1:] if argv is None else argv)}` "
             f"({torch.get_num_threads()} torch thread(s); each form's fastest of "
             f"{args.repeats}, alternating; wall time, so other jobs on the machine inflate "
             "both forms alike).", "",
             markdown_table(table.round(3), index_name="data set")]
    def draw(ax) -> None:
        table[["Tangram's loss, s per epoch", "without the unweighted entropy, s per epoch"]] \
            .plot.bar(ax=ax, rot=0)
        ax.set_ylabel("seconds per epoch")
        ax.legend(fontsize=8)

    write_report(args.out, "\n".join(lines) + "\n", draw)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
