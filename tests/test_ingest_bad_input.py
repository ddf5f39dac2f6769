"""Bad input to `blspdata ingest`: a clear reject (with its reason and where) or a one-line
error, never a traceback, and nothing lost (issue 13, "Bad input")."""

from __future__ import annotations

from pathlib import Path

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
    (sample rate codes), odd lengths (a short last block), noise (sync-like bytes in the data)."""
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
    out = tmp_path / "libri.jsonl"
    blspdata("ingest", "librispeech", root, "-o", out)
    assert len(read_jsonl(out)) == len(kinds)
    assert read_jsonl(tmp_path / "libri.rejects.jsonl") == []
