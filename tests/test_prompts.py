"""Prompt templates: the recipe's exact text, user templates, and what goes into `generator`."""

from __future__ import annotations

from pathlib import Path

import pytest

from blspdata.generate import prompts
from blspdata.records import Record


def record(**changes) -> Record:
    return Record(id="c/train/1", corpus="c", split="train", audio="a.wav", text="i was just leaving", **changes)


def test_builtin_templates_render_the_papers_prompts():
    assert prompts.builtin_names() == ["emotion", "semantic", "semantic-blsp"]
    assert prompts.load("semantic").render(record()) == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Continue the following sentence in a coherent style: i was just leaving"},
    ]
    emotion = prompts.load("emotion")
    assert emotion.render(record(emotion="sad")) == [
        {"role": "system", "content": "You are a helpful assistant. Your response should fulfill requests with "
                                      "empathy toward user's emotion tone."},
        {"role": "user", "content": "Continue the following sentence that reflects a 'sad' emotion tone in a "
                                    "coherent style: i was just leaving"},
    ]
    # Greedy, 48 max / 1 min new tokens, and the repetition penalty Qwen-7B-Chat's own
    # generation_config keeps on in the reference (which overrides only the other four).
    assert emotion.generation == {"max_new_tokens": 48, "min_new_tokens": 1, "temperature": 0.0,
                                  "repetition_penalty": 1.1}
    assert prompts.load("semantic").generation["repetition_penalty"] == 1.1
    assert prompts.DEFAULT_GENERATION["repetition_penalty"] == 1.1  # for templates that do not say
    assert prompts.DEFAULT_GENERATION["stop"] == ["<|im_end|>", "<|endoftext|>"]
    blsp = prompts.load("semantic-blsp")
    assert blsp.instruction(record()) == ("Continue the following text in a coherent and engaging style with less "
                                          "than 40 words. i was just leaving")
    assert blsp.generation["max_new_tokens"] == 64 and blsp.generation["max_prompt_tokens"] == 192


def test_a_user_template_file_and_its_hash(tmp_path: Path):
    path = tmp_path / "terse.toml"
    path.write_text('task = "semantic"\nsystem = "Be brief."\nuser = "Go on: {text}"\n')
    first = prompts.load(path)
    assert first.id == "terse" and first.instruction(record()) == "Go on: i was just leaving"
    path.write_text('task = "semantic"\nsystem = "Be very brief."\nuser = "Go on: {text}"\n')
    assert prompts.load(path).sha256 != first.sha256  # every row says which text made it


@pytest.mark.parametrize("body, message", [
    ('task = "semantic"\nsystem = "x"\n', "lacks user"),
    ('task = "summary"\nsystem = "x"\nuser = "{text}"\n', "task must be one of"),
    ('task = "semantic"\nsystem = "x"\nuser = "Continue: {transcript}"\n', "must use {text}"),
    ('task = "emotion"\nsystem = "x"\nuser = "Continue: {text}"\n', "must use {emotion}"),
    ('task = "semantic\n', "not a valid TOML"),
    ('task = "semantic"\nsystem = "x"\nuser = "{text}"\n[generation]\nrepetiton_penalty = 1.1\n',
     "unknown key 'repetiton_penalty'"),
    ('task = "semantic"\nsystem = "x"\nuser = "{text}"\n[generation]\nrepetition_penalty = 0\n',
     "not a valid positive number"),
    ('task = "semantic"\nsystem = "x"\nuser = "{text}"\n[generation]\nstop = "<|im_end|>"\n',
     "not a valid list of strings"),
])
def test_bad_templates_are_refused_with_a_reason(tmp_path: Path, body: str, message: str):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(prompts.PromptError, match=message):
        prompts.load(path)


def test_unknown_name_lists_the_builtins():
    with pytest.raises(prompts.PromptError, match="semantic-blsp"):
        prompts.load("poetry")
