"""`curate` at scale (issue 14): the flat-memory dedup index (numpy key tables, spilled
signatures) keeps and drops exactly the rows the record-by-record index of before kept and
dropped, and `--executor ray` (Ray Data computes the signatures and finds the candidates)
gives the same rows as the local executor."""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from blspdata.curate import run as curate_run
from blspdata.curate.dedup import NearDuplicates
from blspdata.curate.run import curate
from blspdata.records import Record
from conftest import blspdata, read_jsonl

LABELS = ("neutral", "happy", "angry", "sad")


def synthetic_rows(n: int = 3000, seed: int = 7) -> list[Record]:
    """`n` generate outputs, semantic and emotion rows, with planted duplicates of earlier
    rows: near ones (one or two words replaced), exact ones (other case and punctuation),
    some said for the original's own line (other recordings: kept), and lines said many times."""
    rng = np.random.default_rng(seed)
    vocabulary = [f"w{i}" for i in range(400)] + "the a and of to she he was in it".split() * 20
    lines = [" ".join(rng.choice(vocabulary, size=int(rng.integers(4, 9)))) for _ in range(n // 3)]
    rows: list[Record] = []
    for i in range(n):
        task = "emotion" if rng.random() < 0.3 else "semantic"
        emotion = str(rng.choice(LABELS)) if task == "emotion" else None
        line = lines[int(rng.integers(0, len(lines)))]
        draw = rng.random()
        if rows and draw < 0.25:  # a copy of an earlier row, a little changed
            original = rows[int(rng.integers(max(0, i - 500), i))]
            words = original.continuation.split()
            if draw < 0.08:
                continuation = original.continuation.upper() + "!"
            else:
                for _ in range(1 if draw < 0.2 else 2):
                    words[int(rng.integers(1, len(words) - 1))] = str(rng.choice(vocabulary))
                continuation = " ".join(words)
            if rng.random() < 0.3:  # said for the original's line (and task and label): another recording
                line, task, emotion = original.text, original.task, original.emotion
        else:
            continuation = " ".join(rng.choice(vocabulary, size=int(rng.integers(20, 40))))
        rows.append(Record(id=f"syn/train/{i:05d}", corpus="syn", split="train", audio=f"a/{i}.flac", duration=2.0,
                           sample_rate=16000, text=line, raw_text=line, speaker=f"s{i % 7}", emotion=emotion,
                           language="en", task=task, instruction="Continue: " + line, continuation=continuation,
                           finished=True, generator={"model": "m"}))
    return rows


def write_rows(path: Path, rows: list[Record]) -> Path:
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in rows))
    return path


def digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def outcome(out: Path) -> tuple[list[str], list[str]]:
    kept = [row["id"] for row in read_jsonl(out)]
    rejects = [f"{row.get('id')} {row['reason']}" for row in read_jsonl(out.parent / (out.name.split(".")[0] + ".rejects.jsonl"))]
    return kept, rejects


# Computed once with the record-by-record index of before issue 14 (a Python dict per band, a
# dict for the exact keys, every signature in memory), on synthetic_rows() with the defaults.
BEFORE = {"kept": 2708, "kept_ids": "9c0371575729630c", "rejects": "cd42f7ca182bb3a4",
          "families": {"exact_duplicate": 107, "near_duplicate": 185}}


@pytest.mark.parametrize("batch_size, memory_rows", [(4096, 65536), (97, 50)])
def test_the_flat_index_keeps_the_rows_the_old_one_kept(tmp_path: Path, monkeypatch, batch_size: int,
                                                       memory_rows: int):
    """One batch with every signature in memory, and small batches with most signatures
    spilled to disk: the same kept ids and reasons as before, row for row."""
    monkeypatch.setattr(curate_run, "NearDuplicates", functools.partial(NearDuplicates, memory_rows=memory_rows))
    inputs = write_rows(tmp_path / "gen.jsonl", synthetic_rows())
    out = tmp_path / "out.jsonl"
    curate([inputs], out, progress=False, batch_size=batch_size)
    kept, rejects = outcome(out)
    families = Counter(reject.split(" ", 1)[1].split(":")[0].replace("_of", "") for reject in rejects)
    assert (len(kept), digest(kept), digest(rejects)) == (BEFORE["kept"], BEFORE["kept_ids"], BEFORE["rejects"])
    assert {family: families[family] for family in BEFORE["families"]} == BEFORE["families"]


@pytest.mark.timeout(900)
def test_ray_executor_keeps_the_rows_the_local_one_keeps(tmp_path: Path):
    """`--executor ray` on a local Ray: signatures and candidates on Ray Data, the same kept
    rows, rejects (reasons, originals named, order) and statistics as the local executor,
    across two inputs with rows that are not records and rows the filters drop."""
    pytest.importorskip("ray")
    rows = synthetic_rows(800, seed=3)
    rows[5].continuation = "I'm sorry, but I cannot help with that."  # a filter's reject, between the duplicates
    first, second = write_rows(tmp_path / "a.jsonl", rows[:300]), write_rows(tmp_path / "b.jsonl", rows[300:])
    with second.open("a") as handle:
        handle.write("{not json\n" + json.dumps(rows[0].to_dict()) + "\n")  # malformed, then a duplicate_id
    results = {}
    for executor in ("local", "ray"):
        out = tmp_path / executor / "out.jsonl"
        out.parent.mkdir()
        result = blspdata("curate", first, second, "-o", out, "--executor", executor, "--no-progress")
        stats = json.loads((out.parent / "out.stats.json").read_text())
        results[executor] = (*outcome(out), {key: value for key, value in stats.items() if key != "output"},
                             result.stdout.replace(str(out.parent), "DIR"))
    local, ray = results["local"], results["ray"]
    assert ray[0] == local[0] and ray[1] == local[1] and ray[2] == local[2] and ray[3] == local[3]
    reasons = Counter(reject.split(" ", 1)[1].split(":")[0] for reject in local[1])
    assert reasons["near_duplicate_of"] > 10 and reasons["exact_duplicate_of"] > 10 and reasons["refusal"] == 1
    assert len(local[0]) + len(local[1]) == 802  # the malformed row and the repeated id among the rejects
