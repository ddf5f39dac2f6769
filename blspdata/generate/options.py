"""Generate's options, each declared once (blspdata/options.py): a `GenerateSettings` field
whose default is the option's default and whose metadata holds its help text and bounds, and
the backends and executors, each with what it is; and `GenerateError`.

Built from them: `blspdata generate`'s flags (their defaults, help, bounds and choices), the
check of the settings `generate()` is given (`settings_of`), the `generate:` section of a
`run` config (pipeline.py) and the error that names an unknown backend. Only the options that
make no sense in both places are not fields: the task, the prompt, the shard, the API key,
--strict and --trust-remote-code (the command line's alone) and a run's per-task prompts.

This module imports nothing heavy, so `blspdata --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal, Optional

from blspdata.errors import BlspdataError
from blspdata.options import check, option


class GenerateError(BlspdataError, RuntimeError):
    """A generate option, input or setup the user must change. Declared here, the lowest module
    of generate, so that every other one (the engine too) can read the settings' defaults."""

# The generation backends, by the name --backend and a run config's generate.backend take.
BACKENDS: dict[str, str] = {
    "embedded": "llama.cpp servers with a packaged model (Qwen2.5-Coder-1.5B-Instruct) started on loopback, "
                "one per core (CPU, no setup)",
    "openai": "any OpenAI-compatible server at --base-url (vllm serve, SGLang, TGI, llama.cpp)",
    "vllm": "in-process vllm.LLM",
    "dry-run": "a fake LLM for testing plumbing only",
}
EXECUTORS: dict[str, str] = {
    "local": "this process drives one engine",
    "ray": "Ray Data actors, one engine each (local Ray, or the cluster in RAY_ADDRESS; `ray` extra)",
}
SERVERS: dict[str, str] = {
    "vllm": "start `vllm serve MODEL` on a free loopback port, generate through it, stop it",
}

Backend = Literal[tuple(BACKENDS)]  # type: ignore[valid-type]
Executor = Literal[tuple(EXECUTORS)]  # type: ignore[valid-type]
Server = Literal[tuple(SERVERS)]  # type: ignore[valid-type]


def listed(names: dict[str, str]) -> str:
    """`embedded: llama.cpp ...; openai: ...`: the choices with what each is, for a flag's help."""
    return "; ".join(f"{name}: {what}" for name, what in names.items())


@dataclass
class GenerateSettings:
    backend: Backend = option("embedded", listed(BACKENDS))
    base_url: Optional[str] = option(None, "OpenAI-compatible server, e.g. http://node:8000/v1 (implies --backend openai)")
    model: Optional[str] = option(None, "Model name (openai: as served [default: the server's first]; vllm and "
                                  "--serve: a Hugging Face id or folder; embedded: a packaged model "
                                  "[qwen2.5-coder-1.5b, the default; qwen2.5-coder-0.5b; smollm2], a .gguf file, or "
                                  "a Hub GGUF as hf:OWNER/REPO:FILE.gguf, downloaded once)")
    serve: Optional[Server] = option(None, listed(SERVERS))
    concurrency: Optional[int] = option(None, "Requests in flight [default: 64 for openai, 256 with --serve vllm, "
                                        "2 per embedded server]", ge=1)
    max_new_tokens: Optional[int] = option(None, "Override the template's (48 in the recipe)", ge=1)
    temperature: Optional[float] = option(None, "Override the template's (0 = greedy, the recipe)", ge=0)
    repetition_penalty: Optional[float] = option(None, "Override the template's (1.1, Qwen-7B-Chat's own, which the "
                                                 "recipe keeps; 1.0 = none). Sent as each engine names it: "
                                                 "repetition_penalty (vLLM), repeat_penalty (llama.cpp, over the "
                                                 "last 64 tokens only)", gt=0)
    seed: int = option(0, "Sampling seed")
    server_timeout: float = option(120.0, "Give up (non-zero exit, work kept) when the server has not answered for "
                                   "this many seconds", gt=0)
    request_timeout: float = option(300.0, "Seconds one request may take before it is a `timeout` reject (retried "
                                    "by the next run)", gt=0)
    retry_rejects: bool = option(True, "Rerunning on an OUT: generate again the rows an earlier run rejected for a "
                                 "transient reason (server_error, bad_response, timeout), taking them out of its "
                                 "rejects file. Other rejects (prompt_too_long, ...) are never retried")
    limit: Optional[int] = option(None, "Stop after this many records (done ones included)", ge=1)
    engine_args: dict[str, Any] = option({}, "KEY=VALUE for the vLLM engine (vllm backend: vllm.LLM(KEY=VALUE); "
                                         "--serve vllm: --KEY VALUE), e.g. -E tensor_parallel_size=4 "
                                         "-E max_model_len=4096; embedded: -E servers=N -E threads=T [one one-thread "
                                         "server per core for a packaged model, one server with every core for a "
                                         "--model of yours], -E prefill=true [the assistant's turn starts with the "
                                         "transcript, >= 6 new tokens: fewer echoes from a small model, but not the "
                                         "recipe's target; embedded only]; dry-run: -E jitter=SECONDS [each answer "
                                         "takes a random 0..SECONDS, so answers come back out of order]. Repeatable")
    executor: Executor = option("local", listed(EXECUTORS))
    ray_actors: int = option(2, "With --executor ray: how many actors (engines)", ge=1)


def settings_of(settings: GenerateSettings | None = None, **changes: Any) -> GenerateSettings:
    """`settings` (or the defaults) with `changes` (option name -> value; engine_args None is
    none), every option checked: a GenerateError naming the first unknown or bad one."""
    known = {f.name for f in fields(GenerateSettings)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise GenerateError(f"unknown generate option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if changes.get("engine_args", {}) is None:
        changes["engine_args"] = {}
    return check(replace(settings or GenerateSettings(), **changes), GenerateError)
