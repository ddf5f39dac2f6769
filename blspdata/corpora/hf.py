"""A Hugging Face dataset with an audio column, in any of the forms `datasets` writes:

    iemocap_hf/                         a `save_to_disk` folder: a DatasetDict (its splits kept)
      dataset_dict.json                   {"splits": ["train", "test"]}
      train/data-00000-of-00001.arrow     train/dataset_info.json (the features), train/state.json
    iemocap_hf/                         parquet files in a Hub repository's layout (the split from
      data/train-00000-of-00002.parquet   the file name; any other folder of parquet files: --split)
    iemocap.parquet                     one parquet file (its features in the schema's metadata)
    org/name                            a Hub id, streamed (where the Hub can be reached)

A row, with the features that `dataset_info.json` (or the parquet schema) declares:

    {"audio": {"bytes": b"RIFF$\\x04...", "path": "Ses01F_impro01_F000.wav"},
     "text": "Excuse me.", "emotion": 2, "speaker": "Ses01F"}
    features: audio Audio(), text Value("string"), emotion ClassLabel(names=["ang", "hap", "neu", "sad"])

The audio is taken as the bytes stored: the `Audio` feature is never decoded (that would need
torchcodec, and be slow). Each row's bytes are written once, in the ingest workers, to FLAC under
`audio_dir/<split>/<id>.flac` (FLAC copied as is, what libsndfile reads re-encoded at its native
rate, anything else decoded to 16 kHz mono: `audio.write_flac`); a rerun skips a file that
carries its source file's modification time. A row holding only a `path` points at that file.

A ClassLabel (emotion, speaker, split) is resolved to its NAME, never used by index: copies
of one corpus order their classes differently. Names and string labels are mapped like the
corpus importers' (`labels.HUB`: canonical names, IEMOCAP's codes, MELD's words; `--label-map`
for the rest). Ids are `<name>/<split>/<id column>`, or `<name>/<split>/<row index>`.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from blspdata import labels
from blspdata.corpora.base import AudioItem, IngestError, resolve_label
from blspdata.errors import cut
from blspdata.records import HashSet, Record, Reject, key_hash

# Tried in order when no --text-col is given (Common Voice copies say "sentence").
TEXT_COLUMNS = ("text", "sentence", "transcription", "transcript", "normalized_text")
EMOTION_COLUMNS = ("emotion",)
SPEAKER_COLUMNS = ("speaker", "speaker_id")
NO_COLUMN = "-"  # `--emotion-col -`: the dataset has an "emotion" column, but do not use it
# Rows read at a time (each holds its audio's bytes).
BATCH_ROWS = 256
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass
class _Part:
    """One split of the dataset as found: its rows `(index, row, stamp_ns)` in order."""

    split: str
    where: str                       # names it in reject locations: `<where>:<row index>`
    features: Any                    # datasets.Features, or None (a streamed dataset may not say)
    rows: Callable[[], Iterator[tuple[int, dict[str, Any], int | None]]]
    base: str | None                 # the folder relative audio paths are relative to


def scan(root: str, audio_dir: str | os.PathLike, audio_col: str | None = None, text_col: str | None = None,
         emotion_col: str | None = None, speaker_col: str | None = None, id_col: str | None = None,
         split_col: str | None = None, split: str = "train", splits: Sequence[str] | None = None,
         config: str | None = None, corpus_name: str | None = None, language: str = "en",
         label_map: str | os.PathLike | None = None) -> Iterator[AudioItem | Reject]:
    parts = _open(root, split, config)
    if splits:
        unknown = [s for s in splits if s not in {p.split for p in parts}]
        if unknown:
            raise IngestError(f"{root}: no split {', '.join(map(repr, unknown))}; it has {', '.join(p.split for p in parts)}")
        parts = [p for p in parts if p.split in splits]
    corpus = corpus_name or _default_name(root)
    mapping = labels.corpus_map(labels.HUB, label_map)
    seen = HashSet()  # the record ids met so far, as 64-bit hashes (~8 bytes a row)
    for part in parts:
        columns = _columns(part, audio_col, text_col, emotion_col, speaker_col, id_col, split_col)
        yield from _scan_part(part, corpus, str(audio_dir), columns, mapping, language, seen)


# ---------------------------------------------------------------------------- the dataset's forms

def _open(root: str, split: str, config: str | None) -> list[_Part]:
    if os.path.isdir(root):
        if os.path.exists(os.path.join(root, "dataset_dict.json")) or os.path.exists(os.path.join(root, "state.json")):
            return _from_disk(root, split)
        parquet = _parquet_splits(root, split)
        if parquet:
            return parquet
        raise IngestError(f"{root}: neither a `save_to_disk` folder (dataset_dict.json or state.json) "
                          "nor a folder of parquet files")
    if os.path.isfile(root):
        if not root.endswith(".parquet"):
            raise IngestError(f"{root}: not a parquet file; give a parquet file, a folder of them, "
                              "a `save_to_disk` folder or a Hub id")
        return [_parquet_part(split, [root], os.path.dirname(root))]
    if _HUB_ID.match(root) and not root.startswith("."):
        return _from_hub(root, split, config)
    raise IngestError(f"dataset not found: {root} (no such file or folder, and not a Hub id)")


def _from_disk(root: str, split: str) -> list[_Part]:
    import datasets

    try:
        loaded = datasets.load_from_disk(root)
    except Exception as exc:  # a folder `datasets` cannot read: FileNotFoundError, JSON errors, ...
        raise IngestError(f"{root}: cannot be read as a `save_to_disk` folder: {cut(str(exc), 300)}") from None
    named = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(split, loaded)]
    return [_disk_part(root, name, dataset) for name, dataset in named]


def _disk_part(root: str, name: str, dataset: Any) -> _Part:
    files = [f["filename"] for f in dataset.cache_files]
    stamp = max((os.stat(f).st_mtime_ns for f in files), default=None)

    def rows() -> Iterator[tuple[int, dict[str, Any], int | None]]:
        index = 0
        # As Arrow tables: no feature is decoded (Audio stays {"bytes", "path"}).
        for table in dataset.with_format("arrow").iter(batch_size=BATCH_ROWS):
            for row in table.to_pylist():
                yield index, row, stamp
                index += 1

    return _Part(name, f"{root}:{name}", dataset.features, rows, root)


def _parquet_splits(root: str, split: str) -> list[_Part]:
    """A folder's parquet files by split, as the Hub names them (`data/train-00000-of-00002.parquet`,
    `test/*.parquet`); files under no split name are all `split`."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        found = DataFilesDict.from_patterns(get_data_patterns(root), base_path=root)
    except Exception:  # no data files at all (EmptyDatasetError), ...
        return []
    parts = []
    for name, files in found.items():
        files = sorted(f for f in files if f.endswith(".parquet"))
        if files:
            name = str(name)
            parts.append(_parquet_part(split if name == "train" and len(found) == 1 else name, files, root))
    return parts


def _parquet_part(name: str, files: list[str], base: str) -> _Part:
    import datasets
    import pyarrow.parquet as pq

    try:
        features = datasets.Features.from_arrow_schema(pq.read_schema(files[0]))
    except Exception as exc:  # not parquet, or a schema `datasets` cannot read
        raise IngestError(f"{files[0]}: cannot be read as parquet: {cut(str(exc), 300)}") from None

    def rows() -> Iterator[tuple[int, dict[str, Any], int | None]]:
        index = 0
        for path in files:
            stamp = os.stat(path).st_mtime_ns
            try:
                batches = pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)
                for batch in batches:
                    for row in batch.to_pylist():
                        yield index, row, stamp
                        index += 1
            except OSError as exc:  # pyarrow's ArrowInvalid is an OSError/ValueError: a corrupt file
                raise IngestError(f"{path}: cannot be read as parquet: {cut(str(exc), 300)}") from None
            except ValueError as exc:
                raise IngestError(f"{path}: cannot be read as parquet: {cut(str(exc), 300)}") from None

    where = files[0] if len(files) == 1 else f"{base}:{name}"
    return _Part(name, where, features, rows, base)


def _from_hub(root: str, split: str, config: str | None) -> list[_Part]:
    import datasets

    try:
        loaded = datasets.load_dataset(root, config, streaming=True)
    except Exception as exc:  # offline, no such dataset, a gated one: datasets' own many errors
        raise IngestError(f"{root}: no such file or folder, and not a Hub dataset that can be reached "
                          f"({type(exc).__name__}: {cut(str(exc), 300)})") from None
    named = loaded.items() if isinstance(loaded, dict) else [(split, loaded)]
    parts = []
    for name, dataset in named:
        features = dataset.features
        for column, feature in (features or {}).items():
            if isinstance(feature, datasets.Audio):  # bytes and path, never decoded
                dataset = dataset.cast_column(column, datasets.Audio(decode=False))

        def rows(dataset=dataset) -> Iterator[tuple[int, dict[str, Any], int | None]]:
            for index, row in enumerate(dataset):
                yield index, row, None  # nothing on disk to stamp: written every run

        parts.append(_Part(str(name), f"{root}:{name}", features, rows, None))
    return parts


def _default_name(root: str) -> str:
    name = os.path.basename(os.path.normpath(root))
    name = re.sub(r"(-\d{5}-of-\d{5})?\.parquet$", "", name)
    return name or "hf"


# ---------------------------------------------------------------------------- columns

@dataclass
class _Columns:
    audio: str
    text: str
    emotion: str | None
    speaker: str | None
    id: str | None
    split: str | None


def _columns(part: _Part, audio: str | None, text: str | None, emotion: str | None, speaker: str | None,
             id_col: str | None, split: str | None) -> _Columns:
    """The columns to read: the ones named (which must exist), else the usual names present."""
    import datasets

    features = part.features
    if features is None:  # a streamed dataset that does not declare them: the first row's keys
        first = next(part.rows(), None)
        names = list(first[1]) if first else []
    else:
        names = list(features)
    named = {"--audio-col": audio, "--text-col": text, "--emotion-col": emotion, "--speaker-col": speaker,
             "--id-col": id_col, "--split-col": split}
    missing = [f"{c!r} ({option})" for option, c in named.items() if c and c != NO_COLUMN and c not in names]
    if missing:
        raise IngestError(f"{part.where}: no column {', '.join(missing)}; it has: {', '.join(map(repr, names))}")
    if audio is None:
        typed = [n for n in names if features is not None and isinstance(features[n], datasets.Audio)]
        audio = typed[0] if len(typed) == 1 else "audio" if "audio" in names else None
        if audio is None:
            raise IngestError(f"{part.where}: which column holds the audio? Name it with --audio-col "
                              f"(columns: {', '.join(map(repr, names))})")
    if text is None:
        text = next((n for n in TEXT_COLUMNS if n in names), None)
        if text is None:
            raise IngestError(f"{part.where}: no transcript column ({', '.join(TEXT_COLUMNS)}); name it with "
                              f"--text-col (columns: {', '.join(map(repr, names))})")

    def default(given: str | None, usual: Sequence[str]) -> str | None:
        if given == NO_COLUMN:
            return None
        return given or next((n for n in usual if n in names), None)

    return _Columns(audio, text, default(emotion, EMOTION_COLUMNS), default(speaker, SPEAKER_COLUMNS),
                    id_col, split)


def _value(row: dict[str, Any], column: str, features: Any) -> tuple[str | None, str]:
    """A cell as text, a ClassLabel resolved to its name; `(None, why)` when it has none."""
    import datasets

    value = row.get(column)
    feature = features.get(column) if features is not None else None
    if value is None or value == "":
        return None, f"no value in column {column!r}"
    if isinstance(feature, datasets.ClassLabel) and isinstance(value, int):
        if 0 <= value < feature.num_classes:
            return feature.names[value], ""
        return None, f"ClassLabel index {value} in column {column!r} has no name (its names: {', '.join(feature.names)})"
    return str(value), ""


# ---------------------------------------------------------------------------- rows

def _scan_part(part: _Part, corpus: str, audio_dir: str, columns: _Columns, mapping: dict, language: str,
               seen: HashSet) -> Iterator[AudioItem | Reject]:
    import datasets

    features = part.features
    used = {columns.audio, columns.text, columns.emotion, columns.speaker, columns.id, columns.split}
    for index, row, stamp in part.rows():
        location = f"{part.where}:{index}"
        native = str(index)
        if columns.id:
            native, why = _value(row, columns.id, features)
            if native is None:
                yield Reject("malformed_row", location, f"no id: {why}")
                continue
        row_split = part.split
        if columns.split:
            row_split, why = _value(row, columns.split, features)
            if row_split is None:
                yield Reject("malformed_row", location, f"no split: {why}")
                continue
        record_id = f"{corpus}/{row_split}/{native}"
        if not seen.add(key_hash(record_id)):
            yield Reject("duplicate_id", location, f"{record_id} appears more than once", id=record_id)
            continue
        text = row.get(columns.text)
        if not isinstance(text, str) or not text.strip():
            yield Reject("text_empty", location, f"no transcript in column {columns.text!r}", id=record_id)
            continue
        emotion = raw_emotion = None
        if columns.emotion:
            raw_emotion, why = _value(row, columns.emotion, features)
            if raw_emotion is None:
                yield Reject("label_unknown", location, why, id=record_id)
                continue
            emotion, rejected = resolve_label(raw_emotion, mapping, "a known", location, record_id)
            if rejected:
                yield rejected
                continue
        data, path, problem, why = _audio(row.get(columns.audio), columns.audio)
        if problem:
            yield Reject(problem, location, why, id=record_id)
            continue
        extra: dict[str, Any] = {"index": index}
        if path:
            extra["audio_path"] = path  # the name the dataset gives the file (often the corpus's own)
        for key, value in row.items():
            if key in used or not (value is None or isinstance(value, (str, int, float, bool))):
                continue  # arrays, nested features: not manifest material
            feature = features.get(key) if features is not None else None
            extra[key] = _value(row, key, features)[0] if isinstance(feature, datasets.ClassLabel) else value
        if data is not None:
            audio = os.path.join(audio_dir, _SAFE.sub("_", row_split), f"{_file_name(native)}.flac")
        else:
            audio = path if os.path.isabs(path) or part.base is None else os.path.join(part.base, path)
            if not os.path.exists(audio):
                yield Reject("audio_missing", location, f"no audio bytes, and no such file: {audio}", id=record_id)
                continue
        speaker = _value(row, columns.speaker, features)[0] if columns.speaker else None
        record = Record(id=record_id, corpus=corpus, split=row_split, audio=audio, text=text, raw_text=text,
                        speaker=speaker, language=language, emotion=emotion, raw_emotion=raw_emotion, extra=extra)
        yield AudioItem(audio, [record], [location], data=data, stamp_ns=stamp if data is not None else None)


def _audio(value: Any, column: str) -> tuple[bytes | None, str | None, str, str]:
    """`(bytes, path, reject reason, why)` of an audio cell: `{"bytes", "path"}` as `Audio`
    stores it, or a path; the reason is "" when there is audio to take."""
    if isinstance(value, str) and value:
        return None, value, "", ""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        path = path if isinstance(path, str) and path else None
        if data:
            return bytes(data), path, "", ""
        if path:
            return None, path, "", ""
        if data is not None:
            return None, None, "audio_empty", f"zero bytes of audio in column {column!r}"
    return None, None, "audio_missing", f"column {column!r} holds no audio (neither bytes nor a path)"


def _file_name(native: str) -> str:
    """`native` as a file name; when characters had to be replaced, a short hash of it keeps two
    ids that differ only there (`a/b`, `a_b`) apart."""
    safe = _SAFE.sub("_", native)[:150]
    if safe != native:
        safe += "-" + hashlib.blake2b(native.encode(), digest_size=4).hexdigest()
    return safe
