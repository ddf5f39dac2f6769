"""Lhotse manifests (lhotse.readthedocs.io): a CutSet, or a RecordingSet with its SupervisionSet,
as JSON Lines (`.jsonl`, `.jsonl.gz`; an old-style `.json` list too), named as Lhotse recipes
name them (`<corpus>_cuts_<part>.jsonl.gz`: the corpus and the split come from the name). Lines:

    cuts:          {"id": "a-0", "start": 0.5, "duration": 1.0, "channel": 0, "type": "MonoCut",
                    "supervisions": [{"id": "a-0", "recording_id": "a", "start": 0.0, "duration": 1.0,
                                      "channel": 0, "text": "hi there", "speaker": "spk1",
                                      "language": "English", "custom": {"emotion": "hap"}}],
                    "recording": {"id": "a", "sources": [{"type": "file", "channels": [0], "source": "a.wav"}],
                                  "sampling_rate": 16000, "num_samples": 32000, "duration": 2.0}}
    recordings:    {"id": "a", "sources": [...], "sampling_rate": 16000, "num_samples": 32000, "duration": 2.0}
    supervisions:  {"id": "a-0", "recording_id": "a", "start": 0.5, "duration": 1.0, "channel": 0, "text": ...}

One record per supervision: `offset` is where it starts in the recording's file (a cut's start
plus the supervision's start within the cut), `duration` its own; the emotion is the
supervision's `custom["emotion"]`, mapped like the corpus importers' labels (`labels.HUB`,
`--label-map`). Relative source paths are read as Lhotse reads them, from the current
folder, or from `--audio-root`. A multi-channel recording's supervision keeps its `channel`
in `extra` (our readers mix the channels down). Rejected, with the reason: a source that is not
a file (URL, command, in-memory, Shar) or a recording with transforms other than resampling
(`audio_unsupported`), a MixedCut or PaddingCut (`audio_unsupported`), a supervision whose
recording is not listed (`audio_missing`), a recording no supervision names (`transcript_missing`).

The files are read directly, without importing lhotse (which imports torch: seconds per run,
and a dependency for a format this simple); `blspdata export lhotse` writes them back.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterator

import orjson

from blspdata import labels
from blspdata.corpora.base import AudioItem, IngestError, resolve_label, segment_problem
from blspdata.errors import cut
from blspdata.records import HashSet, Record, Reject, iter_jsonl, key_hash

# `<corpus>_<kind>_<part>.jsonl.gz`, as Lhotse recipes name their manifests (and `export lhotse` does).
NAME = re.compile(r"^(?P<corpus>.+?)_(?P<kind>cuts|recordings|supervisions)(?:_(?P<part>.+?))?\.(?:jsonl|json)(?:\.gz)?$")
CUT_TYPES = ("MonoCut", "MultiCut")
# Lhotse recipes write language names; our records (and curate's language check) use codes.
LANGUAGES = {"english": "en", "chinese": "zh", "mandarin": "zh", "cantonese": "yue", "german": "de",
             "french": "fr", "spanish": "es", "italian": "it", "portuguese": "pt", "russian": "ru",
             "japanese": "ja", "korean": "ko", "arabic": "ar", "hindi": "hi", "dutch": "nl", "polish": "pl"}


def scan(root: str, supervisions: str | os.PathLike | None = None, corpus_name: str | None = None,
         split: str | None = None, audio_root: str | os.PathLike | None = None, language: str = "en",
         label_map: str | os.PathLike | None = None) -> Iterator[AudioItem | Reject]:
    paths = [root] + ([str(supervisions)] if supervisions else [])
    for path in paths:
        if not os.path.isfile(path):
            raise IngestError(f"Lhotse manifest not found: {path}")
    kinds = {_kind(path): path for path in paths}
    named = NAME.match(os.path.basename(root))
    corpus = corpus_name or (named["corpus"] if named else os.path.basename(root).split(".")[0])
    split_given = split is not None
    split = split or (named["part"] if named and named["part"] else "train")
    context = _Context(corpus, split, None if audio_root is None else str(audio_root), language,
                       labels.corpus_map(labels.HUB, label_map),
                       renamed=corpus_name is not None or split_given)
    if "cuts" in kinds:
        if len(paths) > 1:
            raise IngestError(f"{kinds['cuts']} is a CutSet, which holds its own supervisions: give it alone")
        yield from _from_cuts(kinds["cuts"], context)
        return
    if len(kinds) < 2:
        (kind, path), = kinds.items()
        other = "supervisions" if kind == "recordings" else "recordings"
        raise IngestError(f"{path} holds Lhotse {kind}: give its {other} manifest too "
                          f"(blspdata ingest lhotse RECORDINGS SUPERVISIONS), or a CutSet")
    yield from _from_pair(kinds["recordings"], kinds["supervisions"], context)


class _Context:
    def __init__(self, corpus: str, split: str, audio_root: str | None, language: str, mapping: dict, renamed: bool):
        self.corpus, self.split, self.audio_root, self.language, self.mapping = corpus, split, audio_root, language, mapping
        self.renamed = renamed  # --corpus or --split given: every record's, even our own export's
        self.seen = HashSet()  # the record ids met so far, as 64-bit hashes (~8 bytes a row)


# ---------------------------------------------------------------------------- reading

def _rows(path: str) -> Iterator[tuple[str, dict[str, Any] | None, str]]:
    """`(location, row or None, error)` for each manifest row (JSON Lines, or one JSON list)."""
    name = path.removesuffix(".gz")
    if name.endswith(".json"):
        import gzip

        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as handle:
            try:
                rows = orjson.loads(handle.read())
            except orjson.JSONDecodeError as exc:
                raise IngestError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(rows, list):
            raise IngestError(f"{path}: a .json Lhotse manifest is a list of objects")
        for number, row in enumerate(rows, start=1):
            yield f"{path}:[{number - 1}]", row if isinstance(row, dict) else None, "" if isinstance(row, dict) else "not an object"
        return
    for number, row, error in iter_jsonl(path):
        yield f"{path}:{number}", row, error


def _kind(path: str) -> str:
    """cuts, recordings or supervisions: from the first row's keys."""
    first = next((row for _, row, _ in _rows(path) if row is not None), None)
    if first is None:
        named = NAME.match(os.path.basename(path))
        if named:
            return named["kind"]
        raise IngestError(f"{path}: no Lhotse rows in it")
    if "supervisions" in first or first.get("type") in (*CUT_TYPES, "MixedCut", "PaddingCut"):
        return "cuts"
    if "sources" in first:
        return "recordings"
    if "recording_id" in first:
        return "supervisions"
    raise IngestError(f"{path}: not a Lhotse manifest (its first row has keys {cut(', '.join(map(str, first)), 200)})")


def _from_cuts(path: str, context: _Context) -> Iterator[AudioItem | Reject]:
    for location, row, error in _rows(path):
        if row is None:
            yield Reject("malformed_row", location, error)
            continue
        kind = row.get("type", "MonoCut")
        if kind not in CUT_TYPES:
            yield Reject("audio_unsupported", location, f"a {kind} (mixed or padding audio) is not one recording's "
                         "segment; import the cuts before mixing or padding", id=_id(context, row.get("id")))
            continue
        recording = row.get("recording")
        supervisions = row.get("supervisions") or []
        if not isinstance(recording, dict) or not isinstance(supervisions, list):
            yield Reject("malformed_row" if recording is not None else "audio_missing", location,
                         "the cut has no recording (features only?)" if recording is None else "bad recording or supervisions",
                         id=_id(context, row.get("id")))
            continue
        if not supervisions:
            yield Reject("transcript_missing", location, f"cut {cut(str(row.get('id')), 100)} has no supervision",
                         id=_id(context, row.get("id")))
            continue
        try:
            start = float(row.get("start", 0.0))
        except (TypeError, ValueError):
            yield Reject("malformed_row", location, f"bad cut start {cut(repr(row.get('start')), 100)}")
            continue
        item = _item(recording, [(s, start, location) for s in supervisions], context, extra={"cut_id": row.get("id")})
        yield from item


def _from_pair(recordings_path: str, supervisions_path: str, context: _Context) -> Iterator[AudioItem | Reject]:
    recordings: dict[str, tuple[dict, str]] = {}
    for location, row, error in _rows(recordings_path):
        if row is None or not isinstance(row.get("id"), str):
            yield Reject("malformed_row", location, error or "a recording without an id")
            continue
        if row["id"] in recordings:
            yield Reject("duplicate_id", location, f"recording {cut(row['id'], 100)} is listed twice")
            continue
        recordings[row["id"]] = (row, location)
    used: set[str] = set()
    group: list[tuple[dict, float, str]] = []  # consecutive supervisions of one recording
    for location, row, error in _rows(supervisions_path):
        if row is None:
            yield Reject("malformed_row", location, error)
            continue
        recording_id = row.get("recording_id")
        if recording_id not in recordings:
            yield Reject("audio_missing", location, f"no recording {cut(str(recording_id), 100)} in {recordings_path}",
                         id=_id(context, row.get("id")))
            continue
        if group and group[0][0].get("recording_id") != recording_id:
            yield from _item(recordings[group[0][0]["recording_id"]][0], group, context)
            group = []
        used.add(recording_id)
        group.append((row, 0.0, location))
    if group:
        yield from _item(recordings[group[0][0]["recording_id"]][0], group, context)
    for recording_id, (_, location) in recordings.items():
        if recording_id not in used:
            yield Reject("transcript_missing", location, f"no supervision in {supervisions_path} names recording "
                         f"{cut(recording_id, 100)}")


# ---------------------------------------------------------------------------- records

def _id(context: _Context, native: Any) -> str | None:
    return f"{context.corpus}/{context.split}/{native}" if isinstance(native, str) and native else None


def _names(context: _Context, supervision: dict) -> tuple[str, str, str | None]:
    """`(corpus, split, record id)`. A supervision `blspdata export lhotse` wrote (its custom
    says corpus and split, and its id is `<corpus>/<split>/...`) comes back as the record it was."""
    native, custom = supervision.get("id"), supervision.get("custom")
    if not context.renamed and isinstance(native, str) and isinstance(custom, dict):
        corpus, split = custom.get("corpus"), custom.get("split")
        if isinstance(corpus, str) and isinstance(split, str) and native.startswith(f"{corpus}/{split}/"):
            return corpus, split, native
    return context.corpus, context.split, _id(context, native)


def _item(recording: dict, supervisions: list[tuple[dict, float, str]], context: _Context,
          extra: dict[str, Any] | None = None) -> Iterator[AudioItem | Reject]:
    """The records of `supervisions` (each with the start of its cut in the recording) as one
    AudioItem of the recording's file, and a Reject for each that cannot be a record."""
    records, locations = [], []
    for supervision, start, location in supervisions:
        if not isinstance(supervision, dict):
            yield Reject("malformed_row", location, "a supervision that is not an object")
            continue
        corpus, split, record_id = _names(context, supervision)
        if record_id is None:
            yield Reject("malformed_row", location, "a supervision without an id")
            continue
        audio, why = _source(recording, supervision.get("channel"), context.audio_root)
        if audio is None:
            yield Reject("audio_unsupported", location, why, id=record_id)
            continue
        result = _record(supervision, start, audio, recording, context, (corpus, split, record_id), location, extra or {})
        if isinstance(result, Reject):
            yield result
            continue
        records.append(result)
        locations.append(location)
    if records:
        yield AudioItem(records[0].audio, records, locations)


def _source(recording: dict, channel: Any, audio_root: str | None) -> tuple[str | None, str]:
    """The file the supervision's audio is in, or `(None, why not)`."""
    transforms = [t.get("name") if isinstance(t, dict) else t for t in recording.get("transforms") or []]
    if any(name != "Resample" for name in transforms):  # speed, volume, reverb: the times would not match the file
        return None, f"recording {recording.get('id')} has transforms ({', '.join(map(str, transforms))}); only resampling keeps its times"
    sources = [s for s in recording.get("sources") or [] if isinstance(s, dict)]
    wanted = channel[0] if isinstance(channel, list) and channel else channel
    if len(sources) > 1:  # one file per channel: the supervision's
        sources = [s for s in sources if wanted in (s.get("channels") or [])] or sources[:1]
    if not sources:
        return None, f"recording {recording.get('id')} has no source"
    source = sources[0]
    if source.get("type") != "file" or not isinstance(source.get("source"), str):
        return None, f"recording {recording.get('id')}: audio from a {source.get('type')!r} source (only files are read)"
    path = source["source"]
    if audio_root is not None and not os.path.isabs(path):
        path = os.path.join(audio_root, path)
    return path, ""


def _record(supervision: dict, start: float, audio: str, recording: dict, context: _Context,
            names: tuple[str, str, str], location: str, extra: dict[str, Any]) -> Record | Reject:
    corpus, split, record_id = names
    if not context.seen.add(key_hash(record_id)):
        return Reject("duplicate_id", location, f"supervision {supervision['id']} came before (in another cut?)", id=record_id)
    try:
        offset, duration = start + float(supervision.get("start", 0.0)), float(supervision["duration"])
    except (KeyError, TypeError, ValueError) as exc:
        return Reject("malformed_row", location, f"bad supervision times: {cut(str(exc), 100)}", id=record_id)
    problem = segment_problem(offset, duration)
    if problem:
        return Reject("malformed_row", location, problem, id=record_id)
    text = supervision.get("text")
    if not isinstance(text, str) or not text.strip():
        return Reject("text_empty", location, "the supervision has no text", id=record_id)
    custom = supervision.get("custom") if isinstance(supervision.get("custom"), dict) else {}
    emotion = raw_emotion = None
    if custom.get("emotion") is not None:
        raw_emotion = str(custom["emotion"])
        emotion, rejected = resolve_label(raw_emotion, context.mapping, "a known", location, record_id)
        if rejected:
            return rejected
    tag = supervision.get("language")
    language = LANGUAGES.get(tag.lower(), tag) if isinstance(tag, str) and tag else context.language
    speaker = supervision.get("speaker")
    extra = {**extra, "recording_id": recording.get("id"), "channel": supervision.get("channel", 0)}
    if supervision.get("gender"):
        extra["gender"] = supervision["gender"]
    # What `export lhotse` put in custom comes back to its place; the rest of custom to extra.
    raw_text = custom.get("raw_text") if isinstance(custom.get("raw_text"), str) else text
    if isinstance(custom.get("raw_emotion"), str) and emotion is not None:
        raw_emotion = custom["raw_emotion"]
    if isinstance(custom.get("extra"), dict):
        extra = {**custom["extra"], **extra}
    rest = {k: v for k, v in custom.items() if k not in ("emotion", "raw_emotion", "raw_text", "extra", "corpus", "split")}
    if rest:
        extra["custom"] = rest
    return Record(id=record_id, corpus=corpus, split=split, audio=audio, offset=offset,
                  duration=duration, text=text, raw_text=raw_text, speaker=str(speaker) if speaker not in (None, "") else None,
                  language=language, emotion=emotion, raw_emotion=raw_emotion,
                  extra={k: v for k, v in extra.items() if v is not None})
