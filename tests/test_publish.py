"""`blspdata publish` and `verify`: Arrow and Parquet datasets read back with `datasets`,
audio compared with the sources, tampering caught, the Hub failing cleanly offline.

The inputs are continuation records of the sample corpus made with the dry-run backend:
these tests are about publishing, not about what an LLM writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf

from blspdata.records import owned_temp_prefix
from conftest import REPO, blspdata, read_jsonl

SAMPLE = REPO / "manifests" / "sample"


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[Path]:
    work = tmp_path_factory.mktemp("gen")
    outputs = []
    for corpus, task in [("librispeech", "semantic"), ("gigaspeech", "semantic"), ("iemocap", "emotion"),
                         ("meld", "emotion")]:
        manifest = SAMPLE / f"{corpus}.jsonl"
        if corpus == "meld":  # its audio is extracted beside the manifest: ingest it here
            manifest = work / "meld.manifest.jsonl"
            blspdata("ingest", "meld", "samples/corpora/MELD.Raw", "-o", manifest, "--no-progress", cwd=REPO)
        out = work / f"{corpus}.continuations.jsonl"
        blspdata("generate", manifest, "-o", out, "--task", task, "--backend", "dry-run", "--no-progress", cwd=REPO)
        outputs.append(out)
    return outputs


@pytest.fixture(scope="module")
def arrow(records, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pub") / "ds"
    blspdata("publish", *records, "-o", out, "--jobs", "2", "--no-progress", cwd=REPO)
    return out


def source_rows(records: list[Path]) -> dict[str, dict]:
    return {row["id"]: row for path in records for row in read_jsonl(path)}


def test_arrow_reopens_with_datasets_and_matches_the_sources(arrow: Path, records):
    sources = source_rows(records)
    emotion = datasets.load_from_disk(str(arrow / "emotion"))
    semantic = datasets.load_from_disk(str(arrow / "semantic"))
    assert set(emotion) == {"train", "validation", "test"}  # IEMOCAP session 5 + MELD test; MELD dev
    assert set(semantic) == {"train", "validation", "test"}  # LibriSpeech dev-clean / test-clean, GigaSpeech dev/test
    total = sum(len(d) for d in emotion.values()) + sum(len(d) for d in semantic.values())
    assert total == len(sources)
    names = emotion["train"].features["emotion"].names
    assert names == ["neutral", "happy", "angry", "sad", "surprise"]
    for split in semantic:
        for row in semantic[split]:
            source = sources[row["id"]]
            assert (row["text"], row["continuation"], row["task"]) == (source["text"], source["continuation"], "semantic")
            assert row["emotion"] is None
    row = emotion["test"][0]
    assert names[row["emotion"]] == sources[row["id"]]["emotion"]
    assert json.loads(row["generator"]) == sources[row["id"]]["generator"]


def test_audio_is_the_source_segment_at_16k(arrow: Path, records):
    sources = source_rows(records)
    semantic = datasets.load_from_disk(str(arrow / "semantic"))
    checked = 0
    for split in semantic:
        for row in semantic[split].select(range(min(3, len(semantic[split])))):
            source = sources[row["id"]]
            with sf.SoundFile(REPO / source["audio"]) as f:
                f.seek(int(round(source["offset"] * f.samplerate)))
                expected = f.read(int(round(source["duration"] * f.samplerate)), dtype="float32")
            got = row["audio"]["array"]
            assert row["audio"]["sampling_rate"] == 16000 and row["offset"] == 0.0
            assert len(got) == len(expected)
            # FLAC sources are sample-exact; Opus (GigaSpeech) decodes to floats, stored as 16-bit
            np.testing.assert_allclose(got, expected, atol=1 / 32768 + 1e-6)
            checked += 1
    assert checked >= 6


def test_parquet_layout_loads_with_load_dataset(records, tmp_path: Path):
    out = tmp_path / "pq"
    blspdata("publish", *records, "-o", out, "--format", "parquet", "--no-progress", cwd=REPO)
    files = sorted(str(p.relative_to(out)) for p in (out / "data").rglob("*.parquet"))
    assert "data/emotion/train-00000-of-00001.parquet" in files
    loaded = datasets.load_dataset(str(out), "emotion", cache_dir=str(tmp_path / "cache"))
    assert len(loaded["train"]) > 0 and loaded["train"][0]["audio"]["sampling_rate"] == 16000
    card = (out / "README.md").read_text()
    assert "config_name: emotion" in card and "path: data/emotion/train-*" in card
    assert "Continue the following sentence that reflects" in card  # the template text
    assert "BLSP-Emo: Towards Empathetic Large Speech-Language Models" in card
    # verify reads parquet through a temporary datasets cache: gone afterwards, and one that a
    # killed verify left (a dead PID in its owned name) is cleaned up by the next verify.
    temp = tmp_path / "tmp"
    temp.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=60)  # its PID is free once it has exited and been reaped
    mine = owned_temp_prefix("verify")
    leftover = temp / (mine.replace(f".{os.getpid()}.", f".{dead.pid}.") + "abc123")
    (leftover / "datasets").mkdir(parents=True)
    result = subprocess.run([sys.executable, "-m", "blspdata", "verify", str(out)], capture_output=True,
                            text=True, timeout=600, env={**os.environ, "TMPDIR": str(temp)})
    assert result.returncode == 0, result.stderr
    assert list(temp.iterdir()) == []


def test_verify_catches_tampering(arrow: Path, tmp_path: Path):
    assert "check out" in blspdata("verify", arrow).stdout
    copy = tmp_path / "copy"
    import shutil
    shutil.copytree(arrow, copy)
    shard = next((copy / "emotion" / "train").glob("*.arrow"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = blspdata("verify", copy, check=False)
    assert result.returncode == 1 and "checksum differs" in result.stderr


def test_path_mode_and_speaker_disjoint_split(tmp_path: Path):
    rows = read_jsonl(SAMPLE / "librispeech.jsonl")
    for i, row in enumerate(rows):  # a corpus without splits of its own
        row.update(split="all", speaker=f"spk{i % 10}", task="semantic", instruction="x", continuation=f"c {i}",
                   finished=True, generator={"model": "m"})
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "paths"
    blspdata("publish", inputs, "-o", out, "--audio", "path", "--audio-root", REPO, "--validation-fraction", "0.3",
             "--test-fraction", "0.3", "--no-progress", cwd=REPO)
    loaded = datasets.load_from_disk(str(out / "semantic"))
    speakers = {split: set(loaded[split]["speaker"]) for split in loaded}
    assert len(speakers) >= 2 and all(a.isdisjoint(b) for x, a in speakers.items() for y, b in speakers.items() if x < y)
    assert loaded["train"][0]["audio"].startswith("samples/corpora/LibriSpeech/")


def test_existing_output_failures_and_the_offline_hub(records, arrow: Path, tmp_path: Path):
    result = blspdata("publish", *records, "-o", arrow, check=False, cwd=REPO)
    assert result.returncode == 1 and "--overwrite" in result.stderr
    missing = tmp_path / "never"
    result = blspdata("publish", tmp_path / "nope.jsonl", "-o", missing, check=False)
    assert result.returncode == 1 and not missing.exists() and not list(tmp_path.glob(".never*"))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_secret_never_printed"}
    out = tmp_path / "hub"
    run = subprocess.run([sys.executable, "-m", "blspdata", "publish", *map(str, records[:1]), "-o", str(out),
                          "--push-to-hub", "someone/blsp-sample", "--no-progress"], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=600)
    assert run.returncode == 1 and "nothing was uploaded" in run.stderr and "local dataset is intact" in run.stderr
    assert "hf_secret" not in run.stdout + run.stderr
    assert blspdata("verify", out).returncode == 0

    # A real connection failure, not offline mode: the Hub endpoint is a closed loopback port.
    # (huggingface_hub 2.x raises its HTTP client's own httpx2 errors, which are not httpx's.)
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{closed}", "HF_TOKEN": "hf_secret_never_printed"}
    env.pop("HF_HUB_OFFLINE", None)
    unreachable = tmp_path / "hub-unreachable"
    run = subprocess.run([sys.executable, "-m", "blspdata", "publish", *map(str, records[:1]), "-o", str(unreachable),
                          "--push-to-hub", "someone/blsp-sample", "--no-progress"], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=600)
    assert run.returncode == 1, run.stderr
    assert "cannot reach the Hub" in run.stderr and f"127.0.0.1:{closed}" in run.stderr
    assert "Traceback" not in run.stderr and "hf_secret" not in run.stdout + run.stderr
    assert blspdata("verify", unreachable).returncode == 0
    listing = blspdata("publish", *records[:1], "-o", tmp_path / "dry", "--push-to-hub", "someone/x", "--dry-run",
                       "--no-progress", cwd=REPO).stdout
    assert "would upload" in listing and "README.md" in listing and "blspdata.json" in listing


@pytest.mark.parametrize("fmt", ["arrow", "parquet"])
def test_shards_are_cut_at_max_shard_size_and_keep_every_row_in_order(records, arrow: Path, tmp_path: Path, fmt):
    out = tmp_path / fmt
    blspdata("publish", *records, "-o", out, "--format", fmt, "--max-shard-size", "200KB", "--no-progress", cwd=REPO)
    whole = datasets.load_from_disk(str(arrow / "emotion"))["train"]
    if fmt == "arrow":
        shards = sorted((out / "emotion" / "train").glob("data-*.arrow"))
        cut = datasets.load_from_disk(str(out / "emotion"))["train"]
    else:
        shards = sorted((out / "data" / "emotion").glob("train-*.parquet"))
        cut = datasets.load_dataset(str(out), "emotion", cache_dir=str(tmp_path / "cache"))["train"]
    assert len(shards) > 1 and shards[-1].name.endswith(f"-of-{len(shards):05d}.{fmt}")
    assert all(p.stat().st_size < 300_000 for p in shards)  # a shard overshoots by one batch at most
    assert cut["id"] == whole["id"] and cut["continuation"] == whole["continuation"]
    assert blspdata("verify", out).returncode == 0


HOSTILE = "<script>alert(1)</script> | *bold* [link](javascript:alert(1)) `code` $x$ &amp;\n---\nlicense: mit\n# Heading"


def test_the_card_escapes_record_text(tmp_path: Path):
    """Corpus names, generator fields and curate reasons come from records and files anyone can
    write: in the card they are text, never Markdown, HTML or YAML."""
    from huggingface_hub import DatasetCard
    from markdown_it import MarkdownIt

    rows = read_jsonl(SAMPLE / "librispeech.jsonl")[:4]
    generator = {"backend": "<img src=x onerror=alert(1)>", "model": "m` | </code><b>x</b>",
                 "sampling": {"temperature": "<i>0</i>"}, "prompt": {"id": "<u>mine</u>", "sha256": "a|b"}}
    for i, row in enumerate(rows):
        row.update(corpus=HOSTILE, split="all", speaker=f"spk{i}", task="semantic", instruction="x",
                   continuation=f"c {i}", finished=True, generator=generator)
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "in.stats.json").write_text(json.dumps({"kept": "<b>4</b>", "input": 4, "rejects": {"<s>x</s>": 1}}))
    out = tmp_path / "ds"
    blspdata("publish", inputs, "-o", out, "--audio", "path", "--audio-root", REPO, "--no-progress", cwd=REPO)

    card = (out / "README.md").read_text()
    _, body = card.split("\n---\n", 1)
    assert DatasetCard.load(out / "README.md").data.to_dict()["license"] == "other"  # the YAML is ours
    assert "\nlicense: mit" not in body and "\n# Heading" not in body  # no line of its own
    html = MarkdownIt("commonmark").enable("table").render(body)  # raw HTML passes in CommonMark
    for tag in ("<script", "<img", "<b>", "<i>", "<u>", "<s>", 'href="javascript', "<em>", "<strong>", "<hr"):
        assert tag not in html, tag
    assert html.count("<h1>") == 1  # the card's title only
    assert "$x$" not in body  # the Hub renders $...$ as LaTeX
    table = [line for line in body.splitlines() if "Heading" in line]  # the name's last word
    assert len(table) == 1 and table[0].startswith("| semantic/") and table[0].count("|") == 4  # one row, 3 cells
    # ... and it reads as the name: the references render as the characters themselves
    assert "<td>semantic/&lt;script&gt;alert(1)&lt;/script&gt; | *bold* [link](javascript:alert(1)) `code` $x$ " \
           "&amp;amp; --- license: mit # Heading</td>" in html
    assert "<code>&lt;img src=x onerror=alert(1)&gt;</code>" in html and "&lt;u&gt;mine&lt;/u&gt;" in html
    assert blspdata("verify", out).returncode == 0


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_audio_that_cannot_be_read_is_a_reject_and_the_other_rows_are_published(records, tmp_path: Path, jobs):
    """A file gone since curate, a FLAC whose header is garbage (so it is not copied as it is
    but sent to the decoder) and a WAV cut to its header: each one reject with its reason and
    file, in input order, with one worker or two; every other row published with its bytes."""
    rows = read_jsonl(records[0])[:6]  # LibriSpeech: whole 16 kHz FLAC files, copied as they are
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "garbage.flac").write_bytes(b"fLaC" + os.urandom(2000))
    header_only = broken / "header.wav"
    sf.write(header_only, np.zeros(16000, np.float32), 16000)
    header_only.write_bytes(header_only.read_bytes()[:44])
    rows[1] = {**rows[1], "audio": str(tmp_path / "gone.flac")}
    rows[2] = {**rows[2], "audio": str(broken / "garbage.flac")}
    rows[3] = {**rows[3], "audio": str(header_only), "sample_rate": 16000}
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "ds"
    result = blspdata("publish", data, "-o", out, "--jobs", jobs, "--no-progress", cwd=REPO)
    rejects = read_jsonl(out.with_name("ds.rejects.jsonl"))
    assert [(r["id"], r["reason"]) for r in rejects] == [
        (rows[1]["id"], "audio_unreadable"), (rows[2]["id"], "audio_unreadable"), (rows[3]["id"], "audio_empty")]
    assert {r["source"] for r in rejects} == {rows[1]["audio"], rows[2]["audio"], rows[3]["audio"]}
    assert "rejected 3" in result.stderr + result.stdout
    published = datasets.load_from_disk(str(out / "semantic"))
    kept = [row for split in published.values() for row in split.cast_column("audio", datasets.Audio(decode=False))]
    assert sorted(row["id"] for row in kept) == sorted(rows[i]["id"] for i in (0, 4, 5))
    for row in kept:  # copied as it is: the published bytes are the source file's
        assert row["audio"]["bytes"] == Path(REPO / next(r["audio"] for r in rows if r["id"] == row["id"])).read_bytes()


def test_a_strict_stop_leaves_no_file_open_and_a_missing_input_stops_before_any_work(records, tmp_path: Path,
                                                                                     monkeypatch):
    """A notebook user's publish that fails must not leak the files of rows still queued for a
    shard (copied as they are: opened when queued), and an input missing after the first is
    named at once, not once the earlier inputs are published."""
    from blspdata.publish import PublishError, publish

    monkeypatch.chdir(REPO)  # the sample manifests' audio paths are relative to the repository
    rows = read_jsonl(records[0])[:6]  # whole 16 kHz FLAC files: each opened when its row is queued
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows) + "not json\n")
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(PublishError, match="malformed_row"):
        publish([data], tmp_path / "ds", jobs=1, progress=False, strict=True)
    assert len(os.listdir("/proc/self/fd")) == before
    assert not (tmp_path / "ds").exists()

    with pytest.raises(PublishError, match="input not found: .*never.jsonl"):
        publish([data, tmp_path / "never.jsonl"], tmp_path / "ds", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
