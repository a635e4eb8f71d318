"""Ablation: each part of SpaLSTF off in turn, the sampling steps and samples, the self-check.

On the first fold of the 5-fold leave-genes-out split (KFold shuffle, random_state 0, as in
``benchmarks/accuracy.py``) of each data set: the held-out genes are removed from the ST, each
configuration imputes them through ``spalstf.impute`` and is scored against the ST's
log-normalised truth (median per-gene PCC and SPCC). Rows:

- ``default``: the defaults a user gets (self-check choosing the spatial context's weight,
  the aligned-neighbour estimate's weight in the prior and how much of the diffusion's
  refinement to keep; the expression context at 0.5), the same without that estimate
  (``knn_weight=0``, kept), and without the expression context (``expression_weight=0``);
- ``diffusion whole``: the self-check off, the diffusion's refinement kept whole
  (``residual_weight=1``), no spatial or expression context, no aligned-neighbour estimate:
  the method's own prediction;
- then, from ``diffusion whole``, one part off at a time (the diffusion itself, the XCA blocks,
  the BiLSTM context, the variational-bound and KL terms), and other
  sampling steps and samples; and the priors alone (ridge; ridge + aligned neighbours).

Writes ``benchmarks/results/ablation.md`` and ``ablation.png``.

    .venv/bin/python benchmarks/ablation.py                          # osmfish and visium_brain
    .venv/bin/python benchmarks/ablation.py --datasets visium_brain --rows default,no-xca
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import spalstf  # noqa: E402
from spalstf._atomic import atomic_path  # noqa: E402
from spalstf.cli.commands import format_weights  # noqa: E402
from spalstf.config import DEFAULT_PREDICTORS  # noqa: E402
from spalstf.evaluate import metrics  # noqa: E402
from spalstf.evaluate.cv import gene_folds  # noqa: E402
from spalstf.prior import AlignedNeighbours, ReferenceNeighbours  # noqa: E402

#: The default predictors and the diffusion network (the predictor names are the package's:
#: `spalstf.config.DEFAULT_PREDICTORS`), and the neighbour averages among them.
WITH_NETWORK = (*DEFAULT_PREDICTORS, "network")
NEIGHBOURS = (AlignedNeighbours.name, ReferenceNeighbours.name)
WHOLE = dict(self_check=False, residual_weight=1.0, spatial_weight=0.0, expression_weight=0.0,
             knn_weight=0.0)
#: name -> (description, options of spalstf.impute)
ROWS = {
    "default": ("defaults (the self-check learns the stack's weights)", {}),
    "no-network": ("defaults without the network's column", {"predictors": [
        p for p in WITH_NETWORK if p != "network"]}),
    "no-knn": ("defaults without the neighbour columns (aligned, knn)",
               {"predictors": [p for p in WITH_NETWORK if p not in NEIGHBOURS]}),
    "no-expression": ("defaults without the expression context (expression_weight 0)",
                      {"expression_weight": 0.0}),
    "whole": ("diffusion whole: no self-check, residual_weight 1, no spatial or expression "
              "context", WHOLE),
    "no-diffusion": ("- diffusion (direct regression by the same network)",
                     {**WHOLE, "diffusion": False}),
    "no-xca": ("- XCA attention (MLP blocks only)", {**WHOLE, "use_xca": False}),
    "no-context": ("- BiLSTM context", {**WHOLE, "use_context": False}),
    "no-vlb-kl": ("- variational bound and KL terms (MSE only)",
                  {**WHOLE, "vlb_weight": 0.0, "kl_weight": 0.0}),
    "steps2": ("2 DDIM steps (default 5)", {**WHOLE, "n_steps": 2}),
    "steps10": ("10 DDIM steps", {**WHOLE, "n_steps": 10}),
    "samples1": ("1 sample (default 4)", {**WHOLE, "n_samples": 1}),
    "samples8": ("8 samples", {**WHOLE, "n_samples": 8}),
    "prior-only": ("the ridge prior alone (residual_weight 0, no spatial or expression context)",
                   {**WHOLE, "residual_weight": 0.0}),
    "knn-prior": ("the blended prior alone: ridge + aligned neighbours (knn_weight 0.5)",
                  {**WHOLE, "residual_weight": 0.0, "knn_weight": 0.5}),
}


def load(name: str):
    if name == "simulated":
        return spalstf.datasets.simulate(n_st=1000, n_sc=1500, n_genes=120, n_measured=60,
                                         seed=0)
    return spalstf.datasets.load(name)


def run(name: str, rows: list[str]) -> pd.DataFrame:
    st, sc = load(name)
    shared = [g for g in st.var_names if g in set(sc.var_names)]
    st = st[:, shared].copy()
    hidden = gene_folds(shared, 5, 0)[0]
    counts = st.X.toarray() if hasattr(st.X, "toarray") else np.asarray(st.X)
    truth = np.log1p(counts / np.clip(counts.sum(1, keepdims=True), 1e-12, None) * 1e4)
    truth = truth[:, [shared.index(g) for g in hidden]]
    st_known = st[:, [g for g in shared if g not in hidden]].copy()
    out = []
    for row in rows:
        label, opts = ROWS[row]
        start = time.perf_counter()
        res = spalstf.impute(st_known, sc, hidden, seed=0, progress=False, **opts)
        seconds = time.perf_counter() - start
        pred = np.asarray(res[:, hidden].X, dtype=np.float64)
        pcc, spcc = metrics.pcc(truth, pred), metrics.spcc(truth, pred)
        check = res.uns["spalstf"].get("self_check", {})
        out.append({"data": name, "row": row, "configuration": label,
                    "pcc": float(np.nanmedian(pcc)), "spcc": float(np.nanmedian(spcc)),
                    "weights": format_weights(check.get("weights", {}), top=3),
                    "seconds": seconds})
        print(f"{name:13s} {row:13s} PCC {out[-1]['pcc']:.3f} SPCC {out[-1]['spcc']:.3f} "
              f"{seconds:6.0f} s {out[-1]['weights']}", flush=True)
    return pd.DataFrame(out)


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(table["data"]))
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4.5), squeeze=False)
    for ax, name in zip(axes[0], sets, strict=True):
        part = table[table["data"] == name]
        ax.barh(part["row"], part["pcc"], color="tab:blue")
        ax.invert_yaxis()
        ax.set_title(f"{name}: fold 1, median PCC")
        ax.set_xlabel("median per-gene PCC")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="osmfish,visium_brain")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--name", default="ablation")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    rows = args.rows.split(",")
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    table = pd.concat([run(name, rows) for name in args.datasets.split(",")])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# Ablation (fold 1 of 5, leave-genes-out), spalstf {spalstf.__version__}", "",
             f"`{' '.join(['.venv/bin/python', 'benchmarks/ablation.py'] + (argv or sys.argv[1:]))}`"
             f" on {platform.machine()}, {os.cpu_count()} CPU cores, "
             f"{torch.get_num_threads()} torch thread(s).", ""]
    for name, part in table.groupby("data", sort=False):
        lines += [f"## {name}", "", "| configuration | median PCC | median SPCC | largest weights | "
                  "seconds |", "|---|---|---|---|---|"]
        lines += [f"| {r.configuration} | {r.pcc:.3f} | {r.spcc:.3f} | {r.weights} | "
                  f"{r.seconds:.0f} |" for r in part.itertuples()]
        lines.append("")
    with atomic_path(out / f"{args.name}.md") as tmp:
        tmp.write_text("\n".join(lines))
    plot(table, out / f"{args.name}.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
