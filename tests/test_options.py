"""Each stage's options are declared once, as its settings dataclass's fields (curate:
FilterSettings and DedupSettings; generate: GenerateSettings; publish: PublishSettings): each
one is settable from a `run` config and a flag (curate's from a `curate --config` TOML file
too), under the same name and with the same default, and the old names still read. The
generation backends are listed once."""

from __future__ import annotations

import types
import typing
from dataclasses import fields, replace
from pathlib import Path

import pytest
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from blspdata import pipeline
from blspdata import publish as publish_module
from blspdata.cli import app
from blspdata.curate import run as curate_run
from blspdata.curate.filters import FilterSettings
from blspdata.curate.options import DedupSettings, options, shown
from blspdata.curate.run import KEYS, LISTS, settings_from
from blspdata.generate import run as generate_run
from blspdata.generate.engine import GenerateError
from blspdata.generate.options import BACKENDS, GenerateSettings
from blspdata.options import choices, default_of
from blspdata.publish_options import PublishSettings
from blspdata.pipeline import ConfigError, Curate, load_config

OPTIONS = options(FilterSettings, DedupSettings)


def other_value(name: str):
    """A valid value of the option that is not its default."""
    f, kind = OPTIONS[name]
    if choices(kind):  # curate's executor
        return next(value for value in choices(kind) if value != f.default)
    if kind is bool:
        return not f.default
    if kind is int:
        return f.default + 1
    return round((f.default + f.metadata["le"]) / 2, 3)


def expected_settings(changed: dict) -> tuple[FilterSettings, DedupSettings]:
    filters, dedup = FilterSettings(), DedupSettings()
    return (replace(filters, **{k: v for k, v in changed.items() if hasattr(filters, k)}),
            replace(dedup, **{k: v for k, v in changed.items() if hasattr(dedup, k)}))


@pytest.fixture
def captured(monkeypatch) -> list[tuple[FilterSettings, DedupSettings]]:
    """The settings `curate` is called with, from the CLI or a run (which then write nothing)."""
    calls = []

    class Stats:
        def render(self) -> str:
            return "0 of 0 kept"

        def to_dict(self) -> dict:
            return {"input": 0, "kept": 0, "rejected": 0, "rejects": {}}

    def fake_curate(inputs, out, *, filters, dedup, strict=False, progress=True):
        calls.append((filters, dedup))
        return Stats()

    monkeypatch.setattr(curate_run, "curate", fake_curate)
    return calls


def run_config(tmp_path: Path, curate: dict) -> pipeline.Config:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"run_dir": "run", "corpora": [{"kind": "iemocap", "root": "corpus"}],
                                    "curate": curate}))
    return load_config(path)


def curate_from_run(config: pipeline.Config, tmp_path: Path) -> None:
    """The curate step of `blspdata run` with this config (pipeline._curate, as plan() makes it)."""
    pipeline._curate(config, [], tmp_path / "curated.jsonl.gz", progress=False)(False)


def curate_flags(*args: str) -> None:
    result = CliRunner().invoke(app, ["curate", "gen.jsonl", "-o", "out.jsonl", "--no-progress", *args])
    assert result.exit_code == 0, result.output


def test_every_option_is_settable_from_a_run_config_and_from_the_flags(tmp_path: Path, captured):
    changed = {name: other_value(name) for name in OPTIONS}
    curate_from_run(run_config(tmp_path, changed), tmp_path)
    flags = []
    for name, value in changed.items():
        flag = "--" + name.replace("_", "-")
        flags += [flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
    curate_flags(*flags)
    assert captured == [expected_settings(changed)] * 2


def test_every_option_has_the_same_default_in_a_run_config_and_on_the_command_line(tmp_path: Path, captured):
    curate_from_run(run_config(tmp_path, {}), tmp_path)
    curate_flags()
    assert captured == [(FilterSettings(), DedupSettings())] * 2
    params = {param.name: param for param in get_command(app).commands["curate"].params}
    for name, (f, _) in OPTIONS.items():
        flag = params[name]  # a flag named as the option
        assert flag.default is None and "--" + name.replace("_", "-") in flag.opts
        assert flag.help.endswith(f"[{shown(f.default)}].") and f.metadata["help"] in flag.help
        assert Curate.model_fields[name].description == f.metadata["help"]


def test_a_run_config_and_a_toml_file_read_the_same_keys(tmp_path: Path):
    yaml_keys = set(Curate.model_fields) | {alias for f, _ in OPTIONS.values() for alias in f.metadata["aliases"]}
    assert yaml_keys == set(KEYS) | set(LISTS)
    every_field = {f.name for cls in (FilterSettings, DedupSettings) for f in fields(cls)}
    assert every_field - {"enabled"} == set(OPTIONS)  # enabled: through enable, disable, drop_unfinished


def test_the_old_dedup_names_still_read(tmp_path: Path):
    old = run_config(tmp_path, {"exact": False, "near": False, "threshold": 0.5})
    new = run_config(tmp_path, {"exact_dedup": False, "near_dedup": False, "near_dup_threshold": 0.5})
    assert old.curate.model_dump() == new.curate.model_dump()  # one fingerprint too
    toml = tmp_path / "curate.toml"
    toml.write_text("exact = false\nthreshold = 0.5\n")
    assert settings_from(toml, {})[1] == DedupSettings(exact_dedup=False, near_dup_threshold=0.5)
    with pytest.raises(ConfigError, match="exact_dedup is given twice, as exact and as exact_dedup"):
        run_config(tmp_path, {"exact": False, "exact_dedup": True})


@pytest.mark.parametrize("curate, message", [
    ({"min_word": 3}, "curate.min_word: unknown key (a typo?)"),
    ({"dup_ngram_size": 0}, "curate: dup_ngram_size must be >= 1, got 0"),
    ({"min_language_confidence": 1.5}, "curate: min_language_confidence must be between 0 and 1, got 1.5"),
    ({"near_dedup": "no"}, "curate: near_dedup must be true or false, got 'no'"),
    ({"disable": ["echoo"]}, "curate: unknown filter(s) echoo"),
])
def test_a_bad_curate_section_is_a_config_error_naming_the_key(tmp_path: Path, curate: dict, message: str):
    with pytest.raises(ConfigError) as error:
        run_config(tmp_path, curate)
    assert message in str(error.value)


# ---------------------------------------------------------------------------- generate and publish

GENERATE = options(GenerateSettings)
PUBLISH = options(PublishSettings)


def another(name: str, f, kind):
    """A valid value of a generate or publish option that is not its default."""
    default = default_of(f)
    allowed = choices(kind)
    if allowed:
        return next(value for value in allowed if value != default)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # Optional[X]
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    base = typing.get_origin(kind) or kind
    if base is bool:
        return not default
    if base is int:
        return (default or 1) + 2
    if base is float:
        return round(min((default or 0.25) * 2, f.metadata["le"] or 1e9), 3)
    if base is dict:
        return {"jitter": 0.5}
    return f"{name}-value"


def as_flags(changed: dict) -> list[str]:
    flags = []
    for name, value in changed.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            flags += [item for key, v in value.items() for item in ("-E", f"{key}={v}")]
        else:
            flags += [flag, str(value)]
    return flags


def section_config(tmp_path: Path, **sections) -> pipeline.Config:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"run_dir": "run", "corpora": [{"kind": "iemocap", "root": "corpus"}], **sections}))
    return load_config(path)


@pytest.fixture
def generated(monkeypatch) -> list[GenerateSettings]:
    """The settings `generate` is called with, from the CLI or a run (which then generate nothing)."""
    calls = []

    class Summary:
        def render(self) -> str:
            return "nothing"

        def to_dict(self) -> dict:
            return {}

    def fake_generate(manifest, out, *, task="semantic", prompt=None, settings=None, **rest):
        calls.append(settings)
        return Summary()

    monkeypatch.setattr(generate_run, "generate", fake_generate)
    return calls


@pytest.fixture
def published(monkeypatch) -> list[dict]:
    """What `publish` and `push_to_hub` are called with (the options only), from the CLI or a run."""
    calls = []

    def fake_publish(inputs, out, **given):
        calls.append({k: v for k, v in given.items() if k not in ("jobs", "overwrite", "progress", "audio_root", "strict")})
        return {"rows": {}, "rejected": {}, "summary": "  rejected 0"}

    def fake_push(directory, repo_id, private=False, dry_run=False):
        calls[-1].update(push_to_hub=repo_id, private=private)
        return []

    monkeypatch.setattr(publish_module, "publish", fake_publish)
    monkeypatch.setattr(publish_module, "push_to_hub", fake_push)
    monkeypatch.setattr(publish_module, "verify", lambda directory, sample=8: [])
    return calls


def generate_from_run(config: pipeline.Config, tmp_path: Path) -> None:
    pipeline._generate(config, "emotion", None, tmp_path / "m.jsonl.gz", tmp_path / "out.jsonl", False)(True)


def publish_from_run(config: pipeline.Config, tmp_path: Path) -> None:
    pipeline._publish(config, tmp_path / "curated.jsonl.gz", tmp_path / "dataset", False)(False)


def invoke(*args: str) -> None:
    result = CliRunner().invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output


def test_every_generate_option_is_settable_from_a_run_config_and_from_the_flags(tmp_path: Path, generated):
    changed = {name: another(name, f, kind) for name, (f, kind) in GENERATE.items()}
    generate_from_run(section_config(tmp_path, generate=changed), tmp_path)
    invoke("generate", str(tmp_path / "m.jsonl"), "-o", str(tmp_path / "out.jsonl"), *as_flags(changed))
    assert generated == [GenerateSettings(**changed)] * 2


def test_every_publish_option_is_settable_from_a_run_config_and_from_the_flags(tmp_path: Path, published):
    changed = {name: another(name, f, kind) for name, (f, kind) in PUBLISH.items()}
    publish_from_run(section_config(tmp_path, publish=changed), tmp_path)
    invoke("publish", str(tmp_path / "curated.jsonl"), "-o", str(tmp_path / "dataset"), *as_flags(changed))
    expected = {**PublishSettings(**changed).publish_args(), "push_to_hub": changed["push_to_hub"], "private": True}
    assert published == [expected] * 2


def test_generate_and_publish_options_have_the_same_defaults_in_a_run_config_and_on_the_command_line(
        tmp_path: Path, generated, published):
    config = section_config(tmp_path)
    generate_from_run(config, tmp_path)
    invoke("generate", str(tmp_path / "m.jsonl"), "-o", str(tmp_path / "out.jsonl"))
    assert generated == [GenerateSettings()] * 2
    publish_from_run(config, tmp_path)
    invoke("publish", str(tmp_path / "curated.jsonl"), "-o", str(tmp_path / "dataset"))
    assert published == [PublishSettings().publish_args()] * 2
    for command, declared, section in (("generate", GENERATE, pipeline.Generate), ("publish", PUBLISH, pipeline.Publish)):
        params = {param.name: param for param in get_command(app).commands[command].params}
        for name, (f, _) in declared.items():
            flag = params[name]  # a flag named as the option
            assert flag.default == (default_of(f) if name != "engine_args" else [])
            assert f.metadata["help"] in flag.help
            field = section.model_fields[name]
            assert field.get_default(call_default_factory=True) == default_of(f)
            assert field.description == f.metadata["help"]
        assert set(section.model_fields) - {"prompts"} == set(declared)  # prompts: per task, a run's own


def test_the_backends_are_listed_once(tmp_path: Path):
    shown_help = CliRunner().invoke(app, ["generate", "--help"]).output
    assert "--backend <" + "|".join(BACKENDS) + ">" in shown_help
    result = CliRunner().invoke(app, ["generate", "m.jsonl", "-o", "out.jsonl", "--backend", "vlm"])
    assert result.exit_code == 2 and all(repr(name) in result.output for name in BACKENDS), result.output
    with pytest.raises(ConfigError) as error:
        section_config(tmp_path, generate={"backend": "vlm"})
    assert "generate.backend" in str(error.value) and all(repr(name) in str(error.value) for name in BACKENDS)
    with pytest.raises(GenerateError, match="backend must be one of " + ", ".join(BACKENDS) + ", got 'vlm'"):
        generate_run.generate(tmp_path / "m.jsonl", tmp_path / "out.jsonl", backend="vlm")


@pytest.mark.parametrize("sections, message", [
    ({"generate": {"temprature": 0.5}}, "generate.temprature: unknown key (a typo?)"),
    ({"generate": {"concurrency": 0}}, "generate.concurrency: Input should be greater than or equal to 1"),
    ({"generate": {"serve": "sglang"}}, "generate.serve: Input should be 'vllm'"),
    ({"publish": {"fmt": "parquet"}}, "publish.fmt: unknown key (a typo?)"),
    ({"publish": {"test_fraction": 1.5}}, "publish.test_fraction: Input should be less than or equal to 1"),
])
def test_a_bad_generate_or_publish_key_is_a_config_error_naming_it(tmp_path: Path, sections: dict, message: str):
    with pytest.raises(ConfigError) as error:
        section_config(tmp_path, **sections)
    assert message in str(error.value)


def test_generate_in_python_refuses_an_unknown_or_bad_option_by_name(tmp_path: Path):
    with pytest.raises(GenerateError, match=r"unknown generate option\(s\) temprature; known: backend, "):
        generate_run.generate(tmp_path / "m.jsonl", tmp_path / "out.jsonl", temprature=0.5)
    with pytest.raises(GenerateError, match="request_timeout must be > 0, got 0"):
        generate_run.generate(tmp_path / "m.jsonl", tmp_path / "out.jsonl", request_timeout=0)
    result = CliRunner().invoke(app, ["generate", "m.jsonl", "-o", "out.jsonl", "--ray-actors", "0"])
    assert result.exit_code == 2 and "--ray-actors" in result.output and "must be >= 1, got 0" in result.output
