"""What every corpus importer builds on: the item it yields (`AudioItem`), the error that stops
a run (`IngestError`), the readers for the raw files corpora ship (CSV, text lines), and the
speaker-held-out split of the corpora that have no official one (`speaker_splits`), and a raw
emotion label's canonical one or its reject (`resolve_label`).

Here, beside the importers, so that they need nothing from the `ingest` driver that runs them.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from blspdata import labels
from blspdata.errors import BlspdataError
from blspdata.records import Record, Reject


class IngestError(BlspdataError):
    """Raised for a problem that stops the run (`--strict`, a missing corpus root)."""


@dataclass(slots=True)
class AudioItem:
    """One audio file and the records that point into it: one utterance for most corpora,
    many segments of one long recording for GigaSpeech. `locations[i]` says where record i
    came from (transcript `path:line`) for the rejects file. With `source`, the audio is
    first extracted from that file (a video) to `audio`; with `data` (an encoded file's bytes,
    a Hub dataset's embedded audio), first written to `audio` as FLAC, skipped when `audio`
    already has modification time `stamp_ns` (that of the file the bytes came from)."""

    audio: str
    records: list[Record]
    locations: list[str]
    source: str | None = None
    data: bytes | None = None
    stamp_ns: int | None = None


def segment_problem(offset: float, duration: float) -> str | None:
    """Why a segment's times from corpus metadata cannot be right, or None."""
    import math

    if not (math.isfinite(offset) and math.isfinite(duration)):
        return f"segment times are not numbers (offset {offset}, duration {duration})"
    if offset < 0 or duration <= 0:
        return f"segment offset {offset} / duration {duration} out of range"
    return None


def resolve_label(raw: str, mapping: dict[str, str | None], corpus: str | None, source: str,
                  record_id: str | None) -> tuple[str | None, Reject | None]:
    """`(canonical, None)` for a raw label `mapping` sends to a canonical one, else `(None,
    reject)`: `label_excluded` or `label_unknown` (labels.map_label) at `source`, its detail
    saying how to fix it (labels.problem_detail: `corpus` as it names the corpus, "an ESD";
    None for a generic one)."""
    emotion, problem = labels.map_label(raw, mapping)
    if problem:
        return None, Reject(problem, source, labels.problem_detail(raw, problem, corpus), id=record_id)
    return emotion, None


def layout_root(root: str, holds: Callable[[str], bool]) -> str | None:
    """ROOT itself when `holds(ROOT)`, else the first folder below it (by name) that does: a
    corpus unzipped into a folder of its own (Kaggle's copies). Hidden folders and macOS's
    `__MACOSX` (AppleDouble `._*` files shadowing the real ones) are never taken."""
    import os

    if holds(root):
        return root
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if not name.startswith((".", "__MACOSX")) and os.path.isdir(folder) and holds(folder):
            return folder
    return None


def speaker_splits(found: Iterable[str], test: Iterable[Any] | None, dev: Iterable[Any], default_test: Iterable[str],
                   corpus: str, name: Callable[[Any], str] = str) -> dict[str, str]:
    """`{speaker: split}` for a corpus with no official split, held out by speaker: the `test`
    speakers (`default_test` when None), the `dev` ones, the rest train. `name` turns what a
    user wrote (`21`, `Actor_21`) into the corpus's speaker id. A speaker named explicitly that
    is not in `found` is an error (a typo would move nothing), as is one named for both."""
    def listed(value: Iterable[Any] | str) -> list[Any]:  # a run config may write "21,22"
        return [v for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)

    found = sorted(set(found))
    named_test = {name(s) for s in listed(test)} if test is not None else set()
    dev_set = {name(s) for s in listed(dev)}
    test_set = named_test if test is not None else set(default_test)
    absent = sorted((named_test | dev_set) - set(found))
    if absent:
        raise IngestError(f"speaker(s) {', '.join(absent)} named for the test/dev split not found in this {corpus} "
                          f"copy (it has {', '.join(found) or 'none'})")
    overlap = sorted(test_set & dev_set)
    if overlap:
        raise IngestError(f"speaker(s) {', '.join(overlap)} are in both the test and the dev split")
    return {s: "test" if s in test_set else "dev" if s in dev_set else "train" for s in found}



def undecodable_fields(row: dict[str, Any]) -> list[str]:
    """Columns of a CSV row (read with errors="surrogateescape") holding bytes that are not
    UTF-8: the row is rejected, not written with broken text."""
    bad = []
    for key, value in row.items():
        try:
            if isinstance(value, str):
                value.encode("utf-8")
        except UnicodeEncodeError:
            bad.append(key)
    return bad


# A CSV field may be as long as a Python string can be: csv's default limit (128 KiB) made one
# long field a `_csv.Error` traceback. 2**31 - 1 because the limit is a C long (32 bit on Windows).
CSV_FIELD_LIMIT = 2**31 - 1
# Line numbers listed in an `unclosed_quote` reject's detail (the others are counted).
_LISTED_LINES = 20


def csv_header(path: str) -> list[str] | None:
    """The column names of CSV file `path` (a leading BOM dropped), None when it is empty."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        return next(csv.reader(handle), None)


def csv_rows(path: str) -> Iterator[tuple[int, dict[str, str] | None, str, str]]:
    """Yield `(line_number, row, reason, detail)` for each row of CSV file `path` after its header.

    A row that fits the header is a dict with `reason` "". Otherwise `row` is None and
    `reason`/`detail` say why: `malformed_row` (wrong field count), or `unclosed_quote`, once
    for the row whose quote never closes and once for each row it read into its field, so the
    rejects and the summary count every row lost and name its line. That is a row spanning
    several lines whose field count is wrong, or one of whose later lines is a whole row by
    itself; a quoted field with a line break of its own (a multi-line transcript) is kept.
    Bytes that are not UTF-8 are kept as surrogates (errors="surrogateescape") for the caller
    to reject (`undecodable_fields`).
    """
    csv.field_size_limit(CSV_FIELD_LIMIT)
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        lines: list[str] = []  # the physical lines of the row being read

        def feed() -> Iterator[str]:
            for line in handle:
                lines.append(line)
                yield line

        reader = csv.reader(feed())
        header = next(reader, None)
        if header is None:
            return
        lines.clear()
        for fields in reader:
            end = reader.line_num
            first, span = end - len(lines) + 1, lines[:]
            lines.clear()
            if not fields:
                continue  # a blank line
            if len(span) > 1:
                row_like = [n for n, line in enumerate(span[1:], start=first + 1)
                            if len(next(csv.reader([line]), [])) == len(header)]
                if len(fields) != len(header) or row_like:
                    swallowed = [n for n, line in enumerate(span[1:], start=first + 1) if line.strip()]
                    listed = ", ".join(map(str, swallowed[:_LISTED_LINES])) + (", ..." if len(swallowed) > _LISTED_LINES else "")
                    yield first, None, "unclosed_quote", (
                        f"a quote opened on line {first} runs to line {end}: the {len(swallowed)} row(s) on "
                        f"line(s) {listed} were read into this row's field; close the quote and rerun")
                    for number in swallowed:
                        yield number, None, "unclosed_quote", f"read into the row on line {first} by its unclosed quote"
                    continue
            if len(fields) != len(header):
                yield first, None, "malformed_row", f"expected {len(header)} fields, found {len(fields)}"
                continue
            yield first, dict(zip(header, fields)), "", ""


def read_text_lines(path: str) -> Iterator[tuple[int, str, str]]:
    """Yield `(line_number, text, error)` for a text file, decoding each line on its own so
    one undecodable line is rejected without losing the rest of the file. For such a line
    `error` says why and `text` has the bad bytes replaced (enough to name the utterance)."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text, error = raw.decode("utf-8"), ""
            except UnicodeDecodeError as exc:
                text = raw.decode("utf-8", errors="replace")
                error = f"undecodable bytes ({exc.reason} at byte {exc.start})"
            if number == 1:
                text = text.removeprefix("\ufeff")  # a UTF-8 BOM (Windows editors) is no part of the first line
            yield number, text.rstrip("\r\n"), error
