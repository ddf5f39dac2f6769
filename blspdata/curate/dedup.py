"""Exact and near-duplicate detection over continuations, streaming.

Exact: a 64-bit hash of the normalised text (NFKC, straight apostrophes, lower case, words only).
Near: MinHash over word n-gram shingles + LSH banding. Signatures are computed in numpy
for a whole batch of records at once (the hot path); the LSH index is one dict per band,
keyed by an int that folds the band's signature slots together. The first record seen keeps
its place; a later one whose band key equals an indexed record's in some band, and whose
estimated Jaccard similarity (the share of equal signature slots) reaches the threshold, is
a duplicate of it. Memory holds one signature (num_perm x 4 bytes), its group and the band
keys per indexed record, and a 32-bit hash per distinct word seen, never texts.

Groups: records with the same normalised transcript (and label, for the emotion task) are
different recordings of one line, and greedy decoding gives them the same continuation; the
audio is the training input, so they are all kept (IEMOCAP and MELD repeat "Yeah." hundreds of
times). A record is a duplicate only of an original from *another* group: the first kept row
of a continuation with transcript A makes later rows with A kept and rows with B dropped. Each
check takes the record's `group` (transcript_group()); a record that matches only originals
of its own group is kept and not indexed (it adds nothing to compare with).

Everything is deterministic (seeded numpy, blake2b for words; no Python `hash()`), so the
same inputs give the same results in every process and run.
"""

from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass
from itertools import chain
from typing import Sequence

import numpy as np

from blspdata.curate.filters import words

_MASK32 = np.uint64(0xFFFFFFFF)
_GRAM_MULTIPLIER = np.uint64(1000003)  # combines the word hashes of an n-gram
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


class ExactDuplicates:
    """Streaming exact-duplicate index: exact key -> the first kept row with it (its id and
    group). About 130 bytes per original (the 64-bit key, its dict entry, a slot, a reference
    to the id string the near index shares, an 8-byte group; measured with tracemalloc), never
    texts: 45 more than a bare key -> id dict, for the group and the slot."""

    def __init__(self) -> None:
        self._slots: dict[int, int] = {}
        self._ids: list[str] = []
        self._groups = array("Q")

    def original(self, key: int) -> tuple[str, int] | None:
        """(id, group) of the original with this exact key, or None."""
        slot = self._slots.get(key)
        return None if slot is None else (self._ids[slot], self._groups[slot])

    def add(self, key: int, record_id: str, group: int = NO_GROUP) -> None:
        """Remember a kept row as the original of its key (the first one stays)."""
        if key not in self._slots:
            self._slots[key] = len(self._ids)
            self._ids.append(record_id)
            self._groups.append(group)


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

    or `near.check_and_add(id, signature, group)` one record at a time (same result, slower),
    or `near.check(id, signature, keys, group)` with `keys` from `near.band_keys(signatures)`,
    where the caller decides per record whether it meets the index at all (curate's exact
    dedup). Without groups (None) every near-duplicate counts."""

    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 2
    seed: int = 1

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
        self._index: list[dict[int, int]] = [{} for _ in range(self.bands)]  # band key -> slot
        self._ids: list[str] = []  # slot -> record id
        self._signatures = np.zeros((1024, self.num_perm), dtype=np.uint32)  # slot -> signature (grows)
        self._groups = np.full(1024, NO_GROUP, dtype=np.uint64)  # slot -> group (grows with the signatures)
        self._word_hash: dict[str, int] = {}

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
    def band_keys(self, signatures: np.ndarray) -> list[list[int]]:
        """Per signature, one int key per band: sum over the band's slots of slot * multiplier,
        mod 2^64. Two different bands rarely share a key; when they do, it only adds a
        candidate, which is verified. Keys are cut to 60 bits: a Python int under 2^60 takes
        32 bytes, a larger one 36 (48 once allocated), and the index holds millions of them."""
        used = signatures[:, :self.bands * self.rows].astype(np.uint64).reshape(len(signatures), self.bands, self.rows)
        return ((used @ self._band_mix) >> np.uint64(4)).tolist()

    def check_batch(self, record_ids: Sequence[str], signatures: np.ndarray,
                    groups: Sequence[int | None] | None = None) -> list[str | None]:
        """check_and_add() for each record of a batch, in order (a record may duplicate an
        earlier one of the same batch): the id each duplicates, or None where it was kept."""
        keys = self.band_keys(signatures)
        groups = groups if groups is not None else [None] * len(record_ids)
        return [self.check(record_id, signature, band_keys, group)
                for record_id, signature, band_keys, group in zip(record_ids, signatures, keys, groups)]

    def check_and_add(self, record_id: str, signature: np.ndarray, group: int | None = None) -> str | None:
        """The id of an indexed near-duplicate of this signature, else index it and return None."""
        return self.check(record_id, signature, self.band_keys(signature[None, :])[0], group)

    def check(self, record_id: str, signature: np.ndarray, keys: list[int], group: int | None = None) -> str | None:
        """check_and_add() with the signature's band keys (band_keys()) already computed. With a
        group: a near-duplicate of an original of the same group is kept (None) and not indexed."""
        candidates = {index[key] for index, key in zip(self._index, keys) if key in index}
        if candidates:
            ordered = sorted(candidates)  # ties go to the earliest record
            agree = (self._signatures[ordered] == signature).sum(axis=1)
            similar = agree / self.num_perm >= self.threshold
            if similar.any():
                if group is not None and (self._groups[ordered][similar] == np.uint64(group)).any():
                    return None  # another recording of a line it was said for: kept
                return self._ids[ordered[int(np.argmax(agree))]]
        slot = len(self._ids)
        if slot == len(self._signatures):  # double; np.zeros pages take memory only once written
            grown = np.zeros((2 * slot, self.num_perm), dtype=np.uint32)
            grown[:slot] = self._signatures
            self._signatures = grown
            self._groups = np.concatenate([self._groups, np.full(slot, NO_GROUP, dtype=np.uint64)])
        self._signatures[slot] = signature
        self._groups[slot] = NO_GROUP if group is None else group
        self._ids.append(record_id)
        for index, key in zip(self._index, keys):
            index.setdefault(key, slot)
        return None
