"""`blspdata ingest meld`: CSV rows + mp4 clips -> 16 kHz mono FLAC, labels mapped, text repaired."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import soundfile as sf

from conftest import blspdata, by_id, read_jsonl, reasons, write_mp4

HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
          "Episode", "StartTime", "EndTime"]


def row(n: int, text: str, emotion: str, dia: int, utt: int, speaker: str = "Chandler") -> list:
    return [n, text, speaker, emotion, "neutral", dia, utt, 8, 21, "00:16:16,059", "00:16:21,731"]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "MELD.Raw"
    root.mkdir()
    rows = [
        row(1, "also I was the point person on my companyâ€™s transition.", "neutral", 0, 0),
        row(2, "You must've had your hands full.", "joy", 0, 1),
        row(3, "That I did. That I did.", "fear", 0, 2),
        row(4, "So let's talk a little bit about your duties.", "disgust", 0, 3),
        row(5, "GO, GO, GO! I did.", "surprise", 0, 4),
        row(6, "Now you'll be heading a whole division.", "anger", 1, 0, speaker="Richard\x92s Date"),
        row(7, "Corrupt clip.", "sadness", 1, 1),
        row(8, "No clip at all.", "neutral", 1, 2),
        row(9, "A clip with no sound.", "neutral", 1, 3),
        row(10, "An unknown label.", "boredom", 1, 4),
    ]
    with open(root / "train_sent_emo.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
        handle.write('11,"Only three fields",Joey\n')
    with open(root / "train_sent_emo.csv", "ab") as handle:
        handle.write(b'12,Fine.,Chandl\xe9r,neutral,neutral,5,4,8,21,"00:16:16,059","00:16:21,731"\n')
    videos = root / "train" / "train_splits"  # one level down, as some extractions leave it
    for dia, utt, seconds in [(0, 0, 1.5), (0, 1, 2.0), (0, 2, 1.0), (0, 3, 1.0), (0, 4, 1.0), (1, 0, 1.0), (5, 5, 1.0)]:
        write_mp4(videos / f"dia{dia}_utt{utt}.mp4", seconds)
    (videos / "dia1_utt1.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    write_mp4(videos / "dia1_utt3.mp4", 1.0, with_audio=False)
    return root


def test_meld_extracts_audio_and_maps_labels(corpus: Path, tmp_path: Path):
    out = tmp_path / "out" / "meld.jsonl"
    blspdata("ingest", "meld", corpus, "-o", out, "--jobs", "2")
    records = by_id(read_jsonl(out))
    assert {k: v["emotion"] for k, v in records.items()} == {
        "meld/train/dia0_utt0": "neutral", "meld/train/dia0_utt1": "happy",
        "meld/train/dia0_utt4": "surprise", "meld/train/dia1_utt0": "angry",
    }
    first = records["meld/train/dia0_utt0"]
    assert "company’s" not in first["raw_text"] and "companyâ€™s" in first["raw_text"]
    assert first["text"] == "also I was the point person on my company's transition."  # repaired by ftfy
    assert first["audio"] == str(tmp_path / "out" / "meld.audio" / "train" / "dia0_utt0.flac")
    audio, rate = sf.read(first["audio"])
    assert rate == 16000 and audio.ndim == 1                        # 16 kHz mono
    assert Path(first["audio"]).stat().st_mode & 0o777 == 0o644      # readable by others, like the manifest
    assert len(audio) / rate == pytest.approx(1.5, abs=0.1)          # AAC adds a little padding
    assert first["duration"] == pytest.approx(len(audio) / rate)
    assert first["extra"]["video"].endswith("train_splits/dia0_utt0.mp4")
    # MELD is not an all-caps corpus: an utterance in capitals keeps its case, as does "I"
    assert records["meld/train/dia0_utt4"]["text"] == "GO, GO, GO! I did."
    assert records["meld/train/dia1_utt0"]["speaker"] == "Richard's Date"  # mis-encoded byte repaired, as the text
    assert reasons(read_jsonl(tmp_path / "out" / "meld.rejects.jsonl")) == {
        "meld/train/dia0_utt2": "label_excluded",      # fear
        "meld/train/dia0_utt3": "label_excluded",      # disgust
        "meld/train/dia1_utt1": "audio_unreadable",
        "meld/train/dia1_utt2": "audio_missing",
        "meld/train/dia1_utt3": "audio_unreadable",    # no audio stream
        "meld/train/dia1_utt4": "label_unknown",
        "meld/train/dia5_utt5": "transcript_missing",  # a clip no row names
        f"{corpus}/train_sent_emo.csv:12": "malformed_row",
        "meld/train/dia5_utt4": "undecodable_text",     # in the Speaker column
    }


def test_extraction_is_skipped_when_unchanged_and_redone_when_the_clip_changes(corpus: Path, tmp_path: Path):
    out = tmp_path / "meld.jsonl"
    audio_dir = tmp_path / "flac"
    blspdata("ingest", "meld", corpus, "-o", out, "--audio-dir", audio_dir)
    flac = audio_dir / "train" / "dia0_utt1.flac"
    first = flac.stat().st_ino, flac.stat().st_mtime_ns
    blspdata("ingest", "meld", corpus, "-o", out, "--audio-dir", audio_dir)
    assert (flac.stat().st_ino, flac.stat().st_mtime_ns) == first  # not rewritten

    clip = corpus / "train" / "train_splits" / "dia0_utt1.mp4"
    write_mp4(clip, 3.0)
    os.utime(clip, ns=(first[1] + 10**9, first[1] + 10**9))
    blspdata("ingest", "meld", corpus, "-o", out, "--audio-dir", audio_dir)
    assert by_id(read_jsonl(out))["meld/train/dia0_utt1"]["duration"] == pytest.approx(3.0, abs=0.1)
    assert not list(audio_dir.rglob("*.tmp"))


def test_missing_csv_is_a_clear_error(tmp_path: Path):
    (tmp_path / "MELD.Raw").mkdir()
    result = blspdata("ingest", "meld", tmp_path / "MELD.Raw", "-o", tmp_path / "m.jsonl", check=False)
    assert result.returncode == 1 and "train_sent_emo.csv" in result.stderr
