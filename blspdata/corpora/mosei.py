"""CMU-MOSEI (multicomp.cs.cmu.edu), its raw release with the segment labels as a CSV:

    CMU_MOSEI/Raw/Audio/Full/WAV_16000/-3g5yACwYnA.wav            (one long file per video)
    CMU_MOSEI/Raw/Transcript/Segmented/Combined/-3g5yACwYnA.txt
    CMU_MOSEI/CMU_MOSEI_Labels.csv                                (or --labels FILE)

The SDK ships the labels as an HDF5 computational sequence (CMU_MOSEI_Labels.csd: per
segment an interval and seven features, sentiment then the happy, sad, anger, surprise,
disgust, fear intensities on a 0-3 scale, the mean of three annotators). What users pass
around is that sequence flattened to CSV, one row per segment, which is what this reads:

    video_id,segment,start,end,sentiment,happy,sad,anger,surprise,disgust,fear,split
    -3g5yACwYnA,1,82.753,100.555,1.0,0.667,0.0,0.0,0.333,0.0,0.0,train

`video_id` may be called `file`, `segment` `index` (absent: the segment is named by its start
in ms), `split` (train, valid/dev, test; absent: every row train) is optional, and a `text`
column, if there, gives the transcript. Otherwise the text is read from the segmented
transcript, whose lines are

    -3g5yACwYnA___1___82.753___100.555___Key is part of the people that we use to solve ...

matched by segment index, else by start/end. The label is the dominant emotion: the largest
of the six intensities, when it is at least `min_intensity` (default 1.0: on average rated at
least "weakly" present) and no other emotion ties it; all six 0 is `neutral`. A weaker maximum
is a `label_weak` reject, a tie `label_ambiguous`; `anger` maps to angry, disgust and fear are
not used by the recipe. A record points into the video's long audio by `offset`/`duration`, as
GigaSpeech's do; a start a little before 0 (the aligner's rounding, up to 1 s) is clamped to 0.
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from typing import Iterator

from blspdata import labels
from blspdata.corpora.base import (AudioItem, IngestError, csv_header, csv_rows, read_text_lines, resolve_label,
                                   segment_problem, undecodable_fields)
from blspdata.records import Record, Reject

EMOTIONS = ("happy", "sad", "anger", "surprise", "disgust", "fear")  # the SDK's order after sentiment
SPLITS = {"train": "train", "valid": "dev", "validation": "dev", "dev": "dev", "test": "test"}
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3")
DEFAULT_MIN_INTENSITY = 1.0
NEGATIVE_START_TOLERANCE_S = 1.0
_SEGMENT_LINE = re.compile(r"^(?P<video>.+?)___(?P<segment>\d+)___(?P<start>-?[\d.]+)___(?P<end>-?[\d.]+)___(?P<text>.*)$")


def dominant(intensities: dict[str, float], min_intensity: float) -> tuple[str | None, str | None]:
    """`(raw label, None)` or `(None, reject reason)` by the rule in the module docstring."""
    top = max(intensities.values())
    if top == 0:
        return "neutral", None
    if top < min_intensity:
        return None, "label_weak"
    winners = [e for e, v in intensities.items() if v == top]
    return (winners[0], None) if len(winners) == 1 else (None, "label_ambiguous")


def _column(header: list[str], *names: str) -> str | None:
    lowered = {h.strip().lower(): h for h in header}
    return next((lowered[n] for n in names if n in lowered), None)


def _walk(root: str, keep) -> dict[str, str]:
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if keep(os.path.relpath(folder, root).lower(), ext.lower()):
                found.setdefault(stem, os.path.join(folder, name))
    return found


def scan(root: str, labels_csv: str | os.PathLike | None = None, min_intensity: float | None = None,
         label_map: str | os.PathLike | None = None) -> Iterator[AudioItem | Reject]:
    if not os.path.isdir(root):
        raise IngestError(f"CMU-MOSEI root not found: {root}")
    threshold = DEFAULT_MIN_INTENSITY if min_intensity is None else float(min_intensity)
    if not (math.isfinite(threshold) and threshold >= 0):
        raise IngestError(f"--min-intensity must be a number >= 0, got {min_intensity}")
    table = str(labels_csv) if labels_csv else None
    if table is None:
        candidates = [os.path.join(f, n) for f, _, names in os.walk(root) for n in names if n.lower() == "cmu_mosei_labels.csv"]
        table = sorted(candidates)[0] if candidates else None
    if table is None or not os.path.isfile(table):
        raise IngestError(f"no CMU_MOSEI_Labels.csv under {root} and no --labels FILE (the SDK's .csd is HDF5: "
                          "flatten it to CSV, one row per segment, see `blspdata ingest mosei --help`)")
    header = csv_header(table) or []
    cols = {"video": _column(header, "video_id", "video", "file"), "start": _column(header, "start"),
            "end": _column(header, "end"), "segment": _column(header, "segment", "index", "segment_id"),
            "split": _column(header, "split"), "text": _column(header, "text", "transcript")}
    emotions = {e: _column(header, e) for e in EMOTIONS}
    absent = [n for n in ("video_id", "start", "end") if cols[{"video_id": "video"}.get(n, n)] is None]
    absent += [e for e, c in emotions.items() if c is None]
    if absent:
        raise IngestError(f"{table}: the label CSV lacks column(s) {', '.join(absent)} (needs video_id, start, end and "
                          f"{', '.join(EMOTIONS)})")
    mapping = labels.corpus_map({**labels.MOSEI, "neutral": "neutral"}, label_map)
    # folders below ROOT: the full-video audio, not Segmented/ clips; text from Transcript/.../Segmented/
    audio = _walk(root, lambda folder, ext: ext in AUDIO_EXTENSIONS and "segmented" not in folder)
    transcripts = _walk(root, lambda folder, ext: ext == ".txt" and "transcript" in folder and "full" not in folder.split(os.sep))
    by_video: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    for line, row, reason, detail in csv_rows(table):
        location = f"{table}:{line}"
        if row is None:
            yield Reject(reason, location, f"bad row: {detail}")
            continue
        by_video[row[cols["video"]].strip()].append((line, row))
    for video in sorted(by_video):
        yield from _scan_video(video, by_video[video], table, cols, emotions, threshold, mapping,
                               audio.get(video), transcripts.get(video))


def _read_transcript(path: str | None) -> tuple[dict[int, str], dict[tuple[str, str], str]]:
    by_segment: dict[int, str] = {}
    by_times: dict[tuple[str, str], str] = {}
    if path is None:
        return by_segment, by_times
    for _, line, error in read_text_lines(path):
        match = _SEGMENT_LINE.match(line)
        if match and not error:
            by_segment[int(match["segment"])] = match["text"].strip()
            by_times[(f"{float(match['start']):.3f}", f"{float(match['end']):.3f}")] = match["text"].strip()
    return by_segment, by_times


def _scan_video(video: str, rows: list[tuple[int, dict]], table: str, cols: dict, emotions: dict, threshold: float,
                mapping: dict, audio: str | None, transcript: str | None) -> Iterator[AudioItem | Reject]:
    by_segment, by_times = _read_transcript(transcript)
    records: list[Record] = []
    locations: list[str] = []
    seen: set[str] = set()
    for line, row in rows:
        location = f"{table}:{line}"
        try:
            start, end = float(row[cols["start"]]), float(row[cols["end"]])
            intensities = {e: float(row[c]) for e, c in emotions.items()}
            segment = int(row[cols["segment"]]) if cols["segment"] and row[cols["segment"]].strip() else None
            sentiment = _column(list(row), "sentiment")
            extra = {"sentiment": float(row[sentiment])} if sentiment and row[sentiment].strip() else {}
        except ValueError as exc:
            yield Reject("malformed_row", location, f"bad row: {exc}")
            continue
        native = f"{video}_{segment}" if segment is not None else f"{video}_{round(start * 1000)}"
        raw_split = (row[cols["split"]].strip().lower() if cols["split"] else "") or "train"
        split = SPLITS.get(raw_split)
        record_id = f"mosei/{split or raw_split}/{native}"
        if split is None:
            yield Reject("malformed_row", location, f"split {raw_split!r} is not one of {', '.join(SPLITS)}", id=record_id)
            continue
        if native in seen:
            yield Reject("duplicate_id", location, f"{native} has two rows", id=record_id)
            continue
        seen.add(native)
        if undecodable_fields(row):
            yield Reject("undecodable_text", location, "undecodable bytes in the row", id=record_id)
            continue
        if any(not math.isfinite(v) or v < 0 for v in intensities.values()):
            yield Reject("malformed_row", location, f"intensities must be numbers >= 0, got {intensities}", id=record_id)
            continue
        if -NEGATIVE_START_TOLERANCE_S <= start < 0:
            start = 0.0
        problem = segment_problem(start, end - start)
        if problem:
            yield Reject("segment_out_of_range", location, problem, id=record_id)
            continue
        raw_label, weak = dominant(intensities, threshold)
        if weak:
            top = max(intensities.values())
            why = (f"the strongest emotion intensity is {top:g}, under --min-intensity {threshold:g}" if weak == "label_weak"
                   else f"{', '.join(e for e, v in intensities.items() if v == top)} tie at {top:g}")
            yield Reject(weak, location, why, id=record_id)
            continue
        emotion, rejected = resolve_label(raw_label, mapping, "a CMU-MOSEI", location, record_id)
        if rejected:
            yield rejected
            continue
        if cols["text"] and row[cols["text"]].strip():
            text = row[cols["text"]].strip()
        else:
            text = by_segment.get(segment) if segment is not None else None
            if text is None:
                text = by_times.get((f"{float(row[cols['start']]):.3f}", f"{end:.3f}"))
        if text is None:
            where = transcript or f"Transcript/Segmented/Combined/{video}.txt (not found)"
            yield Reject("transcript_missing", location, f"no line for segment {native} in {where}", id=record_id)
            continue
        if audio is None:
            yield Reject("audio_missing", location, f"no audio {video}.wav (or .flac/.mp3) under the root", id=record_id)
            continue
        records.append(Record(
            id=record_id, corpus="mosei", split=split, audio=audio, offset=start, duration=end - start,
            text=text, raw_text=text, speaker=video, emotion=emotion, raw_emotion=raw_label,
            extra={"intensities": intensities, "video": video, "segment": segment, **extra},
        ))
        locations.append(location)
    if records:
        yield AudioItem(audio, records, locations)
