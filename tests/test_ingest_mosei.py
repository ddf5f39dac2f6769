"""`blspdata ingest mosei`: segments of long video audio, labelled by the dominant emotion intensity."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SAMPLES, blspdata, by_id, read_jsonl, reasons, write_audio

HEADER = "video_id,segment,start,end,sentiment,happy,sad,anger,surprise,disgust,fear,split"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "CMU_MOSEI"
    write_audio(root / "Raw" / "Audio" / "Full" / "WAV_16000" / "vidA.wav", 30.0)
    write_audio(root / "Raw" / "Audio" / "Full" / "WAV_16000" / "vidB.wav", 10.0)
    full = root / "Raw" / "Transcript" / "Full" / "Combined"  # whole-video text, same file names: not read
    full.mkdir(parents=True)
    (full / "vidA.txt").write_text("I really loved this movie. It made me so sad at the end.\n", encoding="utf-8")
    transcripts = root / "Raw" / "Transcript" / "Segmented" / "Combined"
    transcripts.mkdir(parents=True)
    (transcripts / "vidA.txt").write_text(
        "vidA___0___-0.3___4.0___I really loved this movie.\n"
        "vidA___1___4.0___9.5___It made me so sad at the end.\n"
        "vidA___2___9.5___12.0___Whatever.\n"
        "vidA___3___12.0___15.0___Equally happy and sad.\n"
        "vidA___4___15.0___18.0___Disgusting.\n"
        "vidA___6___25.0___40.0___Runs past the end.\n"
        "vidA___7___20.0___24.0___Nothing much.\n", encoding="utf-8")
    (root / "CMU_MOSEI_Labels.csv").write_text("\n".join([
        HEADER,
        "vidA,0,-0.3,4.0,2.0,2.333,0.0,0.0,0.333,0.0,0.0,train",     # happy; start clamped to 0
        "vidA,1,4.0,9.5,-1.0,0.0,1.667,0.333,0.0,0.0,0.0,valid",    # sad, dev
        "vidA,2,9.5,12.0,0.0,0.333,0.0,0.0,0.0,0.0,0.0,train",      # too weak
        "vidA,3,12.0,15.0,0.0,1.0,1.0,0.0,0.0,0.0,0.0,test",        # tie
        "vidA,4,15.0,18.0,-2.0,0.0,0.0,0.0,0.0,2.0,0.0,train",      # disgust: not used
        "vidA,5,18.0,20.0,0.0,1.0,0.0,0.0,0.0,0.0,0.0,train",       # no transcript line
        "vidA,6,25.0,40.0,0.0,0.0,0.0,1.5,0.0,0.0,0.0,train",       # past the audio's end
        "vidA,7,20.0,24.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,test",        # all zero: neutral
        "vidA,8,24.0,25.0,0.0,lots,0.0,0.0,0.0,0.0,0.0,train",      # not a number
        "vidB,0,1.0,3.0,0.0,0.0,0.0,2.0,0.0,0.0,0.0,train,extra",   # a field too many
        "vidC,0,1.0,3.0,0.0,0.0,0.0,0.0,1.0,0.0,0.0,train",         # no audio, no transcript
    ]) + "\n", encoding="utf-8")
    return root


def test_mosei_segments_labels_and_rejects(corpus: Path, tmp_path: Path):
    out = tmp_path / "mosei.jsonl"
    blspdata("ingest", "mosei", corpus, "-o", out, "--jobs", "2")
    records = by_id(read_jsonl(out))
    assert {k: (v["emotion"], v["split"]) for k, v in records.items()} == {
        "mosei/train/vidA_0": ("happy", "train"), "mosei/dev/vidA_1": ("sad", "dev"),
        "mosei/test/vidA_7": ("neutral", "test"),
    }
    happy = records["mosei/train/vidA_0"]
    assert happy["offset"] == 0.0 and happy["duration"] == pytest.approx(4.0)
    assert happy["audio"].endswith("WAV_16000/vidA.wav") and happy["text"] == "I really loved this movie."
    assert happy["extra"]["intensities"]["happy"] == pytest.approx(2.333) and happy["extra"]["sentiment"] == 2.0
    assert happy["speaker"] == "vidA" and happy["raw_emotion"] == "happy"
    assert records["mosei/dev/vidA_1"]["offset"] == 4.0
    table = corpus / "CMU_MOSEI_Labels.csv"
    assert reasons(read_jsonl(tmp_path / "mosei.rejects.jsonl")) == {
        "mosei/train/vidA_2": "label_weak",
        "mosei/test/vidA_3": "label_ambiguous",
        "mosei/train/vidA_4": "label_excluded",
        "mosei/train/vidA_5": "transcript_missing",
        "mosei/train/vidA_6": "segment_out_of_range",
        f"{table}:10": "malformed_row",
        f"{table}:11": "malformed_row",
        "mosei/train/vidC_0": "transcript_missing",
    }


def test_min_intensity_and_label_map(corpus: Path, tmp_path: Path):
    (tmp_path / "map.txt").write_text("disgust angry\n")
    out = tmp_path / "m.jsonl"
    blspdata("ingest", "mosei", corpus, "-o", out, "--min-intensity", "0.3", "--label-map", tmp_path / "map.txt")
    records = by_id(read_jsonl(out))
    assert records["mosei/train/vidA_2"]["emotion"] == "happy"   # 0.333 now enough
    assert records["mosei/train/vidA_4"]["emotion"] == "angry"   # disgust mapped


def test_missing_labels_is_a_clear_error(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    result = blspdata("ingest", "mosei", tmp_path / "empty", "-o", tmp_path / "x.jsonl", check=False)
    assert result.returncode == 1 and "CMU_MOSEI_Labels.csv" in result.stderr
    (tmp_path / "bad.csv").write_text("video_id,start,end,happy\nv,0,1,1\n")
    result = blspdata("ingest", "mosei", tmp_path / "empty", "-o", tmp_path / "x.jsonl", "--labels", tmp_path / "bad.csv",
                      check=False)
    assert result.returncode == 1 and "sad" in result.stderr


def test_the_bundled_sample_ingests(tmp_path: Path):
    out = tmp_path / "mosei.jsonl"
    blspdata("ingest", "mosei", SAMPLES / "CMU_MOSEI", "-o", out)
    records = read_jsonl(out)
    assert {r["emotion"] for r in records} == {"neutral", "happy", "angry", "sad", "surprise"}
    assert all(r["offset"] >= 0 and r["duration"] > 1 for r in records)
    assert {r["reason"] for r in read_jsonl(tmp_path / "mosei.rejects.jsonl")} <= {"label_excluded", "label_weak"}
