"""One importer per corpus. Each `scan(root, ...)` reads the corpus exactly as distributed
and yields `blspdata.corpora.base.AudioItem`s and `Reject`s; `blspdata.ingest.run` does the rest."""

CORPORA = ("librispeech", "gigaspeech", "iemocap", "meld", "jsonl", "csv")
