"""Prompt templates, kept as data in `prompts/*.toml` (shipped as `blspdata.prompts`).

A template names its task, a system prompt, a user template with `{text}` (and `{emotion}`
for the emotion task) and generation defaults:

    task = "emotion"
    system = "You are a helpful assistant. ..."
    user = "Continue the following sentence that reflects a '{emotion}' emotion tone in a coherent style: {text}"
    [generation]
    max_new_tokens = 48
    repetition_penalty = 1.1

`[generation]` may set the keys of `DEFAULT_GENERATION`; the rest come from there.
`--prompt NAME` picks `prompts/NAME.toml`, `--prompt FILE` any file. A template's id and the
hash of its file go into every generated row's `generator`, so each row says how it was made.
"""

from __future__ import annotations

import hashlib
import string
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from blspdata.errors import BlspdataError
from blspdata.records import Record

TASKS = ("semantic", "emotion")
FIELDS = {"text", "emotion"}  # what a user template may refer to

# Decoding as the reference does (emotion_text_generation.py): GenerationConfig.from_pretrained
# (the LLM's own), updated only with do_sample False, num_beams 1, max_new_tokens 48 and
# min_new_tokens 1. What Qwen-7B-Chat's own config leaves on is repetition_penalty 1.1:
# https://huggingface.co/Qwen/Qwen-7B-Chat/blob/main/generation_config.json (`"chat_format":
# "chatml", ..., "top_p": 0.8, "repetition_penalty": 1.1`, as its GenerationConfig loads; the first
# revisions of 2023-08, e.g. blob/cbf815e0, had no penalty). 1.0 (none) is the option.
# `stop`: ChatML's end of turn and Qwen's end of text (the reference stops at <|im_end|>;
# Qwen-7B-Chat has no eos_token). A ChatML model's own end token alone runs past <|im_end|>.
CHATML_STOPS = ("<|im_end|>", "<|endoftext|>")
RECIPE_REPETITION_PENALTY = 1.1
DEFAULT_GENERATION: dict[str, Any] = {"max_new_tokens": 48, "min_new_tokens": 1, "temperature": 0.0,
                                      "repetition_penalty": RECIPE_REPETITION_PENALTY,
                                      "stop": list(CHATML_STOPS)}
_GENERATION_KEYS = {**{key: type(value) for key, value in DEFAULT_GENERATION.items()}, "max_prompt_tokens": int}


class PromptError(BlspdataError, ValueError):
    pass


@dataclass(frozen=True)
class Template:
    id: str
    task: str
    system: str
    user: str
    sha256: str
    description: str = ""
    generation: dict[str, Any] = field(default_factory=dict)
    speech_user: str = ""  # emotion: the trainer's speech-path user turn (no label), `{text}` where the speech goes
    ser_user: str = ""     # emotion: `evaluate ser`'s question, `{text}` where the speech goes

    def render(self, record: Record) -> list[dict[str, str]]:
        """Chat messages for `record`: system turn, then the instruction with the transcript."""
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.instruction(record)}]

    def instruction(self, record: Record) -> str:
        return self.user.format(text=record.text, emotion=record.emotion)

    def describe(self) -> dict[str, Any]:
        """What goes into `generator.prompt` of each row."""
        return {"id": self.id, "sha256": self.sha256}


def builtin_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("blspdata.prompts").iterdir() if p.name.endswith(".toml"))


def load(name_or_path: str | Path) -> Template:
    """Load a template by built-in name (`semantic`) or from a file path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise PromptError(f"prompt template not found: {path}")
        data, template_id = path.read_bytes(), path.stem
    else:
        resource = resources.files("blspdata.prompts") / f"{name_or_path}.toml"
        if not resource.is_file():
            raise PromptError(f"unknown prompt {name_or_path!r}; built-in: {', '.join(builtin_names())}, or give a .toml file")
        data, template_id = resource.read_bytes(), str(name_or_path)
    return parse(data, template_id, str(name_or_path))


def parse(data: bytes, template_id: str, where: str = "<template>") -> Template:
    try:
        spec = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PromptError(f"{where}: not a valid TOML template: {exc}") from None
    missing = [key for key in ("task", "system", "user") if not isinstance(spec.get(key), str)]
    if missing:
        raise PromptError(f"{where}: template lacks {', '.join(missing)}")
    if spec["task"] not in TASKS:
        raise PromptError(f"{where}: task must be one of {', '.join(TASKS)}, got {spec['task']!r}")
    used = {name for _, name, _, _ in string.Formatter().parse(spec["user"]) if name}
    if used - FIELDS or "text" not in used:
        raise PromptError(f"{where}: the user template must use {{text}} and may use {{emotion}}; found {sorted(used)}")
    if spec["task"] == "emotion" and "emotion" not in used:
        raise PromptError(f"{where}: an emotion template must use {{emotion}}")
    _check_generation(spec.get("generation", {}), where)
    return Template(
        id=template_id, task=spec["task"], system=spec["system"], user=spec["user"],
        sha256=hashlib.sha256(data).hexdigest()[:16], description=spec.get("description", ""),
        generation=dict(spec.get("generation", {})), speech_user=spec.get("speech_user", ""),
        ser_user=spec.get("ser_user", ""),
    )


def _check_generation(generation: Any, where: str) -> None:
    """[generation] holds only known keys of the right type (a typo would be ignored silently)."""
    if not isinstance(generation, dict):
        raise PromptError(f"{where}: [generation] must be a table")
    for key, value in generation.items():
        kind = _GENERATION_KEYS.get(key)
        if kind is None:
            raise PromptError(f"{where}: [generation] has unknown key {key!r}; known: {', '.join(sorted(_GENERATION_KEYS))}")
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        else:
            ok = isinstance(value, list) and all(isinstance(item, str) and item for item in value)
        if key == "repetition_penalty" and ok:
            ok = value > 0
        if not ok:
            raise PromptError(f"{where}: [generation] {key} = {value!r} is not a valid "
                              + ("list of strings" if kind is list else "positive number" if key == "repetition_penalty"
                                 else "number"))
