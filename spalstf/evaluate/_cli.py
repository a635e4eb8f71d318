"""``spalstf benchmark``: leave-genes-out cross-validation from the command line, and the
report helpers (Markdown table, per-gene box plot) shared with ``benchmarks/accuracy.py``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from spalstf._atomic import atomic_path

logger = logging.getLogger(__name__)

__all__ = ["add_parser", "run", "read_pair", "markdown_table", "plot_per_gene", "report_table"]

STAT_COLUMNS = ("pcc", "spcc", "ssim", "rmse", "js")


def read_pair(st: str, sc: str) -> tuple[ad.AnnData, ad.AnnData]:
    """Read the ST and reference given on the command line.

    ``st`` and ``sc`` are ``.h5ad`` files; or ``st`` is a folder in the Li et al. text layout
    (then ``sc`` may be the same folder or empty) or an RCTD pair folder (``SpatialRNA/`` and
    ``Reference/``); or ``st`` is a data set name of :func:`spalstf.datasets.load`
    (``data:osmfish``).
    """
    from spalstf.datasets import _loaders as L

    if st.startswith("data:"):
        return L.load(st[5:])
    p = Path(st)
    if p.is_dir():
        if (p / "Spatial_count.txt").is_file():
            return L.read_li_format(p)
        if (p / "SpatialRNA").is_dir() and (p / "Reference").is_dir():
            return L.read_rctd_pair(p)
        raise ValueError(
            f"--st {st!r} is a folder but neither the Li et al. layout (Spatial_count.txt) nor "
            "an RCTD pair (SpatialRNA/, Reference/)."
        )
    if not sc:
        raise ValueError("--sc is required when --st is an .h5ad file.")
    q = Path(sc)
    if q.is_dir():
        if not p.is_file():
            raise FileNotFoundError(f"--st {st!r}: no such file.")
        return ad.read_h5ad(p), L.read_rctd_csv(q)
    return L.read_h5ad_pair(p, q)


def report_table(table: pd.DataFrame) -> pd.DataFrame:
    """Methods x (median and mean of each metric, NaN count, AS, ARI, wall time)."""
    cols: dict[str, pd.Series] = {}
    for m in STAT_COLUMNS:
        cols[f"{m.upper()} median"] = table[f"{m}_median"]
    for m in STAT_COLUMNS:
        cols[f"{m.upper()} mean"] = table[f"{m}_mean"]
    cols["NaN PCC"] = table["pcc_n_nan"]
    for src, dst in (("AS", "AS"), ("ari", "ARI"), ("wall_time_s", "time (s)")):
        if src in table:
            cols[dst] = table[src]
    return pd.DataFrame(cols)


def markdown_table(df: pd.DataFrame, *, digits: int = 3, index_name: str = "method") -> str:
    """A GitHub Markdown table (no dependency on ``tabulate``). A "|" inside a cell (the
    stack's column names, ``ridge|spatial|expression``) is escaped, so it does not split the
    cell."""

    def text(v: object) -> str:
        return str(v).replace("|", "\\|")

    def fmt(v: object, integer: bool) -> str:
        if isinstance(v, (float, np.floating)) and np.isnan(v):
            return "n/a"
        if integer:
            return str(int(v))
        if isinstance(v, (float, np.floating)):
            return f"{v:.{digits}f}"
        return text(v)

    integer = [
        pd.api.types.is_integer_dtype(df[c]) or str(c).startswith("NaN") for c in df.columns
    ]
    head = [text(index_name)] + [text(c) for c in df.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for idx, row in zip(df.index, df.itertuples(index=False), strict=True):
        cells = [fmt(v, i) for v, i in zip(row, integer, strict=True)]
        lines.append("| " + " | ".join([text(idx)] + cells) + " |")
    return "\n".join(lines)


def plot_per_gene(
    per_gene: pd.DataFrame,
    path: str | Path,
    *,
    metrics: Sequence[str] = ("pcc", "ssim", "rmse", "js"),
    by: str = "dataset",
    truth: str = "lognorm",
) -> Path:
    """Box plots of the per-gene metrics, one panel per (``by`` value, metric), one box per
    method; NaN genes are left out of the boxes (their count is in the tables). The figure is
    written atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    df = per_gene[per_gene["truth"] == truth]
    groups = list(dict.fromkeys(df[by])) if by in df else [None]
    fig, axes = plt.subplots(
        len(groups), len(metrics), figsize=(3.2 * len(metrics), 2.6 * len(groups)), squeeze=False
    )
    for i, g in enumerate(groups):
        sub = df if g is None else df[df[by] == g]
        methods = list(dict.fromkeys(sub["method"]))
        for j, m in enumerate(metrics):
            ax = axes[i, j]
            data = [sub.loc[sub["method"] == meth, m].dropna().to_numpy() for meth in methods]
            ax.boxplot(data, showfliers=False)
            ax.set_xticks(range(1, len(methods) + 1), methods, rotation=45, fontsize=7)
            ax.set_title(f"{g} {m.upper()}" if g is not None else m.upper(), fontsize=9)
            ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:  # the temporary name has no suffix: say the format
        fig.savefig(tmp, dpi=90, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``benchmark`` subcommand; ``args.func(args)`` runs it."""
    p = subparsers.add_parser(
        "benchmark",
        help="leave-genes-out cross-validation of spalstf and baselines on your data",
        description=(
            "Hide each fold of the genes shared by the ST data and the reference, predict them "
            "with each method, and score the predictions per gene (PCC, SPCC, SSIM, RMSE, JS) "
            "against the measured ST (log-normalised and raw counts)."
        ),
    )
    p.add_argument(
        "--st",
        required=True,
        help="ST .h5ad (raw counts), a Li et al. text folder, an RCTD pair folder, "
        "or data:NAME for spalstf.datasets.load",
    )
    p.add_argument("--sc", default="", help="reference .h5ad (raw counts) or RCTD CSV folder")
    p.add_argument(
        "--methods",
        default="spalstf,spage,knn",
        help="comma-separated: mean, libsize, knn, spage, ridge, tangram, tangram_cells, gimvi, spalstf "
        "(default: %(default)s)",
    )
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--st-layer", default=None)
    p.add_argument("--sc-layer", default=None)
    p.add_argument("--epochs", type=int, default=None, help="spalstf training epochs (only with predictors including network)")
    p.add_argument("--max-time", type=float, default=None, help="spalstf training seconds/fold")
    p.add_argument("--no-clustering", action="store_true", help="skip the Leiden comparison")
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="DIR",
        help="save each method's fold predictions in DIR as they are made and load those "
        "already there, so that an interrupted run resumes where it stopped",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``spalstf benchmark``; returns the exit code."""
    from spalstf.evaluate.cv import cross_validate

    try:
        st, sc = read_pair(args.st, args.sc)
    except (OSError, ValueError, KeyError) as err:
        print(f"spalstf benchmark: cannot read the data: {err}")
        return 2
    opts: dict[str, dict] = {}
    sp_opts = {k: v for k, v in (("epochs", args.epochs), ("max_time", args.max_time)) if v}
    if sp_opts:
        opts["spalstf"] = sp_opts
    try:
        res = cross_validate(
            st,
            sc,
            n_folds=args.n_folds,
            seed=args.seed,
            methods=args.methods,
            st_layer=args.st_layer,
            sc_layer=args.sc_layer,
            method_options=opts,
            clustering=not args.no_clustering,
            checkpoint=args.checkpoint,
        )
    except (ValueError, KeyError, ImportError) as err:
        print(f"spalstf benchmark: {err}")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res.per_gene.to_csv(out / "per_gene.csv", index=False)
    res.summary.to_csv(out / "summary.csv")
    md = [
        f"# spalstf benchmark\n\nST {args.st!r}, reference {args.sc!r}; "
        f"{args.n_folds}-fold leave-genes-out, seed {args.seed}.\n"
    ]
    for truth, label in (("lognorm", "truth: ST log-normalised"), ("counts", "truth: raw counts")):
        md.append(f"\n## {label}\n\n" + markdown_table(report_table(res.summary.xs(truth))))
    (out / "summary.md").write_text("\n".join(md) + "\n")
    pg = res.per_gene.assign(dataset="")
    plot_per_gene(pg, out / "per_gene.png")
    print(markdown_table(report_table(res.summary.xs("lognorm"))))
    print(f"\nWrote {out / 'per_gene.csv'}, summary.csv, summary.md, per_gene.png")
    return 0
