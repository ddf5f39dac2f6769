"""The one record type that flows through every stage, and its JSONL(.gz) storage.

A record is an utterance (audio + transcript + optional emotion); generation adds a
continuation. Field names are the contract between stages (see docs/DESIGN.md and
manifests/record.schema.json). Manifests are JSON Lines, gzipped when the name ends in
`.gz`, streamed row by row, and written atomically: a crash never leaves a half-written
file under the final name.

Rows are checked where they are read (`Record.from_dict`): a wrong type, a negative or
non-finite offset or duration, an emotion that is not canonical is a `RowError` whose
`reason` (`invalid_row:<field>`, or `malformed_row` for unknown or missing fields) each stage
writes to its rejects file. A `.gz` file that is cut short or corrupt is an `UnreadableFile`
error naming the file and the last line read; every stage then fails before committing any
output (they write atomically), so nothing is ever half-written.

Temporary files and folders are named `.<name>.blspdata.<host>.<pid>.<random>...` beside the
output (`owned_temp_prefix`), so a later run can tell a dead run's leftovers from a live one's
and remove them (`remove_dead_leftovers`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import math
import os
import re
import shutil
import socket
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson

from blspdata.labels import CANONICAL
from blspdata.errors import BlspdataError, RowError, cut

# Fields every manifest row carries (ingest), then the ones generation adds.
INGEST_FIELDS = (
    "id", "corpus", "split", "audio", "offset", "duration", "sample_rate", "text",
    "raw_text", "speaker", "language", "emotion", "raw_emotion", "extra",
)
GENERATE_FIELDS = ("task", "instruction", "continuation", "finished", "generator")


@dataclass(slots=True)
class Record:
    id: str                      # stable, "<corpus>/<split>/<native id>"
    corpus: str
    split: str
    audio: str                   # path to the audio file (as given by the user's ROOT)
    offset: float = 0.0          # seconds into `audio` where the utterance starts
    duration: float = 0.0        # seconds
    sample_rate: int = 0         # of the audio file
    text: str = ""               # normalised transcript (what the LLM and trainer see)
    raw_text: str = ""           # transcript exactly as the corpus has it
    speaker: str | None = None
    language: str = "en"
    emotion: str | None = None   # canonical label (labels.CANONICAL) or None
    raw_emotion: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Added by `generate`; absent from ingest manifests.
    task: str | None = None
    instruction: str | None = None
    continuation: str | None = None
    finished: bool | None = None
    generator: Any = None        # any JSON value: generate writes an object, a user's own rows may differ

    def to_dict(self) -> dict[str, Any]:
        row = {name: getattr(self, name) for name in INGEST_FIELDS}
        for name in GENERATE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                row[name] = value
        return row

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Record":
        """Build a record from a manifest row, checked (`check_row`): a RowError says why not."""
        check_row(row)
        return cls(**row)

    def replace(self, **changes: Any) -> "Record":
        return dataclasses.replace(self, **changes)


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(Record))


class BadRow(RowError):
    """A row that is not a record; `reason` is what the rejects file says: `invalid_row:<field>`
    for a field with a wrong type or an impossible value, `malformed_row` for unknown or
    missing fields."""

    def __init__(self, reason: str, message: str, field_name: str | None = None):
        super().__init__(message)
        self.reason, self.field = reason, field_name


_STR, _NUM, _INT = (str,), (int, float), (int,)
# field -> (JSON types it may have, may it be null, what it is in words)
_TYPES: dict[str, tuple[tuple[type, ...], bool, str]] = {
    "id": (_STR, False, "a string"), "corpus": (_STR, False, "a string"), "split": (_STR, False, "a string"),
    "audio": (_STR, False, "a string"), "offset": (_NUM, False, "a number"), "duration": (_NUM, False, "a number"),
    "sample_rate": (_INT, False, "an integer"), "text": (_STR, False, "a string"),
    "raw_text": (_STR, False, "a string"), "speaker": (_STR, True, "a string or null"),
    "language": (_STR, False, "a string"), "emotion": (_STR, True, "a string or null"),
    "raw_emotion": (_STR, True, "a string or null"), "extra": ((dict,), False, "an object"),
    "task": (_STR, True, "a string"), "instruction": (_STR, True, "a string"),
    "continuation": (_STR, True, "a string"), "finished": ((bool,), True, "true or false"),
}


def check_row(row: dict[str, Any]) -> None:
    """Raise a BadRow (a RowError) when `row` is not a valid record: unknown keys (typos lose
    data), missing id/corpus/split/audio, a wrong type (a number for `text`, a string for
    `extra`, `finished: "yes"`; true is not a number), a negative or non-finite offset or
    duration or sample rate, an empty id, an emotion that is not canonical. `generator` may
    be any JSON value."""
    unknown = set(row) - _FIELD_NAMES
    if unknown:
        raise BadRow("malformed_row", f"unknown record field(s): {cut(', '.join(sorted(map(str, unknown))))}")
    missing = [name for name in ("id", "corpus", "split", "audio") if name not in row]
    if missing:
        raise BadRow("malformed_row", f"missing record field(s): {', '.join(missing)}")
    for name, value in row.items():
        rule = _TYPES.get(name)
        if rule is None or (value is None and rule[1]):
            continue
        kinds, _, words = rule
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise BadRow(f"invalid_row:{name}", f"{name} must be {words}, got {type(value).__name__} {cut(repr(value))}", name)
    for name in ("offset", "duration", "sample_rate"):
        value = row.get(name, 0)
        if not math.isfinite(value) or value < 0:
            raise BadRow(f"invalid_row:{name}", f"{name} must be a finite number >= 0, got {cut(repr(value))}", name)
    if row.get("sample_rate", 0) > 2**31 - 1:  # an int32 column in the published dataset
        raise BadRow("invalid_row:sample_rate", f"sample_rate {cut(repr(row['sample_rate']))} is out of range",
                     "sample_rate")
    if not row["id"]:
        raise BadRow("invalid_row:id", "id is empty", "id")
    emotion = row.get("emotion")
    if emotion is not None and emotion not in CANONICAL:
        raise BadRow("invalid_row:emotion", f"emotion {cut(repr(emotion))} is not a canonical label "
                     f"({', '.join(CANONICAL)})", "emotion")


@dataclass(slots=True)
class Reject:
    """An input that did not become a record, and why. Written to `<out>.rejects.jsonl`."""

    reason: str                  # short machine-readable reason, e.g. "audio_unreadable"
    source: str                  # where it came from: "path" or "path:line"
    detail: str = ""             # human-readable explanation
    id: str | None = None        # the record id, when one could be formed
    record: dict[str, Any] | None = None  # the dropped record, for later stages

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"reason": self.reason, "source": self.source}
        if self.id is not None:
            row["id"] = self.id
        if self.detail:
            row["detail"] = self.detail
        if self.record is not None:
            row["record"] = self.record
        return row

    def message(self) -> str:
        what = f" ({self.id})" if self.id else ""
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.source}{what}: {self.reason}{detail}"


# ---------------------------------------------------------------------------- paths

_SUFFIXES = (".jsonl.gz", ".jsonl", ".json.gz", ".json")


def sidecar(out: str | os.PathLike, name: str) -> Path:
    """`out/x.jsonl.gz` + "rejects.jsonl" -> `out/x.rejects.jsonl` (files that go with OUT)."""
    out = Path(out)
    stem = out.name
    for suffix in _SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return out.with_name(f"{stem}.{name}")


# ---------------------------------------------------------------------------- reading

class UnreadableFile(BlspdataError):
    """A JSONL(.gz) file that cannot be read to its end: a gzip stream cut short or corrupt."""


def _open_read(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _lines(path: Path, handle: io.BufferedIOBase) -> Iterator[tuple[int, bytes]]:
    """`(line_number, line)`; a gzip stream that ends early or fails its checks raises an
    UnreadableFile naming the file and the last line read whole."""
    number = 0
    lines = iter(handle)
    while True:
        try:
            line = next(lines)
        except StopIteration:
            return
        except EOFError:
            raise UnreadableFile(f"{path}: the gzip stream ends early after line {number} (a truncated file?); "
                                 "nothing was written from it") from None
        except (gzip.BadGzipFile, zlib.error) as exc:
            raise UnreadableFile(f"{path}: corrupt gzip data after line {number} ({cut(str(exc), 120)}); "
                                 "nothing was written from it") from None
        number += 1
        yield number, line


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """Yield `(line_number, row, error)` for each non-blank line; `row` is None on a parse error.

    Streaming: memory does not grow with the file. Row errors are returned, not raised, so a
    stage can send a malformed row to its rejects file and go on; a `.gz` file cut short or
    corrupt raises UnreadableFile (the stage then stops before committing its output).
    """
    path = Path(path)
    with _open_read(path) as handle:
        for number, line in _lines(path, handle):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                yield number, None, _undecodable(line) or f"not valid JSON: {exc}"
                continue
            if not isinstance(row, dict):
                yield number, None, f"expected a JSON object, got {type(row).__name__}"
                continue
            yield number, row, ""


def _undecodable(line: bytes) -> str:
    """Why `line` is not UTF-8 ("undecodable bytes ..."), or "" if it is."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"undecodable bytes ({exc.reason} at byte {exc.start})"
    return ""


@dataclass(slots=True)
class Row:
    """One line of a manifest as a stage meets it: where it is, the JSON object (None when the
    line is not one), and either the record or the Reject the stage writes for it."""

    location: str                # "path:line"
    row: dict[str, Any] | None
    record: Record | None
    reject: Reject | None


def read_rows(path: str | os.PathLike) -> Iterator[Row]:
    """The one record reader every stage uses: each non-blank line of `path`, checked
    (`read_row`): a line that is not JSON, not an object or not a valid record comes with its
    Reject (`malformed_row`, `invalid_row:<field>`). Streaming; a `.gz` cut short raises
    UnreadableFile."""
    for number, row, error in iter_jsonl(path):
        location = f"{path}:{number}"
        record, reject = read_row(location, row, error)
        yield Row(location, row, record, reject)


def read_records(path: str | os.PathLike) -> Iterator[Record]:
    """Yield the records of a manifest; a malformed or invalid row raises RowError naming path:line."""
    for item in read_rows(path):
        if item.reject is not None:
            raise RowError(f"{item.location}: {item.reject.detail}")
        yield item.record


def read_row(location: str, row: dict[str, Any] | None, error: str = "") -> tuple[Record | None, Reject | None]:
    """One row of `iter_jsonl` as a record, or the Reject a stage writes for it (reason
    `malformed_row` or `invalid_row:<field>`, the row kept in the reject)."""
    if row is None:
        return None, Reject("malformed_row", location, error)
    try:
        return Record.from_dict(row), None
    except BadRow as exc:
        record_id = row.get("id")
        return None, Reject(exc.reason, location, str(exc), id=record_id if isinstance(record_id, str) else None,
                            record=row)


class HashSet:
    """A set of 64-bit hashes in about 8 bytes each: a sorted numpy array, and a small Python
    set of the newest that is merged into it when full (a merge of two sorted runs, so adding n
    hashes costs O(n log n) over all merges, not a re-sort each time). For the sets that grow
    with the input (a row's id met before?), where a Python set of strings costs ~150 bytes a
    row and one of ints ~70."""

    BUFFER = 1 << 16  # hashes held in the Python set before a merge (~4 MB)

    def __init__(self) -> None:
        import numpy as np

        self._np = np
        self._sorted = np.zeros(0, np.uint64)
        self._newest: set[int] = set()

    def __len__(self) -> int:
        return len(self._sorted) + len(self._newest)

    def __contains__(self, key: int) -> bool:
        if key in self._newest:
            return True
        index = int(self._sorted.searchsorted(self._np.uint64(key)))
        return index < len(self._sorted) and int(self._sorted[index]) == key

    def add(self, key: int) -> bool:
        """Add `key`; False when it was there already."""
        if key in self:
            return False
        self._newest.add(key)
        if len(self._newest) >= self.BUFFER:
            np = self._np
            newest = np.fromiter(self._newest, np.uint64, len(self._newest))
            merged = np.concatenate((self._sorted, newest))
            merged.sort(kind="stable")  # timsort: two sorted runs, merged in linear time
            self._sorted, self._newest = merged, set()
        return True


def key_hash(*parts: str | None) -> int:
    """The 64-bit blake2b hash of `parts` (joined by NUL) that HashSet holds."""
    text = "\0".join("" if part is None else part for part in parts)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


class SeenIds:
    """The (task, id) pairs met so far, as 64-bit hashes in a HashSet (about 8 bytes a row,
    not the ids' 175; a false duplicate among 10 million rows has odds of about 3 in a million)."""

    def __init__(self) -> None:
        self._seen = HashSet()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, task: str | None, record_id: str) -> bool:
        """Remember the pair; False when it was met before."""
        return self._seen.add(key_hash(str(task), record_id))

    def repeat(self, record: Record, location: str) -> Reject | None:
        """The `duplicate_id` Reject for a later row of one (task, id); None for the first
        (which is then remembered)."""
        if self.add(record.task, record.id):
            return None
        return Reject("duplicate_id", location, f"{record.id} ({record.task}) came before in the input", id=record.id)


# ---------------------------------------------------------------------------- temporary names

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def owned_temp_prefix(name: str) -> str:
    """`.<name>.blspdata.<host>.<pid>.`: a temporary file or folder for `name`, recognisable as
    this process's (the host too: a folder shared between machines sees other hosts' PIDs)."""
    return f".{name}.blspdata.{_HOST}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_dead_leftovers(folder: str | os.PathLike, name: str) -> list[Path]:
    """Remove the temporary files and folders of `name` in `folder` that a dead run left
    (killed before it could clean up): only ours (named by `owned_temp_prefix`), only this
    host's, only when their PID is not alive. Returns what was removed."""
    folder = Path(folder)
    pattern = re.compile(re.escape(f".{name}.blspdata.{_HOST}.") + r"(\d+)\.[A-Za-z0-9_.-]+")
    removed = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if not match or int(match.group(1)) == os.getpid() or _alive(int(match.group(1))):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


# ---------------------------------------------------------------------------- writing

@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` (`owned_temp_prefix`); on success it is renamed over
    `path`. A dead run's temporaries for `path` are removed first (`remove_dead_leftovers`).

    On any exception the temporary file is removed and `path` is left as it was, and so are
    its folders: those this created are removed again if empty.
    """
    path = Path(path)
    created = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]  # deepest first
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_leftovers(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=owned_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        for folder in created:
            with contextlib.suppress(OSError):  # not empty: something else was written there
                folder.rmdir()
        raise


class JsonlWriter:
    """Write dict rows as JSON Lines (gzipped for `.gz`), atomically.

    Use as a context manager: rows go to a temporary file that replaces `path` only when
    the block ends without an exception.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.count = 0
        self._ctx: contextlib.AbstractContextManager[Path] | None = None
        self._handle: Any = None

    def __enter__(self) -> "JsonlWriter":
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        raw = open(tmp, "wb")
        # mtime=0 keeps gzipped output byte-identical for identical input.
        self._handle = (
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0)
            if self.path.name.endswith(".gz") else raw
        )
        self._raw = raw
        return self

    def write(self, row: dict[str, Any]) -> None:
        self._handle.write(orjson.dumps(row) + b"\n")
        self.count += 1

    def write_line(self, line: bytes) -> None:
        """Write one row already serialised by `orjson.dumps` (no newline), as `write` would."""
        self._handle.write(line + b"\n")
        self.count += 1

    def write_all(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.write(row)

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._ctx is not None
        try:
            if self._handle is not self._raw:
                self._handle.close()  # writes gzip's last block and trailer: may fail (disk full)
            self._raw.flush()
            if exc_type is None:
                os.fsync(self._raw.fileno())
            self._raw.close()
        except BaseException as failure:
            self._raw.close()
            # Only a clean close and fsync may replace the old file.
            self._ctx.__exit__(type(failure), failure, failure.__traceback__)
            raise
        self._ctx.__exit__(exc_type, exc, tb)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write one JSON document atomically (summaries, stats)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
