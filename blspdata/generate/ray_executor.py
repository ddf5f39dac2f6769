"""`--executor ray`: the same generation over Ray Data, for users who outgrow one machine.

Ray reads the manifest as text lines and streams them through a pool of actors; each actor
owns one engine (an embedded llama.cpp server, an OpenAI-compatible client, or a `vllm.LLM`
on its own GPU), builds the same requests as the local executor (`Job.request`) and runs
them with the same loop (`run_requests`). Results stream back to this process, which
writes them with the same sink, so output, rejects, resume and summary are identical to a
local run. Connect to a cluster by starting this under `ray job submit` or with
RAY_ADDRESS set; without one, a local Ray instance is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from pathlib import Path
from typing import Any

import orjson

from blspdata.generate.backends import BackendError, Result
from blspdata.generate.engine import make_engine, run_requests
from blspdata.parallel import start_ray
from blspdata.records import Record, Reject, read_row


class _Worker:
    """A Ray Data actor: one engine, many manifest lines per call."""

    def __init__(self, job, engine_spec: dict[str, Any], done: frozenset[str], manifest: str):
        self.job, self.done, self.manifest = job, done, manifest
        self.stack = contextlib.ExitStack()
        self.engine = make_engine(self.stack, **engine_spec)
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.engine.__aenter__())

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        out: dict[str, list] = {"location": [], "record": [], "instruction": [], "result": []}

        def emit(location: str, record: Record | None, instruction: str, result: Result) -> None:
            out["location"].append(location)
            out["record"].append(orjson.dumps(record.to_dict()).decode() if record else "")
            out["instruction"].append(instruction)
            out["result"].append(orjson.dumps({k: getattr(result, k) for k in Result.__slots__}).decode())

        items = []
        for line in batch["text"]:
            if not line.strip():
                continue
            try:
                row, error = orjson.loads(line), ""
                if not isinstance(row, dict):
                    row, error = None, "not a JSON object"
            except orjson.JSONDecodeError as exc:
                row, error = None, f"not JSON ({exc})"
            location = f"{self.manifest}#malformed-{hashlib.sha1(line.encode()).hexdigest()[:12]}"
            record, bad = read_row(location, row, error)  # malformed_row or invalid_row:<field>
            if record is None:
                if location not in self.done and self.job.shard[0] == 0:
                    emit(location, None, "", Result("", reject=bad.reason, detail=bad.detail))
                continue
            if not self.job.mine(record.id) or record.id in self.done:
                continue
            location = f"{self.manifest}#{record.id}"
            request = self.job.request(record)
            if isinstance(request, Reject):
                emit(location, record, "", Result(record.id, reject=request.reason, detail=request.detail))
            else:
                items.append((request, (record, location)))

        def on_result(result: Result, context) -> None:
            record, location = context
            emit(location, record, self.job.template.instruction(record), result)

        self.loop.run_until_complete(run_requests(self.engine, iter(items), on_result))
        return out

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(self.engine.__aexit__(None, None, None))
            self.stack.close()


def run_on_ray(manifest: Path, job, done: set[str], engine_spec: dict[str, Any], sink, total: int,
               actors: int, batch_size: int = 64) -> None:
    ray = start_ray(BackendError)
    read_args = {"arrow_open_stream_args": {"compression": "gzip"}} if manifest.name.endswith(".gz") else {}
    resources = {"num_gpus": 1} if engine_spec["backend"] == "vllm" and not engine_spec.get("serve") \
        else {"num_cpus": 0.25}
    dataset = ray.data.read_text(str(manifest), **read_args).map_batches(
        _Worker, fn_constructor_kwargs={"job": job, "engine_spec": engine_spec, "done": frozenset(done),
                                        "manifest": str(manifest)},
        compute=ray.data.ActorPoolStrategy(size=actors), batch_size=batch_size, **resources)
    seen: dict[str, int] = {}
    for row in dataset.iter_rows():
        result = Result(**orjson.loads(row["result"]))
        record = Record.from_dict(orjson.loads(row["record"])) if row["record"] else None
        if record is None:
            sink.reject(result.reject, row["location"], result.detail, None)
        elif record.id in seen:  # actors cannot see each other's rows: duplicates are caught here
            seen[record.id] += 1
            sink.reject("duplicate_id", f"{row['location']}#{seen[record.id]}",
                        f"{record.id} appears more than once in the manifest", record)
        else:
            seen[record.id] = 1
            sink.result(record, row["location"], row["instruction"], result)
