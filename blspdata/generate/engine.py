"""The engine both executors drive: `make_engine` builds the one the options describe (starting
the servers it needs), `run_requests` answers requests with it. The local executor (`run.py`)
and the Ray actors (`ray_executor.py`) both import them from here, so neither imports the other.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Callable, Iterator

from blspdata.generate.backends import DryRunBackend, OpenAIBackend, Request, Result, VLLMBackend
from blspdata.generate.options import GenerateError, GenerateSettings


def make_engine(stack: contextlib.ExitStack, backend: str, base_url: str | None = None, model: str | None = None,
                api_key: str | None = None, serve: str | None = None, concurrency: int | None = None,
                server_timeout: float = GenerateSettings.server_timeout, seed: int = 0,
                engine_args: dict[str, Any] | None = None,
                request_timeout: float = GenerateSettings.request_timeout):
    """The engine the options describe; servers it needs are started on `stack`. The timeouts'
    defaults are the options' (GenerateSettings), declared once."""
    if serve is not None:
        from blspdata.generate.servers import vllm_server

        if serve != "vllm":
            raise GenerateError(f"--serve supports vllm, not {serve!r}")
        if not model:
            raise GenerateError("--serve vllm needs --model (a Hugging Face id or a local folder)")
        extra = [f"--{key.replace('_', '-')}" if value is True else f"--{key.replace('_', '-')}={value}"
                 for key, value in (engine_args or {}).items()]
        server = stack.enter_context(vllm_server(model, extra_args=extra, seed=seed))
        return OpenAIBackend(server.base_url, model=model, concurrency=concurrency or 256,
                             server_timeout=server_timeout, request_timeout=request_timeout, engine="vllm",
                             ended=server.ended)
    if backend == "dry-run":
        unknown = set(engine_args or {}) - {"jitter"}
        if unknown:
            raise GenerateError(f"the dry-run backend takes -E jitter=SECONDS only, not {', '.join(sorted(unknown))}")
        try:
            jitter = float((engine_args or {}).get("jitter", 0.0))
        except (TypeError, ValueError):
            raise GenerateError(f"-E jitter takes seconds, not {str(engine_args['jitter'])[:80]!r}") from None
        return DryRunBackend(concurrency=concurrency or 8, jitter=jitter)
    if backend == "vllm":
        if not model:
            raise GenerateError("--backend vllm needs --model")
        return VLLMBackend(model, seed=seed, engine_args=engine_args or {})
    if backend == "openai" or base_url:
        if not base_url:
            raise GenerateError("--backend openai needs --base-url (e.g. http://localhost:8000/v1)")
        return OpenAIBackend(base_url, model=model, api_key=api_key, concurrency=concurrency or 64,
                             server_timeout=server_timeout, request_timeout=request_timeout)
    return _embedded(stack, model, concurrency, server_timeout, engine_args or {}, request_timeout)


def _embedded(stack: contextlib.ExitStack, model: str | None, concurrency: int | None, server_timeout: float,
              engine_args: dict[str, Any], request_timeout: float = GenerateSettings.request_timeout):
    """llama.cpp servers on loopback: by default, for a packaged model, one per core with
    one thread each (N one-thread servers give about N times one N-thread server on a CPU);
    for a model of your own, one server with every core. -E servers=N -E threads=T override;
    -E prefill=true pre-fills the assistant's turn with the transcript (prefill_option)."""
    from blspdata.generate.backends import PooledBackend
    from blspdata.generate.models import chat_renderer, is_packaged, resolve
    from blspdata.generate.servers import embedded_llama

    unknown = set(engine_args) - {"servers", "threads", "prefill"}
    if unknown:
        raise GenerateError(f"the embedded backend takes -E servers=N, -E threads=N and -E prefill=true, not "
                            f"{', '.join(sorted(unknown))}")
    from blspdata.parallel import cores

    available = cores()
    servers = max(1, int(engine_args.get("servers") or (available if is_packaged(model) else 1)))
    threads = max(1, int(engine_args.get("threads") or available // servers))
    path = str(resolve(model))  # found, fetched or assembled once for all the servers
    render = chat_renderer(path) if engine_args.get("prefill") is True else None
    started = []
    for _ in range(servers):
        server = embedded_llama(path, threads=threads)
        server.launch()
        stack.callback(server.stop)
        started.append(server)
    for server in started:
        server.wait_ready()
    # One request computing and one waiting per server hides the HTTP round trip. The template's
    # repetition penalty goes as llama.cpp's `repeat_penalty` (backends.sampling_fields).
    per_server = max(1, (concurrency or 2 * servers) // servers)
    members = [OpenAIBackend(s.base_url, concurrency=per_server, server_timeout=server_timeout, engine="llama.cpp",
                             render=render, request_timeout=request_timeout, ended=s.ended) for s in started]
    return members[0] if len(members) == 1 else PooledBackend(members)


async def run_requests(engine, items: Iterator[tuple[Request, Any]], on_result: Callable[[Result, Any], None],
                       on_flight: Callable[[int], None] = lambda n: None) -> None:
    """Answer `(request, context)` pairs with `engine`: batches for an offline engine, else
    up to `engine.concurrency` requests in flight; each result goes to `on_result` as it comes."""
    if hasattr(engine, "complete_batch"):
        batch: list[tuple[Request, Any]] = []

        async def flush() -> None:
            results = {r.id: r for r in await engine.complete_batch([request for request, _ in batch])}
            for request, context in batch:
                on_result(results[request.id], context)
            batch.clear()

        for item in items:
            batch.append(item)
            if len(batch) >= engine.batch_size:
                await flush()
        if batch:
            await flush()
        return

    pending: dict[asyncio.Task, Any] = {}

    async def collect() -> None:
        finished, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in finished:
            on_result(task.result(), pending.pop(task))
        on_flight(len(pending))

    try:
        for request, context in items:
            while len(pending) >= engine.concurrency:
                await collect()
            pending[asyncio.create_task(engine.complete(request))] = context
            on_flight(len(pending))
        while pending:
            await collect()
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
