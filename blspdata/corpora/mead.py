"""MEAD (wywu.github.io/projects/MEAD), the audio part, as extracted from each actor's audio.tar:

    M003/audio/angry/level_1/001.m4a   M003/audio/angry/level_3/030.m4a
    M003/audio/neutral/level_1/001.m4a W009/audio/surprised/level_2/012.m4a

An actor is M or W and three digits; the emotion folders are angry, disgusted, contempt, fear,
happy, neutral, sad, surprised (fear, disgusted and contempt are not used by the recipe), each
spoken at intensity level 1-3 (neutral at level 1 only). The clips are AAC in MP4: each is
extracted once to 16 kHz mono FLAC under `audio_dir`, like MELD's.

The release holds no transcripts: the sentences are numbered per emotion (the same number under
another emotion is another sentence) and spoken from one script by every actor. Give them with
`--sentences FILE`, a CSV with the columns `emotion,number,text` and optionally `actor` (a row
with an actor wins over one without, for the actors whose takes differ):

    emotion,number,text
    angry,1,She had your dark suit in greasy wash water all year.

Without it every clip is rejected as `transcript_missing`, saying so: every task of the recipe
prompts with the transcript. MEAD has no official split: `--test-speakers` / `--dev-speakers`
name the actors held out (as for the other acted corpora), the others are train.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterator, Sequence

from blspdata import labels
from blspdata.corpora.base import (AudioItem, IngestError, csv_header, csv_rows, resolve_label, speaker_splits,
                                   undecodable_fields)
from blspdata.records import Record, Reject

_ACTOR = re.compile(r"^[MW]\d{3}$")
_LEVEL = re.compile(r"^level_(\d+)$")
_CLIP = re.compile(r"^(\d{3})\.m4a$")
SENTENCE_COLUMNS = ("emotion", "number", "text")

Sentences = dict[tuple[str, str, int], str]  # (actor or "", emotion, number) -> text


def scan(root: str, audio_dir: str | os.PathLike, sentences: str | os.PathLike | None = None,
         test_speakers: Sequence[Any] | None = None, dev_speakers: Sequence[Any] = (),
         label_map: str | os.PathLike | None = None) -> Iterator[AudioItem | Reject]:
    if not os.path.isdir(root):
        raise IngestError(f"MEAD root not found: {root}")
    actors = sorted(n for n in os.listdir(root) if _ACTOR.match(n) and os.path.isdir(os.path.join(root, n, "audio")))
    if not actors:
        raise IngestError(f"no actor folders with audio/ (M003/audio/, W009/audio/, ...) under {root}")
    splits = speaker_splits(actors, test_speakers, dev_speakers, (), "MEAD")
    mapping = labels.corpus_map(labels.MEAD, label_map)
    table: Sentences | None = None
    if sentences is not None:
        table, bad = read_sentences(str(sentences))
        yield from bad
    for actor in actors:
        split = splits[actor]
        yield from _scan_actor(root, actor, split, str(audio_dir), table, sentences, mapping)


def read_sentences(path: str) -> tuple[Sentences, list[Reject]]:
    """The `--sentences` table and rejects for its bad rows."""
    if not os.path.isfile(path):
        raise IngestError(f"sentence table not found: {path}")
    header = [h.strip().lower() for h in csv_header(path) or ()]
    missing = [c for c in SENTENCE_COLUMNS if c not in header]
    if missing:
        raise IngestError(f"{path}: the sentence table needs the columns emotion,number,text (and optionally actor); "
                          f"it lacks {', '.join(missing)}")
    table: Sentences = {}
    bad: list[Reject] = []
    for line, row, reason, detail in csv_rows(path):
        location = f"{path}:{line}"
        if row is None:
            bad.append(Reject(reason, location, f"bad sentence row: {detail}"))
            continue
        row = {k.strip().lower(): v for k, v in row.items()}
        if undecodable_fields(row):
            bad.append(Reject("undecodable_text", location, "undecodable bytes in the sentence table"))
            continue
        try:
            number = int(row["number"])
        except ValueError:
            bad.append(Reject("malformed_row", location, f"number {row['number']!r} is not an integer"))
            continue
        key = ((row.get("actor") or "").strip(), row["emotion"].strip().lower(), number)
        if key in table:
            bad.append(Reject("duplicate_id", location, f"a second text for {'/'.join(map(str, key)).lstrip('/')}"))
            continue
        table[key] = row["text"].strip()
    return table, bad


def _scan_actor(root: str, actor: str, split: str, audio_dir: str, table: Sentences | None,
                sentences_path, mapping: dict) -> Iterator[AudioItem | Reject]:
    base = os.path.join(root, actor, "audio")
    for emotion in sorted(os.listdir(base)):
        emotion_dir = os.path.join(base, emotion)
        if not os.path.isdir(emotion_dir):
            continue
        for level_name in sorted(os.listdir(emotion_dir)):
            level_dir = os.path.join(emotion_dir, level_name)
            if not os.path.isdir(level_dir):
                continue
            level = _LEVEL.match(level_name)
            for name in sorted(os.listdir(level_dir)):
                path = os.path.join(level_dir, name)
                clip = _CLIP.match(name)
                native = f"{actor}_{emotion}_{level_name}_{name.rsplit('.', 1)[0]}"
                record_id = f"mead/{split}/{native}"
                if not clip or not level:
                    yield Reject("malformed_row", path, f"expected {actor}/audio/<emotion>/level_<n>/<nnn>.m4a", id=record_id)
                    continue
                number = int(clip[1])
                canonical, rejected = resolve_label(emotion, mapping, "a MEAD", path, record_id)
                if rejected:
                    yield rejected
                    continue
                if table is None:
                    yield Reject("transcript_missing", path, "MEAD ships no transcripts: pass --sentences FILE "
                                 "(CSV emotion,number,text) to import it", id=record_id)
                    continue
                text = table.get((actor, emotion.lower(), number), table.get(("", emotion.lower(), number)))
                if text is None:
                    yield Reject("transcript_missing", path, f"no row for {emotion} sentence {number} in {sentences_path}",
                                 id=record_id)
                    continue
                record = Record(
                    id=record_id, corpus="mead", split=split,
                    audio=os.path.join(audio_dir, actor, emotion, level_name, f"{clip[1]}.flac"),
                    text=text, raw_text=text, speaker=actor, emotion=canonical, raw_emotion=emotion,
                    extra={"source_audio": path, "intensity": int(level[1]), "sentence": number,
                           "gender": "male" if actor[0] == "M" else "female"},
                )
                yield AudioItem(record.audio, [record], [path], source=path)
