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
# (type, test, what the test says) per dedup setting. num_perm needs no test against the LSH
# bands: optimal_bands() never picks more bands than permutations.
DEDUP_RULES = {"exact": (bool, None, ""), "near": (bool, None, ""),
               "threshold": (float, lambda v: 0 < v <= 1, "in (0, 1]"),
               "num_perm": (int, lambda v: v >= 1, ">= 1"), "ngram": (int, lambda v: v >= 1, ">= 1")}
TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number"}


def typed(key: str, value: Any, kind: type) -> Any:
    """value as `kind` (bool, int or float), or a CurateError naming the key. TOML and the CLI
    give typed values, so nothing is coerced: "no" is not false, 2.5 not an integer, true not a number."""
    if kind is bool:
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    if not ok:
        raise CurateError(f"{key} must be {TYPE_NAMES[kind]}, got {value!r}")
    return kind(value)


def filter_names(key: str, value: Any) -> set[str]:
    """The filters of an enable or disable list; one name alone counts as a list of one."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise CurateError(f"{key} must be a list of filter names, got {value!r}")
    unknown = set(names) - set(FILTERS)
    if unknown:
        raise CurateError(f"unknown filter(s) {', '.join(sorted(unknown))}; filters: {', '.join(FILTERS)}")
    return set(names)


def apply_settings(values: dict[str, Any], filters: FilterSettings, dedup: DedupSettings) -> None:
    """One layer of settings (a config file's, or the flags') on top of those already set."""
    values = dict(values)
    disable = filter_names("disable", values.pop("disable", []))
    enable = filter_names("enable", values.pop("enable", []))
    if "drop_unfinished" in values:  # the CLI's --drop-unfinished, in a config file
        (enable if typed("drop_unfinished", values.pop("drop_unfinished"), bool) else disable).add("unfinished")
    if enable & disable:
        raise CurateError(f"filter(s) both enabled and disabled: {', '.join(sorted(enable & disable))}")
    filters.enabled = (filters.enabled - disable) | enable
    for key, value in values.items():
        if key in SETTINGS:
            value = typed(key, value, type(getattr(filters, key)))
            if isinstance(value, float) and not 0 <= value <= 1:  # fractions, overlaps, confidences
                raise CurateError(f"{key} must be between 0 and 1, got {value!r}")
            if isinstance(value, int) and not isinstance(value, bool) and value < (0 if key == "min_words" else 1):
                raise CurateError(f"{key} must be {'>= 0' if key == 'min_words' else '>= 1'}, got {value!r}")
            setattr(filters, key, value)
        elif key in DEDUP_KEYS:
            kind, test, condition = DEDUP_RULES[DEDUP_KEYS[key]]
            value = typed(key, value, kind)
            if test and not test(value):
                raise CurateError(f"{key} must be {condition}, got {value!r}")
            setattr(dedup, DEDUP_KEYS[key], value)
        else:
            raise CurateError(f"unknown setting {key!r}; known: {', '.join(sorted(SETTINGS | set(DEDUP_KEYS)))}, "
                              "disable, enable, drop_unfinished")


def settings_from(config: str | Path | None, flags: dict[str, Any]) -> tuple[FilterSettings, DedupSettings]:
    """Settings from a TOML config file, then the command-line flags on top (None or [] = not
    given): a flag wins over the file, `--enable X` over the file's `disable = ["X"]` and the
    other way round."""
    layers: list[dict[str, Any]] = []
    if config is not None:
        from blspdata.generate.prompts import tomllib

        try:
            layers.append(tomllib.loads(Path(config).read_text(encoding="utf-8")))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise CurateError(f"{config}: not valid TOML: {exc}") from None
    layers.append({key: value for key, value in flags.items() if value is not None and value != []})
    filters, dedup = FilterSettings(), DedupSettings()
    for values in layers:
        apply_settings(values, filters, dedup)
    return filters, dedup


def _rows(inputs: Iterable[Path]) -> Iterator[tuple[str, Record | None, dict | None, str]]:
    for path in inputs:
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


@dataclass
class Pending:
    """An input row on its way through curate: the filters' verdict (None = passed so far)."""
    location: str
    record: Record | None
    row: dict | None
    tokens: tuple[str, ...] = ()
    reason: str | None = None
    detail: str = ""


def curate(inputs: list[str | Path], out: str | Path, *, filters: FilterSettings | None = None,
           dedup: DedupSettings | None = None, progress: bool = True, batch_size: int = 4096) -> Stats:
    """Filter and deduplicate generated continuations from `inputs` into `out`. The Python
    face of `blspdata curate`."""
    filters = filters or FilterSettings()
    dedup = dedup or DedupSettings()
    inputs = [Path(p) for p in inputs]
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:  # before anything is read or written
        raise CurateError(f"input not found: {', '.join(missing)}")
    out = Path(out)
    stats = Stats(output=str(out))
    near = NearDuplicates(dedup.threshold, dedup.num_perm, dedup.ngram) if dedup.near else None
    exact_seen: dict[int, str] = {}  # exact key -> id of the kept row that has it
    bar = tqdm(desc="curate", unit=" rec", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    # Rejects are committed first, OUT last (writers close in reverse), stats.json once both are.
    with JsonlWriter(out) as kept, JsonlWriter(sidecar(out, "rejects.jsonl")) as rejected:

        def duplicate_reason(item: Pending, sketch: tuple | None) -> str | None:
            """Exact, then near-duplicate check against the rows kept before this one. Only a
            kept row's exact key is remembered: a reject is never named as an original."""
            key = exact_key_of_words(item.tokens) if dedup.exact else None
            if key in exact_seen:
                return f"exact_duplicate_of:{exact_seen[key]}"
            if near:
                original = near.check(item.record.id, *sketch)  # indexes the row when it is kept
                if original is not None:
                    return f"near_duplicate_of:{original}"
            if key is not None:
                exact_seen[key] = item.record.id
            return None

        def flush(pending: list[Pending]) -> None:
            """Decide the pending rows and write them, all in input order."""
            passed = [item for item in pending if item.reason is None]
            if near and passed:  # signatures and band keys in one numpy pass per batch
                signatures = near.signatures_of_words([item.tokens for item in passed])
                sketches = iter(zip(signatures, near.band_keys(signatures)))
            for item in pending:
                if item.reason is None:
                    item.reason = duplicate_reason(item, next(sketches) if near else None)
                if item.reason:
                    stats.reasons[item.reason] += 1
                    record_id = item.record.id if item.record else (item.row or {}).get("id")
                    rejected.write(Reject(item.reason, item.location, item.detail, id=record_id,
                                          record=item.row).to_dict())
                    continue
                record = item.record
                stats.kept += 1
                stats.after[(record.corpus, record.task, record.emotion)] += 1
                stats.lengths_after.append(len(item.tokens))
                kept.write(item.row)

        pending: list[Pending] = []
        for location, record, row, error in _rows(inputs):
            stats.inputs += 1
            bar.update(1)
            if record is None:
                pending.append(Pending(location, None, row, reason="malformed_row", detail=error))
            else:
                stats.before[(record.corpus, record.task, record.emotion)] += 1
                tokens = cached_words(record.continuation or "")  # tokenized once: the filters get them from the cache
                stats.lengths_before.append(len(tokens))
                pending.append(Pending(location, record, row, tokens, first_reason(record, filters)))
            if len(pending) >= batch_size:
                flush(pending)
                pending = []
        flush(pending)
        bar.close()
        if kept.count + rejected.count != stats.inputs:  # nothing vanishes: rows written vs rows read
            raise CurateError(f"wrote {kept.count} kept + {rejected.count} rejected rows for {stats.inputs} read")
    write_json(sidecar(out, "stats.json"), stats.to_dict())
    return stats
