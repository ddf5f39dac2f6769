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
import heapq
import os
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import orjson

from blspdata.errors import BlspdataError
from blspdata import locks
from blspdata.records import (JsonlWriter, atomic_path, iter_jsonl, key_hash, owned_temp_prefix,
                              remove_dead_leftovers, sidecar)


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


def id_hash(record_id: str) -> int:
    """A record id's 64-bit hash (records.key_hash), what the compact id sets below hold."""
    return key_hash(record_id)


def _key_hash(record_id: Any) -> int:
    """`id_hash` of any JSON id: a string as itself, anything else (a user's number) by its JSON
    with a mark, so 5 and "5" stay apart as they do in a dict."""
    return id_hash(record_id) if isinstance(record_id, str) else id_hash("\0json:" + orjson.dumps(record_id).decode())


class DoneIds:
    """The ids of the rows of one or more append-only JSONL files (OUT, its rejects), kept
    compactly: each row is its id's 64-bit hash and where the row is (file, byte offset,
    length), about 20 bytes a row in numpy arrays instead of a Python set of strings
    (~150 bytes). A hit on the hash is confirmed by re-reading that row's id from its file, so
    a hash collision never counts an id that is not done as done (the files are only appended
    to while this is in use). `first_generator` is the first non-null `generator` met."""

    def __init__(self, files: list[Path], hashes: Any, refs: Any, lengths: Any, first_generator: Any = None):
        import numpy as np

        order = np.argsort(hashes, kind="stable")
        self.files = files
        self.hashes, self.refs, self.lengths = hashes[order], refs[order], lengths[order]
        self.first_generator = first_generator
        self._fds: dict[int, int] = {}
        self._count: int | None = None

    @classmethod
    def empty(cls) -> "DoneIds":
        import numpy as np

        return cls([], np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.uint32))

    def _read_id(self, index: int) -> Any:
        ref = int(self.refs[index])
        file = ref >> _OFFSET_BITS
        fd = self._fds.get(file)
        if fd is None:
            fd = self._fds[file] = os.open(self.files[file], os.O_RDONLY)
        return orjson.loads(os.pread(fd, int(self.lengths[index]), ref & _OFFSET_MASK))["id"]

    def __contains__(self, record_id: Any) -> bool:
        import numpy as np

        key = np.uint64(_key_hash(record_id))
        index = int(np.searchsorted(self.hashes, key, side="left"))
        while index < len(self.hashes) and self.hashes[index] == key:
            stored = self._read_id(index)
            if stored == record_id and type(stored) is type(record_id):
                return True
            index += 1  # a collision (or the same id twice): look at the next row with this hash
        return False

    def _runs(self) -> Iterator[tuple[int, int]]:
        """`(start, stop)` of each run of equal hashes longer than one (repeats or collisions)."""
        import numpy as np

        same = np.flatnonzero(self.hashes[1:] == self.hashes[:-1]) if len(self.hashes) > 1 else np.zeros(0, int)
        start = stop = -1
        for i in same.tolist():
            if i + 1 > stop:
                if stop > start:
                    yield start, stop
                start = i
            stop = i + 2
        if stop > start:
            yield start, stop

    def __len__(self) -> int:
        """How many distinct ids (rows with the same hash are read back to tell them apart)."""
        if self._count is None:
            count = len(self.hashes)
            for start, stop in self._runs():
                ids = [orjson.dumps(self._read_id(i)) for i in range(start, stop)]
                count -= (stop - start) - len(set(ids))
            self._count = count
        return self._count

    def __iter__(self) -> Iterator[Any]:
        """Each distinct id once, read back from the files (for code that needs them all)."""
        repeats = {i for start, stop in self._runs() for i in range(start, stop)}
        met: set[bytes] = set()
        for index in range(len(self.hashes)):
            record_id = self._read_id(index)
            if index in repeats:
                key = orjson.dumps(record_id)
                if key in met:
                    continue
                met.add(key)
            yield record_id

    def __or__(self, other: "DoneIds") -> "DoneIds":
        import numpy as np

        shift = np.int64(len(self.files)) << np.int64(_OFFSET_BITS)
        first = self.first_generator if self.first_generator is not None else other.first_generator
        return DoneIds(self.files + other.files, np.concatenate([self.hashes, other.hashes]),
                       np.concatenate([self.refs, other.refs + shift]), np.concatenate([self.lengths, other.lengths]),
                       first)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


_OFFSET_BITS = 48  # a row's reference: file number above, byte offset (up to 256 TiB) below
_OFFSET_MASK = (1 << _OFFSET_BITS) - 1


def recover(path: Path) -> DoneIds:
    """The ids of the rows in `path` (an append-only JSONL file), as a compact `DoneIds`.

    A torn last line (a writer killed mid-line) is cut off. A bad line anywhere else means
    the file was edited or written by two processes at once: that is an error, not
    something to repair silently.
    """
    from array import array

    import numpy as np

    hashes, offsets, lengths = array("Q"), array("q"), array("I")
    first_generator = None
    if not path.exists():
        return DoneIds.empty()
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
                key = _key_hash(row["id"])
                if first_generator is None:
                    first_generator = row.get("generator")
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                bad = (number, f"not a complete JSON row with an id ({exc})")
                continue
            hashes.append(key)
            offsets.append(good)
            lengths.append(len(line))
            good += len(line)
    if bad is not None:
        with open(path, "rb+") as handle:
            handle.truncate(good)
    # Views of the arrays (no copy): DoneIds keeps sorted copies, and these go with them.
    return DoneIds([path], np.frombuffer(hashes, np.uint64) if hashes else np.zeros(0, np.uint64),
                   np.frombuffer(offsets, np.int64) if offsets else np.zeros(0, np.int64),
                   np.frombuffer(lengths, np.uint32) if lengths else np.zeros(0, np.uint32), first_generator)


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


class ManifestPositions:
    """`id -> line number of its first row` in a manifest, compactly: sorted 64-bit id hashes
    and lines in numpy arrays (16 bytes a row, not a dict of strings). Hashes met on more than
    one row (an id repeated, or two ids colliding) are resolved exactly by a second read that
    keeps only those ids. An id not in the manifest whose hash equals one that is reads as that
    row's line: these positions order rows, they do not decide what is done."""

    def __init__(self, manifest: Path, keep: Callable[[str], bool] = lambda record_id: True):
        from array import array

        import numpy as np

        hashes, lines = array("Q"), array("q")
        for number, record_id in _manifest_ids(manifest, keep):
            hashes.append(id_hash(record_id))
            lines.append(number)
        hashes_np = np.frombuffer(hashes, np.uint64) if hashes else np.zeros(0, np.uint64)
        lines_np = np.frombuffer(lines, np.int64) if lines else np.zeros(0, np.int64)
        order = np.lexsort((lines_np, hashes_np))  # by hash, then line
        hashes_np, lines_np = hashes_np[order], lines_np[order]
        first = np.ones(len(hashes_np), bool)
        first[1:] = hashes_np[1:] != hashes_np[:-1]
        repeated = np.zeros(len(hashes_np), bool)
        repeated[1:] = ~first[1:]
        repeated[:-1] |= ~first[1:]
        self.shared = set(hashes_np[repeated].tolist())  # hashes of more than one row
        self.hashes, self.lines = hashes_np[first], lines_np[first]
        self.exact: dict[str, int] = {}
        if self.shared:
            for number, record_id in _manifest_ids(manifest, keep):
                if id_hash(record_id) in self.shared:
                    self.exact.setdefault(record_id, number)

    def get(self, record_id: str) -> int | None:
        import numpy as np

        key = id_hash(record_id)
        if key in self.shared:
            return self.exact.get(record_id)
        index = int(np.searchsorted(self.hashes, np.uint64(key)))
        if index < len(self.hashes) and int(self.hashes[index]) == key:
            return int(self.lines[index])
        return None

    def __contains__(self, record_id: object) -> bool:
        return isinstance(record_id, str) and self.get(record_id) is not None

    def __getitem__(self, record_id: str) -> int:
        where = self.get(record_id)
        if where is None:
            raise KeyError(record_id)
        return where


def _manifest_ids(manifest: Path, keep: Callable[[str], bool]) -> Iterator[tuple[int, str]]:
    for number, row, _ in iter_jsonl(manifest):
        record_id = row.get("id") if row is not None else None
        if isinstance(record_id, str) and keep(record_id):
            yield number, record_id


def manifest_positions(manifest: Path, keep: Callable[[str], bool] = lambda record_id: True) -> ManifestPositions:
    """`{id: line number of its first row}` for the manifest ids `keep` picks (compact)."""
    return ManifestPositions(manifest, keep)


def manifest_line(row: dict[str, Any], positions: ManifestPositions | dict[str, int]) -> int | None:
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
    if _in_order(path, position):  # a resume with nothing left to do: one pass, no per-row memory
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


def _in_order(path: Path, position: Callable[[dict[str, Any]], int | None]) -> bool:
    """Whether `path`'s rows are already in `position` order (rows without one last), with no
    blank lines: what sort_rows would leave as it is."""
    last = -1
    with open(path, "rb") as handle:
        for index, line in enumerate(handle):
            if not line.strip():
                return False
            where = position(orjson.loads(line))
            key = where if where is not None else (1 << 40) + index
            if key < last:
                return False
            last = key
    return True


class MergeError(BlspdataError, ValueError):
    pass


# Rejects that are keyed by their manifest location rather than a record id.
LOCATION_KEYED = ("malformed_row", "duplicate_id", "invalid_row")  # invalid_row:<field>

MERGE_RUN_BYTES = 32 << 20  # rows held in memory before a sorted run is spilled to disk
_FAN_IN = 64                # runs merged at once (open files)
_AFTER = 1 << 40            # the position of a reject that points nowhere in the manifest
_ITEM_OVERHEAD = 300        # Python's bytes per buffered item beyond its row: tuple, key, numbers


class _SpillSort:
    """Sort tuples that may not fit in memory: they are buffered up to `run_bytes` (the sizes
    `add` is told), each full buffer is sorted and written to a temporary file beside the
    output (`owned_temp_prefix`, so a dead run's are removed by the next write of that output),
    and reading merges the runs (`heapq.merge`). Memory: one buffer, plus one batch per run
    while reading. Items must be distinct in their first three fields (they are compared)."""

    def __init__(self, folder: Path, name: str, run_bytes: int):
        self.folder, self.name, self.run_bytes = folder, name, run_bytes
        self.buffer: list[tuple] = []
        self.size = 0
        self.runs: list[Path] = []

    def add(self, item: tuple, size: int) -> None:
        self.buffer.append(item)
        self.size += size + _ITEM_OVERHEAD
        if self.size >= self.run_bytes:
            self.buffer.sort()
            self._write(self.buffer)
            self.buffer, self.size = [], 0

    def _write(self, items: Iterable[tuple]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=owned_temp_prefix(self.name), suffix=".run", dir=self.folder)
        self.runs.append(Path(tmp))
        batch_bytes = max(1 << 16, self.run_bytes // _FAN_IN)
        with os.fdopen(fd, "wb") as handle:
            batch: list[tuple] = []
            size = 0
            for item in items:
                batch.append(item)
                size += (len(item[-1]) if isinstance(item[-1], bytes) else 0) + _ITEM_OVERHEAD
                if size >= batch_bytes:
                    pickle.dump(batch, handle, protocol=pickle.HIGHEST_PROTOCOL)
                    batch, size = [], 0
            if batch:
                pickle.dump(batch, handle, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def _read(path: Path) -> Iterator[tuple]:
        with open(path, "rb") as handle:
            while True:
                try:
                    batch = pickle.load(handle)
                except EOFError:
                    return
                yield from batch

    def __iter__(self) -> Iterator[tuple]:
        if not self.runs:  # it all fit: no file written; each item let go of once yielded
            buffer, self.buffer = self.buffer, []
            buffer.sort(reverse=True)
            while buffer:
                yield buffer.pop()
            return
        if self.buffer:
            self.buffer.sort()
            self._write(self.buffer)
            self.buffer, self.size = [], 0
        while len(self.runs) > _FAN_IN:  # merge the oldest runs into one until few enough are left
            first, self.runs = self.runs[:_FAN_IN], self.runs[_FAN_IN:]
            self._write(heapq.merge(*(self._read(run) for run in first)))
            for run in first:
                run.unlink(missing_ok=True)
        yield from heapq.merge(*(self._read(run) for run in self.runs))

    def close(self) -> None:
        for run in self.runs:
            run.unlink(missing_ok=True)
        self.runs, self.buffer = [], []


def _shown(key: bytes) -> str:
    """A sort key (`_id_key`) as the id or location it stands for."""
    return str(orjson.loads(key[1:])) if key[:1] == b"j" else key[1:].decode("utf-8", "surrogatepass")


def _id_key(record_id: Any) -> bytes:
    """A string id sorts as its UTF-8 bytes; another JSON value (a user's number) by its JSON
    with another mark, so 5 and "5" stay two ids as they are in a dict."""
    if isinstance(record_id, str):
        return b"i" + record_id.encode("utf-8", "surrogatepass")
    return b"j" + orjson.dumps(record_id)


def merge(inputs: Iterable[str | os.PathLike], out: str | os.PathLike,
          manifest: str | os.PathLike | None = None, allow_gaps: bool = False,
          run_bytes: int = MERGE_RUN_BYTES) -> dict[str, int]:
    """Join shard outputs (and their rejects) into `out`, atomically.

    An id in two shards is an overlap (an error: shards were cut differently). With
    `manifest`, every manifest id must be in some shard's output or rejects, else it is a
    gap (an error unless `allow_gaps`), and rows come out in manifest order; rejects too
    (those keyed by a manifest location at their line), so a merge of the same shards gives
    the same bytes however the shards' runs went. Without it, rows and rejects come in the
    order of the inputs.

    Memory is bounded whatever the sizes (an external sort): the rows of every shard and the
    manifest's ids are sorted by id in runs of `run_bytes` spilled to temporary files in
    OUT's folder, joined in one pass (overlaps, gaps, ids not in the manifest, each row's
    manifest line), then sorted into output order the same way and copied out.
    """
    inputs = [Path(p) for p in inputs]
    out = Path(out)
    for path in inputs:
        if not path.exists():
            raise MergeError(f"shard output not found: {path}")
    folder = out.parent
    created = [f for f in (folder, *folder.parents) if not f.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    remove_dead_leftovers(folder, out.name)  # a killed merge's runs
    by_id = _SpillSort(folder, out.name, run_bytes)
    in_order = _SpillSort(folder, out.name, run_bytes)
    try:
        counts = _merge_into(inputs, out, Path(manifest) if manifest is not None else None, allow_gaps,
                             by_id, in_order)
    except BaseException:
        for f in created:
            with contextlib.suppress(OSError):
                f.rmdir()
        raise
    finally:
        by_id.close()
        in_order.close()
    return counts


def _merge_into(inputs: list[Path], out: Path, manifest: Path | None, allow_gaps: bool,
                by_id: _SpillSort, in_order: _SpillSort) -> dict[str, int]:
    seq = 0
    for index, path in enumerate(inputs):
        for kind, source in ((0, path), (1, sidecar(path, "rejects.jsonl"))):
            if not source.exists():
                continue
            for number, row, error in iter_jsonl(source):
                if row is None:
                    raise MergeError(f"{source}:{number}: {error} (rerun that shard to repair it)")
                record_id = row.get("id")
                key = _id_key(record_id) if record_id else b"l" + f"{source}:{number}".encode("utf-8", "surrogatepass")
                location_keyed = kind == 1 and str(row.get("reason")).split(":")[0] in LOCATION_KEYED
                line = memoryview(orjson.dumps(row)).tobytes()  # orjson's own bytes keep a 4 KB buffer
                fallback = manifest_line(row, {}) if kind == 1 else None
                by_id.add((key, 1, seq, kind, index, location_keyed, _AFTER if fallback is None else fallback, line),
                          len(line) + len(key))
                seq += 1
    if manifest is not None:
        # Malformed manifest rows have no id: generate rejects them keyed by their location.
        for number, row, _ in iter_jsonl(manifest):
            if row is not None and "id" in row:
                key = _id_key(row["id"])
                by_id.add((key, 0, number), len(key))

    counts = {"rows": 0, "rejects": 0, "shards": len(inputs), "missing": 0}
    overlap: tuple[int, str] | None = None
    missing: list[tuple[int, str]] = []   # the first 5 in manifest order, as a max-heap
    unknown: list[tuple[int, str]] = []   # the first 5 in input order, as a max-heap
    unknown_count = 0

    def first_five(heap: list[tuple[int, str]], order: int, text: str) -> None:
        heapq.heappush(heap, (-order, text))
        if len(heap) > 5:
            heapq.heappop(heap)

    # One pass over the ids in order: each id's manifest lines (first) and shard rows.
    key: bytes | None = None
    lines: list[int] = []          # the id's first manifest lines (5 are all a message needs)
    line_count = 0
    entries: list[tuple] = []      # the id's first two rows in the shards

    def close_group() -> None:
        nonlocal overlap, unknown_count
        if key is None:
            return
        if not entries:
            counts["missing"] += line_count
            for number in lines:
                first_five(missing, number, _shown(key))
            return
        if len(entries) > 1:
            second = entries[1]
            if overlap is None or second[2] < overlap[0]:
                overlap = (second[2], f"overlap: {_shown(key)} is in {inputs[entries[0][4]]} and {inputs[second[4]]}")
        _, _, entry_seq, kind, _, location_keyed, fallback, line = entries[0]
        if manifest is None:
            position = 0
        elif lines and (kind == 0 or key[:1] == b"i"):  # a reject's own id, not its location
            position = lines[0]
        else:
            position = fallback
            if not lines and not location_keyed:
                unknown_count += 1
                first_five(unknown, entry_seq, _shown(key))
        counts["rows" if kind == 0 else "rejects"] += 1
        in_order.add((kind, position, entry_seq, line), len(line))

    for item in by_id:
        if item[0] != key:
            close_group()
            key, lines, line_count, entries = item[0], [], 0, []
        if item[1] == 0:  # a manifest line: they sort before the shards' rows of the same id
            line_count += 1
            if len(lines) < 5:
                lines.append(item[2])
        elif len(entries) < 2:
            entries.append(item)
    close_group()

    if overlap is not None:
        raise MergeError(overlap[1])
    if counts["missing"] and not allow_gaps:
        raise MergeError(f"gap: {counts['missing']} id(s) of {manifest} are in no shard, e.g. "
                         f"{', '.join(text for _, text in sorted(missing, reverse=True))} "
                         "(run the missing shards, or --allow-gaps)")
    if unknown_count:
        raise MergeError(f"{unknown_count} id(s) are not in {manifest}, e.g. "
                         f"{', '.join(text for _, text in sorted(unknown, reverse=True))}")
    with JsonlWriter(out) as writer, JsonlWriter(sidecar(out, "rejects.jsonl")) as reject_writer:
        for kind, _, _, line in in_order:
            (writer if kind == 0 else reject_writer).write_line(line)
    return counts
