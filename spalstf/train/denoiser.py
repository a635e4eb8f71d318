"""Training the diffusion network ("network"): reference cells only, target genes noised,
known genes clean.

Tensors in, a trained network out. What is particular to this network is here: its batches
(random passes over the training cells), its loss (`batch_loss`, around the ridge or neighbour
prior), the validation cells held out with fixed noise so that epochs are compared on the same
draws, and the share of each batch a process takes under torchrun. The updates, the averaged
(EMA) weights, early stopping, Ctrl-C and checkpoints are the shared loop's
(`spalstf.train.loop`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from spalstf._logging import phase_level
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
from spalstf.train import distributed, loop
from spalstf.train.checkpoint import Checkpointer
from spalstf.train.loop import LoopOptions, Step

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

    Under torchrun (`spalstf.train.distributed`) every process takes a share of each mini-batch
    and of the validation cells; the result is the single-process one up to float rounding.
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

    batch_size = min(config.batch_size, max(len(train_rows), 1))
    steps_per_epoch = max(1, math.ceil(len(train_rows) / batch_size))
    warmup = min(100, steps_per_epoch * 2)

    def epoch_batches():
        perm = train_rows[rng.permutation(len(train_rows))]
        for b in range(steps_per_epoch):
            rows = perm[b * batch_size:(b + 1) * batch_size]
            if len(rows):
                yield rows

    def loss_of_batch(rows) -> Step:
        t = torch.randint(0, config.num_train_timesteps, (len(rows),), generator=generator)
        noise = torch.randn(len(rows), n_target, generator=generator)
        # This process's share of the batch (all of it for a single process); a batch smaller
        # than the number of processes is computed whole by each of them.
        part = distributed.share(len(rows)) if len(rows) >= world else slice(None)
        known, target, nb, dist = tensors(rows[part])
        out = loss_of(known, target, nb, dist, t[part].to(device), noise[part].to(device))
        return Step(LossTerms(*out),
                    weight=(known.shape[0] / len(rows)) if len(rows) >= world else 1 / world)

    def validate(ema) -> float:
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
        return float(total[0]) / n_val

    options = LoopOptions(
        epochs=config.epochs, steps_per_epoch=steps_per_epoch,
        learning_rate=config.learning_rate, weight_decay=config.weight_decay,
        lr_factor=lambda s: min(1.0, (s + 1) / warmup), ema_decay=config.ema_decay,
        max_steps=config.max_steps, max_time=config.max_time, patience=config.patience,
        distributed=True)
    done = loop.run(network, epoch_batches, loss_of_batch, options=options,
                    validate=validate if val is not None else None, checkpointer=checkpointer,
                    rng=rng, generator=generator, progress=progress)
    result = TrainResult(network=done.network, history=done.history,
                         stop_reason=done.stop_reason, best_epoch=done.best_epoch,
                         seconds=done.seconds, ridge=ridge,
                         prior_alpha=None if ridge is None else ridge.alpha_)
    logger.log(phase_level(), "trained %d epochs (%d updates) in %.1f s (%s); best epoch %d",
               len(result.history), done.updates, result.seconds, result.stop_reason, result.best_epoch)
    return result
