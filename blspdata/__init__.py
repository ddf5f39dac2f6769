"""blspdata: build BLSP-Emo style training data and train a reference speech-LLM on it.

Stages (each a module and a `blspdata` command): ingest -> generate -> curate -> publish -> train.
"""

__version__ = "0.1.0"
