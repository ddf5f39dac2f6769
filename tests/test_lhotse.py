"""Lhotse both ways: `blspdata ingest lhotse` reads a CutSet (or recordings + supervisions) that
lhotse itself wrote; `blspdata export lhotse` writes manifests that `lhotse.load_manifest` reads
back, with the emotion and the continuation in each supervision's `custom`."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from conftest import blspdata, by_id, read_jsonl, reasons, tone, write_audio

lhotse = pytest.importorskip("lhotse")  # the `bench` extra; blspdata itself never imports it


def supervision(id: str, recording: str, start: float, duration: float, text: str | None, emotion: str | None = None,
                speaker: str = "spk1") -> "lhotse.SupervisionSegment":
    return lhotse.SupervisionSegment(id=id, recording_id=recording, start=start, duration=duration, text=text,
                                     speaker=speaker, language="English",
                                     custom={"emotion": emotion} if emotion is not None else None)


@pytest.fixture
def lhotse_corpus(tmp_path: Path) -> tuple[Path, list]:
    """Two recordings (one long, with three segments), built and written by lhotse."""
    audio = tmp_path / "corpus" / "audio"
    long, short = write_audio(audio / "long.wav", 6.0), write_audio(audio / "short.flac", 1.5)
    # sources relative to the corpus's parent folder ("corpus/audio/long.wav"), as recipes often leave them
    recordings = lhotse.RecordingSet.from_recordings([lhotse.Recording.from_file(path, relative_path_depth=3)
                                                      for path in (long, short)])
    supervisions = lhotse.SupervisionSet.from_segments([
        supervision("long-0", "long", 0.5, 1.5, "I can't believe it!", "hap"),
        supervision("long-1", "long", 2.0, 1.0, "Leave me alone.", "anger"),
        supervision("long-2", "long", 3.5, 2.0, "Whatever you say.", "fru"),       # excluded by the recipe
        supervision("short-0", "short", 0.0, 1.5, "Oh. Okay.", "neutral", speaker="spk2"),
    ])
    return tmp_path / "corpus", [recordings, supervisions]


def test_cutset_written_by_lhotse(lhotse_corpus, tmp_path: Path):
    folder, (recordings, supervisions) = lhotse_corpus
    cuts = lhotse.CutSet.from_manifests(recordings=recordings, supervisions=supervisions).trim_to_supervisions()
    manifest = folder / "mycorpus_cuts_dev.jsonl.gz"
    cuts.to_file(manifest)
    out = tmp_path / "out.jsonl"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    blspdata("ingest", "lhotse", manifest, "-o", out, "--audio-root", folder.parent, "--jobs", "2", cwd=elsewhere)
    records = by_id(read_jsonl(out))
    assert sorted(records) == ["mycorpus/dev/long-0", "mycorpus/dev/long-1", "mycorpus/dev/short-0"]
    second = records["mycorpus/dev/long-1"]
    assert (second["offset"], second["duration"]) == (pytest.approx(2.0), pytest.approx(1.0))  # cut start + supervision start
    assert second["audio"] == str(folder.parent / recordings["long"].sources[0].source)
    assert (second["emotion"], second["raw_emotion"], second["speaker"], second["language"]) == ("angry", "anger", "spk1", "en")
    assert second["text"] == "Leave me alone." and second["sample_rate"] == 16000
    assert second["extra"]["recording_id"] == "long"
    assert records["mycorpus/dev/short-0"]["emotion"] == "neutral"
    assert records["mycorpus/dev/long-0"]["emotion"] == "happy"  # IEMOCAP's code
    assert reasons(read_jsonl(tmp_path / "out.rejects.jsonl")) == {"mycorpus/dev/long-2": "label_excluded"}


def test_cutset_bad_rows(lhotse_corpus, tmp_path: Path):
    folder, (recordings, supervisions) = lhotse_corpus
    cuts = lhotse.CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    manifest = tmp_path / "cuts.jsonl"
    cuts.to_file(manifest)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    long_cut = rows[0]
    gone = json.loads(json.dumps(rows[1]))
    gone["id"], gone["recording"]["sources"][0]["source"] = "gone", str(folder / "audio" / "gone.flac")
    gone["supervisions"][0].update(id="gone-0", recording_id="gone")
    past_end = json.loads(json.dumps(rows[1]))
    past_end["id"] = "late"
    past_end["supervisions"][0].update(id="late-0", start=1.0, duration=3.0)     # ends at 4 s of a 1.5 s file
    url = json.loads(json.dumps(rows[1]))
    url["id"], url["recording"]["sources"][0] = "remote", {"type": "url", "channels": [0], "source": "https://x/y.flac"}
    url["supervisions"][0]["id"] = "remote-0"
    no_text = json.loads(json.dumps(rows[1]))
    no_text["id"] = "silent"
    no_text["supervisions"][0].update(id="silent-0", text=None)
    mixed = {"id": "mix", "type": "MixedCut", "tracks": [{"cut": long_cut, "offset": 0.0}]}
    unknown = json.loads(json.dumps(rows[1]))
    unknown["id"] = "bored"
    unknown["supervisions"][0].update(id="bored-0", custom={"emotion": "boredom"})
    lines = [json.dumps(r) for r in (long_cut, rows[1], gone, past_end, url, no_text, mixed, unknown)] + ["{not json"]
    lines.append(json.dumps(rows[1]))  # the same cut again
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    blspdata("ingest", "lhotse", manifest, "-o", out, "--corpus", "c", "--split", "test", cwd=folder.parent)
    assert sorted(by_id(read_jsonl(out))) == ["c/test/long-0", "c/test/long-1", "c/test/short-0"]
    assert reasons(read_jsonl(tmp_path / "out.rejects.jsonl")) == {
        "c/test/long-2": "label_excluded", "c/test/gone-0": "audio_missing", "c/test/late-0": "segment_out_of_range",
        "c/test/remote-0": "audio_unsupported", "c/test/silent-0": "text_empty", "c/test/mix": "audio_unsupported",
        "c/test/bored-0": "label_unknown", f"{manifest}:9": "malformed_row", "c/test/short-0": "duplicate_id"}
    strict = blspdata("ingest", "lhotse", manifest, "-o", tmp_path / "strict.jsonl", "--strict", "--no-progress",
                      cwd=folder.parent, check=False)
    assert strict.returncode == 1 and strict.stderr.startswith("error: ") and "Traceback" not in strict.stderr
    assert not (tmp_path / "strict.jsonl").exists()


def test_recordings_and_supervisions_pair(lhotse_corpus, tmp_path: Path):
    folder, (recordings, supervisions) = lhotse_corpus
    orphan = write_audio(folder / "audio" / "orphan.wav", 1.0)
    recordings = lhotse.RecordingSet.from_recordings([*recordings, lhotse.Recording.from_file(orphan, relative_path_depth=3)])
    supervisions = lhotse.SupervisionSet.from_segments([*supervisions, supervision("x-0", "nowhere", 0, 1, "Who?")])
    recordings.to_file(folder / "pair_recordings_train.jsonl.gz")
    supervisions.to_file(folder / "pair_supervisions_train.jsonl.gz")
    out = tmp_path / "pair.jsonl"
    # either order; the corpus and split from the first file's Lhotse name
    blspdata("ingest", "lhotse", folder / "pair_supervisions_train.jsonl.gz", folder / "pair_recordings_train.jsonl.gz",
             "-o", out, cwd=folder.parent)
    records = by_id(read_jsonl(out))
    assert sorted(records) == ["pair/train/long-0", "pair/train/long-1", "pair/train/short-0"]
    assert records["pair/train/long-0"]["offset"] == pytest.approx(0.5)
    rejects = read_jsonl(tmp_path / "pair.rejects.jsonl")
    assert sorted(r["reason"] for r in rejects) == ["audio_missing", "label_excluded", "transcript_missing"]
    assert next(r for r in rejects if r["reason"] == "transcript_missing")["detail"].endswith("recording orphan")
    alone = blspdata("ingest", "lhotse", folder / "pair_recordings_train.jsonl.gz", "-o", out, check=False)
    assert alone.returncode == 1 and "give its supervisions manifest too" in alone.stderr


def manifest_with_continuations(tmp_path: Path) -> Path:
    """A manifest as generate leaves it: whole-file and segment records, a stereo file, continuations."""
    long = write_audio(tmp_path / "wav" / "long.flac", 4.0)
    stereo = tmp_path / "wav" / "stereo.wav"
    sf.write(stereo, tone(1.0).repeat(2).reshape(-1, 2), 16000)
    base = {"corpus": "demo", "sample_rate": 16000, "language": "en", "speaker": "s1", "extra": {"session": 1},
            "task": "emotion", "instruction": "Continue in a happy tone.", "finished": True, "generator": {"model": "m"}}
    rows = [
        {**base, "id": "demo/train/a", "split": "train", "audio": str(long), "offset": 0.0, "duration": 1.5,
         "text": "hello there", "raw_text": "HELLO THERE", "emotion": "happy", "raw_emotion": "hap",
         "continuation": "What a lovely day!"},
        {**base, "id": "demo/train/b", "split": "train", "audio": str(long), "offset": 2.0, "duration": 2.0,
         "text": "go away", "raw_text": "go away", "emotion": "angry", "raw_emotion": "ang", "continuation": "Now!"},
        {**base, "id": "demo/test/c", "split": "test", "audio": str(stereo), "offset": 0.0, "duration": 1.0,
         "text": "fine", "raw_text": "fine", "emotion": "neutral", "raw_emotion": "neu", "speaker": None,
         "continuation": "It is fine."},
    ]
    manifest = tmp_path / "demo.emotion.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def test_export_reads_back_in_lhotse_and_ingests_back(tmp_path: Path):
    manifest = manifest_with_continuations(tmp_path)
    out_dir = tmp_path / "lhotse"
    result = blspdata("export", "lhotse", manifest, "-o", out_dir, "--prefix", "demo", "--jobs", "2")
    assert "3 supervisions, 2 recordings" in result.stdout
    train_recordings = lhotse.load_manifest(out_dir / "demo_recordings_train.jsonl.gz")
    train_supervisions = lhotse.load_manifest(out_dir / "demo_supervisions_train.jsonl.gz")
    assert isinstance(train_recordings, lhotse.RecordingSet) and isinstance(train_supervisions, lhotse.SupervisionSet)
    lhotse.validate_recordings_and_supervisions(train_recordings, train_supervisions)
    (recording,) = train_recordings
    assert (recording.id, recording.duration, recording.sampling_rate) == ("demo/train/long", 4.0, 16000)
    first, second = train_supervisions
    assert (first.id, first.recording_id, first.start, first.duration, first.text, first.speaker) == (
        "demo/train/a", "demo/train/long", 0.0, 1.5, "hello there", "s1")
    assert first.custom["emotion"] == "happy" and first.custom["continuation"] == "What a lovely day!"
    assert first.emotion == "happy" and second.continuation == "Now!" and second.start == 2.0
    assert first.custom["raw_text"] == "HELLO THERE" and first.custom["task"] == "emotion"
    cuts = lhotse.CutSet.from_manifests(recordings=train_recordings, supervisions=train_supervisions).trim_to_supervisions()
    assert sorted(round(c.load_audio().shape[1] / 16000, 2) for c in cuts) == [1.5, 2.0]
    test_supervisions = lhotse.load_manifest(out_dir / "demo_supervisions_test.jsonl.gz")
    (stereo,) = lhotse.load_manifest(out_dir / "demo_recordings_test.jsonl.gz")
    assert stereo.num_channels == 2 and list(test_supervisions)[0].channel == [0, 1]
    summary = json.loads((out_dir / "demo.summary.json").read_text())
    assert summary["supervisions"] == 3 and summary["rejected"] == 0
    # and back: the same records (ids, segments, labels) as the manifest had
    back = tmp_path / "back.jsonl"
    blspdata("ingest", "lhotse", out_dir / "demo_supervisions_train.jsonl.gz", out_dir / "demo_recordings_train.jsonl.gz",
             "-o", back)
    original = {r["id"]: r for r in read_jsonl(manifest) if r["split"] == "train"}
    again = by_id(read_jsonl(back))
    assert sorted(again) == sorted(original)
    for key, row in again.items():
        for name in ("corpus", "split", "audio", "offset", "duration", "text", "raw_text", "emotion", "raw_emotion", "speaker"):
            assert row[name] == original[key][name], name
        assert row["extra"]["session"] == 1 and row["extra"]["custom"]["continuation"] == original[key]["continuation"]


def test_export_rejects_and_needs_no_lhotse(tmp_path: Path):
    manifest = manifest_with_continuations(tmp_path)
    rows = read_jsonl(manifest)
    rows.append({**rows[0], "id": "demo/train/gone", "audio": str(tmp_path / "wav" / "gone.flac")})
    rows.append(rows[1])  # a duplicate id
    rows.append({**rows[0], "id": "demo/train/late", "offset": 3.5, "duration": 2.0})
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"id": 3}\n')
    out_dir = tmp_path / "lhotse"
    # a fresh interpreter: the export runs and lhotse (and torch) are never imported
    code = ("import sys; from blspdata.export import export_lhotse; "
            f"s = export_lhotse({str(manifest)!r}, {str(out_dir)!r}, progress=False); "
            "assert 'lhotse' not in sys.modules and 'torch' not in sys.modules, 'lhotse imported'; "
            "print(s.render())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert reasons(read_jsonl(out_dir / "demo.rejects.jsonl")) == {
        "demo/train/gone": "audio_missing", "demo/train/b": "duplicate_id", "demo/train/late": "segment_out_of_range",
        f"{manifest}:7": "malformed_row"}
    with gzip.open(out_dir / "demo_supervisions_train.jsonl.gz", "rt") as handle:
        assert [json.loads(line)["id"] for line in handle] == ["demo/train/a", "demo/train/b"]
    strict = blspdata("export", "lhotse", manifest, "-o", tmp_path / "strict", "--strict", "--no-progress", check=False)
    assert strict.returncode == 1 and strict.stderr.startswith("error: ") and "audio_missing" in strict.stderr
    assert not (tmp_path / "strict").exists()


def test_the_sample_cutset(tmp_path: Path):
    """samples/corpora/Lhotse: a CutSet as a recipe writes it (sources relative to the repository),
    which lhotse reads and blspdata ingests."""
    from conftest import REPO, SAMPLES

    manifest = SAMPLES / "Lhotse" / "lhotse-demo_cuts_train.jsonl.gz"
    cuts = lhotse.load_manifest(manifest)
    assert len(cuts) == 2 and sum(len(c.supervisions) for c in cuts) == 6
    out = tmp_path / "cuts.jsonl"
    blspdata("ingest", "lhotse", manifest, "-o", out, cwd=REPO)
    records = read_jsonl(out)
    assert [r["id"] for r in records][:2] == ["lhotse-demo/train/rec1-0", "lhotse-demo/train/rec1-1"]
    assert {r["emotion"] for r in records} == {"neutral", "happy", "angry", "sad", "surprise"}
    assert read_jsonl(tmp_path / "cuts.rejects.jsonl") == []
