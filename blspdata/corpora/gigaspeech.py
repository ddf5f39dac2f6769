"""GigaSpeech (github.com/SpeechColab/GigaSpeech), as its download script leaves it:

    GigaSpeech/GigaSpeech.json
    GigaSpeech/audio/{podcast,youtube,audiobook}/P0001/POD0000000001.opus

GigaSpeech.json (several GB for XL: streamed with ijson, one audio at a time) looks like

    {"audios": [{"aid": "POD0000000001", "path": "audio/podcast/P0001/POD0000000001.opus",
                 "source": "podcast", "category": "...", "duration": 1234.5,
                 "segments": [{"sid": "POD0000000001_S0000008", "speaker": "N/A",
                               "begin_time": 159.0, "end_time": 167.52,
                               "subsets": ["{XL}", "{L}", "{M}", "{S}", "{XS}"],
                               "text_tn": "DOUGLAS MCGRAY IS GOING TO BE OUR GUIDE <COMMA> ..."}]}]}

Training segments carry the tags of every subset that contains them ({XS} is in all);
dev and test segments carry {DEV} / {TEST}. A record points into the long Opus file by
`offset` and `duration`.

Some mirrors ship it segmented instead: `*_metadata.csv` files with the columns
`sid,text_tn,begin_time,end_time,audio_id,title,url,source,category,original_full_path`
and one audio file per segment named `<sid>.wav` (or .flac/.opus) somewhere below ROOT.
There, every row of the metadata found is taken (the mirror's download picked the subset;
the rows carry no subset tags, so `subset` has no effect and naming one earns a warning),
and a file named `dev_*`/`test_*` gives the dev/test split. The JSON layout also falls back
to `<sid>.*` files when a long recording is missing.
"""

from __future__ import annotations

import os
import sys
from array import array
from typing import Iterator, Sequence

import ijson

from blspdata.corpora.text import gigaspeech_text
from blspdata.corpora.base import AudioItem, IngestError, csv_rows, segment_problem, undecodable_fields
from blspdata.records import Record, Reject, key_hash

SUBSETS = ("XS", "S", "M", "L", "XL")
SPLITS = ("train", "dev", "test")
AUDIO_EXTENSIONS = (".opus", ".wav", ".flac")


def scan(root: str, subset: str | None = None, splits: Sequence[str] | None = None) -> Iterator[AudioItem | Reject]:
    """`subset` (the JSON layout's training subset) defaults to XS."""
    if not os.path.isdir(root):
        raise IngestError(f"GigaSpeech root not found: {root}")
    chosen = (subset or "XS").upper()
    if chosen not in SUBSETS:
        raise IngestError(f"unknown GigaSpeech subset {chosen!r}; choose from {', '.join(SUBSETS)}")
    wanted = tuple(splits or SPLITS)
    bad = [s for s in wanted if s not in SPLITS]
    if bad:
        raise IngestError(f"unknown GigaSpeech split(s) {', '.join(bad)}; choose from {', '.join(SPLITS)}")
    tags = {"train": f"{{{chosen}}}", "dev": "{DEV}", "test": "{TEST}"}
    json_path = os.path.join(root, "GigaSpeech.json")
    if os.path.isfile(json_path):
        yield from _scan_json(root, json_path, {tags[s]: s for s in wanted})
        return
    metadata = sorted(_walk(root, lambda name: name.endswith("_metadata.csv")))
    if not metadata:
        raise IngestError(f"neither GigaSpeech.json nor *_metadata.csv (segmented mirror) found under {root}")
    if subset is not None:
        print(f"warning: subset {chosen} has no effect: a segmented mirror's *_metadata.csv carry no subset "
              f"tags, so every row found under {root} is taken", file=sys.stderr)
    yield from _scan_segmented(root, metadata, wanted)


def _walk(root: str, keep) -> Iterator[str]:
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if keep(name):
                yield os.path.join(folder, name)


class _SegmentIndex:
    """`sid -> path` for one-file-per-segment audio below ROOT (the first in walk order where a
    sid has two files), in ~13 bytes a file: each sid's 64-bit hash with the index of its folder
    and of its extension, in numpy arrays sorted by hash. A dict of the two strings took ~250
    bytes a file, ~2 GB for XL's 8.3 M segments. `get` rebuilds the path and keeps it only if
    that file exists, so two sids of one hash can never give the wrong file."""

    def __init__(self, root: str) -> None:
        import numpy as np

        hashes, folders, extensions = array("Q"), array("I"), array("B")
        self.folders: list[str] = []
        for path in _walk(root, lambda name: name.endswith(AUDIO_EXTENSIONS) and "_S" in name):
            folder, name = os.path.split(path)
            stem, extension = os.path.splitext(name)
            if not self.folders or self.folders[-1] != folder:
                self.folders.append(folder)
            hashes.append(key_hash(stem))
            folders.append(len(self.folders) - 1)
            extensions.append(AUDIO_EXTENSIONS.index(extension))
        order = np.argsort(np.frombuffer(hashes, np.uint64), kind="stable")  # equal hashes: walk order
        self.hashes = np.frombuffer(hashes, np.uint64)[order]
        self.folder = np.frombuffer(folders, np.uint32)[order]
        self.extension = np.frombuffer(extensions, np.uint8)[order]

    def get(self, sid: str) -> str | None:
        key = key_hash(sid)
        at = int(self.hashes.searchsorted(self.hashes.dtype.type(key)))
        while at < len(self.hashes) and int(self.hashes[at]) == key:
            path = os.path.join(self.folders[self.folder[at]], sid + AUDIO_EXTENSIONS[self.extension[at]])
            if os.path.isfile(path):
                return path
            at += 1
        return None


def _record(split: str, sid: str, audio: str, begin: float, end: float, text_tn: str,
            speaker: str | None, extra: dict) -> Record:
    return Record(
        id=f"gigaspeech/{split}/{sid}", corpus="gigaspeech", split=split, audio=audio,
        offset=begin, duration=round(end - begin, 6), text=gigaspeech_text(text_tn), raw_text=text_tn,
        speaker=None if speaker in (None, "", "N/A") else speaker, extra=extra,
    )


def _scan_json(root: str, json_path: str, tag_to_split: dict[str, str]) -> Iterator[AudioItem | Reject]:
    segment_files: _SegmentIndex | None = None  # built only if a long recording is missing
    with open(json_path, "rb") as handle:
        try:
            audios = 0
            for audio in ijson.items(handle, "audios.item", use_float=True):
                audios += 1
                if not isinstance(audio, dict) or "path" not in audio or not isinstance(audio.get("segments"), list):
                    where = audio.get("aid", f"audios[{audios - 1}]") if isinstance(audio, dict) else f"audios[{audios - 1}]"
                    yield Reject("malformed_row", f"{json_path}#{where}", "audio entry without 'path' or 'segments'")
                    continue
                path = os.path.join(root, audio["path"])
                extra_base = {k: audio[k] for k in ("aid", "source", "category") if k in audio}
                records, locations, sids = [], [], set()
                for number, segment in enumerate(audio["segments"]):
                    sid = segment.get("sid") if isinstance(segment, dict) else None
                    seg_location = f"{json_path}#{sid or audio.get('aid', '?')}"
                    if not sid or not isinstance(sid, str):
                        yield Reject("malformed_row", f"{seg_location}.segments[{number}]", "segment without 'sid'")
                        continue
                    subsets = segment.get("subsets")
                    if not isinstance(subsets, list):
                        yield Reject("malformed_row", seg_location, f"'subsets' is not a list: {subsets!r}")
                        continue
                    split = next((tag_to_split[t] for t in subsets if t in tag_to_split), None)
                    if split is None:
                        continue  # another subset than the one asked for
                    if sid in sids:
                        yield Reject("duplicate_id", seg_location, f"segment {sid} listed twice",
                                     id=f"gigaspeech/{split}/{sid}")
                        continue
                    sids.add(sid)
                    try:
                        begin, end = float(segment["begin_time"]), float(segment["end_time"])
                        text_tn = str(segment["text_tn"])
                    except (KeyError, TypeError, ValueError) as exc:
                        yield Reject("malformed_row", seg_location, f"segment field missing or invalid: {exc}",
                                     id=f"gigaspeech/{split}/{sid}")
                        continue
                    record = _record(split, sid, path, begin, end, text_tn, segment.get("speaker"), dict(extra_base))
                    if not record.text:
                        yield Reject("garbage_only", seg_location, f"only non-speech tags: {text_tn!r}", id=record.id)
                        continue
                    problem = segment_problem(begin, end - begin)
                    if problem:
                        yield Reject("malformed_row", seg_location, problem, id=record.id)
                        continue
                    records.append(record)
                    locations.append(seg_location)
                if not records:
                    continue
                if os.path.exists(path):
                    yield AudioItem(path, records, locations)
                    continue
                if segment_files is None:
                    segment_files = _SegmentIndex(root)
                for record, seg_location in zip(records, locations):
                    sid = record.id.rsplit("/", 1)[1]
                    segment_file = segment_files.get(sid)
                    if segment_file is not None:  # segmented mirror: the file is the segment
                        record.extra.update(begin_time=record.offset, end_time=record.offset + record.duration)
                        record.audio, record.offset, record.duration = segment_file, 0.0, 0.0
                        yield AudioItem(record.audio, [record], [seg_location])
                    else:
                        yield Reject("audio_missing", seg_location, f"no such file: {path} (nor {sid}.* below {root})", id=record.id)
        except ijson.JSONError as exc:
            yield Reject("malformed_row", json_path, f"GigaSpeech.json is not valid JSON from here on: {exc}")
            return
    if audios == 0:
        raise IngestError(f"{json_path} lists no audios (expected {{\"audios\": [...]}})")


def _scan_segmented(root: str, metadata: list[str], wanted: Sequence[str]) -> Iterator[AudioItem | Reject]:
    segment_files = _SegmentIndex(root)
    for path in metadata:
        name = os.path.basename(path).lower()
        split = "dev" if name.startswith("dev") else "test" if name.startswith("test") else "train"
        if split not in wanted:
            continue
        for number, row, reason, detail in csv_rows(path):
            location = f"{path}:{number}"
            if row is None:  # wrong field count, an unclosed quote
                yield Reject(reason, location, f"bad metadata row: {detail}")
                continue
            sid = (row.get("sid") or "").strip()
            try:
                if not sid:
                    raise ValueError("no sid")
                begin, end = float(row["begin_time"]), float(row["end_time"])
                text_tn = row["text_tn"]
            except (KeyError, ValueError) as exc:
                yield Reject("malformed_row", location, f"bad metadata row: {exc}")
                continue
            bad = undecodable_fields(row)
            if bad:
                yield Reject("undecodable_text", location, f"undecodable bytes in {', '.join(bad)}")
                continue
            record = _record(split, sid, "", 0.0, 0.0, text_tn, None,
                             {k: row[k] for k in ("audio_id", "source", "category") if row.get(k)})
            record.extra.update(begin_time=begin, end_time=end)
            if not record.text:
                yield Reject("garbage_only", location, f"only non-speech tags: {text_tn!r}", id=record.id)
                continue
            segment_file = segment_files.get(sid)
            if segment_file is None:
                yield Reject("audio_missing", location, f"no audio file {sid}.* below {root}", id=record.id)
                continue
            record.audio = segment_file
            yield AudioItem(record.audio, [record], [location])
