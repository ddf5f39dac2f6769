"""Append-only output that survives `kill -9`, resume, sharding and merging of shards.

Generated rows are appended one line at a time and flushed, so a killed run leaves complete
rows and at most one torn last line. A rerun truncates the torn line, reads the ids already
done (kept rows and rejects alike), and skips them. When a run completes, OUT and its rejects
are rewritten in manifest order (`sort_rows`), so the same input gives the same bytes
whatever order the answers came in. `--shard i/N` picks the ids whose stable
hash falls in shard i, for Slurm-style arrays; `merge` joins the shards' outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import orjson

from blspdata.errors import BlspdataError
from blspdata import locks
from blspdata.records import JsonlWriter, atomic_path, iter_jsonl, sidecar


class ResumeError(BlspdataError, ValueError):
    """A --shard that does not parse, or an output file that cannot be resumed."""


def parse_shard(spec: str | None) -> tuple[int, int]:
    """'3/8' -> (3, 8); None -> (0, 1)."""
    if not spec:
        return 0, 1
    try:
        index, count = (int(part) for part in spec.split("/"))
    except ValueError:
        raise ResumeError(f"--shard expects I/N such as 0/8, got {spec!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ResumeError(f"--shard {spec}: need 0 <= I < N")
    return index, count


def shard_of(record_id: str, count: int) -> int:
    """Stable across machines and Python versions (unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(record_id.encode(), digest_size=8).digest(), "big") % count


def recover(path: Path) -> dict[str, dict[str, Any] | None]:
    """Ids of the rows in `path` (an append-only JSONL file), with each row's generator.

    A torn last line (a writer killed mid-line) is cut off. A bad line anywhere else means
    the file was edited or written by two processes at once: that is an error, not
    something to repair silently.
    """
    done: dict[str, dict[str, Any] | None] = {}
    if not path.exists():
        return done
    good, bad = 0, None
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if bad is not None:
                raise ResumeError(f"{path}:{bad[0]}: {bad[1]}, and it is not the last line; "
                                 "fix or remove that line (was the file edited, or written by two runs?)")
            if not line.strip():
                good += len(line)
                continue
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("torn line")
                row = orjson.loads(line)
                done[row["id"]] = row.get("generator")
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                bad = (number, f"not a complete JSON row with an id ({exc})")
                continue
            good += len(line)
    if bad is not None:
        with open(path, "rb+") as handle:
            handle.truncate(good)
    return done


def exclusive(path: Path) -> contextlib.AbstractContextManager[None]:
    """Hold an exclusive lock on the output `path` itself for the duration: a second run
    writing the same output, e.g. a requeued Slurm job beside the old one, is refused
    (`locks.LockedError`). The output holds rows, so no PID is written into it."""
    return locks.exclusive(path, write_pid=False)


class AppendWriter:
    """Append rows to a JSONL file, one flushed line each; fsync every few seconds."""

    def __init__(self, path: Path, sync_every: float = 5.0):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "ab")
        self.sync_every = sync_every
        self._synced = time.monotonic()

    def write(self, row: dict[str, Any]) -> None:
        self.handle.write(orjson.dumps(row) + b"\n")
        self.handle.flush()
        if time.monotonic() - self._synced > self.sync_every:
            os.fsync(self.handle.fileno())
            self._synced = time.monotonic()

    def close(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()


def drop_rows(path: Path, drop: Callable[[dict[str, Any]], bool]) -> int:
    """Rewrite the JSONL file `path` without the rows `drop` picks, atomically (the old file
    stays whole until the new one replaces it); how many were dropped. Streams: one line in
    memory at a time, and nothing is written when nothing is dropped."""
    if not path.exists():
        return 0
    with open(path, "rb") as handle:
        dropped = sum(1 for line in handle if line.strip() and drop(orjson.loads(line)))
    if dropped:
        with atomic_path(path) as tmp, open(path, "rb") as source, open(tmp, "wb") as target:
            for line in source:
                if line.strip() and not drop(orjson.loads(line)):
                    target.write(line)
            target.flush()
            os.fsync(target.fileno())
    return dropped


def manifest_positions(manifest: Path, keep: Callable[[str], bool] = lambda record_id: True) -> dict[str, int]:
    """`{id: line number of its first row}` for the manifest ids `keep` picks."""
    positions: dict[str, int] = {}
    for number, row, _ in iter_jsonl(manifest):
        record_id = row.get("id") if row is not None else None
        if isinstance(record_id, str) and record_id not in positions and keep(record_id):
            positions[record_id] = number
    return positions


def manifest_line(row: dict[str, Any], positions: dict[str, int]) -> int | None:
    """Where a row (or a reject) of OUT came from in the manifest: its id's line, or for a
    reject keyed by location (`path:LINE`) that line; None when unknown."""
    record_id = row.get("id")
    if isinstance(record_id, str) and record_id in positions:
        return positions[record_id]
    _, _, line = str(row.get("source") or "").rpartition(":")
    return int(line) if line.isdigit() else None


def sort_rows(path: Path, position: Callable[[dict[str, Any]], int | None]) -> bool:
    """Rewrite the JSONL file `path` with its rows in `position` order, atomically; rows
    without a position go last in the order they had. False (nothing written) when already in
    order. Memory: about 32 bytes per row (sort key, byte offset, length, order); the rows
    themselves are copied from the old file one at a time."""
    from array import array

    import numpy as np

    if not path.exists():
        return False
    keys, offsets, lengths = array("q"), array("q"), array("q")
    with open(path, "rb") as handle:
        offset = 0
        for index, line in enumerate(handle):
            if line.strip():
                where = position(orjson.loads(line))
                keys.append(where if where is not None else (1 << 40) + index)
                offsets.append(offset)
                lengths.append(len(line))
            offset += len(line)
    key = np.frombuffer(keys, dtype=np.int64) if keys else np.zeros(0, dtype=np.int64)
    order = np.argsort(key, kind="stable")
    if sum(lengths) == offset and np.all(order == np.arange(len(key))):  # in order, no blank lines
        return False
    with atomic_path(path) as tmp, open(path, "rb") as source, open(tmp, "wb") as target:
        for i in order:
            i = int(i)
            source.seek(offsets[i])
            line = source.read(lengths[i])
            target.write(line if line.endswith(b"\n") else line + b"\n")
        target.flush()
        os.fsync(target.fileno())
    return True


class MergeError(BlspdataError, ValueError):
    pass


# Rejects that are keyed by their manifest location rather than a record id.
LOCATION_KEYED = ("malformed_row", "duplicate_id", "invalid_row")  # invalid_row:<field>


def merge(inputs: Iterable[str | os.PathLike], out: str | os.PathLike,
          manifest: str | os.PathLike | None = None, allow_gaps: bool = False) -> dict[str, int]:
    """Join shard outputs (and their rejects) into `out`, atomically.

    An id in two shards is an overlap (an error: shards were cut differently). With
    `manifest`, every manifest id must be in some shard's output or rejects, else it is a
    gap (an error unless `allow_gaps`), and rows come out in manifest order.
    """
    inputs = [Path(p) for p in inputs]
    rows: dict[str, bytes] = {}
    rejects: dict[str, bytes] = {}
    origin: dict[str, Path] = {}
    for path in inputs:
        if not path.exists():
            raise MergeError(f"shard output not found: {path}")
        for target, source in ((rows, path), (rejects, sidecar(path, "rejects.jsonl"))):
            if not source.exists():
                continue
            for number, row, error in iter_jsonl(source):
                if row is None:
                    raise MergeError(f"{source}:{number}: {error} (rerun that shard to repair it)")
                record_id = row.get("id") or f"{source}:{number}"
                if record_id in origin:
                    raise MergeError(f"overlap: {record_id} is in {origin[record_id]} and {path}")
                origin[record_id] = path
                target[record_id] = orjson.dumps(row)
    order = list(rows)
    missing: list[str] = []
    if manifest is not None:
        # Malformed manifest rows have no id: generate rejects them keyed by their location.
        manifest_ids = [row["id"] for _, row, _ in iter_jsonl(manifest) if row is not None and "id" in row]
        known = set(manifest_ids)
        missing = [i for i in manifest_ids if i not in origin]
        if missing and not allow_gaps:
            raise MergeError(f"gap: {len(missing)} id(s) of {manifest} are in no shard, e.g. "
                             f"{', '.join(missing[:5])} (run the missing shards, or --allow-gaps)")
        location_keyed = {i for i, row in rejects.items() if str(orjson.loads(row).get("reason")).split(":")[0] in LOCATION_KEYED}
        unknown = [i for i in origin if i not in known and i not in location_keyed]
        if unknown:
            raise MergeError(f"{len(unknown)} id(s) are not in {manifest}, e.g. {', '.join(unknown[:5])}")
        order = [i for i in dict.fromkeys(manifest_ids) if i in rows]
        # Rejects in manifest order too (those keyed by location at their line), so a merge of
        # the same shards gives the same bytes however the shards' runs went.
        positions = manifest_positions(Path(manifest))

        def line_of(record_id: str) -> int:
            where = manifest_line(orjson.loads(rejects[record_id]), positions)
            return where if where is not None else 1 << 40

        rejects = {i: rejects[i] for i in sorted(rejects, key=line_of)}
    with JsonlWriter(out) as writer, JsonlWriter(sidecar(out, "rejects.jsonl")) as reject_writer:
        for record_id in order:
            writer.write(orjson.loads(rows[record_id]))
        for row in rejects.values():
            reject_writer.write(orjson.loads(row))
    return {"rows": len(rows), "rejects": len(rejects), "shards": len(inputs), "missing": len(missing)}
