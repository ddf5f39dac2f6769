"""`blspdata ingest iemocap`: labels from EmoEvaluation, text from transcriptions, sentence wavs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import blspdata, by_id, read_jsonl, reasons, write_audio


def session(root: Path, number: int, turns: list[tuple[str, str, str]], extra_eval: list[str] = (),
            extra_trans: list[str] = (), wavs: list[str] | None = None) -> None:
    """turns: (turn id, label, text)."""
    dialog = f"Ses{number:02d}F_impro01"
    base = root / f"Session{number}"
    (base / "dialog/EmoEvaluation").mkdir(parents=True)
    (base / "dialog/transcriptions").mkdir(parents=True)
    evals = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
    trans = []
    for n, (utt, label, text) in enumerate(turns):
        evals += [f"[{n * 3:.4f} - {n * 3 + 2:.4f}]\t{dialog}_{utt}\t{label}\t[2.5000, 3.5000, 4.0000]",
                  "C-E2:\tNeutral;\t()", "A-E3:\tval 3; act 2; dom  2;\t()", ""]
        trans.append(f"{dialog}_{utt} [{n * 3:08.4f}-{n * 3 + 2:08.4f}]: {text}")
    (base / f"dialog/EmoEvaluation/{dialog}.txt").write_text("\n".join(evals + list(extra_eval)) + "\n")
    (base / f"dialog/transcriptions/{dialog}.txt").write_bytes(
        ("\n".join(trans) + "\n").encode() + b"".join(line.encode("latin-1") + b"\n" for line in extra_trans))
    for utt in (wavs if wavs is not None else [t[0] for t in turns]):
        write_audio(base / f"sentences/wav/{dialog}/{dialog}_{utt}.wav", 1.25)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "IEMOCAP_full_release"
    session(root, 1, [("F000", "neu", "Excuse me."), ("M001", "exc", "That's great news!"),
                      ("F002", "fru", "I've been waiting for hours."), ("M003", "ang", "No, [LAUGHTER] absolutely not ."),
                      ("F004", "xxx", "Whatever."), ("M005", "hap", "Wav is missing."), ("F006", "sad", "Café")],
            extra_eval=["[9.0 - 10.0]\tSes01F_impro01_F099\tneu\tnot a VAD vector",
                        "[9.0 - 10.0]\tSes01F_impro01_F098\tneu\t[2.5.0, 3.0, 3.0]"],
            extra_trans=["Ses01F_impro01_F006 [018.0000-020.0000]: Caf\xe9"],
            wavs=["F000", "M001", "F002", "M003", "F004", "F006", "F007"])
    session(root, 5, [("F000", "sur", "Oh really?"), ("M001", "sad", "I miss her.")])
    return root


def test_labels_are_canonical_and_sessions_split(corpus: Path, tmp_path: Path):
    out = tmp_path / "iemocap.jsonl"
    blspdata("ingest", "iemocap", corpus, "-o", out)
    records = by_id(read_jsonl(out))
    assert {k: (v["split"], v["emotion"], v["raw_emotion"]) for k, v in records.items()} == {
        "iemocap/train/Ses01F_impro01_F000": ("train", "neutral", "neu"),
        "iemocap/train/Ses01F_impro01_M001": ("train", "happy", "exc"),  # exc merged into happy
        "iemocap/train/Ses01F_impro01_M003": ("train", "angry", "ang"),
        "iemocap/test/Ses05F_impro01_F000": ("test", "surprise", "sur"),
        "iemocap/test/Ses05F_impro01_M001": ("test", "sad", "sad"),
    }
    assert records["iemocap/train/Ses01F_impro01_M003"]["text"] == "No, absolutely not."
    turn = records["iemocap/train/Ses01F_impro01_M001"]
    assert turn["speaker"] == "Ses01_M"
    assert turn["raw_text"] == "That's great news!" and turn["text"] == "That's great news!"
    assert turn["duration"] == pytest.approx(1.25)
    assert turn["extra"]["valence"] == 2.5 and turn["extra"]["arousal"] == 3.5 and turn["extra"]["dominance"] == 4.0
    assert reasons(read_jsonl(tmp_path / "iemocap.rejects.jsonl")) == {
        "iemocap/train/Ses01F_impro01_F002": "label_excluded",   # fru
        "iemocap/train/Ses01F_impro01_F004": "label_excluded",   # xxx
        "iemocap/train/Ses01F_impro01_M005": "audio_missing",
        "iemocap/train/Ses01F_impro01_F006": "undecodable_text",
        "iemocap/train/Ses01F_impro01_F007": "label_missing",    # a wav no evaluation line names
        f"{corpus}/Session1/dialog/EmoEvaluation/Ses01F_impro01.txt:31": "malformed_row",
        f"{corpus}/Session1/dialog/EmoEvaluation/Ses01F_impro01.txt:32": "malformed_row",
    }


def test_label_map_and_session_options(corpus: Path, tmp_path: Path):
    label_map = tmp_path / "map.json"
    label_map.write_text(json.dumps({"fru": "angry", "hap": None}))
    out = tmp_path / "iemocap.jsonl"
    blspdata("ingest", "iemocap", corpus, "-o", out, "--label-map", label_map, "--test-sessions", "1",
             "--dev-sessions", "5")
    records = by_id(read_jsonl(out))
    assert records["iemocap/test/Ses01F_impro01_F002"]["emotion"] == "angry"
    assert "iemocap/dev/Ses05F_impro01_F000" in records
    assert reasons(read_jsonl(tmp_path / "iemocap.rejects.jsonl"))["iemocap/test/Ses01F_impro01_M005"] == "label_excluded"

    bad_map = tmp_path / "bad.json"
    bad_map.write_text(json.dumps({"fru": "frustrated"}))
    result = blspdata("ingest", "iemocap", corpus, "-o", out, "--label-map", bad_map, check=False)
    assert result.returncode == 1 and "frustrated" in result.stderr and "neutral, happy" in result.stderr


def test_sessions_that_are_not_there_are_an_error(corpus: Path, tmp_path: Path):
    out = tmp_path / "iemocap.jsonl"
    result = blspdata("ingest", "iemocap", corpus, "-o", out, "--test-sessions", "3", check=False)
    assert result.returncode == 1 and "session(s) 3" in result.stderr and "Session1, Session5" in result.stderr
    result = blspdata("ingest", "iemocap", corpus, "-o", out, "--dev-sessions", "1,6", check=False)
    assert result.returncode == 1 and "session(s) 6" in result.stderr


def test_unknown_label_is_rejected_and_strict_fails(tmp_path: Path):
    root = tmp_path / "IEMOCAP_full_release"
    session(root, 1, [("F000", "neu", "Hello."), ("M001", "bored", "Hm.")])
    out = tmp_path / "iemocap.jsonl"
    blspdata("ingest", "iemocap", root, "-o", out)
    assert reasons(read_jsonl(tmp_path / "iemocap.rejects.jsonl")) == {"iemocap/train/Ses01F_impro01_M001": "label_unknown"}
    result = blspdata("ingest", "iemocap", root, "-o", out, "--strict", check=False)
    assert result.returncode == 1 and "label_unknown" in result.stderr and "bored" in result.stderr
