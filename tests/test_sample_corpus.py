"""The bundled sample corpus ingests cleanly, and the committed example manifests are what
ingest produces today (regenerate them with `make sample-manifests`)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import jsonschema
import pytest

from conftest import REPO, blspdata, read_jsonl

COMMITTED = REPO / "manifests" / "sample"
SCHEMA = json.loads((REPO / "manifests" / "record.schema.json").read_text())
ROOTS = {"librispeech": "samples/corpora/LibriSpeech", "gigaspeech": "samples/corpora/GigaSpeech",
         "iemocap": "samples/corpora/IEMOCAP_full_release", "meld": "samples/corpora/MELD.Raw"}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    for corpus, root in ROOTS.items():
        blspdata("ingest", corpus, root, "-o", out / f"{corpus}.jsonl", cwd=REPO)
    return out


@pytest.mark.parametrize("corpus", sorted(ROOTS))
def test_committed_manifests_match_a_fresh_ingest(fresh: Path, corpus: str):
    rows = read_jsonl(fresh / f"{corpus}.jsonl")
    committed = read_jsonl(COMMITTED / f"{corpus}.jsonl")
    if corpus == "meld":  # extracted audio lives beside each manifest
        for row in rows + committed:
            row["audio"] = Path(row["audio"]).name
    assert rows == committed
    assert read_jsonl(fresh / f"{corpus}.rejects.jsonl") == read_jsonl(COMMITTED / f"{corpus}.rejects.jsonl")
    for row in rows:
        jsonschema.validate(row, SCHEMA)
        assert row["duration"] > 0.5


def test_sample_emotion_corpora_cover_every_label(fresh: Path):
    counts = Counter(row["emotion"] for corpus in ("iemocap", "meld") for row in read_jsonl(fresh / f"{corpus}.jsonl"))
    assert set(counts) == {"neutral", "happy", "angry", "sad", "surprise"}
    assert min(counts.values()) >= 10
    splits = Counter(row["split"] for row in read_jsonl(fresh / "iemocap.jsonl"))
    assert splits["test"] > 0 and splits["train"] > splits["test"]
