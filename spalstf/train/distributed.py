"""Several processes, one model: PyTorch DistributedDataParallel under `torchrun`.

Launched by ``torchrun`` (which sets WORLD_SIZE, RANK, LOCAL_RANK and the rendezvous address),
`spalstf.fit` joins the process group (NCCL on GPUs, gloo on CPU) and the training loop
(`spalstf.train.denoiser`) gives every process a contiguous share of each mini-batch. Every process
draws the same permutation, timesteps and noise from the same seed, so the union of the shares
is exactly the single-process batch; gradients are averaged by DDP with each share weighted by
its size. The trained model is therefore the single-process one up to floating-point noise
(with dropout at its default of 0). Outside torchrun every function here is a no-op for a
single process.

    torchrun --nproc_per_node 4 -m spalstf.cli fit --sc ref.h5ad --st st.h5ad --model-out m

Inference needs no communication: `spalstf impute --shard i/n` imputes a contiguous share of
the cells, and `spalstf merge` joins the part files (see `spalstf.io.merge_h5ad`).
"""

from __future__ import annotations

import atexit
import logging
import os
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def launched() -> bool:
    """Whether torchrun (or an equivalent launcher) started this process among several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether a process group with more than one process is in use."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def setup(device: torch.device) -> torch.device:
    """Join the launcher's process group (once) and return this process's device.

    Outside a launcher, returns `device` unchanged. Under torchrun with a CUDA device, each
    process takes the GPU of its LOCAL_RANK and talks NCCL; on CPU it talks gloo.
    """
    if not launched():
        return device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        atexit.register(shutdown)
        logger.info("joined a %s process group: rank %d of %d", backend, dist.get_rank(),
                    dist.get_world_size())
    return device


def shutdown() -> None:
    """Leave the process group (if one is initialised)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def share(n: int) -> slice:
    """This process's contiguous share of n items (sizes differ by at most one)."""
    w, r = world_size(), rank()
    bounds = np.linspace(0, n, w + 1).round().astype(int) if w > 1 else np.array([0, n])
    return slice(int(bounds[r]), int(bounds[r + 1]))


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum over processes of a tensor (a copy; the input itself for one process)."""
    if not active():
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`module` inside DistributedDataParallel when several processes train, else itself.

    Buffers are not broadcast at each step: they are computed identically in every process.
    """
    if not active():
        return module
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    params = inspect.signature(DistributedDataParallel).parameters
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in params
               else {"broadcast_buffers": False})  # the newer name, where torch has it
    return DistributedDataParallel(module, device_ids=ids, **no_sync)


def barrier() -> None:
    if active():
        dist.barrier()
