"""The one record type that flows through every stage, and its JSONL(.gz) storage.

A record is an utterance (audio + transcript + optional emotion); generation adds a
continuation. Field names are the contract between stages (see docs/DESIGN.md and
manifests/record.schema.json). Manifests are JSON Lines, gzipped when the name ends in
`.gz`, streamed row by row, and written atomically: a crash never leaves a half-written
file under the final name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson

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
    generator: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        row = {name: getattr(self, name) for name in INGEST_FIELDS}
        for name in GENERATE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                row[name] = value
        return row

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Record":
        """Build a record from a manifest row; unknown keys are an error (typos lose data)."""
        unknown = set(row) - _FIELD_NAMES
        if unknown:
            raise ValueError(f"unknown record field(s): {', '.join(sorted(unknown))}")
        missing = [name for name in ("id", "corpus", "split", "audio") if name not in row]
        if missing:
            raise ValueError(f"missing record field(s): {', '.join(missing)}")
        return cls(**row)

    def replace(self, **changes: Any) -> "Record":
        return dataclasses.replace(self, **changes)


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(Record))


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

def _open_read(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """Yield `(line_number, row, error)` for each non-blank line; `row` is None on a parse error.

    Streaming: memory does not grow with the file. Errors are returned, not raised, so a
    stage can send a malformed row to its rejects file and go on.
    """
    path = Path(path)
    with _open_read(path) as handle:
        for number, line in enumerate(handle, start=1):
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


def read_records(path: str | os.PathLike) -> Iterator[Record]:
    """Yield the records of a manifest; a malformed row raises ValueError naming path:line."""
    for number, row, error in iter_jsonl(path):
        if row is None:
            raise ValueError(f"{path}:{number}: {error}")
        try:
            yield Record.from_dict(row)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{number}: {exc}") from None


# ---------------------------------------------------------------------------- writing

@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`.

    On any exception the temporary file is removed and `path` is left as it was, and so are
    its folders: those this created are removed again if empty.
    """
    path = Path(path)
    created = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]  # deepest first
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
