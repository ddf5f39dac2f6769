"""Exact and near-duplicate detection over continuations, streaming, in flat memory.

Exact: a 64-bit hash of the normalised text (NFKC, straight apostrophes, lower case, words only).
Near: MinHash over word n-gram shingles + LSH banding. Signatures are computed in numpy
for a whole batch of records at once (the hot path); the LSH index is one table per band,
keyed by an int that folds the band's signature slots together. The first record seen keeps
its place; a later one whose band key equals an indexed record's in some band, and whose
estimated Jaccard similarity (the share of equal signature slots) reaches the threshold, is
a duplicate of it.

Memory (issue 14: 10 million records on one machine). No index holds a Python object per
record: keys live in sorted numpy runs (`_KeyTable`, 12 bytes an entry: a 64-bit key and a
32-bit slot), ids packed in one bytearray (`_Strings`), groups in an `array("Q")`. Per
indexed record the near index keeps its 16 band keys (192 bytes at the defaults), its group
and its id; its signature (num_perm x 4 bytes) is spilled to an unnamed temporary file once
more than `memory_rows` are indexed, and read back only for a candidate. Per exact original:
its key and slot (12 bytes), group (8) and id. Lookups are made for a whole batch at once
against the index as it was before the batch (`duplicate_reasons`); the batch's own rows meet
each other through a small dict of the keys the batch shares, so every decision is the one a
record-by-record index gives.

Groups: records with the same normalised transcript (and label, for the emotion task) are
different recordings of one line, and greedy decoding gives them the same continuation; the
audio is the training input, so they are all kept (IEMOCAP and MELD repeat "Yeah." hundreds of
times). A record is a duplicate only of an original from *another* group: the first kept row
of a continuation with transcript A makes later rows with A kept and rows with B dropped. Each
check takes the record's `group` (transcript_group()); a record that matches only originals
of its own group is kept and not indexed (it adds nothing to compare with).

Everything is deterministic (seeded numpy, blake2b for words; no Python `hash()`), so the
same inputs give the same results in every process and run (the Ray executor relies on it).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from array import array
from dataclasses import dataclass
from itertools import chain
from typing import Sequence

import numpy as np

from blspdata.curate.filters import words

_MASK32 = np.uint64(0xFFFFFFFF)
_GRAM_MULTIPLIER = np.uint64(1000003)  # combines the word hashes of an n-gram
_WORD_CACHE = 1 << 20  # distinct words whose hash is remembered (~100 MB at most)
_CHUNK = 16  # records per step of the MinHash loop: keeps its (shingles, num_perm) scratch ~0.5 MiB, in cache


def _stable_hash32(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")


def exact_key(text: str) -> int:
    return exact_key_of_words(words(text))


def exact_key_of_words(tokens: Sequence[str]) -> int:
    """exact_key() of a text whose words(text) are already at hand."""
    return int.from_bytes(hashlib.blake2b(" ".join(tokens).encode(), digest_size=8).digest(), "little")


NO_GROUP = (1 << 64) - 1  # a record without a group: never of the same group as another (groups are 63-bit)


def transcript_group(text: str, label: str | None = None) -> int:
    """The group of a record: a 63-bit hash of its normalised transcript's words (as exact_key
    normalises a continuation: "Yeah." and "yeah" are one line), and of its label when given
    (the emotion task: one line said angrily and sadly are two groups)."""
    key = " ".join(words(text)) + "\x1f" + (label or "")
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


class _KeyTable:
    """64-bit keys -> 32-bit values in sorted numpy runs: 12 bytes an entry, not a dict's ~100.
    A new run (a batch's keys) is merged into the one before it while that one is not larger,
    like a binary counter: at most log2(n) runs to search, each entry copied at most log2(n)
    times. A key is put once and keeps its first value: callers put only keys not found."""

    def __init__(self) -> None:
        self._keys: list[np.ndarray] = []    # per run, sorted uint64
        self._values: list[np.ndarray] = []  # per run, uint32, in the order of its keys

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._keys)

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in zip(self._keys, self._values))

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Per key (uint64), its value, or -1 where the table does not have it (int64)."""
        found = np.full(len(keys), -1, dtype=np.int64)
        for run_keys, run_values in zip(self._keys, self._values):
            at = np.searchsorted(run_keys, keys)
            at[at == len(run_keys)] = 0
            hit = run_keys[at] == keys
            found[hit] = run_values[at[hit]]
        return found

    def put(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Add distinct keys the table does not have, with their values."""
        if not len(keys):
            return
        order = np.argsort(keys, kind="stable")
        keys, values = keys[order].astype(np.uint64), values[order].astype(np.uint32)
        while self._keys and len(self._keys[-1]) <= len(keys):
            run_keys, run_values = self._keys.pop(), self._values.pop()
            at = np.searchsorted(run_keys, keys)
            keys, values = np.insert(run_keys, at, keys), np.insert(run_values, at, values)
        self._keys.append(keys)
        self._values.append(values)


class _Strings:
    """Append-only strings, packed: UTF-8 in one bytearray and a 64-bit end offset each (the
    id's length + 8 bytes, where a list of str takes ~57 + its length)."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._ends = array("Q")

    def __len__(self) -> int:
        return len(self._ends)

    def append(self, text: str) -> int:
        """Add `text`; returns its index."""
        self._data += text.encode()
        self._ends.append(len(self._data))
        return len(self._ends) - 1

    def __getitem__(self, index: int) -> str:
        start = self._ends[index - 1] if index else 0
        return self._data[start:self._ends[index]].decode()

    @property
    def nbytes(self) -> int:
        return len(self._data) + self._ends.itemsize * len(self._ends)


class _Rows:
    """Fixed-width uint32 rows (the indexed signatures), appended one slot after another: the
    newest `memory_rows` in memory, the older ones in an unnamed temporary file in `spill_dir`
    (the system's temporary folder when None; the OS removes the file when it is closed or the
    process ends), read back with pread, one row per candidate, never mapped (mapped pages
    would count as this process's memory)."""

    def __init__(self, width: int, memory_rows: int, spill_dir: str | os.PathLike | None) -> None:
        self.width, self.spill_dir = width, spill_dir
        self._row_bytes = 4 * width
        self._tail = np.empty((0, width), dtype=np.uint32)  # grows to memory_rows, then is reused
        self._memory_rows = max(1, memory_rows)
        self._in_tail = 0
        self._spilled = 0  # rows in the file
        self._file = None

    def __len__(self) -> int:
        return self._spilled + self._in_tail

    def append(self, row: np.ndarray) -> int:
        """Add one row; returns its slot."""
        if self._in_tail == len(self._tail):
            if len(self._tail) < self._memory_rows:  # double, up to memory_rows
                grown = np.empty((min(self._memory_rows, max(1024, 2 * len(self._tail))), self.width), dtype=np.uint32)
                grown[:self._in_tail] = self._tail[:self._in_tail]
                self._tail = grown
            else:
                self._spill()
        self._tail[self._in_tail] = row
        self._in_tail += 1
        return len(self) - 1

    def _spill(self) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="blspdata-signatures-", dir=self.spill_dir)
        data = memoryview(self._tail[:self._in_tail].tobytes())
        offset = self._spilled * self._row_bytes
        while data:
            written = os.pwrite(self._file.fileno(), data, offset)
            data, offset = data[written:], offset + written
        self._spilled += self._in_tail
        self._in_tail = 0

    def take(self, slots: Sequence[int]) -> np.ndarray:
        """The rows of these slots, (len(slots), width)."""
        out = np.empty((len(slots), self.width), dtype=np.uint32)
        for k, slot in enumerate(slots):
            if slot >= self._spilled:
                out[k] = self._tail[slot - self._spilled]
            else:
                data = os.pread(self._file.fileno(), self._row_bytes, slot * self._row_bytes)
                out[k] = np.frombuffer(data, dtype=np.uint32)
        return out

    @property
    def nbytes(self) -> int:
        """Bytes in memory (the file's are on disk)."""
        return self._tail.nbytes

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ExactDuplicates:
    """Streaming exact-duplicate index: exact key -> the first kept row with it (its id and
    group). About 28 bytes per original plus its id (the 64-bit key and a 32-bit slot in a
    _KeyTable, an 8-byte group, the id packed with an 8-byte offset), never texts.
    `original(key)` and `add(...)` one row at a time; curate looks a batch up at once
    (duplicate_reasons)."""

    _PENDING = 4096  # keys added one at a time are moved into the table in runs of this many

    def __init__(self) -> None:
        self._table = _KeyTable()
        self._pending: dict[int, int] = {}  # key -> slot: added since the last _commit()
        self._ids = _Strings()
        self._groups = array("Q")

    @property
    def nbytes(self) -> int:
        return self._table.nbytes + self._ids.nbytes + self._groups.itemsize * len(self._groups)

    def _slot(self, key: int, found: int = -1) -> int | None:
        """The slot of `key`: `found` (a _KeyTable.lookup of it), else the pending one's."""
        return found if found >= 0 else self._pending.get(key)

    def original(self, key: int) -> tuple[str, int] | None:
        """(id, group) of the original with this exact key, or None."""
        slot = self._slot(key, int(self._table.lookup(np.array([key], dtype=np.uint64))[0]))
        return None if slot is None else (self._ids[slot], self._groups[slot])

    def add(self, key: int, record_id: str, group: int = NO_GROUP) -> None:
        """Remember a kept row as the original of its key (the first one stays)."""
        if self.original(key) is None:
            self._put(key, record_id, group)
            if len(self._pending) >= self._PENDING:
                self._commit()

    def _put(self, key: int, record_id: str, group: int) -> None:
        """Add a key neither the table nor the pending keys have."""
        self._pending[key] = self._ids.append(record_id)
        self._groups.append(group)

    def _commit(self) -> None:
        if self._pending:
            self._table.put(np.fromiter(self._pending, dtype=np.uint64, count=len(self._pending)),
                            np.fromiter(self._pending.values(), dtype=np.uint32, count=len(self._pending)))
            self._pending.clear()


def optimal_bands(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false positive and negative areas of the LSH
    S-curve around `threshold` (the same criterion as datasketch's MinHashLSH)."""
    xs = np.linspace(0, 1, 1001)
    best, best_error = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        if rows == 0:
            break
        prob = 1 - (1 - xs ** rows) ** bands
        below, above = xs <= threshold, xs >= threshold
        fp = np.trapezoid(prob[below], xs[below]) if hasattr(np, "trapezoid") else np.trapz(prob[below], xs[below])
        fn = np.trapezoid(1 - prob[above], xs[above]) if hasattr(np, "trapezoid") else np.trapz(1 - prob[above], xs[above])
        error = fp_weight * fp + fn_weight * fn
        if error < best_error:
            best, best_error = (bands, rows), error
    return best


@dataclass
class NearDuplicates:
    """Streaming near-duplicate index. Use it as

        signatures = near.signatures(texts)             # one numpy pass per batch
        originals = near.check_batch(ids, signatures, groups)   # in order: None = kept

    or `near.check_and_add(id, signature, group)` one record at a time (same result, slower);
    curate drives it with its exact index through duplicate_reasons(). Without groups (None)
    every near-duplicate counts. Signatures past the first `memory_rows` indexed ones are
    spilled to a temporary file in `spill_dir` (the system's temporary folder when None)."""

    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 2
    seed: int = 1
    spill_dir: str | os.PathLike | None = None
    memory_rows: int = 65536  # 32 MiB of signatures at 128 permutations

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        # The num_perm hash functions ("permutations") of MinHash map a 32-bit shingle hash x to
        # the top 32 bits of a*x + b mod 2^64, with a odd and a, b random 64-bit numbers:
        # multiply-add-shift (Dietzfelbinger), a universal family that needs only a multiply,
        # an add (both wrap around in uint64) and a shift, not the slow (a*x + b) mod prime.
        self._a = rng.integers(0, 1 << 64, size=self.num_perm, dtype=np.uint64) | np.uint64(1)
        self._b = rng.integers(0, 1 << 64, size=self.num_perm, dtype=np.uint64)
        # Candidates are verified against the stored signature, so false positives cost only
        # a comparison: tune the bands for recall (datasketch's default weighs both 0.5).
        self.bands, self.rows = optimal_bands(self.threshold, self.num_perm, fp_weight=0.05, fn_weight=0.95)
        # Multipliers that fold a band's `rows` slots into one key (see band_keys).
        self._band_mix = rng.integers(0, 1 << 64, size=self.rows, dtype=np.uint64) | np.uint64(1)
        self._tables = [_KeyTable() for _ in range(self.bands)]  # per band: band key -> slot
        self._ids = _Strings()  # slot -> record id
        self._signatures = _Rows(self.num_perm, self.memory_rows, self.spill_dir)  # slot -> signature
        self._groups = array("Q")  # slot -> group
        self._word_hash: dict[str, int] = {}

    @property
    def nbytes(self) -> int:
        """Bytes the index holds in memory (the spilled signatures are on disk)."""
        return (sum(table.nbytes for table in self._tables) + self._ids.nbytes + self._signatures.nbytes
                + self._groups.itemsize * len(self._groups))

    def close(self) -> None:
        """Remove the spilled signatures now (otherwise when the index is collected)."""
        self._signatures.close()

    # -------------------------------------------------------------------- signatures
    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """MinHash signatures of many texts at once: (len(texts), num_perm) uint32."""
        return self.signatures_of_words([words(text) for text in texts])

    def signatures_of_words(self, token_lists: Sequence[Sequence[str]]) -> np.ndarray:
        """signatures() of texts whose words(text) are already at hand."""
        shingles, counts = self._shingles(token_lists)
        return self._minhash(shingles, counts)

    def _shingles(self, token_lists: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """The 32-bit hashes of all texts' shingles, text after text in one array (uint64, to
        multiply in _minhash without overflow), and how many belong to each text. Shingles
        are word n-grams; a text shorter than n words gives its words instead, and a text
        without words one constant shingle (the empty word), so that it too has a signature.
        A text's shingles may repeat: a repeat cannot change a minimum, so no np.unique."""
        token_lists = [tokens or [""] for tokens in token_lists]
        lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
        flat = list(chain.from_iterable(token_lists))
        cache = self._word_hash
        if len(cache) > _WORD_CACHE:  # a corpus's long tail of words: start over (the hash is stable)
            cache.clear()
        for word in set(flat).difference(cache):  # blake2b each distinct word once per process
            cache[word] = _stable_hash32(word)
        hashes = np.fromiter(map(cache.__getitem__, flat), dtype=np.uint64, count=len(flat))

        # The n-gram starting at each word of the batch: a polynomial in the hashes of it and the
        # next n-1 words, kept to 32 bits. Those running past the end of their text are dropped.
        n = self.ngram
        grams = hashes
        for k in range(1, n):
            following = np.zeros_like(hashes)
            following[:-k] = hashes[k:]
            grams = (grams * _GRAM_MULTIPLIER + following) & _MASK32
        text_end = np.repeat(np.cumsum(lengths), lengths)  # per word: the flat index where its text ends
        short = np.repeat(lengths < n, lengths)  # per word: its text is shorter than n words
        fits = np.arange(len(flat)) + n <= text_end  # per word: an n-gram starting here stays in its text
        shingles = np.where(short, hashes, grams)[short | fits]
        counts = np.where(lengths < n, lengths, lengths - n + 1)
        return shingles, counts

    def _minhash(self, shingles: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Per text, the minimum over its shingles of each of the num_perm hash functions.
        `shingles` holds the texts' shingles one text after another, counts[i] (>= 1) of text i."""
        n = len(counts)
        out = np.empty((n, self.num_perm), dtype=np.uint32)
        offsets = np.concatenate(([0], np.cumsum(counts)))  # text i: shingles[offsets[i]:offsets[i + 1]]
        bounds = list(range(0, n, _CHUNK)) + [n]
        # A few records at a time, into one reused buffer: the whole batch at once would be a
        # (shingles x num_perm) uint64 array of 100+ MiB, slower for leaving the CPU cache.
        scratch = np.empty((int(np.diff(offsets[bounds]).max(initial=0)), self.num_perm), dtype=np.uint64)
        for first, last in zip(bounds, bounds[1:]):
            lo, hi = offsets[first], offsets[last]
            values = scratch[:hi - lo]
            np.multiply(shingles[lo:hi, None], self._a, out=values)
            values += self._b  # a*x + b, wrapping mod 2^64
            # Keeping the top 32 bits (>> 32) is monotone: take the minima first, shift only them.
            minima = np.minimum.reduceat(values, offsets[first:last] - lo, axis=0)
            out[first:last] = minima >> np.uint64(32)
        return out

    # -------------------------------------------------------------------- index
    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """Per signature, one key per band, (len(signatures), bands) uint64: sum over the band's
        slots of slot * multiplier, mod 2^64, cut to 60 bits (the width it has always had: the
        same keys, the same candidates). Two different bands rarely share a key; when they do,
        it only adds a candidate, which is verified."""
        used = signatures[:, :self.bands * self.rows].astype(np.uint64).reshape(len(signatures), self.bands, self.rows)
        return np.ascontiguousarray((used @ self._band_mix) >> np.uint64(4))

    def check_batch(self, record_ids: Sequence[str], signatures: np.ndarray,
                    groups: Sequence[int | None] | None = None) -> list[str | None]:
        """check_and_add() for each record of a batch, in order (a record may duplicate an
        earlier one of the same batch): the id each duplicates, or None where it was kept."""
        batch = _NearBatch(self, signatures, self.band_keys(signatures))
        groups = groups if groups is not None else [None] * len(record_ids)
        found = [batch.check(i, record_id, group) for i, (record_id, group) in enumerate(zip(record_ids, groups))]
        batch.commit()
        return found

    def check_and_add(self, record_id: str, signature: np.ndarray, group: int | None = None) -> str | None:
        """The id of an indexed near-duplicate of this signature, else index it and return None."""
        return self.check_batch([record_id], signature[None, :], [group])[0]

    def _add(self, record_id: str, signature: np.ndarray, group: int | None) -> int:
        """Index a record's id, signature and group (its band keys: _NearBatch.commit); its slot."""
        self._signatures.append(signature)
        self._groups.append(NO_GROUP if group is None else group)
        return self._ids.append(record_id)


class _NearBatch:
    """One batch of records meeting a NearDuplicates index, in order. The index's band tables
    are looked up for the whole batch at once, as they were before it; a record of the batch
    meets an earlier one of the batch through `pending`, which holds only the keys two or more
    rows of the batch share (for the others there is nothing to meet). commit() puts the keys
    of the records indexed into the tables. The candidates of each record are those a
    record-by-record index gives: per band, the first indexed record with its key."""

    def __init__(self, near: NearDuplicates, signatures: np.ndarray, keys: np.ndarray) -> None:
        self.near, self.signatures, self.keys = near, signatures, keys
        n = len(keys)
        self.found = np.full((n, near.bands), -1, dtype=np.int64)  # per row and band: the indexed slot with its key
        self.shared = np.zeros((n, near.bands), dtype=bool)  # per row and band: another row of the batch has its key
        for band, table in enumerate(near._tables):
            if len(table):
                self.found[:, band] = table.lookup(keys[:, band])
            if n > 1:
                _, inverse, counts = np.unique(keys[:, band], return_inverse=True, return_counts=True)
                self.shared[:, band] = counts[inverse] > 1
        self.shared &= self.found < 0  # a key the index has keeps its slot: nothing pending for it
        self.has_found = (self.found >= 0).any(axis=1).tolist()
        self.has_shared = self.shared.any(axis=1).tolist()
        self.pending: list[dict[int, int]] = [{} for _ in range(near.bands)]  # band key -> slot, this batch's
        self.slots = np.full(n, -1, dtype=np.int64)  # per row: its slot where it was indexed

    def check(self, i: int, record_id: str, group: int | None) -> str | None:
        """The id of an indexed near-duplicate of row i, else index it and return None. With a
        group: a near-duplicate of an original of the same group is kept (None) and not indexed."""
        near = self.near
        shared = self.has_shared[i] and np.flatnonzero(self.shared[i]).tolist()
        if self.has_found[i] or shared:
            row = self.found[i]
            candidates = set(row[row >= 0].tolist())
            for band in shared or ():
                slot = self.pending[band].get(int(self.keys[i, band]))
                if slot is not None:
                    candidates.add(slot)
            if candidates:
                ordered = sorted(candidates)  # ties go to the earliest record
                agree = (near._signatures.take(ordered) == self.signatures[i]).sum(axis=1)
                similar = agree / near.num_perm >= near.threshold
                if similar.any():
                    if group is not None and any(near._groups[slot] == group
                                                 for slot, ok in zip(ordered, similar.tolist()) if ok):
                        return None  # another recording of a line it was said for: kept
                    return near._ids[ordered[int(np.argmax(agree))]]
        slot = near._add(record_id, self.signatures[i], group)
        self.slots[i] = slot
        for band in shared or ():
            self.pending[band].setdefault(int(self.keys[i, band]), slot)
        return None

    def commit(self) -> None:
        """Put the band keys of the rows indexed, that the tables lack, each with the first
        row's slot that has it."""
        indexed = self.slots >= 0
        for band, table in enumerate(self.near._tables):
            rows = np.flatnonzero(indexed & (self.found[:, band] < 0))
            if len(rows):
                keys, first = np.unique(self.keys[rows, band], return_index=True)
                table.put(keys, self.slots[rows[first]])


def duplicate_reasons(exact: ExactDuplicates | None, near: NearDuplicates | None, record_ids: Sequence[str],
                      groups: Sequence[int], exact_keys: Sequence[int] | None = None,
                      signatures: np.ndarray | None = None, band_keys: np.ndarray | None = None) -> list[str | None]:
    """curate's duplicate verdict on a batch of one task's rows, in input order: each row
    against the rows kept before it (in earlier batches and this one), exact first, then near.
    `exact_keys` (exact_key_of_words) are needed with `exact`, `signatures` with `near`
    (`band_keys` are computed from them when not given). Returns per row None (kept) or
    `exact_duplicate_of:<id>` / `near_duplicate_of:<id>`. A row of the original's own group
    (same transcript, and label for the emotion task) is another recording and is kept. Only
    a kept row's exact key is remembered: a reject is never named as an original."""
    if exact is not None:
        exact._commit()  # from here on the batch's own keys are the only pending ones
        keys = np.fromiter(exact_keys, dtype=np.uint64, count=len(record_ids))
        found = exact._table.lookup(keys).tolist() if len(exact._table) else [-1] * len(record_ids)
        keys = keys.tolist()
    batch = None
    if near is not None:
        batch = _NearBatch(near, signatures, band_keys if band_keys is not None else near.band_keys(signatures))
    reasons: list[str | None] = []
    for i, (record_id, group) in enumerate(zip(record_ids, groups)):
        if exact is not None:
            slot = exact._slot(keys[i], found[i])
            if slot is not None:
                reasons.append(None if exact._groups[slot] == group else f"exact_duplicate_of:{exact._ids[slot]}")
                continue
        if batch is not None:
            original = batch.check(i, record_id, group)
            if original is not None:
                reasons.append(f"near_duplicate_of:{original}")
                continue
        if exact is not None:
            exact._put(keys[i], record_id, group)
        reasons.append(None)
    if exact is not None:
        exact._commit()
    if batch is not None:
        batch.commit()
    return reasons
