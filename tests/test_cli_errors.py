"""Bad input to `run`, `report`, `train` and `chat` is one line on stderr and exit 1 (or, for
the report, a note on the page), never a traceback; a real bug still shows its traceback."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import REPO, blspdata, write_audio
from typer.testing import CliRunner

from blspdata.cli import app
from blspdata.errors import BlspdataError


def one_line_error(result) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    return result.stderr


def test_a_config_that_is_not_utf8_names_the_file_and_the_byte(tmp_path: Path):
    config = tmp_path / "run.yaml"
    text = b"run_dir: run\ncorpora:\n  - kind: jsonl\n    root: caf\xe9.jsonl\n"  # saved as Latin-1
    config.write_bytes(text)
    stderr = one_line_error(blspdata("run", config, "--plan", check=False, cwd=tmp_path))
    assert str(config) in stderr and "not UTF-8" in stderr and f"byte offset {text.index(0xE9)}" in stderr
    assert not (tmp_path / "run").exists()


def test_a_huge_value_is_not_echoed_whole(tmp_path: Path):
    config = tmp_path / "run.yaml"
    huge = "x" * 5_000_000
    config.write_text(yaml.safe_dump({"run_dir": "run", "corpora": [{"kind": "jsonl", "root": "a.jsonl"}],
                                      "generate": {"seed": huge}}))
    stderr = one_line_error(blspdata("run", config, "--plan", check=False, cwd=tmp_path))
    assert "generate.seed" in stderr and "xxxx..." in stderr and "5,000,002 characters" in stderr
    assert len(stderr) < 2000


def test_report_on_json_that_is_not_an_object_leaves_that_part_out_with_a_note(tmp_path: Path):
    run = tmp_path / "run"
    (run / "continuations").mkdir(parents=True)
    (run / "evaluate").mkdir()
    (run / "run.json").write_text("[1, 2, 3]")
    (run / "continuations" / "meld.emotion.jsonl").write_text("")
    (run / "continuations" / "meld.emotion.summary.json").write_text('["written", 3]')
    (run / "evaluate" / "ser.json").write_text('"0.9"')
    result = blspdata("report", run, check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    page = (run / "report.html").read_text()
    assert "run.json is not a readable JSON object" in page and "stage status unknown" in page
    assert "Left out, not a readable JSON object: meld.emotion.summary.json" in page
    assert "evaluate/ser.json is not a readable JSON object" in page


def test_report_on_a_run_json_whose_stages_are_a_list(tmp_path: Path):
    (tmp_path / "run.json").write_text(json.dumps({"stages": ["ingest", "generate"]}))
    result = blspdata("report", tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert "run.json records no stages" in (tmp_path / "report.html").read_text()


def test_run_on_a_run_json_that_is_a_list_is_one_line(tmp_path: Path):
    corpus = tmp_path / "a.jsonl"
    write_audio(tmp_path / "a.wav", 0.5)
    corpus.write_text(json.dumps({"audio": "a.wav", "text": "hello there"}) + "\n")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"run_dir": "run", "corpora": [{"kind": "jsonl", "root": "a.jsonl",
                                                                      "task": "semantic"}]}))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("[]")
    stderr = one_line_error(blspdata("run", config, check=False, cwd=tmp_path))
    assert str(tmp_path / "run" / "run.json") in stderr and "not a run record" in stderr


def test_train_init_that_is_missing_or_not_a_checkpoint(tmp_path: Path):
    missing = tmp_path / "nowhere"
    stderr = one_line_error(blspdata("train", "stage2", tmp_path, "-o", tmp_path / "out", "--init", missing,
                                     check=False))
    assert f"{missing}: no such checkpoint folder" in stderr
    stderr = one_line_error(blspdata("train", "stage2", tmp_path, "-o", tmp_path / "out", "--init", tmp_path,
                                     "--encoder", "e", "--llm", "l", check=False))
    assert f"{tmp_path}: not a checkpoint folder (no config.json)" in stderr
    assert not (tmp_path / "out").exists()


def test_chat_with_a_file_that_is_not_audio(tmp_path: Path):
    checkpoint = tmp_path / "final"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"model": {"encoder": "e", "llm": "l"}, "train": {}}))
    notes = tmp_path / "notes.wav"
    notes.write_text("these are my notes, not a recording\n")
    stderr = one_line_error(blspdata("chat", checkpoint, notes, check=False))
    assert f"{notes}: not an audio file" in stderr
    stderr = one_line_error(blspdata("chat", tmp_path / "gone", notes, check=False))
    assert "no such checkpoint folder" in stderr


def test_the_cli_catches_the_error_family_in_one_place_and_a_bug_keeps_its_traceback():
    """Every command runs through the app's one handler: a BlspdataError or an OSError is one
    line; a KeyError (a bug) is not turned into `error: 'model'`."""
    @app.command("_test-user-error", hidden=True)
    def user_error() -> None:
        raise BlspdataError("config.yaml: key generate.model: unknown model 'x'")

    @app.command("_test-bug", hidden=True)
    def bug() -> None:
        raise KeyError("model")

    @app.command("_test-oserror", hidden=True)
    def oserror() -> None:
        open(REPO / "no-such-file.txt")

    try:
        runner = CliRunner()
        result = runner.invoke(app, ["_test-user-error"])
        assert result.exit_code == 1 and "error: config.yaml: key generate.model: unknown model 'x'" in result.output
        result = runner.invoke(app, ["_test-oserror"])
        assert result.exit_code == 1 and "error: [Errno 2] No such file or directory" in result.output
        result = runner.invoke(app, ["_test-bug"])
        assert isinstance(result.exception, KeyError) and "error:" not in result.output
    finally:
        app.registered_commands[:] = [c for c in app.registered_commands if not (c.name or "").startswith("_test-")]
