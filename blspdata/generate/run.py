"""`blspdata generate`: a manifest -> continuation records, through an LLM, resumably.

For each record of the manifest (in this shard, not done yet) the prompt template renders
chat messages; an engine (`backends.py`) answers; each answer is appended to OUT as the
record plus `task`, `instruction`, `continuation`, `finished` and `generator`, or to
OUT.rejects.jsonl with a reason. A rerun with the same OUT resumes: ids already in either
file are skipped. OUT.summary.json says what was done.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from blspdata.generate import prompts
from blspdata.generate.backends import (BackendError, DryRunBackend, OpenAIBackend, Request, Result, ServerDown,
                                        VLLMBackend)
from blspdata.generate.resume import AppendWriter, parse_shard, recover, shard_of
from blspdata.records import Record, Reject, iter_jsonl, sidecar, write_json

BACKENDS = ("embedded", "openai", "vllm", "dry-run")


class GenerateError(RuntimeError):
    pass


@dataclass
class Summary:
    output: str
    already_done: int = 0
    written: int = 0
    finished: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    rejects: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "already_done": self.already_done, "written": self.written,
                "finished": self.finished, "output_tokens": self.output_tokens, "seconds": round(self.seconds, 2),
                "output_tokens_per_s": round(self.output_tokens / self.seconds, 1) if self.seconds else 0.0,
                "rejected": sum(self.rejects.values()), "rejects": dict(self.rejects.most_common())}

    def render(self) -> str:
        rate = self.output_tokens / self.seconds if self.seconds else 0.0
        lines = [f"{self.written} continuations written ({self.finished} finished by the model), "
                 f"{self.already_done} already done -> {self.output}",
                 f"  {self.output_tokens} output tokens in {self.seconds:.1f} s ({rate:.1f} tok/s)"]
        if self.rejects:
            lines.append(f"  rejected {sum(self.rejects.values())} (see {sidecar(self.output, 'rejects.jsonl')}):")
            lines += [f"    {reason:<24} {count:>8}" for reason, count in self.rejects.most_common()]
        return "\n".join(lines)


@dataclass
class _Pending:
    record: Record
    instruction: str
    location: str


def _manifest_rows(manifest: Path, shard: tuple[int, int], done: set[str]) -> Iterator[tuple[str, Record | None, str]]:
    """`(location, record or None, error)` for manifest rows of this shard not done yet."""
    index, count = shard
    for number, row, error in iter_jsonl(manifest):
        location = f"{manifest}:{number}"
        if row is None:
            if location not in done and (count == 1 or index == 0):  # malformed rows belong to shard 0
                yield location, None, error
            continue
        try:
            record = Record.from_dict(row)
        except (TypeError, ValueError) as exc:
            if location not in done and (count == 1 or index == 0):
                yield location, None, str(exc)
            continue
        if count > 1 and shard_of(record.id, count) != index:
            continue
        if record.id not in done:
            yield location, record, ""


def generate(manifest: str | Path, out: str | Path, *, task: str = "semantic", prompt: str | None = None,
             backend: str = "embedded", base_url: str | None = None, model: str | None = None,
             api_key: str | None = None, serve: str | None = None, concurrency: int | None = None,
             max_new_tokens: int | None = None, temperature: float | None = None, seed: int = 0,
             shard: str | None = None, server_timeout: float = 120.0, limit: int | None = None,
             strict: bool = False, progress: bool = True, executor: str = "local",
             engine_args: dict[str, Any] | None = None) -> Summary:
    """Write continuations of the records in `manifest` to `out` (resumable). The Python face
    of `blspdata generate`; see its --help for the options."""
    manifest, out = Path(manifest), Path(out)
    if not manifest.is_file():
        raise GenerateError(f"manifest not found: {manifest}")
    if out.name.endswith(".gz"):
        raise GenerateError(f"{out}: generate appends as it goes (so it can resume) and writes plain JSONL; "
                            "name the output .jsonl")
    if backend not in BACKENDS:
        raise GenerateError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    template = prompts.load(prompt or task)
    if template.task != task:
        raise GenerateError(f"prompt {template.id!r} is for the {template.task} task, not {task}")
    sampling = {"max_new_tokens": 48, "min_new_tokens": 1, "temperature": 0.0, **template.generation}
    if max_new_tokens is not None:
        sampling["max_new_tokens"] = max_new_tokens
    if temperature is not None:
        sampling["temperature"] = temperature
    sampling["seed"] = seed
    shard_spec = parse_shard(shard)
    rejects_path = sidecar(out, "rejects.jsonl")

    kept = recover(out)
    rejected = recover(rejects_path)
    done = set(kept) | set(rejected)
    summary = Summary(output=str(out), already_done=len(done))

    with contextlib.ExitStack() as stack:
        engine = _make_engine(stack, backend, base_url, model, api_key, serve, concurrency, server_timeout, seed,
                              engine_args)
        started = time.monotonic()
        try:
            asyncio.run(_drive(engine, template, sampling, task, manifest, out, rejects_path, shard_spec, done, kept,
                               summary, limit, strict, progress))
        finally:
            summary.seconds = time.monotonic() - started
            write_json(sidecar(out, "summary.json"), summary.to_dict())
    return summary


def _make_engine(stack: contextlib.ExitStack, backend: str, base_url, model, api_key, serve, concurrency,
                 server_timeout, seed, engine_args):
    if serve is not None:
        from blspdata.generate.servers import vllm_server

        if serve != "vllm":
            raise GenerateError(f"--serve supports vllm, not {serve!r}")
        if not model:
            raise GenerateError("--serve vllm needs --model (a Hugging Face id or a local folder)")
        server = stack.enter_context(vllm_server(model, seed=seed))
        return OpenAIBackend(server.base_url, model=model, concurrency=concurrency or 256,
                             server_timeout=server_timeout)
    if backend == "dry-run":
        return DryRunBackend()
    if backend == "vllm":
        if not model:
            raise GenerateError("--backend vllm needs --model")
        return VLLMBackend(model, seed=seed, engine_args=engine_args or {})
    if backend == "openai" or base_url:
        if not base_url:
            raise GenerateError("--backend openai needs --base-url (e.g. http://localhost:8000/v1)")
        return OpenAIBackend(base_url, model=model, api_key=api_key, concurrency=concurrency or 64,
                             server_timeout=server_timeout)
    from blspdata.generate.servers import embedded_llama

    server = stack.enter_context(embedded_llama(model))
    # llama.cpp's server answers one request at a time: a few in flight keep it busy. Its
    # repeat penalty defaults to 1.1; the recipe decodes greedily, without one.
    return OpenAIBackend(server.base_url, concurrency=concurrency or 4, server_timeout=server_timeout,
                         extra_body={"repeat_penalty": 1.0})


async def _drive(engine, template: prompts.Template, sampling: dict[str, Any], task: str, manifest: Path, out: Path,
                 rejects_path: Path, shard: tuple[int, int], done: set[str], kept: dict, summary: Summary,
                 limit: int | None, strict: bool, progress: bool) -> None:
    total = sum(1 for _ in _manifest_rows(manifest, shard, done))
    if limit is not None:
        total = min(total, max(0, limit - len(done)))
    async with engine:
        generator = {"backend": engine.name, "model": engine.model, "prompt": template.describe(), "sampling": sampling}
        previous = next((g for g in kept.values() if g is not None), None)
        if previous is not None and previous != generator:
            raise GenerateError(f"{out} holds rows made with other settings ({previous}); now: {generator}. "
                                "Use another output, or delete it to start over.")
        writer, reject_writer = AppendWriter(out), AppendWriter(rejects_path)
        bar = tqdm(total=total, desc=f"generate {task}", unit=" rec", disable=not progress, file=sys.stderr,
                   dynamic_ncols=True)
        in_flight: dict[str, _Pending] = {}
        started = time.monotonic()

        def reject(reason: str, location: str, detail: str, record: Record | None) -> None:
            item = Reject(reason, location, detail, id=record.id if record else None,
                          record=record.to_dict() if record else None)
            if strict:
                raise GenerateError(item.message())
            summary.rejects[reason] += 1
            row = item.to_dict()
            if row.get("id") is None:
                row["id"] = location  # so a rerun knows this row is done
            reject_writer.write(row)
            bar.update(1)

        def finish(result: Result) -> None:
            pending = in_flight.pop(result.id)
            if result.reject:
                reject(result.reject, pending.location, result.detail, pending.record)
                return
            row = pending.record.to_dict()
            row.update(task=task, instruction=pending.instruction, continuation=result.continuation,
                       finished=result.finished, generator=generator)
            writer.write(row)
            summary.written += 1
            summary.finished += int(result.finished)
            summary.output_tokens += result.output_tokens
            elapsed = time.monotonic() - started
            bar.set_postfix(tok_s=f"{summary.output_tokens / elapsed:.0f}" if elapsed else "0",
                            in_flight=len(in_flight), refresh=False)
            bar.update(1)

        def requests() -> Iterator[Request]:
            budget = total
            for location, record, error in _manifest_rows(manifest, shard, done):
                if budget <= 0:
                    return
                budget -= 1
                if record is None:
                    reject("malformed_row", location, error, None)
                    continue
                if task == "emotion" and record.emotion is None:
                    reject("emotion_missing", location, "the emotion task needs an emotion label", record)
                    continue
                if not record.text.strip():
                    reject("text_empty", location, "empty transcript", record)
                    continue
                if record.id in in_flight:
                    reject("duplicate_id", location, f"{record.id} appears twice in the manifest", record)
                    continue
                instruction = template.instruction(record)
                in_flight[record.id] = _Pending(record, instruction, location)
                yield Request(record.id, template.render(record), max_new_tokens=sampling["max_new_tokens"],
                              min_new_tokens=sampling.get("min_new_tokens", 1), temperature=sampling["temperature"],
                              seed=sampling["seed"], max_prompt_tokens=sampling.get("max_prompt_tokens"))

        try:
            if hasattr(engine, "complete_batch"):
                batch: list[Request] = []
                for request in requests():
                    batch.append(request)
                    if len(batch) >= engine.batch_size:
                        for result in await engine.complete_batch(batch):
                            finish(result)
                        batch = []
                if batch:
                    for result in await engine.complete_batch(batch):
                        finish(result)
            else:
                await _concurrently(engine, requests(), finish, engine.concurrency)
        finally:
            bar.close()
            writer.close()
            reject_writer.close()


async def _concurrently(engine, requests: Iterator[Request], finish, limit: int) -> None:
    """Keep up to `limit` requests in flight; hand each result to `finish` as it arrives."""
    pending: set[asyncio.Task] = set()
    try:
        for request in requests:
            while len(pending) >= limit:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    finish(task.result())
            pending.add(asyncio.create_task(engine.complete(request)))
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                finish(task.result())
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
