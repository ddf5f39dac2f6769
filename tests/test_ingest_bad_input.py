"""Bad input to `blspdata ingest`: a clear reject (with its reason and where) or a one-line
error, never a traceback, and nothing lost (issue 13, "Bad input")."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import blspdata, read_jsonl, write_audio


def librispeech_chapter(root: Path, lines: list[str]) -> Path:
    folder = root / "train-clean-100" / "103" / "1240"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "103-1240.trans.txt").write_text("".join(f"{line}\n" for line in lines))
    return folder


# ---------------------------------------------------------------------------- FLAC cut short

def test_a_flac_cut_to_a_third_is_rejected_by_its_last_frame(tmp_path: Path):
    """A 10 s tone compresses so well that a third of its bytes passes the size bound (the
    smallest frame, STREAMINFO's, is the short last one): the last frame header in the file
    says where the audio really stops."""
    root = tmp_path / "LibriSpeech"
    folder = librispeech_chapter(root, ["103-1240-0000 WHOLE", "103-1240-0001 CUT TO A THIRD"])
    whole = write_audio(folder / "103-1240-0000.flac", 10.0).read_bytes()
    (folder / "103-1240-0001.flac").write_bytes(whole[: len(whole) // 3])
    out = tmp_path / "libri.jsonl"
    result = blspdata("ingest", "librispeech", root, "-o", out)
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["librispeech/train-clean-100/103-1240-0000"]
    assert rows[0]["duration"] == 10.0
    [reject] = read_jsonl(tmp_path / "libri.rejects.jsonl")
    assert reject["id"] == "librispeech/train-clean-100/103-1240-0001" and reject["reason"] == "audio_truncated"
    assert "103-1240-0001.flac: truncated FLAC: its last frame" in reject["detail"]
    assert "but STREAMINFO says 160000" in reject["detail"]
    assert "audio_truncated" in result.stdout


def test_flac_files_of_every_common_kind_are_still_accepted(tmp_path: Path):
    """The last-frame check reads headers of every shape: stereo, 24 bit, 44.1/48/8 kHz
    (sample rate codes), odd lengths (a short last block), noise (sync-like bytes in the data),
    a tag after the last frame."""
    import numpy as np
    import soundfile as sf

    root = tmp_path / "LibriSpeech"
    kinds = [(16000, 1, "PCM_16", 10.0), (44100, 2, "PCM_24", 3.01), (48000, 2, "PCM_16", 2.5),
             (8000, 1, "PCM_S8", 1.3), (22050, 1, "PCM_16", 0.01), (16000, 1, "PCM_16", 61.7)]
    folder = librispeech_chapter(root, [f"103-1240-000{n} KIND {n}" for n in range(len(kinds))])
    noise = np.random.default_rng(0)
    for n, (rate, channels, subtype, seconds) in enumerate(kinds):
        samples = (noise.standard_normal((int(rate * seconds), channels)) * 0.3).clip(-1, 1)
        sf.write(folder / f"103-1240-000{n}.flac", samples, rate, subtype=subtype)
    with open(folder / "103-1240-0000.flac", "ab") as handle:  # an ID3v1 tag some taggers append
        handle.write(b"TAG" + b"title".ljust(125, b"\0"))
    out = tmp_path / "libri.jsonl"
    blspdata("ingest", "librispeech", root, "-o", out)
    assert len(read_jsonl(out)) == len(kinds)
    assert read_jsonl(tmp_path / "libri.rejects.jsonl") == []


# ---------------------------------------------------------------------------- CSV

MELD_HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"


def meld_row(n: int, text: str, utt: int, end_time: str = '"00:16:21,731"') -> str:
    return f'{n},{text},Joey,neutral,neutral,0,{utt},8,21,"00:16:16,059",{end_time}'


def meld_corpus(root: Path, lines: list[str], clips: int) -> Path:
    from conftest import write_mp4

    root.mkdir(parents=True)
    (root / "train_sent_emo.csv").write_text("\n".join([MELD_HEADER, *lines]) + "\n", encoding="utf-8")
    for utt in range(clips):
        write_mp4(root / "train_splits" / f"dia0_utt{utt}.mp4", 1.0)
    return root


def test_a_meld_field_over_128_kib_is_read_not_a_traceback(tmp_path: Path):
    """csv's default field limit is 128 KiB; past it every row after was lost to a `_csv.Error`."""
    long_text = "and then " * 20000  # 180 KB
    root = meld_corpus(tmp_path / "MELD.Raw", [meld_row(1, f'"{long_text}"', 0), meld_row(2, "Fine.", 1)], clips=2)
    out = tmp_path / "meld.jsonl"
    result = blspdata("ingest", "meld", root, "-o", out, check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["meld/train/dia0_utt0", "meld/train/dia0_utt1"]
    assert rows[0]["raw_text"] == long_text


def test_a_meld_row_with_an_unclosed_quote_names_the_rows_it_swallowed(tmp_path: Path):
    """Row 2 lacks the closing quote of its EndTime: csv reads row 3 into that field. Both are
    rejected as `unclosed_quote`, by line, and the rows after are kept."""
    lines = [meld_row(1, "Fine.", 0), meld_row(2, "Oh my God", 1, end_time='"00:16:21,731'),
             meld_row(3, "Row three.", 2), meld_row(4, "Row four.", 3), meld_row(5, '"Row ""five""."', 4)]
    root = meld_corpus(tmp_path / "MELD.Raw", lines, clips=5)
    out = tmp_path / "meld.jsonl"
    result = blspdata("ingest", "meld", root, "-o", out)
    assert [r["id"] for r in read_jsonl(out)] == ["meld/train/dia0_utt0", "meld/train/dia0_utt3", "meld/train/dia0_utt4"]
    assert read_jsonl(out)[2]["raw_text"] == 'Row "five".'
    csv_path = root / "train_sent_emo.csv"
    rejects = {r["source"]: r for r in read_jsonl(tmp_path / "meld.rejects.jsonl")}
    assert {source: r["reason"] for source, r in rejects.items()} == {
        f"{csv_path}:3": "unclosed_quote", f"{csv_path}:4": "unclosed_quote",
        # and their clips, which no row names now
        str(root / "train_splits" / "dia0_utt1.mp4"): "transcript_missing",
        str(root / "train_splits" / "dia0_utt2.mp4"): "transcript_missing"}
    assert "a quote opened on line 3 runs to line 4: the 1 row(s) on line(s) 4 were read" in rejects[f"{csv_path}:3"]["detail"]
    assert "read into the row on line 3" in rejects[f"{csv_path}:4"]["detail"]
    assert json.loads((tmp_path / "meld.summary.json").read_text())["rejects"] == {"unclosed_quote": 2, "transcript_missing": 2}
    assert "unclosed_quote" in result.stdout


def test_a_csv_table_with_an_unclosed_quote_and_a_long_field(tmp_path: Path):
    """The generic importer: a quote never closed swallows every row to the end of the file
    (the field count still fits: the swallowed lines are whole rows); a 300 KB text is read."""
    for name in "abcde":
        write_audio(tmp_path / f"{name}.wav", 1.0)
    table = tmp_path / "table.csv"
    long_text = "la " * 100000
    table.write_text(f'audio,text\na.wav,fine\nb.wav,{long_text}\nc.wav,"unclosed\nd.wav,four\n\ne.wav,five\n')
    out = tmp_path / "table.jsonl"
    result = blspdata("ingest", "csv", table, "-o", out, check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert [r["id"] for r in read_jsonl(out)] == ["table/train/a", "table/train/b"]
    assert read_jsonl(out)[1]["raw_text"] == long_text
    rejects = read_jsonl(tmp_path / "table.rejects.jsonl")
    assert [(r["source"], r["reason"]) for r in rejects] == [
        (f"{table}:4", "unclosed_quote"), (f"{table}:5", "unclosed_quote"), (f"{table}:7", "unclosed_quote")]
    assert "the 2 row(s) on line(s) 5, 7 were read into this row's field" in rejects[0]["detail"]


def test_a_quoted_field_with_its_own_line_break_is_kept(tmp_path: Path):
    """A multi-line transcript, quoted as CSV wants it, is not mistaken for an unclosed quote."""
    write_audio(tmp_path / "a.wav", 1.0)
    write_audio(tmp_path / "b.wav", 1.0)
    table = tmp_path / "table.csv"
    table.write_text('audio,text\na.wav,"first line\nsecond line"\nb.wav,fine\n')
    out = tmp_path / "table.jsonl"
    blspdata("ingest", "csv", table, "-o", out)
    assert [r["raw_text"] for r in read_jsonl(out)] == ["first line\nsecond line", "fine"]
    assert read_jsonl(tmp_path / "table.rejects.jsonl") == []


# ---------------------------------------------------------------------------- a full disk

@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 64 KiB tmpfs (room for three of the clips below), made bigger with `grow()`."""
    disk = tmp_path / "tiny"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                             capture_output=True, text=True, timeout=60)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {mounted.stderr.strip()[:200]}")

    def grow() -> None:
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True, timeout=60)

    try:
        yield disk, grow
    finally:
        subprocess.run(["umount", str(disk)], timeout=60)


def test_meld_extraction_on_a_full_disk_stops_with_one_line_and_resumes(tmp_path: Path, tiny_disk):
    """libsndfile's "System error." was a traceback; now: exit 1, one line naming the file and
    the full disk, no partial file, the clips done kept, and the rerun after freeing space
    extracts only the rest."""
    import soundfile as sf

    disk, grow = tiny_disk
    lines = [meld_row(n, f"Line {n}.", n) for n in range(6)]
    root = meld_corpus(tmp_path / "MELD.Raw", lines, clips=0)
    from conftest import write_mp4
    for utt in range(6):
        write_mp4(root / "train_splits" / f"dia0_utt{utt}.mp4", 3.0)
    out = tmp_path / "meld.jsonl"
    result = blspdata("ingest", "meld", root, "-o", out, "--audio-dir", disk, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    [line] = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert f"cannot write extracted audio {disk / 'train'}" in line and "no space left on the device" in line
    assert not out.exists()
    written = sorted((disk / "train").iterdir())
    assert written and all(p.suffix == ".flac" for p in written)  # no .flac.tmp left behind
    for path in written:  # what was kept is whole
        assert sf.info(path).frames == sf.read(path)[0].shape[0] > 2.9 * 16000
    done = {p.name: p.stat().st_ctime_ns for p in written}

    grow()
    blspdata("ingest", "meld", root, "-o", out, "--audio-dir", disk)
    assert len(read_jsonl(out)) == 6 and read_jsonl(tmp_path / "meld.rejects.jsonl") == []
    assert {name: (disk / "train" / name).stat().st_ctime_ns for name in done} == done  # not extracted again


# ---------------------------------------------------------------------------- one error family

@pytest.mark.parametrize("content", [b'["joy", "happy"]', b'{"joy": "happy",', b'joy happy\ncaf\xe9 -\n', b"joy happy extra\n"])
def test_a_bad_label_map_is_one_line_naming_the_file(tmp_path: Path, content: bytes):
    """A JSON list was an AttributeError traceback; bad JSON and bytes that are not UTF-8 did
    not say which file."""
    write_audio(tmp_path / "a.wav", 1.0)
    table = tmp_path / "table.csv"
    table.write_text("audio,text,mood\na.wav,fine,joy\n")
    label_map = tmp_path / "map.json"
    label_map.write_bytes(content)
    result = blspdata("ingest", "csv", table, "-o", tmp_path / "out.jsonl", "--emotion-col", "mood",
                      "--label-map", label_map, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    [line] = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert str(label_map) in line


def test_ingest_errors_a_notebook_can_catch_are_blspdata_errors(tmp_path: Path):
    from blspdata.errors import BlspdataError
    from blspdata.ingest import ingest_corpus

    with pytest.raises(BlspdataError, match="unknown corpus 'timit'"):
        ingest_corpus("timit", tmp_path, tmp_path / "out.jsonl")
    with pytest.raises(BlspdataError, match="unknown normalizer 'loud'"):
        ingest_corpus("librispeech", tmp_path, tmp_path / "out.jsonl", normalizer="loud")


# ---------------------------------------------------------------------------- BOM, tags only (issue 15)

def test_a_utf8_bom_does_not_spoil_the_first_line(tmp_path: Path):
    """Saved by a Windows editor, a transcript file starts with a BOM: the first LibriSpeech
    line was `malformed_row`, the first IEMOCAP turn `transcript_missing`."""
    from test_ingest_iemocap import session

    libri = tmp_path / "LibriSpeech"
    folder = librispeech_chapter(libri, ["103-1240-0000 FIRST LINE", "103-1240-0001 SECOND LINE"])
    for n in range(2):
        write_audio(folder / f"103-1240-000{n}.flac", 1.0)
    trans = folder / "103-1240.trans.txt"
    trans.write_bytes(b"\xef\xbb\xbf" + trans.read_bytes())
    iemocap = tmp_path / "IEMOCAP_full_release"
    session(iemocap, 1, [("F000", "neu", "Excuse me."), ("M001", "ang", "No.")])
    for path in (iemocap / "Session1/dialog/transcriptions/Ses01F_impro01.txt",
                 iemocap / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"):
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    # The transcription's first line is a turn: with the BOM before "Ses", it was not seen.
    blspdata("ingest", "librispeech", libri, "-o", tmp_path / "libri.jsonl")
    assert [r["text"] for r in read_jsonl(tmp_path / "libri.jsonl")] == ["first line", "second line"]
    assert read_jsonl(tmp_path / "libri.rejects.jsonl") == []
    blspdata("ingest", "iemocap", iemocap, "-o", tmp_path / "iemocap.jsonl", "--test-sessions", "1")
    assert [r["text"] for r in read_jsonl(tmp_path / "iemocap.jsonl")] == ["Excuse me.", "No."]
    assert read_jsonl(tmp_path / "iemocap.rejects.jsonl") == []


def test_a_transcript_of_tags_and_punctuation_only_is_text_empty(tmp_path: Path):
    """`[LAUGHTER].` normalises to "." : no word for the LLM to continue, so `text_empty`."""
    for name in "abc":
        write_audio(tmp_path / f"{name}.wav", 1.0)
    table = tmp_path / "table.csv"
    table.write_text("audio,text\na.wav,[LAUGHTER].\nb.wav,<NOISE> ?!\nc.wav,[LAUGHTER] Oh.\n")
    out = tmp_path / "table.jsonl"
    blspdata("ingest", "csv", table, "-o", out)
    assert [r["text"] for r in read_jsonl(out)] == ["Oh."]
    rejects = read_jsonl(tmp_path / "table.rejects.jsonl")
    assert [(r["id"], r["reason"]) for r in rejects] == [("table/train/a", "text_empty"), ("table/train/b", "text_empty")]
    assert "no letter or digit left after normalisation: '[LAUGHTER].'" in rejects[0]["detail"]
