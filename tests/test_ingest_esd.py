"""`blspdata ingest esd`: speaker folders of emotion folders of wavs, one text file per speaker."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SAMPLES, blspdata, by_id, read_jsonl, reasons, write_audio


def lines(path: Path, rows: list[str], encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(rows) + "\n").encode(encoding))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "ESD" / "Emotion Speech Dataset"  # ROOT may be the folder above it
    en = root / "0011"
    lines(en / "0011.txt", [
        "0011_000001\tThe nine the eggs, I keep.\tNeutral",
        "0011_000021\tI am going to the shops.\tNeutral",           # number 21: test
        "0011_000351\tWhat a lovely day.\tAngry",
        "0011_001451\tWhat a surprise.\tHappy",                     # but the wav is in Surprise/
        "0011_001101\tOnly two fields",                             # malformed
        "0011_001102\tNo wav for this one.\tSad",
        "0011_001103\tA broken wav.\tSad",
        "0011_000351\tThe same id again.\tAngry",
    ])
    write_audio(en / "Neutral" / "evaluation" / "0011_000001.wav", 1.5)
    write_audio(en / "Neutral" / "test" / "0011_000021.wav", 1.0)
    write_audio(en / "Angry" / "evaluation" / "0011_000351.wav", 1.2)
    write_audio(en / "Surprise" / "train" / "0011_001451.wav", 1.0)
    (en / "Sad" / "train").mkdir(parents=True)
    (en / "Sad" / "train" / "0011_001103.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt truncated")
    write_audio(en / "Sad" / "train" / "0011_001104.wav", 1.0)     # no line in the text file
    write_audio(en / "Disgust" / "train" / "0011_001751.wav", 1.0)  # not an ESD emotion
    zh = root / "0001"  # no split folders: the split comes from the number
    lines(zh / "0001.txt", ["0001_000001\t打开windows功能。\t中立", "0001_000400\t你怎么又迟到了。\t生气",
                            "0001_001101\t我很难过。\t伤心"], encoding="gb18030")
    write_audio(zh / "Neutral" / "0001_000001.wav", 1.0, rate=24000)
    write_audio(zh / "Angry" / "0001_000400.wav", 1.0)   # the 50th of the Angry run: test
    write_audio(zh / "Sad" / "0001_001101.wav", 1.0)     # the 51st of the Sad run: train
    return tmp_path / "ESD"


def test_esd_labels_splits_languages_and_rejects(corpus: Path, tmp_path: Path):
    out = tmp_path / "esd.jsonl"
    blspdata("ingest", "esd", corpus, "-o", out, "--jobs", "2")
    records = by_id(read_jsonl(out))
    assert {k: (v["emotion"], v["language"]) for k, v in records.items()} == {
        "esd/dev/0001_000001": ("neutral", "zh"), "esd/test/0001_000400": ("angry", "zh"),
        "esd/train/0001_001101": ("sad", "zh"),
        "esd/dev/0011_000001": ("neutral", "en"), "esd/test/0011_000021": ("neutral", "en"),
        "esd/dev/0011_000351": ("angry", "en"),
    }
    first = records["esd/dev/0011_000001"]
    assert first["text"] == "The nine the eggs, I keep." and first["speaker"] == "0011"
    assert first["duration"] == pytest.approx(1.5) and first["sample_rate"] == 16000
    assert first["extra"]["split_from"] == "folder" and first["raw_emotion"] == "Neutral"
    chinese = records["esd/dev/0001_000001"]
    assert chinese["text"] == "打开windows功能。" and chinese["sample_rate"] == 24000  # GB18030 file read
    assert chinese["extra"]["split_from"] == "number"
    assert reasons(read_jsonl(tmp_path / "esd.rejects.jsonl")) == {
        "esd/train/0011_001451": "label_conflict",     # line says Happy, wav in Surprise/
        "esd/train/0011_001101": "malformed_row",
        "esd/train/0011_001102": "audio_missing",
        "esd/train/0011_001103": "audio_unreadable",
        "esd/train/0011_001104": "transcript_missing",
        "esd/train/0011_001751": "label_unknown",      # Disgust/
        "esd/dev/0011_000351": "duplicate_id",
    }
    summary = (tmp_path / "esd.summary.json").read_text()
    assert '"label_conflict": 1' in summary


def test_esd_splits_option_and_strict(corpus: Path, tmp_path: Path):
    out = tmp_path / "dev.jsonl"
    blspdata("ingest", "esd", corpus, "-o", out, "--splits", "dev")
    assert {r["split"] for r in read_jsonl(out)} == {"dev"}
    result = blspdata("ingest", "esd", corpus, "-o", tmp_path / "s.jsonl", "--strict", check=False)
    assert result.returncode == 1 and "0011" in result.stderr
    result = blspdata("ingest", "esd", corpus, "-o", tmp_path / "x.jsonl", "--splits", "valid", check=False)
    assert result.returncode == 1 and "valid" in result.stderr


def test_no_speaker_folders_is_a_clear_error(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    result = blspdata("ingest", "esd", tmp_path / "empty", "-o", tmp_path / "e.jsonl", check=False)
    assert result.returncode == 1 and "0001..0020" in result.stderr


def test_the_bundled_sample_ingests(tmp_path: Path):
    out = tmp_path / "esd.jsonl"
    blspdata("ingest", "esd", SAMPLES / "ESD", "-o", out)
    records = read_jsonl(out)
    assert {r["emotion"] for r in records} == {"neutral", "happy", "angry", "sad", "surprise"}
    assert {r["language"] for r in records} == {"en", "zh"}
    assert {r["split"] for r in records} == {"train", "dev", "test"}
    assert not read_jsonl(tmp_path / "esd.rejects.jsonl")
