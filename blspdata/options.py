"""A stage's options, each declared once: a field of the stage's settings dataclass whose
default is the option's default and whose metadata holds its help text, its bounds and the
older names it is still read under (`option()`).

Built from those fields, by each stage: its flags (their defaults, or their help with the
default, `described`), the check of a value given in Python, a config file or a flag
(`checked`, `check`), and its section of a `run` config (pipeline._section). Curate's live in
curate/options.py, generate's in generate/options.py, publish's in publish_options.py.
"""

from __future__ import annotations

import copy
import types
import typing
from dataclasses import MISSING, Field, field, fields
from typing import Any, Literal, Union

from blspdata.errors import BlspdataError


def option(default: Any, help: str, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, aliases: tuple[str, ...] = ()) -> Any:
    """A settings field that is a user's option: `help` as the flag shows it, bounds a value
    must keep, `aliases` older names still accepted. A dict or list default is copied for
    each instance."""
    metadata = {"help": help, "ge": ge, "gt": gt, "le": le, "aliases": tuple(aliases)}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


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


def default_of(f: Field) -> Any:
    return f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default


def shown(value: Any) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def described(f: Field) -> str:
    """The flag's help: the option's help and its default, `Drop exact duplicates ... [on].`"""
    return f"{f.metadata['help']} [{shown(default_of(f))}]."


def choices(kind: Any) -> tuple[Any, ...] | None:
    """The values a Literal type (optional or not) allows, or None."""
    kind = _without_none(kind)[0]
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else None


def bounds(f: Field) -> dict[str, float | None]:
    return {key: f.metadata.get(key) for key in ("ge", "gt", "le")}


def condition(f: Field) -> str | None:
    """What a value of the option must be, in words: `>= 1`, `> 0`, `between 0 and 1`,
    `in (0, 1]`; None when it has no bounds."""
    ge, gt, le = f.metadata.get("ge"), f.metadata.get("gt"), f.metadata.get("le")
    if le is not None:
        return f"in ({gt}, {le}]" if gt is not None else f"between {ge} and {le}"
    if gt is not None:
        return f"> {gt}"
    return None if ge is None else f">= {ge}"


def _without_none(kind: Any) -> tuple[Any, bool]:
    """`Optional[X]` / `X | None` -> (X, True); anything else -> (kind, False)."""
    if typing.get_origin(kind) in (Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(kind)):
            return args[0], True
    return kind, False


TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}


def checked(key: str, value: Any, kind: Any, f: Field | None = None,
            error: type[Exception] = BlspdataError) -> Any:
    """`value` as `kind` within the bounds of the option `f` (the user named it `key`), or an
    `error` naming the key. `kind` is bool, int, float, str, a dict, a Literal of choices, or
    one of those or None. TOML and the CLI give typed values, so nothing is coerced: "no" is
    not false, 2.5 not an integer, true not a number."""
    kind, optional = _without_none(kind)
    if value is None and optional:
        return None
    allowed = choices(kind)
    if allowed is not None:
        if value not in allowed:
            raise error(f"{key} must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    base = typing.get_origin(kind) or kind
    if base is bool:
        ok = isinstance(value, bool)
    elif base in (int, float):
        ok = isinstance(value, (int, float) if base is float else int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, base)
    if not ok:
        raise error(f"{key} must be {TYPE_NAMES.get(base, base.__name__)}"
                    + (" or nothing" if optional else "") + f", got {value!r}")
    value = base(value)
    if f is None or base not in (int, float):
        return value
    ge, gt, le = f.metadata["ge"], f.metadata["gt"], f.metadata["le"]
    if (ge is not None and value < ge) or (gt is not None and value <= gt) or (le is not None and value > le):
        raise error(f"{key} must be {condition(f)}, got {value!r}")
    return value


def check(settings: Any, error: type[Exception] = BlspdataError) -> Any:
    """Every option of the settings dataclass instance `settings` checked in place (types,
    choices, bounds); returns it. The first bad one is an `error` naming it."""
    for name, (f, kind) in options(type(settings)).items():
        setattr(settings, name, checked(name, getattr(settings, name), kind, f, error))
    return settings
