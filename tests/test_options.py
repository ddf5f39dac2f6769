"""Curate's options are declared once (FilterSettings' and DedupSettings' fields): each one is
settable from a `run` config, a `curate --config` TOML file and a flag, under the same name
and with the same default, and the old names still read."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import pytest
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from blspdata import pipeline
from blspdata.cli import app
from blspdata.curate import run as curate_run
from blspdata.curate.filters import FilterSettings
from blspdata.curate.options import DedupSettings, options, shown
from blspdata.curate.run import KEYS, LISTS, settings_from
from blspdata.pipeline import ConfigError, Curate, load_config

OPTIONS = options(FilterSettings, DedupSettings)


def other_value(name: str):
    """A valid value of the option that is not its default."""
    f, kind = OPTIONS[name]
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

    def fake_curate(inputs, out, *, filters, dedup, progress=True):
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
