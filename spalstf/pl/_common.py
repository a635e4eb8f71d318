"""What the figures of `spalstf.pl` share: saving a figure atomically, reading one gene's
values, drawing cells in space coloured by a value, and the labels of values and units."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

#: Resolution of saved raster figures (dots per inch).
DPI = 110


def _save(fig, path: str | os.PathLike | None):
    """Lay out `fig`, save it to `path` when given (atomically: a temporary file, renamed), and
    return it."""
    if fig.get_layout_engine() is None:  # figures laid out by constrained layout keep it
        fig.tight_layout()
    if path is not None:
        from spalstf._atomic import atomic_path

        # The format comes from the final name, since the temporary one ends in .tmp.
        fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or None
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=DPI, format=fmt)
    return fig


def _column(values: Any, gene: str, cells: Sequence[str]) -> np.ndarray:
    """One gene of an AnnData or DataFrame (cells x genes), in the order of `cells`."""
    if isinstance(values, pd.DataFrame):
        return values.loc[list(cells), gene].to_numpy(dtype=float)
    sub = values[list(cells), [gene]].X
    return np.asarray(sub.toarray() if hasattr(sub, "toarray") else sub, dtype=float).ravel()


def _layer_column(imputed: Any, layer: str | None, j: int) -> np.ndarray:
    """Column j of X (or of a layer), dense or sparse, as a flat float array."""
    x = imputed.X if layer is None else imputed.layers[layer]
    col = x[:, [j]]
    return np.asarray(col.toarray() if hasattr(col, "toarray") else col, dtype=float).ravel()


def _check_map_inputs(imputed: Any, genes: Sequence[str], basis: str) -> list[str]:
    import anndata

    if not isinstance(imputed, anndata.AnnData):
        raise TypeError("`imputed` must be the AnnData returned by spalstf.impute; received "
                        f"{type(imputed).__name__}")
    if isinstance(genes, str):
        genes = [genes]
    genes = list(genes)
    if not genes:
        raise ValueError("`genes` is empty; name at least one gene to draw")
    if basis not in imputed.obsm:
        raise ValueError(f"`imputed.obsm` has no {basis!r} coordinates; its keys are "
                         f"{list(imputed.obsm.keys())}")
    missing = [g for g in genes if g not in imputed.var_names]
    if missing:
        raise ValueError(f"`genes` not in the imputed data: {missing[:10]}")
    return genes


def _map(fig, ax, xy: np.ndarray, values: np.ndarray, title: str, *, cmap: str,
         point_size: float, vmin: float | None = None, vmax: float | None = None,
         label: str | None = None) -> None:
    im = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=point_size, cmap=cmap, linewidths=0,
                    vmin=vmin, vmax=vmax)
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    bar = fig.colorbar(im, ax=ax, shrink=0.8)
    if label:
        bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=7)


#: Colour scales of `spatial` (see its `scale`).
SCALES = ("matched", "separate", "both")
#: Font size of a figure's title (points).
TITLE_FONTSIZE = 10


def _wrap(text: str, width_in: float, fontsize: float) -> list[str]:
    """The lines of `text`, each wrapped to fit `width_in` inches at `fontsize` points.

    A character is taken as 0.6 em wide (DejaVu Sans averages less), so a line fits rather
    than runs off the figure's edges.
    """
    import textwrap

    chars = max(20, int(width_in * 72 / (0.6 * fontsize)))
    return [part for line in text.splitlines() for part in textwrap.wrap(line, chars) or [""]]


def _scale_text(scale_factor: float) -> str:
    """1e4 for 10000, else the number as written by %g."""
    exponent = math.log10(scale_factor) if scale_factor > 0 else 0.5
    return f"1e{int(exponent)}" if exponent.is_integer() else f"{scale_factor:g}"


def _value_units(imputed: Any) -> tuple[str | None, str | None]:
    """The units of the expression scale and of the imputed values, from `uns["spalstf"]`.

    Returns (expression units, imputed units); the second adds the share of the value at the
    spot's depth when the imputation holds one (`output="at_depth"` or `depth_weight` > 0),
    since such values sit below the depth-free expression where spots hold few counts.
    Both are None for data that `spalstf.impute` did not write.
    """
    info = imputed.uns.get("spalstf") if hasattr(imputed, "uns") else None
    params = info.get("params") if isinstance(info, dict) else None
    if not isinstance(params, dict):
        return None, None
    if info.get("log_normalized_input"):
        return "log-normalised, as the input", "log-normalised, as the input"
    scale_factor = _scale_text(float(params.get("scale_factor", 1e4)))
    base = f"log1p(count / known-gene total x {scale_factor})"
    share = 1.0 if params.get("output") == "at_depth" else float(params.get("depth_weight") or 0)
    if share >= 1:
        return base, f"{base}\nexpected at the spot's depth"
    if share > 0:
        return base, f"{base}\n{share:.0%} expected at the spot's depth"
    return base, base


def _std_label(imputed: Any, units: str | None) -> str:
    """Colour-bar label of the uncertainty: over how many samples, and in which units."""
    info = imputed.uns.get("spalstf") if hasattr(imputed, "uns") else None
    params = info.get("params") if isinstance(info, dict) else None
    combination = info.get("combination") if isinstance(info, dict) else None
    if isinstance(combination, dict) and combination.get("kind") == "stack":
        # the learnt combination's std is its calibrated interval, not a spread of samples
        from scipy.stats import norm

        level = params.get("interval_level", 0.9) if isinstance(params, dict) else 0.9
        label = (f"half-width of the {float(level):.0%} interval / "
                 f"{float(norm.ppf(0.5 + float(level) / 2)):.2f}")
        return label + (",\nsame units as the values" if units else "")
    n = params.get("n_samples") if isinstance(params, dict) else None
    label = f"std over {n} samples" if n else "std over samples"
    label += ", same units as the values" if units else ""
    # The std is the spread of the diffusion's samples whatever share of their refinement the
    # values keep (spalstf.diffusion.sample): where they keep less than all, say so.
    weight = params.get("residual_weight") if isinstance(params, dict) else None
    if weight is not None and float(weight) == 0:
        label += "\nunused by the values (the prior alone)"
    elif weight is not None and float(weight) < 1:
        label += f"\nthe values keep {float(weight):.0%} of their refinement"
    return label

