"""Where and how the tensors run: CPU threads, mixed precision, pinned transfers, chunk sizes.

Nothing here changes what a cell's imputation is on CPU: threads and chunk sizes only change
speed and memory (a cell's values do not depend on its chunk, see `spalstf.diffusion.sample`). Mixed
precision is used on CUDA only, where bfloat16 is supported, for the denoiser's matrix
products; the neighbour search, the diffusion arithmetic and the optimiser stay in float32.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: Held while torch's global generator is seeded and drawn from (`seeded_global_rng`).
_GLOBAL_RNG = threading.Lock()


@contextlib.contextmanager
def seeded_global_rng(seed: int):
    """torch's global generator seeded with `seed` for the block, and restored after, one
    thread at a time. Building a network draws its initial weights from the global generator
    (torch's initialisers take no generator object); without the lock, two fits in two threads
    would draw from each other's seeding, and a seed would no longer fix the model. Everything
    else in fit and impute draws from generator objects of its own."""
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield

#: Host memory (bytes) that one inference chunk may use on CPU, activations included.
CPU_CHUNK_BYTES = 256 * 2**20
#: Fraction of the free GPU memory that one inference chunk may use.
GPU_CHUNK_FRACTION = 0.25
#: Largest and smallest automatic inference chunks (cells).
MAX_CHUNK, MIN_CHUNK = 65536, 16


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def use_all_cores() -> int:
    """Let torch use every core this process may run on, shared among local processes.

    An explicit choice is respected: when OMP_NUM_THREADS or SPALSTF_NUM_THREADS is set, or
    the caller already called torch.set_num_threads with a larger number, nothing is raised.
    Under torchrun the cores are divided among the processes of the node (LOCAL_WORLD_SIZE).
    Returns the number of threads in use.
    """
    explicit = os.environ.get("SPALSTF_NUM_THREADS")
    if explicit:
        torch.set_num_threads(max(1, int(explicit)))
    elif "OMP_NUM_THREADS" not in os.environ:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        wanted = max(1, available_cores() // local)
        if torch.get_num_threads() < wanted:
            torch.set_num_threads(wanted)
    return torch.get_num_threads()


def chunk_workers(device: torch.device | str) -> int:
    """Worker threads that predict chunks of cells at once (`ordered_map`) on `device`.

    On a CPU: torch's thread count, at most the cores this process may run on. `use_all_cores`
    makes that every core unless the caller chose (OMP_NUM_THREADS, SPALSTF_NUM_THREADS, or
    torch.set_num_threads before the call), so a choice of threads is a choice of workers, and
    OMP_NUM_THREADS=1 keeps one chunk at a time. The cores go to whole chunks, each op inside
    them on one thread (`one_thread_per_op`): threading each op did not pay on mid-sized ops
    (two torch threads were measured slower than one, benchmarks/results/search_threads.md).
    On a GPU: one (its kernels queue on one device).
    """
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), available_cores()))


@contextlib.contextmanager
def one_thread_per_op():
    """torch's intra-op threads, and numpy's BLAS's (through threadpoolctl), at one for the
    block, restored after: for the per-cell loops, whose chunks the workers of `ordered_map`
    run side by side. Also with one worker, so that a result never depends on the number of
    workers: a BLAS product on one thread and on two can differ in the last bit (numpy's
    OpenBLAS, measured), and 2 workers x 2 threads per op would oversubscribe 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        controller = _blas_controller()
        with (contextlib.nullcontext() if controller is None
              else controller.limit(limits=1, user_api="blas")):
            yield
    finally:
        torch.set_num_threads(before)


_CONTROLLER: list = []


def _blas_controller():
    """threadpoolctl's controller of the loaded libraries, found once (3 ms a search; its
    `limit` then takes 0.02 ms), or None without threadpoolctl."""
    if not _CONTROLLER:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - scikit-learn brings it
            _CONTROLLER.append(None)
        else:
            _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0]


def ordered_map(function: Callable, items: Iterable, *, workers: int,
                ahead: int = 2) -> Iterator:
    """`function(item)` for each of `items`, yielded in the items' order.

    With `workers` > 1, computed by that many threads (numpy and torch release the GIL in their
    large kernels), at most `ahead` x `workers` results held or in flight, so memory stays that
    of a few chunks; use it in a `contextlib.closing`, so that the threads stop when the caller
    does. The function must be safe to run on several items at once (no shared scratch or cache
    written unguarded); its ops run with the threads the caller set (`one_thread_per_op`: one
    each, which the workers' threads are started with). An exception raised by it is raised
    here, and the items not started are dropped. With one worker: a plain loop in this thread.
    """
    if workers <= 1:
        for item in items:
            yield function(item)
        return
    items = iter(items)
    grad = torch.is_grad_enabled()  # thread-local in torch: the caller's, in every worker

    def run(item):
        with torch.set_grad_enabled(grad):
            return function(item)

    with ThreadPoolExecutor(workers, thread_name_prefix="spalstf",
                            initializer=torch.set_num_threads,
                            initargs=(torch.get_num_threads(),)) as pool:
        pending = deque(pool.submit(run, item)
                        for item in itertools.islice(items, ahead * workers))
        try:
            while pending:
                result = pending.popleft().result()
                for item in itertools.islice(items, 1):  # the next, before this one is used
                    pending.append(pool.submit(run, item))
                yield result
        finally:
            for future in pending:
                future.cancel()


class PerThread:
    """A dict of which each thread sees its own (`threading.local`): scratch buffers reused
    from call to call by one thread, never written by two threads at once (`ordered_map`'s
    workers). A thread's entries go with it."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _own(self) -> dict:
        own = getattr(self._local, "values", None)
        if own is None:
            own = self._local.values = {}
        return own

    def get(self, key, default=None):
        return self._own().get(key, default)

    def __contains__(self, key) -> bool:
        return key in self._own()

    def __getitem__(self, key):
        return self._own()[key]

    def __setitem__(self, key, value) -> None:
        self._own()[key] = value

    def __delitem__(self, key) -> None:
        del self._own()[key]


def mixed_precision(device: torch.device) -> bool:
    """Whether the denoiser may run in bfloat16 autocast: CUDA devices that support it."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device: torch.device, enabled: bool = True):
    """bfloat16 autocast on CUDA when `enabled` and supported; a no-op context otherwise.

    bfloat16 has float32's range, so no loss scaling is needed and gradients cannot overflow.
    """
    if enabled and mixed_precision(device):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on `device`; through pinned memory, asynchronously, when it is a GPU."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def inference_chunk(device: torch.device, n_samples: int, n_tokens: int, d_model: int,
                    n_features: int, n_neighbors: int, n_atlas: int) -> int:
    """Cells per inference chunk that fit the device's memory budget.

    The estimate counts the activations of one denoiser pass on every sample of a chunk
    (tokens x width, with a factor for the attention and MLP intermediates), the context
    sequence and the neighbour-search block: a cell's results never depend on it.
    """
    per_cell = 4 * (n_samples * n_tokens * d_model * 16
                    + (1 + n_neighbors) * (n_features + 2) * 6
                    + n_atlas * 2)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * GPU_CHUNK_FRACTION)
    else:
        budget = CPU_CHUNK_BYTES
    return int(np.clip(budget // max(per_cell, 1), MIN_CHUNK, MAX_CHUNK))
