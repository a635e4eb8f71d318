"""Reading the user's inputs without modifying them, and matching genes between data sets.

Every input (AnnData, numpy array, scipy sparse matrix, pandas DataFrame) becomes an
`Expression`: a read-only view of the cells x genes matrix with its cell and gene names. Columns
are copied out on demand (`Expression.columns`), a block of cells at a time, so that nothing of
the input is ever written to and large inputs are never densified whole.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger(__name__)


@dataclass
class Expression:
    """A cells x genes matrix with names; `kind` records the input type to return the same."""

    matrix: Any
    genes: list[str]
    cells: list[str]
    kind: str
    source: Any = None
    #: The base of the log an AnnData declares in uns["log1p"]["base"] (scanpy's mark of
    #: log1p(base=2) and the like); None: natural log, or no mark. See `value_scale`.
    log_base: float | None = None
    _gene_pos: dict[str, int] = field(default_factory=dict, repr=False)
    #: (arg, log_normalized) of the `check_values` passed: not read again
    checked: set = field(default_factory=set, repr=False)
    #: Whether every value is an integer (`is_integer_valued`); None until scanned
    integer_valued: bool | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._gene_pos = {g: i for i, g in enumerate(self.genes)}

    @property
    def n_cells(self) -> int:
        return len(self.cells)

    @property
    def named_cells(self) -> list[str] | None:
        """The cell names the input carries (an AnnData's obs_names, a DataFrame's index);
        None for a bare matrix, whose names are made up (by which nothing can be matched)."""
        return self.cells if self.kind in ("anndata", "dataframe") else None

    @property
    def value_scale(self) -> float:
        """The factor the values are read with: ln(log_base) for log values of another base
        (so the model always sees natural-log values, as from its own log1p), else 1.

        Decided by the data rather than by the `log_normalized` declaration, so that every
        read agrees whichever is made first: integer values are counts (a layer of counts
        beside a logged X keeps the uns mark) and are read as they are; non-integer values
        under a base are its logs. `check_values` refuses the two other pairings (integers
        declared log-normalised, non-integers declared counts).
        """
        if self.log_base is None:
            return 1.0
        if self.integer_valued is None:
            self.integer_valued = is_integer_valued(self.matrix)
        return 1.0 if self.integer_valued else math.log(self.log_base)

    def gene_positions(self, genes: Sequence[str]) -> np.ndarray:
        return np.asarray([self._gene_pos[g] for g in genes], dtype=np.int64)

    def columns(self, genes: Sequence[str], rows: slice | np.ndarray | None = None) -> np.ndarray:
        """A float64 copy of the given genes (columns), optionally for some cells only."""
        cols = self.gene_positions(genes)
        m = self.matrix
        if rows is not None:
            m = m[rows]
        block = m[:, cols]
        if sp.issparse(block):
            block = block.toarray()
        out = np.array(block, dtype=np.float64)  # always a copy
        scale = self.value_scale
        if scale != 1.0:
            out *= scale  # the copy, never the input
        return out


def _names(values: Sequence[Any], what: str, arg: str) -> list[str]:
    names = [str(v) for v in values]
    seen: set[str] = set()
    dups = sorted({n for n in names if n in seen or seen.add(n)})
    if dups and what == "gene":
        raise ValueError(
            f"`{arg}` has duplicated gene names, for example {dups[:5]}; "
            "make them unique (e.g. AnnData.var_names_make_unique()) before imputing"
        )
    if dups:
        logger.warning("`%s` has %d duplicated cell names (for example %s); their random "
                       "draws coincide", arg, len(dups), dups[:3])
    return names


def _log1p_base(data: Any, arg: str) -> float | None:
    """The base an AnnData's uns["log1p"]["base"] declares (None: natural log, or none said).

    scanpy's ``pp.log1p(base=b)`` records b there; its values are log_b(1 + x), which read as
    natural logs would be 1/ln(b) times too large (1.44x for log2).
    """
    uns = getattr(data, "uns", None)
    mark = uns.get("log1p") if isinstance(uns, Mapping) else None
    base = mark.get("base") if isinstance(mark, Mapping) else None
    if base is None:
        return None
    try:
        value = float(base)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 1):
        raise ValueError(f"`{arg}.uns['log1p']['base']` must be None (natural log) or the base "
                         f"of the log, a number above 1 (as scanpy's log1p(base=2) records); "
                         f"received {base!r}")
    return value


def as_expression(data: Any, *, genes: Sequence[str] | None = None, layer: str | None = None,
                  arg: str = "data", genes_arg: str = "genes") -> Expression:
    """Wrap `data` (cells x genes) without copying or modifying it.

    Parameters
    ----------
    data
        AnnData, numpy array, scipy sparse matrix or pandas DataFrame (cells x genes).
    genes
        Gene names of a bare matrix (required for numpy and scipy inputs; checked otherwise).
    layer
        AnnData layer to read instead of X.
    arg, genes_arg
        Argument names used in error messages.
    """
    try:
        import anndata
    except ImportError:  # pragma: no cover - anndata is a dependency
        anndata = None

    if anndata is not None and isinstance(data, anndata.AnnData):
        if layer is None:
            matrix = data.X
        elif layer not in data.layers:
            raise ValueError(f"`{arg}` has no layer {layer!r}; its layers are "
                             f"{sorted(data.layers.keys())}")
        else:
            matrix = data.layers[layer]
        if matrix is None:
            raise ValueError(f"`{arg}.X` is empty (None); pass a layer with `layer=`")
        gene_names = _names(data.var_names, "gene", f"{arg}.var_names")
        if genes is not None and list(map(str, genes)) != gene_names:
            raise ValueError(f"`{genes_arg}` was given but `{arg}` is an AnnData, whose var_names "
                             f"name its genes; drop `{genes_arg}`")
        expr = Expression(matrix, gene_names, _names(data.obs_names, "cell", f"{arg}.obs_names"),
                          "anndata", data, log_base=_log1p_base(data, arg))
    elif isinstance(data, pd.DataFrame):
        if layer is not None:
            raise ValueError(f"`layer` applies to AnnData only; `{arg}` is a DataFrame")
        gene_names = _names(data.columns, "gene", f"{arg}.columns")
        try:
            matrix = data.to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"`{arg}` must hold numbers only (cells x genes); "
                            f"its dtypes are {sorted(set(map(str, data.dtypes)))}") from err
        expr = Expression(matrix, gene_names, _names(data.index, "cell", f"{arg}.index"),
                          "dataframe", data)
    elif isinstance(data, np.ndarray) or sp.issparse(data):
        if layer is not None:
            raise ValueError(f"`layer` applies to AnnData only; `{arg}` is a matrix")
        if data.ndim != 2:
            raise ValueError(f"`{arg}` must be a 2-d cells x genes matrix; received shape "
                             f"{data.shape}")
        if genes is None:
            raise ValueError(f"`{genes_arg}` is required when `{arg}` is a bare matrix: "
                             f"a list of {data.shape[1]} gene names, one per column")
        if len(genes) != data.shape[1]:
            raise ValueError(f"`{genes_arg}` must name each of the {data.shape[1]} columns of "
                             f"`{arg}`; received {len(genes)} names")
        matrix = data.tocsr() if sp.issparse(data) and not sp.isspmatrix_csr(data) else data
        expr = Expression(matrix, _names(genes, "gene", genes_arg),
                          [f"cell_{i}" for i in range(data.shape[0])],
                          "sparse" if sp.issparse(data) else "numpy", data)
    else:
        raise TypeError(f"`{arg}` must be an AnnData, numpy array, scipy sparse matrix or "
                        f"pandas DataFrame (cells x genes); received {type(data).__name__}")
    if expr.n_cells == 0 or len(expr.genes) == 0:
        raise ValueError(f"`{arg}` is empty: {expr.n_cells} cells x {len(expr.genes)} genes")
    return expr


def _first_entry(part: Any, bad: np.ndarray) -> tuple[int, int]:
    """(row, column) within `part` of the first value flagged in `bad` (aligned with
    `part.data` for sparse blocks, with the dense block otherwise)."""
    if sp.issparse(part):
        coo = part.tocoo()
        k = int(np.flatnonzero(bad)[0])
        return int(coo.row[k]), int(coo.col[k])
    row, col = np.argwhere(bad)[0]
    return int(row), int(col)


#: Relative distance to the nearest integer within which a value counts as an integer: float32
#: keeps 24 bits (a relative step of 6e-8), so counts that went through a float32 conversion
#: (41 -> 41.0000038) lie within a few steps of their integer, and 1e-6 is 16 steps; values of
#: normalised data lie that close to an integer only by rare chance, never all of them.
INTEGER_TOLERANCE = 1e-6

#: The largest value log-normalised data can hold: log1p of a cell normalised to a million
#: counts (CPM, the largest target in common use; Seurat's and this package's is 1e4, scanpy's
#: the median total) whose counts are all in one gene. Larger values are counts, or logs of
#: another base (log2(CPM + 1) reaches 19.9).
LOG_MAX = math.log1p(1e6)


def _fractional(values: np.ndarray) -> np.ndarray:
    """Where `values` are farther from an integer than float32 round-off
    (`INTEGER_TOLERANCE`)."""
    with np.errstate(invalid="ignore"):  # inf - inf: NaN, not fractional (refused elsewhere)
        distance = np.abs(values - np.rint(values))
        return distance > INTEGER_TOLERANCE * np.maximum(1.0, np.abs(values))


def is_integer_valued(matrix: Any, block: int = 8192) -> bool:
    """Whether every value of `matrix` is an integer (up to float32 round-off), read block by
    block so that a large input is never copied whole."""
    for start in range(0, matrix.shape[0], block):
        part = matrix[start:start + block]
        values = part.data if sp.issparse(part) else np.asarray(part)
        if values.dtype.kind == "f" and values.size and _fractional(values).any():
            return False
    return True


def check_values(expr: Expression, *, log_normalized: bool, arg: str,
                 block: int = 8192) -> None:
    """Refuse NaN, Inf and negative values, non-integer values where counts are declared,
    values that cannot be log-normalised ones where those are declared (only integers, or
    above `LOG_MAX`), and data that are all 0.

    Values within float32 round-off of an integer (`INTEGER_TOLERANCE`) are integers. Read
    block by block, so that inputs are never copied whole. Errors name the first offending
    cell and gene. Cells whose values are all 0 warn (they carry nothing of their own to
    predict from). Logs of another base that an AnnData declares (uns["log1p"]["base"]) are
    checked, and read, in natural log (`Expression.value_scale`). A second check of the same
    data with the same declaration is skipped (its warnings are not repeated).
    """
    if (arg, log_normalized) in expr.checked:
        return
    m = expr.matrix
    scale = "log-normalised values" if log_normalized else "counts"
    all_integer, largest = True, 0.0
    empty_cells: list[int] = []

    def where(start: int, part: Any, bad: np.ndarray) -> str:
        row, col = _first_entry(part, bad)
        return f"cell {expr.cells[start + row]!r}, gene {expr.genes[col]!r}"

    for start in range(0, expr.n_cells, block):
        part = m[start:start + block]
        values = part.data if sp.issparse(part) else np.asarray(part)
        if values.dtype.kind not in "biuf":
            raise TypeError(f"`{arg}` must hold numbers; received dtype {values.dtype}")
        totals = np.asarray(abs(part).sum(axis=1)).ravel()
        empty_cells.extend((start + np.flatnonzero(totals == 0)).tolist())
        if not values.size:
            continue
        finite = np.isfinite(values)
        if not finite.all():
            raise ValueError(
                f"`{arg}` contains NaN or infinite values (first at {where(start, part, ~finite)}: "
                f"{values[~finite].flat[0]}); expected finite non-negative {scale}; remove or "
                "fill them first")
        negative = values < 0
        if negative.any():
            raise ValueError(
                f"`{arg}` contains negative values (min {values.min():g}, first at "
                f"{where(start, part, negative)}); expected non-negative {scale}")
        largest = max(largest, float(values.max()))
        if values.dtype.kind == "f" and all_integer:  # once one is found, log values need not
            fractional = _fractional(values)
            if fractional.any():
                all_integer = False
                if not log_normalized:
                    # all the digits of its type: a value that :g rounds to "41" must not be
                    # shown as an integer in an error about non-integers
                    value = values[fractional].flat[0]
                    raise ValueError(
                        f"`{arg}` is read as raw counts but holds non-integer values (first "
                        f"{value} at {where(start, part, fractional)}); pass "
                        "log_normalized=True if it holds log-normalised values, or round "
                        "corrected counts to integers (numpy.rint) first")
    if largest == 0:
        raise ValueError(f"`{arg}` holds only zeros ({expr.n_cells} cells x {len(expr.genes)} "
                         f"genes): there is nothing to learn or predict from; check that the "
                         "right matrix or layer was passed")
    expr.integer_valued = all_integer
    if log_normalized and all_integer:
        # log1p of normalised counts is all integers only by a chance of nothing: these are
        # counts (or ranks, or a binarised matrix), which taken as log values give a wrong
        # answer, or crash the fit with an error that does not say why
        raise ValueError(
            f"`{arg}` is declared log-normalised (log_normalized=True) but holds only integers "
            f"(max {largest:g}), which log-normalised values never are; pass "
            "log_normalized=False if it holds raw counts")
    if log_normalized:
        largest *= expr.value_scale
        if largest > LOG_MAX * (1 + INTEGER_TOLERANCE):
            in_base = (f" (in natural log: uns['log1p']['base'] is {expr.log_base:g})"
                       if expr.log_base is not None else "")
            raise ValueError(
                f"`{arg}` is declared log-normalised (log_normalized=True) but holds values up to "
                f"{largest:.6g}{in_base}, above log1p(1e6) = {LOG_MAX:.2f}, the most a log1p of "
                "counts normalised to a million per cell can reach: counts, or normalised "
                "counts not yet logged? pass raw counts with log_normalized=False; logs of "
                "another base? convert them to natural log (values x ln(base)), or declare the "
                "base of an AnnData as scanpy does (adata.uns['log1p'] = {'base': 2})")
        if expr.value_scale != 1.0:
            logger.info("`%s` declares logs of base %g (uns['log1p']['base']): its values are "
                        "read in natural log (x %.4f), the scale of the model", arg,
                        expr.log_base, expr.value_scale)
    if empty_cells:
        logger.warning("`%s` has %d of %d cells whose values are all 0, for example %s: they "
                       "carry no measurement of their own, so their results rest on the "
                       "reference (and on their neighbours) alone; empty cells are usually "
                       "filtered out first", arg, len(empty_cells), expr.n_cells,
                       [expr.cells[i] for i in empty_cells[:5]])
    expr.checked.add((arg, log_normalized))


#: References with fewer cells are warned about: too few to learn a map from, and to hold
#: cells out for the training's validation.
FEW_REFERENCE_CELLS = 20


def check_reference_size(expr: Expression, arg: str = "sc") -> None:
    """Warn when the reference has too few cells to learn from (`FEW_REFERENCE_CELLS`)."""
    if expr.n_cells < FEW_REFERENCE_CELLS:
        logger.warning("`%s` has only %d cell%s: the model learns from %s alone, with no cells "
                       "to hold out, and its predictions will be poor; use a reference of "
                       "hundreds of cells or more", arg, expr.n_cells,
                       "" if expr.n_cells == 1 else "s",
                       "it" if expr.n_cells == 1 else "them")


def match_genes(wanted: Sequence[str], available: Sequence[str], *, arg: str | None = None,
                available_arg: str = "sc") -> dict[str, str]:
    """Map names in `wanted` onto `available`: exactly first, then case-insensitively.

    Returns {wanted name: available name} for the names that matched. Case-insensitive matches
    are logged; a name that matches several available names case-insensitively is left out.
    With `arg` (the argument `wanted` comes from; `available_arg` that of `available`), names
    that match the same available gene ("Gad2" and "GAD2" both "Gad2") are a ValueError naming
    them: one gene read or imputed twice would be a silent duplicate, and which of the two is
    meant cannot be told.
    """
    exact = set(available)
    lower: dict[str, list[str]] = {}
    for name in available:
        lower.setdefault(name.lower(), []).append(name)
    mapping: dict[str, str] = {}
    by_case: list[tuple[str, str]] = []
    for name in wanted:
        if name in exact:
            mapping[name] = name
        else:
            candidates = lower.get(name.lower(), [])
            if len(candidates) == 1:
                mapping[name] = candidates[0]
                by_case.append((name, candidates[0]))
    if by_case:
        logger.info("matched %d gene names ignoring case, for example %s", len(by_case),
                    ", ".join(f"{a}->{b}" for a, b in by_case[:5]))
    if arg is not None:
        sharing: dict[str, list[str]] = {}
        for name, match in mapping.items():
            sharing.setdefault(match, []).append(name)
        clashes = [(match, names) for match, names in sharing.items() if len(names) > 1]
        if clashes:
            examples = "; ".join(f"{' and '.join(map(repr, names))} -> {match!r}"
                                 for match, names in clashes[:3])
            raise ValueError(
                f"`{arg}` has {len(clashes)} group{'s' if len(clashes) > 1 else ''} of gene "
                f"names that match the same gene of `{available_arg}` (names are matched "
                f"exactly, then ignoring case): {examples}; keep one name of each (or rename "
                "them if they are different genes)")
    return mapping


def cell_factors(expr: Expression, known: Sequence[str], *, scale_factor: float,
                 log_normalized: bool, rows: np.ndarray | None = None,
                 block: int = 8192) -> np.ndarray | None:
    """Each cell's normalisation factor, scale_factor / its total over `known` (0 when empty).

    Read a block of cells at a time; (n_cells, 1) float64, or None for log-normalised input.
    The same arithmetic as `spalstf.preprocess.log_normalize`, so values agree to the bit.
    """
    if log_normalized:
        return None
    n = expr.n_cells if rows is None else len(rows)
    out = np.empty((n, 1), dtype=np.float64)
    for start in range(0, n, block):
        sel = slice(start, min(start + block, n))
        total = expr.columns(known, sel if rows is None else rows[sel]).sum(axis=1,
                                                                            keepdims=True)
        out[sel] = np.divide(scale_factor, total, out=np.zeros_like(total), where=total > 0)
    return out


class CellRows:
    """Log-normalised (optionally standardised) genes of an `Expression`, read on demand.

    Behaves as a read-only (n_cells, n_genes) float32 matrix for what the training loop and the
    neighbour search do with one: ``rows[slice]``, ``rows[int_array]`` and ``.shape``. Only the
    cells asked for are read from the input (a sparse or backed matrix is never densified
    whole), so mini-batches can be drawn from a reference larger than memory.

    Parameters
    ----------
    expr
        The input.
    genes
        Columns, by name.
    factor
        Per-cell normalisation factors from `cell_factors` (None: values used as they are).
    rows
        Sorted input rows that make up the cells (a subsample); None: every cell.
    scaler
        A `spalstf.preprocess.Standardizer` applied after normalisation, or None.
    """

    def __init__(self, expr: Expression, genes: Sequence[str], factor: np.ndarray | None, *,
                 rows: np.ndarray | None = None, scaler: Any = None) -> None:
        self.expr, self.genes, self.factor = expr, list(genes), factor
        self.rows, self.scaler = rows, scaler
        n = expr.n_cells if rows is None else len(rows)
        self.shape = (n, len(self.genes))
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def standardized(self, scaler: Any) -> CellRows:
        """The same cells and genes, standardised with `scaler`."""
        return CellRows(self.expr, self.genes, self.factor, rows=self.rows, scaler=scaler)

    def __getitem__(self, index: slice | np.ndarray) -> np.ndarray:
        if isinstance(index, slice):
            local = np.arange(*index.indices(self.shape[0]))
            source: slice | np.ndarray = (index if self.rows is None and
                                          (index.step in (None, 1)) else
                                          (local if self.rows is None else self.rows[local]))
        else:
            local = np.asarray(index, dtype=np.int64)
            source = local if self.rows is None else self.rows[local]
        if isinstance(source, np.ndarray):
            # Backed (h5py) matrices read increasing rows only: read sorted, put back in order.
            order = np.argsort(source, kind="stable")
            values = np.empty((len(source), self.shape[1]), dtype=np.float64)
            values[order] = self.expr.columns(self.genes, source[order])
        else:
            values = self.expr.columns(self.genes, source)
        if self.factor is not None:
            values = np.log1p(values * self.factor[local])
        out = values.astype(np.float32)
        return out if self.scaler is None else self.scaler.transform(out)

    def blocks(self, block: int = 8192):
        """(slice, values) for consecutive blocks of cells."""
        for start in range(0, self.shape[0], block):
            sel = slice(start, min(start + block, self.shape[0]))
            yield sel, self[sel]

    def to_array(self, block: int = 8192) -> np.ndarray:
        """Every cell, as a float32 array (read block by block)."""
        out = np.empty(self.shape, dtype=np.float32)
        for sel, values in self.blocks(block):
            out[sel] = values
        return out
