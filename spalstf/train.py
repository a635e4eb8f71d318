"""The training loop: reference cells only, target genes noised, known genes clean.

Tensors in, a trained network out. Early stopping watches a fixed-noise validation loss on
held-out reference cells; the weights used for sampling are an exponential moving average (EMA)
of the trained ones; Ctrl-C keeps the best weights so far. With a `Checkpointer` the full state
is written every few epochs and a fit resumed from it ends where an uninterrupted one would.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from spalstf import distributed
from spalstf._logging import phase_level
from spalstf.checkpoint import Checkpointer
from spalstf.config import Config
from spalstf.diffusion import GaussianDiffusion, LossTerms
from spalstf.network import (
    Denoiser,
    NeighbourIndex,
    build_network,
    context_of,
    needs_neighbours,
)
from spalstf.prior import Reference, RidgePrior
from spalstf.runtime import autocast, seeded_global_rng, to_device

logger = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """Standardised reference matrices and the neighbour index of each training cell.

    `known` and `target` are arrays, or matrices read a block of rows at a time
    (`spalstf.data.CellRows`) for references too large to hold densely.
    """

    known: np.ndarray  # (n_cells, n_known)
    target: np.ndarray  # (n_cells, n_target)
    atlas: np.ndarray  # (n_atlas, n_known + n_target): the context's reference cells
    #: atlas row of each training cell (-1 when it is not in the atlas): never its own neighbour
    self_index: np.ndarray | None = None
    neighbours: np.ndarray | None = None  # (n_cells, k) rows of atlas
    distances: np.ndarray | None = None  # (n_cells, k)
    #: (known, target) `spalstf.preprocess.Standardizer`s that made `known` and `target`: the
    #: ridge prior's pseudo-spots are mixed on the expression scale (None: no pseudo-spots)
    scalers: tuple | None = None
    #: each cell's count total over the known genes, which weighs it in a pseudo-spot as in a
    #: real one (None: log-normalised input, where cells weigh equally)
    depth: np.ndarray | None = None


@dataclass
class TrainResult:
    network: Denoiser
    history: list[dict] = field(default_factory=list)
    stop_reason: str = ""
    best_epoch: int = 0
    seconds: float = 0.0
    prior_alpha: float | None = None  # the ridge prior's penalty (chosen when config's is None)
    #: the ridge prior the network was trained with (its buffers hold the same map)
    ridge: RidgePrior | None = None


def batch_loss(network: Denoiser, diffusion: GaussianDiffusion, config: Config,
               known: torch.Tensor, target: torch.Tensor, ctx, t: torch.Tensor,
               noise: torch.Tensor) -> LossTerms:
    """The loss of one batch; without diffusion, a direct regression of the targets.

    With a neighbour prior, what is diffused (or regressed) is the residual of the targets
    around the prior: the denoiser refines the kNN estimate rather than starting from nothing.
    """
    ctx, prior = ctx
    x0 = target if prior is None else target - prior
    if not config.diffusion:
        pred, _ = network(known, torch.zeros_like(x0), torch.zeros_like(t), ctx, prior)
        mse = ((pred - x0) ** 2).mean()
        zero = mse.new_zeros(())
        return LossTerms(total=mse, mse=mse, vlb=zero, kl=zero)
    xt = diffusion.add_noise(x0, noise, t)
    eps, v = network(known, xt, t, ctx, prior)
    return diffusion.training_losses(eps, v, x0, xt, noise, t, vlb_weight=config.vlb_weight,
                                     kl_weight=config.kl_weight)


class _Loss(torch.nn.Module):
    """The training loss of a batch as one module, so DistributedDataParallel can wrap it."""

    def __init__(self, network: Denoiser, diffusion: GaussianDiffusion, config: Config,
                 atlas: torch.Tensor | None) -> None:
        super().__init__()
        self.network, self.diffusion, self.config = network, diffusion, config
        self.atlas = atlas  # not a buffer: never broadcast

    def forward(self, known, target, nb, dist, t, noise):
        # The context and the prior in float32, the denoiser under autocast (CUDA only).
        ctx = context_of(self.network, self.config, known, self.atlas, nb, dist)
        with autocast(t.device, self.config.mixed_precision):
            terms = batch_loss(self.network, self.diffusion, self.config, known, target, ctx, t,
                               noise)
        return terms.total.float(), terms.mse.float(), terms.vlb.float(), terms.kl.float()


def train(data: TrainingData, config: Config, *, seed: int = 0, device: torch.device | str = "cpu",
          progress: bool = True, checkpointer: Checkpointer | None = None) -> TrainResult:
    """Train a denoiser on the reference. Deterministic for a given seed on CPU.

    `checkpointer` writes the training state every `checkpointer.every` epochs and at the end,
    and, when it holds a resumed state, training continues from it (written by the first
    process only under torchrun).

    Under torchrun (`spalstf.distributed`) every process takes a share of each mini-batch and
    of the validation cells; the result is the single-process one up to float rounding.
    """
    device = torch.device(device)
    world = distributed.world_size()
    n_cells, n_known = data.known.shape
    n_target = data.target.shape[1]
    diffusion = GaussianDiffusion(config.num_train_timesteps, config.beta_schedule,
                                  learn_sigma=config.vlb_weight > 0)
    with seeded_global_rng(seed):  # the initial weights; see there
        network = build_network(n_known, n_target, config).to(device)
    generator = torch.Generator().manual_seed(seed + 1)
    rng = np.random.default_rng(seed)

    order = rng.permutation(n_cells)
    n_val = int(round(config.validation_fraction * n_cells)) if n_cells >= 20 else 0
    val_rows, train_rows = np.sort(order[:n_val]), order[n_val:]
    ridge = None
    if config.prior == "ridge":  # fitted on the training cells only (validation held out)
        ridge = RidgePrior.from_config(config)
        ridge.fit(Reference(data.known, data.target, scalers=data.scalers, depth=data.depth,
                            rows=train_rows), seed=seed)
        network.prior_weights.copy_(torch.as_tensor(ridge.weights))
        network.prior_bias.copy_(torch.as_tensor(ridge.bias))
    use_neighbours = needs_neighbours(config)
    if use_neighbours and data.neighbours is None:
        index = NeighbourIndex(data.atlas[:, :n_known], device=device)
        data.neighbours, data.distances = index.query(data.known, config.n_neighbors,
                                                      self_index=data.self_index)

    def tensors(rows):
        out = [to_device(data.known[rows], device), to_device(data.target[rows], device)]
        if use_neighbours:
            out += [to_device(data.neighbours[rows], device),
                    to_device(data.distances[rows], device)]
        else:
            out += [None, None]
        return out

    atlas = torch.as_tensor(data.atlas, device=device) if use_neighbours else None
    loss_of = distributed.wrap(_Loss(network, diffusion, config, atlas), device)
    if world > 1:
        first = distributed.share(batch_size if (batch_size := min(
            config.batch_size, max(len(train_rows), 1))) >= world else 0)
        logger.info("process %d of %d trains on cells %d to %d of each mini-batch of %d",
                    distributed.rank(), world, first.start, first.stop - 1, batch_size)
    # Validation draws are fixed once, so that epochs are compared on the same noise; each
    # process scores its share of the validation cells.
    val_share = distributed.share(n_val)
    val = tensors(val_rows[val_share]) if n_val else None
    if val is not None:
        val_t = torch.randint(0, config.num_train_timesteps, (n_val,), generator=generator)
        val_noise = torch.randn(n_val, n_target, generator=generator)
        val_t, val_noise = val_t[val_share].to(device), val_noise[val_share].to(device)

    ema = copy.deepcopy(network).eval() if config.ema_decay > 0 else network
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    batch_size = min(config.batch_size, max(len(train_rows), 1))
    steps_per_epoch = max(1, math.ceil(len(train_rows) / batch_size))
    warmup = min(100, steps_per_epoch * 2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                  lambda s: min(1.0, (s + 1) / warmup))

    result = TrainResult(network=ema, ridge=ridge,
                         prior_alpha=None if ridge is None else ridge.alpha_)
    best_loss, best_state, bad_epochs, step = math.inf, None, 0, 0
    first_epoch, seconds_before = 0, 0.0
    resumed = checkpointer.resume_state if checkpointer is not None else None
    if resumed is not None:
        # Every random draw and update continues from the saved state, so the rest of the run
        # is the one an uninterrupted fit would have made.
        network.load_state_dict(resumed["network"])
        if ema is not network:
            ema.load_state_dict(resumed["ema"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        rng.bit_generator.state = resumed["numpy_rng"]
        generator.set_state(resumed["torch_rng"])
        step, best_loss, bad_epochs = resumed["step"], resumed["best_loss"], resumed["bad_epochs"]
        best_state, result.best_epoch = resumed["best_state"], resumed["best_epoch"]
        result.history = list(resumed["history"])
        first_epoch, seconds_before = resumed["epoch"], resumed["seconds"]
        logger.info("resuming training after epoch %d", first_epoch)

    def state(epochs_done: int) -> dict:
        return {"epoch": epochs_done, "step": step, "network": network.state_dict(),
                "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "numpy_rng": rng.bit_generator.state,
                "torch_rng": generator.get_state(), "best_loss": best_loss,
                "best_state": best_state, "best_epoch": result.best_epoch,
                "bad_epochs": bad_epochs, "history": result.history,
                "seconds": time.perf_counter() - start}

    # The time budget counts the seconds spent before a resume too.
    start = time.perf_counter() - seconds_before
    # The bar counts updates up to the real budget: `max_steps` usually ends training long
    # before `epochs` passes would.
    budget = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        budget = min(budget, config.max_steps)
    bar = tqdm(desc="spalstf fit", unit="update", disable=not progress, leave=False,
               initial=min(step, budget), total=budget)
    try:
        for epoch in range(first_epoch, config.epochs):
            if config.patience is not None and bad_epochs >= config.patience:
                result.stop_reason = f"no improvement for {config.patience} epochs"
                break  # only after resuming a run that had stopped early
            if config.max_steps is not None and step >= config.max_steps:
                result.stop_reason = f"{config.max_steps} updates done"
                break  # likewise
            network.train()
            perm = train_rows[rng.permutation(len(train_rows))]
            sums = {"total": 0.0, "mse": 0.0, "vlb": 0.0, "kl": 0.0}
            over_time = out_of_steps = False
            for b in range(steps_per_epoch):
                rows = perm[b * batch_size:(b + 1) * batch_size]
                if len(rows) == 0:
                    continue
                t = torch.randint(0, config.num_train_timesteps, (len(rows),),
                                  generator=generator)
                noise = torch.randn(len(rows), n_target, generator=generator)
                # This process's share of the batch (all of it for a single process); a batch
                # smaller than the number of processes is computed whole by each of them.
                part = distributed.share(len(rows)) if len(rows) >= world else slice(None)
                known, target, nb, dist = tensors(rows[part])
                out = loss_of(known, target, nb, dist, t[part].to(device),
                              noise[part].to(device))
                terms = LossTerms(*out)
                over_time = (config.max_time is not None
                             and time.perf_counter() - start > config.max_time)
                if world > 1:
                    # Shares are weighted by their size, so that DDP's average of gradients is
                    # the gradient of the whole batch's mean loss; the logged terms likewise.
                    weight = (known.shape[0] / len(rows)) if len(rows) >= world else 1 / world
                    loss = out[0] * (weight * world)
                    reduced = distributed.all_sum(torch.stack(
                        [o.detach() * weight for o in out]
                        + [torch.tensor(float(over_time), device=device)]).cpu())
                    terms = LossTerms(*reduced[:4])
                    over_time = bool(reduced[4] > 0)
                else:
                    loss = terms.total
                if not torch.isfinite(terms.total):
                    raise FloatingPointError(
                        f"training loss became {float(terms.total)} at epoch {epoch + 1}, "
                        f"step {step + 1} ({terms.as_floats()}); try a lower `learning_rate` "
                        "or check the input for extreme values")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                bar.update()
                out_of_steps = config.max_steps is not None and step >= config.max_steps
                if ema is not network:
                    decay = min(config.ema_decay, (1 + step) / (10 + step))
                    with torch.no_grad():
                        for pe, p in zip(ema.parameters(), network.parameters(), strict=True):
                            pe.mul_(decay).add_(p.detach(), alpha=1 - decay)
                for k, value in terms.as_floats().items():
                    sums[k] += value / steps_per_epoch
                if over_time or out_of_steps:
                    break
            record = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in sums.items()}}
            if val is not None:
                ema.eval()
                with torch.no_grad():
                    scorer = _Loss(ema, diffusion, config, atlas)
                    losses = []
                    for s in range(0, val[0].shape[0], 1024):
                        sl = slice(s, s + 1024)
                        known, target, nb, dist = (None if x is None else x[sl] for x in val)
                        mse = scorer(known, target, nb, dist, val_t[sl], val_noise[sl])[1]
                        losses.append(float(mse) * known.shape[0])
                    total = distributed.all_sum(torch.tensor([sum(losses)], dtype=torch.float64))
                    record["val_mse"] = float(total[0]) / n_val
            result.history.append(record)
            monitored = record.get("val_mse", record["train_total"])
            bar.set_postfix(loss=f"{record['train_total']:.4f}", val=f"{monitored:.4f}")
            if monitored < best_loss - 1e-5:
                best_loss, bad_epochs = monitored, 0
                best_state = copy.deepcopy(ema.state_dict())
                result.best_epoch = epoch + 1
            else:
                bad_epochs += 1
            if (checkpointer is not None and checkpointer.due(epoch + 1)
                    and distributed.rank() == 0):
                checkpointer.save(state(epoch + 1))
            if out_of_steps:
                result.stop_reason = f"{config.max_steps} updates done"
                break
            if over_time or (world == 1 and config.max_time is not None
                             and time.perf_counter() - start > config.max_time):
                result.stop_reason = f"time budget of {config.max_time:g} s reached"
                break
            if config.patience is not None and bad_epochs >= config.patience:
                result.stop_reason = f"no improvement for {config.patience} epochs"
                break
        else:
            result.stop_reason = f"{config.epochs} epochs done"
    except KeyboardInterrupt:
        if best_state is None:
            raise  # interrupted before any epoch ended: there is nothing worth keeping
        result.stop_reason = "interrupted; keeping the best weights so far"
        logger.warning("training interrupted at step %d: keeping the best weights so far "
                       "(epoch %d)", step, result.best_epoch)
    else:
        # The final state too, so that a run stopped by its budget can be continued.
        epochs_done = len(result.history)
        if checkpointer is not None and checkpointer.path is not None \
                and checkpointer.last_saved_epoch != epochs_done and distributed.rank() == 0:
            checkpointer.save(state(epochs_done))
    finally:
        bar.close()
    if best_state is not None:
        ema.load_state_dict(best_state)
    ema.eval()
    if not all(torch.isfinite(p).all() for p in ema.parameters()):
        raise FloatingPointError("training produced non-finite weights (a NaN or infinite "
                                 "gradient); try a lower `learning_rate`")
    result.network = ema
    result.seconds = time.perf_counter() - start
    logger.log(phase_level(), "trained %d epochs (%d updates) in %.1f s (%s); best epoch %d",
               len(result.history), step, result.seconds, result.stop_reason, result.best_epoch)
    return result
