"""LibriSpeech (openslr.org/12), as extracted from its tarballs:

    LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
    LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac

A `.trans.txt` line is the utterance id, one space, the upper-case transcript:

    103-1240-0000 CHAPTER ONE MISSUS RACHEL LYNDE IS SURPRISED MISSUS RACHEL LYNDE

ROOT may be the `LibriSpeech` folder (holding the splits) or one split folder.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

from blspdata.corpora.base import AudioItem, IngestError, read_text_lines
from blspdata.records import Record, Reject

SPLITS = ("train-clean-100", "train-clean-360", "train-other-500",
          "dev-clean", "dev-other", "test-clean", "test-other")


def _subdirs(path: str) -> list[str]:
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if e.is_dir())


def _looks_like_split(path: str) -> bool:
    """A split folder holds numeric speaker folders."""
    return any(name.isdigit() for name in _subdirs(path))


def find_splits(root: str) -> list[tuple[str, str]]:
    """`[(split_name, path)]` under ROOT, in sorted order."""
    if _looks_like_split(root):
        return [(os.path.basename(os.path.normpath(root)), root)]
    return [(name, os.path.join(root, name)) for name in _subdirs(root)
            if _looks_like_split(os.path.join(root, name))]


def scan(root: str | os.PathLike, splits: Sequence[str] | None = None) -> Iterator[AudioItem | Reject]:
    root = str(root)
    if not os.path.isdir(root):
        raise IngestError(f"LibriSpeech root not found: {root}")
    found = find_splits(root)
    if not found:
        raise IngestError(f"no LibriSpeech split folders (<split>/<speaker>/<chapter>/) under {root}")
    if splits:
        names = {name for name, _ in found}
        unknown = [s for s in splits if s not in names]
        if unknown:
            raise IngestError(f"split(s) {', '.join(unknown)} not found under {root}; "
                              f"found: {', '.join(sorted(names))}")
        found = [(name, path) for name, path in found if name in splits]
    for split, split_dir in found:
        for speaker in _subdirs(split_dir):
            for chapter in _subdirs(os.path.join(split_dir, speaker)):
                yield from _scan_chapter(split, os.path.join(split_dir, speaker, chapter), speaker, chapter)


def _scan_chapter(split: str, folder: str, speaker: str, chapter: str) -> Iterator[AudioItem | Reject]:
    with os.scandir(folder) as entries:
        files = {e.name for e in entries if e.is_file()}
    flacs = {name[:-5] for name in files if name.endswith(".flac")}
    trans = os.path.join(folder, f"{speaker}-{chapter}.trans.txt")
    seen: set[str] = set()
    if os.path.basename(trans) in files:
        for number, line, error in read_text_lines(trans):
            location = f"{trans}:{number}"
            if not line.strip():
                continue
            utt, _, raw_text = line.strip().partition(" ")
            record_id = f"librispeech/{split}/{utt}"
            if error:
                seen.add(utt)  # its audio is accounted for by this reject
                yield Reject("undecodable_text", location, error, id=record_id)
                continue
            if not utt.startswith(f"{speaker}-{chapter}-") or not raw_text.strip():
                yield Reject("malformed_row", location, f"expected '<speaker>-<chapter>-<n> TEXT', got {line!r}",
                             id=record_id if utt else None)
                continue
            if utt in seen:
                yield Reject("duplicate_id", location, f"{utt} listed twice", id=record_id)
                continue
            seen.add(utt)
            audio = os.path.join(folder, f"{utt}.flac")
            if utt not in flacs:
                yield Reject("audio_missing", location, f"no such file: {audio}", id=record_id)
                continue
            record = Record(id=record_id, corpus="librispeech", split=split, audio=audio,
                            text=raw_text, raw_text=raw_text, speaker=speaker,
                            extra={"chapter": chapter})
            yield AudioItem(audio, [record], [location])
    for utt in sorted(flacs - seen):
        audio = os.path.join(folder, f"{utt}.flac")
        yield Reject("transcript_missing", audio, f"no line for {utt} in {trans}",
                     id=f"librispeech/{split}/{utt}")
