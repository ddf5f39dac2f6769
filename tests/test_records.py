"""The record type, its JSON schema and atomic JSONL(.gz) storage."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest

from blspdata.records import JsonlWriter, Record, iter_jsonl, read_records, sidecar

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
