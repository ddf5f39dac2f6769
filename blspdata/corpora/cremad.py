"""CREMA-D (github.com/CheyneyComputerScience/CREMA-D), as cloned (with `git lfs pull`) or
downloaded; ROOT holds AudioWAV/, or is it:

    CREMA-D/AudioWAV/1001_DFA_ANG_XX.wav
    CREMA-D/AudioWAV/1091_WSI_SAD_LO.wav
    CREMA-D/VideoDemographics.csv          (optional: the actors' sex)

A file name is `<actor>_<sentence>_<emotion>_<level>`: actor 1001-1091; one of twelve
sentences by code; emotion ANG DIS FEA HAP NEU SAD (fear and disgust rejected unless
`--label-map` maps them); level LO, MD, HI or XX (unspecified). The text is the sentence's:

    IEO It's eleven o'clock               TIE That is exactly what happened
    IOM I'm on my way to the meeting      IWW I wonder what this is about
    TAI The airplane is almost full       MTI Maybe tomorrow it will be cold
    IWL I would like a new alarm clock    ITH I think I have a doctor's appointment
    DFA Don't forget a jacket             ITS I think I've seen this before
    TSI The surface is slick              WSI We'll stop in a couple of minutes

VideoDemographics.csv, where present, gives each actor's sex (into `extra["gender"]`):

    ActorID,Age,Sex,Race,Ethnicity
    1001,51,Male,Caucasian,Not Hispanic

The labels are the ones the actors were asked to portray (the file names), not the crowd's
perceived ones (processedResults/). CREMA-D has no official split: the test split is actors
1082-1091 (the last ten of 91), the rest train (`test_speakers`, `dev_speakers`). A clone
without `git lfs pull` holds pointer files, not audio: that stops the run with the fix.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterator, Sequence

from blspdata import labels
from blspdata.corpora.base import AudioItem, IngestError, csv_rows, layout_root, resolve_label, speaker_splits
from blspdata.records import Record, Reject

SENTENCES = {
    "IEO": "It's eleven o'clock", "TIE": "That is exactly what happened", "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about", "TAI": "The airplane is almost full", "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock", "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket", "ITS": "I think I've seen this before", "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}
LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
DEFAULT_TEST_SPEAKERS = tuple(str(actor) for actor in range(1082, 1092))
_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
_LFS = b"version https://git-lfs"


def _holds_wavs(folder: str) -> bool:
    return any(_NAME.match(n[:-4]) for n in os.listdir(folder) if n.lower().endswith(".wav"))


def _lfs_pointer(path: str) -> bool:
    """A Git LFS pointer (`version https://git-lfs.github.com/spec/v1`, ...) where a wav should be."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(_LFS)) == _LFS
    except OSError:
        return False


def _sexes(root: str) -> tuple[dict[str, str], list[Reject]]:
    """`{actor: "male" | "female"}` from VideoDemographics.csv (if there), and rejects for its bad rows."""
    path = os.path.join(root, "VideoDemographics.csv")
    sexes: dict[str, str] = {}
    bad: list[Reject] = []
    if not os.path.isfile(path):
        return sexes, bad
    for line, row, reason, detail in csv_rows(path):
        if row is None or not {"ActorID", "Sex"} <= set(row):
            bad.append(Reject(reason or "malformed_row", f"{path}:{line}", detail or "no ActorID/Sex columns"))
            continue
        sexes[row["ActorID"].strip()] = row["Sex"].strip().lower()
    return sexes, bad


def scan(root: str, test_speakers: Sequence[Any] | None = None, dev_speakers: Sequence[Any] = (),
         label_map: str | os.PathLike | None = None) -> Iterator[AudioItem | Reject]:
    """`test_speakers` defaults to DEFAULT_TEST_SPEAKERS (one named that is not here is an error)."""
    if not os.path.isdir(root):
        raise IngestError(f"CREMA-D root not found: {root}")
    audio_dir = os.path.join(root, "AudioWAV")
    audio_dir = audio_dir if os.path.isdir(audio_dir) else layout_root(root, _holds_wavs)
    if audio_dir is None:
        raise IngestError(f"no AudioWAV/ folder of <actor>_<sentence>_<emotion>_<level>.wav files under {root}")
    names = sorted(n for n in os.listdir(audio_dir) if n.lower().endswith(".wav") and not n.startswith("."))
    if names and _lfs_pointer(os.path.join(audio_dir, names[0])):
        raise IngestError(f"{audio_dir} holds Git LFS pointer files, not audio (a clone without LFS): "
                          "run `git lfs pull` in the CREMA-D clone, then ingest again")
    actors = {m[1] for m in (_NAME.match(n[:-4]) for n in names) if m}
    splits = speaker_splits(actors, test_speakers, dev_speakers, DEFAULT_TEST_SPEAKERS, "CREMA-D")
    mapping = labels.corpus_map(labels.CREMA_D, label_map)
    sexes, bad = _sexes(os.path.normpath(os.path.join(audio_dir, os.pardir)))  # AudioWAV's parent
    yield from bad
    for name in names:
        path, stem = os.path.join(audio_dir, name), name[:-4]
        match = _NAME.match(stem)
        if not match:
            yield Reject("malformed_row", path, f"file name {stem!r} is not <actor>_<sentence>_<emotion>_<level> "
                                                "(e.g. 1001_DFA_ANG_XX)")
            continue
        actor, sentence, raw_label, level = match.groups()
        record_id = f"cremad/{splits[actor]}/{stem}"
        if sentence not in SENTENCES or level not in LEVELS:
            unknown = [f"{what} {value!r}" for what, value, known in (("sentence", sentence, SENTENCES),
                                                                      ("level", level, LEVELS)) if value not in known]
            yield Reject("malformed_row", path, f"unknown {', '.join(unknown)} in {stem!r}", id=record_id)
            continue
        emotion, rejected = resolve_label(raw_label, mapping, "a CREMA-D", path, record_id)
        if rejected:
            yield rejected
            continue
        text = SENTENCES[sentence]
        extra = {"sentence": sentence, "intensity": LEVELS[level]}
        if actor in sexes:
            extra["gender"] = sexes[actor]
        record = Record(id=record_id, corpus="cremad", split=splits[actor], audio=path, text=text, raw_text=text,
                        speaker=actor, emotion=emotion, raw_emotion=raw_label, extra=extra)
        yield AudioItem(path, [record], [path])
