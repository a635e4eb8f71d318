"""Training the masked-gene network on the reference AND on the ST's own known genes.

One fit serves any split of the known genes
(`spalstf.prior.masked.sample.MaskedModel.predict`). Each mini-batch mixes two sources of rows:

- reference rows (cells, and pseudo-spots when given): every target gene PREDICT, and a random
  share of the known genes PREDICT too, the others GIVEN;
- ST rows: their known genes (standardised with the reference's statistics, as the model reads
  them), a random share PREDICT, the others GIVEN; the targets ABSENT (the ST never has them).

So the network learns the target genes from the reference, and how the ST's own genes relate
to each other on its platform from the ST. Seeded: the same seed gives the same weights on
CPU; the update budget (`Config.max_steps`), not the clock, bounds the work.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from spalstf.config import Config
from spalstf.diffusion import GaussianDiffusion, LossTerms
from spalstf.prior.masked.network import (
    ABSENT,
    GIVEN,
    PREDICT,
    ConditionalGaussian,
    MaskedDenoiser,
    context_sequence,
    masked_neighbours,
)
from spalstf.prior.masked.sample import PRIORS, MaskedModel, build_masked_network
from spalstf.prior.ridge import fit_prior
from spalstf.runtime import seeded_global_rng, to_device
from spalstf.train import loop
from spalstf.train.loop import LoopOptions, Step

logger = logging.getLogger(__name__)

#: Pseudo-spots as `spalstf.prior.pseudo_spots` yields them (a function of no argument giving
#: blocks of (known, target) rows), or as two arrays.
Spots = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]] | tuple[np.ndarray, np.ndarray]


@dataclass
class MaskedOptions:
    """Settings of the masked-gene fit that `spalstf.Config` does not have.

    Attributes
    ----------
    use_st
        Train on the ST's rows too (False: the reference alone, the ablation).
    st_share
        Share of each mini-batch drawn from the ST's rows (when it has any). Half: the ST rows
        are the only view of the ST's platform and the reference rows the only supervision of
        the targets, so neither is starved; with equal shares an ST row and a reference row
        weigh the same in the loss (each row's loss is a mean over its PREDICT genes).
    reference_hidden
        (low, high): each reference row hides a share of its known genes drawn uniformly in
        this range (0 included: the imputation's split, every known gene given, is seen too).
    st_hidden
        (low, high): likewise for the ST rows, at least one gene hidden and one given. The
        self-check's inner folds hide 1/n_folds of the known genes (a fifth to a half).
    use_source
        Condition the network on the source of a row (reference or ST) too.
    align_st
        Read (and predict) the ST's known genes z-scored over the ST itself, as the reference's
        are over the reference (each platform aligned by its own statistics; predicted known
        genes are mapped back to the model's space). False (default): on the reference's
        scale, as given; measured on one fold, the alignment lowered the network's median PCC
        on osmFISH (0.139 -> 0.061 with diffusion, 0.283 -> 0.195 without and no ST rows).
        Neighbours are searched with the ST z-scored over itself either way.
    st_withheld
        Known genes (indices) whose ST values never enter training: ABSENT in every ST row,
        learnt from the reference alone, as the targets are. Predicting them on the ST (an
        inner fold of the self-check) is then an honest estimate of how the network does on
        targets; on genes the ST rows did teach, the estimate is optimistic (the network has
        seen those genes on the ST's own cells and platform).
    prior
        What each gene's residual is taken around: "gaussian", the reference's conditional
        mean given the row's GIVEN genes (`ConditionalGaussian`, a ridge for that split), or
        "neighbours", the mean over the row's nearest atlas cells.
    mask_group
        Rows of a mini-batch that share one hidden set (each set costs one solve of the
        Gaussian prior: with many known genes, a solve per row would dominate an update).
    final_lr
        The learning rate decays (cosine) to this fraction of `Config.learning_rate` at the
        last update, after a linear warm-up: with a few hundred updates the last ones then
        refine instead of jumping.
    """

    use_st: bool = True
    st_share: float = 0.5
    reference_hidden: tuple[float, float] = (0.0, 0.5)
    st_hidden: tuple[float, float] = (0.1, 0.5)
    use_source: bool = False
    align_st: bool = False
    st_withheld: tuple[int, ...] = ()
    prior: str = "gaussian"
    mask_group: int = 8
    final_lr: float = 0.1

    def validate(self) -> None:
        for name in ("use_st", "use_source", "align_st"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"`{name}` must be True or False; received "
                                f"{getattr(self, name)!r}")
        if not 0 < self.st_share < 1:
            raise ValueError(f"`st_share` must be in (0, 1); received {self.st_share!r}")
        for name in ("reference_hidden", "st_hidden"):
            low, high = getattr(self, name)
            if not 0 <= low <= high < 1:
                raise ValueError(f"`{name}` must be (low, high) with 0 <= low <= high < 1; "
                                 f"received {getattr(self, name)!r}")
        if self.prior not in PRIORS:
            raise ValueError(f"`prior` must be one of {PRIORS}; received {self.prior!r}")
        if isinstance(self.mask_group, bool) or not isinstance(self.mask_group, int) \
                or self.mask_group < 1:
            raise ValueError(f"`mask_group` must be a positive integer; received "
                             f"{self.mask_group!r}")
        if not 0 < self.final_lr <= 1:
            raise ValueError(f"`final_lr` must be in (0, 1]; received {self.final_lr!r}")


def _matrix(name: str, values, n_cols: int | None = None) -> np.ndarray:
    """`values` as a finite float32 2-D array (a copy: inputs are never modified)."""
    arr = np.asarray(values.toarray() if hasattr(values, "toarray") else values)
    if arr.ndim != 2 or (n_cols is not None and arr.shape[1] != n_cols):
        cols = "any number of" if n_cols is None else str(n_cols)
        raise ValueError(f"`{name}` must be a 2-D (cells, {cols} genes) array; received shape "
                         f"{arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise ValueError(f"`{name}` must hold finite numbers (model-space z-scores)")
    return np.array(arr, dtype=np.float32)


def _spot_arrays(spots: Spots, n_known: int, n_target: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(spots, tuple):
        blocks = [spots]
    elif callable(spots):
        blocks = list(spots())
    else:
        raise TypeError("`spots` must be a (known, target) pair of arrays or a function "
                        f"yielding such blocks (spalstf.prior.pseudo_spots); received "
                        f"{type(spots).__name__}")
    known = [_matrix("spots (known)", k, n_known) for k, _ in blocks]
    target = [_matrix("spots (target)", t, n_target) for _, t in blocks]
    if not known:
        return np.zeros((0, n_known), np.float32), np.zeros((0, n_target), np.float32)
    return np.concatenate(known), np.concatenate(target)


def hide_known(rng: np.random.Generator, n_rows: int, n_known: int, share: tuple[float, float],
               at_least_one: bool, group: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The known genes each row hides (PREDICT): (masks, n_known) booleans and each row's mask.

    Consecutive rows share a mask, `group` at a time. Each mask draws its share uniformly in
    `share`, then each gene is hidden with that probability; one gene always stays given, and
    with `at_least_one` one is always hidden (n_known >= 2 then).
    """
    n_masks = math.ceil(n_rows / group)
    u = rng.uniform(share[0], share[1], size=(n_masks, 1))
    r = rng.random((n_masks, n_known))
    hidden = r < u
    masks = np.arange(n_masks)
    hidden[masks, r.argmax(axis=1)] = False  # keep one given
    if at_least_one:
        hidden[masks, r.argmin(axis=1)] = True  # and hide one
    return hidden, np.arange(n_rows) // group


def fit_masked(reference_known_z, reference_target_z, st_known_z, *, config: Config | None = None,
               seed: int = 0, progress: bool = False, device: torch.device | str = "cpu",
               spots: Spots | None = None, options: MaskedOptions | None = None) -> MaskedModel:
    """Fit the masked-gene network once, for any split of the known genes.

    Parameters
    ----------
    reference_known_z, reference_target_z
        (n_ref, n_known) and (n_ref, n_target) reference cells in model space (z-scores with the
        reference's statistics). n_target may be 0 (a model of the known genes alone).
    st_known_z
        (n_st, n_known) the ST's known genes standardised with the reference's statistics, as
        the model reads them (None or 0 rows: the reference alone). Never the ST's targets.
    config
        Network, training and sampling settings (`spalstf.Config`): d_model, depth, n_heads,
        mlp_ratio, max_tokens, use_xca, use_context, n_neighbors, lstm_hidden, lstm_layers,
        atlas_size (the reference cells kept as the atlas, a seeded random subset when there
        are more: the neighbours and prior of every cell, in training and sampling; at least
        2), dropout, diffusion, num_train_timesteps, beta_schedule, vlb_weight, kl_weight,
        learning_rate, weight_decay, batch_size, max_steps (None: `epochs` passes over the
        reference rows), ema_decay; sampling fields are kept for `MaskedModel.predict`.
    seed
        The same seed gives the same weights (on CPU, with the same number of threads).
    progress
        A progress bar over updates.
    device
        Where to train.
    spots
        Pseudo-spots (`spalstf.prior.pseudo_spots`, already in model space) trained on as
        reference rows beside the cells.
    options
        The settings of `MaskedOptions` (ST rows, their share, the hidden shares, the prior).

    Returns
    -------
    The `MaskedModel`; its `info` records the seconds, updates and loss history.
    """
    config = Config() if config is None else config
    options = MaskedOptions() if options is None else options
    config.validate()
    options.validate()
    if config.atlas_size < 2:
        raise ValueError(f"`atlas_size` must be at least 2 for the masked network (an atlas "
                         f"with neighbours); received {config.atlas_size!r}")
    device = torch.device(device)
    start = time.perf_counter()
    ref_known = _matrix("reference_known_z", reference_known_z)
    n_ref, n_known = ref_known.shape
    ref_target = _matrix("reference_target_z", reference_target_z)
    if ref_target.shape[0] != n_ref:
        raise ValueError(f"`reference_target_z` must have the {n_ref} rows of "
                         f"`reference_known_z`; received {ref_target.shape[0]}")
    n_target = ref_target.shape[1]
    if n_ref < 3:
        raise ValueError(f"`reference_known_z` must hold at least 3 cells (an atlas with "
                         f"neighbours); received {n_ref}")
    st = (np.zeros((0, n_known), np.float32) if st_known_z is None
          else _matrix("st_known_z", st_known_z, n_known))
    if options.use_st and len(st) and n_known < 2:
        raise ValueError("the ST rows need at least 2 known genes (one given, one hidden); "
                         f"received {n_known}: pass options=MaskedOptions(use_st=False)")
    use_st = options.use_st and len(st) > 0
    withheld = np.asarray(options.st_withheld, dtype=np.int64).reshape(-1)
    if len(withheld) and (withheld.min() < 0 or withheld.max() >= n_known
                          or len(np.unique(withheld)) != len(withheld)):
        raise ValueError(f"`st_withheld` must hold distinct known-gene indices in [0, {n_known})"
                         f"; received {withheld.tolist()}")
    free = np.setdiff1d(np.arange(n_known), withheld)
    if use_st and len(free) < 2:
        raise ValueError(f"the ST rows need at least 2 known genes that are not withheld; "
                         f"`st_withheld` leaves {len(free)} of {n_known}")
    rng = np.random.default_rng([seed, 7])

    # Reference rows: cells, then pseudo-spots; the atlas is a subset of the cells.
    rows_known, rows_target = ref_known, ref_target
    if spots is not None:
        spot_known, spot_target = _spot_arrays(spots, n_known, n_target)
        rows_known = np.concatenate([ref_known, spot_known])
        rows_target = np.concatenate([ref_target, spot_target])
    ref_rows = np.concatenate([rows_known, rows_target], axis=1)
    del rows_known, rows_target
    atlas_rows = (np.arange(n_ref) if n_ref <= config.atlas_size
                  else np.sort(rng.choice(n_ref, config.atlas_size, replace=False)))
    atlas = ref_rows[atlas_rows]
    self_index = np.full(len(ref_rows), -1, dtype=np.int64)
    self_index[atlas_rows] = np.arange(len(atlas_rows))
    k = min(config.n_neighbors, len(atlas) - 1)
    # The ST's own statistics: neighbours are found with each data set z-scored over itself
    # (the reference's rows are its z-scores already), and with `align_st` the ST's rows are
    # read and predicted on that scale too.
    st_mean = st.mean(axis=0) if len(st) else np.zeros(n_known, np.float32)
    st_sd = st.std(axis=0) if len(st) else np.ones(n_known, np.float32)
    st_sd = np.where(st_sd > 1e-6, st_sd, 1.0).astype(np.float32)
    st_aligned = (st - st_mean) / st_sd
    st_own = (st_aligned if options.align_st else st).copy()
    st_own[:, withheld] = 0.0  # never read: ABSENT in every ST row
    # The data range of each gene bounds the predicted x0 at sampling (clip_denoised).
    low, high = ref_rows.min(axis=0), ref_rows.max(axis=0)
    if use_st:
        low[free] = np.minimum(low[free], st_own[:, free].min(axis=0))
        high[free] = np.maximum(high[free], st_own[:, free].max(axis=0))

    # The Gaussian prior's penalty: the ridge's (GCV on the reference, known -> targets), on
    # the correlation scale; without targets, the ridge's floor (1).
    penalty = 1.0
    if n_target:
        _, _, alpha = fit_prior(ref_rows[:, :n_known], ref_rows[:, n_known:],
                                np.arange(len(ref_rows)), None)
        penalty = alpha / len(ref_rows)
    gauss = ConditionalGaussian.fit(torch.as_tensor(ref_rows), n_known, penalty)
    gauss = ConditionalGaussian(*(to_device(x, device) for x in (gauss.mean, gauss.sd,
                                                                 gauss.corr)), penalty)

    arch = {"n_known": n_known, "n_target": n_target, "d_model": config.d_model,
            "depth": config.depth, "n_heads": config.n_heads, "mlp_ratio": config.mlp_ratio,
            "max_tokens": config.max_tokens, "use_xca": config.use_xca,
            "use_context": config.use_context, "lstm_hidden": config.lstm_hidden,
            "lstm_layers": config.lstm_layers, "use_source": options.use_source}
    with seeded_global_rng(seed):  # the initial weights; see there
        network = build_masked_network(arch, dropout=config.dropout)
    network.to(device)
    generator = torch.Generator().manual_seed(seed + 1)
    diffusion = GaussianDiffusion(config.num_train_timesteps, config.beta_schedule,
                                  learn_sigma=config.vlb_weight > 0)
    batch_size = config.batch_size
    n_st_batch = int(round(options.st_share * batch_size)) if use_st else 0
    n_st_batch = min(n_st_batch, batch_size - 1)
    n_ref_batch = batch_size - n_st_batch
    max_steps = config.max_steps
    if max_steps is None:
        max_steps = config.epochs * max(1, math.ceil(len(ref_rows) / n_ref_batch))

    atlas_t = torch.as_tensor(atlas, device=device)
    ref_t = torch.as_tensor(ref_rows, device=device)
    st_t = torch.as_tensor(np.concatenate([st_own, np.zeros((len(st), n_target), np.float32)],
                                          axis=1), device=device)
    st_aligned = torch.as_tensor(st_aligned, device=device)
    self_t = torch.as_tensor(self_index, device=device)
    warmup = max(1, min(100, max_steps // 10))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = (step - warmup) / max(1, max_steps - warmup)
        return options.final_lr + (1 - options.final_lr) * 0.5 * (1 + math.cos(math.pi * done))

    ref_order = _Cycle(len(ref_rows), rng)
    st_order = _Cycle(len(st), rng) if use_st else None

    def loss_of_batch(_) -> Step:
        ref_idx = to_device(ref_order.take(n_ref_batch), device)
        values, aligned = [ref_t[ref_idx]], [ref_t[ref_idx, :n_known]]
        hidden, groups = hide_known(rng, n_ref_batch, n_known, options.reference_hidden, False,
                                    options.mask_group)
        absent = np.zeros_like(hidden)
        own = [self_t[ref_idx]]
        if n_st_batch:
            st_idx = to_device(st_order.take(n_st_batch), device)
            values.append(st_t[st_idx])
            aligned.append(st_aligned[st_idx])
            st_free, st_groups = hide_known(rng, n_st_batch, len(free), options.st_hidden, True,
                                            options.mask_group)
            st_hidden = np.zeros((len(st_free), n_known), dtype=bool)
            st_hidden[:, free] = st_free
            st_absent = np.zeros_like(st_hidden)
            st_absent[:, withheld] = True
            groups = np.concatenate([groups, st_groups + len(hidden)])
            hidden = np.concatenate([hidden, st_hidden])
            absent = np.concatenate([absent, st_absent])
            own.append(torch.full((n_st_batch,), -1, dtype=torch.long, device=device))
        state = np.full((batch_size, n_known + n_target), PREDICT, dtype=np.int64)
        state[:, :n_known] = np.where(hidden[groups], PREDICT,
                                      np.where(absent[groups], ABSENT, GIVEN))
        state[n_ref_batch:, n_known:] = ABSENT
        source = torch.as_tensor(np.repeat([0, 1], [n_ref_batch, n_st_batch]), device=device)
        t = torch.randint(0, config.num_train_timesteps, (batch_size,), generator=generator)
        noise = torch.randn(batch_size, n_known + n_target, generator=generator)
        values = torch.cat(values)
        state_t = to_device(state, device)
        given = (state_t == GIVEN).to(values.dtype)
        with torch.no_grad():  # the conditioning: no parameter of the network in it
            prior, knn, idx, dist = conditioning(
                gauss, values, torch.cat(aligned), given, to_device(~hidden & ~absent, device),
                to_device(groups, device), atlas_t, k, torch.cat(own), options.prior)
        return Step(batch_loss(network, diffusion, config, values, state_t, prior, knn, atlas_t,
                               idx, dist, t.to(device), noise.to(device), source))

    def window(_: int, updates: int, terms: list[dict]) -> dict:
        """The mean losses of a window of `log_every` updates (or of the last, shorter one)."""
        means = dict.fromkeys(terms[0], 0.0)
        for values in terms:
            for key, value in values.items():
                means[key] += value
        return {"update": updates, **{key: v / len(terms) for key, v in means.items()}}

    # The loop's epochs are windows of updates, each a record of the history; no validation
    # and no early stopping: the update budget alone ends the fit, on the last EMA weights.
    log_every = max(1, max_steps // 20)
    loop_options = LoopOptions(
        epochs=math.ceil(max_steps / log_every), steps_per_epoch=log_every,
        learning_rate=config.learning_rate, weight_decay=config.weight_decay,
        lr_factor=lr_factor, ema_decay=config.ema_decay, ema_offset=-1, max_steps=max_steps,
        keep_best=False, name="masked training", period=None, bar="masked fit")
    done = loop.run(network, lambda: range(log_every), loss_of_batch, options=loop_options,
                    record=window, progress=progress)
    ema, history = done.network, done.history
    seconds = time.perf_counter() - start
    info = {"architecture": arch, "fit_seconds": seconds, "updates": max_steps,
            "reference_rows": len(ref_rows), "st_rows": len(st) if use_st else 0,
            "rows_per_batch": {"reference": n_ref_batch, "st": n_st_batch},
            "atlas_cells": len(atlas), "st_withheld": withheld.tolist(),
            "prior": options.prior, "prior_penalty": penalty,
            "history": history, "seed": seed}
    logger.info("masked network: %d updates in %.1f s (%d reference rows, %d ST rows, "
                "%d per batch from the ST)", max_steps, seconds, len(ref_rows),
                info["st_rows"], n_st_batch)
    return MaskedModel(ema, atlas, low.astype(np.float32), high.astype(np.float32), config,
                       k, gaussian=gauss, st_mean=st_mean.astype(np.float32), st_sd=st_sd,
                       prior=options.prior, align_st=options.align_st, info=info,
                       device=device)


class _Cycle:
    """Rows in seeded random passes: each row once per pass, a fresh order each pass."""

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.n, self.rng = n, rng
        self.order, self.pos = rng.permutation(n), 0

    def take(self, count: int) -> np.ndarray:
        out = []
        while count:
            if self.pos == self.n:
                self.order, self.pos = self.rng.permutation(self.n), 0
            part = self.order[self.pos:self.pos + count]
            self.pos += len(part)
            count -= len(part)
            out.append(part)
        return np.concatenate(out)


def conditioning(gauss: ConditionalGaussian, values: torch.Tensor, aligned: torch.Tensor,
                 given: torch.Tensor, masks: torch.Tensor, groups: torch.Tensor,
                 atlas: torch.Tensor, k: int, self_index: torch.Tensor, prior: str):
    """(prior, neighbours' mean, neighbour indices, distances) of a training mini-batch.

    Row i's given known genes are `masks[groups[i]]` (booleans, (masks, n_known)); its
    neighbours are searched on them only, on the `aligned` values; the Gaussian prior reads
    them only. A hidden gene never enters its own conditioning.
    """
    n_known = gauss.n_known
    idx, dist = masked_neighbours(aligned, given[:, :n_known], atlas[:, :n_known], k,
                                  self_index)
    knn = atlas[idx].mean(dim=1)
    if prior == "neighbours":
        return knn, knn, idx, dist
    return gauss.predict_masked(values[:, :n_known], masks, groups), knn, idx, dist


def batch_loss(network: MaskedDenoiser, diffusion: GaussianDiffusion, config: Config,
               values: torch.Tensor, state: torch.Tensor, prior: torch.Tensor,
               knn: torch.Tensor, atlas: torch.Tensor, idx: torch.Tensor, dist: torch.Tensor,
               t: torch.Tensor, noise: torch.Tensor, source: torch.Tensor) -> LossTerms:
    """The loss of one mini-batch, on its PREDICT genes only.

    What is diffused is the residual of the PREDICT genes around the prior (their values are
    replaced by it noised at t); without diffusion the residual is regressed in one pass.
    """
    given = (state == GIVEN).to(values.dtype)
    predict = (state == PREDICT).to(values.dtype)
    ctx = None
    if network.context is not None:
        ctx = network.encode_context(context_sequence(values, given, atlas, idx, dist))
    x0 = (values - prior) * predict
    if not config.diffusion:
        pred, _ = network(values * given, state, prior, knn, torch.zeros_like(t), ctx, source)
        per_cell = (((pred - x0) ** 2) * predict).sum(dim=1) / predict.sum(dim=1)
        mse = per_cell.mean()
        zero = mse.new_zeros(())
        return LossTerms(total=mse, mse=mse, vlb=zero, kl=zero)
    xt = diffusion.add_noise(x0, noise, t)
    eps, v = network(values * given + xt * predict, state, prior, knn, t, ctx, source)
    return diffusion.training_losses(eps, v, x0, xt, noise, t, vlb_weight=config.vlb_weight,
                                     kl_weight=config.kl_weight, mask=predict)
