"""One writer per output: an exclusive, non-blocking `flock` on a lock file beside it.

The kernel drops the lock when its holder exits, even by SIGKILL, so a stale lock file never
blocks a rerun; a second live writer (a requeued Slurm job beside the old one, a second
`blspdata run` on the same run folder) is refused at once with the holder's PID.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from blspdata.errors import BlspdataError


class LockedError(BlspdataError):
    """Another live process holds the lock."""


_HELD: set[int] = set()  # the fds of the locks this process holds


def _drop_in_child() -> None:
    """In a forked child (DataLoader and pool workers): let go of the parent's locks. A forked fd
    shares the lock, so a worker that outlives a killed parent for a moment would keep the
    output locked; each held fd is pointed at /dev/null instead (not closed: its number stays
    valid for whatever Python object still owns it, and no flock(LOCK_UN) is ever made, which
    would unlock the parent's lock too)."""
    if not _HELD:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        for fd in _HELD:
            os.dup2(null, fd)
    finally:
        os.close(null)
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_in_child)


def holder(path: str | Path) -> str:
    """The PID the lock file records ('?' when it cannot be read)."""
    try:
        return Path(path).read_text().strip() or "?"
    except OSError:
        return "?"


@contextlib.contextmanager
def exclusive(path: str | Path, what: str | Path | None = None, write_pid: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if absent) for the duration, and write this
    PID into it (`write_pid=False` locks a file whose content is not ours, e.g. an output that
    holds rows). Raises LockedError naming `what` (default: `path`) and the holder's PID."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+" if write_pid else "ab") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = f" (PID {holder(path)})" if write_pid else ""
            raise LockedError(f"{what or path} is in use by another process{who}; "
                              f"wait for it to end, or stop it") from None
        _HELD.add(handle.fileno())
        try:
            if write_pid:
                handle.seek(0)
                handle.truncate()
                handle.write(f"{os.getpid()}\n")
                handle.flush()
            yield
        finally:
            _HELD.discard(handle.fileno())
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
