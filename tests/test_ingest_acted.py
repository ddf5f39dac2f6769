"""`blspdata ingest ravdess|cremad|savee|tess`: acted corpora whose file names code the label
and the sentence; no official split, so the test split is held out by speaker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SAMPLES, blspdata, by_id, read_jsonl, reasons, write_audio

CANONICAL = {"neutral", "happy", "angry", "sad", "surprise"}


def ingest(corpus: str, root: Path, out: Path, *args, check: bool = True):
    return blspdata("ingest", corpus, root, "-o", out, "--no-progress", "-j", "2", *args, check=check)


def corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really a wav file")
    return path


# ---------------------------------------------------------------------------- RAVDESS

@pytest.fixture
def ravdess(tmp_path: Path) -> Path:
    root = tmp_path / "Audio_Speech_Actors_01-24"
    for name in ("Actor_01/03-01-01-01-01-01-01.wav",   # neutral, "Kids ...", male
                 "Actor_01/03-01-02-02-02-01-01.wav",   # calm: not neutral
                 "Actor_01/03-01-06-01-01-02-01.wav",   # fearful
                 "Actor_02/03-01-08-02-02-02-02.wav",   # surprised, "Dogs ...", female
                 "Actor_02/03-02-03-01-01-01-02.wav",   # song
                 "Actor_02/03-01-05-01-01-01-03.wav",   # actor 03's name in Actor_02/
                 "Actor_02/03-01-05-01.wav",            # not seven fields
                 "Actor_21/03-01-05-02-01-01-21.wav",   # angry, test split by default
                 "Actor_22/03-01-04-01-02-01-22.wav"):  # sad, test
        write_audio(root / name, 1.1)
    corrupt(root / "Actor_22/03-01-03-01-01-01-22.wav")
    (root / "Actor_01/01-01-01-01-01-01-01.mp4").write_bytes(b"")  # a full-AV video beside the audio
    return root


def test_ravdess_records_labels_splits_and_rejects(ravdess: Path, tmp_path: Path):
    out = tmp_path / "ravdess.jsonl"
    ingest("ravdess", ravdess, out)
    records = by_id(read_jsonl(out))
    assert {k: (r["emotion"], r["raw_emotion"], r["speaker"]) for k, r in records.items()} == {
        "ravdess/train/03-01-01-01-01-01-01": ("neutral", "neutral", "Actor_01"),
        "ravdess/train/03-01-08-02-02-02-02": ("surprise", "surprised", "Actor_02"),
        "ravdess/test/03-01-05-02-01-01-21": ("angry", "angry", "Actor_21"),
        "ravdess/test/03-01-04-01-02-01-22": ("sad", "sad", "Actor_22"),
    }
    first, surprised = records["ravdess/train/03-01-01-01-01-01-01"], records["ravdess/train/03-01-08-02-02-02-02"]
    assert first["text"] == "Kids are talking by the door" and surprised["text"] == "Dogs are sitting by the door"
    assert first["extra"] == {"gender": "male", "intensity": "normal", "statement": 1, "repetition": 1}
    assert surprised["extra"]["gender"] == "female" and surprised["extra"]["intensity"] == "strong"
    assert first["duration"] == pytest.approx(1.1) and first["sample_rate"] == 16000
    got = reasons(read_jsonl(tmp_path / "ravdess.rejects.jsonl"))
    assert got == {
        "ravdess/train/03-01-02-02-02-01-01": "label_excluded",
        "ravdess/train/03-01-06-01-01-02-01": "label_excluded",
        "ravdess/train/03-02-03-01-01-01-02": "modality_excluded",
        "ravdess/train/01-01-01-01-01-01-01": "modality_excluded",
        "ravdess/train/03-01-05-01-01-01-03": "malformed_row",
        "ravdess/train/03-01-05-01": "malformed_row",
        "ravdess/test/03-01-03-01-01-01-22": "audio_unreadable",
    }
    summary = json.loads((tmp_path / "ravdess.summary.json").read_text())
    assert summary["records"] == 4 and summary["rejected"] == 7


def test_ravdess_calm_is_neutral_only_by_label_map_and_speakers_choose_the_split(ravdess: Path, tmp_path: Path):
    label_map = tmp_path / "map.txt"
    label_map.write_text("calm neutral\n")
    out = tmp_path / "r.jsonl"
    ingest("ravdess", ravdess, out, "--label-map", label_map, "--test-speakers", "1", "--dev-speakers", "Actor_02")
    records = by_id(read_jsonl(out))
    assert records["ravdess/test/03-01-02-02-02-01-01"]["emotion"] == "neutral"
    assert records["ravdess/test/03-01-02-02-02-01-01"]["raw_emotion"] == "calm"
    assert {r["split"] for r in records.values() if r["speaker"] == "Actor_02"} == {"dev"}
    assert {r["split"] for r in records.values() if r["speaker"] in ("Actor_21", "Actor_22")} == {"train"}
    result = ingest("ravdess", ravdess, tmp_path / "x.jsonl", "--test-speakers", "23", check=False)
    assert result.returncode == 1 and "Actor_23" in result.stderr and "not found" in result.stderr
    result = ingest("ravdess", ravdess, tmp_path / "s.jsonl", "--strict", check=False)
    assert result.returncode == 1 and "modality_excluded" in result.stderr
    assert not (tmp_path / "s.jsonl").exists()


def test_ravdess_in_a_folder_of_its_own_and_not_at_all(ravdess: Path, tmp_path: Path):
    out = tmp_path / "r.jsonl"
    ingest("ravdess", ravdess.parent, out)  # Kaggle's copy: one folder above the actors
    assert len(read_jsonl(out)) == 4
    (tmp_path / "empty").mkdir()
    result = ingest("ravdess", tmp_path / "empty", tmp_path / "e.jsonl", check=False)
    assert result.returncode == 1 and "Actor_01..Actor_24" in result.stderr


# ---------------------------------------------------------------------------- CREMA-D

@pytest.fixture
def cremad(tmp_path: Path) -> Path:
    root = tmp_path / "CREMA-D"
    for name in ("1001_DFA_ANG_XX", "1001_IEO_HAP_HI", "1002_WSI_NEU_XX", "1002_TSI_FEA_LO", "1002_ITH_DIS_MD",
                 "1091_MTI_SAD_LO", "1002_XYZ_SAD_LO", "1002_DFA_BOR_XX", "1002-DFA-SAD-XX"):
        write_audio(root / "AudioWAV" / f"{name}.wav", 1.2)
    corrupt(root / "AudioWAV" / "1001_TAI_SAD_MD.wav")
    (root / "AudioWAV" / "1091_ITS_HAP_HI.wav").write_bytes(b"")
    (root / "VideoDemographics.csv").write_text("ActorID,Age,Sex,Race,Ethnicity\n1001,51,Male,Caucasian,Not Hispanic\n"
                                                "1002,21,Female,Caucasian,Not Hispanic\n")
    return root


def test_cremad_records_labels_texts_gender_and_rejects(cremad: Path, tmp_path: Path):
    out = tmp_path / "cremad.jsonl"
    ingest("cremad", cremad, out)
    records = by_id(read_jsonl(out))
    assert {k: (r["emotion"], r["text"], r["speaker"]) for k, r in records.items()} == {
        "cremad/train/1001_DFA_ANG_XX": ("angry", "Don't forget a jacket", "1001"),
        "cremad/train/1001_IEO_HAP_HI": ("happy", "It's eleven o'clock", "1001"),
        "cremad/train/1002_WSI_NEU_XX": ("neutral", "We'll stop in a couple of minutes", "1002"),
        "cremad/test/1091_MTI_SAD_LO": ("sad", "Maybe tomorrow it will be cold", "1091"),
    }
    assert records["cremad/train/1001_DFA_ANG_XX"]["extra"] == {"sentence": "DFA", "intensity": "unspecified",
                                                                 "gender": "male"}
    assert records["cremad/train/1002_WSI_NEU_XX"]["extra"]["gender"] == "female"
    assert "gender" not in records["cremad/test/1091_MTI_SAD_LO"]["extra"]  # 1091 is not in the table
    assert records["cremad/train/1001_DFA_ANG_XX"]["raw_emotion"] == "ANG"
    assert reasons(read_jsonl(tmp_path / "cremad.rejects.jsonl")) == {
        "cremad/train/1002_TSI_FEA_LO": "label_excluded",
        "cremad/train/1002_ITH_DIS_MD": "label_excluded",
        "cremad/train/1002_XYZ_SAD_LO": "malformed_row",      # no such sentence
        "cremad/train/1002_DFA_BOR_XX": "label_unknown",
        str(cremad / "AudioWAV" / "1002-DFA-SAD-XX.wav"): "malformed_row",
        "cremad/train/1001_TAI_SAD_MD": "audio_unreadable",
        "cremad/test/1091_ITS_HAP_HI": "audio_empty",
    }


def test_cremad_from_its_audio_folder_with_a_label_map(cremad: Path, tmp_path: Path):
    label_map = tmp_path / "map.json"
    label_map.write_text(json.dumps({"FEA": "sad", "ANG": None}))
    out = tmp_path / "c.jsonl"
    ingest("cremad", cremad / "AudioWAV", out, "--label-map", label_map, "--test-speakers", "1002")
    records = by_id(read_jsonl(out))
    assert records["cremad/test/1002_TSI_FEA_LO"]["emotion"] == "sad"
    assert "cremad/train/1001_DFA_ANG_XX" not in records
    assert records["cremad/train/1001_IEO_HAP_HI"]["extra"]["gender"] == "male"  # the table beside AudioWAV/


def test_cremad_clone_without_lfs_is_a_clear_error(tmp_path: Path):
    audio = tmp_path / "CREMA-D" / "AudioWAV"
    audio.mkdir(parents=True)
    for name in ("1001_DFA_ANG_XX", "1001_DFA_DIS_XX"):
        (audio / f"{name}.wav").write_text("version https://git-lfs.github.com/spec/v1\n"
                                           "oid sha256:4d7a21\nsize 43244\n")
    result = ingest("cremad", tmp_path / "CREMA-D", tmp_path / "c.jsonl", check=False)
    assert result.returncode == 1 and "git lfs pull" in result.stderr
    assert not (tmp_path / "c.jsonl").exists()


# ---------------------------------------------------------------------------- SAVEE

@pytest.fixture
def savee(tmp_path: Path) -> Path:
    root = tmp_path / "SAVEE"
    for name in ("DC/a01", "DC/sa02", "DC/su03", "DC/f01", "DC/d02", "JE/n01", "JE/h04", "KL/n01", "KL/x01"):
        write_audio(root / "AudioData" / f"{name}.wav", 1.3)
    corrupt(root / "AudioData" / "JE" / "a01.wav")
    (root / "AudioData" / "Info.txt").write_text("Speakers ...\n")
    return root


def sentences(path: Path) -> Path:
    path.write_text("# code text\na01\tShe had your dark suit in greasy wash water all year.\n"
                    "sa02 Don't ask me to carry an oily rag like that.\nn01\tThe neutral one.\n"
                    "KL_n01\tKL read another sentence.\nh04\n")
    return path


def test_savee_records_texts_from_the_table_and_rejects(savee: Path, tmp_path: Path):
    out = tmp_path / "savee.jsonl"
    ingest("savee", savee, out, "--sentences", sentences(tmp_path / "s.txt"))
    records = by_id(read_jsonl(out))
    assert {k: (r["emotion"], r["text"], r["speaker"]) for k, r in records.items()} == {
        "savee/train/DC_a01": ("angry", "She had your dark suit in greasy wash water all year.", "DC"),
        "savee/train/DC_sa02": ("sad", "Don't ask me to carry an oily rag like that.", "DC"),
        "savee/train/JE_n01": ("neutral", "The neutral one.", "JE"),
        "savee/test/KL_n01": ("neutral", "KL read another sentence.", "KL"),  # its own line wins
    }
    assert records["savee/train/DC_a01"]["extra"] == {"gender": "male", "sentence": "a01"}
    assert records["savee/train/DC_a01"]["raw_emotion"] == "a"
    assert reasons(read_jsonl(tmp_path / "savee.rejects.jsonl")) == {
        "savee/train/DC_su03": "transcript_missing",
        "savee/train/DC_f01": "label_excluded",
        "savee/train/DC_d02": "label_excluded",
        "savee/train/JE_h04": "transcript_missing",
        str(savee / "AudioData" / "KL" / "x01.wav"): "malformed_row",
        f"{tmp_path / 's.txt'}:6": "malformed_row",          # 'h04' with no text
        "savee/train/JE_a01": "audio_unreadable",
    }


def test_savee_without_sentences_and_in_kaggles_flat_layout(savee: Path, tmp_path: Path):
    out = tmp_path / "none.jsonl"
    ingest("savee", savee / "AudioData", out)
    assert read_jsonl(out) == []
    rejects = read_jsonl(tmp_path / "none.rejects.jsonl")
    assert {r["reason"] for r in rejects if r["reason"] != "label_excluded" and r["reason"] != "malformed_row"} == \
        {"transcript_missing"}
    assert "--sentences" in next(r for r in rejects if r["reason"] == "transcript_missing")["detail"]
    flat = tmp_path / "ALL"
    for name in ("DC_a01", "JK_su01", "JK_n01"):
        write_audio(flat / f"{name}.wav", 1.0)
    ingest("savee", flat, out, "--sentences", sentences(tmp_path / "s.txt"), "--test-speakers", "jk")
    assert {r["id"] for r in read_jsonl(out)} == {"savee/train/DC_a01", "savee/test/JK_n01"}


# ---------------------------------------------------------------------------- TESS

@pytest.fixture
def tess(tmp_path: Path) -> Path:
    root = tmp_path / "TESS Toronto emotional speech set data"
    for name in ("OAF_angry/OAF_back_angry", "OAF_Pleasant_surprise/OAF_back_ps", "OAF_Sad/OAF_bath_sad",
                 "OAF_Fear/OAF_back_fear", "YAF_disgust/YAF_bean_disgust", "YAF_neutral/YAF_bean_neutral",
                 "YAF_pleasant_surprised/YAF_chair_ps", "YAF_happy/YAF_chair_sad", "YAF_happy/YAF chair happy"):
        write_audio(root / f"{name}.wav", 1.0)
    corrupt(root / "YAF_happy" / "YAF_dog_happy.wav")
    return root


def test_tess_records_labels_and_rejects(tess: Path, tmp_path: Path):
    out = tmp_path / "tess.jsonl"
    ingest("tess", tess.parent, out)  # the folder Kaggle's zip unpacks into
    records = by_id(read_jsonl(out))
    assert {k: (r["emotion"], r["text"], r["speaker"]) for k, r in records.items()} == {
        "tess/train/OAF_back_angry": ("angry", "Say the word back", "OAF"),
        "tess/train/OAF_back_ps": ("surprise", "Say the word back", "OAF"),
        "tess/train/OAF_bath_sad": ("sad", "Say the word bath", "OAF"),
        "tess/train/YAF_bean_neutral": ("neutral", "Say the word bean", "YAF"),
        "tess/train/YAF_chair_ps": ("surprise", "Say the word chair", "YAF"),
    }
    assert records["tess/train/OAF_back_ps"]["extra"] == {"gender": "female", "age": 64, "word": "back"}
    assert {r["emotion"] for r in records.values()} <= CANONICAL
    assert reasons(read_jsonl(tmp_path / "tess.rejects.jsonl")) == {
        "tess/train/OAF_back_fear": "label_excluded",
        "tess/train/YAF_bean_disgust": "label_excluded",
        "tess/train/YAF_chair_sad": "label_conflict",         # a sad file in YAF_happy/
        str(tess / "YAF_happy" / "YAF chair happy.wav"): "malformed_row",
        "tess/train/YAF_dog_happy": "audio_unreadable",
    }


def test_tess_speaker_split_and_label_map(tess: Path, tmp_path: Path):
    label_map = tmp_path / "map.txt"
    label_map.write_text("fear sad\n")
    out = tmp_path / "t.jsonl"
    ingest("tess", tess, out, "--test-speakers", "YAF", "--label-map", label_map)
    records = by_id(read_jsonl(out))
    assert {r["split"] for r in records.values() if r["speaker"] == "YAF"} == {"test"}
    assert records["tess/train/OAF_back_fear"]["emotion"] == "sad"


# ---------------------------------------------------------------------------- the bundled samples

@pytest.mark.parametrize("corpus, folder, args, labels, rejected", [
    ("ravdess", "RAVDESS", (), {"neutral", "angry"}, {"label_excluded"}),  # the calm clip
    ("cremad", "CREMA-D", (), {"happy", "neutral", "sad"}, set()),
    ("savee", "SAVEE", ("--sentences", SAMPLES / "SAVEE" / "sentences.txt"), {"angry", "surprise", "neutral"}, set()),
    ("tess", "TESS", (), {"surprise", "sad", "happy"}, set()),
])
def test_the_bundled_sample_ingests(corpus, folder, args, labels, rejected, tmp_path: Path):
    out = tmp_path / f"{corpus}.jsonl"
    ingest(corpus, SAMPLES / folder, out, *args)
    records = read_jsonl(out)
    assert {r["emotion"] for r in records} == labels
    assert all(r["duration"] > 1.0 and r["text"] for r in records)
    assert {r["reason"] for r in read_jsonl(tmp_path / f"{corpus}.rejects.jsonl")} == rejected
    if corpus != "tess":
        assert {r["split"] for r in records} == {"train", "test"}
