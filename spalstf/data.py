"""Reading the user's inputs without modifying them, and matching genes between data sets.

Every input (AnnData, numpy array, scipy sparse matrix, pandas DataFrame) becomes an
`Expression`: a read-only view of the cells x genes matrix with its cell and gene names. Columns
are copied out on demand (`Expression.columns`), a block of cells at a time, so that nothing of
the input is ever written to and large inputs are never densified whole.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
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
    _gene_pos: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._gene_pos = {g: i for i, g in enumerate(self.genes)}

    @property
    def n_cells(self) -> int:
        return len(self.cells)

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
        return np.array(block, dtype=np.float64)  # always a copy


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
                          "anndata", data)
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


def check_values(expr: Expression, *, log_normalized: bool, arg: str,
                 block: int = 8192) -> None:
    """Refuse NaN, Inf and negative values, block by block (inputs are never copied whole)."""
    m = expr.matrix
    for start in range(0, expr.n_cells, block):
        part = m[start:start + block]
        values = part.data if sp.issparse(part) else np.asarray(part)
        if values.dtype.kind not in "biuf":
            raise TypeError(f"`{arg}` must hold numbers; received dtype {values.dtype}")
        if values.size and not np.all(np.isfinite(values)):
            raise ValueError(f"`{arg}` contains NaN or infinite values (cells {start} to "
                             f"{start + part.shape[0] - 1}); remove or fill them first")
        if values.size and values.min() < 0:
            scale = "log-normalised values" if log_normalized else "counts"
            raise ValueError(f"`{arg}` contains negative values (min {values.min():g}); expected "
                             f"non-negative {scale}")


def match_genes(wanted: Sequence[str], available: Sequence[str]) -> dict[str, str]:
    """Map names in `wanted` onto `available`: exactly first, then case-insensitively.

    Returns {wanted name: available name} for the names that matched. Case-insensitive matches
    are logged; a name that matches several available names case-insensitively is left out.
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
    return mapping
