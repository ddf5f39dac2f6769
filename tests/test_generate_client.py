"""The LLM client against a hostile server, through the real CLI: a small OpenAI-compatible
server on loopback (in this process) answers as a script says: 429 with Retry-After, broken
bodies, no answer at all, 500s that later heal. And what a rerun and a second run write."""

from __future__ import annotations

import email.utils
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from conftest import REPO, read_jsonl

SAMPLE = REPO / "manifests" / "sample" / "iemocap.jsonl"
Reply = tuple[int, dict, bytes]


def ok(text: str = "and then it rained.", **usage) -> Reply:
    body = {"choices": [{"message": {"content": text}, "finish_reason": "stop"}],
            "usage": {"completion_tokens": 5, "prompt_tokens": 20, **usage}}
    return 200, {}, json.dumps(body).encode()


class FakeLLM:
    """`script(transcript, attempt)` -> (status, headers, body), or None to accept the
    request and never answer. Every POST is recorded as (monotonic time, transcript)."""

    def __init__(self, script: Callable[[str, int], Reply | None]):
        self.script, self.posts = script, []
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, status: int, headers: dict, body: bytes) -> None:
                self.send_response(status)
                for key, value in {"content-type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self.send(200, {}, json.dumps({"data": [{"id": "m", "owned_by": "test"}]}).encode())

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                transcript = body["messages"][-1]["content"].rsplit(": ", 1)[-1]
                fake.posts.append((time.monotonic(), transcript))
                reply = fake.script(transcript, sum(1 for _, t in fake.posts if t == transcript))
                if reply is None:
                    fake.release.wait(120)
                    return
                self.send(*reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "FakeLLM":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def manifest(tmp_path: Path, texts: list[str]) -> Path:
    rows = read_jsonl(SAMPLE)[:len(texts)]
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps({**row, "text": text}) + "\n" for row, text in zip(rows, texts)))
    return path


def generate(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """The CLI in a subprocess (this process serves the fake LLM on another thread)."""
    return subprocess.run([sys.executable, "-m", "blspdata", "generate", *map(str, args), "--no-progress"],
                          capture_output=True, text=True, timeout=timeout)


def rejects_of(out: Path) -> dict[str, dict]:
    path = out.with_name(out.name.replace(".jsonl", ".rejects.jsonl"))
    return {row["record"]["text"] if row.get("record") else row["id"]: row for row in read_jsonl(path)} \
        if path.exists() else {}


# ---------------------------------------------------------------------------- Retry-After

def test_429_with_retry_after_in_seconds_or_as_a_date_waits_as_told(tmp_path: Path):
    for header in ("2", lambda: email.utils.formatdate(time.time() + 3, usegmt=True)):
        def script(text: str, attempt: int) -> Reply:
            if attempt == 1:
                value = header() if callable(header) else header
                return 429, {"retry-after": value}, b'{"error": "slow down"}'
            return ok()

        out = tmp_path / f"out{len(str(header))}.jsonl"
        with FakeLLM(script) as llm:
            result = generate(manifest(tmp_path, ["A sentence."]), "-o", out, "--base-url", llm.url, "--model", "m")
        assert result.returncode == 0, result.stderr
        assert len(read_jsonl(out)) == 1
        (first, _), (second, _) = llm.posts
        # the fixed backoff alone would resend after 0.25-0.75 s
        assert second - first >= 1.9, (header, second - first)


def test_a_retry_after_of_an_hour_is_capped_by_the_server_timeout(tmp_path: Path):
    def script(text: str, attempt: int) -> Reply:
        return (429, {"retry-after": "3600"}, b"{}") if attempt == 1 else ok()

    out = tmp_path / "out.jsonl"
    with FakeLLM(script) as llm:
        result = generate(manifest(tmp_path, ["A sentence."]), "-o", out, "--base-url", llm.url, "--model", "m",
                          "--server-timeout", "2", timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(read_jsonl(out)) == 1 and len(llm.posts) == 2


# ---------------------------------------------------------------------------- malformed answers

BROKEN = {
    "empty": (ok(""), "the continuation is empty"),
    "blank": (ok("  \n"), "the continuation is empty"),
    "null": ((200, {}, json.dumps({"choices": [{"message": {"content": None}}]}).encode()), "content is null"),
    "tokens": (ok(prompt_tokens="12"), "usage.prompt_tokens is '12'"),
    "count": (ok(completion_tokens=[5]), "usage.completion_tokens"),
    "nochoices": ((200, {}, b'{"usage": {}}'), "no choices"),
    "notjson": ((200, {}, b"<html>proxy error</html>"), "not JSON"),
    "list": ((200, {}, b"[1, 2]"), "expected a JSON object"),
    "message": ((200, {}, b'{"choices": [{"message": "hi"}]}'), "choices[0].message is a str"),
    "finish": ((200, {}, b'{"choices": [{"message": {"content": "x"}, "finish_reason": 3}]}'), "finish_reason"),
}


def test_malformed_answers_are_bad_response_rejects_and_the_good_rows_are_written(tmp_path: Path):
    texts = [f"Case {name}." for name in BROKEN] + ["Case good.", "Case fine."]

    def script(text: str, attempt: int) -> Reply:
        name = text.split()[-1].rstrip(".")
        return BROKEN[name][0] if name in BROKEN else ok(f"continued {name}")

    out = tmp_path / "out.jsonl"
    with FakeLLM(script) as llm:
        result = generate(manifest(tmp_path, texts), "-o", out, "--base-url", llm.url, "--model", "m")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert [row["continuation"] for row in read_jsonl(out)] == ["continued good", "continued fine"]
    rejects = rejects_of(out)
    assert set(rejects) == {f"Case {name}." for name in BROKEN}
    for name, (_, detail) in BROKEN.items():
        reject = rejects[f"Case {name}."]
        assert reject["reason"] == "bad_response" and detail in reject["detail"], reject
    assert ["bad_response", str(len(BROKEN))] in [line.split() for line in result.stdout.splitlines()]


# ---------------------------------------------------------------------------- request timeout

def test_a_server_that_never_answers_gives_timeout_rejects_after_the_request_timeout(tmp_path: Path):
    out = tmp_path / "out.jsonl"
    with FakeLLM(lambda text, attempt: None) as llm:
        result = generate(manifest(tmp_path, ["One.", "Two.", "Three."]), "-o", out, "--base-url", llm.url,
                          "--model", "m", "--request-timeout", "2", timeout=90)
    assert result.returncode == 0, result.stderr
    assert read_jsonl(out) == []
    rejects = rejects_of(out)
    assert {row["reason"] for row in rejects.values()} == {"timeout"} and len(rejects) == 3
    assert "2 s" in rejects["One."]["detail"]
    assert len(llm.posts) == 3  # each sent once in this run; a rerun tries again


def test_the_request_timeout_is_a_run_key(tmp_path: Path):
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"run_dir": str(tmp_path / "run"),
                                  "corpora": [{"kind": "iemocap", "root": str(REPO / "samples" / "corpora" /
                                                                              "IEMOCAP_full_release")}],
                                  "generate": {"backend": "dry-run", "request_timeout": 0}}))
    result = subprocess.run([sys.executable, "-m", "blspdata", "run", config, "--plan"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and "request_timeout" in result.stderr
    config.write_text(config.read_text().replace('"request_timeout": 0', '"request_timeout": 30'))
    result = subprocess.run([sys.executable, "-m", "blspdata", "run", config, "--plan"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------- transient rejects retried

def test_a_rerun_retries_transient_rejects_only_and_ends_as_a_clean_run(tmp_path: Path):
    texts = ["Alpha one.", "Flaky two.", "Empty three.", "Long four.", "Delta five.", "Slow six."]
    healthy = threading.Event()

    def script(text: str, attempt: int) -> Reply | None:
        if text.startswith("Long"):  # permanent: the server will always refuse it
            return 400, {}, b'{"error": {"message": "maximum context length is 16 tokens"}}'
        if not healthy.is_set():
            if text.startswith("Flaky"):
                return 500, {}, b'{"error": "boom"}'
            if text.startswith("Empty"):
                return ok("")
            if text.startswith("Slow"):
                return None
        return ok(f"after {text}")

    source = manifest(tmp_path, texts)
    out, clean = tmp_path / "out.jsonl", tmp_path / "clean.jsonl"
    args = ["--base-url", None, "--model", "m", "--server-timeout", "1", "--request-timeout", "2"]
    with FakeLLM(script) as llm:
        args[1] = llm.url
        first = generate(source, "-o", out, *args)
        assert first.returncode == 0, first.stderr
        assert {t: r["reason"] for t, r in rejects_of(out).items()} == {
            "Flaky two.": "server_error", "Empty three.": "bad_response", "Long four.": "prompt_too_long",
            "Slow six.": "timeout"}
        healthy.set()
        kept = generate(source, "-o", out, *args, "--no-retry-rejects")
        assert kept.returncode == 0 and "0 continuations written" in kept.stdout, kept.stdout
        assert len(rejects_of(out)) == 4
        again = generate(source, "-o", out, *args)
        assert again.returncode == 0, again.stderr
        assert "3 continuations written" in again.stdout and "3 earlier rejects retried" in again.stdout, again.stdout
        assert {t: r["reason"] for t, r in rejects_of(out).items()} == {"Long four.": "prompt_too_long"}
        summary = json.loads((tmp_path / "out.summary.json").read_text())
        assert summary["retried"] == 3 and summary["written"] == 3
        assert generate(source, "-o", clean, *args).returncode == 0
    assert [row["text"] for row in read_jsonl(out)] == [t for t in texts if not t.startswith("Long")]
    assert out.read_bytes() == clean.read_bytes()  # the holes filled, in manifest order


# ---------------------------------------------------------------------------- deterministic order

def test_two_runs_write_the_same_bytes_in_manifest_order_whatever_order_answers_come(tmp_path: Path):
    import random

    rows = read_jsonl(SAMPLE)[:30]
    source = tmp_path / "manifest.jsonl"
    # a malformed line and a duplicate id: their rejects are ordered too
    source.write_text("".join(json.dumps(r) + "\n" for r in rows[:10]) + "{broken\n"
                      + "".join(json.dumps(r) + "\n" for r in rows[10:] + [rows[3]]))

    def script(text: str, attempt: int) -> Reply:
        time.sleep(random.random() * 0.05)  # answers come back out of order
        return ok(f"after {text}")

    outputs = []
    with FakeLLM(script) as llm:
        for name, extra in (("a", []), ("b", []), ("resumed", ["--limit", "12"])):
            out = tmp_path / f"{name}.jsonl"
            for limit in ([extra] if extra else []) + [[]]:
                result = generate(source, "-o", out, "--base-url", llm.url, "--model", "m", "--concurrency", "8",
                                  *limit)
                assert result.returncode == 0, result.stderr
            outputs.append(out)
    for backend in ("a", "b"):  # the dry-run engine with jittered latency
        out = tmp_path / f"dry-{backend}.jsonl"
        assert generate(source, "-o", out, "--backend", "dry-run", "--concurrency", "8",
                        "-E", "jitter=0.03").returncode == 0
        outputs.append(out)
    a, b, resumed, dry_a, dry_b = outputs
    assert [row["id"] for row in read_jsonl(a)] == [row["id"] for row in rows]
    assert a.read_bytes() == b.read_bytes() == resumed.read_bytes()
    assert dry_a.read_bytes() == dry_b.read_bytes()
    assert [row["id"] for row in read_jsonl(dry_a)] == [row["id"] for row in rows]
    rejects = [p.with_name(p.name.replace(".jsonl", ".rejects.jsonl")).read_bytes() for p in outputs]
    assert rejects[0] == rejects[1] == rejects[2] and rejects[3] == rejects[4]
    assert [r["reason"] for r in read_jsonl(a.with_name("a.rejects.jsonl"))] == ["malformed_row", "duplicate_id"]


# ---------------------------------------------------------------------------- blspdata run

def test_run_retries_a_finished_generate_steps_transient_rejects_and_rebuilds_what_follows(tmp_path: Path):
    """`blspdata run` skips finished steps by their settings; a finished generate step with
    server failures among its rejects is resumed instead, and curate and publish, built from
    its old rows, run again."""
    import yaml

    healthy = threading.Event()
    failing: set[str] = set()

    def script(text: str, attempt: int) -> Reply:
        if not healthy.is_set() and (len(failing) < 3 or text in failing):
            failing.add(text)
            return 500, {}, b'{"error": "boom"}'
        return ok(f"Hearing you say {text} I wonder how the rest of that long day went for you.")

    with FakeLLM(script) as llm:
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump({
            "run_dir": str(tmp_path / "run"),
            "corpora": [{"kind": "iemocap", "root": str(REPO / "samples" / "corpora" / "IEMOCAP_full_release")}],
            "generate": {"backend": "openai", "base_url": llm.url, "model": "m", "server_timeout": 1,
                         "concurrency": 2},
            "curate": {"disable": ["echo", "length", "language"]}}))

        def run() -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "blspdata", "run", str(config), "--no-progress"],
                                  capture_output=True, text=True, timeout=600)

        first = run()
        assert first.returncode == 0, first.stderr
        state = json.loads((tmp_path / "run" / "run.json").read_text())["units"]
        rejects = state["generate/iemocap"]["summary"]["rejects"]
        assert list(rejects) == ["server_error"] and rejects["server_error"] > 0, rejects
        failed = rejects["server_error"]
        curated_before = state["curate"]["summary"]["input"]
        healthy.set()
        second = run()
        assert second.returncode == 0, second.stderr
        assert f"== generate/iemocap: resume ({failed} transient rejects to retry" in second.stdout, second.stdout
        assert "== curate: run (an earlier stage wrote new rows)" in second.stdout
        assert "== publish: run (an earlier stage wrote new rows)" in second.stdout
        state = json.loads((tmp_path / "run" / "run.json").read_text())["units"]
        assert state["generate/iemocap"]["summary"]["retried"] == failed
        assert state["generate/iemocap"]["summary"]["rejects"] == {}  # the holes are filled
        assert state["curate"]["summary"]["input"] == curated_before + failed
        third = run()  # nothing left to retry: everything is up to date
        assert third.returncode == 0 and third.stdout.count(": skip (up to date)") == 4, third.stdout
