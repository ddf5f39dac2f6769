"""An ordered, bounded parallel map over worker processes (ingest probes audio headers with
it, publish encodes audio): results come back in input order, and only a few chunks are in
flight at a time, so memory does not grow with the corpus.

Workers do not outlive the run: an error, Ctrl-C or SIGTERM in the parent stops them (they
get SIGTERM, so `finally` blocks clean up, e.g. a half-written FLAC), and on Linux the
kernel sends them SIGTERM if the parent dies even by SIGKILL."""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import signal
import sys
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Seconds a stopped worker has to run its `finally` blocks before it is killed.
WORKER_GRACE_S = 10.0


def cores() -> int:
    """CPU cores this process may use (its affinity, e.g. a Slurm allocation), at least 1."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _run_chunk(fn: Callable[[T], R], chunk: list[T]) -> list[R]:
    return [fn(item) for item in chunk]


def ordered_map(fn: Callable[[T], R], items: Iterable[T], jobs: int, chunk_size: int = 64,
                initializer: Callable[..., Any] | None = None, initargs: tuple = (),
                trivial: Callable[[T], bool] | None = None) -> Iterator[R]:
    """`map(fn, items)` with `jobs` processes (`fn` must be a module-level function).
    `trivial(item)`: `fn(item)` is no work worth a worker (publish: a file copied as it is). A
    chunk of only such items is run here, in order with the others, without a round trip
    through the pool, and the pool starts with the first chunk that has real work (never, when
    none has). Trivial items must not need `initializer`."""
    chunks = iter(lambda it=iter(items): list(itertools.islice(it, chunk_size)), [])
    if jobs <= 1:
        if initializer is not None:
            initializer(*initargs)
        for chunk in chunks:
            yield from _run_chunk(fn, chunk)
        return
    pool: ProcessPoolExecutor | None = None
    try:
        # In order: (runs in a worker, its future). Up to 4 chunks a worker are in the pool, and
        # the chunks that ran here (between them) are handed on as soon as they are first in
        # line, so the caller keeps busy while the workers are: at most 32 a worker wait in all.
        pending: deque[tuple[bool, Future]] = deque()
        in_pool = 0
        for chunk in chunks:
            if trivial is not None and all(map(trivial, chunk)):
                done: Future = Future()
                done.set_result(_run_chunk(fn, chunk))
                pending.append((False, done))
            else:
                if pool is None:
                    pool = _pool(jobs, initializer, initargs)
                pending.append((True, pool.submit(_run_chunk_in_worker, fn, chunk)))
                in_pool += 1
            while pending and (pending[0][1].done() or in_pool >= 4 * jobs or len(pending) >= 32 * jobs):
                in_worker, future = pending.popleft()
                in_pool -= in_worker
                yield from future.result()
        while pending:
            yield from pending.popleft()[1].result()
    except BaseException:  # an error, SystemExit (SIGTERM), Ctrl-C, or the caller stopped early
        # Do not wait for the chunks in flight: stop the workers. (Python 3.14: terminate_workers().)
        processes = list((pool._processes or {}).values()) if pool is not None else []
        for process in processes:
            process.terminate()
        # SIGTERM first, so `finally` blocks run; a worker stuck in C code (a lock a forked child
        # inherited held) never runs its handler, and shutdown() below would wait for it forever.
        for process in processes:
            process.join(timeout=WORKER_GRACE_S)
            if process.is_alive():
                process.kill()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _pool(jobs: int, initializer: Callable[..., Any] | None, initargs: tuple) -> ProcessPoolExecutor:
    # fork on Linux, explicitly: the workers' parent must be this process for the parent-death
    # signal in _init_worker (Python 3.14 defaults to forkserver, whose workers are the server's children).
    context = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
    return ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                               initargs=(os.getpid(), initializer, initargs))


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """Within the block, SIGTERM (`timeout`, Slurm's scancel, `kill`) raises SystemExit(143)
    instead of killing the process outright, so `finally` blocks and context managers run:
    temporary outputs are removed and worker processes stopped, as for any other error."""
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # 143 for SIGTERM, what a shell reports


# ---------------------------------------------------------------------------- in the workers

_busy = False  # this worker is running a chunk


def _init_worker(parent: int, initializer: Callable[..., Any] | None, initargs: tuple) -> None:
    signal.signal(signal.SIGTERM, _worker_sigterm)
    if sys.platform.startswith("linux"):
        import ctypes

        # prctl(PR_SET_PDEATHSIG, SIGTERM): the kernel signals us when the parent dies.
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
        if os.getppid() != parent:  # it died before that took effect
            os._exit(143)
    if initializer is not None:
        initializer(*initargs)


def _run_chunk_in_worker(fn: Callable[[T], R], chunk: list[T]) -> list[R]:
    """`_run_chunk`, but a SIGTERM or Ctrl-C ends the worker (once `finally` blocks have run)
    instead of going back to the pool as the chunk's error while the worker lives on."""
    global _busy
    _busy = True
    try:
        return _run_chunk(fn, chunk)
    except (SystemExit, KeyboardInterrupt):
        os._exit(143)
    finally:
        _busy = False


def _worker_sigterm(signum: int, frame: Any) -> None:
    """Within a chunk, raise SystemExit so that `finally` blocks clean up; between chunks, exit
    at once: there the pool's own code would catch it, send it back as a result and wait for
    work that never comes."""
    if _busy:
        raise SystemExit(128 + signum)
    os._exit(128 + signum)


# ---------------------------------------------------------------------------- Ray

def start_ray(error: type[Exception]):
    """The `ray` module, connected (a local Ray, or the cluster in RAY_ADDRESS) and quiet: no
    dashboard, no progress bars of its own. `error`: what to raise when Ray is not installed
    (the stage's error, so the CLI prints one line)."""
    try:
        import ray
    except ImportError:
        raise error("--executor ray needs Ray: pip install 'blspdata[ray]'") from None
    if not ray.is_initialized():
        import logging

        ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True, logging_level=logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return ray
