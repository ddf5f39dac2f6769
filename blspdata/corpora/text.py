"""Transcript normalisation.

`whisper` (the default, as in the recipe: PAPER.md "Generation") is Whisper's English text
normaliser, from the `whisper-normalizer` package (a copy of OpenAI's code): lower case,
no punctuation, spelled-out numbers as digits, British spellings as American.
`none` keeps the transcript as is, only with whitespace collapsed.
GigaSpeech's punctuation tags become punctuation before either.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

NORMALIZERS = ("whisper", "none")

# GigaSpeech text_tn: "AS THEY'RE LEAVING <COMMA> CAN KASH PULL ZAHRA ASIDE <QUESTIONMARK>"
GIGASPEECH_PUNCTUATION = {
    "<COMMA>": ",", "<PERIOD>": ".", "<QUESTIONMARK>": "?", "<EXCLAMATIONPOINT>": "!",
}
GIGASPEECH_GARBAGE = ("<SIL>", "<MUSIC>", "<NOISE>", "<OTHER>")
_TAG = re.compile(r"\s*(<[A-Z]+>)")
_SPACE = re.compile(r"\s+")


def gigaspeech_text(text_tn: str) -> str:
    """Punctuation tags become punctuation attached to the previous word; garbage tags go.

    Returns "" when nothing but tags is left (the caller rejects the segment).
    """

    def replace(match: re.Match[str]) -> str:
        tag = match.group(1)
        if tag in GIGASPEECH_PUNCTUATION:
            return GIGASPEECH_PUNCTUATION[tag]
        return " "  # garbage tags and unknown tags

    out = _SPACE.sub(" ", _TAG.sub(replace, text_tn)).strip()
    return "" if not any(ch.isalnum() for ch in out) else out


@lru_cache(maxsize=None)
def get_normalizer(name: str) -> Callable[[str], str]:
    if name == "whisper":
        from whisper_normalizer.english import EnglishTextNormalizer

        whisper = EnglishTextNormalizer()
        return lambda text: whisper(text).strip()
    if name == "none":
        return lambda text: _SPACE.sub(" ", text).strip()
    raise ValueError(f"unknown normalizer {name!r}; choose from {', '.join(NORMALIZERS)}")
