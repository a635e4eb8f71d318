"""The `spalstf` command line: impute, fit, demo, benchmark.

User errors (bad files, genes, options) exit with status 2 and a one-line message, a training
failure (non-finite loss) with status 1, Ctrl-C with status 130; `--debug` shows the traceback
instead. Outputs are written atomically and never replace an existing file without --force.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("spalstf")


def _genes(args: argparse.Namespace) -> list[str] | None:
    if args.genes and args.genes_file:
        raise ValueError("give either --genes or --genes-file, not both")
    if args.genes:
        return [g.strip() for g in args.genes.split(",") if g.strip()]
    if args.genes_file:
        text = Path(args.genes_file).read_text()
        return [g.strip() for line in text.splitlines() for g in line.split(",") if g.strip()]
    return None


def _check_output(path: str, force: bool, inputs: list[str]) -> Path:
    out = Path(path)
    for src in inputs:
        if src and Path(src).exists() and out.resolve() == Path(src).resolve():
            raise ValueError(f"the output {path!r} is one of the inputs; choose another path")
    if out.exists() and not force:
        raise ValueError(f"{path!r} exists; pass --force to overwrite it")
    return out


def _bars(args: argparse.Namespace) -> bool:
    """Whether to draw progress bars: unless --quiet, and only when stderr is a terminal. Off a
    terminal (a log file, a pipe, a job's output) a bar cannot redraw itself: its updates and
    the carriage returns that erase it would run into the next log line. The phase lines are
    the command's log handler's (`_log_handler`), which this does not change."""
    return not args.quiet and _is_terminal(sys.stderr)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _training_options(args: argparse.Namespace) -> dict[str, Any]:
    """seed, device, progress (`_bars`), and each field of `Config`'s train stage given by its
    flag (--epochs, --max-steps, --max-time, --batch-size; --max-cells for fit)."""
    from spalstf.config import TRAIN, Config

    options = {"seed": args.seed, "device": args.device, "progress": _bars(args)}
    options.update({name: getattr(args, name) for name in Config.fields(TRAIN)
                    if getattr(args, name, None) is not None})
    if getattr(args, "predictors", None):
        options["predictors"] = tuple(n.strip() for n in args.predictors.split(",") if n.strip())
    for name in ("checkpoint", "checkpoint_every", "resume"):  # fit and impute only
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    return options


#: --self-check's choices as the `self_check` argument of spalstf.impute / selfcheck.wanted.
SELF_CHECK = {"auto": "auto", "on": True, "off": False}

#: The formats `spalstf impute --out` writes, by suffix.
RESULT_SUFFIXES = (".h5ad", ".rds")


def _write_result(result: Any, out: Path, st_path: str, force: bool) -> None:
    from spalstf import io

    if out.suffix.lower() == ".rds":
        base = st_path if st_path.lower().endswith(".rds") else None
        io.write_rds(result, out, base=base, overwrite=force)
    else:
        io.write_h5ad(result, out, overwrite=force)


def _shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        i = n = -1
    if not 0 <= i < n:
        raise ValueError(f"--shard must be i/n with 0 <= i < n (e.g. 0/4); received {text!r}")
    return i, n


def _spatial(args: argparse.Namespace) -> Any:
    """--spatial-key KEY -> "KEY" (an obsm key, or obs columns "x,y"), --no-spatial -> False,
    neither -> None (obsm["spatial"], else obs columns such as x and y)."""
    if args.no_spatial:
        return False
    return args.spatial_key


def _self_check_summary(result: Any, out: Path, stream: bool) -> dict[str, Any] | None:
    """median_pcc, median_spcc, n_genes, weights and the expected accuracy with all known
    genes (expected_median_pcc, its se and interval) of the result's self-check, or None.

    A streamed result is on disk: only these few entries of its uns are read back.
    """
    keys = ("median_pcc", "median_spcc", "n_genes", "weights", "expected_median_pcc",
            "expected_median_pcc_se", "expected_median_pcc_interval", "expected")
    if stream:
        import h5py
        from anndata.io import read_elem

        with h5py.File(out, "r") as f:
            group = f.get("uns/spalstf/self_check")
            if group is None:
                return None
            return {k: read_elem(group[k]) for k in keys if k in group}
    check = getattr(result, "uns", {}).get("spalstf", {}).get("self_check")
    return None if check is None else {k: check[k] for k in keys if k in check}


def format_settings(settings: dict[str, Any]) -> str:
    """{"knn_weight": 0.5, "output": "at_depth"} -> "knn_weight=0.5, output=at_depth"."""
    def value(v: Any) -> str:
        return f"{v:g}" if isinstance(v, (float, int)) and not isinstance(v, bool) else str(v)

    return ", ".join(f"{k}={value(v)}" for k, v in settings.items())


def format_weights(weights: dict[str, Any], top: int = 4) -> str:
    """The largest weights of a stack, "knn|spatial|expression 0.41, ridge|raw|expression 0.30,
    ... (7 columns)"; "" for none."""
    ranked = sorted(((str(k), float(v)) for k, v in (weights or {}).items()),
                    key=lambda kv: -kv[1])
    if not ranked:
        return ""
    shown = ", ".join(f"{k} {v:.2f}" for k, v in ranked[:top])
    return shown + (f", ... ({len(ranked)} columns)" if len(ranked) > top else "")


def _format_self_check(check: dict[str, Any]) -> str:
    weights = format_weights(check.get("weights") or {})
    return (f"self-check: median PCC {float(check['median_pcc']):.3f}, SPCC "
            f"{float(check['median_spcc']):.3f} over {int(check['n_genes'])} hidden known genes"
            + (f"; combination learnt: {weights}" if weights else "") + _format_expected(check))


def _format_expected(check: dict[str, Any]) -> str:
    """A second line: the run's expected median PCC with all its known genes, +- its standard
    error and its interval (`spalstf.combine.expected.full_panel`); "" without one."""
    if "expected_median_pcc" not in check:
        return ""
    lower, upper = (float(v) for v in check["expected_median_pcc_interval"])
    extra = check.get("expected") or {}
    n_known = int(extra.get("n_known", check["n_genes"]))
    return (f"\nspalstf: expected with all {n_known} known genes: median PCC "
            f"{float(check['expected_median_pcc']):.3f} +- "
            f"{float(check['expected_median_pcc_se']):.3f} "
            f"({100 * float(extra.get('level', 0.9)):.0f}% {lower:.3f} to {upper:.3f})")


def cmd_impute(args: argparse.Namespace) -> int:
    """Impute; an .h5ad ST is read backed and an .h5ad result written a chunk at a time."""
    import spalstf
    from spalstf import io

    shard = _shard(args.shard)
    if Path(args.out).suffix.lower() not in RESULT_SUFFIXES:
        raise ValueError(f"--out must name an .h5ad or .rds file (the suffix says the format); "
                         f"received {args.out!r}")
    if args.model is None and args.sc is None:
        raise ValueError("give --sc REF.h5ad (to fit a model) or --model DIR (a saved model)")
    if args.model is not None and (args.self_check == "on" or args.self_check_folds is not None):
        raise ValueError("--self-check runs when fitting from --sc; a saved --model is not "
                         "refitted (use `--self-check auto` or leave it out)")
    if args.model is not None and args.predictors:
        raise ValueError("--predictors chooses what a fit from --sc trains; a saved --model "
                         "keeps its own")
    if shard is not None and args.model is None:
        raise ValueError("--shard needs --model: fit once with `spalstf fit`, then impute "
                         "each shard with the same model")
    out = _check_output(args.out, args.force, [args.st, args.sc])
    stream = out.suffix.lower() == ".h5ad"
    st = io.read(args.st, backed="r") if stream and args.st.lower().endswith(".h5ad") \
        else io.read(args.st)
    sampling = {"n_steps": args.n_steps, "n_samples": args.n_samples, "seed": args.seed,
                "progress": _bars(args), "st_layer": args.st_layer,
                "spatial": _spatial(args)}
    if args.values != "auto":  # given: the self-check then leaves it as it is
        sampling["output"] = args.values
    if args.model is not None:
        model = spalstf.load(args.model, device=args.device)
        result = model.impute(st, log_normalized=args.log_normalized or None,
                              batch_size=args.batch_size, shard=shard,
                              out=out if stream else None, overwrite=args.force, **sampling)
    else:
        sc = io.read(args.sc)
        checking = {"self_check": SELF_CHECK[args.self_check]}
        if args.self_check_folds is not None:
            checking["self_check_folds"] = args.self_check_folds
        result = spalstf.impute(st, sc, _genes(args), sc_layer=args.sc_layer,
                                log_normalized=args.log_normalized, **checking,
                                out=out if stream else None, overwrite=args.force,
                                **{**_training_options(args), **sampling})
    if stream:
        import h5py

        with h5py.File(out, "r") as f:
            n_obs, n_vars = f["X"].shape
    else:
        _write_result(result, out, args.st, args.force)
        n_obs, n_vars = result.n_obs, result.n_vars
    part = f" (shard {shard[0]}/{shard[1]})" if shard else ""
    print(f"imputed {n_vars} genes in {n_obs} cells{part} -> {out}")
    check = _self_check_summary(result, out, stream) if args.model is None else None
    if check is not None:
        print(_format_self_check(check), file=sys.stderr)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from spalstf import io

    if Path(args.out).suffix.lower() != ".h5ad":
        raise ValueError(f"--out must name an .h5ad file (the parts are .h5ad); received "
                         f"{args.out!r}")
    out = _check_output(args.out, args.force, list(args.parts))
    io.merge_h5ad(args.parts, out, overwrite=args.force)
    print(f"merged {len(args.parts)} parts -> {out}")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    import spalstf
    from spalstf import io
    from spalstf.combine import selfcheck

    if args.self_check == "on" and not args.st:
        raise ValueError("--self-check on needs --st: the combination is learnt on the ST's "
                         "own known genes")
    out = _check_output(args.model_out, args.force, [args.sc])
    if args.force:
        from spalstf.model.folder import check_replaceable

        # --force replaces only a model folder: a folder of the user's is refused now, before
        # the training, not once it is done
        check_replaceable(out, "--model-out")
    sc = io.read(args.sc)
    known = [g.strip() for g in args.known.split(",")] if args.known else None
    if known is None:
        if not args.st:
            raise ValueError("give --known G1,G2,... or --st ST.h5ad (its genes are the known)")
        known = [g for g in io.read(args.st).var_names if g in set(sc.var_names)]
    targets = _genes(args)
    if targets is None:
        targets = [g for g in sc.var_names if g not in set(known)]
    model = spalstf.fit(sc, known, targets, sc_layer=args.sc_layer,
                        log_normalized=args.log_normalized, **_training_options(args))
    from spalstf.train import distributed

    if args.st and selfcheck.wanted(SELF_CHECK[args.self_check], len(known)):
        # Learn the combination on the ST's own known genes, as `spalstf impute --sc` does, so
        # that `impute --model` combines by it, with intervals. Every process runs it (under
        # torchrun the inner fits train together); only rank 0 writes.
        check = model.self_check(io.read(args.st), sc, n_folds=args.self_check_folds or 2,
                                 seed=args.seed, st_layer=args.st_layer, sc_layer=args.sc_layer,
                                 spatial=_spatial(args), progress=_bars(args))
        if distributed.rank() == 0:
            print(_format_self_check(check.to_dict()), file=sys.stderr)

    if distributed.rank() == 0:  # under torchrun every process holds the same model
        model.save(out, overwrite=args.force)
        print(f"fitted {model} -> {out}")
    distributed.barrier()
    return 0


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


#: How the help marks an option that acts only when the diffusion network is trained: by
#: default it is not (`spalstf.config.DEFAULT_PREDICTORS`).
NETWORK_ONLY = "only with --predictors including network"


def _add_common(p: argparse.ArgumentParser) -> None:
    from spalstf.config import DEFAULT_PREDICTORS, NETWORKS, PREDICTOR_NAMES

    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    p.add_argument("--predictors", default=None, metavar="LIST",
                   help="base predictors to fit and combine, comma-separated, among "
                        + ", ".join(PREDICTOR_NAMES) + " (default: "
                        + ", ".join(DEFAULT_PREDICTORS) + "; the diffusion networks "
                        + " and ".join(NETWORKS) + " are trained only when listed)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"the network's training epochs (default 60; {NETWORK_ONLY})")
    p.add_argument("--max-steps", type=int, default=None,
                   help="the network's training budget in optimiser updates (default 300; "
                        f"{NETWORK_ONLY})")
    p.add_argument("--max-time", type=float, default=None,
                   help="the network's training budget in seconds (default none; results "
                        f"then depend on the machine's speed; {NETWORK_ONLY})")
    p.add_argument("--batch-size", type=int, default=None,
                   help="cells per chunk at imputation (memory only: the values do not "
                        "depend on it) and per mini-batch of the network's training "
                        "(default 256)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars and no phase lines (warnings and the result's "
                        "summary are still shown); bars are drawn only when stderr is a "
                        "terminal")


def _add_checkpoints(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None,
                   help="write the network's training state to this file every "
                        f"--checkpoint-every epochs ({NETWORK_ONLY})")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help=f"epochs between checkpoints (default 5; {NETWORK_ONLY})")
    p.add_argument("--resume", default=None,
                   help="continue the network's training from this checkpoint (same data, "
                        f"seed, options; {NETWORK_ONLY})")


def _add_inputs(p: argparse.ArgumentParser, st_required: bool,
                sc_required: bool = True) -> None:
    p.add_argument("--st", required=st_required, help="spatial data: .h5ad or .rds")
    p.add_argument("--sc", required=sc_required, help="scRNA-seq reference: .h5ad or .rds")
    p.add_argument("--genes", default=None, help="comma-separated genes to impute")
    p.add_argument("--genes-file", default=None, help="file of genes, one per line")
    p.add_argument("--st-layer", default=None, help="AnnData layer of the ST (default X)")
    p.add_argument("--sc-layer", default=None, help="AnnData layer of the reference")
    p.add_argument("--log-normalized", action="store_true",
                   help="inputs hold log-normalised values, not counts")
    p.add_argument("--force", action="store_true", help="overwrite the output")


def _add_self_check(p: argparse.ArgumentParser, when: str) -> None:
    p.add_argument("--self-check", choices=("auto", "on", "off"), default="auto",
                   help="learn the combination of the base predictions and estimate the "
                        "accuracy by hiding groups of the ST's known genes and imputing them "
                        f"({when}); auto: when the ST has at least 8 known genes (default "
                        "auto); its summary is printed to stderr")
    p.add_argument("--self-check-folds", type=int, default=None, metavar="N",
                   help="groups of known genes the self-check hides in turn (default 2)")


def _add_spatial(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--spatial-key", default=None, metavar="KEY",
                       help="the ST's cell coordinates for the spatial context: an obsm key, "
                            "or obs columns named with a comma (x,y) (default: "
                            "obsm['spatial'], else obs columns x,y, imagecol,imagerow or "
                            "array_col,array_row)")
    where.add_argument("--no-spatial", action="store_true",
                       help="no spatial context, even when the ST has coordinates")


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's help, wrapped at spaces only: never inside a word, a flag (--checkpoint-every),
    a gene or predictor name, or a comma-separated list (argparse's own wrapping also breaks at
    hyphens and cuts words longer than the line)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        import textwrap

        text = self._whitespace_matcher.sub(" ", text).strip()
        return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        text = self._whitespace_matcher.sub(" ", text).strip()
        return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False, break_long_words=False)


class _Parser(argparse.ArgumentParser):
    """The parser of `spalstf` and of each sub-command: help wrapped by `_HelpFormatter`.

    `fill`: a function that adds the sub-command's arguments the first time it parses or shows
    its help, so that the module defining them, and what that imports, loads only when the
    sub-command is used (`spalstf benchmark`'s module imports anndata and pandas)."""

    def __init__(self, *args: Any, fill: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        self._fill = fill

    def filled(self) -> _Parser:
        if self._fill is not None:
            fill, self._fill = self._fill, None
            fill(self)
        return self

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        return super(_Parser, self.filled()).parse_known_args(args, namespace)

    def format_help(self) -> str:
        return super(_Parser, self.filled()).format_help()

    def format_usage(self) -> str:
        return super(_Parser, self.filled()).format_usage()


#: `spalstf benchmark`'s line in `spalstf --help`: the same words its module registers
#: (`spalstf.evaluate._cli.add_parser`), which loads only when the sub-command is used.
BENCHMARK_HELP = "leave-genes-out cross-validation of spalstf and baselines on your data"


class _Into:
    """Stands for the sub-parsers action in `spalstf.evaluate._cli.add_parser(subparsers)`:
    its `add_parser` hands back `parser`, already registered, with the options given."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser

    def add_parser(self, name: str, *, help: str | None = None, **options: Any) -> Any:
        for key, value in options.items():
            setattr(self.parser, key, value)
        return self.parser


def _fill_benchmark(parser: argparse.ArgumentParser) -> None:
    from spalstf.evaluate import _cli as benchmark_cli

    benchmark_cli.add_parser(_Into(parser))
    _finish(parser)


def _finish(command: argparse.ArgumentParser) -> None:
    """What every sub-command takes after its own options: --debug and -v after the command
    too (`spalstf impute -v`), and the flags of its options for error messages."""
    _add_output_flags(command, default=argparse.SUPPRESS)
    command.set_defaults(flag_of=_flags_of(command))


def build_parser() -> argparse.ArgumentParser:
    from spalstf import __version__

    parser = _Parser(prog="spalstf", description=(
        "Impute unmeasured genes of spatial transcriptomics from a scRNA-seq reference. By "
        "default: fast base predictors (ridge, neighbours, SpaGE-style, Tangram-style "
        "transport, a count-likelihood mixture) combined with weights learnt on the ST's own "
        "known genes, with a 90% interval; the SpaLSTF diffusion network is trained only with "
        "--predictors including network."))
    parser.add_argument("--version", action="version", version=f"spalstf {__version__}")
    _add_output_flags(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("impute", help="fit on the reference and impute genes in the ST data")
    _add_inputs(p, st_required=True, sc_required=False)
    p.add_argument("--model", default=None,
                   help="a model folder saved by `spalstf fit` (instead of fitting on --sc)")
    p.add_argument("--out", required=True,
                   help="output .h5ad (written a chunk of cells at a time) or .rds")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="impute only the I-th of N contiguous shares of the cells (0-based; "
                        "needs --model); join the parts with `spalstf merge`")
    p.add_argument("--n-steps", type=int, default=None,
                   help=f"the network's sampling steps (default 5; {NETWORK_ONLY})")
    p.add_argument("--n-samples", type=int, default=None,
                   help=f"the network's samples per cell (default 4; {NETWORK_ONLY})")
    _add_self_check(p, "with --sc")
    p.add_argument("--values", choices=("auto", "expression", "at_depth"), default="auto",
                   help="expression: log1p(count / known-gene total x 1e4), free of the ST's "
                        "depth; at_depth: what the ST would measure at each cell's depth, on "
                        "average (needs counts); auto: the learnt combination weighs both "
                        "(counts, with --sc), else expression (default auto)")
    _add_spatial(p)
    _add_common(p)
    _add_checkpoints(p)
    p.set_defaults(func=cmd_impute)

    p = sub.add_parser("fit", help="fit a model on the reference and save it")
    _add_inputs(p, st_required=False)
    p.add_argument("--known", default=None,
                   help="comma-separated known genes (default: the genes of --st)")
    p.add_argument("--model-out", required=True, help="model folder to write")
    p.add_argument("--max-cells", type=int, default=None,
                   help="train on a seeded random subsample of at most this many cells")
    _add_self_check(p, "with --st; the model keeps the combination it learns, so that "
                       "`impute --model` uses it")
    _add_spatial(p)
    _add_common(p)
    _add_checkpoints(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("merge", help="join the part files of `spalstf impute --shard`")
    p.add_argument("parts", nargs="+", help="the part files (.h5ad), in any order")
    p.add_argument("--out", required=True, help="the merged .h5ad")
    p.add_argument("--force", action="store_true", help="overwrite the output")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("demo", help="simulate data, impute, score and plot (< 3 min on CPU)")
    p.add_argument("--out", default="spalstf_demo", help="output folder (default spalstf_demo)")
    p.add_argument("--fast", action="store_true", help="small data and short training (smoke run)")
    _add_common(p)
    p.set_defaults(func=cmd_demo)

    for command in sub.choices.values():
        _finish(command)
    sub.add_parser("benchmark", help=BENCHMARK_HELP, fill=_fill_benchmark)
    return parser


def _add_output_flags(p: argparse.ArgumentParser, default: Any) -> None:
    """--debug and -v, on the main parser (`default` False) and on each sub-command (`default`
    SUPPRESS: given there, they set the same value; absent, they leave the main parser's)."""
    p.add_argument("--debug", action="store_true", default=default, help="show tracebacks")
    p.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="more detail in the log: each fit's own lines, the penalties chosen, "
                        "checkpoints (DEBUG); the phases are shown without it")


def _flags_of(p: argparse.ArgumentParser) -> dict[str, str]:
    """Python keyword -> the flag that sets it ("max_steps" -> "--max-steps") for the options
    of the sub-command `p`, and the keywords the command passes under another name."""
    flags = {action.dest: next(o for o in action.option_strings if o.startswith("--"))
             for action in p._actions
             if any(o.startswith("--") for o in action.option_strings)}
    if "spatial_key" in flags:
        flags["spatial"] = flags["spatial_key"]
    if "force" in flags:
        flags["overwrite"] = flags["force"]
    return flags


def _named_by_flags(message: str, flag_of: dict[str, str]) -> str:
    """A library message with the keywords of the command's options named by their flags:
    "`max_steps` must be ..." -> "--max-steps must be ...", "pass overwrite=True" ->
    "pass --force", "pass resume='f'" -> "pass --resume 'f'"."""
    import re

    def backticked(match: re.Match) -> str:
        return flag_of.get(match.group(1), match.group(0))

    def assigned(match: re.Match) -> str:
        flag = flag_of.get(match.group(1))
        if flag is None:
            return match.group(0)
        return flag if match.group(2).startswith("True") else f"{flag} {match.group(2)}"

    message = re.sub(r"`(\w+)`", backticked, message)
    message = re.sub(r"\b([a-z_]+)=(True\b(?: \(--\w[\w-]*\))?|'[^']*'|\S+)", assigned,
                     message)
    return message


def _not_the_self_check_summary(record: logging.LogRecord) -> bool:
    """False for the library's line summing up the self-check ("self-check: median PCC ...",
    `spalstf.combine.selfcheck`): `impute` and `fit` print that summary themselves once the
    command is done (`_format_self_check`, with --quiet too), so the log leaves it out rather
    than show it twice."""
    return not (record.name == "spalstf.combine.selfcheck"
                and str(record.msg).startswith("self-check: median"))


def _log_handler(args: argparse.Namespace) -> logging.Handler:
    """The command's log on stderr: the phases (INFO) by default, DEBUG with -v, warnings
    only with --quiet."""
    from spalstf._logging import stream_handler

    if args.verbose:
        handler = stream_handler(logging.DEBUG)
    else:
        handler = stream_handler(logging.WARNING if getattr(args, "quiet", False)
                                 else logging.INFO)
    handler.addFilter(_not_the_self_check_summary)
    return handler


class _Stopped(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM during a command. Not a KeyboardInterrupt, which training
    takes for "stop early and keep the best weights so far": a command stopped so must exit
    with nothing written (the atomic writers remove their temporary files as it unwinds)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _StopOnSignals:
    """While a command runs, SIGINT and SIGTERM raise `_Stopped`; the previous handlers are
    restored after (tests and embedding programs call `main` in their own process)."""

    def __enter__(self) -> None:
        import signal
        import threading

        self.previous = {}
        if threading.current_thread() is not threading.main_thread():
            return  # handlers can only be set from the main thread

        def stop(signum: int, frame: Any) -> None:
            raise _Stopped(signum)

        for number in (signal.SIGINT, signal.SIGTERM):
            self.previous[number] = signal.signal(number, stop)

    def __exit__(self, *exc: Any) -> None:
        import signal

        for number, handler in self.previous.items():
            signal.signal(number, handler)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # heavy modules load in the command's function, not here
    # On the "spalstf" logger only, for this command: the library's own default (see
    # spalstf._logging) then stands aside, and nothing outlives the call.
    handler = _log_handler(args)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(handler.level)
    try:
        with _StopOnSignals():
            return int(args.func(args) or 0)
    except _Stopped as stop:
        if args.debug:
            raise
        import signal

        name = signal.Signals(stop.signum).name
        print(f"spalstf {args.command}: stopped by {name}; no output written", file=sys.stderr)
        return 128 + stop.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"spalstf {args.command}: interrupted", file=sys.stderr)
        return 130  # the shell's convention for SIGINT
    except (ValueError, TypeError, OSError, KeyError, ImportError, FloatingPointError) as err:
        if args.debug:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        message = _named_by_flags(message, getattr(args, "flag_of", {}))
        print(f"spalstf {args.command}: error: {message}", file=sys.stderr)
        return 1 if isinstance(err, FloatingPointError) else 2
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
