"""The argparse tree of `spalstf` and its help: the sub-commands and their options, help
wrapped at spaces only, `spalstf benchmark`'s options loaded only when it is used, and the
flags that name a library keyword in error messages."""

from __future__ import annotations

import argparse
from typing import Any

from spalstf.cli.commands import cmd_fit, cmd_impute, cmd_merge
from spalstf.cli.demo import cmd_demo

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


def _add_fitting(p: argparse.ArgumentParser, func: Any) -> None:
    """The options of a command that fits on the reference (impute, fit), after its own, and
    the function that runs it."""
    _add_spatial(p)
    _add_common(p)
    _add_checkpoints(p)
    p.set_defaults(func=func)


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
    _add_fitting(p, cmd_impute)

    p = sub.add_parser("fit", help="fit a model on the reference and save it")
    _add_inputs(p, st_required=False)
    p.add_argument("--known", default=None,
                   help="comma-separated known genes (default: the genes of --st)")
    p.add_argument("--model-out", required=True, help="model folder to write")
    p.add_argument("--max-cells", type=int, default=None,
                   help="train on a seeded random subsample of at most this many cells")
    _add_self_check(p, "with --st; the model keeps the combination it learns, so that "
                       "`impute --model` uses it")
    _add_fitting(p, cmd_fit)

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

