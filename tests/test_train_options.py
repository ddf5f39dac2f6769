"""The trainer's options are declared once (TrainConfig's and ModelConfig's fields): each has a
`blspdata train` flag of the same name whose help shows that stage's default, and the command
and a notebook's `blspdata.train.run.train(...)` build the same configs (folder choice, bases
inherited from --init, eval_split none)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from blspdata.cli import app
from blspdata.train import loop
from blspdata.train import run as train_run
from blspdata.train.config import ModelConfig, TrainConfig, TrainError
from blspdata.train.run import MODEL_OPTIONS, TRAIN_OPTIONS


@pytest.fixture
def captured(monkeypatch) -> list:
    """The configs the loop is called with (it then trains nothing)."""
    calls = []

    def fake_loop(cfg, model, resume=False, progress=True):
        calls.append((cfg, model, resume))
        return {"steps": 0, "skipped": {}}

    monkeypatch.setattr(loop, "train", fake_loop)
    return calls


def stage1_checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "stage1" / "final"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": {"encoder": "enc-of-stage1", "llm": "llm-of-stage1",
                                                              "llm_gguf": "m.gguf"}, "train": {}}))
    return folder


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_every_option_has_a_flag_showing_the_stages_default(stage):
    command = get_command(app).commands["train"].commands[stage]
    flags = {p.name: p for p in command.params}
    defaults = TrainConfig.for_stage(stage)
    for name in TRAIN_OPTIONS + MODEL_OPTIONS:
        assert name in flags, f"no --{name.replace('_', '-')} flag"
        assert flags[name].default is None  # not given: the config's default
        value = getattr(defaults, name) if name in TRAIN_OPTIONS else ModelConfig.__dataclass_fields__[name].default
        if value is not None:
            shown = ("on" if value else "off") if isinstance(value, bool) else str(value)
            assert flags[name].help.endswith(f"[{shown}]."), (name, flags[name].help)
    assert ("[2e-05]" if stage == "stage2" else "[0.0001]") in flags["lr"].help


def test_the_command_and_the_python_call_build_the_same_configs(tmp_path, captured):
    dataset = tmp_path / "dataset"
    (dataset / "emotion").mkdir(parents=True)
    init = stage1_checkpoint(tmp_path)
    result = CliRunner().invoke(app, ["train", "stage2", str(dataset), "-o", str(tmp_path / "out"), "--init", str(init),
                                      "--lr", "3e-5", "--eval-split", "none", "--lora-r", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    train_run.train("stage2", dataset, tmp_path / "out", init=init, lr=3e-5, eval_split="none", lora_r=4,
                    progress=False)
    (cli_cfg, cli_model, _), (py_cfg, py_model, _) = captured
    assert cli_cfg == py_cfg and cli_model == py_model
    assert py_cfg.data == str(dataset / "emotion")  # the stage's config of a whole dataset
    assert (py_cfg.lr, py_cfg.eval_split, py_cfg.warmup_steps) == (3e-5, "", 200)  # given; none = off; stage 2's
    assert (py_model.encoder, py_model.llm, py_model.llm_gguf, py_model.lora_r) == \
        ("enc-of-stage1", "llm-of-stage1", "m.gguf", 4)  # the bases of stage 1


def test_a_bad_option_or_missing_bases_are_one_line_before_any_model_loads(tmp_path, captured):
    result = CliRunner().invoke(app, ["train", "stage1", str(tmp_path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "--encoder and --llm are required" in result.output
    result = CliRunner().invoke(app, ["train", "stage1", str(tmp_path), "-o", str(tmp_path / "out"),
                                      "--encoder", "e", "--llm", "l", "--schedule", "steep"])
    assert result.exit_code == 1 and "schedule 'steep': expected one of" in result.output
    with pytest.raises(TrainError, match="unknown trainer option"):
        train_run.train("stage1", tmp_path, tmp_path / "out", encoder="e", llm="l", learning_rate=1.0)
    assert captured == []
