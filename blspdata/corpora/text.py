"""Transcript normalisation: `text` is what the LLM is prompted with and what the speech is
aligned to, so it should read like text; `raw_text` keeps the corpus's own.

- `light` (default): drops non-speech annotations (`[LAUGHTER]`, `<NOISE>`), lower-cases the
  transcripts of an all-caps corpus (LibriSpeech, GigaSpeech: `Importer.all_caps`, decided once
  per corpus, so MELD's "I" and "GO, GO, GO!" keep their case), collapses white space; keeps
  punctuation, contractions and numbers as written.
- `whisper`: Whisper's English text normaliser (the `whisper-normalizer` package, a copy
  of OpenAI's code), which the BLSP-Emo recipe names (PAPER.md "Generation"). It is built
  for WER scoring: no punctuation, numbers as digits ("twenty five" -> "25"), and it
  rewrites every "'s" as " is" ("my company's transition" -> "my company is transition").
  Use it to reproduce the paper exactly.
- `none`: white space collapsed, nothing else.

GigaSpeech's punctuation tags become punctuation before any of them.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

from blspdata.errors import BlspdataError

NORMALIZERS = ("light", "whisper", "none")

# GigaSpeech text_tn: "AS THEY'RE LEAVING <COMMA> CAN KASH PULL ZAHRA ASIDE <QUESTIONMARK>"
GIGASPEECH_PUNCTUATION = {
    "<COMMA>": ",", "<PERIOD>": ".", "<QUESTIONMARK>": "?", "<EXCLAMATIONPOINT>": "!",
}
_TAG = re.compile(r"\s*(<[A-Z]+>)")
_SPACE = re.compile(r"\s+")
_ANNOTATION = re.compile(r"\[[^\]]*\]|<[^>]*>")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.!?;:])")


def light(text: str, lower: bool = False) -> str:
    text = _ANNOTATION.sub(" ", text)
    if lower:
        text = text.lower()
    return _SPACE_BEFORE_PUNCT.sub(r"\1", _SPACE.sub(" ", text)).strip()


def gigaspeech_text(text_tn: str) -> str:
    """Punctuation tags become punctuation attached to the previous word; garbage tags go.

    Returns "" when nothing but tags is left (the caller rejects the segment).
    """

    def replace(match: re.Match[str]) -> str:
        tag = match.group(1)
        if tag in GIGASPEECH_PUNCTUATION:
            return GIGASPEECH_PUNCTUATION[tag]
        return " "  # garbage tags (<SIL>, <MUSIC>, <NOISE>, <OTHER>) and unknown tags

    out = _SPACE.sub(" ", _TAG.sub(replace, text_tn)).strip()
    return "" if not any(ch.isalnum() for ch in out) else out


class NormalizerError(BlspdataError, ValueError):
    """A normaliser name that is not one of NORMALIZERS (a run config's `normalizer`)."""


@lru_cache(maxsize=None)
def get_normalizer(name: str, all_caps: bool = False) -> Callable[[str], str]:
    """The normaliser `name`; `all_caps`: the corpus writes its transcripts in capitals."""
    if name == "light":
        return (lambda text: light(text, lower=True)) if all_caps else light
    if name == "whisper":
        from whisper_normalizer.english import EnglishTextNormalizer

        whisper = EnglishTextNormalizer()
        return lambda text: whisper(text).strip()
    if name == "none":
        return lambda text: _SPACE.sub(" ", text).strip()
    raise NormalizerError(f"unknown normalizer {str(name)[:200]!r}; choose from {', '.join(NORMALIZERS)}")
