"""How close is the self-check's estimate to the real leave-genes-out accuracy?

For each data set, in each fold of the 5-fold leave-genes-out split used by
``benchmarks/accuracy.py`` (KFold shuffle, random_state 0), the self-check runs as
``spalstf.impute`` runs it: on the ST without the fold's genes, an inner leave-genes-out over
the remaining known genes with the default settings and selection. Its estimate (median PCC
over the hidden known genes) is set beside the real median PCC of spalstf on the fold's genes,
read from ``benchmarks/results/accuracy_per_gene.csv`` (run ``benchmarks/accuracy.py`` first).

Writes ``benchmarks/results/selfcheck.md`` and ``selfcheck.png``.

    .venv/bin/python benchmarks/selfcheck.py --datasets osmfish,visium_brain,simulated
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

from accuracy import simulated  # noqa: E402

import spalstf  # noqa: E402
from spalstf import selfcheck  # noqa: E402
from spalstf.cli import format_settings  # noqa: E402
from spalstf.data import as_expression  # noqa: E402
from spalstf.evaluate.cv import gene_folds  # noqa: E402
from spalstf.model import fit_model  # noqa: E402


def run(name: str, real: pd.DataFrame) -> pd.DataFrame:
    st, sc = simulated() if name == "simulated" else spalstf.datasets.load(name)
    shared = [g for g in st.var_names if g in set(sc.var_names)]
    sc_expr = as_expression(sc, arg="sc")
    cfg = spalstf.Config()
    rows = []
    for fold, hidden in enumerate(gene_folds(shared, 5, 0)):
        known = [g for g in shared if g not in hidden]
        st_expr = as_expression(st[:, known], arg="st")
        start = time.perf_counter()
        est = selfcheck.maybe_run(
            st_expr, sc_expr, [(g, g) for g in known], cfg, self_check=True, select="auto",
            n_folds=2, seed=0, log_normalized=False, device=torch.device("cpu"),
            spatial=None, progress=False, fit=fit_model)
        part = real[(real["dataset"] == name) & (real["fold"] == fold)]
        rows.append({"data": name, "fold": fold + 1, "known genes": len(known),
                     "estimate": est.median_pcc, "real": float(np.nanmedian(part["pcc"])),
                     "real genes": len(part), "calibration r": est.calibration.get("r"),
                     "selected": format_settings(est.selected),
                     "seconds": time.perf_counter() - start})
        r = rows[-1]
        print(f"{name} fold {r['fold']}: estimate {r['estimate']:.3f}, real {r['real']:.3f} "
              f"({r['selected']}; {r['seconds']:.0f} s)", flush=True)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="osmfish,visium_brain,simulated")
    ap.add_argument("--real", default=str(ROOT / "benchmarks/results/accuracy_per_gene.csv"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    real = pd.read_csv(args.real)
    real = real[(real["truth"] == "lognorm") & (real["method"] == "spalstf")]
    table = pd.concat([run(n, real) for n in args.datasets.split(",")], ignore_index=True)
    table["error"] = table["estimate"] - table["real"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = " ".join([".venv/bin/python benchmarks/selfcheck.py"] + (argv or sys.argv[1:]))
    lines = ["# Self-check estimate vs real leave-genes-out accuracy", "",
             f"`{cmd}` on {platform.machine()}, {os.cpu_count()} CPU cores, "
             f"{torch.get_num_threads()} torch thread(s); real = spalstf's "
             "median per-gene PCC on the fold's held-out genes in `accuracy_per_gene.csv`.", "",
             "calibration r: correlation, over the hidden known genes, of each gene's "
             "predictability in the reference with its PCC on the ST (what the per-gene "
             "`expected_pcc` rests on).", "",
             "| data | fold | known genes | self-check estimate | real | error | selected | "
             "calibration r |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.data} | {r.fold} | {r._3} | {r.estimate:.3f} | {r.real:.3f} | "
              f"{r.error:+.3f} | {r.selected} | {r._7:.2f} |" for r in table.itertuples()]
    lines += ["", "| data | mean estimate | mean real | mean error | mean abs. error |",
              "|---|---|---|---|---|"]
    for name, part in table.groupby("data", sort=False):
        lines.append(f"| {name} | {part['estimate'].mean():.3f} | {part['real'].mean():.3f} | "
                     f"{part['error'].mean():+.3f} | {part['error'].abs().mean():.3f} |")
    (out / "selfcheck.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, part in table.groupby("data", sort=False):
        ax.scatter(part["real"], part["estimate"], label=name)
    lo = min(table["real"].min(), table["estimate"].min()) - 0.05
    hi = max(table["real"].max(), table["estimate"].max()) + 0.05
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1)
    ax.set_xlabel("real median PCC (fold's held-out genes)")
    ax.set_ylabel("self-check estimate")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "selfcheck.png", dpi=120)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
