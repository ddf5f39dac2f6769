"""`blspdata generate`: a manifest -> continuation records, through an LLM, resumably.

For each record of the manifest (in this shard, not done yet) the prompt template renders
chat messages; an engine (`backends.py`) answers; each answer is appended to OUT as the
record plus `task`, `instruction`, `continuation`, `finished` and `generator`, or to
OUT.rejects.jsonl with a reason. A rerun with the same OUT resumes: ids already in either
file are skipped, except transient rejects (TRANSIENT_REJECTS: the server failed, not the
row), which a rerun generates again. When the run completes, OUT and its rejects are put in
manifest order, so the same input and settings give the same bytes. OUT.summary.json says
what was done.

Two executors share everything but the loop: `local` (this process drives one engine,
many requests in flight) and `ray` (Ray Data actors, one engine each; `ray_executor.py`);
the engine both drive is built and run by `engine.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from blspdata.generate import prompts
from blspdata.generate.backends import Request, Result
from blspdata.generate.engine import make_engine, run_requests
from blspdata.generate.options import GenerateError, GenerateSettings, settings_of
from blspdata.generate.resume import (AppendWriter, DoneIds, drop_rows, exclusive, manifest_line, manifest_positions,
                                      parse_shard, recover, shard_of, sort_rows)
from blspdata.records import HashSet, Record, Reject, iter_jsonl, key_hash, read_rows, sidecar, write_json
from blspdata.rejects import Rejects

# Rejects that say the server failed, not the row: a rerun tries them again (unless
# --no-retry-rejects). Every other reason (prompt_too_long, request_rejected, emotion_missing,
# text_empty, malformed_row, duplicate_id, an invalid row) would fail the same way again.
TRANSIENT_REJECTS = ("server_error", "bad_response", "timeout")


@dataclass
class Summary:
    output: str
    already_done: int = 0
    retried: int = 0  # transient rejects of an earlier run sent again
    written: int = 0
    finished: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    rejects: Rejects | None = None  # OUT.rejects.jsonl and this run's reasons (default: from `output`)

    def __post_init__(self) -> None:
        if self.rejects is None:
            self.rejects = Rejects(sidecar(self.output, "rejects.jsonl"))

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "already_done": self.already_done, "retried": self.retried,
                "written": self.written,
                "finished": self.finished, "output_tokens": self.output_tokens, "seconds": round(self.seconds, 2),
                "output_tokens_per_s": round(self.output_tokens / self.seconds, 1) if self.seconds else 0.0,
                "rejected": self.rejects.total, "rejects": self.rejects.counts()}

    def render(self) -> str:
        rate = self.output_tokens / self.seconds if self.seconds else 0.0
        lines = [f"{self.written} continuations written ({self.finished} finished by the model), "
                 f"{self.already_done} already done"
                 + (f", {self.retried} earlier rejects retried" if self.retried else "") + f" -> {self.output}",
                 f"  {self.output_tokens} output tokens in {self.seconds:.1f} s ({rate:.1f} tok/s)",
                 self.rejects.render()]
        return "\n".join(lines)


# ---------------------------------------------------------------------------- shared by both executors

@dataclass(frozen=True)
class Job:
    """What every worker needs to turn a manifest row into a request (picklable for Ray)."""

    template: prompts.Template
    sampling: dict[str, Any]
    task: str
    shard: tuple[int, int]

    def mine(self, record_id: str) -> bool:
        index, count = self.shard
        return count == 1 or shard_of(record_id, count) == index

    def request(self, record: Record) -> Request | Reject:
        """The request for `record`, or why there is none."""
        if self.task == "emotion" and record.emotion is None:
            return Reject("emotion_missing", "", "the emotion task needs an emotion label")
        if not record.text.strip():
            return Reject("text_empty", "", "empty transcript")
        s = self.sampling
        return Request(record.id, self.template.render(record), max_new_tokens=s["max_new_tokens"],
                       min_new_tokens=s.get("min_new_tokens", 1), temperature=s["temperature"], seed=s["seed"],
                       max_prompt_tokens=s.get("max_prompt_tokens"),
                       repetition_penalty=s.get("repetition_penalty", 1.0), stop=tuple(s.get("stop", ())),
                       prefill=record.text if s.get("prefill") else None)


def manifest_rows(manifest: Path, job: Job, done: set[str] | frozenset[str]) -> Iterator[tuple[str, Record | None, Reject | None]]:
    """`(location, record or None, reject or None)` for the manifest rows of this shard not done
    yet; a row that is not a valid record comes with its Reject (records.read_row:
    `malformed_row`, `invalid_row:<field>`). Those belong to shard 0 (no id to hash). A later
    row with an id seen before comes with a `duplicate_id` Reject, even when the first was done
    by an earlier run (so a resumed run rejects it as a clean one does). The ids met are kept as
    64-bit hashes (records.HashSet, ~8 bytes a row): two different ids that share a hash (odds
    about 3 in a million among 10 million ids) would read as a repeat."""
    seen = HashSet()
    for item in read_rows(manifest):
        location, record, bad = item.location, item.record, item.reject
        if record is None:
            if location not in done and job.shard[0] == 0:
                yield location, None, bad
        elif job.mine(record.id):
            if not seen.add(key_hash(record.id)):
                if location not in done:
                    yield location, record, Reject("duplicate_id", location, f"{record.id} appears twice in the manifest")
            else:
                if record.id not in done:
                    yield location, record, None


class _Sink:
    """Writes results as they arrive: rows to OUT, rejects beside it; counts; progress."""

    def __init__(self, out: Path, job: Job, generator: dict[str, Any], summary: Summary, total: int,
                 progress: bool):
        self.job, self.generator, self.summary = job, generator, summary
        self.writer = AppendWriter(out)
        self.reject_writer = AppendWriter(sidecar(out, "rejects.jsonl"))
        # Appended as they come (a rerun resumes from them), not committed at the end; --strict
        # is the summary's Rejects' (see _generate_locked).
        self.rejects = summary.rejects.write_to(self.reject_writer)
        self.bar = tqdm(total=total, desc=f"generate {job.task}", unit=" rec", disable=not progress,
                        file=sys.stderr, dynamic_ncols=True)
        self.started = time.monotonic()
        self.in_flight = 0

    def reject(self, reason: str, location: str, detail: str, record: Record | None) -> None:
        """A reject row is keyed by the record's id, so a rerun skips it; rows without an id
        (malformed) and duplicates of an id (whose first copy is generated) by location."""
        keyed_by_id = record is not None and reason != "duplicate_id"
        self.rejects.add(Reject(reason, location, detail, id=record.id if keyed_by_id else None,
                                record=record.to_dict() if record else None), key=location)
        self.bar.update(1)

    def result(self, record: Record, location: str, instruction: str, result: Result) -> None:
        if not result.reject and not (isinstance(result.continuation, str) and result.continuation.strip()):
            result = Result(result.id, reject="bad_response", detail=f"the {self.generator.get('backend')} engine "
                            "answered an empty continuation")
        if result.reject:
            self.reject(result.reject, location, result.detail, record)
            return
        row = record.to_dict()
        row.update(task=self.job.task, instruction=instruction, continuation=result.continuation,
                   finished=result.finished, generator=self.generator)
        self.writer.write(row)
        self.summary.written += 1
        self.summary.finished += int(result.finished)
        self.summary.output_tokens += result.output_tokens
        elapsed = time.monotonic() - self.started
        self.bar.set_postfix(tok_s=f"{self.summary.output_tokens / elapsed:.0f}" if elapsed else "0",
                             in_flight=self.in_flight, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
        self.reject_writer.close()


# ---------------------------------------------------------------------------- the command

def generate(manifest: str | Path, out: str | Path, *, task: str = "semantic", prompt: str | None = None,
             settings: GenerateSettings | None = None, api_key: str | None = None, shard: str | None = None,
             strict: bool = False, progress: bool = True, trust_remote_code: bool = False,
             **options: Any) -> Summary:
    """Write continuations of the records in `manifest` to `out` (resumable). The Python face
    of `blspdata generate`; see its --help for the options. The generation options are
    GenerateSettings' fields (generate/options.py): pass `settings`, or any of them by name
    (`backend="dry-run", seed=1`), or both (the names win)."""
    s = settings_of(settings, **options)
    backend, base_url, model, serve, seed = s.backend, s.base_url, s.model, s.serve, s.seed
    executor, ray_actors = s.executor, s.ray_actors
    manifest, out = Path(manifest), Path(out)
    if not manifest.is_file():
        raise GenerateError(f"manifest not found: {manifest}")
    if out.resolve() == manifest.resolve():
        raise GenerateError(f"--out {out} is the manifest itself; write the continuations elsewhere")
    if out.name.endswith(".gz"):
        raise GenerateError(f"{out}: generate appends as it goes (so it can resume) and writes plain JSONL; "
                            "name the output .jsonl")
    template = prompts.load(prompt or task)
    if template.task != task:
        raise GenerateError(f"prompt {template.id!r} is for the {template.task} task, not {task}")
    engine_args = check_engine_args(s.engine_args, trust_remote_code, backend, serve)
    sampling = {**prompts.DEFAULT_GENERATION, **template.generation}
    if s.max_new_tokens is not None:
        sampling["max_new_tokens"] = s.max_new_tokens
    if s.temperature is not None:
        sampling["temperature"] = s.temperature
    if s.repetition_penalty is not None:
        sampling["repetition_penalty"] = s.repetition_penalty
    sampling["seed"] = seed
    if prefill_option(engine_args, backend, base_url, serve):
        sampling.update(prefill="transcript", min_new_tokens=max(PREFILL_MIN_NEW_TOKENS, sampling["min_new_tokens"]))
    job = Job(template, sampling, task, parse_shard(shard))
    if executor == "ray" and backend == "embedded" and not base_url and not serve:
        # one embedded server per actor: share the cores between them
        from blspdata.parallel import cores

        engine_args = {"servers": 1, "threads": max(1, cores() // max(1, ray_actors)),
                       **(engine_args or {})}
    engine_spec = dict(backend=backend, base_url=base_url, model=model, api_key=api_key, serve=serve,
                       concurrency=s.concurrency, server_timeout=s.server_timeout, seed=seed, engine_args=engine_args,
                       request_timeout=s.request_timeout)

    if executor == "ray" and serve:
        raise GenerateError("--serve with --executor ray would start one server per actor; start vLLM yourself "
                            "and pass --base-url, or use --backend vllm")
    with exclusive(out):
        return _generate_locked(manifest, out, job, engine_spec, template, sampling, s.limit, strict, progress,
                                executor, ray_actors, s.retry_rejects)


def _release_transient(manifest: Path, out: Path, job: Job, kept: DoneIds) -> int:
    """Take this shard's transient rejects out of OUT's rejects file (atomically), so this
    run generates those rows again; how many. Only ids still in the manifest and not in OUT
    are taken: a reject whose row would not be redone stays where it is."""
    rejects = sidecar(out, "rejects.jsonl")
    if not rejects.exists():
        return 0
    transient = {row["id"] for _, row, _ in iter_jsonl(rejects)
                 if row is not None and row.get("reason") in TRANSIENT_REJECTS and isinstance(row.get("id"), str)
                 and row["id"] not in kept}
    if not transient:
        return 0
    redo = {record.id for _, record, _ in manifest_rows(manifest, job, frozenset())
            if record is not None and record.id in transient}
    return drop_rows(rejects, lambda row: row.get("reason") in TRANSIENT_REJECTS and row.get("id") in redo)


def _order_by_manifest(manifest: Path, out: Path, job: Job) -> None:
    """OUT and its rejects in manifest order (rows were appended as they completed)."""
    positions = manifest_positions(manifest, job.mine)
    for path in (out, sidecar(out, "rejects.jsonl")):
        sort_rows(path, lambda row: manifest_line(row, positions))


def _generate_locked(manifest: Path, out: Path, job: Job, engine_spec: dict[str, Any], template, sampling,
                     limit: int | None, strict: bool, progress: bool, executor: str, ray_actors: int,
                     retry_rejects: bool = True) -> Summary:
    kept = recover(out)
    rejects = sidecar(out, "rejects.jsonl")
    recover(rejects)  # a torn last line is cut before anything reads or rewrites the file
    retried = _release_transient(manifest, out, job, kept) if retry_rejects else 0
    done = kept | recover(rejects)  # compact: 64-bit hashes, a hit confirmed against the row (resume.DoneIds)
    previous_generator = kept.first_generator
    kept.close()
    del kept  # `done` holds its rows too: one copy of the done ids, not two
    summary = Summary(output=str(out), already_done=len(done), retried=retried,
                      rejects=Rejects(rejects, strict=strict, error=GenerateError))
    total = sum(1 for _ in manifest_rows(manifest, job, done))
    if limit is not None:
        total = min(total, max(0, limit - len(done)))

    def check_settings(generator: dict[str, Any]) -> None:
        previous = previous_generator
        if previous is not None and previous != generator:
            raise GenerateError(f"{out} holds rows made with other settings ({previous}); now: {generator}. "
                                "Use another output, or delete it to start over.")

    started, completed = None, False
    try:
        if executor == "ray":
            from blspdata.generate.ray_executor import run_on_ray

            if limit is not None:
                raise GenerateError("--limit is not supported with --executor ray")
            generator = generator_info(engine_spec, template, sampling)
            check_settings(generator)
            started = time.monotonic()
            sink = _Sink(out, job, generator, summary, total, progress)
            try:
                run_on_ray(manifest, job, done, engine_spec, sink, total, ray_actors)
            finally:
                sink.close()
        else:
            with contextlib.ExitStack() as stack:
                engine = make_engine(stack, **engine_spec)

                def check_and_start(generator: dict[str, Any]) -> None:
                    nonlocal started
                    check_settings(generator)
                    started = time.monotonic()

                asyncio.run(_drive_local(engine, manifest, job, done, out, summary, total, progress,
                                         template, sampling, check_and_start))
        completed = True
    finally:
        if started is not None:  # a run that never started leaves the last summary alone
            summary.seconds = time.monotonic() - started
            write_json(sidecar(out, "summary.json"), summary.to_dict())
    if completed:  # a stopped run keeps completion order; its rerun sorts when it completes
        _order_by_manifest(manifest, out, job)
    return summary


# Flags of `vllm serve` / keys of vllm.LLM a config or -E may not set: trust_remote_code runs the
# model folder's own Python (only --trust-remote-code typed by the user turns it on); host and
# port would move the server off loopback; model is --model.
_RESERVED_ENGINE_ARGS = {"host": "the server listens on loopback only", "port": "blspdata picks a free port",
                         "model": "use --model"}


def check_engine_args(engine_args: dict[str, Any] | None, trust_remote_code: bool, backend: str = "vllm",
                      serve: str | None = None) -> dict[str, Any]:
    """`engine_args` (from a config's generate.engine_args or -E) with keys normalised, refused
    when they would run code or leave loopback. `trust_remote_code` in any spelling
    (trust_remote_code: true, trust-remote-code, --trust-remote-code) is an error unless the
    user passed --trust-remote-code, which then turns it on for the vLLM engines."""
    checked: dict[str, Any] = {}
    for key, value in (engine_args or {}).items():
        name = str(key).strip().lstrip("-").strip().lower().replace("-", "_")
        if not name or not all(c.isalnum() or c == "_" for c in name):
            raise GenerateError(f"engine_args: {str(key)[:80]!r} is not an option name")
        if name == "trust_remote_code":
            if value is False or value is None or str(value).strip().lower() in ("false", "0", "no", "off"):
                continue
            if not trust_remote_code:
                raise GenerateError(f"engine_args: {key}={str(value)[:80]} would let the model's folder run its own "
                                    "Python code; blspdata turns that on only when you pass --trust-remote-code on "
                                    "the command line (blspdata generate / blspdata run), never from a config or -E")
            continue
        if name in _RESERVED_ENGINE_ARGS:
            raise GenerateError(f"engine_args: {key} is not settable ({_RESERVED_ENGINE_ARGS[name]})")
        checked[name] = value
    if trust_remote_code and (backend == "vllm" or serve):
        checked["trust_remote_code"] = True
    return checked


# -E prefill=true: the assistant's turn starts with the transcript, and at least this many new
# tokens follow (a small model that may end its turn at once often does, or repeats the sentence).
PREFILL_MIN_NEW_TOKENS = 6


def prefill_option(engine_args: dict[str, Any], backend: str, base_url: str | None, serve: str | None) -> bool:
    """Whether `-E prefill=true` is on (the key then holds True), refused outside the embedded
    engine: it changes the recipe (the target is no longer the model's free reply to the paper's
    prompt), so it is a choice for the small CPU model only, recorded in `generator.sampling`."""
    if "prefill" not in engine_args:
        return False
    value = engine_args["prefill"]
    text = str(value).strip().lower()
    if value is True or text in ("true", "1", "yes", "on"):
        if backend != "embedded" or base_url or serve:
            where = "--serve vllm" if serve else "--base-url" if base_url else f"the {backend} backend"
            raise GenerateError(f"-E prefill=true is an option of the embedded engine only, not of {where}: it "
                                "changes the recipe (the assistant's turn starts with the transcript), which a "
                                "real model does not need")
        engine_args["prefill"] = True
        return True
    if value is False or value is None or text in ("false", "0", "no", "off"):
        del engine_args["prefill"]
        return False
    raise GenerateError(f"-E prefill takes true or false, not {str(value)[:80]!r}")


def generator_info(engine_spec: dict[str, Any], template: prompts.Template, sampling: dict[str, Any],
                   engine: Any = None) -> dict[str, Any]:
    """What goes into each row's `generator`: backend, model, template, sampling."""
    if engine is not None:
        name, model = engine.name, engine.model
    else:
        from blspdata.generate.servers import embedded_model_name

        name = "dry-run" if engine_spec["backend"] == "dry-run" else "vllm" if engine_spec["backend"] == "vllm" \
            else "openai"
        if engine_spec["backend"] == "embedded" and not engine_spec["base_url"] and not engine_spec["serve"]:
            model = embedded_model_name(engine_spec["model"])  # as the server will serve it
        else:
            model = engine_spec["model"] or ("dry-run" if name == "dry-run" else None)
        if model is None:
            raise GenerateError("--executor ray needs --model (the name the server serves)")
    return {"backend": name, "model": model, "prompt": template.describe(), "sampling": sampling}


async def _drive_local(engine, manifest: Path, job: Job, done: set[str], out: Path, summary: Summary, total: int,
                       progress: bool, template, sampling, check_settings) -> None:
    async with engine:
        generator = generator_info({}, template, sampling, engine)
        check_settings(generator)
        sink = _Sink(out, job, generator, summary, total, progress)

        def items() -> Iterator[tuple[Request, Any]]:
            budget = total
            for location, record, error in manifest_rows(manifest, job, done):
                if budget <= 0:
                    return
                budget -= 1
                if error is not None:  # not a valid record, or a duplicate id
                    sink.reject(error.reason, location, error.detail, record)
                    continue
                request = job.request(record)
                if isinstance(request, Reject):
                    sink.reject(request.reason, location, request.detail, record)
                    continue
                yield request, (record, location)

        def on_result(result: Result, context: tuple[Record, str]) -> None:
            record, location = context
            sink.result(record, location, job.template.instruction(record), result)

        def on_flight(n: int) -> None:
            sink.in_flight = n

        try:
            await run_requests(engine, items(), on_result, on_flight)
        finally:
            sink.close()
