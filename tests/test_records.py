"""The record type, its JSON schema and atomic JSONL(.gz) storage."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jsonschema
import pytest

from blspdata.errors import RowError
from blspdata.records import (JsonlWriter, Record, UnreadableFile, atomic_path, iter_jsonl, owned_temp_prefix,
                              read_records, remove_dead_leftovers, sidecar)

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "manifests" / "record.schema.json").read_text())


def make(i: int, **changes) -> Record:
    return Record(id=f"c/train/{i}", corpus="c", split="train", audio=f"a/{i}.flac", duration=1.0 + i,
                  sample_rate=16000, text=f"text {i}", raw_text=f"TEXT {i}", **changes)


@pytest.mark.parametrize("name", ["m.jsonl", "m.jsonl.gz"])
def test_roundtrip(tmp_path: Path, name: str):
    records = [make(i) for i in range(3)] + [make(9, emotion="sad", task="emotion", continuation="and so on",
                                                  finished=False, generator={"model": "m"})]
    with JsonlWriter(tmp_path / name) as writer:
        writer.write_all(r.to_dict() for r in records)
    assert list(read_records(tmp_path / name)) == records


def test_schema_matches_the_record_type():
    assert set(SCHEMA["properties"]) == {f.name for f in dataclasses.fields(Record)}
    jsonschema.validate(make(1, emotion="happy").to_dict(), SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(make(1, emotion="joy").to_dict(), SCHEMA)


def test_a_crash_leaves_the_previous_file_and_no_partial_one(tmp_path: Path):
    path = tmp_path / "m.jsonl.gz"
    with JsonlWriter(path) as writer:
        writer.write(make(0).to_dict())
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with JsonlWriter(path) as writer:
            writer.write(make(1).to_dict())
            raise RuntimeError("killed mid-write")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl.gz"]


def test_malformed_rows_are_reported_with_their_line(tmp_path: Path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(make(0).to_dict()) + "\n\n[1, 2]\n{oops\n" + json.dumps({"id": "x", "colour": 1}) + "\n")
    rows = list(iter_jsonl(path))
    assert [(n, row is None) for n, row, _ in rows] == [(1, False), (3, True), (4, True), (5, False)]
    with pytest.raises(ValueError, match=r"m.jsonl:3"):
        list(read_records(path))
    path.write_text(json.dumps({**make(0).to_dict(), "colour": 1}) + "\n")
    with pytest.raises(ValueError, match="unknown record field.*colour"):
        list(read_records(path))


def test_undecodable_bytes_are_told_apart_from_bad_json(tmp_path: Path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"text": "caf\xe9"}\n{"text": "fine"\n')
    (_, row, error), (_, _, bad_json) = iter_jsonl(path)
    assert row is None and error.startswith("undecodable bytes") and "byte 13" in error
    assert bad_json.startswith("not valid JSON")


def test_a_failed_write_leaves_no_folder_behind(tmp_path: Path):
    with pytest.raises(RuntimeError):
        with JsonlWriter(tmp_path / "new" / "deeper" / "m.jsonl") as writer:
            writer.write(make(0).to_dict())
            raise RuntimeError("failed")
    assert list(tmp_path.iterdir()) == []


def test_sidecar_names():
    assert sidecar("out/x.jsonl.gz", "rejects.jsonl") == Path("out/x.rejects.jsonl")
    assert sidecar("x.jsonl", "summary.json") == Path("x.summary.json")


def test_a_failure_while_finishing_the_file_keeps_the_old_one(tmp_path: Path, monkeypatch):
    path = tmp_path / "m.jsonl.gz"
    with JsonlWriter(path) as writer:
        writer.write(make(0).to_dict())
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        with JsonlWriter(path) as writer:
            writer.write(make(1).to_dict())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl.gz"]


@pytest.mark.parametrize("change, reason", [
    ({"text": 12345}, "invalid_row:text"), ({"continuation": 42}, "invalid_row:continuation"),
    ({"audio": 3}, "invalid_row:audio"), ({"id": 7}, "invalid_row:id"), ({"id": ""}, "invalid_row:id"),
    ({"extra": "{}"}, "invalid_row:extra"), ({"finished": "yes"}, "invalid_row:finished"),
    ({"duration": -0.1}, "invalid_row:duration"), ({"offset": float("nan")}, "invalid_row:offset"),
    ({"duration": float("inf")}, "invalid_row:duration"), ({"duration": True}, "invalid_row:duration"),
    ({"sample_rate": 16000.0}, "invalid_row:sample_rate"), ({"sample_rate": 2**40}, "invalid_row:sample_rate"), ({"emotion": "joy"}, "invalid_row:emotion"),
    ({"speaker": 5}, "invalid_row:speaker"), ({"colour": 1}, "malformed_row"),
])
def test_a_row_that_is_not_a_record_is_a_row_error_with_its_reason(change, reason):
    with pytest.raises(RowError) as caught:
        Record.from_dict({**make(0).to_dict(), **change})
    assert caught.value.reason == reason


def test_any_json_generator_and_integer_seconds_are_records():
    row = {**make(0).to_dict(), "duration": 3, "generator": "my own continuations", "speaker": None}
    assert Record.from_dict(row).generator == "my own continuations"


def test_a_truncated_gz_is_an_error_naming_the_file_and_the_last_line_read(tmp_path: Path):
    import gzip

    path = tmp_path / "m.jsonl.gz"
    data = gzip.compress(b"".join(json.dumps(make(i).to_dict()).encode() + b"\n" for i in range(500)))
    path.write_bytes(data[: len(data) // 2])
    read = []
    with pytest.raises(UnreadableFile, match=rf"{path}: the gzip stream ends early after line (\d+)") as caught:
        for number, row, _ in iter_jsonl(path):
            read.append(number)
    assert f"after line {read[-1]} " in str(caught.value) and 0 < read[-1] < 500
    path.write_bytes(b"not gzip at all\n")
    with pytest.raises(UnreadableFile, match="corrupt gzip data after line 0"):
        list(iter_jsonl(path))


def test_temporaries_are_named_for_their_process(tmp_path: Path):
    with atomic_path(tmp_path / "m.jsonl") as tmp:
        assert tmp.name.startswith(owned_temp_prefix("m.jsonl")) and str(os.getpid()) in tmp.name
        tmp.write_text("x")
    assert remove_dead_leftovers(tmp_path, "m.jsonl") == []  # nothing of a dead run; the output stays
    assert (tmp_path / "m.jsonl").read_text() == "x"
