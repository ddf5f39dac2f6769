"""One run per run folder: while a process holds it, a second `run` or `train` on it fails at
once, naming the folder and the holder's PID, and writes nothing; once the holder is gone
(its lock file stays behind), the next run proceeds."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import yaml
from conftest import blspdata, write_audio

from blspdata.locks import exclusive


def jsonl_project(folder: Path) -> Path:
    write_audio(folder / "a.wav", 1.0)
    write_audio(folder / "b.wav", 1.5)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"audio": f, "text": t, "split": "train"}) + "\n"
                                                 for f, t in (("a.wav", "good morning to you"),
                                                              ("b.wav", "the bus was late again"))))
    config = folder / "run.yaml"
    config.write_text(yaml.safe_dump({"run_dir": "run", "corpora": [{"kind": "jsonl", "root": "corpus.jsonl",
                                                                      "task": "semantic"}],
                                      "generate": {"backend": "dry-run"}, "curate": {"disable": ["echo", "language"]},
                                      "publish": {"validation_fraction": 0, "test_fraction": 0}}))
    return config


def test_a_second_run_on_a_locked_run_folder_fails_at_once_and_writes_nothing(tmp_path: Path):
    config = jsonl_project(tmp_path)
    run = tmp_path / "run"
    with exclusive(run / ".lock"):  # this test process is the first run, alive
        result = blspdata("run", config, "--no-progress", check=False, cwd=tmp_path)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"error: run folder {run} is in use by another process (PID {os.getpid()})" in result.stderr
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # no run.json, no manifests
    # The holder is gone, its lock file is still there: nothing stale blocks the next run.
    result = blspdata("run", config, "--no-progress", "--no-report", cwd=tmp_path)
    assert "== done" in result.stdout and (run / "dataset").is_dir()
    assert json.loads((run / "run.json").read_text())["stages"]["publish"]["status"] == "done"


def test_train_on_a_locked_run_folder_fails_at_once(tmp_path: Path):
    out = tmp_path / "stage1"
    with exclusive(out / ".lock"):
        result = blspdata("train", "stage1", tmp_path / "data", "-o", out, "--encoder", "e", "--llm", "l",
                          "--no-progress", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"error: run folder {out} is in use by another process (PID {os.getpid()})" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # no metrics.jsonl, no checkpoint


def test_a_worker_forked_by_the_holder_does_not_keep_the_lock_after_the_holder_is_killed(tmp_path: Path):
    """DataLoader and pool workers are forked while the run folder is locked; once the holder
    is killed (SIGKILL: no cleanup runs), a rerun must get the lock even while such a worker
    is still alive."""
    import signal
    import subprocess
    import sys

    lock = tmp_path / "run" / ".lock"
    script = (
        "import multiprocessing as mp, os, sys, time\n"
        "from blspdata.locks import exclusive\n"
        "def work(ready):\n"
        "    ready.set()  # the fork hooks have run: what the worker holds now, it keeps\n"
        "    time.sleep(60)\n"
        "with exclusive(sys.argv[1]):\n"
        "    fork = mp.get_context('fork')\n"
        "    ready = fork.Event()\n"
        "    worker = fork.Process(target=work, args=(ready,))\n"
        "    worker.start()\n"
        "    assert ready.wait(60)\n"
        "    print(worker.pid, flush=True)\n"
        "    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(lock)], stdout=subprocess.PIPE, text=True)
    worker = int(holder.stdout.readline())
    try:
        holder.kill()
        holder.wait(timeout=30)
        os.kill(worker, 0)  # the worker is alive
        with exclusive(lock):  # and the lock is free
            pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)
