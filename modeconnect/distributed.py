"""Independent work on a Ray cluster: grid points, path points, a sweep's rows.

A :class:`Cluster` says where to run (``address="auto"``: a local cluster, or the one
``RAY_ADDRESS`` names; ``"HOST:PORT"`` or ``"ray://..."``: a running cluster) and on
how many workers. :func:`map_chunks` runs ``fn(shared, chunk)`` for every chunk and
returns the results in the chunks' order, whatever order the tasks finish in:

* ``shared`` (the model, the data, the states, the closures over them) goes to the
  object store once (``ray.put``) and each worker process reads it once, then keeps it
  for the next chunk; only the chunks travel with the tasks. A lazy checkpoint
  (:class:`~modeconnect.io.hf.LazyWeights`) pickles as its paths and headers, so the
  worker reads the tensors from disk itself.
* A task whose worker dies (killed, out of memory) runs again, up to ``max_retries``
  times: it costs that task, never the study. An error raised by ``fn`` is not retried:
  it is the study's error, raised once.
* Every task pins torch to ``threads`` threads (default: the caller's count), and
  each chunk is computed by the same code as the local run, so results are bitwise
  those of :func:`map_chunks` without a cluster.
* ``progress(task, done, total)`` is called as tasks finish, counting ``sizes``.

Ray is optional (``pip install "modeconnect[ray]"``); without it, asking for a cluster
is a one-line :class:`~modeconnect.errors.ModeconnectError` naming the extra.

>>> map_chunks(lambda shared, chunk: shared * chunk, 10, [1, 2, 3])
[10, 20, 30]
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

from modeconnect.errors import ModeconnectError
from modeconnect.progress import ProgressFn

__all__ = [
    "INSTALL_HINT",
    "Cluster",
    "cluster_from",
    "connected",
    "map_chunks",
    "on_cluster",
    "require_ray",
]

S = TypeVar("S")
C = TypeVar("C")
R = TypeVar("R")

INSTALL_HINT = 'pip install "modeconnect[ray]"'
"""What to run when Ray is missing."""

MAX_RETRIES = 3
"""Runs of a task after its first, when its worker process dies."""


@dataclass(frozen=True)
class Cluster:
    """Where independent tasks run: ``address`` (``"auto"`` or a cluster's address),
    ``workers`` (CPUs of a local cluster, and tasks in flight; default: all),
    ``max_retries`` (reruns of a task whose worker died), ``threads`` (torch threads
    per task; default: this process's)."""

    address: str = "auto"
    workers: int | None = None
    max_retries: int = MAX_RETRIES
    threads: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.address, str) or not self.address.strip():
            raise ModeconnectError(
                f"--ray {self.address!r} is not an address; pass auto or HOST:PORT"
            )
        for name in ("workers", "threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ModeconnectError(f"--{name} {value!r} must be a whole number >= 1")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ModeconnectError(f"max_retries={self.max_retries!r} must be a number >= 0")


def cluster_from(ray: str | None, workers: int | None) -> Cluster | None:
    """The cluster that ``--ray`` and ``--workers`` ask for (``None``: run here), with Ray
    imported now, so that a missing Ray is reported before any work.

    >>> cluster_from(None, None) is None
    True
    """
    if ray is None:
        if workers is not None:
            raise ModeconnectError(
                f"--workers {workers} needs --ray: pass --ray auto (a local Ray cluster) "
                "or --ray HOST:PORT"
            )
        return None
    cluster = Cluster(ray, workers)
    require_ray()
    return cluster


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error that says how to install it."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise ModeconnectError(
            f"--ray needs Ray, which is not installed; install it with {INSTALL_HINT}"
        ) from None


@contextmanager
def connected(cluster: Cluster) -> Iterator[Any]:
    """Ray, connected to ``cluster`` for the duration; a cluster started here is shut down
    (its processes end) when the block ends, one that was running is left running."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    address = cluster.address
    settings: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
    }
    if address == "auto" and not os.environ.get("RAY_ADDRESS"):
        # A local cluster of `workers` CPUs; nothing listens beyond this machine.
        settings.update(num_cpus=cluster.workers, address="local")
    elif address != "auto":
        settings["address"] = address
    try:
        with warnings.catch_warnings():  # a note about GPUs Ray prints on every start
            warnings.filterwarnings("ignore", "Tip: In future versions of Ray", FutureWarning)
            ray.init(**settings)
    except Exception as exc:  # Ray raises ConnectionError, ValueError, RuntimeError...
        raise ModeconnectError(
            f"--ray {address}: could not start or reach a Ray cluster "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); pass --ray auto "
            "for a local cluster, or the address `ray start --head` printed"
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def map_chunks(
    fn: Callable[[S, C], R],
    shared: S,
    chunks: Sequence[C],
    *,
    cluster: Cluster | None = None,
    sizes: Sequence[int] | None = None,
    progress: ProgressFn | None = None,
    task: str = "tasks",
    each: Callable[[int, R], None] | None = None,
) -> list[R]:
    """``[fn(shared, chunk) for chunk in chunks]``, here or on ``cluster`` (module docstring).

    ``sizes`` (default: one per chunk) are the units each chunk counts for in
    ``progress(task, done, total)``; ``each(index, result)`` is called as each chunk
    finishes (e.g. to save it), in the order they finish.
    """
    weights = [1] * len(chunks) if sizes is None else list(sizes)
    if len(weights) != len(chunks):
        raise ModeconnectError(f"map_chunks: {len(weights)} sizes for {len(chunks)} chunks")
    with ExitStack() as stack:
        finished: Iterator[tuple[int, R]]
        if cluster is None:
            finished = ((i, fn(shared, chunk)) for i, chunk in enumerate(chunks))
        else:
            ray = stack.enter_context(connected(cluster))
            finished = _finished_on_ray(ray, cluster, fn, shared, chunks)
        results: list[Any] = [None] * len(chunks)
        done, total = 0, sum(weights)
        for index, value in finished:
            results[index] = value
            if each is not None:
                each(index, value)
            done += weights[index]
            if progress is not None:
                progress(task, done, total)
    return results


def _finished_on_ray(
    ray: Any, cluster: Cluster, fn: Callable[[S, C], R], shared: S, chunks: Sequence[C]
) -> Iterator[tuple[int, R]]:
    """``(index, fn(shared, chunks[index]))`` as the tasks finish; the rest are cancelled
    when the caller stops early (an error)."""
    import torch

    threads = cluster.threads or torch.get_num_threads()
    # The function travels with the shared value: a closure over states goes once too.
    ref = ray.put((fn, shared))
    remote = ray.remote(_run_chunk).options(
        num_cpus=1, max_retries=cluster.max_retries, retry_exceptions=False
    )
    # The reference is wrapped in a list so that Ray passes it unresolved: the worker
    # reads it once (_SHARED) instead of once per task.
    pending = {remote.remote([ref], chunk, threads): i for i, chunk in enumerate(chunks)}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for future in ready:
                yield pending.pop(future), _result(ray, future)
    finally:
        for future in pending:
            ray.cancel(future, force=True)


def _result(ray: Any, future: Any) -> Any:
    """The task's value; its error as the error ``fn`` raised (a user error stays one)."""
    try:
        return ray.get(future)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ModeconnectError):  # a user error, typed and one line as here
            raise cause from None
        raise exc.as_instanceof_cause() from None
    except ray.exceptions.RayError as exc:  # the worker or node died on every try
        raise ModeconnectError(
            f"a Ray task failed on every try ({type(exc).__name__}: the worker was killed, "
            "ran out of memory or lost its node); use fewer --workers or a smaller "
            "--batch-size, or check the cluster"
        ) from None


_SHARED: dict[str, Any] = {}
"""The shared value this worker process read, by object id (one at a time)."""


def _run_chunk(ref: list[Any], chunk: Any, threads: int) -> Any:
    """On a worker: ``fn(shared, chunk)`` with torch pinned to ``threads`` threads."""
    import ray
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    key = ref[0].hex()
    if key not in _SHARED:
        _SHARED.clear()
        _SHARED[key] = ray.get(ref[0])
    fn, shared = _SHARED[key]
    return fn(shared, chunk)


def on_cluster(cluster: Cluster | None) -> AbstractContextManager[Any]:
    """Stay connected to ``cluster`` for a block of several :func:`map_chunks` calls (one
    start of a local cluster, not one per call); nothing without a cluster."""
    return nullcontext() if cluster is None else connected(cluster)
