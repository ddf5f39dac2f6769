"""`blspdata ingest jsonl|csv`: a user's own corpus described by a table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import blspdata, by_id, read_jsonl, reasons, write_audio


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name, seconds in [("a", 1.0), ("b", 2.0), ("c", 1.5)]:
        write_audio(tmp_path / "corpus" / "wav" / f"{name}.wav", seconds)
    return tmp_path / "corpus"


def test_jsonl_with_emotions(folder: Path, tmp_path: Path):
    rows = [
        {"path": "wav/a.wav", "sentence": "I can't believe it.", "mood": "surprise", "who": "s1", "note": "kept"},
        {"path": "wav/b.wav", "sentence": "Fine.", "mood": "joy", "who": "s2"},
        {"path": "wav/c.wav", "sentence": "Okay then.", "mood": "neutral", "who": "s2"},
        {"path": "wav/missing.wav", "sentence": "Gone.", "mood": "sad", "who": "s3"},
        {"path": "wav/a.wav", "sentence": "Same id again.", "mood": "sad", "who": "s1"},
        {"path": "wav/b.wav", "mood": "sad"},
    ]
    table = folder / "mine.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    label_map = tmp_path / "map.txt"
    label_map.write_text("joy happy   # a comment\n")
    out = tmp_path / "mine.jsonl.gz"
    blspdata("ingest", "jsonl", table, "-o", out, "--audio-col", "path", "--text-col", "sentence",
             "--emotion-col", "mood", "--speaker-col", "who", "--label-map", label_map)
    records = by_id(read_jsonl(out))
    assert sorted(records) == ["mine/train/a", "mine/train/b", "mine/train/c"]
    assert records["mine/train/b"]["emotion"] == "happy" and records["mine/train/b"]["raw_emotion"] == "joy"
    assert records["mine/train/a"]["audio"] == str(folder / "wav" / "a.wav")
    assert records["mine/train/a"]["extra"] == {"note": "kept"}
    assert records["mine/train/c"]["duration"] == pytest.approx(1.5)
    assert sorted(reasons(read_jsonl(tmp_path / "mine.rejects.jsonl")).values()) == [
        "audio_missing", "duplicate_id", "malformed_row", "malformed_row"]


def test_csv_with_id_split_and_unknown_label(folder: Path, tmp_path: Path):
    table = folder / "table.csv"
    table.write_text("utt,audio,text,emotion,split\n"
                     "u1,wav/a.wav,Hello there,happy,train\n"
                     "u2,wav/b.wav,Bye now,bored,test\n"
                     "u3,wav/c.wav,See you,sad,test\n"
                     "u4,wav/c.wav\n")
    out = tmp_path / "table.jsonl"
    blspdata("ingest", "csv", table, "-o", out, "--id-col", "utt", "--emotion-col", "emotion",
             "--split-col", "split", "--corpus", "mycorpus")
    records = by_id(read_jsonl(out))
    assert sorted(records) == ["mycorpus/test/u3", "mycorpus/train/u1"]
    assert reasons(read_jsonl(tmp_path / "table.rejects.jsonl")) == {
        "mycorpus/test/u2": "label_unknown", f"{table}:5": "malformed_row"}


def test_segment_times_must_make_sense(folder: Path, tmp_path: Path):
    table = folder / "segments.csv"
    table.write_text("audio,text,start,length\n"
                     "wav/b.wav,good one,0.5,1.0\n"
                     "wav/b.wav,no length,0.5,\n"
                     "wav/b.wav,negative,-1,1.0\n"
                     "wav/b.wav,not a number,nan,1.0\n"
                     "wav/b.wav,past the end,1.5,1.0\n")
    out = tmp_path / "seg.jsonl"
    blspdata("ingest", "csv", table, "-o", out, "--offset-col", "start", "--duration-col", "length")
    (row,) = read_jsonl(out)
    assert (row["offset"], row["duration"]) == (0.5, 1.0)
    assert sorted(r["reason"] for r in read_jsonl(tmp_path / "seg.rejects.jsonl")) == [
        "malformed_row", "malformed_row", "malformed_row", "segment_out_of_range"]


def test_a_wrong_column_name_is_an_error_naming_the_columns(folder: Path, tmp_path: Path):
    table = folder / "table.csv"
    table.write_text("audio,text,emotion\nwav/a.wav,Hello there,happy\n")
    out = tmp_path / "new" / "table.jsonl"
    result = blspdata("ingest", "csv", table, "-o", out, "--emotion-col", "mood", check=False)
    assert result.returncode == 1
    assert "'mood' (--emotion-col)" in result.stderr and "'audio', 'text', 'emotion'" in result.stderr
    assert not (tmp_path / "new").exists()  # a failed run creates no output folder

    jsonl = folder / "rows.jsonl"
    jsonl.write_text(json.dumps({"path": "wav/a.wav", "text": "Hi."}) + "\n")
    result = blspdata("ingest", "jsonl", jsonl, "-o", out, "--id-col", "utt", check=False)
    assert result.returncode == 1
    assert "'audio' (--audio-col)" in result.stderr and "'utt' (--id-col)" in result.stderr and "'path'" in result.stderr


def test_a_run_failing_part_way_closes_its_progress_bar_and_leaves_no_folder(folder: Path, tmp_path: Path):
    table = folder / "table.csv"
    table.write_text("audio,text\nwav/a.wav,One.\nwav/b.wav,Two.\nwav/missing.wav,Gone.\n")
    out = tmp_path / "new" / "deeper" / "table.jsonl"
    result = blspdata("ingest", "csv", table, "-o", out, "--strict", "--progress", check=False)
    assert result.returncode == 1 and "audio_missing" in result.stderr
    # The bar's line ended before the message (tqdm shows "s/ files" below 1 file a second: a busy machine).
    assert re.search(r"(files/s|s/ ?files)\]\n+error: ", result.stderr), result.stderr
    assert not (tmp_path / "new").exists()


def test_undecodable_jsonl_line_and_hours_per_label(folder: Path, tmp_path: Path):
    table = folder / "rows.jsonl"
    table.write_bytes(b'{"audio": "wav/a.wav", "text": "Hello.", "emotion": "happy"}\n'
                      b'{"audio": "wav/b.wav", "text": "Caf\xe9.", "emotion": "sad"}\n'
                      b'{"audio": "wav/c.wav", "text": "Bye.", "emotion": "happy"}\n')
    out = tmp_path / "rows.jsonl"
    result = blspdata("ingest", "jsonl", table, "-o", out, "--emotion-col", "emotion")
    assert reasons(read_jsonl(tmp_path / "rows.rejects.jsonl")) == {f"{table}:2": "undecodable_text"}
    summary = json.loads((tmp_path / "rows.summary.json").read_text())
    assert summary["emotions"] == {"happy": 2}
    assert summary["emotion_hours"] == {"happy": round(2.5 / 3600, 4)}
    assert re.search(r"emotion happy +2 records +0\.001 h", result.stdout)


def test_a_failed_commit_leaves_no_new_summary_beside_the_old_manifest(folder: Path, tmp_path: Path):
    table = folder / "table.csv"
    table.write_text("audio,text\nwav/a.wav,One.\nwav/b.wav,Two.\nwav/missing.wav,Gone.\n")
    out = tmp_path / "t.jsonl"
    blspdata("ingest", "csv", table, "-o", out)
    table.write_text("audio,text\nwav/a.wav,One.\nwav/missing.wav,Gone.\n")
    rejects = tmp_path / "t.rejects.jsonl"
    rejects.unlink()
    rejects.mkdir()  # its replacement will fail
    result = blspdata("ingest", "csv", table, "-o", out, check=False)
    assert result.returncode == 1
    # The manifest is committed first and the summary last: whatever else, the summary that
    # describes the new run (1 record) is not there beside the old manifest (2 records).
    new_summary = json.loads((tmp_path / "t.summary.json").read_text())["records"] == 1
    old_manifest = len(read_jsonl(out)) == 2
    assert not (new_summary and old_manifest)
    assert "t.rejects.jsonl" in result.stderr
