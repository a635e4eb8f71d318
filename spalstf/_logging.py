"""What a user sees while spalstf works: a line per phase (fit, each self-check fold, impute)
and the warnings, on stderr, when nobody has configured logging.

The library never configures logging for good: `shown` attaches a handler to the "spalstf"
logger (never the root logger) for the duration of one call, and only when the user has set up
nothing that would receive spalstf's records (no handler on the root logger or on "spalstf",
no level set on "spalstf"). A user's own logging configuration therefore always wins, and
``progress=False`` leaves only the warnings. The command line installs its own handler
(`spalstf.cli`), which `shown` then leaves alone.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

LOGGER_NAME = "spalstf"

# Set inside the self-check's inner fits: their fits are steps of a fold, not phases a user
# follows, so their lines drop to DEBUG and the fold's own line stands for them.
_inner_steps = contextvars.ContextVar("spalstf_inner_steps", default=False)


def phase_level() -> int:
    """The level of a phase's line: INFO, or DEBUG inside `inner_steps`."""
    return logging.DEBUG if _inner_steps.get() else logging.INFO


@contextlib.contextmanager
def inner_steps() -> Iterator[None]:
    """Mark the fits run inside it as steps of a larger phase (their lines at DEBUG)."""
    token = _inner_steps.set(True)
    try:
        yield
    finally:
        _inner_steps.reset(token)


def logging_configured() -> bool:
    """Whether the user has set up logging that receives spalstf's records: a level set on the
    "spalstf" logger, or a handler (other than its NullHandler) on it or on a logger it
    propagates to, the root logger included (``logging.basicConfig``, pytest's capture)."""
    node: logging.Logger | None = logging.getLogger(LOGGER_NAME)
    if node.level != logging.NOTSET:
        return True
    while node is not None:
        if any(not isinstance(h, logging.NullHandler) for h in node.handlers):
            return True
        if not node.propagate:
            break
        node = node.parent
    return False


class _Format(logging.Formatter):
    """"spalstf: message" for a phase, "spalstf warning: message" for a warning."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f" {record.levelname.lower()}"
        text = f"spalstf{level}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def stream_handler(level: int) -> logging.Handler:
    """A handler writing spalstf's records at `level` and above to the current stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(level)
    handler.setFormatter(_Format())
    return handler


@contextlib.contextmanager
def shown(progress: bool) -> Iterator[None]:
    """Show spalstf's phase lines (`progress`) and warnings on stderr while the block runs,
    unless the user has configured logging (`logging_configured`)."""
    if logging_configured():
        yield
        return
    logger = logging.getLogger(LOGGER_NAME)
    handler = stream_handler(logging.INFO if progress else logging.WARNING)
    logger.addHandler(handler)
    logger.setLevel(handler.level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


def shows_progress(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run `func` inside `shown`, with its keyword `progress` (True when not given)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with shown(kwargs.get("progress", True) is not False):
            return func(*args, **kwargs)

    return wrapper
