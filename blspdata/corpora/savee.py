"""SAVEE (Surrey Audio-Visual Expressed Emotion, kahlan.eps.surrey.ac.uk/savee), the audio
part as distributed (ROOT holds AudioData/, or is it):

    AudioData/DC/a01.wav  ...  AudioData/DC/su15.wav     (also JE/, JK/, KL/)

or Kaggle's flat copy, every speaker in one folder: `ALL/DC_a01.wav`. Four male speakers (DC,
JE, JK, KL); the letters before the number are the emotion: a anger, d disgust, f fear,
h happiness, n neutral, sa sadness, su surprise (disgust and fear rejected unless
`--label-map` maps them); the number is the sentence (15 per emotion, 30 for neutral).

AudioData holds no transcripts, and every speaker read the same sentence for a code, so the
texts come from a table you give (`--sentences FILE`), one line per code, or per speaker and
code for a line that only holds for one speaker, text after a tab or a space:

    a01	She had your dark suit in greasy wash water all year.
    DC_n02	...

A wav whose code the table lacks (or every wav, with no table) is rejected as
`transcript_missing`. SAVEE has no official split: the test split is speaker KL, the rest
train (`test_speakers`, `dev_speakers`).
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterator, Sequence

from blspdata import labels
from blspdata.corpora.base import AudioItem, IngestError, layout_root, read_text_lines, resolve_label, speaker_splits
from blspdata.records import Record, Reject

SPEAKERS = ("DC", "JE", "JK", "KL")
DEFAULT_TEST_SPEAKERS = ("KL",)
_CODE = re.compile(r"^(sa|su|[adfhn])(\d\d)$")
_FLAT = re.compile(r"^(DC|JE|JK|KL)_(.+)$")
_LINE = re.compile(r"^(?:(?P<speaker>DC|JE|JK|KL)_)?(?P<code>(?:sa|su|[adfhn])\d\d)\s+(?P<text>\S.*)$")


def _holds_speakers(folder: str) -> bool:
    return any(os.path.isdir(os.path.join(folder, s)) for s in SPEAKERS)


def _holds_flat(folder: str) -> bool:
    return any(_FLAT.match(n) and n.lower().endswith(".wav") for n in os.listdir(folder))


def _wavs(root: str) -> list[tuple[str, str, str]]:
    """`(path, speaker, code)` for every wav, in either layout."""
    audio = os.path.join(root, "AudioData")
    base = audio if os.path.isdir(audio) else layout_root(root, _holds_speakers)
    if base is not None:
        return [(os.path.join(base, speaker, name), speaker, name[:-4]) for speaker in SPEAKERS
                if os.path.isdir(os.path.join(base, speaker))
                for name in sorted(os.listdir(os.path.join(base, speaker)))
                if name.lower().endswith(".wav") and not name.startswith(".")]
    flat = layout_root(root, _holds_flat)
    if flat is None:
        raise IngestError(f"no AudioData/<DC|JE|JK|KL>/ folders (or DC_a01.wav-style files) under {root}")
    found = []
    for name in sorted(os.listdir(flat)):
        match = _FLAT.match(name[:-4])
        if name.lower().endswith(".wav") and not name.startswith("."):
            found.append((os.path.join(flat, name), match[1] if match else "", match[2] if match else name[:-4]))
    return found


def read_sentences(path: str | os.PathLike) -> tuple[dict[str, tuple[str, str]], list[Reject]]:
    """`{"a01" or "DC_a01": (text, location)}` from a `--sentences` table, and rejects for its bad lines."""
    path = str(path)
    if not os.path.isfile(path):
        raise IngestError(f"sentences table not found: {path}")
    table: dict[str, tuple[str, str]] = {}
    bad: list[Reject] = []
    for number, line, error in read_text_lines(path):
        location = f"{path}:{number}"
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line.strip())
        if error or not match:
            bad.append(Reject("undecodable_text" if error else "malformed_row", location,
                              error or f"expected 'CODE text' (e.g. 'a01 She had ...'), got {line!r}"))
            continue
        key = f"{match['speaker']}_{match['code']}" if match["speaker"] else match["code"]
        if key in table:
            bad.append(Reject("duplicate_id", location, f"{key} has two lines (first at {table[key][1]})"))
            continue
        table[key] = (match["text"].strip(), location)
    return table, bad


def scan(root: str, sentences: str | os.PathLike | None = None, test_speakers: Sequence[Any] | None = None,
         dev_speakers: Sequence[Any] = (), label_map: str | os.PathLike | None = None) -> Iterator[AudioItem | Reject]:
    """`test_speakers` defaults to DEFAULT_TEST_SPEAKERS (one named that is not here is an error)."""
    if not os.path.isdir(root):
        raise IngestError(f"SAVEE root not found: {root}")
    table, bad = read_sentences(sentences) if sentences is not None else ({}, [])
    wavs = _wavs(root)
    splits = speaker_splits({s for _, s, _ in wavs if s}, test_speakers, dev_speakers, DEFAULT_TEST_SPEAKERS, "SAVEE",
                            lambda s: str(s).strip().upper())
    mapping = labels.corpus_map(labels.SAVEE, label_map)
    yield from bad
    for path, speaker, code in wavs:
        match = _CODE.match(code)
        if not speaker or not match:
            yield Reject("malformed_row", path, f"file name {os.path.basename(path)!r} is not <emotion letters><NN>.wav "
                                                "(a01, sa03, su15) in a DC/JE/JK/KL folder, or DC_a01.wav")
            continue
        record_id = f"savee/{splits[speaker]}/{speaker}_{code}"
        raw_label = match[1]
        emotion, rejected = resolve_label(raw_label, mapping, "a SAVEE", path, record_id)
        if rejected:
            yield rejected
            continue
        text, location = table.get(f"{speaker}_{code}") or table.get(code) or (None, None)
        if text is None:
            why = f"no line for {code} in {sentences}" if sentences is not None else \
                "SAVEE's audio has no transcripts: give them with --sentences FILE (lines 'a01 <text>')"
            yield Reject("transcript_missing", path, why, id=record_id)
            continue
        record = Record(id=record_id, corpus="savee", split=splits[speaker], audio=path, text=text, raw_text=text,
                        speaker=speaker, emotion=emotion, raw_emotion=raw_label,
                        extra={"gender": "male", "sentence": code})
        yield AudioItem(path, [record], [location])
