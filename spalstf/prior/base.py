"""The interface every base predictor follows, and the reference it is fitted on.

A base predictor is a fast estimate of the target genes from the known genes (a ridge map, an
aligned-neighbour average, ...). The diffusion refines around their combination (`Blend`):
what is sampled is the residual of the targets around it. Each predictor has four moments:

1. `fit(reference, seed=...)`: on the reference, once, when the model is fitted;
2. `prepare(st_blocks)`: on the whole ST data set, once per imputation, before any chunk
   (statistics such as the ST's own z-scores); a no-op by default;
3. `predict(known)`: on one chunk of ST cells at a time, to the targets in model space
   (standardised target genes). A cell's prediction may depend on the cell, the reference
   and the statistics of `prepare`, never on which other cells share its chunk;
4. `state()` / `from_state()`: the fitted arrays, saved in the model file (numpy arrays only,
   so weights.pt stays loadable with ``torch.load(weights_only=True)``).

A predictor declares the scale it reads (`reads`): `MODEL`, the ST's known genes standardised
as the network reads them (`Config.align`), or `EXPRESSION`, their log-normalised values
(after the ST's spatial and expression smoothing), for predictors that align the two data sets
by their own statistics. `fit` always sees the reference standardised (its z-scores, which are
both the model's space and the reference's own statistics); `Reference.scalers` lead back to
the expression scale.

Predictors are estimators in the scikit-learn manner: each takes its own few settings in its
constructor (`RidgePrior(alpha=..., use_mixtures=...)`), and `config_fields` names the field of
`spalstf.Config` each is read from, so that one factory (`BasePredictor.from_config`,
`spalstf.prior.build`) builds any of them from a Config. The fitted arrays are keywords of the
constructor too, named as `state()` names them: `from_state` is then the same for every
predictor.

A new predictor is one module in this package: a subclass with a unique `name` and its
`config_fields`, registered in `spalstf.prior.PREDICTORS` so that saved models find it again
(and its name in `spalstf.config.PREDICTOR_NAMES`, for the command line's help).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from spalstf.config import Config

#: The scales a predictor may read (see the module's docstring).
MODEL = "model"
EXPRESSION = "expression"
SCALES = (MODEL, EXPRESSION)

#: Blocks of ST cells yielded to `BasePredictor.prepare`: each call of the function starts a
#: new pass (arrays of cells x known genes on the predictor's scale).
Blocks = Callable[[], Iterable[np.ndarray]]


@dataclass
class Reference:
    """The reference as predictors are fitted on it (model space: standardised genes).

    `known` and `target` are arrays, or matrices read a block of rows at a time
    (`spalstf.data.CellRows`) for references too large to hold densely.
    """

    known: Any  # (n_cells, n_known)
    target: Any  # (n_cells, n_target)
    #: (known, target) `spalstf.preprocess.Standardizer`s that made `known` and `target`
    #: (None: no way back to the expression scale, so no pseudo-spots)
    scalers: tuple | None = None
    #: each cell's count total over the known genes, which weighs it in a pseudo-spot as in a
    #: real one (None: log-normalised input, where cells weigh equally)
    depth: np.ndarray | None = None
    #: (n_atlas, n_known + n_target): the reference cells the model keeps (None: none)
    atlas: np.ndarray | None = None
    #: the cells a predictor may fit on (None: all); training holds its validation cells out
    rows: np.ndarray | None = None
    #: (n_atlas,) each atlas cell's type, the reference's ``obs["cell_type"]`` (None: none):
    #: the units the spot deconvolution mixes (`spalstf.prior.deconvolve`)
    cell_types: np.ndarray | None = None

    def fit_rows(self) -> np.ndarray:
        """The cells to fit on, as an index array."""
        return np.arange(self.known.shape[0]) if self.rows is None else np.asarray(self.rows)

    def atlas_for(self, predictor: str, *, scalers: bool = False) -> np.ndarray:
        """The atlas, for the `predictor` that reads it (its name in words); a ValueError
        when there is none (or, `scalers`, no way back to the expression scale)."""
        if self.atlas is None or (scalers and self.scalers is None):
            raise ValueError(f"the {predictor} needs the reference's atlas"
                             + (" and its scalers (the way back to the expression scale)"
                                if scalers else ""))
        return self.atlas


class BasePredictor(ABC):
    """A base predictor of the target genes (see the module's docstring).

    The constructor takes the predictor's own settings (those `config_fields` maps to fields of
    `spalstf.Config`) and, by keyword, its fitted arrays (the entries of `state()`).
    """

    #: Unique name: the key of its state in the model file and of its weight in a `Blend`.
    name: ClassVar[str]
    #: The scale of the known genes it reads: `MODEL` or `EXPRESSION`.
    reads: ClassVar[str] = MODEL
    #: Its constructor's settings and the field of `spalstf.Config` each is read from. Those of
    #: the sample stage may differ between fit and imputation: `from_state` takes the
    #: imputation's.
    config_fields: ClassVar[Mapping[str, str]] = {}
    #: It trains a diffusion network: a minute or more per fit on a CPU, so not a default
    #: predictor (`spalstf.config.DEFAULT_PREDICTORS`).
    network: ClassVar[bool] = False

    def __init__(self) -> None:
        self.device = torch.device("cpu")

    @classmethod
    def from_config(cls, config: Config, **fitted: Any) -> BasePredictor:
        """The predictor with its settings read from `config` (see `config_fields`), and the
        fitted arrays `fitted` (keywords of the constructor; none: a predictor to `fit`)."""
        return cls(**{parameter: getattr(config, field)
                      for parameter, field in cls.config_fields.items()}, **fitted)

    @abstractmethod
    def fit(self, reference: Reference, *, seed: int) -> None:
        """Fit on the reference (seeded: the same seed, the same predictor)."""

    def prepare(self, st_blocks: Blocks, *, device: torch.device | str = "cpu") -> None:
        """Statistics over the whole ST data set, read a block of cells at a time, and where
        `predict` computes (`device`). Called once per imputation, before `predict`."""
        self.device = torch.device(device)

    @abstractmethod
    def predict(self, known: np.ndarray) -> np.ndarray:
        """(cells, n_target) float32 targets in model space for one chunk of cells (their known
        genes on the `reads` scale)."""

    @abstractmethod
    def state(self) -> dict[str, np.ndarray]:
        """The fitted arrays (numpy only), enough for `from_state` to rebuild the predictor:
        each entry is the constructor's keyword of the same name."""

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray], config: Config) -> BasePredictor:
        """The predictor saved as `state`, with its settings read from `config`. A 0-d integer
        entry (a count such as `n_known`) becomes an int."""
        return cls.from_config(config, **{
            key: int(value) if np.ndim(value) == 0 and np.asarray(value).dtype.kind in "iu"
            else np.asarray(value) for key, value in state.items()})

    #: Entries of `state()` that may be absent (the others must be there).
    optional_state: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def state_shapes(cls, n_known: int, n_target: int) -> dict[str, tuple[int | str, ...] | int]:
        """What each entry of `state()` must be in a model of `n_known` known and `n_target`
        target genes, checked by `check_state` when a saved model loads: a shape, whose ints
        are fixed lengths and whose strs name a length the entries share (their rows: "cells",
        "clusters"); or an int, which the entry (a single integer) must equal. Entries not
        listed are not checked; the default lists none (a new predictor may add its own)."""
        return {}

    @classmethod
    def check_state(cls, state: Mapping[str, Any], n_known: int, n_target: int, *,
                    prefix: str = "") -> None:
        """A ValueError naming the first entry of a saved `state` (as `prefix` + its key) that
        is missing or does not fit `state_shapes`, with the shape expected and received:
        a file edited by hand or mixed from two models would otherwise load and broadcast its
        arrays against the genes silently."""
        sizes: dict[str, tuple[int, str]] = {}  # named length -> (length, entry that set it)
        for key, expected in cls.state_shapes(n_known, n_target).items():
            entry = f"{prefix}{key}"
            if key not in state:
                if key in cls.optional_state:
                    continue
                raise ValueError(f"lacks the entry {entry!r} (the {cls.name!r} predictor's "
                                 "saved state); the file is damaged or comes from another "
                                 "model")
            value = np.asarray(state[key])
            if isinstance(expected, int):
                if (value.shape != () or value.dtype.kind not in "iu"
                        or int(value) != expected):
                    shown = value.tolist() if value.size < 5 else f"of shape {value.shape}"
                    raise ValueError(f"entry {entry!r} must be the integer {expected} (as "
                                     f"model.json's genes give it); received {value.dtype} "
                                     f"{shown}")
                continue
            received = tuple(value.shape)
            ok = len(received) == len(expected)
            for length, want in zip(received, expected, strict=False) if ok else ():
                if isinstance(want, int):
                    ok = ok and length == want
                elif want in sizes:
                    ok = ok and length == sizes[want][0]
                else:
                    # a required entry with no rows is no fitted state at all
                    ok = ok and (length > 0 or key in cls.optional_state)
                    sizes[want] = (length, entry)
            if not ok:
                named = "; ".join(f"{want} = {n} as in {where!r}" for want, (n, where)
                                  in sizes.items() if want in expected and where != entry)
                raise ValueError(
                    f"entry {entry!r} has shape {received}; expected "
                    f"({', '.join(str(w) for w in expected)}{',' if len(expected) == 1 else ''})"
                    f" for model.json's {n_known} known and {n_target} target genes"
                    f"{f' ({named})' if named else ''}")


class ProfilePredictor(BasePredictor):
    """A predictor whose fitted state is reference profiles: `profiles`, (n_profiles,
    n_known + n_target) known then target genes in model space (atlas cells, pseudo-spots),
    and `n_known`, how many of the columns are known genes."""

    def __init__(self, *, profiles: np.ndarray | None = None,
                 n_known: int | None = None) -> None:
        super().__init__()
        self.profiles, self.n_known = profiles, n_known

    def state(self) -> dict[str, np.ndarray]:
        return {"profiles": self.profiles, "n_known": np.asarray(self.n_known, dtype=np.int64)}

    @classmethod
    def state_shapes(cls, n_known: int, n_target: int) -> dict:
        return {"profiles": ("profiles", n_known + n_target), "n_known": n_known}


#: ST cells (evenly spaced) whose known genes give the statistics of `prepare`: they bound its
#: cost on large data sets.
STAT_CELLS = 50000


def landmarks(st_blocks: Blocks, max_cells: int) -> np.ndarray:
    """Every k-th cell of those the blocks yield, k chosen so that at most `max_cells` are kept
    (the cells a predictor learns its statistics of the ST on); an empty array for no cells."""
    n_cells = sum(len(b) for b in st_blocks())
    stride = max(1, -(-n_cells // max_cells))
    seen, picked = 0, []
    for block in st_blocks():
        picked.append(block[(-seen) % stride::stride])
        seen += len(block)
    return np.concatenate(picked) if picked else np.zeros((0, 0), np.float32)


def spaced_blocks(read: Callable[[np.ndarray], np.ndarray], n_cells: int, block: int,
                  max_cells: int = STAT_CELLS) -> Blocks:
    """`prepare`'s blocks: `read(cells)` of at most `max_cells` evenly spaced cells of
    `n_cells`, `block` cells at a time."""
    spaced = np.unique(np.linspace(0, n_cells - 1, min(n_cells, max_cells)).astype(int))

    def blocks() -> Iterator[np.ndarray]:
        for start in range(0, len(spaced), block):
            yield read(spaced[start:start + block])

    return blocks
