"""`curate --executor ray`: curate's duplicate detection on Ray Data, for corpora past one machine.

The work that grows with the corpus runs on Ray; the decisions are the local executor's:

1. This process reads the inputs and runs the filters, as a local curate does (they stream),
   and puts the rows that passed them into Ray's object store, a table of CHUNK rows at a
   time: row number, task, id, group (dedup.transcript_group) and continuation.
2. Ray Data map tasks compute each row's exact key, MinHash signature and LSH band keys
   (`_sketch`, dedup.NearDuplicates: the same seeded hash functions in every process).
3. Candidates are found by grouping on the keys: every (task, band, band key) and (task,
   exact key) that two or more rows share (a `groupby(...).count()`), and the rows that hold
   one of those keys (`_involved`). A row that shares no key with another row of its task
   has no candidate and no row has it as one: it is kept, wherever it stands.
4. The involved rows come back in input order and are verified here, against their
   candidates' signatures, by the local executor's own code (dedup.duplicate_reasons, the
   flat-memory index): the first kept row of a key stays the original, a row of the
   original's own line is kept, a reject is never named an original. Restricted to the rows
   that share a key, that sequence meets exactly the index entries a local run meets, so the
   kept rows and every reason are the local executor's.

curate then reads the inputs a second time and writes kept rows, rejects and statistics as a
local run does, with the filters' verdicts of step 1 (they are not run twice) and the
duplicate verdicts of step 4. Connect to a cluster by starting this under `ray job submit` or
with RAY_ADDRESS set; without one, a local Ray instance is started.
"""

from __future__ import annotations

import sys
from array import array
from typing import Any, Iterable

import numpy as np
from tqdm import tqdm

from blspdata.curate.dedup import ExactDuplicates, NearDuplicates, _Strings, duplicate_reasons, exact_key_of_words
from blspdata.curate.filters import words
from blspdata.curate.options import CurateError, DedupSettings
from blspdata.parallel import start_ray
from blspdata.records import Record

CHUNK = 65536  # rows per table put into the object store
BATCH = 4096   # rows per map task call and per verification step (curate's batch)
EXACT_BAND = -1  # the `band` of an exact key in the key rows


class Verdicts:
    """What the Ray executor decided, by input row number (curate's count of the rows it read,
    from 0): the filters' reason, and the duplicate reason of the rows dropped as duplicates.
    Compact: 2 bytes a row for the filters, and the number and reason of each duplicate."""

    def __init__(self) -> None:
        self._codes = array("H")  # row number -> filter reason code (0: passed or not a record)
        self._names: list[str | None] = [None]
        self._code_of: dict[str, int] = {}
        self._numbers = array("q")  # duplicates' row numbers, increasing
        self._reasons = _Strings()
        self._sorted: np.ndarray | None = None

    def _filtered(self, reason: str | None) -> None:
        code = 0
        if reason:
            code = self._code_of.get(reason, 0)
            if not code:
                code = self._code_of[reason] = len(self._names)
                self._names.append(reason)
        self._codes.append(code)

    def filter_reason(self, number: int) -> str | None:
        return self._names[self._codes[number]]

    def duplicate_reason(self, number: int) -> str | None:
        if self._sorted is None:  # once every verdict is in
            self._sorted = np.array(self._numbers, dtype=np.int64)
        at = int(np.searchsorted(self._sorted, number))
        return self._reasons[at] if at < len(self._sorted) and self._sorted[at] == number else None

    def __len__(self) -> int:
        return len(self._codes)


_HASHERS: dict[tuple, NearDuplicates] = {}


def _hasher(near: tuple) -> NearDuplicates:
    """One NearDuplicates (its hash functions and word-hash cache) per worker process."""
    if near not in _HASHERS:
        _HASHERS[near] = NearDuplicates(*near)
    return _HASHERS[near]


def _sketch(batch: dict[str, np.ndarray], exact: bool, near: tuple | None) -> dict[str, np.ndarray]:
    """A map task: per row its exact key, signature and band keys (the local executor's)."""
    tokens = [words(text) for text in batch.pop("text")]
    if exact:
        batch["exact"] = np.fromiter((exact_key_of_words(t) for t in tokens), dtype=np.uint64, count=len(tokens))
    if near is not None:
        hasher = _hasher(near)
        batch["signature"] = hasher.signatures_of_words(tokens)
        batch["bands"] = hasher.band_keys(batch["signature"])
    return batch


def _keys(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A map task: one row per (task, band, key) of each row, its exact key as band -1."""
    parts, bands = [], []
    if "exact" in batch:
        parts.append(batch["exact"][:, None])
        bands.append(EXACT_BAND)
    if "bands" in batch:
        parts.append(batch["bands"])
        bands += range(batch["bands"].shape[1])
    keys = np.concatenate(parts, axis=1)
    return {"task": np.repeat(batch["task"], len(bands)), "band": np.tile(np.array(bands, dtype=np.int16), len(keys)),
            "key": keys.reshape(-1)}


def _shared_only(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A map task: the keys two or more rows hold."""
    keep = batch["count()"] > 1
    return {name: batch[name][keep] for name in ("task", "band", "key")}


_SHARED: dict[str, dict] = {}


def _involved(batch: dict[str, np.ndarray], shared: list) -> dict[str, np.ndarray]:
    """A map task: the rows that hold a key another row of their task holds too."""
    import ray

    key = shared[0].hex()
    if key not in _SHARED:
        _SHARED.clear()
        _SHARED[key] = ray.get(shared[0])
    tables = _SHARED[key]  # (task, band) -> sorted uint64 keys
    hit = np.zeros(len(batch["number"]), dtype=bool)
    for (task, band), keys in tables.items():
        rows = batch["task"] == task
        if not rows.any():
            continue
        column = batch["exact"][rows] if band == EXACT_BAND else batch["bands"][rows, band]
        at = np.minimum(np.searchsorted(keys, column), len(keys) - 1)
        hit[np.flatnonzero(rows)[keys[at] == column]] = True
    return {name: column[hit] for name, column in batch.items()}


def duplicates_on_ray(rows: Iterable[tuple[Record | None, str | None, int]], dedup: DedupSettings, *,
                      spill_dir: Any = None, progress: bool = True) -> Verdicts:
    """The Ray executor's verdicts on curate's input rows. `rows`: per input row, in order,
    (record or None where it is not one, the filters' reason or None, its group); the rows
    with a record and no reason are deduplicated."""
    import pyarrow as pa

    ray = start_ray(CurateError)
    exact = dedup.exact_dedup
    near = (dedup.near_dup_threshold, dedup.num_perm, dedup.ngram) if dedup.near_dedup else None
    verdicts = Verdicts()
    tasks: dict[str | None, int] = {}
    refs, columns = [], {"number": [], "task": [], "id": [], "group": [], "text": []}

    def put() -> None:
        refs.append(ray.put(pa.table({
            "number": pa.array(columns["number"], pa.int64()), "task": pa.array(columns["task"], pa.int32()),
            "id": pa.array(columns["id"], pa.string()), "group": pa.array(columns["group"], pa.uint64()),
            "text": pa.array(columns["text"], pa.string())})))
        for values in columns.values():
            values.clear()

    bar = tqdm(desc="curate: filters", unit=" rec", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for number, (record, reason, group) in enumerate(rows):
        bar.update(1)
        verdicts._filtered(reason)
        if record is None or reason:
            continue
        columns["number"].append(number)
        columns["task"].append(tasks.setdefault(record.task, len(tasks)))
        columns["id"].append(record.id)
        columns["group"].append(group)
        columns["text"].append(record.continuation or "")
        if len(columns["number"]) >= CHUNK:
            put()
    if columns["number"]:
        put()
    bar.close()
    if not refs or not (exact or near):
        return verdicts

    sketched = ray.data.from_arrow_refs(refs).map_batches(
        _sketch, fn_kwargs={"exact": exact, "near": near}, batch_format="numpy", batch_size=BATCH).materialize()
    shared_keys = (sketched.map_batches(_keys, batch_format="numpy", batch_size=BATCH)
                   .groupby(["task", "band", "key"]).count()
                   .map_batches(_shared_only, batch_format="numpy"))
    found: dict[tuple[int, int], list[np.ndarray]] = {}
    for batch in shared_keys.iter_batches(batch_format="numpy", batch_size=None):
        for task, band in set(zip(batch["task"].tolist(), batch["band"].tolist())):
            rows_of = (batch["task"] == task) & (batch["band"] == band)
            found.setdefault((task, band), []).append(batch["key"][rows_of].astype(np.uint64))
    del refs
    if not found:
        return verdicts  # no two rows share a key: every row is kept
    shared = ray.put({key: np.sort(np.concatenate(parts)) for key, parts in found.items()})
    del found
    involved = sketched.map_batches(_involved, fn_kwargs={"shared": [shared]}, batch_format="numpy",
                                    batch_size=BATCH).sort("number")

    indexes: dict[int, tuple[ExactDuplicates | None, NearDuplicates | None]] = {}
    for batch in involved.iter_batches(batch_format="numpy", batch_size=BATCH):
        decided: list[tuple[int, str]] = []
        for task in np.unique(batch["task"]).tolist():  # tasks are deduplicated apart
            if task not in indexes:
                indexes[task] = (ExactDuplicates() if exact else None,
                                 NearDuplicates(*near, spill_dir=spill_dir) if near else None)
            rows_of = np.flatnonzero(batch["task"] == task)
            reasons = duplicate_reasons(*indexes[task], batch["id"][rows_of].tolist(), batch["group"][rows_of].tolist(),
                                        batch["exact"][rows_of].tolist() if exact else None,
                                        batch["signature"][rows_of] if near else None,
                                        batch["bands"][rows_of] if near else None)
            decided += [(number, reason) for number, reason in zip(batch["number"][rows_of].tolist(), reasons)
                        if reason is not None]
        for number, reason in sorted(decided):  # batches come in row order; within one, by task
            verdicts._numbers.append(number)
            verdicts._reasons.append(reason)
    return verdicts
