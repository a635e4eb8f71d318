"""Chunks of cells predicted by several threads at once (`spalstf.runtime.ordered_map`): the
results are those of one thread, bit for bit, in memory and streamed to a file."""

import threading

import anndata as ad
import numpy as np
import pytest
import torch

import spalstf
from spalstf import runtime
from spalstf.combine import columns as columns_module
from spalstf.model import predict as predict_module


def test_ordered_map_yields_in_order_whatever_order_the_threads_finish_in():
    """Results come in the items' order though the first finishes after the second; the
    workers run each op with the caller's threads (one, in `one_thread_per_op`, restored
    after); an error in a worker is raised to the caller."""
    second_done, finished, threads = threading.Event(), [], set()

    def second_first(item):
        threads.add(torch.get_num_threads())
        if item == 0:
            assert second_done.wait(10)  # the second item runs meanwhile, in the other worker
        finished.append(item)
        if item == 1:
            second_done.set()
        return item * 10

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the caller's: one per op in the workers, two again after
    try:
        with runtime.one_thread_per_op():
            assert list(runtime.ordered_map(second_first, range(20), workers=2)) == [
                10 * i for i in range(20)]
        assert finished.index(1) < finished.index(0) and threads == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

    def failing(item):
        if item == 3:
            raise ValueError("item 3")
        return item

    with pytest.raises(ValueError, match="item 3"):
        list(runtime.ordered_map(failing, range(10), workers=2))
    assert torch.get_num_threads() == before


def test_ordered_map_holds_at_most_a_few_items_per_worker():
    in_flight, most = [0], [0]
    lock = threading.Lock()

    def count(item):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        return item

    for _ in runtime.ordered_map(count, range(50), workers=2, ahead=2):
        with lock:
            in_flight[0] -= 1
    assert most[0] <= 2 * 2 + 1  # ahead x workers, and the one submitted as one is taken


def test_chunk_workers_follow_the_threads_and_stay_one_on_a_gpu(monkeypatch):
    monkeypatch.setattr(runtime, "available_cores", lambda: 2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert runtime.chunk_workers(torch.device("cpu")) == 1
        torch.set_num_threads(4)
        assert runtime.chunk_workers("cpu") == 2  # at most the cores
        assert runtime.chunk_workers("cuda") == 1
    finally:
        torch.set_num_threads(before)


def test_per_thread_scratch_is_not_shared_between_threads():
    scratch = runtime.PerThread()
    scratch["a"] = 1
    seen = []
    thread = threading.Thread(target=lambda: seen.append(("a" in scratch, scratch.get("a"))))
    thread.start()
    thread.join()
    assert seen == [(False, None)] and scratch["a"] == 1
    del scratch["a"]
    assert "a" not in scratch


@pytest.mark.parametrize("float32", [False, True])
def test_chunks_predicted_by_two_threads_give_the_one_thread_result(tiny_pair, monkeypatch,
                                                                    tmp_path, float32):
    """The default imputation (counts input: the at_depth readouts, the count model's
    interval, the counts layer) with views read a chunk at a time (each thread's views
    remember their own last chunk), chunks of 8 cells, landmarks fewer than the cells (so the
    chunks are predicted, not read from the landmarks), and, with `float32`, the profile
    searches' float32 path: two worker threads give one thread's arrays exactly, in memory and
    streamed to a file, and both threads did predict chunks at once."""
    st, sc = tiny_pair
    monkeypatch.setattr(predict_module, "STACK_CHUNK", 8)
    monkeypatch.setattr(predict_module, "STACK_LANDMARKS", 20)
    monkeypatch.setattr(columns_module, "HELD_VIEW_BYTES", 0)
    monkeypatch.setattr(columns_module, "HELD_VALUES_BYTES", 0)
    if float32:
        monkeypatch.setattr(columns_module, "FLOAT32_SEARCH_CELLS", 1)
    opts = dict(seed=0, progress=False, batch_size=8)

    def impute(workers, **extra):
        monkeypatch.setattr(columns_module, "chunk_workers", lambda device: workers)
        return spalstf.impute(st, sc, **opts, **extra)

    one = impute(1)
    # the first two chunks of the run meet inside `ColumnSource.predict`: with one thread
    # predicting them in turn, the first would wait alone, and the barrier's time-out fail it
    barrier, lock, calls = threading.Barrier(2, timeout=10), threading.Lock(), []
    plain = columns_module.ColumnSource.predict

    def meeting(self, cells, **kwargs):
        if threading.current_thread().name.startswith("spalstf"):  # `ordered_map`'s workers
            with lock:
                calls.append(threading.get_ident())
                first_two = len(calls) <= 2
            if first_two:
                barrier.wait()
        return plain(self, cells, **kwargs)

    monkeypatch.setattr(columns_module.ColumnSource, "predict", meeting)
    two = impute(2)
    monkeypatch.setattr(columns_module.ColumnSource, "predict", plain)
    assert len(set(calls)) == 2 and len(calls) == -(-st.n_obs // 8)
    streamed = ad.read_h5ad(impute(2, out=tmp_path / "out.h5ad"))
    assert set(one.layers) >= {"counts", "std", "lower", "upper"}
    for got in (two, streamed):
        np.testing.assert_array_equal(np.asarray(got.X), one.X)
        assert set(got.layers) == set(one.layers)
        for name in one.layers:
            np.testing.assert_array_equal(np.asarray(got.layers[name]), one.layers[name])
        np.testing.assert_array_equal(got.obs["spalstf_depth"], one.obs["spalstf_depth"])
        for column in one.var.columns:
            np.testing.assert_array_equal(got.var[column].to_numpy(), one.var[column].to_numpy())


def test_each_thread_remembers_its_own_last_chunk():
    """`remembering_last` keeps one last result per thread: a thread reading its chunk again
    after another thread read another chunk gets its own values, without a new read."""
    reads = []

    def read(rows):
        reads.append(tuple(rows))
        return np.asarray(rows) * 2.0

    read_once = columns_module.remembering_last(read)
    mine, theirs = np.arange(3), np.arange(5, 9)
    first = read_once(mine)
    thread = threading.Thread(target=read_once, args=(theirs,))
    thread.start()
    thread.join()
    again = read_once(mine)
    assert again is first and reads == [(0, 1, 2), (5, 6, 7, 8)]
