"""`blspdata curate`: keep the continuations worth training on, and say why each other one
was dropped.

Inputs (generate outputs, several at once) are read in the order given; every row meets the
filters (`filters.py`), then exact and near-duplicate detection (`dedup.py`) across all
inputs. Kept rows go to OUT unchanged; dropped rows to OUT.rejects.jsonl with `reason`
(`refusal`, `echo`, `near_duplicate_of:<id>`, ...) and the row itself. kept + rejected =
input, checked before OUT is committed. OUT.stats.json holds the counts, per reason, per
corpus and label before and after, and the length distribution.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from blspdata.curate.dedup import NearDuplicates, exact_key_of_words
from blspdata.curate.filters import FILTERS, SETTINGS, FilterSettings, cached_words, first_reason
from blspdata.records import JsonlWriter, Record, Reject, iter_jsonl, sidecar, write_json

LENGTH_BINS = [0, 5, 10, 15, 20, 25, 30, 40, 60, 100, 200]


class CurateError(RuntimeError):
    pass


@dataclass
class DedupSettings:
    exact: bool = True
    near: bool = True
    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 2


@dataclass
class Stats:
    output: str
    inputs: int = 0
    kept: int = 0
    reasons: Counter = field(default_factory=Counter)
    before: Counter = field(default_factory=Counter)   # (corpus, task, emotion) -> n
    after: Counter = field(default_factory=Counter)
    lengths_before: list[int] = field(default_factory=list)
    lengths_after: list[int] = field(default_factory=list)

    @staticmethod
    def _group(counter: Counter, position: int) -> dict[str, int]:
        grouped: Counter = Counter()
        for key, n in counter.items():
            grouped[str(key[position])] += n
        return dict(sorted(grouped.items()))

    @staticmethod
    def _lengths(values: list[int]) -> dict[str, Any]:
        if not values:
            return {"count": 0}
        array = np.array(values)
        edges = LENGTH_BINS + [np.inf]
        histogram, _ = np.histogram(array, bins=edges)
        labels = [f"{lo}-{hi - 1}" for lo, hi in zip(LENGTH_BINS, LENGTH_BINS[1:])] + [f"{LENGTH_BINS[-1]}+"]
        return {"count": len(values), "mean": round(float(array.mean()), 2),
                "p5": float(np.percentile(array, 5)), "p50": float(np.percentile(array, 50)),
                "p95": float(np.percentile(array, 95)),
                "histogram": [{"words": label, "count": int(n)} for label, n in zip(labels, histogram)]}

    def reason_family(self) -> Counter:
        """`near_duplicate_of:<id>` counted as `near_duplicate`, and so on."""
        families: Counter = Counter()
        for reason, n in self.reasons.items():
            families[reason.split(":", 1)[0].replace("_of", "")] += n
        return families

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output, "input": self.inputs, "kept": self.kept, "rejected": self.inputs - self.kept,
            "rejects": dict(self.reason_family().most_common()),
            "by_corpus": {"before": self._group(self.before, 0), "after": self._group(self.after, 0)},
            "by_task": {"before": self._group(self.before, 1), "after": self._group(self.after, 1)},
            "by_emotion": {"before": self._group(self.before, 2), "after": self._group(self.after, 2)},
            "continuation_words": {"before": self._lengths(self.lengths_before),
                                   "after": self._lengths(self.lengths_after)},
        }

    def render(self) -> str:
        lines = [f"{self.kept} of {self.inputs} kept -> {self.output}"]
        rejected = self.inputs - self.kept
        if rejected:
            lines.append(f"  rejected {rejected} (see {sidecar(self.output, 'rejects.jsonl')}):")
            lines += [f"    {reason:<24} {n:>8}" for reason, n in self.reason_family().most_common()]
        emotions = self._group(self.after, 2)
        if any(k != "None" for k in emotions):
            lines.append("  kept per emotion: " + ", ".join(f"{k} {v}" for k, v in emotions.items() if k != "None"))
        return "\n".join(lines)


DEDUP_KEYS = {"exact": "exact", "exact_dedup": "exact", "near": "near", "near_dedup": "near", "threshold": "threshold",
              "near_dup_threshold": "threshold", "num_perm": "num_perm", "ngram": "ngram"}


def settings_from(config: str | Path | None, flags: dict[str, Any]) -> tuple[FilterSettings, DedupSettings]:
    """Settings from a TOML config file, then command-line flags (None or [] = not given)."""
    values: dict[str, Any] = {}
    if config is not None:
        from blspdata.generate.prompts import tomllib

        try:
            values = tomllib.loads(Path(config).read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise CurateError(f"{config}: not valid TOML: {exc}") from None
    for key, value in flags.items():
        if value is None or value == []:
            continue
        values[key] = list(values.get(key, [])) + list(value) if key in ("disable", "enable") else value
    filters, dedup = FilterSettings(), DedupSettings()
    for key, value in values.items():
        if key in ("disable", "enable"):
            unknown = set(value) - set(FILTERS)
            if unknown:
                raise CurateError(f"unknown filter(s) {', '.join(sorted(unknown))}; filters: {', '.join(FILTERS)}")
            filters.enabled = filters.enabled - set(value) if key == "disable" else filters.enabled | set(value)
        elif key in SETTINGS:
            setattr(filters, key, type(getattr(filters, key))(value))
        elif key in DEDUP_KEYS:
            setattr(dedup, DEDUP_KEYS[key], value)
        else:
            raise CurateError(f"unknown setting {key!r}; known: {', '.join(sorted(SETTINGS | set(DEDUP_KEYS)))}, "
                              "disable, enable")
    if not 0 < dedup.threshold <= 1:
        raise CurateError(f"near-duplicate threshold must be in (0, 1], got {dedup.threshold}")
    return filters, dedup


def _rows(inputs: Iterable[Path]) -> Iterator[tuple[str, Record | None, dict | None, str]]:
    for path in inputs:
        if not Path(path).is_file():
            raise CurateError(f"input not found: {path}")
        for number, row, error in iter_jsonl(path):
            location = f"{path}:{number}"
            if row is None:
                yield location, None, None, error
                continue
            try:
                record = Record.from_dict(row)
            except (TypeError, ValueError) as exc:
                yield location, None, row, str(exc)
                continue
            if record.continuation is None:
                yield location, None, row, "no continuation: is this a generate output?"
                continue
            yield location, record, row, ""


def curate(inputs: list[str | Path], out: str | Path, *, filters: FilterSettings | None = None,
           dedup: DedupSettings | None = None, progress: bool = True, batch_size: int = 4096) -> Stats:
    """Filter and deduplicate generated continuations from `inputs` into `out`. The Python
    face of `blspdata curate`."""
    filters = filters or FilterSettings()
    dedup = dedup or DedupSettings()
    inputs = [Path(p) for p in inputs]
    out = Path(out)
    stats = Stats(output=str(out))
    near = NearDuplicates(dedup.threshold, dedup.num_perm, dedup.ngram) if dedup.near else None
    exact_seen: dict[int, str] = {}
    bar = tqdm(desc="curate", unit=" rec", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    with JsonlWriter(out) as kept, JsonlWriter(sidecar(out, "rejects.jsonl")) as rejected:

        def drop(reason: str, location: str, record: Record | None, row: dict | None, detail: str = "") -> None:
            stats.reasons[reason] += 1
            rejected.write(Reject(reason, location, detail, id=record.id if record else (row or {}).get("id"),
                                  record=row).to_dict())

        def flush(batch: list[tuple[str, Record, dict, tuple[str, ...]]]) -> None:
            originals: list[str | None] = [None] * len(batch)
            if near and batch:  # signatures in one numpy pass, then the index in input order
                signatures = near.signatures_of_words([tokens for _, _, _, tokens in batch])
                originals = near.check_batch([record.id for _, record, _, _ in batch], signatures)
            for (location, record, row, tokens), original in zip(batch, originals):
                if original is not None:
                    drop(f"near_duplicate_of:{original}", location, record, row)
                    continue
                stats.kept += 1
                stats.after[(record.corpus, record.task, record.emotion)] += 1
                stats.lengths_after.append(len(tokens))
                kept.write(row)

        batch: list[tuple[str, Record, dict, tuple[str, ...]]] = []  # (location, record, row, its words)
        for location, record, row, error in _rows(inputs):
            stats.inputs += 1
            bar.update(1)
            if record is None:
                drop("malformed_row", location, None, row, error)
                continue
            stats.before[(record.corpus, record.task, record.emotion)] += 1
            tokens = cached_words(record.continuation or "")  # tokenized once: the filters get them from the cache
            stats.lengths_before.append(len(tokens))
            reason = first_reason(record, filters)
            if reason:
                drop(reason, location, record, row)
                continue
            if dedup.exact:
                key = exact_key_of_words(tokens)
                if key in exact_seen:
                    drop(f"exact_duplicate_of:{exact_seen[key]}", location, record, row)
                    continue
                exact_seen[key] = record.id
            batch.append((location, record, row, tokens))
            if len(batch) >= batch_size:
                flush(batch)
                batch = []
        flush(batch)
        bar.close()
        if stats.kept + sum(stats.reasons.values()) != stats.inputs:  # nothing vanishes
            raise CurateError(f"kept {stats.kept} + rejected {sum(stats.reasons.values())} != input {stats.inputs}")
        write_json(sidecar(out, "stats.json"), stats.to_dict())
    return stats
