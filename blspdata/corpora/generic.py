"""Any corpus described by a table: a JSONL file (one object per line) or a CSV file
(with a header), one utterance per row, e.g.

    {"audio": "wav/utt1.wav", "text": "I can't believe it.", "emotion": "surprise", "speaker": "s1"}
    audio,text,emotion,speaker
    wav/utt1.wav,I can't believe it.,surprise,s1

Column names are options (`--audio-col`, `--text-col`, ...). Relative audio paths are
relative to the file's folder. Emotion values must be canonical labels or be mapped by
`--label-map`.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from blspdata import labels
from blspdata.corpora.base import (AudioItem, IngestError, csv_header, csv_rows, resolve_label, segment_problem,
                                   undecodable_fields)
from blspdata.records import HashSet, Record, Reject, iter_jsonl, key_hash


def _rows(fmt: str, path: str) -> Iterator[tuple[str, dict[str, Any] | None, str, str]]:
    """`(location, row or None, reason, detail)` for each row (reason "" for a row)."""
    if fmt == "jsonl":
        for number, row, error in iter_jsonl(path):
            reason = "" if row is not None else "undecodable_text" if "undecodable" in error else "malformed_row"
            yield f"{path}:{number}", row, reason, error
        return
    for number, row, reason, detail in csv_rows(path):
        location = f"{path}:{number}"
        if row is None:
            yield location, None, reason, detail
            continue
        bad = undecodable_fields(row)
        if bad:
            yield location, None, "undecodable_text", f"undecodable bytes in {', '.join(bad)}"
            continue
        yield location, row, "", ""


def scan(root: str, fmt: str, audio_col: str = "audio", text_col: str = "text", emotion_col: str | None = None,
         id_col: str | None = None, speaker_col: str | None = None, split_col: str | None = None,
         split: str = "train", offset_col: str | None = None, duration_col: str | None = None,
         corpus_name: str | None = None, language: str = "en",
         label_map: str | os.PathLike | None = None) -> Iterator[AudioItem | Reject]:
    path = root
    if not os.path.isfile(path):
        raise IngestError(f"{fmt.upper()} file not found: {path}")
    corpus = corpus_name or os.path.basename(path).split(".")[0]
    base = os.path.dirname(path)
    mapping = labels.corpus_map(labels.GENERIC, label_map)
    _check_columns(fmt, path, {"--audio-col": audio_col, "--text-col": text_col, "--emotion-col": emotion_col,
                               "--id-col": id_col, "--speaker-col": speaker_col, "--split-col": split_col,
                               "--offset-col": offset_col, "--duration-col": duration_col})
    seen = HashSet()  # the record ids met so far, as 64-bit hashes (~8 bytes a row)
    for location, row, reason, detail in _rows(fmt, path):
        if row is None:
            yield Reject(reason, location, detail)
            continue
        try:
            audio = _text(row, audio_col)
            raw_text = _text(row, text_col)
            offset = float(row[offset_col]) if offset_col and row.get(offset_col) not in (None, "") else 0.0
            duration = float(row[duration_col]) if duration_col and row.get(duration_col) not in (None, "") else 0.0
        except (KeyError, TypeError, ValueError) as exc:
            yield Reject("malformed_row", location, f"bad row: {exc}")
            continue
        if offset_col or duration_col:
            if not duration_col or row.get(duration_col) in (None, ""):
                yield Reject("malformed_row", location, "a segment needs a duration (--duration-col)")
                continue
            problem = segment_problem(offset, duration)
            if problem:
                yield Reject("malformed_row", location, problem)
                continue
        row_split = str(row.get(split_col) or split) if split_col else split
        native = str(row[id_col]) if id_col and row.get(id_col) not in (None, "") else \
            os.path.splitext(os.path.basename(audio))[0] + (f"_{offset:.2f}" if offset_col else "")
        record_id = f"{corpus}/{row_split}/{native}"
        if not seen.add(key_hash(record_id)):
            yield Reject("duplicate_id", location, f"{record_id} appears more than once", id=record_id)
            continue
        emotion = raw_emotion = None
        if emotion_col:
            raw_emotion = str(row.get(emotion_col) or "")
            emotion, rejected = resolve_label(raw_emotion, mapping, None, location, record_id)
            if rejected:
                yield rejected
                continue
        audio_path = audio if os.path.isabs(audio) else os.path.join(base, audio)
        used = {audio_col, text_col, emotion_col, id_col, speaker_col, split_col, offset_col, duration_col}
        record = Record(
            id=record_id, corpus=corpus, split=row_split, audio=audio_path, offset=offset, duration=duration,
            text=raw_text, raw_text=raw_text, language=language, emotion=emotion, raw_emotion=raw_emotion,
            speaker=str(row[speaker_col]) if speaker_col and row.get(speaker_col) not in (None, "") else None,
            extra={k: v for k, v in row.items() if k not in used},
        )
        yield AudioItem(audio_path, [record], [location])


def _check_columns(fmt: str, path: str, named: dict[str, str | None]) -> None:
    """A column name that the table lacks is a typo, not a row problem: stop before every row
    is rejected for it. The columns are the CSV header or the keys of the first JSONL object."""
    columns = _first_columns(fmt, path)
    if columns is None:
        return  # an empty table: nothing to check, nothing to import
    missing = [f"{column!r} ({option})" for option, column in named.items() if column and column not in columns]
    if missing:
        where = "header" if fmt == "csv" else "first object"
        raise IngestError(f"{path}: no column {', '.join(missing)} in its {where}; "
                          f"it has: {', '.join(map(repr, columns))}")


def _first_columns(fmt: str, path: str) -> list[str] | None:
    if fmt == "jsonl":
        return next((list(row) for _, row, _ in iter_jsonl(path) if row is not None), None)
    return csv_header(path)


def _text(row: dict[str, Any], column: str) -> str:
    if column not in row:
        raise KeyError(f"column {column!r} missing")
    value = row[column]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"column {column!r} is empty or not text")
    return value
