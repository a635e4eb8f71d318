""":func:`loss_curve`: the training and validation loss of a model, per epoch."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from spalstf.pl._common import _save


def _history(model: Any) -> tuple[list[dict], int | None]:
    """The per-epoch records and the best epoch of a Model, a training result or a list."""
    if isinstance(model, (list, tuple)):
        return list(model), None
    history = getattr(model, "history", None)
    if not isinstance(history, (list, tuple)):
        raise TypeError("`model` must be a spalstf.Model or its `history` (a list of per-epoch "
                        f"dicts); received {type(model).__name__}")
    best = getattr(model, "best_epoch", None)
    if best is None:
        best = (getattr(model, "info", None) or {}).get("best_epoch")
    return list(history), (int(best) if best else None)


def loss_curve(model: Any, *, log_scale: bool = False,
               path: str | os.PathLike | None = None):
    """The training loss of a model, per epoch.

    First panel: the total training loss, its noise-prediction MSE and, when the model held out
    reference cells for early stopping, the validation MSE, with the epoch whose weights were
    kept (the lowest validation loss) marked. Then one panel each for the variational-bound and
    KL terms when they are in the loss (they are on other scales, the bound can be negative).

    Parameters
    ----------
    model
        A `spalstf.Model` (its `history` and `info["best_epoch"]`), or a list of per-epoch
        dicts with the keys `epoch`, `train_total`, `train_mse`, `train_vlb`, `train_kl` and
        `val_mse` (any subset).
    log_scale
        Logarithmic axis for the first panel.
    path
        Save the figure there (PNG, PDF... by suffix).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    history, best = _history(model)
    if not history:
        raise ValueError("`model` has no training history to draw (no epoch recorded)")
    frame = pd.DataFrame(history)
    epochs = frame["epoch"] if "epoch" in frame else pd.Series(np.arange(1, len(frame) + 1))
    main = [(k, label) for k, label in (("train_total", "train: total"),
                                        ("train_mse", "train: MSE"),
                                        ("val_mse", "validation: MSE")) if k in frame]
    extra = [(k, label) for k, label in (("train_vlb", "train: VLB"), ("train_kl", "train: KL"))
             if k in frame and np.nanmax(np.abs(frame[k].to_numpy(dtype=float))) > 0]
    if not main and not extra:
        raise ValueError("the history has none of the loss keys train_total, train_mse, "
                         f"val_mse, train_vlb, train_kl; its keys are {list(frame.columns)}")
    panels = ([main] if main else []) + [[term] for term in extra]
    fig, axes = plt.subplots(1, len(panels), squeeze=False, figsize=(4.2 * len(panels), 3.4))
    for ax, keys in zip(axes[0], panels, strict=True):
        for k, label in keys:
            ax.plot(epochs, frame[k], marker="o", markersize=3, label=label)
        if best is not None and keys is main:
            ax.axvline(best, color="grey", linestyle="--", linewidth=1,
                       label=f"kept: epoch {best}")
        if log_scale and keys is main:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("loss" if keys is main else "loss term")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, path)
