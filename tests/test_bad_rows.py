"""Bad input rows, as a user meets them: a `.jsonl.gz` cut short, rows of the wrong type or
with impossible values, duplicate ids, the temporaries a killed run left, and two runs of
the same input giving the same bytes. Each stage rejects a bad row with its reason and goes
on; a file that cannot be read to its end stops the stage with one line naming it and the
line reached, before any output is committed. (Dry-run continuations: these tests are about
the rows, not about what an LLM writes.)"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blspdata.records import owned_temp_prefix
from conftest import REPO, blspdata, read_jsonl, reasons

SAMPLE = REPO / "manifests" / "sample"
WORDS = ("then she walked slowly down the long hill to the harbour where the boats were coming in with the "
         "evening tide and the gulls cried").split()


def continuation(n: int) -> str:
    """A distinct, filter-passing continuation per row (no near-duplicates between rows)."""
    shifted = WORDS[n % len(WORDS):] + WORDS[:n % len(WORDS)]
    return " ".join(shifted[:12]) + f" number {n} of {n * 7 + 3}"


def generated(n: int, **changes) -> dict:
    row = {"id": f"c/train/{n}", "corpus": "c", "split": "train", "audio": str(REPO / "samples" / "x.flac"),
           "offset": 0.0, "duration": 2.0, "sample_rate": 16000, "text": f"she put the letters down {n}",
           "raw_text": f"she put the letters down {n}", "speaker": f"s{n % 3}", "language": "en",
           "emotion": "sad", "raw_emotion": "sad", "extra": {}, "task": "emotion",
           "instruction": "Continue the following sentence", "continuation": continuation(n), "finished": True,
           "generator": {"model": "m"}}
    row.update(changes)
    return row


def write(path: Path, rows: list[dict]) -> Path:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode(), mtime=0))
    else:
        path.write_text(text)
    return path


def truncated(path: Path, rows: list[dict]) -> Path:
    """A `.jsonl.gz` of `rows` cut to a third of its bytes (a copy killed half way)."""
    data = gzip.compress("".join(json.dumps(row) + "\n" for row in rows).encode(), mtime=0)
    path.write_bytes(data[: len(data) // 3])
    return path


def folder_listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# ---------------------------------------------------------------------------- truncated .jsonl.gz

def test_a_truncated_gz_stops_every_stage_with_the_file_and_line_and_writes_nothing(tmp_path: Path):
    rows = [generated(n) for n in range(400)]
    cut = truncated(tmp_path / "cut.jsonl.gz", rows)
    before = folder_listing(tmp_path)
    for args in (["curate", cut, "-o", tmp_path / "curated.jsonl.gz"],
                 ["publish", cut, "-o", tmp_path / "ds", "--audio", "path"],
                 ["merge", cut, "-o", tmp_path / "merged.jsonl"]):
        result = blspdata(*args, "--no-progress" if args[0] != "merge" else "--allow-gaps", check=False)
        assert result.returncode == 1, result.stderr
        assert "Aborted" not in result.stderr and "Traceback" not in result.stderr
        (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert str(cut) in line and "gzip stream ends early after line" in line, line
        assert folder_listing(tmp_path) == before, args[0]  # no output, no rejects, no temporaries

    manifest = truncated(tmp_path / "manifest.jsonl.gz",
                         [json.loads(line) for line in (SAMPLE / "iemocap.jsonl").read_text().splitlines()] * 3)
    out = tmp_path / "gen" / "out.jsonl"
    result = blspdata("generate", manifest, "-o", out, "--task", "emotion", "--backend", "dry-run",
                      "--no-progress", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert str(manifest) in result.stderr and "after line" in result.stderr
    assert not out.exists() or read_jsonl(out) == []  # stopped before the first request


def test_ingest_jsonl_names_a_truncated_table(tmp_path: Path):
    table = truncated(tmp_path / "table.jsonl.gz", [{"audio": f"wav/{n}.wav", "text": f"line {n}"} for n in range(300)])
    result = blspdata("ingest", "jsonl", table, "-o", tmp_path / "m.jsonl", "--no-progress", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "Aborted" not in result.stderr
    assert str(table) in result.stderr and "after line" in result.stderr
    assert not (tmp_path / "m.jsonl").exists()


# ---------------------------------------------------------------------------- invalid rows

def test_generate_rejects_invalid_rows_and_generates_the_good_ones(tmp_path: Path):
    rows = [json.loads(line) for line in (SAMPLE / "iemocap.jsonl").read_text().splitlines()[:3]]
    bad = [{**rows[0], "id": rows[0]["id"] + "_text", "text": 12345},
           {**rows[0], "id": rows[0]["id"] + "_dur", "duration": -1.5},
           {**rows[0], "id": rows[0]["id"] + "_label", "emotion": "fear"}]
    manifest = write(tmp_path / "m.jsonl", rows + bad)
    out = tmp_path / "out.jsonl"
    result = blspdata("generate", manifest, "-o", out, "--task", "emotion", "--backend", "dry-run", "--no-progress")
    assert sorted(row["id"] for row in read_jsonl(out)) == sorted(row["id"] for row in rows)
    assert reasons(read_jsonl(tmp_path / "out.rejects.jsonl")) == {
        f"{manifest}:4": "invalid_row:text", f"{manifest}:5": "invalid_row:duration",
        f"{manifest}:6": "invalid_row:emotion"}
    assert "invalid_row:text" in result.stdout
    assert json.loads((tmp_path / "out.summary.json").read_text())["rejects"]["invalid_row:emotion"] == 1
    strict = blspdata("generate", manifest, "-o", tmp_path / "strict.jsonl", "--task", "emotion", "--backend",
                      "dry-run", "--no-progress", "--strict", check=False)
    assert strict.returncode == 1 and "text must be a string" in strict.stderr


def test_curate_rejects_invalid_rows_and_later_copies_of_an_id(tmp_path: Path):
    good = [generated(n) for n in range(4)]
    bad = [generated(10, continuation=42), generated(11, emotion="fear"), generated(12, duration=-1.0),
           generated(13, extra="oops"), generated(14, finished="yes"), generated(15, offset=-0.5),
           {**good[1], "continuation": continuation(99)}]  # good[1]'s id again, another continuation
    inputs = write(tmp_path / "gen.jsonl", good + bad[:3]), write(tmp_path / "gen2.jsonl.gz", bad[3:])
    out = tmp_path / "curated.jsonl.gz"
    result = blspdata("curate", *inputs, "-o", out, "--no-progress")
    assert [row["id"] for row in read_jsonl(out)] == [row["id"] for row in good]
    first, second = inputs
    assert reasons(read_jsonl(tmp_path / "curated.rejects.jsonl")) == {
        "c/train/10": "invalid_row:continuation", "c/train/11": "invalid_row:emotion",
        "c/train/12": "invalid_row:duration", "c/train/13": "invalid_row:extra", "c/train/14": "invalid_row:finished",
        "c/train/15": "invalid_row:offset", "c/train/1": "duplicate_id"}
    sources = {row["reason"]: row["source"] for row in read_jsonl(tmp_path / "curated.rejects.jsonl")}
    assert sources["invalid_row:continuation"] == f"{first}:5" and sources["duplicate_id"] == f"{second}:4"
    stats = json.loads((tmp_path / "curated.stats.json").read_text())
    assert stats["input"] == 11 and stats["kept"] == 4
    assert stats["rejects"] == {"invalid_row": 6, "duplicate_id": 1}
    assert "invalid_row" in result.stdout and "duplicate_id" in result.stdout


def test_the_same_id_in_two_tasks_is_not_a_duplicate(tmp_path: Path):
    rows = [generated(n) for n in range(3)] + [generated(n, task="semantic", emotion=None) for n in range(3)]
    out = tmp_path / "curated.jsonl"
    blspdata("curate", write(tmp_path / "gen.jsonl", rows), "-o", out, "--no-progress")
    assert len(read_jsonl(out)) == 6


def test_publish_rejects_bad_rows_keeps_the_good_and_takes_any_generator(tmp_path: Path):
    good = [generated(n, generator="my own continuations, written by hand") for n in range(3)]
    bad = [generated(10, text=12345), generated(11, continuation=7), generated(12, audio=3), generated(13, id=42),
           generated(14, extra="{}"), generated(15, emotion="fear"), generated(16, finished="yes"),
           {**good[0], "continuation": continuation(50)}]
    curated = write(tmp_path / "curated.jsonl", good + bad)
    out = tmp_path / "ds"
    result = blspdata("publish", curated, "-o", out, "--audio", "path", "--no-progress")
    assert reasons(read_jsonl(tmp_path / "ds.rejects.jsonl")) == {
        "c/train/10": "invalid_row:text", "c/train/11": "invalid_row:continuation", "c/train/12": "invalid_row:audio",
        f"{curated}:7": "invalid_row:id", "c/train/14": "invalid_row:extra", "c/train/15": "invalid_row:emotion",
        "c/train/16": "invalid_row:finished", "c/train/0": "duplicate_id"}
    assert "rejected 8 (see " in result.stdout and "invalid_row:text" in result.stdout  # the block every stage prints
    import datasets

    emotion = datasets.load_from_disk(str(out / "emotion"))
    assert sorted(row["id"] for split in emotion.values() for row in split) == ["c/train/0", "c/train/1", "c/train/2"]
    card = (out / "README.md").read_text()
    assert "my own continuations, written by hand" in card
    blspdata("verify", out)  # exits 0: the published folder checks out


def test_curate_strict_stops_at_a_bad_row_but_not_at_its_own_drops(tmp_path: Path):
    refusal = generated(2, continuation="I'm sorry, but I cannot help with that.")
    rows = [generated(0), generated(1), refusal, generated(3, duration=-1.0)]
    inputs = write(tmp_path / "gen.jsonl", rows)
    out = tmp_path / "curated.jsonl"
    out.write_text("old\n")
    strict = blspdata("curate", inputs, "-o", out, "--no-progress", "--strict", check=False)
    assert strict.returncode == 1 and f"{inputs}:4 (c/train/3): invalid_row:duration" in strict.stderr
    assert out.read_text() == "old\n"  # nothing written: the earlier output whole, no rejects or stats
    assert not (tmp_path / "curated.rejects.jsonl").exists() and not (tmp_path / "curated.stats.json").exists()

    blspdata("curate", inputs, "-o", out, "--no-progress")  # without --strict: rejected, the run goes on
    assert [row["id"] for row in read_jsonl(out)] == ["c/train/0", "c/train/1"]
    assert reasons(read_jsonl(tmp_path / "curated.rejects.jsonl")) == {
        "c/train/2": "refusal", "c/train/3": "invalid_row:duration"}

    # A refusal is curate's verdict on a good row, not bad input: --strict drops it as usual.
    clean = write(tmp_path / "clean.jsonl", rows[:3])
    result = blspdata("curate", clean, "-o", out, "--no-progress", "--strict")
    assert [row["id"] for row in read_jsonl(out)] == ["c/train/0", "c/train/1"]
    assert reasons(read_jsonl(tmp_path / "curated.rejects.jsonl")) == {"c/train/2": "refusal"}
    assert "refusal" in result.stdout


def test_publish_strict_stops_at_a_bad_row_and_writes_nothing(tmp_path: Path):
    curated = write(tmp_path / "curated.jsonl", [generated(0), generated(1), generated(2, text=12345)])
    out = tmp_path / "ds"
    strict = blspdata("publish", curated, "-o", out, "--audio", "path", "--no-progress", "--strict", check=False)
    assert strict.returncode == 1 and f"{curated}:3 (c/train/2): invalid_row:text" in strict.stderr
    assert not out.exists() and not (tmp_path / "ds.rejects.jsonl").exists()
    assert not any(".build" in path.name for path in tmp_path.iterdir())  # its build folder removed

    blspdata("publish", curated, "-o", out, "--audio", "path", "--no-progress")  # without: rejected, published
    assert reasons(read_jsonl(tmp_path / "ds.rejects.jsonl")) == {"c/train/2": "invalid_row:text"}
    import datasets

    emotion = datasets.load_from_disk(str(out / "emotion"))
    assert sorted(row["id"] for split in emotion.values() for row in split) == ["c/train/0", "c/train/1"]


# ---------------------------------------------------------------------------- leftovers of killed runs

def dead_pid() -> int:
    """The PID of a process that has ended (reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=60)
    return process.pid


def test_a_rerun_removes_what_a_dead_run_left_and_only_that(tmp_path: Path):
    # `live` only has to be alive while the rerun looks (it is killed below): its sleep is no wait.
    dead, live = dead_pid(), subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        ours = owned_temp_prefix("curated.jsonl.gz")
        mine, other = ours.replace(f".{os.getpid()}.", f".{dead}."), \
            ours.replace(f".{os.getpid()}.", f".{live.pid}.")
        planted = {f"{mine}k2j4.tmp": "dead", f"{other}x9q1.tmp": "live", ".curated.jsonl.gz.ab12cd.tmp": "unknown",
                   ".curated.jsonl.gz.blspdata.otherhost.1.zz.tmp": "another machine's"}
        for name in planted:
            (tmp_path / name).write_text("partial")
        build = owned_temp_prefix("ds").replace(f".{os.getpid()}.", f".{dead}.")
        (tmp_path / f"{build}abc.build" / "dataset").mkdir(parents=True)
        live_build = owned_temp_prefix("ds").replace(f".{os.getpid()}.", f".{live.pid}.")
        (tmp_path / f"{live_build}def.build").mkdir()

        rows = [generated(n) for n in range(3)]
        blspdata("curate", write(tmp_path / "gen.jsonl", rows), "-o", tmp_path / "curated.jsonl.gz", "--no-progress")
        blspdata("publish", tmp_path / "curated.jsonl.gz", "-o", tmp_path / "ds", "--audio", "path", "--no-progress")
        left = folder_listing(tmp_path)
        assert f"{mine}k2j4.tmp" not in left and f"{build}abc.build" not in left  # the dead run's: removed
        assert {f"{other}x9q1.tmp", ".curated.jsonl.gz.ab12cd.tmp", ".curated.jsonl.gz.blspdata.otherhost.1.zz.tmp",
                f"{live_build}def.build"} <= left  # a live run's, an unknown file, another host's: kept
        assert {name for name in left if ".blspdata." in name} == {
            f"{other}x9q1.tmp", ".curated.jsonl.gz.blspdata.otherhost.1.zz.tmp", f"{live_build}def.build"}
    finally:
        live.kill()
        live.wait(timeout=60)


# ---------------------------------------------------------------------------- determinism

def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", ["arrow", "parquet"])
def test_the_same_input_gives_byte_identical_curated_files_and_shards(tmp_path: Path, fmt: str):
    manifest = SAMPLE / "iemocap.jsonl"
    generated_rows = tmp_path / "gen.jsonl"
    blspdata("generate", manifest, "-o", generated_rows, "--task", "emotion", "--backend", "dry-run", "--no-progress",
             cwd=REPO)
    for n in (1, 2):
        blspdata("curate", generated_rows, "-o", tmp_path / f"curated{n}.jsonl.gz", "--no-progress")
    assert (tmp_path / "curated1.jsonl.gz").read_bytes() == (tmp_path / "curated2.jsonl.gz").read_bytes()
    assert read_jsonl(tmp_path / "curated1.jsonl.gz")
    for n in (1, 2):
        blspdata("publish", tmp_path / "curated1.jsonl.gz", "-o", tmp_path / f"ds{n}", "--format", fmt, "--jobs",
                 str(n), "--no-progress", cwd=REPO)
    first, second = digests(tmp_path / "ds1"), digests(tmp_path / "ds2")
    assert any(name.endswith((".arrow", ".parquet")) for name in first)
    assert first == second  # shards, state.json, the card and blspdata.json alike
