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
# Manifest name -> the ingest arguments it is made with: samples/ingests.txt, the table
# `make sample-manifests` loops over (NAME KIND ARGS... a line).
INGESTS = {
    name: (kind, *args)
    for line in (REPO / "samples" / "ingests.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
    for name, kind, *args in [line.split()]
}
WRITES_AUDIO = ("meld", "mead", "hf_emotion")  # their audio is extracted beside the manifest (NAME.audio/)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    for name, (kind, *args) in INGESTS.items():
        blspdata("ingest", kind, *args, "-o", out / f"{name}.jsonl", "--no-progress", cwd=REPO)
    return out


@pytest.mark.parametrize("corpus", sorted(INGESTS))
def test_committed_manifests_match_a_fresh_ingest(fresh: Path, corpus: str):
    rows = read_jsonl(fresh / f"{corpus}.jsonl")
    committed = read_jsonl(COMMITTED / f"{corpus}.jsonl")
    if corpus in WRITES_AUDIO:  # extracted audio lives beside each manifest: compared below NAME.audio/
        for row in rows + committed:
            row["audio"] = row["audio"].split(f"{corpus}.audio/", 1)[1]
    assert rows == committed
    assert read_jsonl(fresh / f"{corpus}.rejects.jsonl") == read_jsonl(COMMITTED / f"{corpus}.rejects.jsonl")
    for row in rows:
        jsonschema.validate(row, SCHEMA)
        assert row["duration"] > 0.5


LABELS = {"neutral", "happy", "angry", "sad", "surprise"}


def test_every_split_has_emotion_rows_of_every_label(fresh: Path):
    """Enough rows per label for the demo to train on and to score its test split (IEMOCAP
    session 5 and MELD test) with some meaning."""
    for corpus in ("iemocap", "meld"):
        counts = Counter((row["split"], row["emotion"]) for row in read_jsonl(fresh / f"{corpus}.jsonl"))
        for split in {split for split, _ in counts}:
            assert {label for s, label in counts if s == split} == LABELS, (corpus, split)
        assert min(counts["test", label] for label in LABELS) >= 8, (corpus, counts)
        assert min(counts["train", label] for label in LABELS) >= 8, (corpus, counts)


def test_the_emotion_is_in_the_voice_not_the_words(fresh: Path):
    """Every sentence of an emotion corpus is spoken once with every emotion, so only the
    prosody tells the labels apart; and every clip is long enough for the trainer (>= 1 s)."""
    for corpus in ("iemocap", "meld"):
        rows = read_jsonl(fresh / f"{corpus}.jsonl")
        labels_of = {}
        for row in rows:
            labels_of.setdefault(row["text"], []).append(row["emotion"])
        balanced = [row for row in rows if sorted(labels_of[row["text"]]) == sorted(LABELS)]
        assert len(balanced) >= 0.9 * len(rows), corpus  # one-off turns aside (IEMOCAP's 'exc', mapped to happy)
        assert min(row["duration"] for row in rows) >= 1.0


def test_the_sample_corpus_stays_small():
    # 14 corpora; IEMOCAP's (the demo's emotion data) is half of it. A clone should stay quick.
    size = sum(p.stat().st_size for p in (REPO / "samples" / "corpora").rglob("*") if p.is_file())
    assert size < 12e6
