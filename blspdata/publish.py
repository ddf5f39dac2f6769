"""`blspdata publish`: curated records -> a Hugging Face dataset (Arrow or Parquet shards,
a dataset card, checksums), and `blspdata verify` to check one.

Layout of DIR:
    arrow:    DIR/<config>/...          `datasets.load_from_disk("DIR/<config>")` (save_to_disk layout)
    parquet:  DIR/data/<config>/<split>-00000-of-00002.parquet + DIR/README.md
                                        `datasets.load_dataset("DIR", "<config>")`, and the Hub viewer
    both:     DIR/README.md (the dataset card), DIR/blspdata.json (rows and sha256 of every file)
Configs are the tasks (`semantic`, `emotion`); splits are `train`, `validation`, `test`: the
corpus's own split where it has one (dev-* -> validation), else a speaker-disjoint hash split.
With `--audio embed` (default) each row carries its segment as 16 kHz mono FLAC bytes in a
`datasets.Audio(sampling_rate=16000)` column (`offset` becomes 0); `--audio path` keeps paths.
`extra` and `generator` are JSON strings (their keys differ between corpora).
Everything is built in a temporary folder beside DIR and renamed into place at the end.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import shutil
import tempfile
import unicodedata
from collections import Counter, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

import orjson
import soundfile as sf

from blspdata.audio import RATE, flac_streaminfo, read_segment
from blspdata.errors import BlspdataError
from blspdata.labels import CANONICAL
from blspdata.parallel import ordered_map
from blspdata.records import (Record, Reject, SeenIds, owned_temp_prefix, read_rows,
                              remove_dead_leftovers)
from blspdata.rejects import Rejects

SPLITS = ("train", "validation", "test")
MANIFEST = "blspdata.json"
CITATION = """@inproceedings{wang2024blspemo,
  title     = {BLSP-Emo: Towards Empathetic Large Speech-Language Models},
  author    = {Wang, Chen and Liao, Minpeng and Huang, Zhongqiang and Wu, Junhong and Zong, Chengqing and Zhang, Jiajun},
  booktitle = {Proceedings of EMNLP},
  year      = {2024},
  note      = {arXiv:2406.03872}
}"""


class PublishError(BlspdataError, RuntimeError):
    pass


# ---------------------------------------------------------------------------- rows

def features(audio: str):
    import datasets

    return datasets.Features({
        "id": datasets.Value("string"), "corpus": datasets.Value("string"), "split": datasets.Value("string"),
        "audio": datasets.Audio(sampling_rate=RATE) if audio == "embed" else datasets.Value("string"),
        "offset": datasets.Value("float64"), "duration": datasets.Value("float64"),
        "sample_rate": datasets.Value("int32"), "text": datasets.Value("string"), "raw_text": datasets.Value("string"),
        "speaker": datasets.Value("string"), "language": datasets.Value("string"),
        "emotion": datasets.ClassLabel(names=list(CANONICAL)), "raw_emotion": datasets.Value("string"),
        "extra": datasets.Value("string"), "task": datasets.Value("string"), "instruction": datasets.Value("string"),
        "continuation": datasets.Value("string"), "finished": datasets.Value("bool"),
        "generator": datasets.Value("string"),
    })


def target_split(record: Record, validation: float, test: float) -> str:
    """The corpus's own split where it has one, else a stable speaker-disjoint hash split."""
    name = record.split.lower()
    if name.startswith(("dev", "val")):
        return "validation"
    if name.startswith("test"):
        return "test"
    if name.startswith("train"):
        return "train"
    key = f"{record.corpus}/{record.speaker or record.id}".encode()
    u = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2**64
    return "test" if u < test else "validation" if u < test + validation else "train"


def _as_is(record: Record) -> bool:
    """Whether the file is exactly what would be embedded (16 kHz mono 16-bit FLAC, the
    utterance is the whole file): most LibriSpeech-like corpora, and MELD after ingest. The
    FLAC STREAMINFO block in the first 42 bytes says what the file holds."""
    if not record.audio.endswith(".flac") or record.offset != 0:
        return False
    try:
        with open(record.audio, "rb") as handle:
            head = handle.read(42)
    except OSError:
        return False  # let the normal path report it
    info = flac_streaminfo(head)
    if info is None:
        return False
    rate, channels, bits, frames = info
    return (rate, channels, bits) == (RATE, 1, 16) and abs(frames / RATE - record.duration) <= 1 / RATE


def _cut_and_encode(job: tuple[str, float, float] | None) -> tuple[bytes, float] | tuple[str, str] | None:
    """In a worker: a segment decoded, downmixed, resampled and FLAC-encoded, as (payload,
    seconds), or (reason, detail) when it cannot be; None for a row with no audio work (its
    file is copied as it is, or only its path is published). Only this crosses the pool's
    pipes: the row itself stays in the writing process."""
    if job is None:
        return None
    path, offset, duration = job
    try:
        samples = read_segment(path, offset, duration)
    except Exception as exc:  # missing file, corrupt audio, bad seek
        return "audio_unreadable", f"{type(exc).__name__}: {exc}"
    if samples.size == 0:
        return "audio_empty", "the segment has no samples"
    buffer = io.BytesIO()
    sf.write(buffer, samples, RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue(), len(samples) / RATE


def _encode_row(row: dict[str, Any], record: Record, audio_mode: str, audio_root: str | None, as_is: bool,
                encoded: tuple | None) -> dict[str, Any] | Reject:
    """A record -> a row of the published dataset, with its audio: the path (`--audio path`),
    the file to copy as it is (`_read_from`, read by the shard writer), or `encoded` from
    `_cut_and_encode`."""
    out = dict(row)
    out["generator"] = json.dumps(record.generator, sort_keys=True) if record.generator is not None else None
    if audio_mode == "path":
        out["extra"] = json.dumps(record.extra, ensure_ascii=False, sort_keys=True)
        out["audio"] = os.path.relpath(record.audio, audio_root) if audio_root else record.audio
        return out
    payload = None
    if as_is:  # already 16 kHz mono 16-bit FLAC and the whole file: copied as it is, by the
        out["_read_from"] = record.audio  # writing process (its bytes need not cross the pool's pipes)
    elif isinstance(encoded[0], str):
        reason, detail = encoded
        return Reject(reason, record.audio, detail, id=record.id, record=row)
    else:
        payload, out["duration"] = encoded
    out["audio"] = {"bytes": payload, "path": f"{record.id.replace('/', '__')}.flac"}
    out["extra"] = json.dumps({**record.extra, "source_audio": record.audio, "source_offset": record.offset},
                              ensure_ascii=False, sort_keys=True)
    out.update(offset=0.0, sample_rate=RATE)
    return out


def _audio_column(rows: list[dict], audio_type):
    """The rows' `audio` struct column (bytes, path) built from one buffer: encoded payloads are
    copied into it, and the files copied as they are (`fd` from _ShardWriter.add) read into it
    directly; each fd is closed here."""
    import pyarrow as pa

    sizes = [audio["size"] if "fd" in audio else len(audio["bytes"]) for audio in (row["audio"] for row in rows)]
    offsets = [0, *itertools.accumulate(sizes)]
    buffer = pa.allocate_buffer(offsets[-1])
    view = memoryview(buffer).cast("B")  # pyarrow gives format "b"; bytes are "B"
    try:
        for row, start, stop in zip(rows, offsets, offsets[1:]):
            audio = row["audio"]
            if "fd" not in audio:
                view[start:stop] = audio["bytes"]
                continue
            got = os.preadv(audio["fd"], [view[start:stop]], 0)
            while got < stop - start:  # a short read (rare): go on from where it stopped
                more = os.preadv(audio["fd"], [view[start + got:stop]], got)
                if more == 0:
                    raise PublishError(f"{audio['source']}: shrank while it was published "
                                       f"({got} of {stop - start} bytes)")
                got += more
    finally:
        for row in rows:
            if "fd" in row["audio"]:
                os.close(row["audio"]["fd"])
    data = pa.Array.from_buffers(pa.binary(), len(rows), [None, pa.array(offsets, pa.int32()).buffers()[1], buffer])
    paths = pa.array([row["audio"]["path"] for row in rows], pa.string())
    return pa.StructArray.from_arrays([data, paths], fields=list(audio_type))


class _HashingFile:
    """A shard file written front to back, whose SHA-256 (blspdata.json's checksum) is computed
    from the bytes as they go by, in the hasher thread (hashlib lets go of the GIL), so no shard
    is read back. The bytes waiting to be hashed are held (pyarrow hands over its buffers
    without a copy) up to `AHEAD` bytes; beyond, the writer waits for the hasher."""

    AHEAD = 64 << 20

    def __init__(self, handle, hasher) -> None:
        self.handle, self.hasher, self.digest = handle, hasher, hashlib.sha256()
        self.waiting: deque = deque()  # (future, bytes) in the order written
        self.waiting_bytes = 0
        self.closed = False

    def write(self, data) -> int:
        written = self.handle.write(data)
        size = memoryview(data).nbytes
        self.waiting.append((self.hasher.submit(self.digest.update, data), size))  # one thread: in order
        self.waiting_bytes += size
        while self.waiting_bytes > self.AHEAD:
            future, size = self.waiting.popleft()
            future.result()
            self.waiting_bytes -= size
        return written

    def tell(self) -> int:
        return self.handle.tell()

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.handle.close()

    def hexdigest(self) -> str:
        for future, _ in self.waiting:
            future.result()
        self.waiting.clear()
        return self.digest.hexdigest()


class _ShardWriter:
    """One (config, split) written straight to Arrow IPC stream shards (the save_to_disk
    layout) or Parquet shards (the Hub layout), cut at `max_bytes`: each row is written once,
    with no intermediate dataset and no re-encoding pass."""

    def __init__(self, folder: Path, split: str, fmt: str, audio: str, max_bytes: int, hasher):
        self.folder, self.split, self.fmt, self.audio, self.max_bytes = folder, split, fmt, audio, max_bytes
        self.hasher = hasher  # the one thread that hashes every shard as it is written
        self.checksums: dict[Path, str] = {}  # final shard path -> its SHA-256, hashed as it was written
        self.closed = False
        self.features = features(audio)
        self.schema = self.features.arrow_schema
        self.names = self.schema.names  # (a new list at each call of the property)
        self.pending: list[dict] = []
        self.pending_bytes = 0
        self.shards: list[Path] = []
        self.rows = self.bytes = self.shard_bytes = 0
        self.writer = None
        self.digest = hashlib.blake2b(digest_size=16)  # of the rows' ids and continuations: state.json's fingerprint
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, row: dict[str, Any]) -> Reject | None:
        """Queue one encoded row; a row whose audio is copied as it is (`_read_from`) has its file
        opened now (a Reject if it cannot be) and read at the flush, straight into the batch's
        audio buffer (one copy: never a Python bytes object per file)."""
        source = row.get("_read_from")
        audio = row.get("audio")
        if source is not None:
            try:
                fd = os.open(source, os.O_RDONLY)
            except OSError as exc:
                return Reject("audio_unreadable", source, f"{type(exc).__name__}: {exc}", id=row.get("id"))
            size = os.fstat(fd).st_size
            audio = {"fd": fd, "size": size, "source": source, "path": audio["path"]}
        emotion = row.get("emotion")
        row = {name: row.get(name) for name in self.names}
        self.digest.update(orjson.dumps([row.get("id"), row.get("task"), row.get("continuation")]))
        row["emotion"] = None if emotion is None else CANONICAL.index(emotion)
        row["audio"] = audio
        self.pending.append(row)
        if isinstance(audio, dict):
            self.pending_bytes += audio["size"] if "fd" in audio else len(audio["bytes"] or b"")
        else:
            self.pending_bytes += 256
        if len(self.pending) >= 64 or self.pending_bytes >= self.max_bytes // 8:  # shards overshoot by 1/8 at most
            self._flush()
        return None

    def discard(self) -> None:
        """Close the files opened for the rows still queued (`add`), which no flush will read:
        what a failed publish leaves (a Python caller would run out of file descriptors)."""
        rows, self.pending, self.pending_bytes = self.pending, [], 0
        for row in rows:
            if isinstance(row["audio"], dict) and "fd" in row["audio"]:
                os.close(row["audio"]["fd"])

    def _flush(self) -> None:
        import pyarrow as pa

        if not self.pending:
            return
        rows, self.pending, self.pending_bytes = self.pending, [], 0
        columns = []
        for field in self.schema:
            if field.name == "audio" and self.audio == "embed":
                columns.append(_audio_column(rows, field.type))
            else:
                columns.append(pa.array([row[field.name] for row in rows], type=field.type))
        batch = pa.RecordBatch.from_arrays(columns, schema=self.schema)
        if self.writer is not None and self.shard_bytes + batch.nbytes > self.max_bytes:
            self._finish_shard()
        if self.writer is None:
            self._open()
        self.writer.write_batch(batch) if self.fmt == "arrow" else self.writer.write_batch(batch, row_group_size=100)
        self.rows += batch.num_rows
        self.shard_bytes += batch.nbytes
        self.bytes += batch.nbytes

    def _finish_shard(self) -> None:
        self.writer.close()
        self.writer = None
        self.sink.close()
        self.checksums[self.shards[-1]] = self.sink.hexdigest()

    def _open(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.folder / f"{self.split}-{len(self.shards):05d}.part"
        self.shards.append(path)
        self.shard_bytes = 0
        self.sink = _HashingFile(open(path, "wb"), self.hasher)
        stream = pa.PythonFile(self.sink, mode="w")
        self.writer = (pa.ipc.new_stream(stream, self.schema) if self.fmt == "arrow"
                       else pq.ParquetWriter(stream, self.schema))

    def close(self) -> None:
        """Finish the last shard and give the shards their final names (and, for Arrow, the
        two small JSON files `datasets.load_from_disk` reads). Closing twice is closing once."""
        from datasets.info import DatasetInfo
        from datasets.utils.py_utils import asdict  # what save_to_disk uses: it serialises Features

        if self.closed:
            return
        self.closed = True
        self._flush()
        if self.writer is None:
            self._open()  # an empty split still gets one (empty) shard
        self._finish_shard()
        count = len(self.shards)
        if self.fmt == "parquet":
            finals = [self.folder / f"{self.split}-{index:05d}-of-{count:05d}.parquet" for index in range(count)]
        else:
            target = self.folder / self.split
            target.mkdir()
            finals = [target / f"data-{index:05d}-of-{count:05d}.arrow" for index in range(count)]
        for part, final in zip(self.shards, finals):
            os.replace(part, final)
            self.checksums[final] = self.checksums.pop(part)
        if self.fmt == "parquet":
            return
        # From the content, not the (temporary) build path: two publishes of one input are byte-identical.
        fingerprint = hashlib.blake2b(f"{self.folder.name}/{self.split}:{self.rows}:{self.bytes}:"
                                      f"{self.digest.hexdigest()}".encode(), digest_size=8).hexdigest()
        state = {"_data_files": [{"filename": p.name} for p in finals], "_fingerprint": fingerprint,
                 "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
                 "_output_all_columns": False, "_split": self.split}
        (target / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
        info = asdict(DatasetInfo(features=self.features))
        (target / "dataset_info.json").write_text(json.dumps({k: info[k] for k in sorted(info)}, indent=2))


# ---------------------------------------------------------------------------- publish

def publish(inputs: Iterable[str | Path], out: str | Path, *, fmt: str = "arrow", audio: str = "embed",
            audio_root: str | Path | None = None, max_shard_size: str = "500MB", validation: float = 0.05,
            test: float = 0.05, jobs: int = 1, license: str = "other", overwrite: bool = False,
            progress: bool = True, strict: bool = False) -> dict[str, Any]:
    """Publish curated records as a Hugging Face dataset in `out`. The Python face of
    `blspdata publish`; returns the rows per config and split, the rejects per reason and the
    summary block the other stages print too (`rejected N (see OUT.rejects.jsonl):`).
    `strict`: the first reject stops it with PublishError instead, nothing written."""
    if fmt not in ("arrow", "parquet"):
        raise PublishError(f"--format must be arrow or parquet, got {fmt!r}")
    if audio not in ("embed", "path"):
        raise PublishError(f"--audio must be embed or path, got {audio!r}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise PublishError(f"{out} exists; choose another --out or pass --overwrite")
    inputs = [Path(p) for p in inputs]
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:  # before any work: the rows are read in one pass, a missing last input would stop it late
        raise PublishError(f"input not found: {', '.join(missing)}")
    max_bytes = _parse_size(max_shard_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_leftovers(out.parent, out.name)  # build folders of killed publishes (only dead PIDs')
    work = Path(tempfile.mkdtemp(prefix=owned_temp_prefix(out.name), suffix=".build", dir=out.parent))
    writers: dict[tuple[str, str], _ShardWriter] = {}
    try:
        # Rejects are written as they come; the file is committed once the build is whole, just
        # before the dataset is put in place (a failure on the way commits neither).
        with Rejects(out.with_name(out.name + ".rejects.jsonl"), strict=strict, error=PublishError) as rejects:
            build = work / "dataset"
            build.mkdir()
            provenance = {"corpora": Counter(), "hours": Counter(), "generators": {}, "curate": []}
            root = str(audio_root) if audio_root else None
            # One pass: each row is checked, given its split and written to that split's shards
            # while the workers encode the audio of the rows after it. `queued` holds the rows
            # whose audio work is in flight, in input order (bounded by ordered_map).
            queued: deque = deque()
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish-sha256") as hasher:
                def audio_work():
                    for key, row, record, as_is in _rows(inputs, validation, test, audio, provenance):
                        queued.append((key, row, record, as_is))
                        yield None if key is None or audio == "path" or as_is else (record.audio, record.offset,
                                                                                 record.duration)

                from tqdm import tqdm

                total = _count_lines(inputs) if progress else None
                with tqdm(total=total, desc="publish", unit=" rows", disable=not progress) as bar:
                    for encoded in ordered_map(_cut_and_encode, audio_work(), jobs, chunk_size=16,
                                               trivial=lambda job: job is None):
                        key, row, record, as_is = queued.popleft()
                        bar.update(1)
                        if key is None:  # not a record, or a repeated (task, id): `row` is its Reject
                            rejects.add(row)
                            continue
                        if key not in writers:
                            folder = build / key[0] if fmt == "arrow" else build / "data" / key[0]
                            writers[key] = _ShardWriter(folder, key[1], fmt, audio, max_bytes, hasher)
                        result = _encode_row(row, record, audio, root, as_is, encoded)
                        if not isinstance(result, Reject):
                            result = writers[key].add(result)  # a file that cannot be opened: a Reject
                        if result is not None:
                            rejects.add(result)
                counts: dict[str, dict[str, int]] = defaultdict(dict)
                sizes: dict[str, dict[str, int]] = defaultdict(dict)
                for config, split in sorted(writers, key=lambda key: (key[0], SPLITS.index(key[1]))):
                    writer = writers[(config, split)]
                    writer.close()
                    counts[config][split], sizes[config][split] = writer.rows, writer.bytes
                shard_sums = {path: digest for writer in writers.values() for path, digest in writer.checksums.items()}
            if fmt == "arrow":
                for config in counts:
                    (build / config / "dataset_dict.json").write_text(json.dumps({"splits": list(counts[config])}))
            _write_card(build, counts, sizes, features(audio), fmt, audio, license, provenance, rejects)
            files = {str(p.relative_to(build)): shard_sums.get(p) or _sha256(p)
                     for p in sorted(build.rglob("*")) if p.is_file()}
            (build / MANIFEST).write_text(json.dumps({"format": fmt, "audio": audio, "rows": counts, "files": files},
                                                     indent=2, sort_keys=True) + "\n")
        if out.exists():
            trash = out.with_name(f"{owned_temp_prefix(out.name)}old")
            os.replace(out, trash)
            os.replace(build, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(build, out)
    finally:
        for writer in writers.values():
            writer.discard()  # after a failure, the files of the rows still queued (none after a close)
        shutil.rmtree(work, ignore_errors=True)
    return {"rows": dict(counts), "rejected": rejects.reasons, "summary": rejects.render()}


def _rows(inputs: list[Path], validation: float, test: float, audio: str, provenance: dict):
    """The input rows in order, as (key, row, record, as_is): key is the row's (config, split)
    and `as_is` whether its file is copied as it is (its FLAC header is read once, here); a row
    that is not a generated record, or repeats a (task, id), comes as (None, its Reject, None,
    False). Counts the provenance of the card as it goes."""
    seen = SeenIds()  # (task, id): ids repeat across tasks, never within one
    for path in inputs:
        stats = _stats_beside(path)
        if stats:
            provenance["curate"].append(stats)
        for item in read_rows(path):
            location, record, reject = item.location, item.record, item.reject  # malformed_row, invalid_row:<field>
            if record is not None and (record.task not in ("semantic", "emotion") or record.continuation is None):
                reject = Reject("malformed_row", location, "not a generated record (no task/continuation)",
                                id=record.id)
            elif record is not None:
                reject = seen.repeat(record, location)  # duplicate_id
            if reject is not None:
                reject.record = None  # the rejects file names the row; the curated input still has it
                yield None, reject, None, False
                continue
            provenance["corpora"][f"{record.task}/{record.corpus}"] += 1
            provenance["hours"][f"{record.task}/{record.corpus}"] += record.duration / 3600
            if record.generator is not None:
                provenance["generators"].setdefault(orjson.dumps(record.generator, option=orjson.OPT_SORT_KEYS),
                                                    record.generator)
            yield ((record.task, target_split(record, validation, test)), record.to_dict(), record,
                   audio == "embed" and _as_is(record))


def _count_lines(inputs: list[Path]) -> int | None:
    """The rows to come, for the progress bar (None when an input is compressed)."""
    total = 0
    for path in inputs:
        if path.suffix == ".gz":
            return None
        with open(path, "rb") as handle:
            total += sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
    return total


def _stats_beside(path: Path) -> dict | None:
    for suffix in (".jsonl.gz", ".jsonl"):
        if path.name.endswith(suffix):
            stats = path.with_name(path.name[: -len(suffix)] + ".stats.json")
            if stats.is_file():
                return json.loads(stats.read_text())
    return None


def _parse_size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    value = text.strip().upper()
    for unit, factor in units.items():
        if value.endswith(unit):
            number = value[: -len(unit)].strip()
            break
    else:
        number, factor = value, 1
    try:
        size = int(float(number) * factor)
    except ValueError:
        raise PublishError(f"--max-shard-size: expected a size such as 500MB, got {text!r}") from None
    if size <= 0:
        raise PublishError(f"--max-shard-size must be positive, got {text!r}")
    return size


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- the card

_CARD_SAFE = frozenset(" .,;-/+=?%@#{}")


def card_text(value: Any) -> str:
    """Record text (corpus names, generator fields, reasons) as it may appear in the card's
    Markdown and the HTML the Hub renders from it: one line (control, format and line-break
    characters become spaces), and every character Markdown, HTML or the Hub's LaTeX could read
    as markup (`<`, `|`, `*`, `[`, `$`, backticks, ...) written as a numeric character reference,
    which renders as the character itself and is never markup. Letters, digits, spaces and
    `.,;-/+=?%@#{}` stay, so the card still reads; the caller never puts it at a line's start.
    The YAML header is written by huggingface_hub's YAML dumper, which quotes what it must."""
    out = []
    for char in str(value):
        category = unicodedata.category(char)
        if category[0] in "CZ":
            out.append(" ")
        elif char.isalnum() or char in _CARD_SAFE:
            out.append(char)
        else:
            out.append(f"&#{ord(char)};")
    return "".join(out)


def _code(value: Any) -> str:
    """card_text() in monospace (an HTML <code>: a Markdown code span would show the references
    as typed, and a backtick in the value would end it)."""
    return f"<code>{card_text(value)}</code>"


def _write_card(build: Path, counts: dict[str, dict[str, int]], sizes: dict[str, dict[str, int]], features_,
                fmt: str, audio: str, license: str, provenance: dict, rejects: Rejects) -> None:
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from huggingface_hub import DatasetCard, DatasetCardData

    from blspdata.generate import prompts

    configs, infos = [], {}
    for config, splits_ in counts.items():
        if fmt == "parquet":
            configs.append({"config_name": config, "data_files": [
                {"split": split, "path": f"data/{config}/{split}-*"} for split in splits_]})
        splits = SplitDict()
        for split, rows in splits_.items():
            splits.add(SplitInfo(name=split, num_examples=rows, num_bytes=sizes[config][split]))
        infos[config] = DatasetInfo(features=features_, splits=splits, config_name=config)
    card_data = DatasetCardData(license=license, language=["en"], task_categories=["audio-classification",
                                "automatic-speech-recognition", "text-generation"],
                                tags=["speech", "emotion", "speech-language-model", "blsp-emo", "blspdata"],
                                pretty_name="BLSP-Emo style continuation data", configs=configs or None)
    DatasetInfosDict(infos).to_dataset_card_data(card_data)

    lines = ["# BLSP-Emo style continuation data", "",
             "Speech utterances paired with an LLM's continuation of their transcript, built with "
             "[blspdata](https://github.com/) the BLSP-Emo way: `semantic` rows continue an ASR transcript "
             "(stage 1, semantic alignment); `emotion` rows continue it in the tone of its emotion label "
             "(stage 2, emotion alignment).", "", "## Contents", "",
             "| config / corpus | rows | hours |", "| --- | ---: | ---: |"]
    for key, n in sorted(provenance["corpora"].items()):
        lines.append(f"| {card_text(key)} | {n} | {provenance['hours'][key]:.2f} |")
    lines += ["", "| config | split | rows |", "| --- | --- | ---: |"]
    for config, splits_ in counts.items():
        lines += [f"| {config} | {split} | {rows} |" for split, rows in splits_.items()]
    lines += ["", "## How it was made", ""]
    for generator in provenance["generators"].values():
        if not isinstance(generator, dict):  # a user's own continuations: any JSON value, shown as it is
            lines.append(f"- generator: {_code(json.dumps(generator, sort_keys=True, ensure_ascii=False)[:500])}")
            continue
        lines.append(f"- generator: backend {_code(generator.get('backend'))}, model {_code(generator.get('model'))}, "
                     f"sampling {_code(json.dumps(generator.get('sampling'), sort_keys=True))}")
        prompt = generator.get("prompt") if isinstance(generator.get("prompt"), dict) else {}
        try:
            if prompt.get("id") not in prompts.builtin_names():  # a row's id is never read as a file path
                raise prompts.PromptError("not a shipped template")
            template = prompts.load(prompt["id"])
            same = " (the shipped template)" if template.sha256 == prompt.get("sha256") else " (a modified template)"
            lines += [f"  - prompt {_code(prompt.get('id'))} sha256 {_code(prompt.get('sha256'))}{same}:",
                      f"    system: {_code(template.system)}", f"    user: {_code(template.user)}"]
        except prompts.PromptError:
            lines.append(f"  - prompt {_code(prompt.get('id'))} sha256 {_code(prompt.get('sha256'))} (a user template)")
    for stats in provenance["curate"]:
        lines.append(f"- curate: {card_text(stats.get('kept'))} of {card_text(stats.get('input'))} kept; dropped: "
                     + ", ".join(f"{card_text(k)} {card_text(v)}" for k, v in (stats.get("rejects") or {}).items()))
    if rejects.total:
        lines.append(f"- publish: {rejects.total} rows dropped (" + ", ".join(
            f"{card_text(k)} {v}" for k, v in rejects.reasons.items()) + ")")
    lines += ["", f"Audio: {'16 kHz mono FLAC, cut to the utterance' if audio == 'embed' else 'paths (not embedded)'}. "
              "Emotion labels: " + ", ".join(f"{i} {n}" for i, n in enumerate(CANONICAL)) + " (null for semantic rows). "
              "`extra` and `generator` are JSON strings.", "", "## Load it", "", "```python"]
    for config in counts:
        lines.append(f'ds = datasets.load_dataset("DIR_OR_HUB_ID", "{config}")' if fmt == "parquet"
                     else f'ds = datasets.load_from_disk("DIR/{config}")')
    lines += ["```", "", "## Citation", "", "```bibtex", CITATION, "```", ""]
    DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines)).save(build / "README.md")


# ---------------------------------------------------------------------------- verify

def verify(directory: str | Path, sample: int = 8) -> list[str]:
    """Problems found in a published dataset (empty: it checks out)."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return [f"{manifest_path} missing: not a blspdata dataset"]
    manifest = json.loads(manifest_path.read_text())
    problems = []
    present = {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()} - {MANIFEST}
    for name, digest in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif _sha256(path) != digest:
            problems.append(f"{name}: checksum differs from publish time")
    problems += [f"{name}: not listed at publish time" for name in sorted(present - set(manifest["files"]))]
    # Parquet is read through a datasets cache: a temporary one, not the user's; one a killed
    # verify left behind is removed by the next (owned names carry host and PID).
    remove_dead_leftovers(tempfile.gettempdir(), "verify")
    cache = Path(tempfile.mkdtemp(prefix=owned_temp_prefix("verify")))
    try:
        return problems + _verify_rows(directory, manifest, cache, sample)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _verify_rows(directory: Path, manifest: dict, cache: Path, sample: int) -> list[str]:
    """Each config opens with `datasets`, its row counts match the card and the manifest, and
    a sample of embedded audio decodes at 16 kHz."""
    import datasets
    from huggingface_hub import DatasetCard

    problems = []
    card = DatasetCard.load(directory / "README.md").data.to_dict() if (directory / "README.md").is_file() else {}
    card_rows = {}
    entries = card.get("dataset_info") or []
    for entry in [entries] if isinstance(entries, dict) else entries:  # one config: a mapping, not a list
        for split in entry.get("splits", []):
            card_rows[(entry.get("config_name"), split["name"])] = split["num_examples"]
    for config, splits in manifest["rows"].items():
        try:
            loaded = (datasets.load_from_disk(str(directory / config)) if manifest["format"] == "arrow"
                      else datasets.load_dataset(str(directory), config, cache_dir=str(cache)))
        except Exception as exc:
            problems.append(f"{config}: datasets cannot open it: {type(exc).__name__}: {exc}")
            continue
        for split, expected in splits.items():
            got = len(loaded[split]) if split in loaded else 0
            if got != expected or card_rows.get((config, split), expected) != expected:
                problems.append(f"{config}/{split}: {got} rows, the card says {card_rows.get((config, split))}, "
                                f"publish wrote {expected}")
            if manifest["audio"] == "embed" and split in loaded and got:
                step = max(1, got // sample)
                for index in range(0, got, step)[:sample]:
                    try:
                        decoded = loaded[split][index]["audio"]
                        if decoded["sampling_rate"] != RATE or len(decoded["array"]) == 0:
                            problems.append(f"{config}/{split}[{index}]: audio is not 16 kHz or empty")
                    except Exception as exc:
                        problems.append(f"{config}/{split}[{index}]: audio does not decode: {exc}")
    return problems


# ---------------------------------------------------------------------------- the Hub

def push_to_hub(directory: str | Path, repo_id: str, private: bool = False, dry_run: bool = False) -> list[str]:
    """Upload a published dataset folder; returns the files (all of them, with `dry_run`).
    The token comes from HF_TOKEN or `huggingface-cli login`; it is never printed."""
    directory = Path(directory)
    files = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    if dry_run:
        return files
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_large_folder(repo_id=repo_id, folder_path=str(directory), repo_type="dataset",
                                print_report=False)  # resumable: reruns skip what is already up
    except OfflineModeIsEnabled:
        raise PublishError("HF_HUB_OFFLINE is set: nothing was uploaded; the local dataset is intact") from None
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", "?")
        hint = " (log in with `huggingface-cli login` or set HF_TOKEN)" if status in (401, 403) else ""
        raise PublishError(f"the Hub refused the upload to {repo_id}: HTTP {status}{hint}; the local dataset "
                           "is intact") from None
    except (*_transport_errors(), OSError) as exc:
        from huggingface_hub import constants

        raise PublishError(f"cannot reach the Hub at {constants.ENDPOINT} ({type(exc).__name__}); nothing was uploaded; "
                           "the local dataset is intact") from None
    return files


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The connection errors of whichever HTTP client huggingface_hub uses: `httpx` up to
    0.x/1.x, `httpx2` from 2.x (its own classes, not httpx's), `requests` before 1.0. A real
    unreachable endpoint raises these, not the hub's own HfHubHTTPError."""
    import importlib

    found = []
    for module, name in (("httpx", "HTTPError"), ("httpx2", "HTTPError"), ("requests", "RequestException")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)
