"""SIGTERM (`timeout`, Slurm's scancel, `kill`) to any command is a clean exit (143): its
`finally` blocks run, so `publish` leaves no `.OUT.*` build folder behind, and the rerun of
the same command finishes the job. (ingest has its own test in test_ingest_interrupt.py.)"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path

from conftest import REPO, blspdata, wait_for

SAMPLE = REPO / "manifests" / "sample" / "librispeech.jsonl"
ROWS = 40_000


def many_records(folder: Path) -> Path:
    """Continuations of the sample LibriSpeech manifest (dry-run LLM), copied under new ids
    until publishing them takes seconds."""
    generated = folder / "generated.jsonl"
    blspdata("generate", SAMPLE, "-o", generated, "--backend", "dry-run", "--no-progress", cwd=REPO)
    rows = [json.loads(line) for line in generated.read_text().splitlines()]
    for row in rows:
        row["audio"] = str(REPO / row["audio"])
    big = folder / "many.jsonl"
    with open(big, "w") as handle:
        for n in range(ROWS):
            row = dict(rows[n % len(rows)], id=f"{rows[n % len(rows)]['id']}-copy{n}")
            handle.write(json.dumps(row) + "\n")
    return big


def test_sigterm_to_publish_mid_run_leaves_no_build_folder_and_a_rerun_finishes(tmp_path: Path):
    records = many_records(tmp_path)
    out = tmp_path / "published" / "ds"
    command = [sys.executable, "-m", "blspdata", "publish", str(records), "-o", str(out), "--jobs", "1",
               "--no-progress"]
    log = tmp_path / "publish.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=handle, cwd=REPO)
    try:
        building = wait_for(  # staged, now encoding rows into shards
            lambda: [p for p in out.parent.glob(f".{out.name}.*") if (p / "dataset").is_dir()], 120,
            "publish to be building its shards", while_running=process, every=0.02)
        assert building and process.poll() is None, f"publish never got to building (exit {process.poll()})"
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=60)
    finally:
        with contextlib.suppress(OSError):
            process.kill()
    stderr = log.read_text()
    assert returncode == 143, (returncode, stderr)  # not 0: the signal landed while it worked
    assert "Traceback" not in stderr, stderr
    assert sorted(p.name for p in out.parent.iterdir()) == []  # no build folder, no half dataset
    blspdata("publish", records, "-o", out, "--jobs", "1", "--no-progress", cwd=REPO)
    import datasets

    semantic = datasets.load_from_disk(str(out / "semantic"))
    assert sum(len(split) for split in semantic.values()) == ROWS
