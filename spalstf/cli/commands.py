"""`spalstf impute`, `spalstf fit` and `spalstf merge`: what each command does with its
parsed arguments, and the summaries they print (the self-check's, the learnt weights)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


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

