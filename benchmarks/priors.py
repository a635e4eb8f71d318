"""Priors benchmark: what the prior alone reaches, and how well the self-check's choice transfers.

spalstf's imputation is centred on a prior: a ridge map from the known to the target genes
fitted on the reference (penalty by GCV, `spalstf.prior.fit_prior`), optionally blended with
the aligned-neighbour estimate (`knn_weight`; mean targets of the 50 most cosine-similar
reference cells, known genes z-scored within each data set) and read from spatially smoothed
known genes (`spatial_weight`; 8 nearest cells in space), mixed with those of their 15 nearest
ST cells in known-gene space (`expression_weight`, 0.5). This script re-implements these
priors in numpy (no network, no sampling: seconds per data set) to compare, on the 5-fold
leave-genes-out protocol of ``benchmarks/accuracy.py``:

- every fixed setting (spatial weight x knn weight), for these forms of the reference: the
  library's default, its cells plus pseudo-spots ("cells + mixtures": sums of 2, 5, 10 and 20
  random cells, 2000 of each for the ridge and 500 for the estimate,
  `spalstf.prior.pseudo_spots`), with the expression context and without it (the default
  before it; every other form has it); its cells alone
  (the default before pseudo-spots); pseudo-spots of 10 alone (as a Visium spot mixes cells);
  metacells (each cell summed with its 14 nearest reference cells in known-gene space); and
  one other output: "depth-aware", the library's ``output="at_depth"``
  (``spalstf.preprocess.expected_at_depth``: the prediction read as a share of the ST cell's
  known-gene total, returned as the expected log-normalised value of a Poisson count at that
  total: what the ST would measure there, zeros included), of the default form and of the
  cells alone;
- selection policies: the setting chosen, per outer fold, by an inner leave-genes-out over
  the outer fold's known genes (2 folds by default, as ``spalstf.selfcheck`` does; see
  ``--inner-folds``), among a set of candidates (spatial weights up to 0.5 unless said).
  The default of ``spalstf.selfcheck`` is "choose sw x kw x depth weight": the spatial and
  knn weights and the share of the depth-aware output (``Config.depth_weight``: 0, 0.25,
  0.5, 0.75 or 1, blending the default form's output with its depth-aware one) together by
  the median; the same without the expression context shows what it adds. The rule before
  it, "choose sw x kw, then depth-aware by genes" (the spatial and knn weights by the
  median, then "depth-aware" at that setting only where it predicts most inner hidden genes
  better, ``spalstf.selfcheck.OUTPUT_WIN_SHARE``), and the same on the cells alone, are
  beside them.

Scored as the accuracy benchmark scores: median over genes of the per-gene Pearson
correlation with the ST's log-normalised truth, and the ARI of Leiden clusters of the imputed
matrix (every gene imputed while hidden) against those of the measured one. Writes
``benchmarks/results/priors.md`` and ``priors.png``.

    .venv/bin/python benchmarks/priors.py
    .venv/bin/python benchmarks/priors.py --datasets visium_brain
    .venv/bin/python benchmarks/priors.py --inner-folds 5 --out benchmarks/results/priors_inner5
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spalstf.config import Config  # noqa: E402
from spalstf.datasets import _loaders as L  # noqa: E402
from spalstf.evaluate import metrics  # noqa: E402
from spalstf.evaluate.baselines import lognormalize  # noqa: E402
from spalstf.evaluate.cv import gene_folds  # noqa: E402
from spalstf.preprocess import expected_at_depth  # noqa: E402
from spalstf.prior import (  # noqa: E402
    ESTIMATE_MIXTURES_PER_SIZE,
    MIXTURE_SIZES,
    MIXTURES_PER_SIZE,
    fit_ridge,
    unit_rows,
)
from spalstf.selfcheck import (  # noqa: E402
    DEFAULT_SELECT,
    OUTPUT_WIN_SHARE,
    inner_folds,
    win_share,
)
from spalstf.spatial import expression_smoothed_reader  # noqa: E402

DATA = ROOT / ".." / "shared" / "data"
SPATIAL_WEIGHTS = (0.0, 0.25, 0.5, 0.75)
KNN_WEIGHTS = (0.0, 0.5)
#: The library's default form: the ridge fitted on the reference cells and on pseudo-spots of
#: 2, 5, 10 and 20 cells (`spalstf.prior.MIXTURE_SIZES`, `Config.prior_mixtures`); the
#: aligned-neighbour estimate reads the cells and pseudo-spots; the ST's known genes are mixed
#: with their expression neighbours' (`Config.expression_weight`).
DEFAULT_FORM = "cells + mixtures"
#: The default form without the expression context (the default before it).
NO_EXPRESSION = "cells + mixtures, no expression context"
EXPRESSION_WEIGHT = Config().expression_weight
#: name -> (form of the reference, cells summed per training profile, expression weight)
FORMS = {DEFAULT_FORM: ("mixtures", 1, EXPRESSION_WEIGHT),
         NO_EXPRESSION: ("mixtures", 1, 0.0),
         "cells": ("cells", 1, EXPRESSION_WEIGHT),
         "pseudo-spots of 10": ("spot", 10, EXPRESSION_WEIGHT),
         "metacells of 15": ("meta", 15, EXPRESSION_WEIGHT),
         "depth-aware": ("mixtures", 1, EXPRESSION_WEIGHT),
         "depth-aware, no expression context": ("mixtures", 1, 0.0),
         "depth-aware, cells": ("cells", 1, EXPRESSION_WEIGHT)}
#: Blends of a form's output with its depth-aware output (`Config.depth_weight`): base form
#: -> (its depth-aware form, the blends' names by weight). Weight 0 is the base, 1 the
#: depth-aware form.
DEPTH_WEIGHTS = DEFAULT_SELECT["depth_weight"]
BLENDS = {base: (aware, {w: f"{base}, depth weight {w:g}" for w in DEPTH_WEIGHTS if 0 < w < 1})
          for base, aware in ((DEFAULT_FORM, "depth-aware"),
                              (NO_EXPRESSION, "depth-aware, no expression context"))}


def depth_family(base: str) -> set[str]:
    """A form, its depth-aware form and the blends of the two."""
    aware, blends = BLENDS[base]
    return {base, aware, *blends.values()}


#: name -> which candidates (form, spatial weight, knn weight) the inner check chooses among
POLICIES = {
    "choose sw x kw x depth weight (default)":
        lambda c: c[0] in depth_family(DEFAULT_FORM) and c[1] <= 0.5,
    "the same, without the expression context":
        lambda c: c[0] in depth_family(NO_EXPRESSION) and c[1] <= 0.5,
    "fixed: sw 0, kw 0.5": lambda c: c == (DEFAULT_FORM, 0.0, 0.5),
    "choose sw (kw 0.5)": lambda c: c[0] == DEFAULT_FORM and c[1] <= 0.5 and c[2] == 0.5,
    "choose sw to 0.75 (kw 0.5)": lambda c: c[0] == DEFAULT_FORM and c[2] == 0.5,
    "choose sw x kw": lambda c: c[0] == DEFAULT_FORM and c[1] <= 0.5,
    "choose sw x kw x form": lambda c: (c[1] <= 0.5 and not c[0].startswith("depth-aware")
                                        and "depth weight" not in c[0]),
    "choose sw x kw x depth-aware": lambda c: c[1] <= 0.5 and c[0] in (DEFAULT_FORM,
                                                                       "depth-aware"),
}
#: The self-check's rule before the depth weight (still what it does when offered both
#: outputs, `select={"output": [...]}`): "choose sw x kw", then "depth-aware" at that setting
#: only if it predicts more than OUTPUT_WIN_SHARE of the inner hidden genes better. The same
#: rule on the reference cells alone (the default before pseudo-spots) for comparison.
RULES = {"choose sw x kw, then depth-aware by genes (the rule before)": (DEFAULT_FORM,
                                                                          "depth-aware"),
         "the same, reference cells only (no pseudo-spots)": ("cells", "depth-aware, cells")}


#: The simulated data set at the accuracy benchmark's size (`benchmarks/accuracy.py`).
SIMULATED = dict(n_st=1000, n_sc=1500, n_genes=120, n_measured=60, seed=0)


def load(name: str):
    if name == "simulated":
        from spalstf.datasets import simulate

        return simulate(**SIMULATED)
    return L.load(name, data_dir=DATA)


def counts(adata, genes) -> np.ndarray:
    x = adata[:, list(genes)].X
    return (x.toarray() if sp.issparse(x) else np.asarray(x)).astype(np.float64)


def zscore(x: np.ndarray):
    mu, sd = x.mean(0), x.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    return (x - mu) / sd, mu, sd


def mixtures(sc_counts: np.ndarray, per_size: int = MIXTURES_PER_SIZE, seed: int = 4
             ) -> np.ndarray:
    """Pseudo-spots like the library's (`spalstf.prior.pseudo_spots`): for each size in
    MIXTURE_SIZES, `per_size` sums of the counts of that many random cells."""
    rng = np.random.default_rng(seed)
    return np.concatenate([sc_counts[rng.integers(0, len(sc_counts), (per_size, m))].sum(1)
                           for m in MIXTURE_SIZES])


def reference_form(sc_counts: np.ndarray, known_cols: list[int], form: str, m: int,
                   seed: int = 0) -> np.ndarray:
    """The reference's count profiles in the given form (rows: training profiles)."""
    if m == 1:
        return sc_counts
    if form == "spot":
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(sc_counts), size=(max(4000, len(sc_counts)), m))
    else:
        from sklearn.neighbors import NearestNeighbors

        k = sc_counts[:, known_cols]
        kz = zscore(lognormalize(k, k.sum(1)))[0]
        idx = NearestNeighbors(n_neighbors=m).fit(kz).kneighbors(kz, return_distance=False)
    return sc_counts[idx].sum(1)


def read_as_spalstf(st_log: np.ndarray, neighbours: np.ndarray | None, spatial_weight: float,
                    expression_weight: float) -> np.ndarray:
    """The ST's log-normalised known genes as the library reads them: mixed with the mean of
    their spatial neighbours (`spatial_weight`), then with that of their expression
    neighbours (`expression_weight`; `spalstf.spatial.expression_smoothed_reader`)."""
    x = st_log
    if spatial_weight > 0:
        x = (1 - spatial_weight) * st_log + spatial_weight * st_log[neighbours].mean(1)
    return expression_smoothed_reader(lambda rows: st_log[rows], lambda rows: x[rows], len(x),
                                      Config().expression_neighbors,
                                      expression_weight)(np.arange(len(x)))


def priors(st_known: np.ndarray, ref: np.ndarray, n_known: int, neighbours: np.ndarray | None,
           extra: np.ndarray | None = None, estimate_extra: np.ndarray | None = None,
           expression_weight: float = 0.0) -> dict[tuple[float, float], np.ndarray]:
    """Log-normalised predictions of the hidden genes per (spatial weight, knn weight).

    `extra`: more count profiles (pseudo-spots) the ridge is fitted on, besides `ref`;
    `estimate_extra`: those the aligned-neighbour estimate reads besides `ref`;
    `expression_weight`: the ST's (spatially smoothed) known genes are mixed with those of
    their expression neighbours, as the library does (`spalstf.spatial`).
    """
    def log_profiles(rows):
        rows = rows[rows[:, :n_known].sum(1) > 0]
        lib = rows[:, :n_known].sum(1)
        return lognormalize(rows[:, :n_known], lib), lognormalize(rows[:, n_known:], lib)

    ref_known, ref_target = log_profiles(ref)
    fit_known, fit_target = ref_known, ref_target
    if extra is not None:
        more_known, more_target = log_profiles(extra)
        fit_known = np.concatenate([ref_known, more_known])
        fit_target = np.concatenate([ref_target, more_target])
    xz, mu, sd = zscore(fit_known)
    yz, ymu, ysd = zscore(fit_target)
    weights = fit_ridge(xz, yz, None)  # GCV penalty, as the model's prior
    if estimate_extra is not None:
        more_known, more_target = log_profiles(estimate_extra)
        ref_known = np.concatenate([ref_known, more_known])
        ref_target = np.concatenate([ref_target, more_target])
    atlas = unit_rows(zscore(ref_known)[0])
    k = min(50, len(atlas))
    st_log = lognormalize(st_known, st_known.sum(1))
    out = {}
    for sw in SPATIAL_WEIGHTS:
        if sw > 0 and neighbours is None:
            continue
        x = read_as_spalstf(st_log, neighbours, sw, expression_weight)
        ridge = ((x - mu) / sd) @ weights * ysd + ymu
        sim = unit_rows(zscore(x)[0]) @ atlas.T
        idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        knn = ref_target[idx].mean(1)
        for kw in KNN_WEIGHTS:
            out[(sw, kw)] = np.clip((1 - kw) * ridge + kw * knn, 0, None)
    return out


def all_candidates(st, sc_counts, sc_genes, known, hidden, neighbours):
    cols = [sc_genes.index(g) for g in known] + [sc_genes.index(g) for g in hidden]
    out = {}
    st_known = counts(st, known)
    computed = {}  # a depth-aware form reads the same prior as its base form: fitted once
    for form_name, (form, m, expression_weight) in FORMS.items():
        if (form, m, expression_weight) not in computed:
            ref = reference_form(sc_counts[:, cols], list(range(len(known))), form, m)
            extra = estimate_extra = None
            if form == "mixtures":
                extra = mixtures(ref)
                estimate_extra = mixtures(ref, ESTIMATE_MIXTURES_PER_SIZE, 5)
            computed[form, m, expression_weight] = priors(
                st_known, ref, len(known), neighbours, extra, estimate_extra, expression_weight)
        for (sw, kw), pred in computed[form, m, expression_weight].items():
            out[(form_name, sw, kw)] = (expected_at_depth(pred, st_known.sum(1))
                                        if form_name.startswith("depth-aware") else pred)
    for base, (aware, blends) in BLENDS.items():
        for (form_name, sw, kw), pred in list(out.items()):
            if form_name == base:
                for w, name in blends.items():
                    out[(name, sw, kw)] = (1 - w) * pred + w * out[(aware, sw, kw)]
    return out


def truth_of(st, genes, hidden) -> np.ndarray:
    return lognormalize(counts(st, hidden), counts(st, genes).sum(1))


def run(name: str, n_inner: int = 2) -> pd.DataFrame:
    st, sc = load(name)
    shared = [g for g in st.var_names if g in set(sc.var_names)]
    sc_genes = list(shared)
    sc_counts = counts(sc, sc_genes)
    neighbours = None
    if "spatial" in st.obsm:
        from spalstf.spatial import neighbours as spatial_neighbours

        neighbours = spatial_neighbours(np.asarray(st.obsm["spatial"], float), 8)
    pcc: dict[str, list[np.ndarray]] = {}
    picks: dict[str, list[str]] = {}
    # every gene imputed while hidden, per row of the table: for the clustering ARI
    imputed: dict[str, np.ndarray] = {}

    def record(row: str, pred: np.ndarray, truth: np.ndarray, columns: list[int]) -> None:
        pcc.setdefault(row, []).append(metrics.pcc(truth, pred))
        imputed.setdefault(row, np.zeros((st.n_obs, len(shared))))[:, columns] = pred

    for fold in gene_folds(shared, 5, 0):
        known = [g for g in shared if g not in fold]
        columns = [shared.index(g) for g in fold]
        truth = truth_of(st, shared, fold)
        outer = all_candidates(st, sc_counts, sc_genes, known, fold, neighbours)
        for key, pred in outer.items():
            record(" / ".join(map(str, key)), pred, truth, columns)
        # the inner check: hide each group of the known genes, predict it from the others
        inner_truth, inner_pred = [], {}
        for hidden in inner_folds(known, n_inner, 0):
            rest = [g for g in known if g not in hidden]
            inner_truth.append(truth_of(st, known, hidden))
            for key, pred in all_candidates(st, sc_counts, sc_genes, rest, hidden,
                                            neighbours).items():
                inner_pred.setdefault(key, []).append(pred)
        t = np.concatenate(inner_truth, 1)
        per_gene = {key: metrics.pcc(t, np.concatenate(p, 1)) for key, p in inner_pred.items()}
        score = {key: np.nanmedian(v) for key, v in per_gene.items()}
        chosen = {}
        for policy, allowed in POLICIES.items():
            cands = {k: v for k, v in score.items() if allowed(k)}
            chosen[policy] = max(cands, key=lambda k: (cands[k], -list(cands).index(k)))
        shares = {}
        for rule, (form, depth_aware) in RULES.items():
            cands = {k: v for k, v in score.items() if k[0] == form and k[1] <= 0.5}
            best = max(cands, key=lambda k: (cands[k], -list(cands).index(k)))
            other = (depth_aware,) + best[1:]
            shares[rule] = win_share(per_gene[other], per_gene[best])
            chosen[rule] = other if shares[rule] > OUTPUT_WIN_SHARE else best
        for policy, best in chosen.items():
            record(policy, outer[best], truth, columns)
            pick = f"{best[0]}, sw {best[1]:g}, kw {best[2]:g}"
            if policy in RULES:  # the share of inner genes depth-aware predicts better
                pick += f" ({shares[policy]:.0%} better)"
            picks.setdefault(policy, []).append(pick)
    measured = truth_of(st, shared, shared)
    rows = []
    for key, values in pcc.items():
        rows.append({"data": name, "prior": key,
                     "kind": "policy" if key in POLICIES or key in RULES else "fixed",
                     "median_pcc": float(np.nanmedian(np.concatenate(values))),
                     "ari": metrics.clustering_scores(measured, imputed[key])["ari"],
                     "choices": "; ".join(picks.get(key, []))})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="osmfish,visium_brain,visium_lymph,simulated")
    ap.add_argument("--inner-folds", type=int, default=2,
                    help="groups of known genes the inner check hides in turn (the self-check: 2)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "priors"))
    args = ap.parse_args()
    start = time.perf_counter()
    table = pd.concat([run(n, args.inner_folds) for n in args.datasets.split(",")],
                      ignore_index=True)
    seconds = time.perf_counter() - start
    out = Path(args.out)
    lines = [
        "# Priors alone: fixed settings and the self-check's choice",
        "",
        f"`.venv/bin/python benchmarks/priors.py --datasets {args.datasets} --inner-folds "
        f"{args.inner_folds}` "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{seconds:.0f} s). Median per-gene PCC over the 5 outer folds; numpy "
        "re-implementation of the priors (no network). sw: spatial weight; kw: weight of the "
        "aligned-neighbour estimate. Policies choose per outer fold by an inner "
        f"{args.inner_folds}-fold leave-genes-out over its known genes (the self-check's rule "
        "uses 2).",
        "",
    ]
    for name, part in table.groupby("data", sort=False):
        lines += [f"## {name}", "", "| prior | median PCC | ARI | choices (5 folds) |",
                  "|---|---|---|---|"]
        for r in part.sort_values(["kind", "median_pcc"], ascending=[False, False]).itertuples():
            lines.append(f"| {r.prior} | {r.median_pcc:.3f} | {r.ari:.3f} | {r.choices} |")
        lines.append("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    plot(table, out.with_suffix(".png"))


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(table["data"]))
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        part = table[table["data"] == name]
        fixed = part[part["kind"] == "fixed"]
        policies = part[part["kind"] == "policy"]
        ax.bar(range(len(policies)), policies["median_pcc"], color="tab:blue")
        ax.axhline(fixed["median_pcc"].max(), color="tab:green", ls="--",
                   label="best fixed setting (chosen by looking at the truth)")
        best_default = fixed[fixed["prior"].str.startswith(DEFAULT_FORM + " /")]["median_pcc"].max()
        ax.axhline(best_default, color="tab:orange", ls=":", label=f"best fixed, {DEFAULT_FORM}")
        ax.set_xticks(range(len(policies)), policies["prior"], rotation=30, ha="right",
                      fontsize=8)
        ax.set_title(name)
        ax.set_ylabel("median per-gene PCC")
        low = min(policies["median_pcc"].min(), fixed["median_pcc"].max()) - 0.05
        ax.set_ylim(max(0, low), None)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
