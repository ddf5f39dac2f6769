"""Export a manifest to another toolkit's format: `blspdata export lhotse MANIFEST -o DIR`.

For Lhotse (and icefall, k2, NeMo-via-Lhotse users), per split of the manifest:

    DIR/<prefix>_recordings_<split>.jsonl.gz     one Recording per audio file
    DIR/<prefix>_supervisions_<split>.jsonl.gz   one SupervisionSegment per record
    DIR/<prefix>.rejects.jsonl                   rows that could not be exported, and why
    DIR/<prefix>.summary.json

named as Lhotse recipes name theirs, so `lhotse.load_manifest`, `CutSet.from_manifests` and
icefall's data modules read them as they are (`blspdata ingest lhotse` reads them back). A
supervision is the record's segment of its file (`start` = `offset`), with its text, speaker and
language, and the rest in `custom`: `emotion` (canonical), `raw_emotion`, `raw_text`, `corpus`,
`split`, and after generation `task`, `instruction`, `continuation`, `finished`, `generator`;
`extra` too when it has anything. Recording ids are `<corpus>/<split>/<file name>` (a short
hash of the path added when two files share a name); the file's length and channels come from
its header (read in `jobs` worker processes). The JSON is written directly: lhotse is not
needed to export (nor imported: it imports torch).
"""

from __future__ import annotations

import hashlib
import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from blspdata.audio import AudioError, flac_streaminfo
from blspdata.errors import BlspdataError
from blspdata.parallel import ordered_map
from blspdata.records import HashSet, JsonlWriter, Record, Reject, key_hash, read_rows, write_json
from blspdata.rejects import Rejects

_CUSTOM = ("corpus", "split", "emotion", "raw_emotion", "raw_text", "task", "instruction", "continuation",
           "finished", "generator")


class ExportError(BlspdataError):
    """An export that cannot go on (`--strict` and a bad row, a manifest that cannot be read)."""


@dataclass
class ExportSummary:
    out_dir: str
    prefix: str
    rejects: Rejects
    splits: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": self.out_dir, "prefix": self.prefix,
                "supervisions": sum(int(s["supervisions"]) for s in self.splits.values()),
                "recordings": sum(int(s["recordings"]) for s in self.splits.values()),
                "splits": {k: {**v, "hours": round(v["hours"], 4)} for k, v in sorted(self.splits.items())},
                "rejected": self.rejects.total, "rejects": self.rejects.counts()}

    def render(self) -> str:
        data = self.to_dict()
        lines = [f"{data['supervisions']} supervisions, {data['recordings']} recordings -> {self.out_dir}"]
        for name, split in data["splits"].items():
            lines.append(f"  split {name:<18} {split['supervisions']:>8} supervisions {split['recordings']:>8} "
                         f"recordings {split['hours']:>9.3f} h")
        lines.append(self.rejects.render())
        return "\n".join(lines)


# ---------------------------------------------------------------------------- workers

_last: tuple[str, Any] | None = None  # the last file read (a long recording's segments come in a row)


def _audio_info(path: str) -> tuple[int, int, int]:
    """`(frames, sample_rate, channels)` from the file's header (FLAC's STREAMINFO, else libsndfile)."""
    try:
        with open(path, "rb") as handle:
            info = flac_streaminfo(handle.read(42))
    except FileNotFoundError:
        raise AudioError("audio_missing", f"no such file: {path}") from None
    except OSError as exc:
        raise AudioError("audio_unreadable", f"{path}: {exc}") from None
    if info is not None and info[3] > 0:
        rate, channels, _, frames = info
        return frames, rate, channels
    import soundfile as sf

    try:
        header = sf.info(path)
    except Exception as exc:  # libsndfile's errors are RuntimeError/LibsndfileError/TypeError
        raise AudioError("audio_unreadable", f"{path}: {exc}") from None
    if header.frames <= 0 or header.frames >= 2**62 or header.samplerate <= 0:
        raise AudioError("audio_unreadable", f"{path}: the header does not give the length")
    return int(header.frames), int(header.samplerate), int(header.channels)


def _read_header(item: tuple[str, Record | None, Reject | None]) -> tuple[str, Record | None, Reject | None, Any]:
    """A row and its audio's `(frames, rate, channels)`, or `(reason, detail)` of the AudioError
    met reading it (the exception itself does not pickle back from a worker)."""
    global _last
    location, record, reject = item
    if record is None:
        return location, record, reject, None
    if _last is not None and _last[0] == record.audio:
        return location, record, reject, _last[1]
    try:
        info: Any = _audio_info(record.audio)
    except AudioError as exc:
        info = (exc.reason, exc.detail)
    _last = (record.audio, info)
    return location, record, reject, info


# ---------------------------------------------------------------------------- lhotse

def export_lhotse(manifest: str | os.PathLike, out_dir: str | os.PathLike, *, prefix: str | None = None,
                  jobs: int = 1, strict: bool = False, progress: bool = True) -> ExportSummary:
    """Write `manifest`'s records as Lhotse recordings and supervisions under `out_dir` (see
    the module docstring). The Python face of `blspdata export lhotse`."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ExportError(f"manifest not found: {manifest}")
    out_dir = Path(out_dir)
    prefix = prefix or manifest.name.split(".")[0]
    summary = ExportSummary(str(out_dir), prefix, Rejects(out_dir / f"{prefix}.rejects.jsonl", strict=strict, error=ExportError))
    rows = ((row.location, row.record, row.reject) for row in read_rows(manifest))

    seen = HashSet()  # the record ids met so far, as 64-bit hashes (~8 bytes a row)
    recordings: dict[tuple[str, str], str] = {}  # (split, audio path) -> recording id
    taken: dict[tuple[str, str], str] = {}       # (split, recording id) -> audio path
    bar = tqdm(desc="export lhotse", unit=" rec", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        with ExitStack() as stack:
            drop = stack.enter_context(summary.rejects).add  # --strict: raises ExportError, nothing committed
            writers: dict[tuple[str, str], JsonlWriter] = {}

            def writer(kind: str, split: str) -> JsonlWriter:
                if (kind, split) not in writers:
                    writers[kind, split] = stack.enter_context(JsonlWriter(out_dir / f"{prefix}_{kind}_{split}.jsonl.gz"))
                return writers[kind, split]

            for location, record, reject, info in ordered_map(_read_header, rows, jobs):
                bar.update(1)
                if record is None:
                    drop(reject)
                    continue
                if isinstance(info[0], str):  # the audio's header could not be read
                    drop(Reject(info[0], location, info[1], id=record.id))
                    continue
                if not seen.add(key_hash(record.id)):
                    drop(Reject("duplicate_id", location, f"{record.id} came before: a supervision id is unique", id=record.id))
                    continue
                frames, rate, channels = info
                end = record.offset + record.duration
                if end > frames / rate + 0.05:  # as ingest's END_TOLERANCE_S
                    drop(Reject("segment_out_of_range", location, f"segment ends at {end:.2f} s, after the audio "
                                f"({frames / rate:.2f} s)", id=record.id))
                    continue
                split = record.split
                stats = summary.splits.setdefault(split, {"supervisions": 0, "recordings": 0, "hours": 0.0})
                recording_id = recordings.get((split, record.audio))
                if recording_id is None:
                    recording_id = _recording_id(record, taken)
                    recordings[split, record.audio] = recording_id
                    writer("recordings", split).write(_recording(recording_id, record.audio, frames, rate, channels))
                    stats["recordings"] += 1
                writer("supervisions", split).write(_supervision(record, recording_id, channels))
                stats["supervisions"] += 1
                stats["hours"] += record.duration / 3600
        write_json(out_dir / f"{prefix}.summary.json", summary.to_dict())
    finally:
        bar.close()
    return summary


def _recording_id(record: Record, taken: dict[tuple[str, str], str]) -> str:
    name = os.path.splitext(os.path.basename(record.audio))[0] or "audio"
    recording_id = f"{record.corpus}/{record.split}/{name}"
    if taken.setdefault((record.split, recording_id), record.audio) != record.audio:  # two files, one name
        recording_id += "-" + hashlib.blake2b(record.audio.encode(), digest_size=4).hexdigest()
        taken[record.split, recording_id] = record.audio
    return recording_id


def _recording(recording_id: str, audio: str, frames: int, rate: int, channels: int) -> dict[str, Any]:
    return {"id": recording_id, "sources": [{"type": "file", "channels": list(range(channels)), "source": audio}],
            "sampling_rate": rate, "num_samples": frames, "duration": frames / rate,
            "channel_ids": list(range(channels))}


def _supervision(record: Record, recording_id: str, channels: int) -> dict[str, Any]:
    custom = {name: getattr(record, name) for name in _CUSTOM if getattr(record, name) is not None}
    if record.extra:
        custom["extra"] = record.extra
    row: dict[str, Any] = {"id": record.id, "recording_id": recording_id, "start": record.offset,
                           "duration": record.duration,
                           # our readers mix every channel down: the supervision is on all of them
                           "channel": 0 if channels == 1 else list(range(channels)),
                           "text": record.text, "language": record.language}
    if record.speaker is not None:
        row["speaker"] = record.speaker
    row["custom"] = custom
    return row
