"""Canonical emotion labels (PAPER.md, "Emotion labels") and each corpus's mapping to them.

A mapping sends a corpus's raw label to a canonical one, or to None: the label is known
but not used by the recipe (the record is rejected with reason `label_excluded`). A raw
label missing from the mapping is rejected as `label_unknown`. Users override or extend a
mapping with `--label-map FILE`.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from blspdata.errors import BlspdataError, cut

# Order matters: it is the class index of the emotion head and of the ClassLabel feature.
CANONICAL = ("neutral", "happy", "angry", "sad", "surprise")

IEMOCAP = {
    "neu": "neutral", "hap": "happy", "exc": "happy",  # excitement merged into happy
    "ang": "angry", "sad": "sad", "sur": "surprise",
    "fru": None, "fea": None, "dis": None, "oth": None, "xxx": None,
}

MELD = {
    "neutral": "neutral", "joy": "happy", "anger": "angry", "sadness": "sad",
    "surprise": "surprise", "fear": None, "disgust": None,
}

# ESD's emotion folders (Angry, Happy, ...; matched case-insensitively): exactly the five.
ESD = {"neutral": "neutral", "happy": "happy", "angry": "angry", "sad": "sad", "surprise": "surprise"}

# MEAD's audio/<emotion>/ folders.
MEAD = {
    "neutral": "neutral", "happy": "happy", "angry": "angry", "sad": "sad", "surprised": "surprise",
    "fear": None, "disgusted": None, "contempt": None,
}

# CMU-MOSEI's six emotion intensities (the dominant one is the raw label, see corpora/mosei.py).
MOSEI = {
    "happy": "happy", "sad": "sad", "anger": "angry", "surprise": "surprise",
    "disgust": None, "fear": None,
}

# RAVDESS's emotion codes 01-08, by their documented names (corpora/ravdess.py). Calm is not
# neutral: an actor asked to sound calm is not sounding neutral (map it with --label-map).
RAVDESS = {
    "neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry", "surprised": "surprise",
    "calm": None, "fearful": None, "disgust": None,
}

# CREMA-D's file-name codes (ANG, ...; matched case-insensitively).
CREMA_D = {"neu": "neutral", "hap": "happy", "ang": "angry", "sad": "sad", "fea": None, "dis": None}

# SAVEE's file-name letters: a01.wav is anger, sa01.wav sadness, su01.wav surprise.
SAVEE = {"n": "neutral", "h": "happy", "a": "angry", "sa": "sad", "su": "surprise", "f": None, "d": None}

# TESS's file-name emotions (OAF_back_ps.wav: ps is pleasant surprise).
TESS = {"neutral": "neutral", "happy": "happy", "angry": "angry", "sad": "sad", "ps": "surprise",
        "fear": None, "disgust": None}

# Generic corpora: canonical names map to themselves.
GENERIC = {label: label for label in CANONICAL}

# Hub datasets (`ingest hf`) and Lhotse supervisions carry copies of the corpora above under
# their own names (IEMOCAP copies' ClassLabels are often ang/hap/neu/sad, MELD's joy/anger/...),
# or the full words: all of them, excluded ones (frustrated, fear, calm, ...) as excluded.
HUB = {
    **IEMOCAP, **MELD, **GENERIC,
    "happiness": "happy", "excited": "happy", "excitement": "happy", "surprised": "surprise",
    "frustrated": None, "frustration": None, "fearful": None, "disgusted": None, "contempt": None,
    "other": None, "calm": None,  # RAVDESS's calm is not neutral unless a --label-map says so
}


class LabelMapError(BlspdataError, ValueError):
    """A `--label-map` file that cannot be read as one; the message names the file (and line)."""


def load_label_map(path: str | os.PathLike) -> dict[str, str | None]:
    """Read a user's label map: a JSON object `{"fru": "angry", "oth": null}`, or text lines
    `raw canonical` / `raw -` (`-` excludes the label). Targets must be canonical labels."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label map not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelMapError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    mapping: dict[str, str | None] = {}
    if text.lstrip().startswith("{"):
        try:
            loaded = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise LabelMapError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise LabelMapError(f"{path}: expected one JSON object {{\"raw\": \"canonical\", ...}}")
        for raw, target in loaded.items():
            mapping[str(raw)] = None if target in (None, "-", "") else str(target)
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.replace("=", " ").replace("\t", " ").split()
            if len(parts) != 2:
                raise LabelMapError(f"{path}:{number}: expected 'RAW CANONICAL', got {cut(line)!r}")
            mapping[parts[0]] = None if parts[1] == "-" else parts[1]
    bad = sorted({t for t in mapping.values() if t is not None and t not in CANONICAL})
    if bad:
        raise LabelMapError(
            f"{path}: label(s) {cut(', '.join(bad))} are not canonical; use one of {', '.join(CANONICAL)} "
            "(or null/- to exclude)"
        )
    return mapping


def corpus_map(base: dict[str, str | None], label_map: str | os.PathLike | None) -> dict[str, str | None]:
    """A corpus's mapping (`base`, one of the above) with the entries of the user's
    `--label-map FILE` over it, when one is given: what each importer maps its labels with."""
    return {**base, **load_label_map(label_map)} if label_map else dict(base)


def map_label(raw: str, mapping: dict[str, str | None]) -> tuple[str | None, str | None]:
    """Return `(canonical, None)` or `(None, reject_reason)`. Matching is case-insensitive."""
    key = raw.strip()
    if key in mapping:
        target = mapping[key]
    elif key.lower() in mapping:
        target = mapping[key.lower()]
    else:
        return None, "label_unknown"
    if target is None:
        return None, "label_excluded"
    return target, None


def problem_detail(raw: str, problem: str, corpus: str | None) -> str:
    """The reject detail for `map_label`'s reason, saying how to fix it. `corpus` as the detail
    names it ("an IEMOCAP", "a known"); None for a generic corpus, whose labels are the canonical
    ones and are excluded only by the user's label map."""
    if corpus is None:
        return f"label {raw!r} is " + ("excluded by the label map" if problem == "label_excluded"
                                       else f"not canonical ({', '.join(CANONICAL)}); map it with --label-map")
    why = "is not used by the recipe" if problem == "label_excluded" else f"is not {corpus} label"
    return f"label {raw!r} {why} (map it with --label-map)"
