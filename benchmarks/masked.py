"""Does the masked-gene network earn a weight in the stack?

The masked-gene network (`spalstf.prior.masked.train.fit_masked`, `spalstf.prior.masked.sample`)
trains on the reference's cells AND on the ST's own known genes under random gene masks, so it
sees the ST's platform. This script adds its predictions as the columns
``masked|raw|expression`` and ``masked|raw|at_depth`` (it reads each ST cell's own known genes:
the raw view) to the folds that ``benchmarks/stack.py`` cached with the network column, and
scores the stack with and without it.

Same folds as benchmarks/stack.py: outer `gene_folds(shared, 5, 0)`, inner
`spalstf.combine.expected.inner_folds(known, 2, seed=0)`. No leakage: for each inner fold the
network is fitted with known = the fold's inner-known genes only (the ST rows hold only those; the
inner-hidden genes are targets, learnt from the reference alone) and predicts the
inner-hidden genes on the cached `inner.cells`; for the outer fold, known = all the fold's
known genes, targets = the held-out genes, predicted on every ST cell. Model space as
`spalstf.model.fit_model`: reference and ST log-normalised over the fit's known genes
(log1p(count / known total x 1e4)), z-scored with the reference's statistics; predictions are
mapped back with the reference target scaler's inverse.

Scored on the outer held-out genes (median over genes of the per-gene PCC, pooled over the
folds): the stack as cached (default columns + network), + masked, without network + masked,
the default stack, the masked and network columns alone, the best single base column; and the
masked columns' weights per fold.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/masked.py                 # simulated, osmfish
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/masked.py --datasets osmfish --max-steps 30 \
        --n-samples 1                                                       # a cut budget
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/masked.py --score-only    # re-score the cache

Needs the caches of ``benchmarks/stack.py --predictors
ridge,ridge_aligned,aligned,knn,spage,transport,network``. Writes
``benchmarks/results/<name>.md`` and ``.png``; the masked predictions are cached per fold in
``benchmarks/.cache/`` (not committed).
"""

from __future__ import annotations

import argparse
import dataclasses
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

import stack as stack_bench  # noqa: E402

from spalstf._atomic import atomic_path  # noqa: E402
from spalstf.combine import expected, selfcheck  # noqa: E402
from spalstf.combine.stack import parse  # noqa: E402
from spalstf.config import Config  # noqa: E402
from spalstf.evaluate import metrics  # noqa: E402
from spalstf.evaluate._cli import markdown_table  # noqa: E402
from spalstf.evaluate.cv import gene_folds  # noqa: E402
from spalstf.preprocess import Standardizer, expected_at_depth, log_normalize  # noqa: E402
from spalstf.prior.masked.train import MaskedOptions, fit_masked  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache"
WITH_NETWORK = "ridge-ridge_aligned-aligned-knn-spage-transport-network"
MASKED_COLUMNS = ("masked|raw|expression", "masked|raw|at_depth")
NETWORK_COLUMN = "network|spatial|expression"


def cached_folds(name: str) -> list[dict]:
    path = CACHE / f"{name}.{WITH_NETWORK}.npy"
    if not path.exists():
        raise SystemExit(f"no cached folds with the network for {name} ({path}): run "
                         "benchmarks/stack.py --predictors "
                         "ridge,ridge_aligned,aligned,knn,spage,transport,network first")
    return list(np.load(path, allow_pickle=True))


def masked_columns(st, sc, known: list[str], targets: list[str], cells: np.ndarray,
                   config: Config, options: MaskedOptions, seed: int = 0
                   ) -> tuple[dict[str, np.ndarray], float, float]:
    """The masked network fitted on `known` -> `targets` (the ST read on `known` only) and its
    predictions of `targets` on the ST `cells`, on the output scale: (columns, fit seconds,
    predict seconds)."""
    ref_known_log, ref_target_log = log_normalize(
        stack_bench.dense(sc[:, known].X), stack_bench.dense(sc[:, targets].X),
        scale_factor=config.scale_factor)
    known_scaler, target_scaler = Standardizer.fit(ref_known_log), Standardizer.fit(ref_target_log)
    st_known_counts = stack_bench.dense(st[:, known].X)
    st_known_z = known_scaler.transform(
        log_normalize(st_known_counts, scale_factor=config.scale_factor)[0])
    start = time.perf_counter()
    model = fit_masked(known_scaler.transform(ref_known_log),
                       target_scaler.transform(ref_target_log), st_known_z, config=config,
                       seed=seed, options=options)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    n_known = len(known)
    mean, _ = model.predict(st_known_z[cells], np.arange(n_known),
                            n_known + np.arange(len(targets)),
                            [str(c) for c in np.asarray(st.obs_names)[cells]], seed=seed)
    predict_seconds = time.perf_counter() - start
    expression = target_scaler.inverse(mean).astype(np.float32)
    depth = st_known_counts[cells].sum(axis=1)
    at_depth = expected_at_depth(expression, depth, scale_factor=config.scale_factor)
    return ({MASKED_COLUMNS[0]: expression, MASKED_COLUMNS[1]: at_depth}, fit_seconds,
            predict_seconds)


def fold_masked(st, sc, hidden: list[str], cached: dict, config: Config,
                options: MaskedOptions) -> dict:
    """The masked columns of one outer fold: its inner folds' and the held-out genes'."""
    shared = [g for g in st.var_names if g in set(sc.var_names)]
    known = [g for g in shared if g not in hidden]
    inner = cached["inner"]
    folds = expected.inner_folds(known, 2, seed=0)
    order = [g for fold in folds for g in fold]
    if order != list(inner.genes):
        raise RuntimeError("the inner folds do not match the cached ones")
    inner_parts: dict[str, list[np.ndarray]] = {}
    seconds = []
    for i, inner_hidden in enumerate(folds):
        inner_known = [g for g in known if g not in inner_hidden]
        if list(np.asarray(inner.genes)[inner.fold_of == i]) != inner_hidden:
            raise RuntimeError(f"inner fold {i} does not match the cached one")
        columns, fit_s, predict_s = masked_columns(st, sc, inner_known, inner_hidden,
                                                   np.asarray(inner.cells), config, options)
        seconds.append({"fit": "inner", "fit_s": fit_s, "predict_s": predict_s})
        for name, values in columns.items():
            inner_parts.setdefault(name, []).append(values)
    outer, fit_s, predict_s = masked_columns(st, sc, known, hidden, np.arange(st.n_obs),
                                             config, options)
    seconds.append({"fit": "outer", "fit_s": fit_s, "predict_s": predict_s})
    return {"inner": {n: np.concatenate(p, axis=1) for n, p in inner_parts.items()},
            "outer": outer, "seconds": seconds}


def cache_path(name: str, fold: int, tag: str) -> Path:
    return CACHE / f"{name}.masked-{tag}.fold{fold}.npy"


def collect(name: str, tag: str, config: Config, options: MaskedOptions,
            score_only: bool, n_folds: int = 5) -> list[dict]:
    """The masked columns of the first `n_folds` outer folds (cached one fold at a time)."""
    cached = cached_folds(name)
    out = []
    st = sc = None
    for i in range(min(n_folds, len(cached))):
        path = cache_path(name, i, tag)
        if path.exists():
            out.append(np.load(path, allow_pickle=True).item())
            continue
        if score_only:
            raise SystemExit(f"--score-only: {path} is not cached")
        if st is None:
            st, sc = stack_bench.pair(name)
        shared = [g for g in st.var_names if g in set(sc.var_names)]
        hidden = gene_folds(shared, 5, 0)[i]
        start = time.perf_counter()
        result = fold_masked(st, sc, hidden, cached[i], config, options)
        print(f"{name} fold {i + 1}/{len(cached)}: {time.perf_counter() - start:.0f} s "
              f"({result['seconds']})", flush=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.save(handle, np.array(result, dtype=object), allow_pickle=True)
        out.append(result)
    return out


RULES = ("stack as cached (default columns + network)", "stack + masked",
         "stack without network + masked", "default stack (no network, no masked)",
         "masked column alone", "network column alone")


def score(name: str, masked: list[dict]) -> tuple[pd.Series, pd.DataFrame, str]:
    """(median PCC of each rule, masked weights per fold, the best single column) of one
    set."""
    pcc: dict[str, list[np.ndarray]] = {}
    weights = []
    folds = cached_folds(name)[:len(masked)]  # the first folds when fewer were run
    for i, (fold, extra) in enumerate(zip(folds, masked, strict=True)):
        cached_names = list(fold["inner"].columns)
        inner = dataclasses.replace(fold["inner"],
                                    columns=dict(fold["inner"].columns, **extra["inner"]))
        outer_all = dict(fold["outer"], **extra["outer"])
        default = [n for n in cached_names if parse(n)[0] != "network"]
        rules = {
            RULES[0]: stack_bench.stacked(outer_all, inner, cached_names),
            RULES[1]: stack_bench.stacked(outer_all, inner, cached_names + list(MASKED_COLUMNS)),
            RULES[2]: stack_bench.stacked(outer_all, inner, default + list(MASKED_COLUMNS)),
            RULES[3]: stack_bench.stacked(outer_all, inner, default),
            RULES[4]: outer_all[MASKED_COLUMNS[0]],
            RULES[5]: outer_all[NETWORK_COLUMN],
        }
        for label, names in (("+ masked", cached_names + list(MASKED_COLUMNS)),
                             ("without network + masked", default + list(MASKED_COLUMNS))):
            learnt = stack_bench.learn_weights({n: inner.columns[n] for n in names}, inner.truth)
            weights.append({"stack": label, "fold": i + 1,
                            **{c: learnt[c] for c in MASKED_COLUMNS},
                            "network": sum(v for k, v in learnt.items()
                                           if parse(k)[0] == "network")})
        for column in cached_names:
            rules[column] = outer_all[column]
        for rule, values in rules.items():
            pcc.setdefault(rule, []).append(metrics.pcc(fold["truth"], values))
    table = pd.Series({r: stack_bench.median(np.concatenate(v)) for r, v in pcc.items()})
    columns = [r for r in table.index if r.count("|") == 2]
    best = table[columns].idxmax()
    summary = table[list(RULES)]
    summary["best single base column"] = table[best]
    return summary, pd.DataFrame(weights), best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="simulated,osmfish")
    ap.add_argument("--name", default="stack_masked")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="updates per fit (default: Config's)")
    ap.add_argument("--n-samples", type=int, default=None,
                    help="diffusion samples per cell (default: Config's)")
    ap.add_argument("--reference-only", action="store_true",
                    help="the ablation MaskedOptions(use_st=False)")
    ap.add_argument("--folds", type=int, default=5,
                    help="score the first FOLDS outer folds only (default: all 5)")
    ap.add_argument("--score-only", action="store_true")
    args = ap.parse_args(argv)
    names = [n for n in args.datasets.split(",") if n]
    config = Config()
    if args.max_steps is not None:
        config = config.replace(max_steps=args.max_steps)
    if args.n_samples is not None:
        config = config.replace(n_samples=args.n_samples)
    options = MaskedOptions(use_st=not args.reference_only)
    tag = f"steps{config.max_steps}-samples{config.n_samples}" + (
        "-reference_only" if args.reference_only else "")
    start = time.perf_counter()
    per_set, weights, best_columns, seconds = {}, {}, {}, {}
    for name in names:
        masked = collect(name, tag, config, options, args.score_only, args.folds)
        per_set[name], weights[name], best_columns[name] = score(name, masked)
        seconds[name] = pd.DataFrame([s for fold in masked for s in fold["seconds"]])
    command = "OMP_NUM_THREADS=2 .venv/bin/python benchmarks/masked.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    md = ["# Does the masked-gene network earn a weight in the stack?", "",
          f"Made by `{command.strip()}` on {time.strftime('%Y-%m-%d')}, "
          f"{platform.machine()}, {os.cpu_count()} CPU cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} "
          f"({time.perf_counter() - start:.0f} s for this run; fits are cached). Masked "
          f"network: default Config but max_steps={config.max_steps}, "
          f"n_samples={config.n_samples} (n_steps={config.n_steps}, {config.sampler}), seed 0, "
          f"MaskedOptions(use_st={options.use_st}), same budget for every fit and fold. "
          f"5-fold leave-genes-out as benchmarks/stack.py ({args.folds} of the 5 outer "
          "folds run and scored); median over held-out genes of the "
          "per-gene PCC with the ST's log-normalised truth, pooled over the folds. The masked "
          "columns read each ST cell's own known genes (the raw view); the network column "
          "reads the spatial view. The cached network column was trained with Config's default "
          f"budget: {Config().max_steps} updates for the outer fit, "
          f"{round(Config().max_steps * selfcheck.FIT_BUDGET_SHARE / 2)} for each inner fit "
          "(the self-check's share).", ""]
    overview = pd.DataFrame(per_set)
    md += ["## Median PCC of the held-out genes", "",
           markdown_table(overview, index_name="rule"), "",
           "Best single base column (by its pooled score on the held-out genes): " + ", ".join(
               f"{n}: `{c}`" for n, c in best_columns.items()), ""]
    md += ["## Weights of the masked columns (learnt on the inner folds), per fold", ""]
    for name in names:
        table = weights[name].set_index(["stack", "fold"])
        earned = (table[list(MASKED_COLUMNS)].sum(axis=1) > 0).groupby(level=0).sum()
        table = table.reset_index("fold")
        md += [f"### {name}", "", markdown_table(table, digits=3, index_name="stack"), "",
               "Folds where a masked column earned weight > 0: " + ", ".join(
                   f"{k}: {int(v)} of {table['fold'].nunique()}" for k, v in earned.items()),
               ""]
    md += ["## What it shows", ""]
    for name in names:
        table, rules = weights[name], per_set[name]
        masked_weight = table[list(MASKED_COLUMNS)].sum(axis=1)
        with_network = masked_weight[table["stack"] == "+ masked"]
        md += [f"- {name}: in the stack with the network, the masked columns earn weight > 0 "
               f"in {int((with_network > 0).sum())} of {len(with_network)} folds (>= 0.01 in "
               f"{int((with_network >= 0.01).sum())}; mean {with_network.mean():.3f}, largest "
               f"{with_network.max():.3f}); stack + masked {rules[RULES[1]]:.3f} against "
               f"{rules[RULES[0]]:.3f} without it; the masked column alone "
               f"{rules[RULES[4]]:.3f} against the network column alone {rules[RULES[5]]:.3f}."]
    if config.max_steps < Config().max_steps or config.n_samples < Config().n_samples:
        md += [f"- The budget was cut to fit the time available (max_steps {config.max_steps}"
               f" of {Config().max_steps}, n_samples {config.n_samples} of "
               f"{Config().n_samples}): this measures an under-trained masked network, not the "
               "network at its default budget."]
    md += [""]
    md += ["## Seconds per masked fit (2 inner + 1 outer per fold)", ""]
    for name in names:
        s = seconds[name]
        md += [f"- {name}: fit {s['fit_s'].mean():.0f} s (range {s['fit_s'].min():.0f}-"
               f"{s['fit_s'].max():.0f}), predict {s['predict_s'].mean():.0f} s "
               f"(inner {s[s.fit == 'inner']['predict_s'].mean():.0f} s, outer "
               f"{s[s.fit == 'outer']['predict_s'].mean():.0f} s), over {len(s)} fits"]
    md += [""]
    out = ROOT / "benchmarks" / "results" / f"{args.name}.md"
    with atomic_path(out) as tmp:
        Path(tmp).write_text("\n".join(md) + "\n")
    plot(overview, ROOT / "benchmarks" / "results" / f"{args.name}.png")
    print("\n".join(md))
    return 0


def plot(overview: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(overview.columns)
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        values = overview[name]
        ax.barh(np.arange(len(values)), values.to_numpy(),
                color=["C1" if "masked" in r else "C0" for r in values.index])
        ax.set_yticks(np.arange(len(values)), values.index, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("median PCC over held-out genes")
        ax.set_title(name)
    stack_bench.save_png(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
