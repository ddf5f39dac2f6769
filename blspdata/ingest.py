"""Ingest: corpus importers -> one manifest, with rejects and a summary.

Each importer in `blspdata/corpora/` scans a corpus as distributed and yields `AudioItem`s
(an audio file and the records that point into it) and `Reject`s (inputs that cannot
become records: a malformed line, an excluded label). This module does the rest, the same
for every corpus: reads each audio header in worker processes (converting first where a
corpus needs it, e.g. MELD's mp4), fills in durations and sample rates, normalises the
transcripts, and writes

    OUT                      the manifest (JSONL, gzipped if OUT ends in .gz), atomically
    OUT.rejects.jsonl        one row per dropped input: reason, source location, detail
    OUT.summary.json         records, hours per split and label, rejects per reason

Output order is the importer's order (sorted), so identical input gives identical output.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from tqdm import tqdm

from blspdata.corpora.base import AudioItem, IngestError
from blspdata.audio import AudioError, extract_to_flac, probe, write_flac
from blspdata.corpora.text import get_normalizer
from blspdata.parallel import ordered_map
from blspdata.records import JsonlWriter, Record, Reject, sidecar, write_json
from blspdata.rejects import Rejects

# A segment may end this far past the audio's end (rounding in corpus metadata).
END_TOLERANCE_S = 0.05
# `duration` of a record whose utterance is its whole audio file (filled in from the header).
WHOLE_FILE = 0.0


@dataclass
class Summary:
    output: str
    records: int = 0
    seconds: float = 0.0
    splits: dict[str, dict[str, float]] = field(default_factory=dict)
    emotions: Counter = field(default_factory=Counter)
    emotion_seconds: Counter = field(default_factory=Counter)
    rejects: Rejects | None = None  # OUT.rejects.jsonl and its reasons (default: from `output`)

    def __post_init__(self) -> None:
        if self.rejects is None:
            self.rejects = Rejects(sidecar(self.output, "rejects.jsonl"))

    def add(self, record: Record) -> None:
        self.records += 1
        self.seconds += record.duration
        split = self.splits.setdefault(record.split, {"records": 0, "hours": 0.0})
        split["records"] += 1
        split["hours"] += record.duration / 3600
        if record.emotion is not None:
            self.emotions[record.emotion] += 1
            self.emotion_seconds[record.emotion] += record.duration

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "records": self.records,
            "hours": round(self.seconds / 3600, 4),
            "splits": {k: {"records": v["records"], "hours": round(v["hours"], 4)}
                       for k, v in sorted(self.splits.items())},
            "emotions": dict(sorted(self.emotions.items())),
            "emotion_hours": {k: round(v / 3600, 4) for k, v in sorted(self.emotion_seconds.items())},
            "rejected": self.rejects.total,
            "rejects": self.rejects.counts(),
        }

    def render(self) -> str:
        lines = [f"{self.records} records, {self.seconds / 3600:.3f} h -> {self.output}"]
        for name, split in sorted(self.splits.items()):
            lines.append(f"  split {name:<18} {split['records']:>8} records {split['hours']:>9.3f} h")
        for label, count in sorted(self.emotions.items()):
            lines.append(f"  emotion {label:<16} {count:>8} records {self.emotion_seconds[label] / 3600:>9.3f} h")
        lines.append(self.rejects.render())
        return "\n".join(lines)


# ---------------------------------------------------------------------------- workers

_normalize: Callable[[str], str] | None = None


def _init_worker(normalizer: str, all_caps: bool) -> None:
    global _normalize
    _normalize = get_normalizer(normalizer, all_caps)


def process_item(item: AudioItem | Reject) -> list[Record | Reject]:
    """Read one audio header (extracting first if needed) and finish its records."""
    if isinstance(item, Reject):
        return [item]
    assert _normalize is not None, "worker not initialised"
    try:
        if item.source is not None:
            extract_to_flac(item.source, item.audio)
        elif item.data is not None:
            write_flac(item.data, item.audio, item.stamp_ns, name=item.locations[0])
        frames, rate = probe(item.audio)
    except AudioError as exc:
        return [Reject(exc.reason, loc, exc.detail, id=r.id) for r, loc in zip(item.records, item.locations)]
    total = frames / rate
    out: list[Record | Reject] = []
    for record, location in zip(item.records, item.locations):
        record.sample_rate = rate
        if record.duration == WHOLE_FILE:
            record.offset, record.duration = 0.0, total
        elif record.offset + record.duration > total + END_TOLERANCE_S:
            out.append(Reject(
                "segment_out_of_range", location,
                f"segment {record.offset:.2f}+{record.duration:.2f} s ends after the audio ({total:.2f} s)",
                id=record.id,
            ))
            continue
        record.text = _normalize(record.text)
        if not any(ch.isalnum() for ch in record.text):  # "" or only punctuation: "[LAUGHTER]." -> "."
            out.append(Reject("text_empty", location, f"no letter or digit left after normalisation: {record.raw_text!r}", id=record.id))
            continue
        out.append(record)
    return out


# ---------------------------------------------------------------------------- driver

def run(items: Iterable[AudioItem | Reject], out: str | os.PathLike, *, jobs: int = 1,
        strict: bool = False, normalizer: str = "light", progress: bool = True,
        desc: str = "ingest", all_caps: bool = False) -> Summary:
    """Turn an importer's items into the manifest `out`, its rejects and its summary.

    `all_caps`: the corpus writes transcripts in capitals, so `light` lower-cases them."""
    get_normalizer(normalizer)  # fail fast on a bad name, before any work
    # The importer's own checks (its root, options, columns) run up to its first item: let them
    # fail or warn before there is a progress bar or an output file.
    items = iter(items)
    first = next(items, None)
    items = itertools.chain([first] if first is not None else [], items)
    summary = Summary(output=str(out), rejects=Rejects(sidecar(out, "rejects.jsonl"), strict=strict, error=IngestError))
    bar = tqdm(desc=desc, unit=" files", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        # The inner writer commits first: the manifest, then its rejects, then the summary, so a
        # failure part way never leaves a new summary beside an old manifest.
        with summary.rejects as rejects, JsonlWriter(out) as records:
            for results in ordered_map(process_item, items, jobs, initializer=_init_worker, initargs=(normalizer, all_caps)):
                bar.update(1)
                for result in results:
                    if isinstance(result, Reject):
                        rejects.add(result)  # --strict: raises IngestError, nothing committed
                    else:
                        summary.add(result)
                        records.write(result.to_dict())
                if progress and bar.n % 256 == 0:
                    bar.set_postfix(records=summary.records, rejected=rejects.total, refresh=False)
        write_json(sidecar(out, "summary.json"), summary.to_dict())
    finally:
        bar.close()  # also on errors, so an error message starts on its own line
    return summary


def ingest_corpus(corpus: str, root: str | os.PathLike, out: str | os.PathLike, *, jobs: int = 1,
                  strict: bool = False, normalizer: str = "light", progress: bool = True,
                  **options: Any) -> Summary:
    """Import `corpus` at `root` into the manifest `out`. The Python face of `blspdata ingest`.

    `options` go to the corpus's `scan` (e.g. `splits=` for LibriSpeech, `subset=` for
    GigaSpeech, `label_map=` for the emotion corpora).
    """
    from blspdata.corpora import importer

    kind = importer(corpus)
    options = {**options, **kind.fixed}
    if kind.writes_audio and options.get("audio_dir") is None:
        options["audio_dir"] = sidecar(out, "audio")
    items = kind.scan(str(root), **options)
    return run(items, out, jobs=jobs, strict=strict, normalizer=normalizer, progress=progress, desc=corpus,
               all_caps=kind.all_caps)
