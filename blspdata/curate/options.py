"""Curate's options, each declared once: a settings dataclass field (FilterSettings in
filters.py, DedupSettings here) whose default is the option's default and whose metadata holds
its help text, its bounds and the older names it is still read under (`option()`).

Built from those fields: the flags' help with their defaults (`described`), the check of a
value from a TOML file, a `run` config or a flag (`checked`, in run.settings_from), and the
`curate:` section of a `run` config (pipeline.py, the way the trainer's comes from TrainConfig).

DedupSettings lives here rather than in dedup.py so that `blspdata curate --help` can show
its defaults without importing numpy.
"""

from __future__ import annotations

import typing
from dataclasses import Field, dataclass, field, fields
from typing import Any

from blspdata.errors import BlspdataError


class CurateError(BlspdataError, RuntimeError):
    pass


def option(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, aliases: tuple[str, ...] = ()) -> Any:
    """A settings field that is a user's option: `help` as the flag shows it (the default is
    added from the field), bounds a value must keep, `aliases` older names still accepted."""
    return field(default=default, metadata={"help": help, "ge": ge, "gt": gt, "le": le, "aliases": tuple(aliases)})


@dataclass
class DedupSettings:
    exact_dedup: bool = option(True, "Drop exact duplicates of normalised continuations", aliases=("exact",))
    near_dedup: bool = option(True, "Drop near-duplicates (MinHash + LSH over word n-grams)", aliases=("near",))
    near_dup_threshold: float = option(0.8, "Jaccard similarity from which two continuations are near-duplicates",
                                       gt=0, le=1, aliases=("threshold",))
    # No bound against the LSH bands: optimal_bands() never picks more bands than permutations.
    num_perm: int = option(128, "MinHash permutations", ge=1)
    ngram: int = option(2, "Word n-gram size of the MinHash shingles", ge=1)


def options(*settings: type) -> dict[str, tuple[Field, type]]:
    """name -> (field, type) of every option of these settings dataclasses (a field without
    help is not one: FilterSettings.enabled is set through enable and disable)."""
    found = {}
    for cls in settings:
        hints = typing.get_type_hints(cls)
        found.update({f.name: (f, hints[f.name]) for f in fields(cls) if "help" in f.metadata})
    return found


def names(declared: dict[str, tuple[Field, type]]) -> dict[str, str]:
    """Every key an option may be given under (its name, its older names) -> its name."""
    return {key: name for name, (f, _) in declared.items() for key in (name, *f.metadata["aliases"])}


def shown(value: Any) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def described(f: Field) -> str:
    """The flag's help: the option's help and its default, `Drop exact duplicates ... [on].`"""
    return f"{f.metadata['help']} [{shown(f.default)}]."


TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number"}


def checked(key: str, value: Any, kind: type, f: Field | None = None) -> Any:
    """`value` as `kind` within the bounds of the option `f` (the user named it `key`), or a
    CurateError naming the key.
    TOML and the CLI give typed values, so nothing is coerced: "no" is not false, 2.5 not an
    integer, true not a number."""
    if kind is bool:
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    if not ok:
        raise CurateError(f"{key} must be {TYPE_NAMES[kind]}, got {value!r}")
    value = kind(value)
    if f is None:
        return value
    ge, gt, le = f.metadata["ge"], f.metadata["gt"], f.metadata["le"]
    if (ge is not None and value < ge) or (gt is not None and value <= gt) or (le is not None and value > le):
        if le is not None:
            condition = f"in ({gt}, {le}]" if gt is not None else f"between {ge} and {le}"
        else:
            condition = f"> {gt}" if gt is not None else f">= {ge}"
        raise CurateError(f"{key} must be {condition}, got {value!r}")
    return value
