"""`blspdata ingest mead`: actor/audio/emotion/level_n/nnn.m4a -> 16 kHz FLAC, texts from --sentences."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf

from conftest import SAMPLES, blspdata, by_id, read_jsonl, reasons, write_m4a


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "MEAD"
    write_m4a(root / "M003" / "audio" / "angry" / "level_3" / "001.m4a", 1.5)
    write_m4a(root / "M003" / "audio" / "surprised" / "level_1" / "002.m4a", 1.0)
    write_m4a(root / "M003" / "audio" / "contempt" / "level_1" / "001.m4a", 1.0)   # not used by the recipe
    write_m4a(root / "M003" / "audio" / "neutral" / "level_1" / "040.m4a", 1.0)    # no sentence for it
    write_m4a(root / "M003" / "audio" / "happy" / "level_x" / "001.m4a", 1.0)      # not a level
    (root / "M003" / "audio" / "sad" / "level_2").mkdir(parents=True)
    (root / "M003" / "audio" / "sad" / "level_2" / "003.m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A truncated")
    write_m4a(root / "W009" / "audio" / "happy" / "level_2" / "001.m4a", 1.0)
    (tmp_path / "sentences.csv").write_text(
        "emotion,number,text\n"
        "angry,1,She had your dark suit in greasy wash water all year.\n"
        "surprised,2,Don't ask me to carry an oily rag like that.\n"
        "sad,3,Will you tell me why?\n"
        "happy,1,Those musicians harmonize marvelously.\n"
        "happy,x,A bad number.\n"
        "happy,1,A second text for the same sentence.\n", encoding="utf-8")
    with open(tmp_path / "sentences.csv", "a", encoding="utf-8") as handle:
        handle.write("happy,1,W009's own take.,W009\n")  # an actor column value on a row without one: malformed
    return root


def test_mead_extracts_maps_and_rejects(corpus: Path, tmp_path: Path):
    out = tmp_path / "out" / "mead.jsonl"
    blspdata("ingest", "mead", corpus, "-o", out, "--sentences", tmp_path / "sentences.csv", "--test-speakers", "W009", "--jobs", "2")
    records = by_id(read_jsonl(out))
    assert {k: (v["emotion"], v["split"]) for k, v in records.items()} == {
        "mead/train/M003_angry_level_3_001": ("angry", "train"),
        "mead/train/M003_surprised_level_1_002": ("surprise", "train"),
        "mead/test/W009_happy_level_2_001": ("happy", "test"),
    }
    angry = records["mead/train/M003_angry_level_3_001"]
    assert angry["text"] == "She had your dark suit in greasy wash water all year."
    assert angry["speaker"] == "M003" and angry["extra"]["intensity"] == 3 and angry["extra"]["gender"] == "male"
    assert angry["audio"] == str(tmp_path / "out" / "mead.audio" / "M003" / "angry" / "level_3" / "001.flac")
    audio, rate = sf.read(angry["audio"])
    assert rate == 16000 and audio.ndim == 1 and len(audio) / rate == pytest.approx(1.5, abs=0.1)
    got = reasons(read_jsonl(tmp_path / "out" / "mead.rejects.jsonl"))
    sentences = tmp_path / "sentences.csv"
    assert got == {
        f"{sentences}:6": "malformed_row",                       # number x
        f"{sentences}:7": "duplicate_id",
        f"{sentences}:8": "malformed_row",                       # four fields under a three-column header
        "mead/train/M003_contempt_level_1_001": "label_excluded",
        "mead/train/M003_neutral_level_1_040": "transcript_missing",
        "mead/train/M003_happy_level_x_001": "malformed_row",
        "mead/train/M003_sad_level_2_003": "audio_unreadable",
    }


def test_without_sentences_every_clip_is_rejected_saying_why(corpus: Path, tmp_path: Path):
    out = tmp_path / "mead.jsonl"
    blspdata("ingest", "mead", corpus, "-o", out)
    assert read_jsonl(out) == []
    rejects = read_jsonl(tmp_path / "mead.rejects.jsonl")
    missing = [r for r in rejects if r["reason"] == "transcript_missing"]
    assert len(missing) == 5 and all("--sentences" in r["detail"] for r in missing)


def test_bad_options_are_clear_errors(corpus: Path, tmp_path: Path):
    result = blspdata("ingest", "mead", corpus, "-o", tmp_path / "m.jsonl", "--test-speakers", "M999", check=False)
    assert result.returncode == 1 and "M999" in result.stderr
    (tmp_path / "bad.csv").write_text("id,sentence\n1,x\n")
    result = blspdata("ingest", "mead", corpus, "-o", tmp_path / "m.jsonl", "--sentences", tmp_path / "bad.csv", check=False)
    assert result.returncode == 1 and "emotion,number,text" in result.stderr


def test_the_bundled_sample_ingests(tmp_path: Path):
    out = tmp_path / "mead.jsonl"
    blspdata("ingest", "mead", SAMPLES / "MEAD", "-o", out, "--sentences", SAMPLES / "MEAD" / "sentences.csv",
             "--test-speakers", "W009")
    records = read_jsonl(out)
    assert {r["emotion"] for r in records} == {"neutral", "happy", "angry", "sad", "surprise"}
    assert {r["split"] for r in records} == {"train", "test"}
    assert {r["reason"] for r in read_jsonl(tmp_path / "mead.rejects.jsonl")} == {"label_excluded"}
