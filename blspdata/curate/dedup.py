"""Exact and near-duplicate detection over continuations, streaming.

Exact: a 64-bit hash of the normalised text (lower case, words only).
Near: MinHash over word n-gram shingles + LSH banding. Signatures are computed in numpy
for a whole batch of records at once (the hot path); the LSH index is one dict per band.
The first record seen keeps its place; a later one whose signature agrees with an indexed
record's in some band, and whose estimated Jaccard similarity (the share of equal
signature slots) reaches the threshold, is a duplicate of it. Memory holds one signature
(num_perm x 4 bytes) and the band keys per kept record, never texts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from blspdata.curate.filters import words

_PRIME = np.uint64((1 << 61) - 1)
_MASK32 = np.uint64(0xFFFFFFFF)


def _stable_hash32(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")


def exact_key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(" ".join(words(text)).encode(), digest_size=8).digest(), "little")


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
    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 2
    seed: int = 1

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self._a = rng.integers(1, 1 << 32, size=(self.num_perm, 1), dtype=np.uint64)
        self._b = rng.integers(0, 1 << 32, size=(self.num_perm, 1), dtype=np.uint64)
        # Candidates are verified against the stored signature, so false positives cost only
        # a comparison: tune the bands for recall (datasketch's default weighs both 0.5).
        self.bands, self.rows = optimal_bands(self.threshold, self.num_perm, fp_weight=0.05, fn_weight=0.95)
        self._index: list[dict[bytes, int]] = [{} for _ in range(self.bands)]
        self._ids: list[str] = []
        self._signatures = np.zeros((1024, self.num_perm), dtype=np.uint32)
        self._word_hash: dict[str, int] = {}

    # -------------------------------------------------------------------- signatures
    def _shingles(self, text: str) -> np.ndarray:
        """32-bit hashes of the word n-grams (word unigrams for texts shorter than n)."""
        tokens = words(text)
        cache = self._word_hash
        hashed = np.fromiter((cache[t] if t in cache else cache.setdefault(t, _stable_hash32(t)) for t in tokens),
                             dtype=np.uint64, count=len(tokens))
        n = self.ngram if len(tokens) >= self.ngram else 1
        if len(tokens) == 0:
            return np.zeros(1, dtype=np.uint64)
        combined = hashed[: len(tokens) - n + 1].copy()
        for k in range(1, n):  # polynomial combination of the n word hashes, kept to 32 bits
            combined = (combined * np.uint64(1000003) + hashed[k: len(tokens) - n + 1 + k]) & _MASK32
        return np.unique(combined)

    def signatures(self, texts: list[str]) -> np.ndarray:
        """MinHash signatures of many texts at once: (len(texts), num_perm) uint32."""
        shingles = [self._shingles(t) for t in texts]
        lengths = np.array([len(s) for s in shingles])
        flat = np.concatenate(shingles)
        permuted = ((self._a * flat[None, :] + self._b) % _PRIME) & _MASK32  # (num_perm, total shingles)
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        return np.minimum.reduceat(permuted, starts, axis=1).T.astype(np.uint32)

    # -------------------------------------------------------------------- index
    def check_and_add(self, record_id: str, signature: np.ndarray) -> str | None:
        """The id of an indexed near-duplicate of this signature, else index it and return None."""
        keys = [signature[b * self.rows:(b + 1) * self.rows].tobytes() for b in range(self.bands)]
        candidates = {index[key] for index, key in zip(self._index, keys) if key in index}
        if candidates:
            ordered = sorted(candidates)
            similarity = (self._signatures[ordered] == signature).mean(axis=1)
            best = int(np.argmax(similarity))
            if similarity[best] >= self.threshold:
                return self._ids[ordered[best]]
        slot = len(self._ids)
        if slot == len(self._signatures):
            self._signatures = np.concatenate([self._signatures, np.zeros_like(self._signatures)])
        self._signatures[slot] = signature
        self._ids.append(record_id)
        for index, key in zip(self._index, keys):
            index.setdefault(key, slot)
        return None
