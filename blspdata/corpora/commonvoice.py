"""Mozilla Common Voice (commonvoice.mozilla.org), any version and locale, as extracted:

    cv-corpus-17.0-2024-03-15/en/train.tsv   dev.tsv   test.tsv   validated.tsv   other.tsv ...
    cv-corpus-17.0-2024-03-15/en/clips/common_voice_en_19664034.mp3

A TSV has a header and one tab-separated line per clip (columns vary by version; older ones
lack `segment`, newer ones add `sentence_id`, `variant`, `sentence_domain`; only `client_id`,
`path` and `sentence` are needed):

    client_id	path	sentence	up_votes	down_votes	age	gender	accents	locale	segment
    0a1b2c...e9f	common_voice_en_19664034.mp3	He said "hello" and left.	2	0	twenties	male	England English	en

Common Voice writes these files without CSV quoting (csv.QUOTE_NONE): a `"` is part of the
sentence, never the start of a quoted field, so a line is split at its tabs and nothing else
(a CSV reader would run an unmatched quote into the lines after it). Some early releases
wrote a sentence that itself held quotes in CSV form (`\"\"\"Good-bye,\"\" said the boy.\"`): such
a field, wholly quoted with its inner quotes doubled, is unquoted in `text` (`raw_text` keeps it).

The speaker is `client_id`, the language the locale folder (`en`, `zh-CN`, `pt-BR`). The MP3s
are read where they lie (libsndfile decodes MP3; its length is exact for LAME-tagged files as
Common Voice ships), not converted: FLAC would take several times the space. The clips/
folder holds the clips of every TSV (other, invalidated, reported too), so a clip no chosen TSV
names is not reported.
"""

from __future__ import annotations

import os
import re
from typing import Iterator, Sequence

from blspdata.corpora.base import AudioItem, IngestError, read_text_lines
from blspdata.records import HashSet, Record, Reject, key_hash

SPLITS = ("train", "dev", "test", "validated", "other", "invalidated")
DEFAULT_SPLITS = ("train", "dev", "test")  # validated holds these three (and more): not by default
REQUIRED = ("client_id", "path", "sentence")
EXTRA = ("up_votes", "down_votes", "age", "gender", "accents", "accent", "variant", "segment",
         "sentence_id", "sentence_domain")
_QUOTED = re.compile(r'^"((?:[^"]|"")*)"$')


def _locale_dirs(root: str) -> list[str]:
    """ROOT if it is one locale's folder (it has clips/ or a split TSV), else its locale folders."""
    def is_locale(folder: str) -> bool:
        return os.path.isdir(os.path.join(folder, "clips")) or any(
            os.path.isfile(os.path.join(folder, f"{s}.tsv")) for s in SPLITS)

    if is_locale(root):
        return [root]
    return [os.path.join(root, n) for n in sorted(os.listdir(root)) if is_locale(os.path.join(root, n))]


def unquote(sentence: str) -> str:
    """A sentence an early release wrote in CSV form, wholly quoted with its quotes doubled."""
    match = _QUOTED.match(sentence)
    return match[1].replace('""', '"') if match and '""' in sentence else sentence


def scan(root: str, splits: Sequence[str] | None = None,
         locales: Sequence[str] | None = None) -> Iterator[AudioItem | Reject]:
    """`splits` default to DEFAULT_SPLITS; `locales` to every locale folder under ROOT."""
    if not os.path.isdir(root):
        raise IngestError(f"Common Voice root not found: {root}")
    wanted = tuple(splits or DEFAULT_SPLITS)
    bad = [s for s in wanted if s not in SPLITS]
    if bad:
        raise IngestError(f"unknown Common Voice split(s) {', '.join(bad)}; choose from {', '.join(SPLITS)}")
    folders = _locale_dirs(root)
    if not folders:
        raise IngestError(f"no Common Voice locale folder (clips/ and train.tsv, dev.tsv, ...) under {root}")
    if locales:
        have = {os.path.basename(os.path.normpath(f)): f for f in folders}
        absent = [loc for loc in locales if loc not in have]
        if absent:
            raise IngestError(f"locale(s) {', '.join(absent)} not found under {root} (it has {', '.join(have)})")
        folders = [have[loc] for loc in locales]
    tables = [(folder, split, os.path.join(folder, f"{split}.tsv")) for folder in folders for split in wanted]
    if not any(os.path.isfile(tsv) for _, _, tsv in tables):
        raise IngestError(f"none of {', '.join(f'{s}.tsv' for s in wanted)} found under {root}")
    for folder, split, tsv in tables:
        if os.path.isfile(tsv):
            locale = os.path.basename(os.path.normpath(folder))
            yield from _scan_tsv(tsv, split, locale, os.path.join(folder, "clips"))
        elif splits:  # named, but this locale lacks it: said, not skipped in silence
            yield Reject("transcript_missing", tsv, f"no {split}.tsv in {folder} (--splits names it)")


def _scan_tsv(tsv: str, split: str, locale: str, clips: str) -> Iterator[AudioItem | Reject]:
    header: list[str] | None = None
    seen = HashSet()  # the clip names met so far, as 64-bit hashes (~8 bytes a row)
    for number, line, error in read_text_lines(tsv):
        location = f"{tsv}:{number}"
        if header is None:
            header = line.split("\t")
            absent = [c for c in REQUIRED if c not in header]
            if absent:
                yield Reject("malformed_row", location, f"header lacks column(s) {', '.join(absent)}")
                return
            continue
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            yield Reject("malformed_row", location, f"expected {len(header)} tab-separated fields, found {len(fields)}")
            continue
        row = dict(zip(header, fields))
        name = row["path"].strip()
        stem = name[:-4] if name.endswith(".mp3") else os.path.splitext(name)[0]
        record_id = f"commonvoice/{split}/{stem}" if stem else None
        if not stem or "/" in name:
            yield Reject("malformed_row", location, f"path {name!r} is not a clip file name", id=record_id)
            continue
        if error:
            yield Reject("undecodable_text", location, error, id=record_id)
            continue
        if not seen.add(key_hash(name)):
            yield Reject("duplicate_id", location, f"{name} has two lines in {os.path.basename(tsv)}", id=record_id)
            continue
        audio = os.path.join(clips, name)
        if not os.path.isfile(audio):
            yield Reject("audio_missing", location, f"no such file: {audio}", id=record_id)
            continue
        raw_text = row["sentence"]
        record = Record(
            id=record_id, corpus="commonvoice", split=split, audio=audio, text=unquote(raw_text.strip()),
            raw_text=raw_text, speaker=row["client_id"].strip() or None, language=locale,
            extra={key: row[key] for key in EXTRA if row.get(key)},
        )
        yield AudioItem(audio, [record], [location])
