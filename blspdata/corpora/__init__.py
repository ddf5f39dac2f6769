"""One importer per corpus, and the one list of them.

Each importer module's `scan(root, ...)` reads a corpus exactly as distributed and yields
`blspdata.corpora.base.AudioItem`s and `Reject`s; `blspdata.ingest.run` does the rest. A new
corpus is a module here plus one `Importer` line in `CORPORA`: `blspdata ingest`, the `run`
config's `kind` and its default `task` are all read from this list.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal

Task = Literal["semantic", "emotion"]


@dataclass(frozen=True)
class Importer:
    """One `kind` of corpus: the module that reads it and what the pipeline assumes of it."""

    module: str
    task: Task | None  # the task its records get by default; None: the user says (jsonl, csv)
    fixed: dict[str, Any] = field(default_factory=dict)  # options the kind itself sets (a format)
    writes_audio: bool = False  # converts its audio into a folder beside the manifest (`audio_dir`)
    all_caps: bool = False  # its transcripts are upper case by convention: `light` lower-cases them

    @property
    def scan(self) -> Callable[..., Iterator[Any]]:
        return importlib.import_module(f"blspdata.corpora.{self.module}").scan

    def options(self) -> set[str]:
        """The options a user may pass to `scan` (a run config's `options:`)."""
        internal = {"root", "audio_dir", *self.fixed}
        return set(inspect.signature(self.scan).parameters) - internal


CORPORA: dict[str, Importer] = {
    "librispeech": Importer("librispeech", "semantic", all_caps=True),
    "gigaspeech": Importer("gigaspeech", "semantic", all_caps=True),
    "iemocap": Importer("iemocap", "emotion"),
    "meld": Importer("meld", "emotion", writes_audio=True),
    "esd": Importer("esd", "emotion"),
    "commonvoice": Importer("commonvoice", "semantic"),
    "ravdess": Importer("ravdess", "emotion"),
    "cremad": Importer("cremad", "emotion"),
    "savee": Importer("savee", "emotion"),
    "tess": Importer("tess", "emotion"),
    "mead": Importer("mead", "emotion", writes_audio=True),
    "mosei": Importer("mosei", "emotion"),
    "jsonl": Importer("generic", None, fixed={"fmt": "jsonl"}),
    "csv": Importer("generic", None, fixed={"fmt": "csv"}),
    "hf": Importer("hf", None, writes_audio=True),
    "lhotse": Importer("lhotse", None),
}


def importer(kind: str) -> Importer:
    """The importer of `kind`; a clear error for a kind that is not in `CORPORA`."""
    from blspdata.corpora.base import IngestError

    if kind not in CORPORA:
        raise IngestError(f"unknown corpus {str(kind)[:200]!r}; choose from {', '.join(CORPORA)}")
    return CORPORA[kind]
