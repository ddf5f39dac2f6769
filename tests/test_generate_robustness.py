"""What a long generation run meets in practice: flaky servers, odd answers, duplicate ids,
damaged outputs, two runs on one output. Servers here are httpx mock transports (their
answers are scripted); real generation is tested against llama.cpp in test_generate.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from blspdata.generate.backends import BackendError, OpenAIBackend, Request, ServerDown
from blspdata.generate.resume import exclusive, recover
from conftest import REPO, blspdata, read_jsonl


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
    assert result.returncode == 1 and "being written by another process" in result.stderr


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
