"""The one stage contract for dropped inputs: write each to the rejects file, count the
reasons, print one summary block.

Every stage (ingest, generate, curate, publish) decides per input row "keep" or "drop, and
why"; a dropped one is a `records.Reject`. A `Rejects` takes them: it cuts a huge detail
(`errors.cut`), stops at the first one under `--strict` (`stop`: raising the stage's error with
the reject's one-line message, before anything is written or committed), writes the row to the
rejects file and counts its reason. As a context manager it writes the file atomically
(`records.JsonlWriter`): committed when the block ends cleanly, nothing (and an earlier file
left whole) when it fails. A stage that appends as it goes (generate, so it can resume)
hands it its own writer with `write_to`.

Reasons may carry a detail after a colon (`near_duplicate_of:<id>`, `invalid_row:<field>`);
`family` groups them (`near_duplicate`, `invalid_row`) for summaries and the run report.

    with Rejects(sidecar(out, "rejects.jsonl"), strict=strict, error=IngestError) as rejects:
        for reject in ...:
            rejects.add(reject)
    print(rejects.render())        #   rejected 2 (see out.rejects.jsonl):
                                   #     audio_missing               2
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from pathlib import Path
from typing import Any, NoReturn, Protocol

from blspdata.errors import BlspdataError, cut
from blspdata.records import JsonlWriter, Reject

# The longest reject detail written: details quote the input (a line, a label, a server's
# answer), which may be huge.
MAX_DETAIL = 500


def family(reason: str) -> str:
    """The reason without its detail: `near_duplicate_of:<id>` -> `near_duplicate`,
    `invalid_row:text` -> `invalid_row`; a plain reason (`segment_out_of_range`) as it is."""
    return reason.split(":", 1)[0].removesuffix("_of")


class RowWriter(Protocol):
    def write(self, row: dict[str, Any]) -> None: ...


class Rejects:
    """A stage's rejects file and the count of its reasons (see the module docstring).

    `strict`: the first reject raises `error(reject.message())` instead of being written.
    `by_family`: the summary (`counts`, `render`) groups reasons by `family`; the raw reasons
    are in `reasons` either way and every row keeps its own.
    """

    def __init__(self, path: str | os.PathLike, *, strict: bool = False,
                 error: type[BlspdataError] = BlspdataError, by_family: bool = False,
                 max_detail: int = MAX_DETAIL):
        self.path = Path(path)
        self.strict, self.error, self.by_family, self.max_detail = strict, error, by_family, max_detail
        self.reasons: Counter = Counter()
        self._writer: RowWriter | None = None
        self._atomic: JsonlWriter | None = None

    # -------------------------------------------------------------------- writing

    def __enter__(self) -> "Rejects":
        self._atomic = JsonlWriter(self.path)
        self._writer = self._atomic.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._atomic is not None
        self._writer = None
        self._atomic.__exit__(exc_type, exc, tb)

    def write_to(self, writer: RowWriter) -> "Rejects":
        """Write rows to `writer` (which the caller opens and closes: an append-as-you-go
        file) instead of an atomic file of this object's own."""
        self._writer, self._atomic = writer, None
        return self

    def add(self, reject: Reject, *, key: str | None = None) -> None:
        """Write `reject` (its detail cut to `max_detail`) and count its reason; under
        `strict`, raise the stage's error instead. `key`: the row's `id` when the reject has
        none (generate finds a malformed row's reject again by its location)."""
        reject = self._cut(reject)
        if self.strict:
            self.stop(reject)
        if self._writer is None:
            raise RuntimeError(f"Rejects({self.path}).add outside its `with` block (or write_to)")
        row = reject.to_dict()
        if key is not None:
            row.setdefault("id", key)
        self._writer.write(row)
        self.reasons[reject.reason] += 1

    def stop(self, reject: Reject) -> NoReturn:
        """Raise the stage's error with `reject`'s one line, its detail cut to `max_detail`:
        what `add` does under `strict`, and what a stage calls itself where only some rejects
        stop it (curate --strict: bad input rows, not the filters' verdicts on good ones)."""
        raise self.error(self._cut(reject).message())

    def _cut(self, reject: Reject) -> Reject:
        if len(reject.detail) <= self.max_detail:
            return reject
        return dataclasses.replace(reject, detail=cut(reject.detail, self.max_detail))

    # -------------------------------------------------------------------- summary

    @property
    def total(self) -> int:
        """Rejects counted."""
        return sum(self.reasons.values())

    @property
    def written(self) -> int:
        """Rows the file's writer took (`JsonlWriter.count`), for a stage's own check that kept
        + rejected rows written = rows read; `total` for a writer of the caller's."""
        return self._atomic.count if self._atomic is not None else self.total

    def families(self) -> Counter:
        """The reasons counted by `family`."""
        families: Counter = Counter()
        for reason, n in self.reasons.items():
            families[family(reason)] += n
        return families

    def counts(self) -> dict[str, int]:
        """Reason (or family, `by_family`) -> rows, most first: the summary JSON's `rejects`."""
        return dict((self.families() if self.by_family else self.reasons).most_common())

    def render(self, indent: str = "  ") -> str:
        """The summary block every stage prints: `rejected N (see PATH):` and a line per
        reason, or `rejected 0`."""
        if not self.total:
            return f"{indent}rejected 0"
        lines = [f"{indent}rejected {self.total} (see {self.path}):"]
        lines += [f"{indent}  {reason:<24} {n:>8}" for reason, n in self.counts().items()]
        return "\n".join(lines)
