"""ESD, the Emotional Speech Dataset (github.com/HLTSingapore/Emotional-Speech-Data), as unzipped
("Emotion Speech Dataset/", which ROOT may be or hold):

    0011/0011.txt
    0011/Angry/train/0011_000401.wav        0011/Angry/evaluation/0011_000351.wav
    0011/Angry/test/0011_000371.wav         0011/Happy/...  Neutral/  Sad/  Surprise/

or, in copies that dropped the split folders, `0011/Angry/0011_000351.wav`. Speakers 0001-0010
speak Mandarin, 0011-0020 English. `<speaker>.txt` has one tab-separated line per utterance,
its id, its text and its emotion, in English for the English speakers and in Chinese for the
Chinese ones (中立 neutral, 生气 angry, 快乐 happy, 伤心 sad, 惊喜 surprise):

    0011_000351	The nine the eggs, I keep.	Angry
    0001_000001	打开windows功能。	中立

The label is the emotion folder the wav sits in (Angry, Happy, Neutral, Sad, Surprise: the
canonical five); a line whose emotion disagrees with it is rejected (`label_conflict`). The
split is the release's own: its train/evaluation/test folders (evaluation -> dev). Without
them it is read from the utterance number as those folders are cut: each speaker's 350
utterances per emotion are numbered in one run, the first 20 of a run are evaluation, the next
30 test, the other 300 train. A text file that is not UTF-8 is read as GB18030 (older Chinese
editors), line by line.
"""

from __future__ import annotations

import os
import re
from typing import Iterator, Sequence

from blspdata import labels
from blspdata.corpora.base import AudioItem, IngestError, resolve_label
from blspdata.records import Record, Reject

SPLITS = ("train", "dev", "test")
FOLDER_SPLITS = {"train": "train", "evaluation": "dev", "test": "test"}
CHINESE_EMOTIONS = {"中立": "Neutral", "生气": "Angry", "快乐": "Happy", "伤心": "Sad", "惊喜": "Surprise"}
PER_EMOTION = 350  # utterances per speaker and emotion; the first 20 evaluation, the next 30 test
_SPEAKER = re.compile(r"^\d{4}$")
_UTT = re.compile(r"^(\d{4})_(\d{6})$")


def _speakers_root(root: str) -> str | None:
    """ROOT itself when it holds speaker folders, else the one folder below it that does."""
    for folder in [root] + [os.path.join(root, n) for n in sorted(os.listdir(root))]:
        if os.path.isdir(folder) and any(_SPEAKER.match(n) and os.path.isdir(os.path.join(folder, n))
                                         for n in os.listdir(folder)):
            return folder
    return None


def split_of_number(number: int) -> str:
    """The split the release's folders put utterance `number` (1-based, per speaker) in."""
    place = (number - 1) % PER_EMOTION
    return "dev" if place < 20 else "test" if place < 50 else "train"


def scan(root: str, splits: Sequence[str] | None = None,
         label_map: str | os.PathLike | None = None) -> Iterator[AudioItem | Reject]:
    if not os.path.isdir(root):
        raise IngestError(f"ESD root not found: {root}")
    bad = [s for s in (splits or ()) if s not in SPLITS]
    if bad:
        raise IngestError(f"unknown ESD split(s) {', '.join(bad)}; choose from {', '.join(SPLITS)}")
    base = _speakers_root(root)
    if base is None:
        raise IngestError(f"no speaker folders 0001..0020 under {root} (expected 'Emotion Speech Dataset')")
    mapping = labels.corpus_map(labels.ESD, label_map)
    wanted = set(splits or SPLITS)
    for speaker in sorted(n for n in os.listdir(base) if _SPEAKER.match(n) and os.path.isdir(os.path.join(base, n))):
        yield from _scan_speaker(os.path.join(base, speaker), speaker, wanted, mapping)


def _wavs(folder: str) -> Iterator[tuple[str, str, str | None]]:
    """`(path, emotion folder, release split or None)` for each wav of one speaker."""
    for emotion in sorted(os.listdir(folder)):
        emotion_dir = os.path.join(folder, emotion)
        if not os.path.isdir(emotion_dir):
            continue
        for name in sorted(os.listdir(emotion_dir)):
            path = os.path.join(emotion_dir, name)
            if os.path.isdir(path) and name.lower() in FOLDER_SPLITS:
                for inner in sorted(os.listdir(path)):
                    if inner.lower().endswith(".wav"):
                        yield os.path.join(path, inner), emotion, FOLDER_SPLITS[name.lower()]
            elif name.lower().endswith(".wav"):
                yield path, emotion, None


def _read_lines(path: str) -> Iterator[tuple[int, str, str]]:
    """`(number, line, error)`: UTF-8, or GB18030 for a line that is not UTF-8."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                text, error = raw.decode("utf-8"), ""
            except UnicodeDecodeError as exc:
                try:
                    text, error = raw.decode("gb18030"), ""
                except UnicodeDecodeError:
                    text = raw.decode("utf-8", errors="replace")
                    error = f"undecodable bytes ({exc.reason} at byte {exc.start}; not GB18030 either)"
            yield number, text.rstrip("\r\n"), error


def _line_id(utt: str) -> str | None:
    """The id of a text line's record (its split from the utterance number), None if it names none."""
    match = _UTT.match(utt)
    return f"esd/{split_of_number(int(match[2]))}/{utt}" if match and int(match[2]) else None


def _transcripts(folder: str, speaker: str) -> tuple[str | None, dict[str, tuple[str, str, str]], list[Reject]]:
    """The speaker's text file, `{utt: (text, emotion word, location)}` and rejects for its bad lines."""
    path = os.path.join(folder, f"{speaker}.txt")
    if not os.path.isfile(path):
        others = sorted(n for n in os.listdir(folder) if n.endswith(".txt"))
        if len(others) != 1:
            return None, {}, []
        path = os.path.join(folder, others[0])
    lines: dict[str, tuple[str, str, str]] = {}
    bad: list[Reject] = []
    for number, line, error in _read_lines(path):
        location = f"{path}:{number}"
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")]
        while len(fields) > 3 and not fields[-1]:
            fields.pop()  # trailing tabs
        utt = fields[0]
        record_id = _line_id(utt)
        if error:
            bad.append(Reject("undecodable_text", location, error, id=record_id))
            continue
        if len(fields) != 3 or not _UTT.match(utt):
            bad.append(Reject("malformed_row", location, f"expected 'UTT<TAB>text<TAB>emotion', got {line!r}", id=record_id))
            continue
        if utt in lines:
            bad.append(Reject("duplicate_id", location, f"{utt} has two lines (first at {lines[utt][2]})", id=record_id))
            continue
        lines[utt] = (fields[1], fields[2], location)
    return path, lines, bad


def _scan_speaker(folder: str, speaker: str, wanted: set[str], mapping: dict) -> Iterator[AudioItem | Reject]:
    language = "zh" if int(speaker) <= 10 else "en"
    txt, transcripts, bad = _transcripts(folder, speaker)
    yield from bad
    seen: dict[str, str] = {}
    for path, emotion_folder, folder_split in _wavs(folder):
        utt = os.path.basename(path)[:-4]
        match = _UTT.match(utt)
        number = int(match[2]) if match else None
        split = folder_split or (split_of_number(number) if number else "train")
        record_id = f"esd/{split}/{utt}"
        if split not in wanted:
            seen.setdefault(utt, path)
            continue
        if not match or match[1] != speaker:
            yield Reject("malformed_row", path, f"file name {utt!r} is not {speaker}_NNNNNN.wav", id=record_id)
            continue
        if utt in seen:
            yield Reject("duplicate_id", path, f"{utt} is also at {seen[utt]}", id=record_id)
            continue
        seen[utt] = path
        emotion, rejected = resolve_label(emotion_folder, mapping, "an ESD", path, record_id)
        if rejected:
            yield rejected
            continue
        if utt not in transcripts:
            where = txt or f"{os.path.join(folder, speaker + '.txt')} (no such file)"
            yield Reject("transcript_missing", path, f"no line for {utt} in {where}", id=record_id)
            continue
        text, said, location = transcripts[utt]
        said_folder = CHINESE_EMOTIONS.get(said, said)
        if said_folder.lower() != emotion_folder.lower():
            yield Reject("label_conflict", location, f"the line says {said!r} but the wav is in {emotion_folder}/: {path}",
                         id=record_id)
            continue
        record = Record(
            id=record_id, corpus="esd", split=split, audio=path, text=text, raw_text=text, speaker=speaker,
            language=language, emotion=emotion, raw_emotion=emotion_folder,
            extra={"split_from": "folder" if folder_split else "number", "transcript_emotion": said},
        )
        yield AudioItem(path, [record], [location])
    for utt in sorted(set(transcripts) - set(seen)):
        record_id = _line_id(utt)
        if record_id and record_id.split("/")[1] in wanted:
            yield Reject("audio_missing", transcripts[utt][2], f"no {utt}.wav in any emotion folder of {folder}", id=record_id)
