"""Shared helpers: write real audio files, run the real CLI, read manifests back."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples" / "corpora"
# The packaged SmolLM2-135M (98 MB): tests that need a real LLM fast pass it as --model; the
# embedded default (Qwen2.5-Coder-1.5B) is for the tests about what the default writes.
TINY_LLM = "smollm2"


@pytest.fixture(scope="session")
def demo_encoder(tmp_path_factory) -> Path:
    """What `demo:tiny-whisper` makes in a run's models/ (a random tiny Whisper encoder, seed 0),
    made once a session. Read-only: a test that trains writes its own run folder."""
    from blspdata.train.demo_models import tiny_whisper

    return tiny_whisper(tmp_path_factory.mktemp("models") / "tiny-whisper")


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory, demo_encoder) -> dict[str, Path]:
    """The demo's two small models, made once a session (about 35 s, most of it rebuilding
    SmolLM2-135M from its GGUF, as `demo:smollm2` does): {"encoder": ..., "llm": ...}."""
    from blspdata.train.demo_models import smollm2

    return {"encoder": demo_encoder, "llm": smollm2(tmp_path_factory.mktemp("models") / "smollm2")}


@pytest.fixture(scope="session")
def demo_recipe_run(tmp_path_factory, demo_models) -> Path:
    """The run folder of `blspdata run` with examples/demo.yaml's train section on the sample
    emotion corpora (IEMOCAP sessions 1-4 and MELD train to train on; session 5 and MELD test
    held out) and LibriSpeech for stage 1's semantic rows: train/stage1, train/stage2 (the
    recipe's 48 steps of 8), dataset/, evaluate/ser.json on the test split. Trained once a
    session; the pipeline's test and the trainer's stage-2 tests read it. Generation is not the
    point: the dry-run backend writes short placeholder continuations."""
    import yaml

    folder = tmp_path_factory.mktemp("demo-recipe")
    train = yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())["train"]
    train.update(encoder=str(demo_models["encoder"]), llm=str(demo_models["llm"]))  # the demo: models, made once
    config = {
        "run_dir": str(folder / "run"),
        "corpora": [{"kind": "librispeech", "root": str(SAMPLES / "LibriSpeech")},
                    {"kind": "iemocap", "root": str(SAMPLES / "IEMOCAP_full_release"),
                     "options": {"test_sessions": [5]}},
                    {"kind": "meld", "root": str(SAMPLES / "MELD.Raw")}],
        "generate": {"backend": "dry-run", "max_new_tokens": 8},
        "curate": {"disable": ["echo", "length", "language", "unfinished", "repetition"]},
        "train": train,
        "evaluate": {"split": "test", "head_only": True},
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    blspdata("run", path, "--no-progress", "--no-report", cwd=folder)
    return folder / "run"


def tone(seconds: float, rate: int = 16000, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_audio(path: Path, seconds: float, rate: int = 16000, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, rate), rate, **kwargs)
    return path


def write_encoded(path: Path, seconds: float, codec: str, container_format: str | None = None,
                  rate: int = 48000) -> Path:
    """A mono tone of `seconds` in `codec` (PyAV), the container from `container_format` or the name."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(tone(seconds, rate).reshape(1, -1).astype(np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_mp3(path: Path, seconds: float) -> Path:
    """An MP3 like Common Voice's clips (48 kHz mono, LAME)."""
    return write_encoded(path, seconds, "libmp3lame")


def write_m4a(path: Path, seconds: float) -> Path:
    """A clip like MEAD's audio: AAC in an MP4 (.m4a) container, no video."""
    return write_encoded(path, seconds, "aac", "ipod")


def write_mp4(path: Path, seconds: float, with_audio: bool = True) -> Path:
    """An mp4 like MELD's clips: a small video stream and 48 kHz stereo AAC audio."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("mpeg4", rate=5)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        sound = container.add_stream("aac", rate=48000) if with_audio else None
        if sound is not None:
            sound.layout = "stereo"
        for i in range(max(1, int(seconds * 5))):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), dtype=np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 5)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if sound is not None:
            samples = np.repeat(tone(seconds, 48000).reshape(1, -1), 2, axis=0)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 48000, 0
            container.mux(sound.encode(frame))
            container.mux(sound.encode())
    return path


def blspdata(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real `blspdata` command line (as a user would)."""
    result = subprocess.run([sys.executable, "-m", "blspdata", *map(str, args)], cwd=cwd,
                            capture_output=True, text=True, timeout=1500)
    if check and result.returncode != 0:
        raise AssertionError(f"blspdata {' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, what: str,
             while_running: subprocess.Popen | None = None, every: float = 0.05) -> T:
    """Poll `condition` until it returns something true, and return that. Fails with `what` in
    the message after `timeout` seconds, or as soon as `while_running` (the process whose work
    is awaited) has exited: a run that ended first must fail the test, not let it go on."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if while_running is not None and while_running.poll() is not None:
            raise AssertionError(f"the process exited ({while_running.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s, in vain, for {what}")
        time.sleep(every)


def complete_lines(path: Path) -> int:
    """How many newline-ended lines `path` holds now (0 while it does not exist)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def read_jsonl(path: Path) -> list[dict]:
    import gzip

    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {row["id"]: row for row in rows}


def reasons(rejects: list[dict]) -> dict[str, str]:
    """`{id or source: reason}`."""
    return {row.get("id") or row["source"]: row["reason"] for row in rejects}
