"""Prompt templates, kept as data in `prompts/*.toml` (shipped as `blspdata.prompts`).

A template names its task, a system prompt, a user template with `{text}` (and `{emotion}`
for the emotion task) and generation defaults:

    task = "emotion"
    system = "You are a helpful assistant. ..."
    user = "Continue the following sentence that reflects a '{emotion}' emotion tone in a coherent style: {text}"
    [generation]
    max_new_tokens = 48

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

from blspdata.records import Record

TASKS = ("semantic", "emotion")
FIELDS = {"text", "emotion"}  # what a user template may refer to


class PromptError(ValueError):
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
    return Template(
        id=template_id, task=spec["task"], system=spec["system"], user=spec["user"],
        sha256=hashlib.sha256(data).hexdigest()[:16], description=spec.get("description", ""),
        generation=dict(spec.get("generation", {})),
    )
