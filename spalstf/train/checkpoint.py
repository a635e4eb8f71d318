"""Training checkpoints: everything needed to continue a fit exactly where it stopped.

A checkpoint holds the network, its exponential moving average (EMA), the optimizer and
learning-rate schedule, both random generators, the early-stopping state (best loss, best
weights, epochs without improvement), the history and the seconds already spent. Resuming
from it with the same data, options and seed gives the same model as an uninterrupted run (on
CPU, bit for bit). What a checkpoint must match to be resumed (data, genes, seed, options) is
stored beside the state and checked with an error that names what differs.

Files are written atomically (`spalstf._atomic`), so a crash while writing leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spalstf._atomic import atomic_path
from spalstf._version import __version__
from spalstf.config import INFERENCE_STAGES, Config

logger = logging.getLogger(__name__)

FORMAT = "spalstf-checkpoint"
FORMAT_VERSION = 1
#: Options that may change between a checkpoint and the run that resumes it: when to stop and
#: how to sample (the self-check may choose the sampling-time weights anew). Every other option
#: shapes the training itself and must be the same.
FREE_OPTIONS = frozenset({"epochs", "max_steps", "max_time", "patience",
                          *Config.fields(*INFERENCE_STAGES)})


def data_fingerprint(*arrays: np.ndarray) -> str:
    """A short digest of the training matrices (shapes and per-gene sums): cheap, and enough to
    tell another data set or another preprocessing from the one a checkpoint was trained on."""
    digest = hashlib.blake2b(digest_size=12)
    for a in arrays:
        digest.update(repr(tuple(a.shape)).encode())
        if isinstance(a, np.ndarray):
            sums = np.asarray(a, dtype=np.float64).sum(axis=0)
        else:  # a matrix read a block of rows at a time (spalstf.data.CellRows)
            sums = sum(block.sum(axis=0, dtype=np.float64) for _, block in a.blocks())
        digest.update(sums.round(3).tobytes())
    return digest.hexdigest()


def _as_path(value: Any, arg: str) -> Path:
    if isinstance(value, bool) or not isinstance(value, str | os.PathLike):
        raise TypeError(f"`{arg}` must be a file path (str or os.PathLike) or None; received "
                        f"{type(value).__name__}")
    return Path(value)


def read_checkpoint(path: str | os.PathLike, arg: str = "resume") -> dict[str, Any]:
    """Load a checkpoint file, with a clear error when it is missing, damaged or foreign."""
    path = _as_path(path, arg)
    if not path.is_file():
        raise ValueError(f"`{arg}` {str(path)!r} does not exist or is not a file; expected a "
                         "checkpoint written by fit(..., checkpoint=path)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any decoding failure means a damaged file
        raise ValueError(f"`{arg}` {str(path)!r} cannot be read ({type(err).__name__}); the "
                         "file may be truncated or corrupted, or is not a spalstf checkpoint"
                         ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"`{arg}` {str(path)!r} is not a spalstf checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"`{arg}` {str(path)!r} is checkpoint format "
                         f"{state.get('format_version')!r} (spalstf "
                         f"{state.get('spalstf_version')}); this spalstf ({__version__}) "
                         f"resumes format {FORMAT_VERSION} only")
    return state


@dataclass
class Checkpointer:
    """Where and how often a fit writes checkpoints, and the state it resumes from.

    `meta` is what a checkpoint must match to be resumed: {"seed", "config", "known_genes",
    "target_genes", "data"} (see `data_fingerprint`).
    """

    path: Path | None
    every: int
    meta: dict[str, Any]
    resume_state: dict[str, Any] | None = None
    last_saved_epoch: int = -1

    @staticmethod
    def check_options(checkpoint: Any, checkpoint_every: Any, resume: Any
                      ) -> tuple[Path | None, int, Path | None]:
        """Validate the user's options (before any work); returns (path, every, resume)."""
        path = None if checkpoint is None else _as_path(checkpoint, "checkpoint")
        if isinstance(checkpoint_every, bool) or not isinstance(
                checkpoint_every, int | np.integer) or checkpoint_every < 1:
            raise ValueError(f"`checkpoint_every` must be a positive integer (epochs); "
                             f"received {checkpoint_every!r}")
        source = None if resume is None else _as_path(resume, "resume")
        if source is not None and not source.is_file():
            raise ValueError(f"`resume` {str(source)!r} does not exist or is not a file; "
                             "expected a checkpoint written by fit(..., checkpoint=path)")
        if path is not None and path.is_dir():
            raise ValueError(f"`checkpoint` {str(path)!r} is a folder; expected a file path")
        if path is not None and path.exists() and (
                source is None or path.resolve() != source.resolve()):
            raise FileExistsError(
                f"`checkpoint` {str(path)!r} exists; pass resume={str(path)!r} to continue "
                "from it, or remove it (or choose another path) to start afresh")
        return path, int(checkpoint_every), source

    @classmethod
    def create(cls, path: Path | None, every: int, resume: Path | None,
               meta: dict[str, Any]) -> Checkpointer | None:
        """A checkpointer, or None when neither writing nor resuming was asked for.

        Reads `resume` and refuses it when it was trained on other data, genes, seed or
        options (naming what differs)."""
        if path is None and resume is None:
            return None
        state = None
        if resume is not None:
            state = read_checkpoint(resume)
            _check_compatible(state["meta"], meta, resume)
        return cls(path, every, meta, state, -1 if state is None else int(state["epoch"]))

    def due(self, epochs_done: int) -> bool:
        return self.path is not None and epochs_done % self.every == 0

    def save(self, state: dict[str, Any]) -> None:
        """Write `state` (from the training loop) to `path`, atomically."""
        if self.path is None:
            return
        payload = {"format": FORMAT, "format_version": FORMAT_VERSION,
                   "spalstf_version": __version__, "torch_version": str(torch.__version__),
                   "meta": self.meta, **state}
        with atomic_path(self.path) as tmp:
            torch.save(payload, tmp)
        self.last_saved_epoch = int(state["epoch"])
        logger.debug("checkpoint after epoch %d written to %s", state["epoch"], self.path)


def _check_compatible(saved: dict[str, Any], current: dict[str, Any], source: Path) -> None:
    where = f"`resume` {str(source)!r}"
    if saved["seed"] != current["seed"]:
        raise ValueError(f"{where} was trained with seed={saved['seed']}; this call has "
                         f"seed={current['seed']}; resume with the same seed")
    for key, what in (("known_genes", "known genes"), ("target_genes", "target genes")):
        if list(saved[key]) != list(current[key]):
            extra = sorted(set(current[key]) - set(saved[key]))[:5]
            lacking = sorted(set(saved[key]) - set(current[key]))[:5]
            raise ValueError(f"{where} was trained on other {what} ({len(saved[key])}; this "
                             f"call has {len(current[key])}; new here, e.g. {extra}; missing "
                             f"here, e.g. {lacking})")
    if saved["data"] != current["data"]:
        raise ValueError(f"{where} was trained on other reference data (other cells, values or "
                         "preprocessing); resume with the data it was trained on")
    changed = {k: (saved["config"].get(k), v) for k, v in current["config"].items()
               if k not in FREE_OPTIONS and saved["config"].get(k) != v}
    if changed:
        detail = ", ".join(f"{k}={old!r} there, {new!r} here" for k, (old, new) in
                           sorted(changed.items())[:5])
        raise ValueError(f"{where} was trained with other options ({detail}); only "
                         f"{sorted(FREE_OPTIONS)} may change when resuming")
