"""TESS, the Toronto Emotional Speech Set (doi.org/10.5683/SP2/E8H2MF), as unzipped: one folder
per speaker and emotion (ROOT holds them, or holds one folder that does, such as Kaggle's
"TESS Toronto emotional speech set data/"), spelt as the release spells them:

    OAF_angry/OAF_back_angry.wav            YAF_angry/YAF_back_angry.wav
    OAF_Fear/OAF_back_fear.wav              YAF_fear/YAF_back_fear.wav
    OAF_Pleasant_surprise/OAF_back_ps.wav   YAF_pleasant_surprised/YAF_back_ps.wav
    OAF_Sad/OAF_back_sad.wav                YAF_sad/...  (also _disgust, _happy, _neutral)

Two actresses, OAF (aged 64) and YAF (aged 26), each say 200 words in the carrier phrase
"Say the word <word>" with seven emotions: a file name is `<speaker>_<word>_<emotion>`, with
emotion angry, disgust, fear, happy, neutral, ps (pleasant surprise: mapped to surprise) or sad;
disgust and fear are rejected unless `--label-map` maps them. The label is the file name's; a
file whose folder names another emotion is rejected (`label_conflict`). TESS has no official
split and only two speakers, so by default every file is train (`test_speakers YAF` holds the
younger one out).
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterator, Sequence

from blspdata import labels
from blspdata.corpora.base import AudioItem, IngestError, layout_root, resolve_label, speaker_splits
from blspdata.records import Record, Reject

AGES = {"OAF": 64, "YAF": 26}
DEFAULT_TEST_SPEAKERS: tuple[str, ...] = ()
_FOLDER = re.compile(r"^(OAF|YAF)_(.+)$", re.IGNORECASE)
_NAME = re.compile(r"^(OAF|YAF)_([A-Za-z]+)_([A-Za-z]+)$", re.IGNORECASE)


def folder_emotion(words: str) -> str:
    """A folder's emotion as a file name writes it: `Pleasant_surprise`, `pleasant_surprised` -> `ps`."""
    words = words.lower()
    return "ps" if words.startswith("pleasant") else words


def _holds_folders(folder: str) -> bool:
    return any(_FOLDER.match(n) and os.path.isdir(os.path.join(folder, n)) for n in os.listdir(folder))


def scan(root: str, test_speakers: Sequence[Any] | None = None, dev_speakers: Sequence[Any] = (),
         label_map: str | os.PathLike | None = None) -> Iterator[AudioItem | Reject]:
    """`test_speakers` defaults to DEFAULT_TEST_SPEAKERS, none (one named that is not here is an error)."""
    if not os.path.isdir(root):
        raise IngestError(f"TESS root not found: {root}")
    base = layout_root(root, _holds_folders)
    if base is None:
        raise IngestError(f"no OAF_<emotion>/ or YAF_<emotion>/ folders under {root}")
    folders = sorted(n for n in os.listdir(base) if _FOLDER.match(n) and os.path.isdir(os.path.join(base, n)))
    splits = speaker_splits({n[:3].upper() for n in folders}, test_speakers, dev_speakers, DEFAULT_TEST_SPEAKERS,
                            "TESS", lambda s: str(s).strip().upper())
    mapping = labels.corpus_map(labels.TESS, label_map)
    seen: dict[str, str] = {}
    for folder in folders:
        speaker, said = folder[:3].upper(), folder_emotion(_FOLDER.match(folder)[2])
        for name in sorted(os.listdir(os.path.join(base, folder))):
            if not name.lower().endswith(".wav") or name.startswith("."):
                continue
            path, stem = os.path.join(base, folder, name), name[:-4]
            match = _NAME.match(stem)
            if not match or match[1].upper() != speaker:
                yield Reject("malformed_row", path, f"file name {stem!r} is not {speaker}_<word>_<emotion>")
                continue
            word, raw_label = match[2].lower(), match[3].lower()
            key = f"{speaker}_{word}_{raw_label}"  # one file per speaker, word and emotion
            record_id = f"tess/{splits[speaker]}/{stem}"
            if key in seen:
                yield Reject("duplicate_id", path, f"{key} is also at {seen[key]}", id=record_id)
                continue
            seen[key] = path
            if raw_label != said:
                yield Reject("label_conflict", path, f"the name says {raw_label!r} but the file is in {folder}/",
                             id=record_id)
                continue
            emotion, rejected = resolve_label(raw_label, mapping, "a TESS", path, record_id)
            if rejected:
                yield rejected
                continue
            text = f"Say the word {word}"
            record = Record(id=record_id, corpus="tess", split=splits[speaker], audio=path, text=text, raw_text=text,
                            speaker=speaker, emotion=emotion, raw_emotion=raw_label,
                            extra={"gender": "female", "age": AGES[speaker], "word": word})
            yield AudioItem(path, [record], [path])
