"""Fan-out of independent research tasks: serially, on local processes, or on a Dask cluster.

Walk-forward folds and sweep chunks do not depend on one another. :func:`run_tasks` runs
``fn(task)`` (or ``fn(shared, task)``) for every task and returns the results **in task order**,
whichever worker ran which task and in whatever order they finished:

* ``workers=1`` and no ``scheduler``: serially, in this process (no Dask import, no pickling).
* ``workers>1``: a ``dask.distributed.LocalCluster`` of that many worker processes with one
  thread each, started for the call and closed after it.
* ``scheduler="tcp://host:port"``: ``dask.distributed.Client(scheduler)`` submits to that
  cluster (workers on other machines; ``dask scheduler`` / ``dask worker tcp://host:port``).

Why Dask for the local case too (not ``concurrent.futures.ProcessPoolExecutor``): ONE code path
(``client.map`` + ``client.scatter``, cloudpickle serialisation, remote tracebacks) serves local
processes and remote machines, so the two-worker ``LocalCluster`` of the tests exercises exactly what
runs on a cluster. Processes, not threads: the model libraries hold the GIL in parts and TensorFlow
keeps process-wide state.

Rules for ``fn``: a top-level function of an importable module (workers import it by name), taking
and returning picklable values; it must be deterministic given its task (seeds come from the task,
never from the worker or the order of execution). ``shared`` is sent to each worker once
(``scatter(broadcast=True)``), not once per task: large read-only arrays go there.

Workers run the same code: every task sent to a scheduler carries a digest of the ``engine`` and
``research`` sources, and a worker whose digest differs (another version of the code on a remote
machine) refuses the task rather than return results of other rules (local workers, started by the
call from this checkout, are not checked). Numba kernels in tasks use the compiled-kernel cache
of ``engine/_numba_cache.py``: local workers inherit the resolved ``NUMBA_CACHE_DIR``; a remote worker
resolves its own (its ``NUMBA_CACHE_DIR`` or ``~/.cache/krakenquant/numba``, per source digest).

An exception in a task stops the run and re-raises here with the task index in its message. The
task reported is the one the serial run would stop at, the first failing one in task order (the
tasks before a failure are waited for, the rest cancelled). A :class:`~engine.errors.KQError` keeps
its class (the CLI prints it as one line); anything else becomes :class:`TaskFailed`, chained to the
original.
"""

from __future__ import annotations

import logging
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["TaskFailed", "code_digest", "run_tasks"]

_NO_SHARED: Any = object()
_DIGEST: str | None = None


class TaskFailed(RuntimeError):
    """A fanned-out task raised; ``index`` is its position in the task list."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


def code_digest() -> str:
    """SHA-256 over the ``engine`` and ``research`` sources (computed once per process)."""
    global _DIGEST
    if _DIGEST is None:
        from engine._numba_cache import source_digest

        root = Path(__file__).resolve().parent
        _DIGEST = source_digest(root.parent / "engine") + source_digest(root)
    return _DIGEST


def _failure(exc: BaseException, index: int, n: int, desc: str | None) -> Exception:
    from engine.errors import KQError

    what = f"{desc}: " if desc else ""
    if isinstance(exc, KQError):
        try:
            new = type(exc)(f"{what}task {index} of {n}: {exc}", exit_code=exc.exit_code)
        except Exception:  # a subclass with another constructor
            pass
        else:
            new.__cause__ = exc
            return new
    err = TaskFailed(f"{what}task {index} of {n} failed: {type(exc).__name__}: {exc}", index)
    err.__cause__ = exc
    return err


def _worker_call(task: Any, *, fn: Callable[..., Any], shared: Any, has_shared: bool, digest: str | None) -> Any:
    """Runs on a worker: check the code version, point numba at its cache, run the task."""
    if digest is not None and code_digest() != digest:
        raise RuntimeError(
            "this worker runs another version of the krakenquant code than the caller "
            "(engine/research sources differ); install the same commit on every worker"
        )
    import engine  # noqa: F401  # importing engine resolves NUMBA_CACHE_DIR for this source (idempotent)

    return fn(shared, task) if has_shared else fn(task)


def _check_args(workers: int, scheduler: str | None) -> None:
    from engine.errors import InputError

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"fan-out workers must be a whole number >= 1, got {workers!r}")
    if scheduler is not None and not (isinstance(scheduler, str) and scheduler.strip()):
        raise InputError(f"fan-out scheduler must be an address like tcp://host:8786, got {scheduler!r}")


def run_tasks(
    fn: Callable[..., Any],
    tasks: Sequence[Any],
    *,
    workers: int = 1,
    scheduler: str | None = None,
    desc: str | None = None,
    progress: bool = False,
    shared: Any = _NO_SHARED,
) -> list[Any]:
    """``[fn(t) for t in tasks]`` (``fn(shared, t)`` when ``shared`` is given), fanned out; see the
    module doc. Results are in task order and do not depend on ``workers`` or ``scheduler``."""
    _check_args(workers, scheduler)
    if scheduler is not None:
        scheduler = scheduler.strip()
    tasks = list(tasks)
    n = len(tasks)
    if n == 0:
        return []
    if scheduler is None and workers == 1:
        return _serial(fn, tasks, shared, desc, progress)
    return _dask(fn, tasks, shared, workers, scheduler, desc, progress)


def _bar(n: int, desc: str | None, progress: bool):
    from tqdm import tqdm

    return tqdm(total=n, desc=desc, disable=not progress, leave=False)


def _serial(fn, tasks: list, shared: Any, desc: str | None, progress: bool) -> list:
    out = []
    with _bar(len(tasks), desc, progress) as bar:
        for i, t in enumerate(tasks):
            try:
                out.append(fn(t) if shared is _NO_SHARED else fn(shared, t))
            except Exception as e:
                raise _failure(e, i, len(tasks), desc) from e
            bar.update(1)
    return out


def _dask(fn, tasks: list, shared: Any, workers: int, scheduler: str | None, desc: str | None, progress: bool) -> list:
    from distributed import Client, LocalCluster, as_completed, wait

    cluster = None
    if scheduler is None:
        with warnings.catch_warnings():  # the scheduler's health endpoint moves off a busy port 8787
            warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.WARNING,
            )
        client = Client(cluster)
    else:
        client = Client(scheduler)
    n = len(tasks)
    try:
        has_shared = shared is not _NO_SHARED
        sh = client.scatter([shared], broadcast=True, hash=False)[0] if has_shared else None
        run_id = uuid.uuid4().hex
        futures = client.map(
            _worker_call,
            tasks,
            key=[f"kq-task-{run_id}-{i}" for i in range(n)],
            pure=False,
            fn=fn,
            shared=sh,
            has_shared=has_shared,
            # local workers were spawned from this checkout just now; remote ones may run another
            digest=None if cluster is not None else code_digest(),
        )
        index = {f.key: i for i, f in enumerate(futures)}
        with _bar(n, desc, progress) as bar:
            for fut in as_completed(futures):
                if fut.status == "error":
                    # report what the serial run would: the first failing task in task order, so wait
                    # for the tasks before this one (they may fail too) before cancelling the rest
                    i = index[fut.key]
                    if i > 0:
                        wait(futures[:i])
                    first = next(j for j in range(i + 1) if futures[j].status == "error")
                    exc = futures[first].exception()
                    client.cancel(futures)
                    raise _failure(exc, first, n, desc) from exc
                bar.update(1)
        return [f.result() for f in futures]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
