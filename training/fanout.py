"""The per-series fan-out: a local process pool (default) or Ray tasks, in batches, each under a limit."""

from __future__ import annotations

import ctypes
import logging
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

ENGINES = ("local", "ray")
#: (done, total) after each finished batch, in the calling process
Progress = Callable[[int, int], None]
#: a whole batch's ``(key, payload)`` items -> the items ``fn`` gets, in the worker
Reader = Callable[[Sequence[tuple[str, Any]]], Sequence[tuple[str, Any]]]
#: batches in flight per Ray CPU: enough to keep workers busy, few enough to bound the object store
_RAY_BATCHES_PER_CPU = 2


class SeriesTimeLimit(BaseException):  # noqa: N818 -- a BaseException, so no `except Exception` in a fit swallows it
    """One item ran past its time limit."""


def quiet_libraries(verbose: bool = False) -> None:
    """cmdstanpy, Prophet (and its "Importing plotly failed"), MLflow and Ray logging: off unless verbose.

    Safe to call again in every worker process, before or after the libraries are imported.
    A notebook calls it first (``training.quiet_libraries()``) for cells without progress lines;
    it covers this process, so train in it (``TrainConfig(n_jobs=1)``) for silent cells.
    """
    chatty = logging.INFO if verbose else logging.CRITICAL
    # cmdstanpy's tqdm asks for ipywidgets in a notebook: not used
    warnings.filterwarnings("ignore", message="IProgress not found")
    # cmdstanpy adds its own INFO stream handler to a logger that has none: give it one first
    for name in ("cmdstanpy", "prophet.plot"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())
        logger.setLevel(chatty)
    import prophet  # noqa: F401 -- importing it sets the "prophet" logger to INFO: set ours after

    logging.getLogger("prophet").setLevel(chatty)
    for name in ("mlflow", "alembic", "ray"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    if not verbose:  # e.g. "An input example was not provided when logging the model"
        # MLflow sets its loggers' level from this variable when it is imported: the levels set
        # above are undone by an import that comes later ("Creating initial MLflow database
        # tables" on a new store), and child processes (the service) inherit it
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\.")
        # MLflow draws a progress bar per download (one line per file of a bundle in a log)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if verbose and not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`SeriesTimeLimit` in this thread once ``seconds`` have passed inside the block.

    A watchdog thread kills the child processes started inside the block (cmdstan), so a thread
    waiting on one wakes up, then raises the exception in this thread at its next Python
    instruction. Children that existed before the block are left alone.
    """
    if not seconds or seconds <= 0 or math.isinf(seconds):
        yield
        return
    import psutil

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    target = threading.get_ident()
    lock, state = threading.Lock(), {"inside": True}

    def expire() -> None:
        with lock:
            if not state["inside"]:
                return
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target),
                                                       ctypes.py_object(SeriesTimeLimit))
            for child in me.children(recursive=True):
                if child.pid not in before:
                    with suppress(psutil.Error):
                        child.kill()

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            state["inside"] = False
        timer.cancel()


def run_batch(fn: Callable[[str, Any], Any], batch: Sequence[tuple[str, Any]], verbose: bool,
              read: Reader | None = None) -> list:
    """``fn(key, payload)`` for every item of one batch, in a worker process (after ``read``)."""
    quiet_libraries(verbose)
    if read is not None:
        batch = read(batch)
    return [fn(key, payload) for key, payload in batch]


def batches_of(items: Sequence[tuple[str, Any]], workers: int, batch_size: int = 0,
               sizes: Sequence[int] | None = None) -> list[list]:
    """Consecutive batches of about ``batch_size`` units (0: about four batches per worker, at
    most 32 units), an item counting ``sizes[i]`` units (1 each by default; e.g. an entity's
    series). An item is never split; one larger than the batch size is a batch of its own.
    """
    sizes = [1] * len(items) if sizes is None else list(sizes)
    if len(sizes) != len(items):
        raise ValueError("batches_of needs one size per item")
    size = batch_size or max(1, min(32, sum(sizes) // (4 * max(workers, 1))))
    batches, current, units = [], [], 0
    for item, units_of in zip(items, sizes, strict=True):
        if current and units + units_of > size:
            batches.append(current)
            current, units = [], 0
        current.append(item)
        units += units_of
    if current:
        batches.append(current)
    return batches


def fan_out(fn: Callable[[str, Any], Any], items: Sequence[tuple[str, Any]], *, engine: str = "local",
            n_jobs: int = 2, batch_size: int = 0, verbose: bool = False,
            progress: Progress | None = None, sizes: Sequence[int] | None = None,
            consume: Callable[[str, Any], Any] | None = None,
            load: Callable[[str, Any], Any] | None = None, read: Reader | None = None) -> list:
    """Run ``fn(key, payload)`` for every item on the engine; results in the order of ``items``.

    ``consume(key, result)``, in this process as each batch arrives, turns a result into what is
    kept (e.g. writes a fitted model to disk and keeps its name); ``load(key, payload)`` gives
    the payload that travels, just before its batch is sent (e.g. a model read from disk). With
    both, memory here holds a few batches, not every item's payload or result. ``read`` (picklable)
    turns a whole batch's items into the items ``fn`` gets, in the worker: e.g. reads the
    rows of the batch's series from a file at once, so they never pass through this process.

    ``fn`` must be picklable (a module-level function or a partial of one) and catch its own
    errors: a batch that still fails (a worker killed, out of memory) fails the whole call.
    ``local``: a process pool of ``n_jobs`` (1: in this process). ``ray``: tasks on the cluster
    already initialised, else on ``RAY_ADDRESS``, else on a local Ray of ``n_jobs`` CPUs, which
    is shut down again at the end. ``sizes`` (units per item, e.g. series per entity) set the
    batches (:func:`batches_of`) and what ``progress`` counts.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    quiet_libraries(verbose)  # here too: results unpickled here import prophet
    keys = [key for key, _ in items]
    if len(set(keys)) != len(keys):
        raise ValueError("fan_out needs distinct keys")
    units = dict(zip(keys, [1] * len(items) if sizes is None else sizes, strict=True))
    runner = _run_on_ray if engine == "ray" else _run_locally
    results: dict[str, Any] = {}
    done = 0
    for batch_keys, batch_results in runner(fn, items, n_jobs, batch_size, verbose, sizes, load,
                                            read):
        if consume is not None:
            batch_results = [consume(k, r) for k, r in zip(batch_keys, batch_results, strict=True)]
        results.update(zip(batch_keys, batch_results, strict=True))
        done += sum(units[k] for k in batch_keys)
        if progress is not None:
            progress(done, sum(units.values()))
    return [results[key] for key in keys]


def _loaded(batch, load):
    return batch if load is None else [(k, load(k, payload)) for k, payload in batch]


def _run_locally(fn, items, n_jobs, batch_size, verbose, sizes, load=None, read=None):
    from joblib import Parallel, delayed

    batches = batches_of(items, n_jobs, batch_size, sizes)
    if n_jobs == 1:
        for batch in batches:
            yield [k for k, _ in batch], run_batch(fn, _loaded(batch, load), verbose, read)
        return
    # joblib takes batches from this generator as workers free up (pre_dispatch): loaded lazily
    keyed = Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
        delayed(_keyed_batch)(fn, _loaded(batch, load), verbose, read) for batch in batches)
    yield from keyed


def _keyed_batch(fn, batch, verbose, read=None) -> tuple[list[str], list]:
    return [k for k, _ in batch], run_batch(fn, batch, verbose, read)


def _run_on_ray(fn, items, n_jobs, batch_size, verbose, sizes, load=None, read=None):
    # under `uv run`, Ray would package this folder and start every worker through `uv run`:
    # the workers of a local Ray run this interpreter anyway, and a cluster's image has prealert
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        address = os.environ.get("RAY_ADDRESS") or None
        ray.init(address=address, num_cpus=None if address else n_jobs, include_dashboard=False,
                 logging_level=logging.INFO if verbose else logging.ERROR, log_to_driver=verbose)
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        remote = ray.remote(num_cpus=1)(_keyed_batch)
        pending = list(reversed(batches_of(items, cpus, batch_size, sizes)))
        running = []
        while pending or running:
            while pending and len(running) < _RAY_BATCHES_PER_CPU * cpus:
                running.append(remote.remote(fn, _loaded(pending.pop(), load), verbose, read))
            done, running = ray.wait(running, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started_here:
            ray.shutdown()
