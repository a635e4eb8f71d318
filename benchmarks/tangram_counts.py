"""Which counts the project's Tangram is scored by under Li et al. 2022's protocol.

`spalstf.evaluate.baselines.tangram` (clusters mode, log-normalised inputs) predicts with
Tangram's ``project_genes``: the sum of the log-normalised profiles of the reference cells
mapped to each spot, not a log-normalised value. The ``"li2022"`` protocol scores counts, and
that sum can be turned into counts three ways; this scores all three on the same maps, on Li et
al.'s ten unshuffled gene folds, per-gene Pearson against the ST's raw counts:

- ``expm1 of the sum``: the sum read as a log-normalised value, ``expm1(sum) x L / 1e4``
  (`spalstf.evaluate.cv.expected_counts`; what the protocol did before the method returned its
  own counts);
- ``mean at depth``: the sum divided by the number of reference cells mapped to the spot (their
  mean profile, a log-normalised value) and turned into counts the same way: the method's own
  counts, which the protocol scores;
- ``the sum as is``: the projection itself against the counts, as Li et al.'s code scores
  Tangram's output.

``L`` is the cell's total over the fold's known genes. The sum's and the mean's Pearson against
the log-normalised truth are printed beside them. Prints a table and writes
``benchmarks/results/tangram_counts.{md,png}``.

    OMP_NUM_THREADS=1 python benchmarks/tangram_counts.py --checkpoint /tmp/ckpt

``--checkpoint`` is `spalstf.cross_validate`'s: Tangram's folds saved there (by this script or
by ``benchmarks/accuracy.py --protocol li2022 --checkpoint`` on the same data) are loaded,
not made again.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import write_report  # noqa: E402
from accuracy import load_set  # noqa: E402

from spalstf._atomic import atomic_path  # noqa: E402
from spalstf.evaluate._cli import markdown_table  # noqa: E402
from spalstf.evaluate.baselines import lognormalize  # noqa: E402
from spalstf.evaluate.cv import cross_validate, expected_counts  # noqa: E402
from spalstf.evaluate.metrics import pcc  # noqa: E402

#: The sets of ../shared/data that are in Li et al.'s benchmark.
SETS = ("osmfish", "exseq_cortex", "starmap_cortex")
FORMS = ("expm1 of the sum", "mean at depth", "the sum as is")


def score_set(name: str, checkpoint: str | None) -> pd.DataFrame:
    """Per gene: Pearson of each counts form against the raw counts, and of the sum and the
    mean against the log-normalised truth."""
    st, sc = load_set(name)
    cv = cross_validate(st, sc, methods=["tangram"], protocol="li2022", clustering=False,
                        checkpoint=None if checkpoint is None
                        else Path(checkpoint) / "li2022" / name)  # accuracy.py's layout
    shared = list(cv.predictions["tangram"].columns)
    x = st[:, shared].X
    counts = (x.toarray() if hasattr(x, "toarray") else np.asarray(x)).astype(np.float64)
    truth_ln = lognormalize(counts, counts.sum(axis=1))
    projection = cv.predictions["tangram"].to_numpy(np.float64)
    own = cv.counts_predictions["tangram"].to_numpy(np.float64)
    parts = []
    for fold, held in enumerate(cv.folds):
        idx = [shared.index(g) for g in held]
        depth = np.delete(counts, idx, axis=1).sum(axis=1)
        forms = (expected_counts(projection[:, idx], depth), own[:, idx], projection[:, idx])
        part = pd.DataFrame({"dataset": name, "fold": fold, "gene": held})
        for form, values in zip(FORMS, forms, strict=True):
            part[form] = pcc(counts[:, idx], values)
        part["sum, log-normalised truth"] = pcc(truth_ln[:, idx], projection[:, idx])
        # the mean's log-normalised value, recovered from its counts
        part["mean, log-normalised truth"] = pcc(truth_ln[:, idx],
                                                 lognormalize(own[:, idx], depth))
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default=",".join(SETS))
    p.add_argument("--checkpoint", default=None, help="cross_validate's checkpoint folder")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tangram_counts"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    per_gene = pd.concat([score_set(s, args.checkpoint) for s in args.datasets.split(",")],
                         ignore_index=True)
    columns = list(FORMS) + ["sum, log-normalised truth", "mean, log-normalised truth"]
    table = per_gene.groupby("dataset", sort=False)[columns].median()
    lines = ["# The project's Tangram under Li et al.'s protocol: which counts", "",
             f"Command: `python benchmarks/tangram_counts.py "
             f"{' '.join(sys.argv[1:] if argv is None else argv)}`", "",
             "Median over genes of the per-gene Pearson, ten unshuffled gene folds; the first "
             "three against the raw counts, the last two against the log-normalised truth. "
             "`mean at depth` is what `protocol=\"li2022\"` scores.", "",
             markdown_table(table, index_name="data set")]
    out = Path(args.out)
    with atomic_path(out.parent / (out.name + "_per_gene.csv")) as tmp:
        per_gene.to_csv(tmp, index=False)

    def draw(ax) -> None:
        table[list(FORMS)].plot.bar(ax=ax, rot=0)
        ax.set_ylabel("median PCC against raw counts")
        ax.legend(fontsize=8)

    write_report(out, "\n".join(lines) + "\n", draw, figsize=(7, 3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
