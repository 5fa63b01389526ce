"""Where a fan-out stage's tasks run (today: sample's blocks): the [execution] params section.

    runner: threads   # this process, `workers` threads (default: one per GPU, 1 on CPU)
    runner: dask      # a Dask cluster: `address` of an existing scheduler, or a local one with `workers` processes

    python -m flows sample --runner dask --address tcp://scheduler:8786

GPU slots are enforced by the runner: a thread pool as wide as the GPUs, or Dask worker resources
(`dask worker --resources GPU=1`; each task asks for `gpus_per_task`). Where a task runs never changes
what it returns, so the runner is not part of any stage's params or cache keys: the same blocks give the
same bytes on threads or Dask, and a block finished by one is a cache hit for the other.
Workers on other machines need the project folder at the same path (a shared filesystem) and the same
PREFECT_LOCAL_STORAGE_PATH, where finished blocks' results are kept.
"""
from __future__ import annotations

import contextlib
import queue
import threading

import torch

from .common import device


def local_slots(ex: dict) -> int:
    """Tasks this machine runs at once: `workers`, else one per visible GPU, else 1."""
    return ex["workers"] or max(torch.cuda.device_count(), 1)


def task_runner(ex: dict):
    """The Prefect task runner for `ex` (the validated [execution] section)."""
    kind = ex["runner"]
    if kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner
        return ThreadPoolTaskRunner(max_workers=local_slots(ex))
    if kind == "dask":
        from prefect_dask import DaskTaskRunner
        if ex["address"]:
            return DaskTaskRunner(address=ex["address"])
        # one task per worker process at a time; each worker offers the GPU slots a task asks for
        slots = {"GPU": ex["gpus_per_task"]} if ex["gpus_per_task"] else {}
        return DaskTaskRunner(cluster_kwargs={"n_workers": local_slots(ex), "threads_per_worker": 1, "processes": True,
                                              "resources": slots, "dashboard_address": None})
    raise ValueError(f"execution.runner: unknown runner {kind!r}")


@contextlib.contextmanager
def gpu_slots(ex: dict):
    """Around task.submit(): the task takes `gpus_per_task` GPU slots of the worker it lands on."""
    n = ex["gpus_per_task"]
    if not n or ex["runner"] != "dask":  # a thread pool's width is its slot count
        yield
        return
    import dask
    with dask.annotate(resources={"GPU": n}):
        yield


def check_cluster(ex: dict, client) -> None:
    """An existing Dask cluster whose workers offer no GPU slots would leave every task waiting: say so."""
    need = ex["gpus_per_task"]
    if not need:
        return
    offered = [w.get("resources", {}).get("GPU", 0) for w in client.scheduler_info().get("workers", {}).values()]
    if not any(g >= need for g in offered):
        raise RuntimeError(f"execution.gpus_per_task: {need}, but no Dask worker at {ex['address']} offers that many "
                           "'GPU' resources (start workers with `dask worker ... --resources GPU=1`, or set 0)")


def in_flight(ex: dict, runner) -> int:
    """How many blocks the flow keeps submitted at once: twice the slots, so every slot stays busy while
    the flow writes results, and bounded, so a run of 50k blocks holds a few dozen locks and results."""
    slots = local_slots(ex)
    if ex["runner"] == "dask":
        workers = runner.client.scheduler_info().get("workers", {}).values()
        slots = sum(w.get("resources", {}).get("GPU", 0) // ex["gpus_per_task"] if ex["gpus_per_task"] else w.get("nthreads", 1)
                    for w in workers) or slots
    return 2 * slots


_free: queue.Queue | None = None
_free_lock = threading.Lock()


@contextlib.contextmanager
def task_device():
    """The device a task computes on. A worker of a local Dask cluster (named 0, 1, ...) keeps to its own
    GPU; with several GPUs in one process (the threads runner) each task borrows a GPU index and gives it
    back; otherwise device() (one visible GPU, as on a dask-cuda worker, or the CPU)."""
    global _free
    n = torch.cuda.device_count() if device() == "cuda" else 0
    if n <= 1:
        yield device()
        return
    name = _dask_worker_name()
    if isinstance(name, int):
        yield f"cuda:{name % n}"
        return
    with _free_lock:
        if _free is None:
            _free = queue.Queue()
            for i in range(n):
                _free.put(i)
    i = _free.get()
    try:
        yield f"cuda:{i}"
    finally:
        _free.put(i)


def _dask_worker_name():
    try:
        from distributed import get_worker
        return get_worker().name
    except (ImportError, ValueError):  # not inside a Dask worker
        return None
