"""`blspdata generate` against the real embedded llama.cpp server (SmolLM2-135M) on loopback.

One server is started for the session and shared; tests that kill a server start their own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blspdata.generate.servers import embedded_llama, free_port, smollm2_path
from conftest import REPO, TINY_LLM, blspdata, by_id, complete_lines, read_jsonl, wait_for

SAMPLE = REPO / "manifests" / "sample"


@pytest.fixture(scope="session")
def server():
    """The packaged SmolLM2-135M (the small one, for speed), whatever the embedded default is."""
    with embedded_llama(str(smollm2_path())) as running:
        yield running


def generate_args(manifest: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    return ["generate", manifest, "-o", out, "--base-url", base_url, "--no-progress", *extra]


@pytest.fixture(scope="session")
def semantic_run(server, tmp_path_factory) -> Path:
    """LibriSpeech sample, semantic task, one uninterrupted run (reference for resume tests)."""
    out = tmp_path_factory.mktemp("semantic") / "librispeech.continuations.jsonl"
    blspdata(*generate_args(SAMPLE / "librispeech.jsonl", out, server.base_url, "--max-new-tokens", "24"))
    return out


def test_semantic_continuations_of_the_sample_corpus(semantic_run: Path):
    manifest = by_id(read_jsonl(SAMPLE / "librispeech.jsonl"))
    rows = by_id(read_jsonl(semantic_run))
    assert sorted(rows) == sorted(manifest)
    for record_id, row in rows.items():
        assert {k: row[k] for k in manifest[record_id]} == manifest[record_id]  # the record rides along unchanged
        assert row["task"] == "semantic"
        assert row["instruction"] == "Continue the following sentence in a coherent style: " + row["text"]
        assert row["continuation"].strip()
        assert isinstance(row["finished"], bool)
        assert row["generator"]["model"] == "SmolLM2-135M-Instruct.Q4_1"
        assert row["generator"]["prompt"]["id"] == "semantic" and len(row["generator"]["prompt"]["sha256"]) == 16
        assert row["generator"]["sampling"]["max_new_tokens"] == 24
        assert row["generator"]["sampling"]["repetition_penalty"] == 1.1  # the recipe's (Qwen-7B-Chat's own)
    # 24 tokens cut most continuations: the model did not stop by itself there.
    assert sum(not row["finished"] for row in rows.values()) > 0
    summary = json.loads(semantic_run.with_name("librispeech.continuations.summary.json").read_text())
    assert summary["written"] == 20 and summary["output_tokens"] > 0


def test_emotion_continuations_carry_the_label_and_refuse_unlabelled(server, tmp_path: Path):
    manifest = tmp_path / "mixed.jsonl"
    rows = read_jsonl(SAMPLE / "meld.jsonl")[:6] + read_jsonl(SAMPLE / "librispeech.jsonl")[:2]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "emotion.jsonl"
    result = blspdata(*generate_args(manifest, out, server.base_url, "--task", "emotion", "--max-new-tokens", "16"))
    done = by_id(read_jsonl(out))
    assert len(done) == 6
    for row in done.values():
        assert f"reflects a '{row['emotion']}' emotion tone" in row["instruction"]
        assert row["continuation"]
    rejects = read_jsonl(tmp_path / "emotion.rejects.jsonl")
    assert {r["id"]: r["reason"] for r in rejects} == {r["id"]: "emotion_missing" for r in rows[6:]}
    assert rejects[0]["record"]["corpus"] == "librispeech"  # the dropped record is kept
    assert "emotion_missing" in result.stdout


def test_resume_after_kill_9_gives_each_id_once_and_the_same_content(server, semantic_run: Path, tmp_path: Path):
    out = tmp_path / "resumed.jsonl"
    args = [sys.executable, "-m", "blspdata", *map(str, generate_args(
        SAMPLE / "librispeech.jsonl", out, server.base_url, "--max-new-tokens", "24", "--concurrency", "2"))]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: complete_lines(out) >= 5, 120, "5 rows written", while_running=process)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL, "the run finished before the kill"
    killed_at = complete_lines(out)  # the dead process writes no more: what the kill left
    assert 5 <= killed_at < 20, f"the kill left {killed_at} of 20 rows: it did not land mid-run"
    with open(out, "ab") as handle:  # as if killed in the middle of a line
        handle.write(b'{"id": "librispeech/torn')
    partial = out.read_bytes().count(b"\n")
    assert 5 <= partial < 20
    result = blspdata(*generate_args(SAMPLE / "librispeech.jsonl", out, server.base_url, "--max-new-tokens", "24"))
    assert f"{partial} already done" in result.stdout
    resumed = read_jsonl(out)
    assert len(resumed) == len({row["id"] for row in resumed}) == 20
    reference = by_id(read_jsonl(semantic_run))
    assert {row["id"]: row["continuation"] for row in resumed} == {k: v["continuation"] for k, v in reference.items()}


def test_other_settings_are_not_mixed_into_an_existing_output(server, semantic_run: Path, tmp_path: Path):
    out = tmp_path / "mixed.jsonl"
    out.write_bytes(semantic_run.read_bytes().split(b"\n", 1)[0] + b"\n")
    result = blspdata(*generate_args(SAMPLE / "librispeech.jsonl", out, server.base_url), check=False)
    assert result.returncode == 1 and "other settings" in result.stderr


def test_server_killed_and_restarted_mid_run(tmp_path: Path):
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path()), "--model_alias", "SmolLM2",
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]

    def answers() -> bool:
        import httpx
        try:
            return httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def start() -> subprocess.Popen:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(answers, 120, f"the llama.cpp server to answer on port {port}", while_running=process)
        return process

    llama = start()
    out = tmp_path / "out.jsonl"
    cli = subprocess.Popen([sys.executable, "-m", "blspdata", *map(str, generate_args(
        SAMPLE / "librispeech.jsonl", out, f"http://127.0.0.1:{port}/v1", "--max-new-tokens", "16",
        "--server-timeout", "120"))], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: complete_lines(out) >= 3, 300, "3 rows written", while_running=cli)
        llama.kill()
        llama.wait(timeout=60)
        killed_at = complete_lines(out)
        assert cli.poll() is None and killed_at < 20, \
            f"the run had {killed_at} of 20 rows and {'was' if cli.poll() is None else 'was not'} running " \
            "when its server was killed: the kill did not land mid-run"
        # The outage is the point: for these 2 s every request the run sends is refused, so it
        # must keep retrying (not fail, not finish) until the server is back.
        time.sleep(2)
        assert cli.poll() is None, "the run stopped while its server was down"
        llama = start()
        stdout, stderr = cli.communicate(timeout=300)
    finally:
        llama.kill()
        cli.kill()
    assert cli.returncode == 0, stderr
    rows = read_jsonl(out)
    assert sorted(row["id"] for row in rows) == sorted(r["id"] for r in read_jsonl(SAMPLE / "librispeech.jsonl"))
    assert len(rows) == 20 > killed_at  # the restarted server wrote the rest


def test_a_too_long_prompt_is_rejected_with_the_servers_reason(server, tmp_path: Path):
    rows = read_jsonl(SAMPLE / "librispeech.jsonl")[:2]
    rows[1]["text"] = " ".join(["word"] * 3000)  # far beyond the 2048-token context
    manifest = tmp_path / "long.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "long.out.jsonl"
    blspdata(*generate_args(manifest, out, server.base_url, "--max-new-tokens", "8"))
    assert [row["id"] for row in read_jsonl(out)] == [rows[0]["id"]]
    (reject,) = read_jsonl(tmp_path / "long.out.rejects.jsonl")
    assert reject["id"] == rows[1]["id"] and reject["reason"] == "prompt_too_long"
    assert "HTTP 400" in reject["detail"] and "context" in reject["detail"].lower()


def test_an_unreachable_server_is_a_clear_error(tmp_path: Path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    out = tmp_path / "out.jsonl"
    result = blspdata(*generate_args(SAMPLE / "librispeech.jsonl", out, url, "--server-timeout", "2",
                                     "--model", "m"), check=False)
    assert result.returncode == 1
    assert url in result.stderr and "has not answered" in result.stderr and "Traceback" not in result.stderr


def test_the_default_needs_no_flags(tmp_path: Path):
    """`blspdata generate MANIFEST -o OUT`: starts the embedded server itself."""
    out = tmp_path / "default.jsonl"
    result = blspdata("generate", SAMPLE / "iemocap.jsonl", "-o", out, "--limit", "2", "--max-new-tokens", "8",
                      "--no-progress")
    assert len(read_jsonl(out)) == 2 and "2 continuations written" in result.stdout
    assert {row["generator"]["sampling"]["repetition_penalty"] for row in read_jsonl(out)} == {1.1}


def _children(pid: int, name: str) -> list[int]:
    """The PIDs of `pid`'s child processes whose command line holds `name` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid and name in (stat.parent / "cmdline").read_text():
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_an_embedded_server_that_crashes_is_named_at_once_with_its_signal(tmp_path: Path):
    """A llama.cpp built for another CPU dies of SIGILL/SIGSEGV on its first request (a pip-cached
    -march=native wheel did on CI): the run must stop saying so, with the way to rebuild it, and
    keep what was written, not retry a dead process for --server-timeout (here 3000 s: only the
    crash being seen can end this run within the test's wait)."""
    out = tmp_path / "out.jsonl"
    cli = subprocess.Popen([sys.executable, "-m", "blspdata", "generate", str(SAMPLE / "librispeech.jsonl"), "-o",
                            str(out), "--model", TINY_LLM, "-E", "servers=1", "--max-new-tokens", "16",
                            "--server-timeout", "3000", "--no-progress"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        llama = wait_for(lambda: _children(cli.pid, "llama_cpp.server"), 120, "the embedded server to start",
                         while_running=cli)[0]
        wait_for(lambda: complete_lines(out) >= 2, 300, "2 rows written", while_running=cli)
        os.kill(llama, signal.SIGSEGV)
        stdout, stderr = cli.communicate(timeout=600)
    finally:
        cli.kill()
    assert cli.returncode == 1, stderr
    assert "embedded llama.cpp server (SmolLM2-135M-Instruct.Q4_1.gguf) was killed by SIGSEGV" in stderr, stderr
    assert "make llama-cpp" in stderr and "rerun the same command to resume" in stderr
    rows = read_jsonl(out)
    assert 2 <= len(rows) < 20 and all(row["continuation"] for row in rows)  # what was done is kept


def test_ray_executor_resumes_a_local_run_with_the_same_rows(tmp_path: Path):
    """--executor ray on a local Ray instance, one embedded server per actor."""
    pytest.importorskip("ray")
    manifest = tmp_path / "meld8.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(SAMPLE / "meld.jsonl")[:8]))
    out = tmp_path / "out.jsonl"
    blspdata("generate", manifest, "-o", out, "--task", "emotion", "--limit", "3", "--max-new-tokens", "12",
             "--model", TINY_LLM, "--no-progress")
    result = blspdata("generate", manifest, "-o", out, "--task", "emotion", "--max-new-tokens", "12",
                      "--model", TINY_LLM, "--executor", "ray", "--ray-actors", "2", "--no-progress")
    assert "5 continuations written" in result.stdout and "3 already done" in result.stdout
    rows = read_jsonl(out)
    assert sorted(row["id"] for row in rows) == sorted(json.loads(line)["id"] for line in manifest.read_text().splitlines())
    assert len({json.dumps(row["generator"], sort_keys=True) for row in rows}) == 1  # same settings throughout
    for row in rows:
        assert row["continuation"] and f"a '{row['emotion']}' emotion tone" in row["instruction"]


@pytest.fixture
def proxy(server):
    """A loopback proxy in front of the real llama.cpp server that keeps every request body sent."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import httpx

    bodies: list[dict] = []
    upstream_root = server.base_url.removesuffix("/v1")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def forward(self, method: str) -> None:
            data = self.rfile.read(int(self.headers.get("content-length") or 0)) or None
            if data:
                bodies.append(json.loads(data))
            upstream = httpx.request(method, upstream_root + self.path, content=data, timeout=300,
                                     headers={"content-type": "application/json"})
            self.send_response(upstream.status_code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(upstream.content)))
            self.end_headers()
            self.wfile.write(upstream.content)

        def do_GET(self):
            self.forward("GET")

        def do_POST(self):
            self.forward("POST")

    running = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=running.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{running.server_port}/v1", bodies
    running.shutdown()
    running.server_close()


def test_llama_cpp_gets_the_recipes_repetition_penalty_and_the_chatml_stops(proxy, semantic_run: Path, tmp_path: Path):
    """llama.cpp is sent the template's penalty as its own `repeat_penalty` (the recipe's 1.1 by
    default, 1.0 on request), and the penalty changes what the real model writes."""
    url, bodies = proxy
    out = tmp_path / "no-penalty.jsonl"
    blspdata(*generate_args(SAMPLE / "librispeech.jsonl", out, url, "--max-new-tokens", "24",
                            "--repetition-penalty", "1.0"))
    assert bodies and all(body["repeat_penalty"] == 1.0 for body in bodies)
    assert all(body["stop"] == ["<|im_end|>", "<|endoftext|>"] and body["min_tokens"] == 1 for body in bodies)
    plain, penalised = by_id(read_jsonl(out)), by_id(read_jsonl(semantic_run))
    assert {row["generator"]["sampling"]["repetition_penalty"] for row in plain.values()} == {1.0}
    assert sum(plain[i]["continuation"] != penalised[i]["continuation"] for i in plain) > 0
    bodies.clear()
    blspdata(*generate_args(SAMPLE / "iemocap.jsonl", tmp_path / "emotion.jsonl", url, "--task", "emotion",
                            "--limit", "4"))
    assert len(bodies) == 4 and all(body["repeat_penalty"] == 1.1 for body in bodies)
    rows = read_jsonl(tmp_path / "emotion.jsonl")
    assert any(row["finished"] for row in rows)  # 48 tokens: some turns end by themselves
    for row in rows:
        assert not any(mark in row["continuation"] for mark in ("<|im_end|>", "<|im_start|>", "<|endoftext|>"))
