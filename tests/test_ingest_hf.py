"""`blspdata ingest hf`: a Hugging Face dataset with its audio embedded, as `datasets` saves it
(a `save_to_disk` folder, parquet files in a Hub repository's layout), read without decoding
the Audio feature; the audio written once to FLAC beside the manifest."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import blspdata, by_id, read_jsonl, reasons, tone, write_audio, write_mp4

datasets = pytest.importorskip("datasets")
from datasets import Audio, ClassLabel, Dataset, DatasetDict, Features, Value  # noqa: E402

IEMOCAP_ORDER = ["ang", "hap", "neu", "sad", "fru"]  # IEMOCAP copies on the Hub: 0 ang, 1 hap, 2 neu, 3 sad
OTHER_ORDER = ["neutral", "happy", "angry", "sad", "frustrated"]  # another copy of the same corpus
OTHER_NAME = {"ang": "angry", "hap": "happy", "neu": "neutral", "sad": "sad", "fru": "frustrated"}


def encoded(seconds: float, rate: int = 16000, fmt: str = "WAV", channels: int = 1, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    samples = tone(seconds, rate)
    if channels > 1:
        samples = np.repeat(samples.reshape(-1, 1), channels, axis=1)
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def iemocap_copy(tmp_path: Path, names: list[str]) -> list[dict]:
    """Rows like an IEMOCAP copy on the Hub, labels as names (indexed into `names` by the caller)."""
    aac = write_mp4(tmp_path / "clip.mp4", 1.0).read_bytes()  # AAC in mp4: not for libsndfile
    on_disk = write_audio(tmp_path / "outside" / "ref.wav", 0.75)  # save_to_disk embeds it
    return [
        {"audio": {"bytes": encoded(1.0), "path": "Ses01F_impro01_F000.wav"}, "text": "Excuse me.",
         "emotion": "neu", "speaker": "Ses01F", "turns": 3},
        {"audio": {"bytes": encoded(1.5, 44100, channels=2), "path": "Ses01F_impro01_M000.wav"}, "text": "Do you have your forms?",
         "emotion": "ang", "speaker": "Ses01M", "turns": 1},
        {"audio": {"bytes": encoded(2.0, fmt="FLAC"), "path": "Ses01F_impro01_F001.flac"}, "text": "Yeah.",
         "emotion": "hap", "speaker": "Ses01F", "turns": 2},
        {"audio": {"bytes": aac, "path": "clip.mp4"}, "text": "From a video.", "emotion": "sad", "speaker": "Ses01M", "turns": 0},
        {"audio": {"bytes": None, "path": str(on_disk)}, "text": "Only a path.", "emotion": "neu", "speaker": None, "turns": 0},
        {"audio": {"bytes": b"RIFF\x00\x00garbage", "path": "bad.wav"}, "text": "Broken audio.", "emotion": "neu", "speaker": "Ses01F", "turns": 0},
        {"audio": None, "text": "No audio at all.", "emotion": "neu", "speaker": "Ses01F", "turns": 0},
        {"audio": {"bytes": encoded(1.0), "path": "x.wav"}, "text": "Frustrated.", "emotion": "fru", "speaker": "Ses01F", "turns": 0},
        {"audio": {"bytes": encoded(1.0), "path": "y.wav"}, "text": "", "emotion": "neu", "speaker": "Ses01F", "turns": 0},
    ]


def as_dataset(rows: list[dict], names: list[str]) -> Dataset:
    """`rows` as `datasets` stores them: Audio feature, emotion a ClassLabel in the order `names`
    (each row's label given as IEMOCAP's code, translated to this copy's name first)."""
    translate = {code: code if names == IEMOCAP_ORDER else OTHER_NAME[code] for code in IEMOCAP_ORDER}
    features = Features({"audio": Audio(), "text": Value("string"), "emotion": ClassLabel(names=names),
                         "speaker": Value("string"), "turns": Value("int32")})
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    columns["emotion"] = [names.index(translate[label]) for label in columns["emotion"]]
    return Dataset.from_dict(columns, features=features)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    rows = iemocap_copy(tmp_path, IEMOCAP_ORDER)
    folder = tmp_path / "iemocap_hf"
    DatasetDict({"train": as_dataset(rows, IEMOCAP_ORDER), "test": as_dataset(rows[:1], IEMOCAP_ORDER)}).save_to_disk(str(folder))
    return folder


def test_save_to_disk_folder(saved: Path, tmp_path: Path):
    out = tmp_path / "out" / "iemocap.jsonl.gz"
    result = blspdata("ingest", "hf", saved, "-o", out, "--jobs", "2")
    assert "split test" in result.stdout and "split train" in result.stdout
    records = by_id(read_jsonl(out))
    assert {k: v["emotion"] for k, v in records.items()} == {
        "iemocap_hf/train/0": "neutral", "iemocap_hf/train/1": "angry", "iemocap_hf/train/2": "happy",
        "iemocap_hf/train/3": "sad", "iemocap_hf/train/4": "neutral", "iemocap_hf/test/0": "neutral"}
    first = records["iemocap_hf/train/0"]
    assert first["raw_emotion"] == "neu" and first["speaker"] == "Ses01F" and first["text"] == "Excuse me."
    assert first["extra"] == {"index": 0, "audio_path": "Ses01F_impro01_F000.wav", "turns": 3}
    audio_dir = tmp_path / "out" / "iemocap.audio"
    assert first["audio"] == str(audio_dir / "train" / "0.flac")
    assert first["duration"] == pytest.approx(1.0) and first["sample_rate"] == 16000
    stereo = records["iemocap_hf/train/1"]  # WAV re-encoded at its native rate and channels
    assert (stereo["sample_rate"], stereo["duration"]) == (44100, pytest.approx(1.5))
    assert sf.info(stereo["audio"]).channels == 2 and sf.info(stereo["audio"]).format == "FLAC"
    flac = records["iemocap_hf/train/2"]  # FLAC copied as it is
    assert Path(flac["audio"]).read_bytes() == encoded(2.0, fmt="FLAC")
    video = records["iemocap_hf/train/3"]  # AAC: decoded with PyAV to 16 kHz mono
    assert video["sample_rate"] == 16000 and sf.info(video["audio"]).channels == 1
    assert video["duration"] == pytest.approx(1.0, abs=0.1)
    referenced = records["iemocap_hf/train/4"]  # a path when saved: save_to_disk embedded the file
    assert referenced["audio"] == str(audio_dir / "train" / "4.flac") and referenced["speaker"] is None
    assert referenced["duration"] == pytest.approx(0.75)
    assert records["iemocap_hf/test/0"]["audio"] == str(audio_dir / "test" / "0.flac")
    assert Path(first["audio"]).stat().st_mode & 0o777 == 0o644
    assert reasons(read_jsonl(tmp_path / "out" / "iemocap.rejects.jsonl")) == {
        "iemocap_hf/train/5": "audio_unreadable", "iemocap_hf/train/6": "audio_missing",
        "iemocap_hf/train/7": "label_excluded", "iemocap_hf/train/8": "text_empty"}
    rejects = by_id(read_jsonl(tmp_path / "out" / "iemocap.rejects.jsonl"))
    assert rejects["iemocap_hf/train/5"]["source"] == f"{saved}:train:5"
    assert "fru" in rejects["iemocap_hf/train/7"]["detail"] and "--label-map" in rejects["iemocap_hf/train/7"]["detail"]
    assert not (audio_dir / "train" / "7.flac").exists()  # rejected rows write no audio


def test_same_corpus_other_class_order_gives_same_labels(tmp_path: Path):
    """ClassLabels are read by name: two copies ordering their classes differently agree."""
    rows = iemocap_copy(tmp_path, IEMOCAP_ORDER)[:4]
    for name, order in [("copy_a", IEMOCAP_ORDER), ("copy_b", OTHER_ORDER)]:
        as_dataset(rows, order).save_to_disk(str(tmp_path / name))
        blspdata("ingest", "hf", tmp_path / name, "-o", tmp_path / f"{name}.jsonl", "--corpus", "iemocap", "--jobs", "1")
    a, b = (by_id(read_jsonl(tmp_path / f"{name}.jsonl")) for name in ("copy_a", "copy_b"))
    assert {k: v["emotion"] for k, v in a.items()} == {k: v["emotion"] for k, v in b.items()} == {
        "iemocap/train/0": "neutral", "iemocap/train/1": "angry", "iemocap/train/2": "happy", "iemocap/train/3": "sad"}
    assert b["iemocap/train/1"]["raw_emotion"] == "angry" and a["iemocap/train/1"]["raw_emotion"] == "ang"


def test_parquet_hub_layout_with_string_labels_and_ids(tmp_path: Path):
    repo = tmp_path / "meld_hf"
    features = Features({"audio": Audio(), "utterance": Value("string"), "label": Value("string"),
                         "utt_id": Value("string"), "speaker_id": Value("string")})

    def rows(split, labels):
        return Dataset.from_dict({
            "audio": [{"bytes": encoded(1.0 + i / 4), "path": f"{split}_{i}.wav"} for i in range(len(labels))],
            "utterance": [f"Line {i} of {split}." for i in range(len(labels))], "label": labels,
            "utt_id": [f"dia{i // 2}/utt{i}" for i in range(len(labels))], "speaker_id": ["Joey"] * len(labels)},
            features=features)

    (repo / "data").mkdir(parents=True)
    rows("train", ["joy", "anger", "calm", "boredom"]).to_parquet(str(repo / "data" / "train-00000-of-00001.parquet"))
    rows("test", ["sadness", "neutral"]).to_parquet(str(repo / "data" / "test-00000-of-00001.parquet"))
    label_map = tmp_path / "map.txt"
    label_map.write_text("calm neutral\n")
    out = tmp_path / "meld.jsonl"
    blspdata("ingest", "hf", repo, "-o", out, "--text-col", "utterance", "--emotion-col", "label", "--id-col", "utt_id",
             "--label-map", label_map, "--jobs", "2")
    records = by_id(read_jsonl(out))
    assert {k: (v["emotion"], v["speaker"]) for k, v in records.items()} == {
        "meld_hf/train/dia0/utt0": ("happy", "Joey"), "meld_hf/train/dia0/utt1": ("angry", "Joey"),
        "meld_hf/train/dia1/utt2": ("neutral", "Joey"),  # calm, by the label map
        "meld_hf/test/dia0/utt0": ("sad", "Joey"), "meld_hf/test/dia0/utt1": ("neutral", "Joey")}
    audio = records["meld_hf/train/dia0/utt1"]["audio"]
    assert Path(audio).parent == tmp_path / "meld.audio" / "train" and Path(audio).name.startswith("dia0_utt1-")
    assert records["meld_hf/train/dia1/utt2"]["duration"] == pytest.approx(1.5)
    assert reasons(read_jsonl(tmp_path / "meld.rejects.jsonl")) == {"meld_hf/train/dia1/utt3": "label_unknown"}
    # one parquet file, a split column, a duplicate id
    single = tmp_path / "single.parquet"
    Dataset.from_dict({"audio": [{"bytes": encoded(1.0), "path": "a.wav"}] * 3, "text": ["One.", "Two.", "Three."],
                       "part": ["dev", "dev", "test"], "key": ["k1", "k1", "k2"]},
                      features=Features({"audio": Audio(), "text": Value("string"), "part": Value("string"),
                                         "key": Value("string")})).to_parquet(str(single))
    blspdata("ingest", "hf", single, "-o", tmp_path / "single.jsonl", "--split-col", "part", "--id-col", "key")
    assert sorted(by_id(read_jsonl(tmp_path / "single.jsonl"))) == ["single/dev/k1", "single/test/k2"]
    assert reasons(read_jsonl(tmp_path / "single.rejects.jsonl")) == {"single/dev/k1": "duplicate_id"}


def test_rows_holding_only_a_path_point_at_the_file(tmp_path: Path):
    """A table whose audio column holds paths, not bytes (written without embedding the files):
    relative paths are relative to the parquet file's folder; nothing is copied."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "refs"
    write_audio(folder / "clips" / "a.wav", 1.25)
    features = Features({"audio": Audio(), "text": Value("string")})
    table = pa.table({"audio": [{"bytes": None, "path": "clips/a.wav"}, {"bytes": None, "path": "clips/gone.wav"}],
                      "text": ["Here.", "Gone."]}, schema=features.arrow_schema)
    pq.write_table(table, folder / "refs.parquet")
    out = tmp_path / "refs.jsonl"
    blspdata("ingest", "hf", folder / "refs.parquet", "-o", out)
    (record,) = read_jsonl(out)
    assert record["audio"] == str(folder / "clips" / "a.wav") and record["duration"] == pytest.approx(1.25)
    assert not (tmp_path / "refs.audio").exists()
    assert reasons(read_jsonl(tmp_path / "refs.rejects.jsonl")) == {"refs/train/1": "audio_missing"}


def test_rerun_writes_nothing_again_and_jobs_do_not_change_output(saved: Path, tmp_path: Path):
    one, two = tmp_path / "one" / "m.jsonl", tmp_path / "two" / "m.jsonl"
    blspdata("ingest", "hf", saved, "-o", one, "--jobs", "1")
    blspdata("ingest", "hf", saved, "-o", two, "--jobs", "2")
    assert one.read_text().replace(str(one.parent), "OUT") == two.read_text().replace(str(two.parent), "OUT")
    flac = tmp_path / "one" / "m.audio" / "train" / "0.flac"
    before = flac.stat().st_ino
    blspdata("ingest", "hf", saved, "-o", one, "--jobs", "1")
    assert flac.stat().st_ino == before  # not written again: it carries the Arrow file's time


def test_user_errors_are_one_line(saved: Path, tmp_path: Path):
    out = tmp_path / "m.jsonl"
    missing = blspdata("ingest", "hf", tmp_path / "nowhere", "-o", out, check=False)
    assert missing.returncode == 1 and missing.stderr.startswith("error: dataset not found:")
    typo = blspdata("ingest", "hf", saved, "-o", out, "--emotion-col", "mood", check=False)
    assert typo.returncode == 1 and "no column 'mood' (--emotion-col)" in typo.stderr and "'emotion'" in typo.stderr
    split = blspdata("ingest", "hf", saved, "-o", out, "--splits", "validation", check=False)
    assert split.returncode == 1 and "no split 'validation'" in split.stderr
    strict = blspdata("ingest", "hf", saved, "-o", out, "--strict", "--jobs", "1", check=False)
    assert strict.returncode == 1 and "audio_unreadable" in strict.stderr and "Traceback" not in strict.stderr
    assert not out.exists()
    not_a_dataset = tmp_path / "empty"
    not_a_dataset.mkdir()
    empty = blspdata("ingest", "hf", not_a_dataset, "-o", out, check=False)
    assert empty.returncode == 1 and "neither a `save_to_disk` folder" in empty.stderr
    # a Hub id the machine cannot reach (offline): one line saying so
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    hub = subprocess.run([sys.executable, "-m", "blspdata", "ingest", "hf", "nobody/no-such-dataset", "-o", str(out)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert hub.returncode == 1 and hub.stderr.startswith("error: nobody/no-such-dataset: ") and "Hub" in hub.stderr


def test_emotion_column_can_be_left_out(saved: Path, tmp_path: Path):
    out = tmp_path / "m.jsonl"
    blspdata("ingest", "hf", saved, "-o", out, "--emotion-col", "-", "--speaker-col", "-", "--splits", "test")
    (record,) = read_jsonl(out)
    assert record["emotion"] is None and record["speaker"] is None and record["extra"]["emotion"] == "neu"


def test_run_config_takes_hf_and_lhotse_corpora(saved: Path, tmp_path: Path):
    """`blspdata run` configs accept both kinds; like jsonl/csv they need a task; paths are read
    beside the config, a Hub id is left as it is."""
    import yaml

    from blspdata.pipeline import ConfigError, load_config

    path = tmp_path / "run.yaml"
    corpora = [
        {"kind": "hf", "root": saved.name, "task": "emotion", "options": {"emotion_col": "emotion", "splits": ["train"]}},
        {"kind": "hf", "name": "hub", "root": "someone/iemocap", "task": "emotion", "options": {"config": "default"}},
        {"kind": "lhotse", "root": "cuts.jsonl.gz", "task": "semantic", "options": {"supervisions": "sup.jsonl.gz",
                                                                                   "audio_root": "audio"}},
    ]
    path.write_text(yaml.safe_dump({"run_dir": "run", "corpora": corpora}))
    local, hub, cuts = load_config(path).corpora
    assert local.root == str(saved) and hub.root == "someone/iemocap"
    assert cuts.root == str(tmp_path / "cuts.jsonl.gz") and cuts.options["supervisions"] == str(tmp_path / "sup.jsonl.gz")
    path.write_text(yaml.safe_dump({"run_dir": "run", "corpora": [{"kind": "hf", "root": saved.name}]}))
    with pytest.raises(ConfigError, match="needs task"):
        load_config(path)


def test_the_sample_hub_dataset(tmp_path: Path):
    """samples/corpora/hf_emotion: an IEMOCAP-like copy in a Hub repository's parquet layout."""
    from conftest import SAMPLES

    out = tmp_path / "hf.jsonl"
    blspdata("ingest", "hf", SAMPLES / "hf_emotion", "-o", out)
    records = read_jsonl(out)
    assert {(r["split"], r["emotion"]) for r in records} == {
        (split, label) for split in ("train", "test") for label in ("angry", "happy", "neutral", "sad")}
    assert len(records) == 12 and all(r["duration"] >= 1.0 for r in records) and read_jsonl(tmp_path / "hf.rejects.jsonl") == []
