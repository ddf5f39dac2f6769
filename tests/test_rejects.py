"""The one rejects contract every stage uses (blspdata/rejects.py): written atomically, counted,
grouped by family, stopped at under --strict, printed as one block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blspdata.errors import BlspdataError
from blspdata.records import Reject, read_rows
from blspdata.rejects import MAX_DETAIL, Rejects, family
from conftest import read_jsonl


class StageError(BlspdataError):
    pass


def test_rows_are_written_and_reasons_counted(tmp_path: Path):
    path = tmp_path / "out.rejects.jsonl"
    with Rejects(path) as rejects:
        rejects.add(Reject("audio_missing", "a.txt:3", "no such file", id="c/train/1"))
        rejects.add(Reject("near_duplicate_of:c/train/1", "b.jsonl:2", id="c/train/2", record={"id": "c/train/2"}))
        rejects.add(Reject("near_duplicate_of:c/train/7", "b.jsonl:5"))
        assert not path.exists()  # committed only when the block ends
    assert read_jsonl(path) == [
        {"reason": "audio_missing", "source": "a.txt:3", "id": "c/train/1", "detail": "no such file"},
        {"reason": "near_duplicate_of:c/train/1", "source": "b.jsonl:2", "id": "c/train/2", "record": {"id": "c/train/2"}},
        {"reason": "near_duplicate_of:c/train/7", "source": "b.jsonl:5"},
    ]
    assert rejects.total == 3
    assert list(rejects.counts().items()) == [  # most first; ties in the order met
        ("audio_missing", 1), ("near_duplicate_of:c/train/1", 1), ("near_duplicate_of:c/train/7", 1)]
    assert rejects.families() == {"near_duplicate": 2, "audio_missing": 1}


def test_reason_families():
    assert family("near_duplicate_of:c/train/1") == "near_duplicate"
    assert family("exact_duplicate_of:x:y") == "exact_duplicate"
    assert family("invalid_row:emotion") == "invalid_row"
    assert family("segment_out_of_range") == "segment_out_of_range"  # "_of" inside a reason stays
    assert family("refusal") == "refusal"


def test_summary_by_family(tmp_path: Path):
    with Rejects(tmp_path / "r.jsonl", by_family=True) as rejects:
        for reason in ("invalid_row:text", "invalid_row:emotion", "refusal", "invalid_row:text"):
            rejects.add(Reject(reason, "in.jsonl:1"))
    assert rejects.counts() == {"invalid_row": 3, "refusal": 1}
    assert rejects.reasons == {"invalid_row:text": 2, "invalid_row:emotion": 1, "refusal": 1}  # raw ones kept too
    assert [row["reason"] for row in read_jsonl(tmp_path / "r.jsonl")][:2] == ["invalid_row:text", "invalid_row:emotion"]


def test_the_summary_block(tmp_path: Path):
    path = tmp_path / "out.rejects.jsonl"
    with Rejects(path) as rejects:
        assert rejects.render() == "  rejected 0"
        rejects.add(Reject("text_empty", "x:1"))
        rejects.add(Reject("audio_missing", "x:2"))
        rejects.add(Reject("audio_missing", "x:3"))
    assert rejects.render().splitlines() == [
        f"  rejected 3 (see {path}):",
        f"    {'audio_missing':<24} {2:>8}",
        f"    {'text_empty':<24} {1:>8}",
    ]


def test_a_huge_detail_is_cut(tmp_path: Path):
    with Rejects(tmp_path / "r.jsonl") as rejects:
        rejects.add(Reject("label_unknown", "labels.txt:9", "x" * 100_000))
    (row,) = read_jsonl(tmp_path / "r.jsonl")
    assert len(row["detail"]) < MAX_DETAIL + 40 and "100,000 characters" in row["detail"]


def test_strict_stops_at_the_first_reject_and_commits_nothing(tmp_path: Path):
    path = tmp_path / "out.rejects.jsonl"
    path.write_text('{"reason": "old", "source": "s"}\n')
    with pytest.raises(StageError, match=r"^a.txt:3 \(c/train/1\): audio_missing: no such file$"):
        with Rejects(path, strict=True, error=StageError) as rejects:
            rejects.add(Reject("audio_missing", "a.txt:3", "no such file", id="c/train/1"))
    assert path.read_text() == '{"reason": "old", "source": "s"}\n'  # the earlier file is left whole
    assert rejects.total == 0
    assert [p.name for p in tmp_path.iterdir()] == ["out.rejects.jsonl"]  # no temporary left behind


def test_a_stage_that_stops_on_some_rejects_only_stops_with_the_same_cut_line(tmp_path: Path):
    """curate --strict stops at a bad input row but writes its filters' drops: it calls `stop`
    itself, and the user reads the same one line (its detail cut) as under `strict`."""
    path = tmp_path / "out.rejects.jsonl"
    with pytest.raises(StageError) as stopped:
        with Rejects(path, error=StageError) as rejects:
            rejects.add(Reject("refusal", "g.jsonl:1", id="c/train/1"))  # not strict: written
            rejects.stop(Reject("invalid_row:text", "g.jsonl:2", "y" * 100_000, id="c/train/2"))
    message = str(stopped.value)
    assert message.startswith("g.jsonl:2 (c/train/2): invalid_row:text: yyy") and "100,000 characters" in message
    assert len(message) < MAX_DETAIL + 80
    assert not path.exists() and rejects.total == 1  # the block failed: nothing committed


def test_a_failing_stage_commits_no_rejects(tmp_path: Path):
    path = tmp_path / "sub" / "out.rejects.jsonl"
    with pytest.raises(RuntimeError, match="disk on fire"):
        with Rejects(path) as rejects:
            rejects.add(Reject("text_empty", "x:1"))
            raise RuntimeError("disk on fire")
    assert not path.exists() and not path.parent.exists()


def test_an_appending_stage_brings_its_own_writer(tmp_path: Path):
    rows = []

    class Appender:
        def write(self, row):
            rows.append(row)

    rejects = Rejects(tmp_path / "gen.rejects.jsonl").write_to(Appender())
    rejects.add(Reject("malformed_row", "m.jsonl:4", "not valid JSON"), key="m.jsonl:4")
    rejects.add(Reject("timeout", "m.jsonl:5", id="c/t/5"), key="m.jsonl:5")
    assert rows == [{"reason": "malformed_row", "source": "m.jsonl:4", "detail": "not valid JSON", "id": "m.jsonl:4"},
                    {"reason": "timeout", "source": "m.jsonl:5", "id": "c/t/5"}]  # its own id wins over the key
    assert "rejected 2" in rejects.render()


def test_add_outside_its_block_is_a_bug(tmp_path: Path):
    with pytest.raises(RuntimeError, match="outside"):
        Rejects(tmp_path / "r.jsonl").add(Reject("x", "y"))


def test_the_record_reader_checks_every_row(tmp_path: Path):
    path = tmp_path / "m.jsonl"
    good = {"id": "c/train/1", "corpus": "c", "split": "train", "audio": "a.flac", "text": "hi"}
    path.write_text("\n".join(['{"id": 1', "[1]", '{"id": "c/train/2", "corpus": "c", "split": "train", '
                               '"audio": "a.flac", "text": 5}', json.dumps(good)]) + "\n")
    rows = list(read_rows(path))
    assert [row.location for row in rows] == [f"{path}:{n}" for n in (1, 2, 3, 4)]
    assert [row.reject.reason if row.reject else None for row in rows] == [
        "malformed_row", "malformed_row", "invalid_row:text", None]
    assert rows[2].reject.id == "c/train/2" and rows[2].reject.record == rows[2].row
    assert rows[3].record.text == "hi" and rows[3].row == good


def test_written_counts_what_the_file_took(tmp_path: Path, monkeypatch):
    """What curate checks kept + rejected = input against: rows the writer took, not adds."""
    from blspdata.records import JsonlWriter

    write_row = JsonlWriter.write
    monkeypatch.setattr(JsonlWriter, "write", lambda self, row: None if row["reason"] == "lost" else write_row(self, row))
    with Rejects(tmp_path / "r.jsonl") as rejects:
        rejects.add(Reject("kept_by_the_file", "x:1"))
        rejects.add(Reject("lost", "x:2"))
        assert (rejects.total, rejects.written) == (2, 1)
