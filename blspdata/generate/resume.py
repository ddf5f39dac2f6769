"""Append-only output that survives `kill -9`, resume, sharding and merging of shards.

Generated rows are appended one line at a time and flushed, so a killed run leaves complete
rows and at most one torn last line. A rerun truncates the torn line, reads the ids already
done (kept rows and rejects alike), and skips them. `--shard i/N` picks the ids whose stable
hash falls in shard i, for Slurm-style arrays; `merge` joins the shards' outputs.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any, Iterable

import orjson

from blspdata.records import JsonlWriter, iter_jsonl, read_records, sidecar


def parse_shard(spec: str | None) -> tuple[int, int]:
    """'3/8' -> (3, 8); None -> (0, 1)."""
    if not spec:
        return 0, 1
    try:
        index, count = (int(part) for part in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard expects I/N such as 0/8, got {spec!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {spec}: need 0 <= I < N")
    return index, count


def shard_of(record_id: str, count: int) -> int:
    """Stable across machines and Python versions (unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(record_id.encode(), digest_size=8).digest(), "big") % count


def recover(path: Path) -> dict[str, dict[str, Any] | None]:
    """Ids of complete rows in `path` (an append-only JSONL file), with the generator of
    each kept row; a torn last line (a killed writer) is cut off."""
    done: dict[str, dict[str, Any] | None] = {}
    if not path.exists():
        return done
    good = 0
    with open(path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                break
            done[row["id"]] = row.get("generator")
            good += len(line)
    if good != path.stat().st_size:
        with open(path, "rb+") as handle:
            handle.truncate(good)
    return done


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


class MergeError(ValueError):
    pass


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
        manifest_ids = [record.id for record in read_records(manifest)]
        missing = [i for i in manifest_ids if i not in origin]
        if missing and not allow_gaps:
            raise MergeError(f"gap: {len(missing)} id(s) of {manifest} are in no shard, e.g. "
                             f"{', '.join(missing[:5])} (run the missing shards, or --allow-gaps)")
        unknown = [i for i in origin if i not in set(manifest_ids)]
        if unknown:
            raise MergeError(f"{len(unknown)} id(s) are not in {manifest}, e.g. {', '.join(unknown[:5])}")
        order = [i for i in manifest_ids if i in rows]
    with JsonlWriter(out) as writer, JsonlWriter(sidecar(out, "rejects.jsonl")) as reject_writer:
        for record_id in order:
            writer.write(orjson.loads(rows[record_id]))
        for row in rejects.values():
            reject_writer.write(orjson.loads(row))
    return {"rows": len(rows), "rejects": len(rejects), "shards": len(inputs), "missing": len(missing)}
