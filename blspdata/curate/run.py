"""`blspdata curate`: keep the continuations worth training on, and say why each other one
was dropped.

Inputs (generate outputs, several at once) are read in the order given; every row meets the
filters (`filters.py`), then exact and near-duplicate detection (`dedup.py`) across all
inputs. Kept rows go to OUT unchanged; dropped rows to OUT.rejects.jsonl with `reason`
(`refusal`, `echo`, `near_duplicate_of:<id>`, ...) and the row itself. kept + rejected =
input, checked before OUT is committed. OUT.stats.json holds the counts, per reason, per
corpus and label before and after, the kept share per label of the emotion task, and the
length distribution.

Duplicates are looked for within a task (stage 1 trains on the semantic rows, stage 2 on the
emotion rows: a continuation in both is in neither twice) and judged per group (dedup.py):
rows with the same normalised transcript (and label, for the emotion task) are other
recordings of one line and are all kept; a continuation repeated for a *different*
transcript is dropped.

A filter that drops one emotion far more than the others biases stage 2: curate warns (on
stderr, and in OUT.stats.json's `warnings`) when a label's kept share is more than
LABEL_SHARE_GAP below the pooled kept share of the other labels (labels with at least
LABEL_MIN_ROWS rows in the input; fewer are too noisy to judge).
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NoReturn

import numpy as np
from tqdm import tqdm

from blspdata.labels import CANONICAL
from blspdata.curate.dedup import (ExactDuplicates, NearDuplicates, duplicate_reasons, exact_key_of_words,
                                   transcript_group)
from blspdata.curate.filters import FILTERS, FilterSettings, cached_words, first_reason
from blspdata.curate.options import CurateError, DedupSettings, checked, names, options
from blspdata.records import JsonlWriter, Record, Reject, SeenIds, read_rows, sidecar, write_json
# reason_family: its name here before rejects.py
from blspdata.rejects import Rejects, family as reason_family

LENGTH_BINS = [0, 5, 10, 15, 20, 25, 30, 40, 60, 100, 200]
LABEL_SHARE_GAP = 0.2   # 60% of sad rows kept against 90% of the rest is a warning; 80% against 90% is not
LABEL_MIN_ROWS = 10


@dataclass
class Stats:
    output: str
    inputs: int = 0
    kept: int = 0
    rejects: Rejects | None = None  # OUT.rejects.jsonl, its reasons summed by family (default: from `output`)
    before: Counter = field(default_factory=Counter)   # (corpus, task, emotion) -> n
    after: Counter = field(default_factory=Counter)
    label_rejects: Counter = field(default_factory=Counter)  # (emotion, reason family) -> n, emotion task
    lengths_before: list[int] = field(default_factory=list)
    lengths_after: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.rejects is None:
            self.rejects = Rejects(sidecar(self.output, "rejects.jsonl"), error=CurateError, by_family=True)

    @property
    def reasons(self) -> Counter:
        """Rows dropped per reason as written (`near_duplicate_of:<id>` each on its own)."""
        return self.rejects.reasons

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
        return self.rejects.families()

    def label_shares(self) -> dict[str, dict[str, Any]]:
        """Per label of the emotion task (the stage-2 set), in the canonical order: rows before
        and after, the kept share and the reasons its rows were dropped for."""
        before: Counter = Counter()
        after: Counter = Counter()
        for (_, task, emotion), n in self.before.items():
            if task == "emotion" and emotion is not None:
                before[emotion] += n
        for (_, task, emotion), n in self.after.items():
            if task == "emotion" and emotion is not None:
                after[emotion] += n
        order = {label: i for i, label in enumerate(CANONICAL)}
        return {label: {"before": before[label], "after": after[label],
                        "kept_share": round(after[label] / before[label], 3),
                        "rejects": dict(Counter({reason: n for (emotion, reason), n in self.label_rejects.items()
                                                 if emotion == label}).most_common())}
                for label in sorted(before, key=lambda label: (order.get(label, len(order)), label))}

    def warnings(self) -> list[str]:
        """A label whose kept share is far below the other labels' (see the module docstring)."""
        shares = self.label_shares()
        found = []
        for label, share in shares.items():
            others_before = sum(s["before"] for other, s in shares.items() if other != label)
            if share["before"] < LABEL_MIN_ROWS or not others_before:
                continue
            others = sum(s["after"] for other, s in shares.items() if other != label) / others_before
            if others - share["kept_share"] > LABEL_SHARE_GAP:
                top = ", ".join(f"{reason} {n}" for reason, n in list(share["rejects"].items())[:3])
                found.append(f"{label} rows kept {share['kept_share']:.0%} ({share['after']} of {share['before']}), "
                             f"the other labels' {others:.0%}: stage 2 would see fewer {label} rows than the "
                             f"input has (dropped: {top})")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output, "input": self.inputs, "kept": self.kept, "rejected": self.inputs - self.kept,
            "rejects": self.rejects.counts(),
            "by_corpus": {"before": self._group(self.before, 0), "after": self._group(self.after, 0)},
            "by_task": {"before": self._group(self.before, 1), "after": self._group(self.after, 1)},
            "by_emotion": {"before": self._group(self.before, 2), "after": self._group(self.after, 2)},
            "kept_share_by_emotion": self.label_shares(),
            "warnings": self.warnings(),
            "continuation_words": {"before": self._lengths(self.lengths_before),
                                   "after": self._lengths(self.lengths_after)},
        }

    def render(self) -> str:
        lines = [f"{self.kept} of {self.inputs} kept -> {self.output}", self.rejects.render()]
        shares = self.label_shares()
        if shares:
            lines.append("  kept per emotion: " + ", ".join(
                f"{label} {s['after']}/{s['before']} ({s['kept_share']:.0%})" for label, s in shares.items()))
        return "\n".join(lines)


OPTIONS = options(FilterSettings, DedupSettings)  # name -> (field, type): every curate option
KEYS = names(OPTIONS)  # every key an option is read under (old names too) -> its name
LISTS = ("disable", "enable", "drop_unfinished")  # the filters to run: not fields, FilterSettings.enabled


def filter_names(key: str, value: Any) -> set[str]:
    """The filters of an enable or disable list; one name alone counts as a list of one."""
    chosen = [value] if isinstance(value, str) else value
    if not isinstance(chosen, list) or not all(isinstance(name, str) for name in chosen):
        raise CurateError(f"{key} must be a list of filter names, got {value!r}")
    unknown = set(chosen) - set(FILTERS)
    if unknown:
        raise CurateError(f"unknown filter(s) {', '.join(sorted(unknown))}; filters: {', '.join(FILTERS)}")
    return set(chosen)


def apply_settings(values: dict[str, Any], filters: FilterSettings, dedup: DedupSettings) -> None:
    """One layer of settings (a config file's, or the flags') on top of those already set."""
    values = dict(values)
    disable = filter_names("disable", values.pop("disable", []))
    enable = filter_names("enable", values.pop("enable", []))
    if "drop_unfinished" in values:  # the CLI's --drop-unfinished, in a config file
        (enable if checked("drop_unfinished", values.pop("drop_unfinished"), bool) else disable).add("unfinished")
    if enable & disable:
        raise CurateError(f"filter(s) both enabled and disabled: {', '.join(sorted(enable & disable))}")
    filters.enabled = (filters.enabled - disable) | enable
    given: dict[str, str] = {}
    for key, value in values.items():
        if key not in KEYS:
            raise CurateError(f"unknown setting {key!r}; known: {', '.join(sorted(KEYS))}, {', '.join(LISTS)}")
        name = KEYS[key]
        if name in given:
            raise CurateError(f"{name} is given twice, as {given[name]} and as {key} ({name} is its name now)")
        given[name] = key
        f, kind = OPTIONS[name]
        setattr(dedup if hasattr(dedup, name) else filters, name, checked(key, value, kind, f))


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


def _rows(inputs: Iterable[Path], stop: Callable[[Reject], NoReturn] | None = None
          ) -> Iterator[tuple[str, Record | None, dict | None, str, str]]:
    """`(location, record, row, reason, detail)` per input row; a row that is not a record
    (records.read_row: `malformed_row`, `invalid_row:<field>`) comes with its reason, and the
    second and later rows of one (task, id) as `duplicate_id`. `stop` (--strict: the rejects'
    `Rejects.stop`) is handed the first such row's reject instead, and raises; bad input stops
    curate, the filters' and dedup's verdicts on good rows do not."""
    seen = SeenIds()
    for path in inputs:
        for item in read_rows(path):
            location, record, row = item.location, item.record, item.row
            if item.reject is not None:
                record, reason, detail = None, item.reject.reason, item.reject.detail
            elif record.continuation is None:
                record, reason, detail = None, "malformed_row", "no continuation: is this a generate output?"
            elif (repeat := seen.repeat(record, location)) is not None:
                reason, detail = repeat.reason, repeat.detail
            else:
                yield location, record, row, "", ""
                continue
            if stop is not None:
                stop(Reject(reason, location, detail, id=record.id if record else (row or {}).get("id")))
            yield location, record, row, reason, detail


@dataclass
class Pending:
    """An input row on its way through curate: the filters' verdict (None = passed so far)."""
    location: str
    record: Record | None
    row: dict | None
    tokens: tuple[str, ...] = ()
    reason: str | None = None
    detail: str = ""
    number: int = -1  # its place among the input rows, from 0 (the Ray executor's verdicts are by number)


def line_group(record: Record) -> int:
    """The record's group for dedup (dedup.transcript_group): its line, and its label for the
    emotion task."""
    return transcript_group(record.text, record.emotion if record.task == "emotion" else None)


def _first_pass(inputs: list[Path], filters: FilterSettings,
                stop: Callable[[Reject], NoReturn] | None) -> Iterator[tuple[Record | None, str | None, int]]:
    """For the Ray executor: per input row, the record to curate (None where it is not one),
    the filters' reason and its group."""
    for _, record, _, reason, _ in _rows(inputs, stop):
        if reason:
            yield None, None, 0
        else:
            cached_words(record.continuation or "")  # the filters' words, as in the second pass
            verdict = first_reason(record, filters)
            yield record, verdict, 0 if verdict else line_group(record)


def curate(inputs: list[str | Path], out: str | Path, *, filters: FilterSettings | None = None,
           dedup: DedupSettings | None = None, strict: bool = False, progress: bool = True,
           batch_size: int = 4096) -> Stats:
    """Filter and deduplicate generated continuations from `inputs` into `out`. The Python
    face of `blspdata curate`. `strict`: the first input row that is not a record (or repeats
    one) stops curate with CurateError, nothing written (see `_rows`)."""
    filters = filters or FilterSettings()
    dedup = dedup or DedupSettings()
    inputs = [Path(p) for p in inputs]
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:  # before anything is read or written
        raise CurateError(f"input not found: {', '.join(missing)}")
    out = Path(out)
    stats = Stats(output=str(out))
    stop = stats.rejects.stop if strict else None  # --strict: the first bad input row (see `_rows`)
    # One hasher makes the signatures; each task has its own indexes (same seed: same permutations).
    near = NearDuplicates(dedup.near_dup_threshold, dedup.num_perm, dedup.ngram) if dedup.near_dedup else None
    indexes: dict[str | None, tuple[ExactDuplicates | None, NearDuplicates | None]] = {}

    def indexes_of(task: str | None) -> tuple[ExactDuplicates | None, NearDuplicates | None]:
        if task not in indexes:
            indexes[task] = (ExactDuplicates() if dedup.exact_dedup else None,
                             NearDuplicates(dedup.near_dup_threshold, dedup.num_perm, dedup.ngram,
                                            spill_dir=out.parent) if near else None)
        return indexes[task]

    verdicts = None  # --executor ray: the filters' and the duplicate verdicts, by row number
    if dedup.executor == "ray":
        from blspdata.curate.ray_executor import duplicates_on_ray

        verdicts = duplicates_on_ray(_first_pass(inputs, filters, stop), dedup, spill_dir=out.parent,
                                     progress=progress)
    bar = tqdm(desc="curate", unit=" rec", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    # Rejects are committed first, OUT last (writers close in reverse), stats.json once both are.
    with JsonlWriter(out) as kept, stats.rejects as rejected:

        def decide_duplicates(passed: list[Pending]) -> None:
            """Exact, then near-duplicate check of the rows that passed the filters, against
            the rows kept before them, task by task (dedup.duplicate_reasons), or as decided on Ray."""
            if verdicts is not None:
                for item in passed:
                    item.reason = verdicts.duplicate_reason(item.number)
                return
            if near:  # signatures and band keys in one numpy pass per batch
                signatures = near.signatures_of_words([item.tokens for item in passed])
                band_keys = near.band_keys(signatures)
            by_task: dict[str | None, list[int]] = {}
            for position, item in enumerate(passed):
                by_task.setdefault(item.record.task, []).append(position)
            for task, positions in by_task.items():
                exact, near_index = indexes_of(task)
                items = [passed[position] for position in positions]
                reasons = duplicate_reasons(
                    exact, near_index, [item.record.id for item in items],
                    [line_group(item.record) for item in items],
                    [exact_key_of_words(item.tokens) for item in items] if exact else None,
                    signatures[positions] if near else None, band_keys[positions] if near else None)
                for item, reason in zip(items, reasons):
                    item.reason = reason

        def flush(pending: list[Pending]) -> None:
            """Decide the pending rows and write them, all in input order."""
            passed = [item for item in pending if item.reason is None]
            if passed and (dedup.exact_dedup or near):
                decide_duplicates(passed)
            for item in pending:
                if item.reason:
                    if item.record and item.record.task == "emotion" and item.record.emotion is not None:
                        stats.label_rejects[(item.record.emotion, reason_family(item.reason))] += 1
                    record_id = item.record.id if item.record else (item.row or {}).get("id")
                    rejected.add(Reject(item.reason, item.location, item.detail, id=record_id, record=item.row))
                    continue
                record = item.record
                stats.kept += 1
                stats.after[(record.corpus, record.task, record.emotion)] += 1
                stats.lengths_after.append(len(item.tokens))
                kept.write(item.row)

        pending: list[Pending] = []
        for location, record, row, reason, detail in _rows(inputs, stop):
            stats.inputs += 1
            bar.update(1)
            if reason:  # not a record, or one seen before: never counted in `before` twice
                pending.append(Pending(location, None, row, reason=reason, detail=detail))
            else:
                stats.before[(record.corpus, record.task, record.emotion)] += 1
                tokens = cached_words(record.continuation or "")  # tokenized once: the filters get them from the cache
                stats.lengths_before.append(len(tokens))
                number = stats.inputs - 1
                verdict = verdicts.filter_reason(number) if verdicts is not None else first_reason(record, filters)
                pending.append(Pending(location, record, row, tokens, verdict, number=number))
            if len(pending) >= batch_size:
                flush(pending)
                pending = []
        flush(pending)
        bar.close()
        if verdicts is not None and len(verdicts) != stats.inputs:
            raise CurateError(f"the inputs changed while curate read them: {len(verdicts)} rows, then {stats.inputs}")
        if kept.count + rejected.written != stats.inputs:  # nothing vanishes: rows written vs rows read
            raise CurateError(f"wrote {kept.count} kept + {rejected.written} rejected rows for {stats.inputs} read")
    write_json(sidecar(out, "stats.json"), stats.to_dict())
    for warning in stats.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    return stats
