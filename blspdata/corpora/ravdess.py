"""RAVDESS (zenodo.org/record/1188976), the speech part as unzipped from
Audio_Speech_Actors_01-24.zip (ROOT holds the actor folders, or holds one folder that does,
as in Kaggle's copy):

    Actor_01/03-01-01-01-01-01-01.wav
    Actor_01/03-01-05-02-02-01-01.wav
    ...
    Actor_24/03-01-08-02-02-02-24.wav

There is no transcript or label file: the seven fields of each file name code everything,

    03-01-05-02-02-01-01   modality 03 (01 full-AV, 02 video-only, 03 audio-only)
                           vocal channel 01 (01 speech, 02 song)
                           emotion 05 (01 neutral, 02 calm, 03 happy, 04 sad, 05 angry,
                                       06 fearful, 07 disgust, 08 surprised)
                           intensity 02 (01 normal, 02 strong; neutral has no strong)
                           statement 02 (01 "Kids are talking by the door",
                                         02 "Dogs are sitting by the door")
                           repetition 01 (01 or 02)
                           actor 01 (01-24; odd male, even female)

Only audio-only speech (03-01-...) is read: a song file (vocal channel 02) or a video (.mp4,
modality 01/02) found here is rejected (`modality_excluded`). Calm is its own label, not
neutral: rejected (`label_excluded`) unless `--label-map` maps it. RAVDESS has no official
split: the test split is actors 21-24 (two men, two women), the rest train
(`test_speakers`, `dev_speakers`: actor numbers, `21` or `Actor_21`).
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterator, Sequence

from blspdata import labels
from blspdata.corpora.base import AudioItem, IngestError, layout_root, resolve_label, speaker_splits
from blspdata.records import Record, Reject

EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful",
            "07": "disgust", "08": "surprised"}
INTENSITIES = {"01": "normal", "02": "strong"}
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
MODALITIES = {"01": "full-AV video", "02": "video-only", "03": "audio-only"}
DEFAULT_TEST_SPEAKERS = ("Actor_21", "Actor_22", "Actor_23", "Actor_24")
_ACTOR = re.compile(r"^Actor_(\d\d)$")
_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")


def actor_name(value: Any) -> str:
    """`21`, `"21"` or `"Actor_21"` -> `"Actor_21"` (what a user may write for an actor)."""
    text = str(value).strip()
    return f"Actor_{int(text):02d}" if text.isdigit() else text


def _holds_actors(folder: str) -> bool:
    return any(_ACTOR.match(n) and os.path.isdir(os.path.join(folder, n)) for n in os.listdir(folder))


def scan(root: str, test_speakers: Sequence[Any] | None = None, dev_speakers: Sequence[Any] = (),
         label_map: str | os.PathLike | None = None) -> Iterator[AudioItem | Reject]:
    """`test_speakers` defaults to DEFAULT_TEST_SPEAKERS (one named that is not here is an error)."""
    if not os.path.isdir(root):
        raise IngestError(f"RAVDESS root not found: {root}")
    base = layout_root(root, _holds_actors)
    if base is None:
        raise IngestError(f"no Actor_01..Actor_24 folders under {root} (expected the unzipped Audio_Speech_Actors_01-24)")
    actors = sorted(n for n in os.listdir(base) if _ACTOR.match(n) and os.path.isdir(os.path.join(base, n)))
    splits = speaker_splits(actors, test_speakers, dev_speakers, DEFAULT_TEST_SPEAKERS, "RAVDESS", actor_name)
    mapping = labels.corpus_map(labels.RAVDESS, label_map)
    for actor in actors:
        folder = os.path.join(base, actor)
        for name in sorted(os.listdir(folder)):
            stem, ext = os.path.splitext(name)
            if ext.lower() in (".wav", ".mp4") and not name.startswith("."):  # not macOS's ._ files
                yield _item(os.path.join(folder, name), stem, ext.lower(), actor, splits[actor], mapping)


def _item(path: str, stem: str, ext: str, actor: str, split: str, mapping: dict) -> AudioItem | Reject:
    record_id = f"ravdess/{split}/{stem}"
    match = _NAME.match(stem)
    if not match:
        return Reject("malformed_row", path, f"file name {stem!r} is not MM-VV-EE-II-SS-RR-AA (seven two-digit fields)",
                      id=record_id)
    modality, channel, code, intensity, statement, repetition, number = match.groups()
    if modality != "03" or channel != "01" or ext != ".wav":
        what = (f"vocal channel {channel} ({'song' if channel == '02' else 'unknown'})" if modality == "03" and ext == ".wav"
                else f"modality {modality} ({MODALITIES.get(modality, 'unknown')}, {ext})")
        return Reject("modality_excluded", path, f"{what}: only the audio-only speech files (03-01-...wav) are read",
                      id=record_id)
    if f"Actor_{number}" != actor:
        return Reject("malformed_row", path, f"the name says actor {number} but the file is in {actor}/", id=record_id)
    problems = [f"{field} {value!r}" for field, value, known in (
        ("emotion", code, EMOTIONS), ("intensity", intensity, INTENSITIES), ("statement", statement, STATEMENTS),
        ("repetition", repetition, {"01", "02"})) if value not in known]
    if problems:
        return Reject("malformed_row", path, f"unknown {', '.join(problems)} in {stem!r}", id=record_id)
    raw_label = EMOTIONS[code]
    emotion, rejected = resolve_label(raw_label, mapping, "a RAVDESS", path, record_id)
    if rejected:
        return rejected
    text = STATEMENTS[statement]
    record = Record(
        id=record_id, corpus="ravdess", split=split, audio=path, text=text, raw_text=text, speaker=actor,
        emotion=emotion, raw_emotion=raw_label,
        extra={"gender": "male" if int(number) % 2 else "female", "intensity": INTENSITIES[intensity],
               "statement": int(statement), "repetition": int(repetition)},
    )
    return AudioItem(path, [record], [path])
