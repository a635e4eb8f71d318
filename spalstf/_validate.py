"""The checks of the user's options that `spalstf.api`, `spalstf.model` and the command line
share: each turns a value into what the code below reads, or raises an error naming the
argument and what it accepts. Nothing here reads data or fits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spalstf import runtime
from spalstf.config import INFERENCE_STAGES, Config
from spalstf.train import distributed

#: Config fields that may differ between fit and impute: those of the sample and readout stages
#: (they act at sampling time only).
INFERENCE_OPTIONS = Config.fields(*INFERENCE_STAGES)


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> CUDA when available, else CPU; anything else must be a usable torch device."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"`device` must be 'auto', 'cpu', 'cuda' or 'cuda:N'; "
                         f"received {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device` is {device!r} but no CUDA device is available; "
                         "use device='auto' or 'cpu'")
    return dev


def merge_options(config: Config | Mapping[str, Any] | None, **options: Any) -> Config:
    """`config` (a `Config`, a dict of its fields over the defaults, or None: the defaults)
    with every keyword option that is not None applied; validated, unknown names refused."""
    if config is None:
        base = Config()
    elif isinstance(config, Config):
        base = config
    elif isinstance(config, Mapping):
        unknown = sorted(str(k) for k in set(config) - set(Config.fields()))
        if unknown:
            raise TypeError(f"`config` has unknown field(s) {unknown}; the fields of "
                            f"spalstf.Config are {sorted(Config.fields())}")
        base = Config().replace(**config)
    else:
        raise TypeError(f"`config` must be a spalstf.Config or a dict of its fields; received "
                        f"{type(config).__name__}")
    return base.replace(**{k: v for k, v in options.items() if v is not None})


def check_flag(value: Any, arg: str) -> bool:
    """`value` as a bool; a TypeError naming `arg` unless it is True or False."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"`{arg}` must be True or False; received {value!r}")
    return bool(value)


def training_device(device: str) -> torch.device:
    """The device of this process; joins torchrun's process group when launched by it."""
    dev = distributed.setup(resolve_device(device))
    if dev.type == "cpu":
        runtime.use_all_cores()
    return dev


#: The largest seed: torch's generators take 64-bit seeds, and a fit also seeds one with
#: seed + a small offset; 2**63 - 1 (int64) keeps every such seed in range.
MAX_SEED = 2**63 - 1


def check_seed(seed: Any) -> int:
    """`seed` as an int; a ValueError unless it is an integer from 0 to `MAX_SEED`."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
            or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"`seed` must be an integer from 0 to 2**63 - 1; received {seed!r}")
    return int(seed)


def check_readout(cfg: Config, log_normalized: bool) -> None:
    """A ValueError where the readout (`Config.output`, `Config.depth_weight`) needs the ST's
    counts and the input is log-normalised."""
    if cfg.output == "at_depth" and log_normalized:
        raise ValueError("`output='at_depth'` needs the ST's counts (each cell's depth); "
                         "received log-normalised input (log_normalized=True): use "
                         "output='expression'")
    if cfg.depth_weight > 0 and log_normalized:
        raise ValueError(f"`depth_weight` above 0 needs the ST's counts (each cell's depth); "
                         f"received {cfg.depth_weight!r} with log-normalised input "
                         "(log_normalized=True): use depth_weight=0")


def shard_rows(shard: Any, n: int) -> tuple[int, int]:
    """The cells [first, last) of shard (i, n_shards): contiguous, sizes within one."""
    if shard is None:
        return 0, n
    if (not isinstance(shard, Sequence) or len(shard) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                       for v in shard) or not 0 <= shard[0] < shard[1]):
        raise ValueError(f"`shard` must be (i, n) with 0 <= i < n; received {shard!r}")
    i, count = int(shard[0]), int(shard[1])
    return n * i // count, n * (i + 1) // count


def check_out_path(out: Any, overwrite: bool) -> None:
    """Refuse an `out` that the result could not be written to, naming why: not a path, not
    an .h5ad, an existing file (unless `overwrite`) or folder, or a place where no file can be
    made. Missing folders are fine (the writer creates them) when the nearest existing one is
    a writable folder."""
    if out is None:
        return
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"`out` must be the path of an .h5ad file (str or os.PathLike); "
                        f"received {type(out).__name__}")
    path = Path(out)
    if path.suffix.lower() != ".h5ad":
        raise ValueError(f"`out` must be an .h5ad file (suffix .h5ad); received {str(out)!r}")
    if path.is_dir():
        raise IsADirectoryError(f"`out` must be a file; {str(out)!r} is a folder")
    if path.exists() and not overwrite:
        raise FileExistsError(f"`out` {str(out)!r} exists; pass overwrite=True to replace it")
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"`out` {str(out)!r} cannot be written: {str(folder)!r} is "
                                 "a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"`out` {str(out)!r} cannot be written: the folder "
                              f"{str(folder)!r} is not writable")
