"""`blspdata ingest` stopped part way: by SIGTERM (`timeout`, Slurm's scancel, `kill`) it
exits 143 leaving no temporary files; stopped or killed, it leaves no worker processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from conftest import wait_for, write_audio


@pytest.fixture
def big_table(tmp_path: Path) -> Path:
    """A CSV of many rows (one short wav): the run takes many seconds, we stop it in the first."""
    write_audio(tmp_path / "corpus" / "a.wav", 0.1)
    table = tmp_path / "corpus" / "big.csv"
    table.write_text("utt,audio,text\n" + "".join(f"u{n},a.wav,hello number {n}\n" for n in range(500_000)))
    return table


@contextlib.contextmanager
def ingest_running(table: Path, out: Path) -> Iterator[tuple[subprocess.Popen, list[psutil.Process]]]:
    """Start the CLI with two workers (output in ingest.log beside the table); yield once it is
    writing and its workers are up. What is left of it at the end is killed (no orphans from a
    failing test either)."""
    with open(table.with_name("ingest.log"), "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "blspdata", "ingest", "csv", str(table), "-o", str(out), "--id-col", "utt",
             "--jobs", "2", "--no-progress"], stdout=log, stderr=log, start_new_session=True)
    workers: list[psutil.Process] = []

    def writing_with_workers() -> list[psutil.Process]:
        children = psutil.Process(process.pid).children(recursive=True)
        return children if len(children) >= 2 and list(out.parent.glob(f".{out.name}.*.tmp")) else []

    try:
        workers = wait_for(writing_with_workers, 60, "the run to be writing with its two workers up",
                           while_running=process)
        assert workers, f"the run never got going (exit {process.poll()})"
        yield process, workers
    finally:
        for leftover in [process, *workers]:
            with contextlib.suppress(Exception):
                leftover.kill()


def survivors(workers: list[psutil.Process]) -> list[psutil.Process]:
    """The workers still alive a few seconds on."""
    return psutil.wait_procs(workers, timeout=10)[1]


@pytest.mark.parametrize("to_group", [False, True], ids=["kill-pid", "timeout-like-whole-group"])
def test_sigterm_cleans_up_and_stops_the_workers(big_table: Path, tmp_path: Path, to_group: bool):
    out = tmp_path / "out" / "big.jsonl.gz"
    with ingest_running(big_table, out) as (process, workers):
        if to_group:  # what `timeout` does
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=30)
        assert survivors(workers) == []
    stderr = big_table.with_name("ingest.log").read_text()
    assert returncode == 143, stderr
    assert "Traceback" not in stderr
    assert list(tmp_path.rglob("*.tmp")) == []
    assert not out.exists() and not (tmp_path / "out").exists()  # nothing new, not even the folder


def test_workers_do_not_outlive_a_killed_parent(big_table: Path, tmp_path: Path):
    with ingest_running(big_table, tmp_path / "big.jsonl") as (process, workers):
        process.kill()  # SIGKILL: the parent itself can clean nothing up
        process.wait(timeout=30)
        assert survivors(workers) == []
