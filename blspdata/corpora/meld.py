"""MELD (affective-meld.github.io), MELD.Raw as extracted from its tarballs:

    MELD.Raw/train_sent_emo.csv   MELD.Raw/train_splits/dia0_utt0.mp4
    MELD.Raw/dev_sent_emo.csv     MELD.Raw/dev_splits_complete/dia0_utt0.mp4
    MELD.Raw/test_sent_emo.csv    MELD.Raw/output_repeated_splits_test/dia0_utt0.mp4

(the video folders may also sit one level down, e.g. MELD.Raw/train/train_splits/). A CSV
row, with the header, looks like

    Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime
    1,"also I was the point person on my companyâ€™s transition from the KL-5 to GR-6 system.",Chandler,neutral,neutral,0,0,8,21,"00:16:16,059","00:16:21,731"

The text has mis-encoded characters (UTF-8 read as Windows-1252: `â€™` for `’`), which
ftfy repairs. The audio of each clip is extracted to 16 kHz mono FLAC under `audio_dir`.
"""

from __future__ import annotations

import os
import re
from typing import Iterator, Sequence

import ftfy

from blspdata import labels
from blspdata.corpora.base import AudioItem, IngestError, csv_header, csv_rows, resolve_label, undecodable_fields
from blspdata.records import Record, Reject

SPLITS = {  # split -> (CSV, video folder)
    "train": ("train_sent_emo.csv", "train_splits"),
    "dev": ("dev_sent_emo.csv", "dev_splits_complete"),
    "test": ("test_sent_emo.csv", "output_repeated_splits_test"),
}
REQUIRED = ("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")
_CLIP = re.compile(r"^dia(\d+)_utt(\d+)\.mp4$")


def _find(root: str, name: str) -> str | None:
    """`name` directly under ROOT or one folder down."""
    candidates = [os.path.join(root, name)] + [
        os.path.join(root, sub, name) for sub in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, sub))
    ]
    return next((c for c in candidates if os.path.exists(c)), None)


def scan(root: str, audio_dir: str | os.PathLike, splits: Sequence[str] | None = None,
         label_map: str | os.PathLike | None = None) -> Iterator[AudioItem | Reject]:
    if not os.path.isdir(root):
        raise IngestError(f"MELD root not found: {root}")
    bad = [s for s in (splits or ()) if s not in SPLITS]
    if bad:
        raise IngestError(f"unknown MELD split(s) {', '.join(bad)}; choose from {', '.join(SPLITS)}")
    mapping = labels.corpus_map(labels.MELD, label_map)
    found = {split: _find(root, SPLITS[split][0]) for split in (splits or SPLITS)}
    missing = [SPLITS[s][0] for s, path in found.items() if path is None]
    if splits and missing or not any(found.values()):
        raise IngestError(f"MELD CSV(s) not found under {root}: {', '.join(missing)}")
    for split, csv_path in found.items():
        if csv_path is None:
            continue
        videos = _find(root, SPLITS[split][1])
        yield from _scan_split(split, csv_path, videos, os.path.join(str(audio_dir), split), mapping)


def _scan_split(split: str, csv_path: str, video_dir: str | None, audio_dir: str,
                mapping: dict) -> Iterator[AudioItem | Reject]:
    clips = set()
    if video_dir is not None:
        clips = {name for name in os.listdir(video_dir) if _CLIP.match(name)}
    referenced: set[str] = set()
    absent = [c for c in REQUIRED if c not in (csv_header(csv_path) or ())]
    if absent:
        yield Reject("malformed_row", f"{csv_path}:1", f"header lacks column(s) {', '.join(absent)}")
        return
    for line, row, reason, detail in csv_rows(csv_path):
        location = f"{csv_path}:{line}"
        if row is None:  # wrong field count, an unclosed quote
            yield Reject(reason, location, f"bad row: {detail}")
            continue
        try:
            dialogue, utterance = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
        except ValueError as exc:
            yield Reject("malformed_row", location, f"bad row: {exc}")
            continue
        native = f"dia{dialogue}_utt{utterance}"
        record_id = f"meld/{split}/{native}"
        clip = f"{native}.mp4"
        if clip in referenced:
            yield Reject("duplicate_id", location, f"{native} has two rows", id=record_id)
            continue
        referenced.add(clip)
        raw_text = row["Utterance"]
        bad = undecodable_fields(row)
        if bad:
            yield Reject("undecodable_text", location, f"undecodable bytes in {', '.join(bad)}", id=record_id)
            continue
        raw_label = row["Emotion"].strip()
        emotion, rejected = resolve_label(raw_label, mapping, "a MELD", location, record_id)
        if rejected:
            yield rejected
            continue
        if clip not in clips:
            where = video_dir or f"{SPLITS[split][1]}/ (folder not found)"
            yield Reject("audio_missing", location, f"no such file: {os.path.join(where, clip)}", id=record_id)
            continue
        text = ftfy.fix_text(raw_text)
        record = Record(
            id=record_id, corpus="meld", split=split, audio=os.path.join(audio_dir, f"{native}.flac"),
            text=text, raw_text=raw_text, speaker=ftfy.fix_text(row["Speaker"]).strip() or None,
            emotion=emotion, raw_emotion=raw_label,
            extra={"video": os.path.join(video_dir, clip), "dialogue_id": dialogue, "utterance_id": utterance,
                   **{key.lower(): row[key] for key in ("Sentiment", "Season", "Episode", "StartTime", "EndTime") if key in row}},
        )
        yield AudioItem(record.audio, [record], [location], source=record.extra["video"])
    for clip in sorted(clips - referenced):
        yield Reject("transcript_missing", os.path.join(video_dir, clip), f"no row for {clip} in {csv_path}",
                     id=f"meld/{split}/{clip[:-4]}")
