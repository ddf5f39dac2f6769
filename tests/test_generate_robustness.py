"""What a long generation run meets in practice: flaky servers, odd answers, duplicate ids,
damaged outputs, two runs on one output. Servers here are httpx mock transports (their
answers are scripted); real generation is tested against llama.cpp in test_generate.py."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from blspdata.generate.backends import BackendError, OpenAIBackend, Request, ServerDown
from blspdata.generate.resume import exclusive, recover
from conftest import REPO, blspdata, read_jsonl, wait_for


def answer(text: str = "and then it rained.", finish: str = "stop") -> httpx.Response:
    body = {"choices": [{"message": {"content": text}, "finish_reason": finish}],
            "usage": {"completion_tokens": 5, "prompt_tokens": 20}}
    return httpx.Response(200, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def run(handler, requests: list[Request], server_timeout: float = 0.6):
    async def go():
        backend = OpenAIBackend("http://llm.test/v1", model="m", server_timeout=server_timeout,
                                transport=httpx.MockTransport(handler))
        async with backend:
            return await asyncio.gather(*(backend.complete(r) for r in requests))
    return asyncio.run(go())


def request(text: str) -> Request:
    return Request(text, [{"role": "user", "content": text}])


def test_one_request_failing_while_others_succeed_is_rejected_not_fatal():
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        content = json.loads(req.content)["messages"][0]["content"]
        return httpx.Response(500, text="boom") if content == "poison" else answer()

    results = run(handler, [request("poison")] + [request(f"ok {i}") for i in range(3)])
    assert results[0].reject == "server_error" and "HTTP 500" in results[0].detail
    assert [r.continuation for r in results[1:]] == ["and then it rained."] * 3


def test_a_server_down_for_everyone_stops_the_run():
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(ServerDown, match="llm.test"):
        run(handler, [request("a"), request("b")])


@pytest.mark.parametrize("response, reason", [
    (httpx.Response(422, json={"error": "Input validation error: inputs tokens + max_new_tokens must be <= 2048"}),
     "prompt_too_long"),
    (httpx.Response(400, json={"error": {"message": "temperature must be positive"}}), "request_rejected"),
    (httpx.Response(200, json={"choices": []}), "bad_response"),
    (httpx.Response(200, text="<html>proxy error</html>"), "bad_response"),
])
def test_odd_answers_become_rejects_with_the_servers_words(response, reason):
    (result,) = run(lambda req: response, [request("x")])
    assert result.reject == reason


def test_unauthorised_is_a_setup_error():
    with pytest.raises(BackendError, match="401.*--api-key"):
        run(lambda req: httpx.Response(401, json={"error": "bad key"}), [request("x")])


def test_a_lone_surrogate_in_an_answer_is_written_safely():
    (result,) = run(lambda req: answer("caf\ud83d"), [request("x")])
    assert result.continuation == "caf?"


def test_duplicate_ids_are_generated_once_and_resume_cleanly(tmp_path: Path):
    rows = read_jsonl(REPO / "manifests" / "sample" / "iemocap.jsonl")[:3]
    manifest = tmp_path / "dup.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows + [rows[1]]) + "{broken\n")
    out = tmp_path / "out.jsonl"
    args = ["generate", manifest, "-o", out, "--backend", "dry-run", "--no-progress"]
    blspdata(*args)
    assert sorted(r["id"] for r in read_jsonl(out)) == sorted(r["id"] for r in rows)
    rejects = read_jsonl(tmp_path / "out.rejects.jsonl")
    assert sorted(r["reason"] for r in rejects) == ["duplicate_id", "malformed_row"]
    assert {r["id"] for r in rejects} == {f"{manifest}:4", f"{manifest}:5"}  # keyed by location, not by the id
    assert "0 continuations written" in blspdata(*args).stdout  # nothing redone
    merged = tmp_path / "merged.jsonl"
    blspdata("merge", out, "-o", merged, "--manifest", manifest)
    assert len(read_jsonl(merged)) == 3


def test_recover_cuts_only_a_torn_last_line(tmp_path: Path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id": "a"}\n\n{"id": "b"}\n{"id": "c"')
    assert set(recover(path)) == {"a", "b"}
    assert path.read_bytes() == b'{"id": "a"}\n\n{"id": "b"}\n'
    path.write_bytes(b'{"id": "a"}\nGARBAGE\n{"id": "b"}\n')
    with pytest.raises(ValueError, match="out.jsonl:2"):
        recover(path)
    assert path.read_bytes() == b'{"id": "a"}\nGARBAGE\n{"id": "b"}\n'  # untouched


def test_two_runs_cannot_write_one_output(tmp_path: Path):
    out = tmp_path / "out.jsonl"
    with exclusive(out):
        result = blspdata("generate", REPO / "manifests" / "sample" / "iemocap.jsonl", "-o", out, "--backend",
                          "dry-run", check=False)
    assert result.returncode == 1 and "is in use by another process" in result.stderr


def test_a_pool_of_servers_shares_the_requests_by_load():
    """The embedded engine is one llama.cpp server per core: each request goes to the server
    with the fewest in flight, and every answer comes back to its own request."""
    from blspdata.generate.backends import PooledBackend

    served: dict[str, list[str]] = {"a": [], "b": []}

    def handler_for(name: str):
        async def handler(req: httpx.Request) -> httpx.Response:
            if req.url.path.endswith("/models"):
                return httpx.Response(200, json={"data": [{"id": "m"}]})
            content = json.loads(req.content)["messages"][0]["content"]
            served[name].append(content)
            await asyncio.sleep(0.05 if name == "a" else 0.01)  # server a is the slow one
            return answer(f"{content} from {name}")
        return handler

    async def go():
        members = [OpenAIBackend(f"http://{n}.test/v1", concurrency=2, transport=httpx.MockTransport(handler_for(n)))
                   for n in ("a", "b")]
        async with PooledBackend(members) as pool:
            assert pool.concurrency == 4 and pool.model == "m"
            return await asyncio.gather(*(pool.complete(request(f"r{i}")) for i in range(20)))

    results = asyncio.run(go())
    assert [r.continuation.split(" from ")[0] for r in results] == [f"r{i}" for i in range(20)]
    assert sorted(served["a"] + served["b"]) == sorted(f"r{i}" for i in range(20))
    assert served["a"] and served["b"]


# ---------------------------------------------------------------------------- what each engine is sent

# A stand-in for `vllm serve` (python -m vllm.entrypoints.openai.api_server): it records its argv
# and every request body, and answers as vLLM serving a ChatML model whose generation_config does
# not stop at <|im_end|> (Qwen-7B-Chat's stops only at <|endoftext|>): the model writes its turn,
# <|im_end|>, and runs on into a next turn. Like vLLM, it drops special tokens from the text
# unless asked not to (skip_special_tokens), so a `stop` string can only match when they are kept.
FAKE_VLLM = r'''
import json, os, re, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

argv = sys.argv[1:]
log = os.environ["FAKE_VLLM_LOG"]
with open(log, "a") as handle:
    handle.write(json.dumps({"argv": argv}) + "\n")
port = int(argv[argv.index("--port") + 1])
TURN = "And then the rain stopped.<|im_end|>\n<|im_start|>user\nWhat happened next?<|im_end|>"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.reply({"data": [{"id": "m", "owned_by": os.environ.get("FAKE_OWNED_BY", "vllm")}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        with open(log, "a") as handle:
            handle.write(json.dumps({"body": body}) + "\n")
        text = TURN if body.get("skip_special_tokens") is False else re.sub(r"<\|[a-z_]+\|>", "", TURN)
        cuts = [text.find(s) for s in body.get("stop") or [] if s in text]
        finish = "stop" if cuts else "length"
        self.reply({"choices": [{"message": {"content": text[:min(cuts)] if cuts else text}, "finish_reason": finish}],
                    "usage": {"completion_tokens": 9, "prompt_tokens": 30}})


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
'''


@pytest.fixture
def fake_vllm(tmp_path: Path, monkeypatch):
    """`vllm` importable as the stand-in above; returns the log of what it was started with and sent."""
    package = tmp_path / "fake" / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for folder in (package, package.parent, package.parent.parent):
        (folder / "__init__.py").write_text("")
    (package / "api_server.py").write_text(FAKE_VLLM)
    log = tmp_path / "fake-vllm.jsonl"
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake"))
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    return log


def sent(log: Path, what: str) -> list:
    return [entry[what] for entry in read_jsonl(log) if what in entry]


MELD = REPO / "manifests" / "sample" / "meld.jsonl"


def test_serve_vllm_stops_a_chatml_model_at_its_end_of_turn(fake_vllm: Path, tmp_path: Path):
    out = tmp_path / "out.jsonl"
    blspdata("generate", MELD, "-o", out, "--task", "emotion", "--serve", "vllm", "--model", "m", "--limit", "3",
             "--no-progress")
    rows = read_jsonl(out)
    assert len(rows) == 3
    for row in rows:
        assert row["continuation"] == "And then the rain stopped."  # not the made-up next turn
        assert row["finished"] is True  # the model ended its turn
        assert row["generator"]["sampling"]["repetition_penalty"] == 1.1
        assert row["generator"]["sampling"]["stop"] == ["<|im_end|>", "<|endoftext|>"]
    for body in sent(fake_vllm, "body"):
        assert body["repetition_penalty"] == 1.1 and body["min_tokens"] == 1 and body["max_tokens"] == 48
        assert body["stop"] == ["<|im_end|>", "<|endoftext|>"] and body["skip_special_tokens"] is False
        assert "repeat_penalty" not in body


def test_a_server_that_ignores_stop_still_gives_only_the_turn(tmp_path: Path):
    """Even when a server writes the end of turn out and goes on, the row is the turn only."""
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        return answer("It was late.<|im_end|>\n<|im_start|>user\nmore", finish="length")

    (result,) = run(handler, [request("x")])
    assert result.continuation == "It was late." and result.finished


@pytest.mark.parametrize("owned_by, penalty, expected", [
    ("vllm", [], {"repetition_penalty": 1.1, "skip_special_tokens": False}),
    ("vllm", ["--repetition-penalty", "1.0"], {"repetition_penalty": 1.0, "skip_special_tokens": False}),
    ("me", [], {"repeat_penalty": 1.1}),                  # llama-cpp-python's server
    ("llamacpp", ["--repetition-penalty", "1.3"], {"repeat_penalty": 1.3}),  # llama.cpp's own
    ("sglang", [], {"repetition_penalty": 1.1}),          # another engine: vLLM's name
])
def test_each_engine_is_sent_the_penalty_as_it_names_it(fake_vllm: Path, tmp_path: Path, monkeypatch,
                                                        owned_by: str, penalty: list, expected: dict):
    from blspdata.generate.servers import free_port

    monkeypatch.setenv("FAKE_OWNED_BY", owned_by)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--port", str(port)])
    try:
        def answers() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, 60, f"the fake vLLM server to answer on port {port}", while_running=server)
        out = tmp_path / "out.jsonl"
        blspdata("generate", MELD, "-o", out, "--base-url", f"http://127.0.0.1:{port}/v1", "--limit", "2",
                 "--no-progress", *penalty)
    finally:
        server.kill()
        server.wait(timeout=30)
    (body, _) = sent(fake_vllm, "body")
    assert {key: body[key] for key in expected} == expected
    others = {"repetition_penalty", "repeat_penalty", "skip_special_tokens"} - set(expected)
    assert not others & set(body), body
    assert body["stop"] == ["<|im_end|>", "<|endoftext|>"]
    assert {row["generator"]["sampling"]["repetition_penalty"] for row in read_jsonl(out)} == \
        {expected.get("repetition_penalty", expected.get("repeat_penalty"))}


def test_a_plain_openai_server_gets_only_standard_fields_without_a_penalty():
    bodies = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "gpt", "owned_by": "openai"}]})
        bodies.append(json.loads(req.content))
        return answer()

    run(handler, [Request("x", [{"role": "user", "content": "x"}], repetition_penalty=1.0)])
    assert set(bodies[0]) == {"model", "messages", "max_tokens", "temperature", "seed", "stop", "top_p"}


# ---------------------------------------------------------------------------- engine_args cannot run code

def demo_config(tmp_path: Path, engine_args: dict, **generate) -> Path:
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({
        "run_dir": str(tmp_path / "run"),
        "corpora": [{"kind": "iemocap", "root": str(REPO / "samples" / "corpora" / "IEMOCAP_full_release")}],
        "generate": {"serve": "vllm", "model": "m", "engine_args": engine_args, **generate},
    }))
    return config


@pytest.mark.parametrize("engine_args", [
    {"trust_remote_code": True},
    {"trust-remote-code": True},
    {"--trust-remote-code": ""},
    {"TRUST_REMOTE_CODE": "yes"},
])
def test_a_config_cannot_turn_on_trust_remote_code(tmp_path: Path, engine_args: dict):
    result = blspdata("run", demo_config(tmp_path, engine_args), "--plan", check=False)
    assert result.returncode == 1, result.stdout
    assert "--trust-remote-code" in result.stderr and "config" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # refused before anything ran
    assert blspdata("run", demo_config(tmp_path, engine_args), "--plan", "--trust-remote-code").returncode == 0


def test_a_config_cannot_move_the_server_off_loopback(tmp_path: Path):
    result = blspdata("run", demo_config(tmp_path, {"host": "0.0.0.0"}), "--plan", check=False)
    assert result.returncode == 1 and "loopback" in result.stderr


def test_trust_remote_code_reaches_vllm_only_from_the_command_line(fake_vllm: Path, tmp_path: Path):
    args = ["generate", MELD, "-o", tmp_path / "out.jsonl", "--serve", "vllm", "--model", "m", "--limit", "1",
            "--no-progress"]
    refused = blspdata(*args, "-E", "trust_remote_code=true", check=False)
    assert refused.returncode == 1 and "--trust-remote-code" in refused.stderr
    assert not fake_vllm.exists()  # no server was started
    blspdata(*args, "-E", "max_model_len=2048")
    (plain,) = sent(fake_vllm, "argv")
    assert "--trust-remote-code" not in plain and "--max-model-len=2048" in plain
    fake_vllm.unlink()
    blspdata(*args, "--trust-remote-code")
    (trusted,) = sent(fake_vllm, "argv")
    assert "--trust-remote-code" in trusted and "--host" in trusted and trusted[trusted.index("--host") + 1] == "127.0.0.1"


# ---------------------------------------------------------------------------- leftover server logs

def test_server_logs_left_by_killed_runs_are_removed_at_the_next_server_start(fake_vllm: Path, tmp_path: Path,
                                                                              monkeypatch):
    """A run killed by `kill -9` leaves its server's log (blspdata-server-<PID>-*.log) in the temp
    folder. The next server start removes those whose blspdata is gone and that no process has
    open, and nothing else."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=60)
    dead = temp / f"blspdata-server-{gone.pid}-abcd1234.log"
    live = temp / f"blspdata-server-{os.getpid()}-abcd1234.log"  # this process is alive: its server may be too
    old_free = temp / "blspdata-server-k2j4h5g6.log"  # an older version's name: held by no one
    old_held = temp / "blspdata-server-z9y8x7w6.log"  # held open by a live process (its server)
    other = temp / "someone-else.log"
    for path in (dead, live, old_free, old_held, other):
        path.write_text("log\n")
    holder = subprocess.Popen([sys.executable, "-c", "import sys; f = open(sys.argv[1]); sys.stdin.read()",
                               str(old_held)], stdin=subprocess.PIPE)
    try:
        wait_for(lambda: any(os.path.realpath(f"/proc/{holder.pid}/fd/{fd}") == str(old_held)
                             for fd in os.listdir(f"/proc/{holder.pid}/fd")),
                 30, f"the holder to have {old_held.name} open", while_running=holder)
        blspdata("generate", MELD, "-o", tmp_path / "out.jsonl", "--serve", "vllm", "--model", "m", "--limit", "1",
                 "--no-progress")
    finally:
        holder.communicate(b"", timeout=60)
    assert sorted(p.name for p in temp.iterdir()) == sorted(p.name for p in (live, old_held, other))
