"""The `spalstf` command line: impute, fit, demo, benchmark.

User errors (bad files, genes, options) exit with status 2 and a one-line message, a training
failure (non-finite loss) with status 1, Ctrl-C with status 130; `--debug` shows the traceback
instead. Outputs are written atomically and never replace an existing file without --force.

The package: `main` here (the console entry point `spalstf`: logging, signals, errors);
`parser` builds the argparse tree and its help; `commands` runs impute, fit and merge; `demo`
runs the demo and draws its figure. Each command's heavy imports (torch, anndata, scanpy) sit
inside its function, so `spalstf --help` loads none of them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from spalstf.cli.parser import _named_by_flags, build_parser

logger = logging.getLogger("spalstf")

__all__ = ["main"]


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
