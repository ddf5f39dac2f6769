"""`blspdata ingest librispeech` on a tree in the real layout, good and bad files mixed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import blspdata, by_id, read_jsonl, reasons, write_audio


def chapter(root: Path, split: str, speaker: str, chapter: str, lines: list[str]) -> Path:
    folder = root / split / speaker / chapter
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(f"{line}\n" for line in lines))
    return folder


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "LibriSpeech"
    good = chapter(root, "train-clean-100", "103", "1240", [
        "103-1240-0000 CHAPTER ONE MISSUS RACHEL LYNDE IS SURPRISED",
        "103-1240-0001 THERE WERE TWENTY FIVE OF THEM",
        "103-1240-0002 THIS LINE HAS NO AUDIO FILE",
        "103-1240-0003 CORRUPT AUDIO",
        "103-1240-0004 EMPTY AUDIO",
        "GARBAGE",
    ])
    write_audio(good / "103-1240-0000.flac", 1.5)
    write_audio(good / "103-1240-0001.flac", 2.25)
    (good / "103-1240-0003.flac").write_bytes(b"fLaC this is not really flac")
    (good / "103-1240-0004.flac").write_bytes(b"")
    write_audio(good / "103-1240-0009.flac", 1.0)  # audio without a transcript line
    # A chapter with an undecodable line among good ones.
    other = root / "dev-clean" / "84" / "121123"
    other.mkdir(parents=True)
    (other / "84-121123.trans.txt").write_bytes(
        b"84-121123-0000 GO DO YOU HEAR\n84-121123-0001 CAF\xe9 LATE\n84-121123-0002 BUT IN LESS THAN FIVE MINUTES\n")
    for n, seconds in enumerate((1.0, 1.0, 3.0)):
        write_audio(other / f"84-121123-000{n}.flac", seconds)
    return root


def test_ingest_librispeech_records_and_rejects(corpus: Path, tmp_path: Path):
    out = tmp_path / "out" / "libri.jsonl.gz"
    result = blspdata("ingest", "librispeech", corpus, "-o", out, "--jobs", "2")
    records = by_id(read_jsonl(out))
    assert sorted(records) == [
        "librispeech/dev-clean/84-121123-0000", "librispeech/dev-clean/84-121123-0002",
        "librispeech/train-clean-100/103-1240-0000", "librispeech/train-clean-100/103-1240-0001",
    ]
    first = records["librispeech/train-clean-100/103-1240-0001"]
    assert first["duration"] == pytest.approx(2.25)
    assert first["sample_rate"] == 16000
    assert first["speaker"] == "103" and first["split"] == "train-clean-100"
    assert first["raw_text"] == "THERE WERE TWENTY FIVE OF THEM"
    assert first["text"] == "there were twenty five of them"  # all-caps lower-cased
    assert first["audio"].endswith("train-clean-100/103/1240/103-1240-0001.flac")
    assert first["emotion"] is None

    rejects = read_jsonl(out.parent / "libri.rejects.jsonl")
    assert reasons(rejects) == {
        "librispeech/train-clean-100/103-1240-0002": "audio_missing",
        "librispeech/train-clean-100/103-1240-0003": "audio_unreadable",
        "librispeech/train-clean-100/103-1240-0004": "audio_empty",
        "librispeech/train-clean-100/103-1240-0009": "transcript_missing",
        "librispeech/train-clean-100/GARBAGE": "malformed_row",
        "librispeech/dev-clean/84-121123-0001": "undecodable_text",
    }
    missing = next(r for r in rejects if r["reason"] == "audio_missing")
    assert missing["source"].endswith("103-1240.trans.txt:3")  # the transcript line, for the user to find

    summary = json.loads((out.parent / "libri.summary.json").read_text())
    assert summary["records"] == 4 and summary["rejected"] == 6
    assert summary["rejects"]["audio_missing"] == 1
    assert summary["splits"]["dev-clean"]["records"] == 2
    assert "4 records" in result.stdout and "audio_unreadable" in result.stdout


def test_strict_stops_at_first_problem_and_writes_nothing(corpus: Path, tmp_path: Path):
    out = tmp_path / "libri.jsonl"
    result = blspdata("ingest", "librispeech", corpus, "-o", out, "--strict", check=False)
    assert result.returncode != 0
    assert "undecodable_text" in result.stderr and "84-121123.trans.txt:2" in result.stderr
    assert not out.exists()
    assert list(tmp_path.glob(".libri*")) == []  # no temporary left behind


def test_output_is_identical_for_identical_input_whatever_the_jobs(corpus: Path, tmp_path: Path):
    blspdata("ingest", "librispeech", corpus, "-o", tmp_path / "a.jsonl.gz", "--jobs", "1")
    blspdata("ingest", "librispeech", corpus, "-o", tmp_path / "b.jsonl.gz", "--jobs", "2")
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    assert (tmp_path / "a.rejects.jsonl").read_bytes() == (tmp_path / "b.rejects.jsonl").read_bytes()


def test_whisper_normalizer_reproduces_the_paper(corpus: Path, tmp_path: Path):
    out = tmp_path / "w.jsonl"
    blspdata("ingest", "librispeech", corpus, "-o", out, "--normalizer", "whisper")
    assert by_id(read_jsonl(out))["librispeech/train-clean-100/103-1240-0001"]["text"] == "there were 25 of them"


def test_splits_option_and_bad_roots(corpus: Path, tmp_path: Path):
    out = tmp_path / "dev.jsonl"
    blspdata("ingest", "librispeech", corpus, "-o", out, "--splits", "dev-clean")
    assert {r["split"] for r in read_jsonl(out)} == {"dev-clean"}

    result = blspdata("ingest", "librispeech", corpus, "-o", out, "--splits", "train-other-500", check=False)
    assert result.returncode == 1 and "train-other-500" in result.stderr and "dev-clean" in result.stderr

    result = blspdata("ingest", "librispeech", tmp_path / "nowhere", "-o", out, check=False)
    assert result.returncode == 1 and str(tmp_path / "nowhere") in result.stderr
    assert "Traceback" not in result.stderr


def test_truncated_flac_is_rejected_not_taken_at_its_header_word(tmp_path: Path):
    root = tmp_path / "LibriSpeech"
    folder = chapter(root, "train-clean-100", "103", "1240", [f"103-1240-000{n} LINE {n}" for n in range(5)])
    whole = write_audio(folder / "103-1240-0000.flac", 2.0).read_bytes()
    (folder / "103-1240-0001.flac").write_bytes(whole[:200])                 # cut inside the first frame
    (folder / "103-1240-0002.flac").write_bytes(whole[: len(whole) // 2])    # cut half way
    (folder / "103-1240-0003.flac").write_bytes(whole[:60])                  # cut inside the metadata
    (folder / "103-1240-0004.flac").write_bytes(whole[:-3])                  # cut inside the last frame
    out = tmp_path / "libri.jsonl"
    blspdata("ingest", "librispeech", root, "-o", out)
    assert [r["id"] for r in read_jsonl(out)] == ["librispeech/train-clean-100/103-1240-0000"]
    rejects = read_jsonl(tmp_path / "libri.rejects.jsonl")
    assert {r["reason"] for r in rejects} == {"audio_truncated"} and len(rejects) == 4
    assert all("truncated FLAC" in r["detail"] for r in rejects)
    assert "does not decode" in by_id(rejects)["librispeech/train-clean-100/103-1240-0004"]["detail"]


def test_flac_without_a_length_is_rejected_with_a_reason(tmp_path: Path):
    """A FLAC written to a pipe never gets its total sample count (STREAMINFO says 0):
    libsndfile reports 2**63 - 1 frames and cannot seek in it. Rejected, not 160 billion hours."""
    root = tmp_path / "LibriSpeech"
    folder = chapter(root, "dev-clean", "84", "121", ["84-121-0000 FINE", "84-121-0001 NO LENGTH"])
    whole = bytearray(write_audio(folder / "84-121-0000.flac", 2.0).read_bytes())
    packed = int.from_bytes(whole[18:26], "big") & ~((1 << 36) - 1)  # total samples := 0
    whole[18:26] = packed.to_bytes(8, "big")
    (folder / "84-121-0001.flac").write_bytes(bytes(whole))
    out = tmp_path / "libri.jsonl"
    blspdata("ingest", "librispeech", root, "-o", out)
    assert [r["id"] for r in read_jsonl(out)] == ["librispeech/dev-clean/84-121-0000"]
    [reject] = read_jsonl(tmp_path / "libri.rejects.jsonl")
    assert reject["reason"] == "audio_unreadable" and "does not give the length" in reject["detail"]
