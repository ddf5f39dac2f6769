"""`blspdata ingest commonvoice`: unquoted TSVs + MP3 clips read in place."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SAMPLES, blspdata, by_id, read_jsonl, reasons, write_mp3

HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment"


def tsv(path: Path, rows: list[str]) -> None:
    path.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "cv-corpus-17.0-2024-03-15" / "en"
    clips = root / "clips"
    for n, seconds in [(1, 2.0), (2, 1.5), (3, 1.0), (5, 1.0), (7, 1.0), (9, 1.0)]:
        write_mp3(clips / f"common_voice_en_{n}.mp3", seconds)
    (clips / "common_voice_en_4.mp3").write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00 not an mp3 at all" * 3)
    tsv(root / "train.tsv", [
        "aaa\tcommon_voice_en_1.mp3\tHe said \"hello and left.\t2\t0\ttwenties\tmale\tEngland English\ten\t",
        "bbb\tcommon_voice_en_2.mp3\tThe second sentence.\t3\t1\t\t\t\ten\t",   # a lone quote above: no run-on
        "ccc\tcommon_voice_en_3.mp3\t\"\"\"Good-bye,\"\" said the boy.\"\t2\t0\t\t\t\ten\t",
        "ddd\tcommon_voice_en_4.mp3\tA corrupt clip.\t2\t0\t\t\t\ten\t",
        "eee\tcommon_voice_en_6.mp3\tNo clip on disk.\t2\t0\t\t\t\ten\t",
        "fff\tcommon_voice_en_7.mp3\ttoo few fields",
        "aaa\tcommon_voice_en_1.mp3\tThe same clip again.\t2\t0\t\t\t\ten\t",
        "ggg\tcommon_voice_en_9.mp3\t\t2\t0\t\t\t\ten\t",                         # empty sentence
    ])
    tsv(root / "dev.tsv", ["hhh\tcommon_voice_en_5.mp3\tA dev sentence.\t2\t0\t\t\t\ten\t"])
    with open(root / "test.tsv", "wb") as handle:
        handle.write((HEADER + "\n").encode())
        handle.write(b"iii\tcommon_voice_en_7.mp3\tCaf\xe9 au lait.\t2\t0\t\t\t\ten\t\n")
    tsv(root / "validated.tsv", ["hhh\tcommon_voice_en_5.mp3\tA dev sentence.\t2\t0\t\t\t\ten\t"])
    return root.parent


def test_commonvoice_records_and_rejects(corpus: Path, tmp_path: Path):
    out = tmp_path / "cv.jsonl"
    blspdata("ingest", "commonvoice", corpus, "-o", out, "--jobs", "2")
    records = by_id(read_jsonl(out))
    assert sorted(records) == ["commonvoice/dev/common_voice_en_5", "commonvoice/train/common_voice_en_1",
                               "commonvoice/train/common_voice_en_2", "commonvoice/train/common_voice_en_3"]
    first = records["commonvoice/train/common_voice_en_1"]
    assert first["text"] == 'He said "hello and left.' and first["speaker"] == "aaa" and first["language"] == "en"
    assert first["duration"] == pytest.approx(2.0, abs=0.03) and first["sample_rate"] == 48000
    assert first["audio"].endswith("en/clips/common_voice_en_1.mp3")  # read in place, not converted
    assert first["extra"] == {"up_votes": "2", "down_votes": "0", "age": "twenties", "gender": "male",
                              "accents": "England English"}
    quoted = records["commonvoice/train/common_voice_en_3"]
    assert quoted["text"] == '"Good-bye," said the boy.' and quoted["raw_text"].startswith('"""')
    assert reasons(read_jsonl(tmp_path / "cv.rejects.jsonl")) == {
        "commonvoice/train/common_voice_en_4": "audio_unreadable",
        "commonvoice/train/common_voice_en_6": "audio_missing",
        f"{corpus}/en/train.tsv:7": "malformed_row",
        "commonvoice/train/common_voice_en_1": "duplicate_id",
        "commonvoice/train/common_voice_en_9": "text_empty",
        "commonvoice/test/common_voice_en_7": "undecodable_text",
    }


def test_commonvoice_splits_and_locale_folder(corpus: Path, tmp_path: Path):
    out = tmp_path / "v.jsonl"
    blspdata("ingest", "commonvoice", corpus / "en", "-o", out, "--splits", "validated")
    assert [r["id"] for r in read_jsonl(out)] == ["commonvoice/validated/common_voice_en_5"]
    result = blspdata("ingest", "commonvoice", corpus, "-o", out, "--locales", "fr", check=False)
    assert result.returncode == 1 and "fr" in result.stderr and "en" in result.stderr
    result = blspdata("ingest", "commonvoice", corpus, "-o", out, "--strict", check=False)
    assert result.returncode == 1 and "common_voice_en_4" in result.stderr


def test_the_bundled_sample_ingests(tmp_path: Path):
    out = tmp_path / "cv.jsonl"
    blspdata("ingest", "commonvoice", SAMPLES / "cv-corpus-sample", "-o", out)
    records = read_jsonl(out)
    assert {r["split"] for r in records} == {"train", "dev", "test"}
    assert all(r["audio"].endswith(".mp3") and r["duration"] > 1 for r in records)
    assert not read_jsonl(tmp_path / "cv.rejects.jsonl")
