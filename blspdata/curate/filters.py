"""Quality filters for generated continuations.

Each filter is a small function `(record, settings) -> reason or None`. They run in the
order of FILTERS; the first reason found is the one recorded. Every threshold is a field of
`FilterSettings`, settable from the CLI, a TOML file or a `run` config (options.py). Defaults
suit the recipe's data: continuations of at most 48 tokens (about 35 words), often cut off mid-sentence.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from blspdata.curate.options import option
from blspdata.records import Record

# Combining marks NFKC could not compose onto their letter stay part of the word ("q\u0301").
_MARKS = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
_WORD = re.compile(rf"[^\W_](?:[^\W_]+|[{_MARKS}]+)*(?:'[^\W_](?:[^\W_]+|[{_MARKS}]+)*)*")


def normalise(text: str) -> str:
    """NFKC (a decomposed "cafe\u0301" becomes "café", "ﬁ" "fi") and curly apostrophes made
    straight ("don’t" -> "don't"), so that the filters and both dedup keys see one spelling."""
    return unicodedata.normalize("NFKC", text).replace("’", "'").replace("ʼ", "'")


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(normalise(text))]


@lru_cache(maxsize=4)
def cached_words(text: str) -> tuple[str, ...]:
    """words(text), remembered for the last few texts: several filters, the statistics and the
    dedup keys of one record all need the words of its continuation (and a regex over every
    text is a good share of curate's time). A tuple, so that no caller can change the cached value."""
    return tuple(words(text))


@dataclass
class FilterSettings:
    """The filters' thresholds, each an option of `blspdata curate`, its TOML file and a `run`
    config's curate: section (options.py builds all three from these fields)."""
    enabled: set[str] = field(default_factory=lambda: {name for name in FILTERS if name not in OFF_BY_DEFAULT})
    # "Yes." is not a continuation
    min_words: int = option(3, "Shorter is rejected as too_short", ge=0)
    # far above 48 tokens: catches runaway generations
    max_words: int = option(200, "Longer is rejected as too_long", ge=1)
    # Gopher uses 0.15-0.20 on documents; short texts repeat more
    max_dup_ngram_fraction: float = option(0.3, "Share of words in repeated n-grams (n: dup_ngram_size) above "
                                           "which a text is repetition", ge=0, le=1)
    dup_ngram_size: int = option(3, "Word n-gram size of the repetition filter", ge=1)
    max_repeated_line_fraction: float = option(0.3, "Share of repeated lines (of texts with 3 lines or more) above "
                                               "which a text is repetition", ge=0, le=1)
    echo_overlap: float = option(0.8, "Share of the continuation's words that are the transcript's, from which it "
                                 "is an echo", ge=0, le=1)
    min_language_confidence: float = option(0.9, "Detector confidence from which a continuation in another language "
                                            "than the record's is rejected", ge=0, le=1)
    # too few words to tell a language
    language_min_words: int = option(4, "Continuations with fewer words are not language-checked", ge=1)
    # PAPER.md "Cleaning"
    recipe_sorry_but_i: bool = option(True, "The reference's refusal pattern \"i'm sorry, but i\" anywhere (also "
                                      "drops \"I'm sorry, but I think you're wrong\"); off: an apology counts only "
                                      "when a refusal follows it")


# The recipe's own five patterns (PAPER.md, "Cleaning in the reference scripts"; all
# case-insensitive, as the issue asks), then the common assistant forms. Texts are
# normalise()d first, so "I’m" is "I'm".
RECIPE_REFUSALS = [
    re.compile(r"^i'm sorry, but i cannot", re.I), re.compile(r"^i'm sorry, but i'm not sure", re.I),
    re.compile(r"as an ai language model", re.I), re.compile(r"I'm not sure what you", re.I),
]
# The fifth is broad: "I'm sorry, but I" anywhere, so the reference also drops "I'm sorry, but I
# think you're wrong" (an angry row, not a refusal). It is the reference's choice and changes
# which rows train, so it is the default; `recipe_sorry_but_i = false` keeps only the apologies
# followed by a refusal (APOLOGY_REFUSAL below).
RECIPE_SORRY_BUT_I = re.compile(r"i'm sorry, but i", re.I)

# Saying it will not do the task: a refusing verb and what an assistant is asked for.
# "I can't wait to read them", "I can't help but smile", "I can't do this anymore" and "I
# can't continue like this" are a story's lines.
_REFUSING = r"(?:i (?:cannot|can ?not|can't|won't|will not|am unable to|am not able to)|i'm (?:unable|not able) to)"
_REFUSED = (r"(?:(?:continue|complete)\s+(?:this|that|the|your)\b|help(?:\s+you)?\s+with\b|assist\b|provide\b|"
            r"fulfill?\b|comply\b|generate\b|write\s+(?:this|that|about|content)\b|"
            r"do (?:that|this)\b(?!\s+(?:anymore|any more|again|without)\b))")
REFUSAL = rf"(?:{_REFUSING}\s+{_REFUSED}|(?:that|this|it) is not something i (?:can|will|am able to)\s+" \
          rf"(?:do|help|assist|provide|continue|complete|write|generate)\b)"
# An apology that opens the text, then (after "but", a comma or a full stop) a refusal: "I'm
# sorry, but I can't continue this", "My apologies, but that is not something I will
# continue". An apology alone is empathy ("I'm sorry to hear that you're feeling this way",
# "I'm so sorry for your loss", "Sorry, I didn't mean to shout"), which stage 2 teaches.
_APOLOGY = r"(?:(?:i'm|i am)\s+(?:so\s+|very\s+|really\s+|truly\s+)?sorry|i apologi[sz]e|sorry|(?:my\s+)?apologies)"
APOLOGY_REFUSAL = re.compile(rf"^\W*{_APOLOGY}\W*(?:but\s+)?(?:unfortunately,?\s+)?{REFUSAL}", re.I)
BOILERPLATE = re.compile(
    # the assistant speaking of itself; "As an AI researcher, she ..." is fine
    r"\bas an ai(?:,|\s+(?:language model|assistant|model|chatbot)\b|\s+i\b)|"
    r"\bas a (?:chatbot|language model|virtual assistant)\b|"
    # "I don't have feelings for him anymore" is a story's line
    r"\bi (?:don'?t|do not) have (?:personal (?:experiences?|opinions?|feelings|emotions|preferences|beliefs)|"
    r"the ability to)|"
    # refusing at the very start ("I cannot ..." inside a story is fine)
    rf"^\W*(?:unfortunately,?\s+)?{REFUSAL}",
    re.I,
)
INSTRUCTION_LEAK = re.compile(r"continue the following (?:sentence|text)|emotion tone|in a coherent (?:and engaging )?style",
                              re.I)
LABEL_WORDS = {
    "neutral": r"neutral(?:ly|ity)?",
    "happy": r"happ(?:y|ily|iness|ier|iest)",
    "angry": r"angr(?:y|ily|ier)|anger(?:ed)?",
    "sad": r"sad(?:ly|ness|der|dest)?",
    "surprise": r"surpris(?:e|ed|es|ing|ingly)",
}


def refusal(record: Record, s: FilterSettings) -> str | None:
    """The recipe's patterns, an apology followed by a refusal, and the assistant speaking as
    an assistant. Nothing else: an apology is not a refusal."""
    text = normalise(record.continuation or "")
    if (any(p.search(text) for p in RECIPE_REFUSALS) or (s.recipe_sorry_but_i and RECIPE_SORRY_BUT_I.search(text))
            or APOLOGY_REFUSAL.search(text) or BOILERPLATE.search(text)):
        return "refusal"
    return None


def empty(record: Record, s: FilterSettings) -> str | None:
    return "empty" if not (record.continuation or "").strip() else None


def length(record: Record, s: FilterSettings) -> str | None:
    n = len(cached_words(record.continuation or ""))
    if n < s.min_words:
        return "too_short"
    if n > s.max_words:
        return "too_long"
    return None


def unfinished(record: Record, s: FilterSettings) -> str | None:
    """Off by default: the recipe keeps truncated continuations (trained without end-of-turn)."""
    return "unfinished" if record.finished is False else None


def repetition(record: Record, s: FilterSettings) -> str | None:
    """Gopher-style: the share of words inside n-grams that occur more than once, and the
    share of lines that repeat."""
    tokens = cached_words(record.continuation or "")
    n = s.dup_ngram_size
    if len(tokens) >= 2 * n:
        grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        counts = Counter(grams)
        covered = set()
        for i, gram in enumerate(grams):
            if counts[gram] > 1:
                covered.update(range(i, i + n))
        if len(covered) / len(tokens) > s.max_dup_ngram_fraction:
            return "repetition"
    lines = [line.strip().lower() for line in (record.continuation or "").splitlines() if line.strip()]
    if len(lines) >= 3:
        repeated = sum(c for c in Counter(lines).values() if c > 1)
        if repeated / len(lines) > s.max_repeated_line_fraction:
            return "repetition"
    return None


def echo(record: Record, s: FilterSettings) -> str | None:
    """The continuation repeats the transcript (most of its words are the transcript's:
    small models often echo the sentence, reworded a little), or the instruction leaks
    into it."""
    text = record.continuation or ""
    if INSTRUCTION_LEAK.search(text):
        return "instruction_leak"
    cont, source = cached_words(text), set(cached_words(record.text))
    if cont and source and sum(w in source for w in cont) / len(cont) >= s.echo_overlap:
        return "echo"
    return None


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)


# ISO 639-2/3 codes (bibliographic and terminological) of the detector's languages -> its ISO 639-1 codes.
ISO639_1 = {
    "eng": "en", "fra": "fr", "fre": "fr", "deu": "de", "ger": "de", "spa": "es", "ita": "it", "por": "pt",
    "zho": "zh", "chi": "zh", "cmn": "zh", "jpn": "ja", "kor": "ko", "rus": "ru", "ara": "ar", "nld": "nl",
    "dut": "nl", "pol": "pl", "ces": "cs", "cze": "cs", "tur": "tr", "vie": "vi", "hin": "hi", "ell": "el",
    "gre": "el", "swe": "sv", "dan": "da", "fin": "fi", "nor": "no", "nob": "no", "nb": "no", "nno": "nn",
    "heb": "he", "ukr": "uk", "ind": "id", "tha": "th", "fas": "fa", "per": "fa", "ron": "ro", "rum": "ro",
    "hun": "hu", "cat": "ca", "bul": "bg", "hrv": "hr", "srp": "sr", "slk": "sk", "slo": "sk", "slv": "sl",
    "est": "et", "lav": "lv", "lit": "lt", "msa": "ms", "may": "ms", "ben": "bn", "tam": "ta", "urd": "ur",
}


def language_code(tag: str | None) -> str:
    """A record's language tag as the detector writes it: "EN", "en-US", "en_GB", "eng" -> "en"."""
    base = re.split(r"[-_]", (tag or "").strip().lower(), maxsplit=1)[0]
    return ISO639_1.get(base, base)


def language(record: Record, s: FilterSettings) -> str | None:
    """The continuation is confidently in another language than the record's."""
    text = record.continuation or ""
    expected = language_code(record.language)
    if not expected or len(cached_words(text)) < s.language_min_words:
        return None
    detected, confidence = _identifier().classify(text)
    if detected != expected and confidence >= s.min_language_confidence:
        return f"language_{detected}"
    return None


def label_word(record: Record, s: FilterSettings) -> str | None:
    """Off by default. Emotion task: the continuation names its own label outright."""
    if record.task != "emotion" or record.emotion not in LABEL_WORDS:
        return None
    if re.search(rf"\b(?:{LABEL_WORDS[record.emotion]})\b", record.continuation or "", re.I):
        return "names_label"
    return None


FILTERS: dict[str, Callable[[Record, FilterSettings], str | None]] = {
    "empty": empty, "refusal": refusal, "length": length, "unfinished": unfinished,
    "repetition": repetition, "echo": echo, "language": language, "label_word": label_word,
}
OFF_BY_DEFAULT = {"unfinished", "label_word"}


def first_reason(record: Record, settings: FilterSettings) -> str | None:
    for name, check in FILTERS.items():
        if name in settings.enabled:
            reason = check(record, settings)
            if reason:
                return reason
    return None
