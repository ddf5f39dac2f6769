"""Curate's options, each declared once: a settings dataclass field (FilterSettings in
filters.py, DedupSettings here) whose default is the option's default and whose metadata holds
its help text, its bounds and the older names it is still read under (`option()`, from
blspdata/options.py, which generate and publish declare theirs with too).

Built from those fields: the flags' help with their defaults (`described`), the check of a
value from a TOML file, a `run` config or a flag (`checked`, in run.settings_from), and the
`curate:` section of a `run` config (pipeline.py, the way the trainer's comes from TrainConfig).

DedupSettings lives here rather than in dedup.py so that `blspdata curate --help` can show
its defaults without importing numpy.
"""

from __future__ import annotations

from dataclasses import Field, dataclass
from typing import Any, Literal

from blspdata.errors import BlspdataError
from blspdata.options import TYPE_NAMES, described, names, option, options, shown  # noqa: F401  (curate's names)
from blspdata.options import checked as _checked


class CurateError(BlspdataError, RuntimeError):
    pass


@dataclass
class DedupSettings:
    exact_dedup: bool = option(True, "Drop exact duplicates of normalised continuations", aliases=("exact",))
    near_dedup: bool = option(True, "Drop near-duplicates (MinHash + LSH over word n-grams)", aliases=("near",))
    near_dup_threshold: float = option(0.8, "Jaccard similarity from which two continuations are near-duplicates",
                                       gt=0, le=1, aliases=("threshold",))
    # No bound against the LSH bands: optimal_bands() never picks more bands than permutations.
    num_perm: int = option(128, "MinHash permutations", ge=1)
    ngram: int = option(2, "Word n-gram size of the MinHash shingles", ge=1)
    executor: Literal["local", "ray"] = option(
        "local", "Where duplicates are found: local (this process) or ray (signatures and candidate groups on Ray "
        "Data: the cluster in RAY_ADDRESS, else a local Ray; pip install 'blspdata[ray]'); the same rows are kept")


def checked(key: str, value: Any, kind: type, f: Field | None = None) -> Any:
    """`value` as `kind` within the bounds of the option `f`, or a CurateError naming `key`
    (blspdata.options.checked)."""
    return _checked(key, value, kind, f, CurateError)
