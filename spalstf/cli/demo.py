"""`spalstf demo`: simulate data, impute, score against the simulated truth, and draw the
figure of typical genes beside their truth."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from spalstf.cli.commands import _training_options, format_weights

#: Percentiles of the per-gene r whose genes the demo figure draws (typical genes, not the best).
DEMO_PERCENTILES = (75, 50, 25)
#: Colour scale of the demo's truth and imputed maps (see `spalstf.pl.spatial`). Both: the
#: imputed values sit below the simulated truth, so on the truth's scale they show their level
#: and hide their pattern (a flat dark map), and on their own scale the reverse.
DEMO_SCALE = "both"


def _genes_at_percentiles(pcc, percentiles):
    """(column, percentile, rank from the best) of the genes at these percentiles of `pcc`.

    NaN r (a constant gene) is left out; a gene reached by two percentiles is drawn once.
    """
    import numpy as np

    finite = np.flatnonzero(np.isfinite(pcc))
    ascending = finite[np.argsort(pcc[finite], kind="stable")]
    if not len(ascending):
        return []
    rows, seen = [], set()
    for q in percentiles:
        k = int(round(q / 100 * (len(ascending) - 1)))
        j = int(ascending[k])
        if j not in seen:
            seen.add(j)
            rows.append((j, q, len(ascending) - k))
    return rows


def _level_gap(imputed, truth) -> float:
    """Median over genes of (mean imputed value - mean truth), the level that r ignores."""
    import numpy as np

    return float(np.median(np.asarray(imputed.X).mean(axis=0) - truth.to_numpy().mean(axis=0)))


#: A gap of level (log scale) below this is "about the truth's level" in the demo's title.
LEVEL_TOLERANCE = 0.1


def _level_words(gap: float) -> str:
    """Where the imputed values sit against the truth, given the median gap of level."""
    if gap <= -LEVEL_TOLERANCE:
        return "The imputed values sit lower"
    if gap >= LEVEL_TOLERANCE:
        return "The imputed values sit higher"
    return "The imputed values sit at about the truth's level"


def _demo_figure(imputed, truth, pcc, *, n_ref: int, path: Path) -> Path:
    """Draw the demo's figure at `path`: typical genes, the simulated truth beside the imputation.

    `truth`: the simulated truth of the imputed genes (cells x genes DataFrame, columns in
    `imputed.var_names` order); `pcc`: the per-gene r of imputation and truth; `n_ref`: the
    number of reference cells (for the title).
    """
    import numpy as np

    from spalstf import pl
    from spalstf.combine.stack import parse

    level_gap = _level_gap(imputed, truth)
    # Typical genes, not the best: those at the quartiles and the median of r.
    rows = _genes_at_percentiles(pcc, DEMO_PERCENTILES)
    genes = [imputed.var_names[j] for j, _, _ in rows]
    n_scored = int(np.isfinite(pcc).sum())
    labels = {imputed.var_names[j]: f"{q}th percentile of r\n(rank {rank} of {n_scored})"
              for j, q, rank in rows}
    params = imputed.uns["spalstf"]["params"]
    depth = 1.0 if params.get("output") == "at_depth" else float(params.get("depth_weight", 0))
    weight = float(params.get("residual_weight", 1.0))
    title = (f"spalstf demo on SIMULATED data: {imputed.n_obs} ST cells; {imputed.n_vars} genes "
             f"the ST did not measure, imputed from a {n_ref}-cell reference\n"
             f"Pearson r of imputed vs simulated truth: median {np.nanmedian(pcc):.2f} over all "
             f"{n_scored} genes. Rows: typical genes (at the "
             + ", ".join(f"{q}th" for _, q, _ in rows) + " percentile of r), not the best\n"
             f"Simulated truth: each cell's noise-free expression. {_level_words(level_gap)} "
             f"(imputed minus truth, mean per gene: median {level_gap:+.2f} over all genes); "
             "r, which measures the pattern, ignores the level: each imputed map is drawn on "
             "the truth's colour scale (the level) and on its own (the pattern)")
    # What the imputed values are: a learnt combination, or the fixed blend's settings.
    combination = imputed.uns["spalstf"].get("combination") or {}
    if combination.get("kind") == "stack":
        # per predictor (summed over its views and readouts): "ridge 0.40", not the column
        # names "ridge|spatial|expression", which a reader of the figure cannot decode
        by_predictor: dict[str, float] = {}
        for name, value in (combination.get("weights") or {}).items():
            predictor = parse(str(name))[0]
            by_predictor[predictor] = by_predictor.get(predictor, 0.0) + float(value)
        shown = sorted(by_predictor.items(), key=lambda kv: -kv[1])[:3]
        title += ("\nImputed values: a weighted combination of base predictors, the weights "
                  "learnt on the ST's own known genes, hidden in turn (largest: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in shown) + ")")
    else:
        parts = []
        if depth > 0:
            parts.append(f"{1 - depth:.0%} the expression, {depth:.0%} the value expected at "
                         "the spot's depth (its count total: lower where it holds few counts)")
        if weight == 0:
            parts.append("the prior's prediction alone (no refinement by the diffusion model)")
        elif weight < 1:
            parts.append(f"the prior's prediction + {weight:.0%} of the diffusion model's "
                         "refinement")
        if parts:
            title += "\nImputed values: " + "; ".join(parts)
    pl.spatial(imputed, genes, truth=truth,
               truth_label="simulated truth\n(noise-free, not measured by the ST)",
               scale=DEMO_SCALE, labels=labels, title=title, path=path)
    return path


def cmd_demo(args: argparse.Namespace) -> int:
    """Simulate, impute, score against the simulated truth, write .h5ad and a PNG."""
    import numpy as np

    import spalstf
    from spalstf import io

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    options = _training_options(args)
    if args.fast:  # a smoke run: small data, short training, few sampling steps
        st, sc = spalstf.datasets.simulate(n_st=300, n_sc=400, n_genes=60, n_measured=45,
                                           seed=args.seed)
        options.update(epochs=args.epochs or 3, n_steps=3, n_samples=2)
    else:
        st, sc = spalstf.datasets.simulate(seed=args.seed)
    print(f"simulated: ST {st.n_obs} cells x {st.n_vars} measured genes; reference "
          f"{sc.n_obs} cells x {sc.n_vars} genes")
    imputed = spalstf.impute(st, sc, **options)
    truth = st.obsm["truth"][list(imputed.var_names)]
    pcc = np.array([np.corrcoef(truth.iloc[:, j], imputed.X[:, j])[0, 1]
                    for j in range(imputed.n_vars)])
    order = np.argsort(-np.nan_to_num(pcc, nan=-2))
    print(f"\nimputed {imputed.n_vars} unmeasured genes; Pearson r with the simulated truth:")
    print(f"  median {np.nanmedian(pcc):.3f}   mean {np.nanmean(pcc):.3f}   "
          f"min {np.nanmin(pcc):.3f}   max {np.nanmax(pcc):.3f}")
    for j in list(order[:5]) + list(order[-3:]):
        print(f"  {imputed.var_names[j]:>10s}  r = {pcc[j]:.3f}")
    # r ignores the level; the figure's truth-scaled maps show it, and this number says it.
    print(f"  imputed minus truth, mean per gene: median {_level_gap(imputed, truth):+.2f} "
          "(r measures the pattern, not the level)")
    check = imputed.uns["spalstf"].get("self_check")
    if check is not None:  # what a user without a truth would have known beforehand
        print(f"self-check (no truth used): median r {check['median_pcc']:.3f} over "
              f"{check['n_genes']} hidden measured genes, against their noisy measured counts "
              "(the simulated truth above is noise-free, hence higher)"
              + ("; combination learnt: " + format_weights(check["weights"])
                 if check.get("weights") else ""))
        expected = imputed.var["expected_pcc"].to_numpy()
        ok = np.isfinite(pcc)
        if ok.sum() > 2 and np.std(expected[ok]) > 0:
            rho = np.corrcoef(expected[ok], pcc[ok])[0, 1]
            print(f"per-gene expected r vs the truth's r: correlation {rho:.2f}")
    h5ad = io.write_h5ad(imputed, out_dir / "demo_imputed.h5ad", overwrite=True)
    png = _demo_figure(imputed, truth, pcc, n_ref=sc.n_obs, path=out_dir / "demo_imputed.png")
    written = [str(h5ad), str(png)]
    if check is not None and {"lower", "upper"} <= set(imputed.layers.keys()):
        # What a user without a truth sees: how far to trust the run (spalstf.pl.confidence).
        from spalstf import pl

        confidence = out_dir / "demo_confidence.png"
        pl.confidence(imputed, path=confidence)
        written.append(str(confidence))
        print(f"{confidence}: a typical gene's imputed values and the width of their "
              "intervals in space, and the self-check's measured r per hidden gene beside the "
              "run's expected median r")
    print(f"\nwrote {', '.join(written[:-1])} and {written[-1]} in "
          f"{time.perf_counter() - start:.0f} s")
    return 0
