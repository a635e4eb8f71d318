"""How spalstf combines its base predictions, chosen by leaving whole data sets out.

For each data set and each fold of the 5-fold leave-genes-out protocol (as
``benchmarks/accuracy.py``), this script fits spalstf on the fold's known genes, keeps every
candidate column's predictions (each base predictor x view x readout, `spalstf.combine.stack`)
of the held-out genes AND of the self-check's inner folds, and then scores, without refitting:

- combination rules: the stacked weights learnt on the inner folds (the default), the single
  column that scores best on the inner folds, the plain mean of all columns, and the fixed
  blend of earlier versions (ridge and aligned neighbours, half each, from one view);
- ablations of the stack: each predictor, view and readout left out (what each adds), and
  the predictors to fit chosen by leaving data sets out (all, or all but one);
- the interval's scale (`spalstf.combine.stack.SPREAD_OFFSET`): coverage of the held-out genes'
  measured values, log-normalised over the known genes, against the nominal level;
- the per-gene confidence (`expected_pcc`): the self-check's line against its median alone.

Choices by leaving data sets out: for every set, the rule of each family that does best on
the OTHER sets (combination: mean over sets of the median PCC relative to the set's best
single column; interval: the largest distance from the nominal coverage), and its score on the
set left out; and the split "decided on osmfish, visium_brain, visium_lymph, simulated (the
sets of the first rounds), checked on exseq_cortex and starmap_cortex (added later)".

Writes ``benchmarks/results/<name>.md`` and ``<name>.png``; predictions are cached in
``benchmarks/.cache/`` (not committed) so the scoring can be re-run alone (``--score-only``).

    .venv/bin/python benchmarks/stack.py                     # every set, fit + score
    .venv/bin/python benchmarks/stack.py --score-only        # re-score the cached folds
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy  # noqa: E402

import spalstf  # noqa: E402
from spalstf._atomic import atomic_path  # noqa: E402
from spalstf.combine import selfcheck  # noqa: E402
from spalstf.combine.columns import (  # noqa: E402
    available_readouts,
    available_views,
    candidate_columns,
)
from spalstf.combine.expected import expected_pcc  # noqa: E402
from spalstf.combine.stack import SPREAD_OFFSET, Stack, learn_weights, parse  # noqa: E402
from spalstf.config import DEFAULT_PREDICTORS  # noqa: E402
from spalstf.data import as_expression  # noqa: E402
from spalstf.evaluate import metrics  # noqa: E402
from spalstf.evaluate._cli import markdown_table  # noqa: E402
from spalstf.evaluate.cv import gene_folds  # noqa: E402
from spalstf.model import fit_model  # noqa: E402
from spalstf.spatial import coordinates  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache"
DEV = ("osmfish", "visium_brain", "visium_lymph", "simulated")
LEVEL = 0.9


def pair(name: str):
    """(st, reference) of a set of benchmarks/accuracy.py (its pooled-spot sets too)."""
    return accuracy.load_set(name)


def dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)


def fold_predictions(st, sc, hidden: list[str], seed: int = 0, config: dict | None = None
                     ) -> dict:
    """Every column's predictions of the held-out genes, and the inner folds' of the known."""
    shared = [g for g in st.var_names if g in set(sc.var_names)]
    known = [g for g in shared if g not in hidden]
    st_known = st[:, known].copy()
    model = spalstf.fit(sc, known, hidden, seed=seed, progress=False, config=config)
    cfg = model.config
    expr, ref = as_expression(st_known, arg="st"), as_expression(sc, arg="sc")
    inner = selfcheck.inner_predictions(
        expr, ref, [(g, g) for g in known], cfg, n_folds=2, seed=seed, log_normalized=False,
        device=model.device, spatial=None, progress=False, fit=fit_model)
    views = available_views(cfg, coordinates(st_known, None, st.n_obs) is not None)
    columns = candidate_columns(model, cfg, views, available_readouts(cfg, False))
    source = model.columns(expr, cfg, columns, log_normalized=False, seed=seed,
                           device=model.device, spatial=None)
    outer = source.predict(np.arange(st.n_obs))
    counts = dense(st[:, shared].X)
    hidden_counts = counts[:, [shared.index(g) for g in hidden]]
    known_total = counts[:, [shared.index(g) for g in known]].sum(axis=1, keepdims=True)

    def lognorm(total):
        return np.log1p(hidden_counts * np.divide(1e4, total, out=np.zeros_like(total),
                                                  where=total > 0))

    return {"outer": outer, "truth": lognorm(counts.sum(axis=1, keepdims=True)),
            "own_truth": lognorm(known_total), "inner": inner,
            "reference_pcc": np.asarray(model.info["reference_pcc"])}


#: Settings of every fit (`--predictors`), set by main.
CONFIG: dict = {}


def cache_path(name: str) -> Path:
    """Where a set's folds are cached: named by the predictors fitted (the defaults spelt
    out, so that a change of the defaults never reads a stale cache)."""
    return CACHE / f"{name}.{'-'.join(CONFIG.get('predictors', DEFAULT_PREDICTORS))}.npy"


def collect(name: str) -> list[dict]:
    path = cache_path(name)
    if path.exists():
        return list(np.load(path, allow_pickle=True))
    st, sc = pair(name)
    shared = [g for g in st.var_names if g in set(sc.var_names)]
    folds = []
    for i, hidden in enumerate(gene_folds(shared, 5, 0)):
        start = time.perf_counter()
        folds.append(fold_predictions(st, sc, hidden, config=CONFIG or None))
        print(f"{name} fold {i + 1}/5: {time.perf_counter() - start:.0f} s", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.array(folds, dtype=object), allow_pickle=True)
    return folds


def median(values) -> float:
    values = np.asarray(values, np.float64)
    return float(np.median(values[np.isfinite(values)])) if np.isfinite(values).any() \
        else float("nan")


def stacked(columns: dict, inner, names: list[str]) -> np.ndarray:
    stack = Stack(learn_weights({n: inner.columns[n] for n in names}, inner.truth))
    chosen = {n: columns[n] for n in stack.columns}
    return stack.combine(chosen, stack.statistics(chosen))


def equal(columns: dict, names: list[str]) -> np.ndarray:
    stack = Stack({n: 1.0 for n in names})
    chosen = {n: columns[n] for n in names}
    return stack.combine(chosen, stack.statistics(chosen))


def combination_rules(fold: dict) -> dict[str, np.ndarray]:
    outer, inner = fold["outer"], fold["inner"]
    names = list(inner.columns)
    inner_median = {n: median(metrics.pcc(inner.truth, inner.columns[n])) for n in names}
    best = max(names, key=inner_median.get)
    view = next(v for v in ("spatial", "expression", "raw")
                if any(parse(n)[1] == v for n in names))
    blend = [f"ridge|{view}|expression", f"aligned|{view}|expression"]
    return {"stack (default)": stacked(outer, inner, names),
            "best column on the inner folds": outer[best],
            "mean of all columns": equal(outer, names),
            "fixed blend (ridge + aligned, one view)": equal(outer, blend)}


def ablations(fold: dict) -> dict[str, np.ndarray]:
    outer, inner = fold["outer"], fold["inner"]
    names = list(inner.columns)
    out = {}
    parts = {"predictor": sorted({parse(n)[0] for n in names}),
             "view": sorted({parse(n)[1] for n in names}),
             "readout": sorted({parse(n)[2] for n in names})}
    for axis, values in parts.items():
        position = ("predictor", "view", "readout").index(axis)
        for value in values:
            kept = [n for n in names if parse(n)[position] != value]
            if kept:
                out[f"without {axis} {value}"] = stacked(outer, inner, kept)
    for predictor in parts["predictor"]:
        alone = [n for n in names if parse(n)[0] == predictor]
        out[f"{predictor} alone (its views and readouts stacked)"] = stacked(outer, inner,
                                                                            alone)
    return out


def coverage(fold: dict, offset_share: float | None) -> tuple[float, float]:
    """(coverage, median width) of the held-out genes with a scale offset of `offset_share`
    medians of the spread (None: a constant scale)."""
    import spalstf.combine.stack as stack_module

    inner, outer = fold["inner"], fold["outer"]
    combined, spread = selfcheck.cross_fitted(inner.columns, inner.truth, inner.fold_of)
    stack = Stack(learn_weights(inner.columns, inner.truth))
    chosen = {n: outer[n] for n in stack.columns}
    values = stack.combine(chosen, stack.statistics(chosen))
    outer_spread = stack.spread(chosen)
    if offset_share is None:
        spread, outer_spread = np.zeros_like(spread), np.zeros_like(outer_spread)
        offset_share = 1.0
        spread += 1.0
        outer_spread += 1.0
    saved = stack_module.SPREAD_OFFSET
    stack_module.SPREAD_OFFSET = offset_share
    try:
        stack.calibrate(inner.own_truth, combined, spread, level=LEVEL)
    finally:
        stack_module.SPREAD_OFFSET = saved
    lower, upper = stack.interval(values, outer_spread)
    truth = fold["own_truth"]
    return float(((truth >= lower) & (truth <= upper)).mean()), float(np.median(upper - lower))


def score(names: list[str]) -> dict:
    per_set = {}
    for name in names:
        folds = collect(name)
        rows: dict[str, list[np.ndarray]] = {}
        spcc: dict[str, list[np.ndarray]] = {}
        for fold in folds:
            for family in (combination_rules(fold), ablations(fold),
                           {c: fold["outer"][c] for c in fold["outer"]}):
                for rule, values in family.items():
                    rows.setdefault(rule, []).append(metrics.pcc(fold["truth"], values))
                    spcc.setdefault(rule, []).append(metrics.spcc(fold["truth"], values))
        table = pd.DataFrame({"pcc": {r: median(np.concatenate(v)) for r, v in rows.items()},
                              "spcc": {r: median(np.concatenate(v)) for r, v in spcc.items()}})
        intervals = {}
        for label, share in (("constant scale", None), ("spread alone", 0.0),
                             ("spread + 0.25 median", 0.25),
                             (f"spread + {SPREAD_OFFSET:g} median (default)", SPREAD_OFFSET),
                             ("spread + 1 median", 1.0)):
            cov = [coverage(f, share) for f in folds]
            intervals[label] = {"coverage": float(np.mean([c for c, _ in cov])),
                                "lowest fold": float(np.min([c for c, _ in cov])),
                                "median width": float(np.mean([w for _, w in cov]))}
        confidence = expected(folds)
        weights = fold_weights(folds)
        per_set[name] = {"table": table, "intervals": pd.DataFrame(intervals).T,
                         "confidence": confidence, "weights": mean_weights(weights),
                         "per_predictor": predictor_weights(weights)}
    return per_set


def expected(folds: list[dict]) -> pd.DataFrame:
    """Mean absolute error and correlation of expected_pcc rules against the real per-gene
    PCC of the held-out genes."""
    real, line, flat = [], [], []
    for fold in folds:
        inner = fold["inner"]
        result = selfcheck.learn(inner, level=LEVEL)
        chosen = {n: fold["outer"][n] for n in result.stack.columns}
        values = result.stack.combine(chosen, result.stack.statistics(chosen))
        real.append(metrics.pcc(fold["truth"], values))
        line.append(expected_pcc(result.calibration, fold["reference_pcc"]))
        flat.append(np.full(len(real[-1]), result.median_pcc))
    real = np.concatenate(real)
    ok = np.isfinite(real)
    out = {}
    for label, guess in (("line on the reference's predictability (default)", line),
                         ("the self-check's median", flat)):
        guess = np.concatenate(guess)
        out[label] = {"mean abs error": float(np.mean(np.abs(guess[ok] - real[ok]))),
                      "r with the real PCC": float(np.corrcoef(guess[ok], real[ok])[0, 1])
                      if np.std(guess[ok]) > 0 else float("nan")}
    return pd.DataFrame(out).T


def fold_weights(folds: list[dict]) -> list[dict[str, float]]:
    """Each fold's stack weights, learnt on its inner folds."""
    return [learn_weights(fold["inner"].columns, fold["inner"].truth) for fold in folds]


def mean_weights(weights: list[dict[str, float]]) -> pd.Series:
    out: dict[str, float] = {}
    for w in weights:
        for k, v in w.items():
            out[k] = out.get(k, 0.0) + v / len(weights)
    return pd.Series(out).sort_values(ascending=False)


#: A predictor "earns a weight" in a fold when its columns' weights sum to more than this.
EARNS = 0.005


def predictor_weights(weights: list[dict[str, float]]) -> pd.Series:
    """Per predictor: in how many folds its columns' summed weight exceeds `EARNS`, and the
    range of that sum over the folds ("3 of 5 (0.000-0.120)")."""
    names = sorted({parse(k)[0] for w in weights for k in w})
    out = {}
    for name in names:
        sums = [sum(v for k, v in w.items() if parse(k)[0] == name) for w in weights]
        out[name] = (f"{sum(x > EARNS for x in sums)} of {len(sums)} "
                     f"({min(sums):.3f}-{max(sums):.3f})")
    return pd.Series(out)


def leave_sets_out(per_set: dict, rules: list[str]) -> pd.DataFrame:
    """For each set: the combination rule best on the other sets, and its score there."""
    relative = {}
    for name, result in per_set.items():
        table = result["table"]
        columns = [r for r in table.index if r.count("|") == 2]
        best_column = table.loc[columns, "pcc"].max()
        relative[name] = table.loc[rules, "pcc"] / best_column
    relative = pd.DataFrame(relative)
    rows = []
    for name in per_set:
        others = [n for n in per_set if n != name]
        chosen = relative[others].mean(axis=1).idxmax() if others else rules[0]
        rows.append({"left out": name, "chosen on the others": chosen,
                     "its median PCC": per_set[name]["table"].loc[chosen, "pcc"],
                     "default's median PCC": per_set[name]["table"].loc[rules[0], "pcc"]})
    dev = [n for n in per_set if n in DEV]
    if dev and len(dev) < len(per_set):
        chosen = relative[dev].mean(axis=1).idxmax()
        for name in per_set:
            if name not in DEV:
                rows.append({"left out": f"{name} (decided on {', '.join(dev)})",
                             "chosen on the others": chosen,
                             "its median PCC": per_set[name]["table"].loc[chosen, "pcc"],
                             "default's median PCC":
                                 per_set[name]["table"].loc[rules[0], "pcc"]})
    return pd.DataFrame(rows)


def interval_choice(per_set: dict) -> pd.DataFrame:
    rows = []
    for name in per_set:
        others = [n for n in per_set if n != name] or [name]
        distance = pd.concat([(per_set[n]["intervals"]["coverage"] - LEVEL).abs()
                              for n in others], axis=1).max(axis=1)
        chosen = distance.idxmin()
        rows.append({"left out": name, "chosen on the others": chosen,
                     "coverage there": per_set[name]["intervals"].loc[chosen, "coverage"]})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default=",".join(accuracy.DATASETS))
    ap.add_argument("--name", default="stack")
    ap.add_argument("--predictors", default=None,
                    help="comma-separated Config.predictors (default: Config's, without the network)")
    ap.add_argument("--score-only", action="store_true",
                    help="score the cached folds only (fails for a set not cached)")
    args = ap.parse_args(argv)
    names = [n for n in args.datasets.split(",") if n]
    if args.predictors:
        CONFIG["predictors"] = tuple(args.predictors.split(","))
    if args.score_only:
        missing = [n for n in names if not cache_path(n).exists()]
        if missing:
            raise SystemExit(f"--score-only: no cached folds for {missing} in {CACHE}")
    start = time.perf_counter()
    per_set = score(names)
    rules = list(combination_rules(collect(names[0])[0]))
    md = ["# How the base predictions are combined (chosen by leaving data sets out)", "",
          f"Made by `python benchmarks/stack.py {' '.join(argv or sys.argv[1:])}`".strip()
          + f" on {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPU "
          f"cores ({time.perf_counter() - start:.0f} s for this run: fits, unless cached, "
          "and scoring). "
          "5-fold leave-genes-out, as benchmarks/accuracy.py; median over genes of the "
          "per-gene PCC/SPCC with the ST's log-normalised truth.", ""]
    overview = pd.DataFrame({n: per_set[n]["table"].loc[rules, "pcc"] for n in names})
    md += ["## Combination rules (median PCC)", "", markdown_table(overview, index_name="rule"), ""]
    md += ["## Chosen by leaving data sets out", "",
           markdown_table(leave_sets_out(per_set, rules).set_index("left out"), index_name="left out"), ""]
    ablation = pd.DataFrame({n: per_set[n]["table"]["pcc"] for n in names})
    ablation = ablation.loc[[r for r in ablation.index if r.startswith(("without", "stack"))
                             or "alone" in r]]
    predictor_sets = [rules[0]] + [r for r in ablation.index if r.startswith("without predictor")]
    md += ["## Predictors chosen by leaving data sets out (all of them, or all but one)", "",
           markdown_table(leave_sets_out(per_set, predictor_sets).set_index("left out"),
                          index_name="left out"), ""]
    md += ["## What each part adds (median PCC of the stack without it, and of each "
           "predictor's columns alone)", "", markdown_table(ablation, index_name="stack"), ""]
    md += ["## Mean weight of each column (over the folds; those above 0.02)", ""]
    weights = pd.DataFrame({n: per_set[n]["weights"] for n in names}).fillna(0.0)
    md += [markdown_table(weights[(weights > 0.02).any(axis=1)], digits=2, index_name="column"), ""]
    md += [f"## Folds where each predictor earns a weight (its columns' sum > {EARNS}; range of "
           "the sum over the folds)", "",
           markdown_table(pd.DataFrame({n: per_set[n]["per_predictor"] for n in names}),
                          index_name="predictor"), ""]
    md += [f"## Intervals (nominal {LEVEL:.0%}) of the held-out genes' measured values", ""]
    for name in names:
        md += [f"### {name}", "", markdown_table(per_set[name]["intervals"], index_name="scale"), ""]
    md += ["Interval scale chosen by leaving data sets out (the smallest largest distance from "
           "the nominal coverage on the other sets):", "",
           markdown_table(interval_choice(per_set).set_index("left out"), index_name="left out"), ""]
    md += ["## Per-gene confidence (expected_pcc) against the real per-gene PCC", ""]
    for name in names:
        md += [f"### {name}", "", markdown_table(per_set[name]["confidence"], index_name="rule"), ""]
    out = ROOT / "benchmarks" / "results" / f"{args.name}.md"
    with atomic_path(out) as tmp:
        Path(tmp).write_text("\n".join(md) + "\n")
    plot(per_set, rules, ROOT / "benchmarks" / "results" / f"{args.name}.png")
    print("\n".join(md))
    return 0


def plot(per_set: dict, rules: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_set)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(rules)
    for i, rule in enumerate(rules):
        axes[0].bar(np.arange(len(names)) + i * width,
                    [per_set[n]["table"].loc[rule, "pcc"] for n in names], width, label=rule)
    axes[0].set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=30, ha="right")
    axes[0].set_ylabel("median PCC over held-out genes")
    axes[0].set_title("Combination rules")
    axes[0].legend(fontsize=7)
    label = f"spread + {SPREAD_OFFSET:g} median (default)"
    axes[1].bar(names, [per_set[n]["intervals"].loc[label, "coverage"] for n in names])
    axes[1].axhline(LEVEL, color="k", ls="--", label=f"nominal {LEVEL:.0%}")
    axes[1].axhspan(LEVEL - 0.05, LEVEL + 0.05, color="grey", alpha=0.2, label="target band")
    axes[1].set_ylim(0.7, 1.0)
    axes[1].set_ylabel("coverage of held-out genes' measured values")
    axes[1].set_title("Interval coverage (default scale)")
    axes[1].tick_params(axis="x", rotation=30)
    axes[1].legend(fontsize=7)
    save_png(fig, path)


def save_png(fig, path: Path) -> None:
    """Lay out `fig`, write it to `path` as PNG atomically (a temporary file, renamed) and
    close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
