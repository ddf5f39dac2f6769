"""`blspdata ingest gigaspeech`: segments of long Opus files from GigaSpeech.json, and the
segmented layout of mirrors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import blspdata, by_id, read_jsonl, reasons, write_audio

XS = ["{XL}", "{L}", "{M}", "{S}", "{XS}"]


def seg(sid: str, begin: float, end: float, text: str, subsets=XS) -> dict:
    return {"sid": sid, "speaker": "N/A", "begin_time": begin, "end_time": end, "subsets": subsets, "text_tn": text}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "GigaSpeech"
    write_audio(root / "audio/podcast/P0001/POD0000000001.opus", 10.0, format="OGG", subtype="OPUS")
    write_audio(root / "audio/youtube/P0000/YOU0000000002.opus", 4.0, format="OGG", subtype="OPUS")
    meta = {"audios": [
        {"aid": "POD0000000001", "path": "audio/podcast/P0001/POD0000000001.opus", "source": "podcast",
         "category": "News", "segments": [
             seg("POD0000000001_S0000000", 0.5, 3.0, "AS THEY'RE LEAVING <COMMA> CAN KASH PULL ZAHRA ASIDE <QUESTIONMARK>"),
             seg("POD0000000001_S0000001", 3.0, 4.0, "<MUSIC>"),
             seg("POD0000000001_S0000002", 4.0, 5.0, "<SIL> <NOISE>"),
             seg("POD0000000001_S0000003", 5.0, 7.5, "ONLY IN THE LARGER SUBSET <PERIOD>", ["{XL}", "{L}"]),
             seg("POD0000000001_S0000004", 9.0, 14.0, "PAST THE END OF THE AUDIO <PERIOD>"),
         ]},
        {"aid": "YOU0000000002", "path": "audio/youtube/P0000/YOU0000000002.opus", "source": "youtube",
         "segments": [seg("YOU0000000002_S0000000", 0.0, 2.0, "A DEV SEGMENT <EXCLAMATIONPOINT>", ["{DEV}"])]},
        {"aid": "POD0000000003", "path": "audio/podcast/P0001/POD0000000003.opus", "source": "podcast",
         "segments": [seg("POD0000000003_S0000000", 0.0, 2.0, "NOT DOWNLOADED")]},
    ]}
    (root / "GigaSpeech.json").write_text(json.dumps(meta))
    return root


def test_segments_point_into_long_opus_files(corpus: Path, tmp_path: Path):
    out = tmp_path / "giga.jsonl"
    blspdata("ingest", "gigaspeech", corpus, "-o", out)
    records = by_id(read_jsonl(out))
    assert sorted(records) == ["gigaspeech/dev/YOU0000000002_S0000000", "gigaspeech/train/POD0000000001_S0000000"]
    first = records["gigaspeech/train/POD0000000001_S0000000"]
    assert first["audio"].endswith("audio/podcast/P0001/POD0000000001.opus")
    assert (first["offset"], first["duration"]) == (0.5, 2.5)
    assert first["raw_text"].endswith("<QUESTIONMARK>")
    assert first["text"] == "as they're leaving, can kash pull zahra aside?"
    assert first["extra"]["source"] == "podcast"
    assert reasons(read_jsonl(tmp_path / "giga.rejects.jsonl")) == {
        "gigaspeech/train/POD0000000001_S0000001": "garbage_only",
        "gigaspeech/train/POD0000000001_S0000002": "garbage_only",
        "gigaspeech/train/POD0000000001_S0000004": "segment_out_of_range",
        "gigaspeech/train/POD0000000003_S0000000": "audio_missing",
    }


def test_subset_selects_by_tag_and_punctuation_tags_become_punctuation(corpus: Path, tmp_path: Path):
    out = tmp_path / "giga_l.jsonl"
    blspdata("ingest", "gigaspeech", corpus, "-o", out, "--subset", "L", "--splits", "train", "--normalizer", "none")
    records = by_id(read_jsonl(out))
    assert sorted(records) == ["gigaspeech/train/POD0000000001_S0000000", "gigaspeech/train/POD0000000001_S0000003"]
    assert records["gigaspeech/train/POD0000000001_S0000000"]["text"] == \
        "AS THEY'RE LEAVING, CAN KASH PULL ZAHRA ASIDE?"


def test_segmented_mirror_layout(tmp_path: Path):
    root = tmp_path / "gigaspeech_mirror"
    write_audio(root / "audio/xs_files/xs_chunks_0000/POD0000000001_S0000000.wav", 2.0)
    write_audio(root / "audio/dev_files/dev_chunks_0000/YOU0000000002_S0000000.wav", 1.0)
    header = "sid,text_tn,begin_time,end_time,audio_id,title,url,source,category,original_full_path\n"
    (root / "metadata").mkdir()
    (root / "metadata/xs_chunks_0000_metadata.csv").write_text(
        header + "POD0000000001_S0000000,HELLO THERE <PERIOD>,10.0,12.0,POD0000000001,t,u,podcast,c,p\n"
        "POD0000000001_S0000001,<NOISE>,12.0,13.0,POD0000000001,t,u,podcast,c,p\n"
        "POD0000000001_S0000002,NO AUDIO FILE,13.0,14.0,POD0000000001,t,u,podcast,c,p\n")
    (root / "metadata/dev_chunks_0000_metadata.csv").write_text(
        header + "YOU0000000002_S0000000,A DEV ONE,0.0,1.0,YOU0000000002,t,u,youtube,c,p\n")
    out = tmp_path / "mirror.jsonl"
    result = blspdata("ingest", "gigaspeech", root, "-o", out)
    assert "warning" not in result.stderr
    records = by_id(read_jsonl(out))
    assert sorted(records) == ["gigaspeech/dev/YOU0000000002_S0000000", "gigaspeech/train/POD0000000001_S0000000"]
    train = records["gigaspeech/train/POD0000000001_S0000000"]
    assert (train["offset"], train["duration"]) == (0.0, 2.0) and train["audio"].endswith("POD0000000001_S0000000.wav")
    assert train["extra"]["begin_time"] == 10.0
    assert reasons(read_jsonl(tmp_path / "mirror.rejects.jsonl")) == {
        "gigaspeech/train/POD0000000001_S0000001": "garbage_only",
        "gigaspeech/train/POD0000000001_S0000002": "audio_missing",
    }
    # The metadata carries no subset tags: --subset cannot select, and says so.
    result = blspdata("ingest", "gigaspeech", root, "-o", tmp_path / "xl.jsonl", "--subset", "XL")
    assert "warning: subset XL has no effect" in result.stderr
    assert len(read_jsonl(tmp_path / "xl.jsonl")) == 2


def test_the_segment_index_never_gives_another_sids_file(tmp_path: Path, monkeypatch):
    """The mirror's files are found by 64-bit hashes of their sids: even if every sid had the
    same hash, each sid gets its own file (the first in walk order), and a sid with none gets none."""
    from blspdata.corpora import gigaspeech

    for name in ("a/X_S1.wav", "b/X_S1.opus", "b/Y_S2.flac", "b/notes.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    for colliding in (False, True):
        if colliding:
            monkeypatch.setattr(gigaspeech, "key_hash", lambda text: 7)
        index = gigaspeech._SegmentIndex(str(tmp_path))
        assert index.get("X_S1") == str(tmp_path / "a/X_S1.wav")
        assert index.get("Y_S2") == str(tmp_path / "b/Y_S2.flac")
        assert index.get("Z_S3") is None


def test_unknown_subset_is_a_clear_error(corpus: Path, tmp_path: Path):
    result = blspdata("ingest", "gigaspeech", corpus, "-o", tmp_path / "x.jsonl", "--subset", "XXL", check=False)
    assert result.returncode == 1 and "XXL" in result.stderr and "XS, S, M, L, XL" in result.stderr


def test_damaged_metadata_is_rejected_not_fatal(corpus: Path, tmp_path: Path):
    meta = json.loads((corpus / "GigaSpeech.json").read_text())
    meta["audios"][0]["segments"].append(dict(meta["audios"][0]["segments"][0]))  # listed twice
    meta["audios"][0]["segments"].append(seg("POD0000000001_S0000009", 1.0, 2.0, "NO SUBSETS", None))
    meta["audios"].append("not an object")
    (corpus / "GigaSpeech.json").write_text(json.dumps(meta))
    out = tmp_path / "giga.jsonl"
    blspdata("ingest", "gigaspeech", corpus, "-o", out)
    got = reasons(read_jsonl(tmp_path / "giga.rejects.jsonl"))
    assert got["gigaspeech/train/POD0000000001_S0000000"] == "duplicate_id"
    assert sorted(got.values()).count("malformed_row") == 2
    assert len(read_jsonl(out)) == 2

    (corpus / "GigaSpeech.json").write_text('{"dataset": "GigaSpeech"}')
    result = blspdata("ingest", "gigaspeech", corpus, "-o", out, check=False)
    assert result.returncode == 1 and "lists no audios" in result.stderr
