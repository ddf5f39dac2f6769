"""`blspdata.parallel.ordered_map`: a worker that cannot run its SIGTERM handler (stuck in C
code, as a forked child holding an inherited lock is) is killed, not waited for forever."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from blspdata import parallel


def _stuck_on_one(job: tuple[int, str]) -> int:
    n, marker = job
    if n == 1:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # SIGTERM can no longer stop it
        Path(marker).write_text(str(os.getpid()))
        time.sleep(600)
    return n


@pytest.mark.timeout(120)
def test_stopping_early_kills_a_worker_that_ignores_sigterm(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(parallel, "WORKER_GRACE_S", 1.0)
    marker = tmp_path / "stuck.pid"
    results = parallel.ordered_map(_stuck_on_one, [(0, str(marker)), (1, str(marker))], jobs=2, chunk_size=1)
    assert next(results) == 0
    deadline = time.monotonic() + 60
    while not marker.exists():  # the other worker is now blocked with SIGTERM masked
        assert time.monotonic() < deadline, "the second item never started"
        time.sleep(0.05)
    stuck = int(marker.read_text())
    results.close()  # the caller stops early: the workers must go, this one by SIGKILL
    assert not psutil.pid_exists(stuck) or psutil.Process(stuck).status() == psutil.STATUS_ZOMBIE


def _where(item: int | None) -> tuple[int | None, int]:
    return item, os.getpid()


@pytest.mark.timeout(120)
def test_chunks_with_no_real_work_run_here_in_order_and_start_no_pool():
    """publish: a file copied as it is needs no worker; a chunk of only such rows must not pay a
    round trip through the pool, and a run with none that needs one must start no workers."""
    here = os.getpid()
    before = {child.pid for child in psutil.Process().children()}  # e.g. multiprocessing's resource tracker
    nothing = parallel.ordered_map(_where, [None] * 12, jobs=2, chunk_size=4, trivial=lambda x: x is None)
    assert next(nothing) == (None, here)
    assert {child.pid for child in psutil.Process().children()} <= before  # no pool was started
    assert list(nothing) == [(None, here)] * 11

    items = [None] * 8 + [1, None, 2, 3] + [None] * 4 + [4, 5, 6, 7]
    results = list(parallel.ordered_map(_where, items, jobs=2, chunk_size=4, trivial=lambda x: x is None))
    assert [item for item, _ in results] == items  # input order, whatever ran where
    assert all(pid == here for _, pid in results[:8] + results[12:16])
    assert all(pid != here for _, pid in results[8:12] + results[16:])
