"""The training loop both networks share: the updates, the averaged weights, when to stop.

The caller gives the network, the batches of an epoch and the loss of a batch; the loop does
the rest, the same for the diffusion network (`spalstf.train.denoiser`) and the masked-gene
network (`spalstf.prior.masked.train`):

- one update: the loss, the gradient clipped at norm 1, an AdamW step, the learning-rate
  schedule's step, then the exponential moving average (EMA) of the weights, which are the
  weights a fit returns;
- per epoch: a record of the mean losses, the validation loss when the caller scores one, the
  best epoch's EMA weights kept (`LoopOptions.keep_best`), a checkpoint when one is due;
- stopping: after `epochs`, `max_steps` updates, `max_time` seconds or `patience` epochs
  without improvement; Ctrl-C keeps the best weights so far; a non-finite loss or weight is an
  error that names where it happened;
- under torchrun (`spalstf.train.distributed`), each process's share of a batch is weighed so
  that DDP's average of gradients is the whole batch's, and the logged losses are summed.

A fit resumed from a checkpoint (`spalstf.train.checkpoint`) continues every random draw and
update from the saved state, so it ends where an uninterrupted one would (on CPU, bit for bit).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from spalstf.diffusion import LossTerms
from spalstf.train import distributed
from spalstf.train.checkpoint import Checkpointer

logger = logging.getLogger(__name__)


@dataclass
class LoopOptions:
    """How a loop trains and when it stops.

    Attributes
    ----------
    epochs, steps_per_epoch
        Epochs, and the updates of a full one (each epoch's mean losses are over this many).
    learning_rate, weight_decay
        AdamW's.
    lr_factor
        The learning rate's factor at each update (`torch.optim.lr_scheduler.LambdaLR`).
    ema_decay
        The EMA's decay; 0: the trained weights themselves are returned.
    ema_offset
        The EMA warms up with the decay min(ema_decay, (1 + n) / (10 + n)), n the updates done
        plus this offset: 0 for the diffusion network, -1 for the masked one (each as it was
        always trained: another count would change every trained weight).
    max_steps, max_time, patience
        Budgets of updates and seconds, and epochs without improvement (None: no limit).
    keep_best
        End with the EMA weights of the epoch with the lowest monitored loss (the
        validation's, else the training's); False: with the last ones.
    distributed
        Train a share of each batch in each process under torchrun (the loss a module that
        `spalstf.train.distributed.wrap` wrapped); False: every process trains alone.
    name
        What is trained, in errors ("training loss became nan at ...").
    period
        What an epoch is called in errors; None: epochs are only windows of the record, and an
        error names the update alone.
    bar
        The progress bar's label.
    """

    epochs: int
    steps_per_epoch: int
    learning_rate: float
    weight_decay: float
    lr_factor: Callable[[int], float]
    ema_decay: float
    ema_offset: int = 0
    max_steps: int | None = None
    max_time: float | None = None
    patience: int | None = None
    keep_best: bool = True
    distributed: bool = False
    name: str = "training"
    period: str | None = "epoch"
    bar: str = "spalstf fit"


@dataclass
class Step:
    """One update's loss, as the caller's batch loss returns it: the terms of this process's
    share of the batch, and that share's weight in the batch's mean (under torchrun)."""

    terms: LossTerms
    weight: float = 1.0


@dataclass
class LoopResult:
    """The trained (EMA) network in eval mode, the epochs' records and why training stopped."""

    network: torch.nn.Module
    history: list[dict] = field(default_factory=list)
    stop_reason: str = ""
    best_epoch: int = 0
    updates: int = 0
    seconds: float = 0.0


#: An epoch's record from (its number, the updates done, its updates' `LossTerms.as_floats`).
Record = Callable[[int, int, list[dict]], dict]


def run(network: torch.nn.Module, epoch_batches: Callable[[], Iterable],
        batch_loss: Callable[[object], Step], *, options: LoopOptions,
        validate: Callable[[torch.nn.Module], float] | None = None,
        record: Record | None = None, checkpointer: Checkpointer | None = None,
        rng: np.random.Generator | None = None, generator: torch.Generator | None = None,
        progress: bool = False) -> LoopResult:
    """Train `network` (see the module); returns its EMA copy with the best or last weights.

    Parameters
    ----------
    network
        The module whose parameters are trained (in train mode during updates).
    epoch_batches
        Called at the start of each epoch: the epoch's batches, in order (a generator draws
        its order when first asked, after the epoch's checks).
    batch_loss
        The `Step` of one batch. Its random draws come from the caller's generators.
    options
        `LoopOptions`.
    validate
        The validation loss of the EMA network (one float, all processes' together): each
        epoch's record holds it as "val_mse", and it is the monitored loss.
    record
        `record(epoch, updates, terms)`: an epoch's record from its updates' loss terms (a
        list of `LossTerms.as_floats`); default {"epoch", "train_total", "train_mse", ...},
        the means over `steps_per_epoch`.
    checkpointer
        Writes the state when due and at the end (first process only), and holds the state a
        fit resumes from; with `rng` and `generator`, the caller's random draws, saved with it.
    progress
        A progress bar over updates.
    """
    world = distributed.world_size() if options.distributed else 1
    ema = copy.deepcopy(network).eval() if options.ema_decay > 0 else network
    optimizer = torch.optim.AdamW(network.parameters(), lr=options.learning_rate,
                                  weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, options.lr_factor)
    result = LoopResult(network=ema)
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

    max_steps, max_time, patience = options.max_steps, options.max_time, options.patience
    per_epoch = options.steps_per_epoch
    # The time budget counts the seconds spent before a resume too.
    start = time.perf_counter() - seconds_before
    # The bar counts updates up to the real budget: `max_steps` usually ends training long
    # before `epochs` passes would.
    budget = options.epochs * per_epoch
    if max_steps is not None:
        budget = min(budget, max_steps)
    bar = tqdm(desc=options.bar, unit="update", disable=not progress, leave=False,
               initial=min(step, budget), total=budget)
    try:
        for epoch in range(first_epoch, options.epochs):
            if patience is not None and bad_epochs >= patience:
                result.stop_reason = f"no improvement for {patience} epochs"
                break  # only after resuming a run that had stopped early
            if max_steps is not None and step >= max_steps:
                result.stop_reason = f"{max_steps} updates done"
                break  # likewise
            network.train()
            terms_of_epoch: list[dict] = []
            over_time = out_of_steps = False
            for batch in epoch_batches():
                out = batch_loss(batch)
                terms = out.terms
                over_time = max_time is not None and time.perf_counter() - start > max_time
                if world > 1:
                    # Shares are weighted by their size, so that DDP's average of gradients is
                    # the gradient of the whole batch's mean loss; the logged terms likewise.
                    parts = (terms.total, terms.mse, terms.vlb, terms.kl)
                    loss = parts[0] * (out.weight * world)
                    reduced = distributed.all_sum(torch.stack(
                        [p.detach() * out.weight for p in parts]
                        + [torch.tensor(float(over_time), device=parts[0].device)]).cpu())
                    terms = LossTerms(*reduced[:4])
                    over_time = bool(reduced[4] > 0)
                else:
                    loss = terms.total
                if not torch.isfinite(terms.total):
                    where = (f"{options.period} {epoch + 1}, step {step + 1}" if options.period
                             else f"update {step + 1}")
                    raise FloatingPointError(
                        f"{options.name} loss became {float(terms.total)} at {where} "
                        f"({terms.as_floats()}); try a lower `learning_rate` or check the "
                        "input for extreme values")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                bar.update()
                out_of_steps = max_steps is not None and step >= max_steps
                if ema is not network:
                    n = step + options.ema_offset
                    decay = min(options.ema_decay, (1 + n) / (10 + n))
                    with torch.no_grad():
                        for pe, p in zip(ema.parameters(), network.parameters(), strict=True):
                            pe.mul_(decay).add_(p.detach(), alpha=1 - decay)
                terms_of_epoch.append(terms.as_floats())
                if over_time or out_of_steps:
                    break
            means = _means(terms_of_epoch, per_epoch)
            entry = ({"epoch": epoch + 1, **{f"train_{k}": v for k, v in means.items()}}
                     if record is None else record(epoch + 1, step, terms_of_epoch))
            monitored = means["total"]
            if validate is not None:
                entry["val_mse"] = monitored = validate(ema)
            result.history.append(entry)
            bar.set_postfix(loss=f"{means['total']:.4f}", val=f"{monitored:.4f}")
            if monitored < best_loss - 1e-5:
                best_loss, bad_epochs = monitored, 0
                if options.keep_best:
                    best_state = copy.deepcopy(ema.state_dict())
                result.best_epoch = epoch + 1
            else:
                bad_epochs += 1
            if (checkpointer is not None and checkpointer.due(epoch + 1)
                    and distributed.rank() == 0):
                checkpointer.save(state(epoch + 1))
            if out_of_steps:
                result.stop_reason = f"{max_steps} updates done"
                break
            if over_time or (world == 1 and max_time is not None
                             and time.perf_counter() - start > max_time):
                result.stop_reason = f"time budget of {max_time:g} s reached"
                break
            if patience is not None and bad_epochs >= patience:
                result.stop_reason = f"no improvement for {patience} epochs"
                break
        else:
            result.stop_reason = f"{options.epochs} epochs done"
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
        raise FloatingPointError(f"{options.name} produced non-finite weights (a NaN or "
                                 "infinite gradient); try a lower `learning_rate`")
    result.network, result.updates = ema, step
    result.seconds = time.perf_counter() - start
    return result


def _means(terms: list[dict], count: int) -> dict[str, float]:
    """Each loss term's mean over `count` updates, summed in order (not `sum`, whose float
    rounding differs): the records of a fit are the same whatever the Python."""
    means = {"total": 0.0, "mse": 0.0, "vlb": 0.0, "kl": 0.0}
    for values in terms:
        for k, value in values.items():
            means[k] += value / count
    return means
