"""SER evaluation as the reference's model answers: a sentence, scored as WA, UA, macro-F1.

The parser and the scores are checked on hand-made answers and predictions; the command
itself on a checkpoint trained for one step on the IEMOCAP sample (tiny random Whisper,
SmolLM2-135M), scored on the test split as a user would."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from blspdata.labels import CANONICAL
from blspdata.train.evaluate import parse_label, scores

SAMPLE = REPO / "manifests" / "sample"


@pytest.mark.parametrize("answer, label", [
    ("The emotion tone of the speech provided is neutral.", "neutral"),  # the reference's example output
    ("I think the speaker sounds happy", "happy"),
    ("Sadness.", "sad"),
    ("ANGRY", "angry"),
    ("The speaker seems surprised by the news.", "surprise"),
    ("Joy.", "happy"),
    ("The tone is one of anger, maybe sadness.", "angry"),   # the first label after the cue "is"
    ("The speaker is unhappy.", "sad"),                       # whole words: not "happy"
    ("Options: neutral, sad, angry, happy, or surprise. The emotion tone is sad.", "sad"),
    ("neutral, sad, angry, happy, or surprise", None),       # the options read back: no answer
    ("The weather is nice today and the sky is blue", None),
    ("asdf qwerty 123", None),
    ("", None),
])
def test_labels_are_read_from_free_text_answers(answer: str, label: str | None):
    assert parse_label(answer) == label


def test_wa_ua_macro_f1_and_confusion_on_a_hand_made_example():
    # neutral x3, happy x2, angry x1, sad x2 (no surprise rows); one answer unparsed (None), one surprise predicted.
    truth = [0, 0, 0, 1, 1, 2, 3, 3]
    predicted = [0, 0, 1, 1, None, 2, 3, 4]
    result = scores(truth, predicted)
    assert result["confusion"] == [  # columns: neutral happy angry sad surprise unparsed
        [2, 1, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 1],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0],
    ]
    assert result["rows"] == 8 and result["unparsed"] == 1
    assert result["wa"] == pytest.approx(5 / 8)
    assert result["recall"] == pytest.approx({"neutral": 2 / 3, "happy": 1 / 2, "angry": 1.0, "sad": 1 / 2,
                                              "surprise": None})
    assert result["ua"] == pytest.approx((2 / 3 + 1 / 2 + 1 + 1 / 2) / 4)  # surprise has no rows: not in UA
    # F1 per label: neutral P 1 R 2/3 -> 0.8; happy 0.5; angry 1; sad P 1 R 1/2 -> 2/3; surprise predicted once,
    # never right -> 0 and counted, as scikit-learn's macro average counts a label that is only predicted.
    assert result["f1"] == pytest.approx({"neutral": 0.8, "happy": 0.5, "angry": 1.0, "sad": 2 / 3, "surprise": 0.0})
    assert result["macro_f1"] == pytest.approx((0.8 + 0.5 + 1 + 2 / 3 + 0) / 5)


def cli(*args, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "blspdata", *map(str, args)], cwd=REPO, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"blspdata {' '.join(map(str, args))}:\n{result.stdout}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, demo_models) -> tuple[Path, Path]:
    """(checkpoint, dataset): stage 2 trained one step on the IEMOCAP sample (conftest's models)."""
    work = tmp_path_factory.mktemp("ser")
    encoder, llm = demo_models["encoder"], demo_models["llm"]
    continuations = work / "iemocap.emotion.jsonl"
    cli("generate", SAMPLE / "iemocap.jsonl", "-o", continuations, "--task", "emotion", "--backend", "dry-run",
        "--max-new-tokens", "8", "--no-progress")
    cli("publish", continuations, "-o", work / "ds", "--no-progress")
    cli("train", "stage2", work / "ds", "-o", work / "run", "--encoder", encoder, "--llm", llm, "--batch-size", "2",
        "--grad-accum", "1", "--max-steps", "1", "--warmup-steps", "1", "--eval-split", "none", "--no-progress")
    return work / "run" / "final", work / "ds"


def test_evaluate_scores_the_test_split_with_the_references_answer_length(checkpoint, tmp_path: Path):
    final, dataset = checkpoint
    out = tmp_path / "ser"
    shown = cli("evaluate", "ser", final, dataset, "--limit", "2", "-o", out).stdout
    saved = json.loads((out / "ser.json").read_text())
    assert saved["split"] == "test" and saved["rows"] == 2
    assert saved["max_new_tokens"] == 128  # the reference's, not 8
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 2 and all(a["id"].startswith("iemocap/") for a in answers)
    for method in ("emotion head", "SER prompt"):
        figures = saved["metrics"][method]
        assert {"wa", "ua", "macro_f1", "recall", "confusion", "unparsed"} <= set(figures)
        assert sum(map(sum, figures["confusion"])) == 2 and 0 <= figures["wa"] <= 1 and 0 <= figures["ua"] <= 1
    assert [a["parsed"] for a in answers] == [parse_label(a["answer"]) for a in answers]
    unparsed = [a for a in answers if a["parsed"] is None]
    assert saved["metrics"]["SER prompt"]["unparsed"] == len(unparsed)
    assert [e["answer"] for e in saved["unparsed_examples"]] == [a["answer"] for a in unparsed]
    for word in ("WA", "UA", "F1", "emotion head", "SER prompt", "test split"):
        assert word in shown, word

    # --max-new-tokens caps the answer: two tokens are at most two words.
    short = tmp_path / "short"
    cli("evaluate", "ser", final, dataset, "--limit", "1", "--max-new-tokens", "2", "-o", short)
    saved = json.loads((short / "ser.json").read_text())
    answers = [json.loads(line)["answer"] for line in (short / "answers.jsonl").read_text().splitlines()]
    assert saved["max_new_tokens"] == 2 and len(answers) == 1 and len(answers[0].split()) <= 2, answers
    assert [e["answer"] for e in saved["unparsed_examples"]] == [a for a in answers if parse_label(a) is None]


def test_evaluate_scores_several_test_sets_in_one_table_beside_the_papers_figures(checkpoint, tmp_path: Path):
    """A published dataset (IEMOCAP), the IEMOCAP manifest from ingest (its rejects file names one
    test row excluded for its label, 'fru') and a hand-made manifest whose test split holds a label
    outside the five."""
    final, dataset = checkpoint
    rows = [json.loads(line) for line in (SAMPLE / "iemocap.jsonl").read_text().splitlines()]
    mine = [dict(r, corpus="handmade", id=r["id"].replace("iemocap/", "handmade/")) for r in rows if r["split"] == "test"][:3]
    mine[0].update(emotion=None, raw_emotion="fea")
    handmade = tmp_path / "handmade.jsonl"
    handmade.write_text("".join(json.dumps(r) + "\n" for r in mine))
    out = tmp_path / "ser"
    shown = cli("evaluate", "ser", final, dataset, SAMPLE / "iemocap.jsonl", handmade, "--limit", "2",
                "--max-new-tokens", "4", "-o", out, "--no-progress").stdout
    saved = json.loads((out / "ser.json").read_text())
    sets = {entry["name"]: entry for entry in saved["sets"]}
    # Two sources hold IEMOCAP: each set is named by its source too, so they never merge.
    assert list(sets) == ["ds:iemocap", "iemocap.jsonl:iemocap", "handmade"]
    assert saved["rows"] == 6 and saved["split"] == "test"   # pooled over the three sets
    for entry in sets.values():
        assert entry["rows"] == 2
        for method in ("emotion head", "SER prompt"):
            figures = entry["metrics"][method]
            assert sum(map(sum, figures["confusion"])) == 2 and {"wa", "ua", "macro_f1"} <= set(figures)
        assert (out / entry["confusion_png"]).is_file()
    assert sets["ds:iemocap"]["paper"]["accuracy"] == 76.0 == sets["iemocap.jsonl:iemocap"]["paper"]["accuracy"]
    assert sets["handmade"]["paper"] is None
    # Labels outside the five are counted apart: in the rows, and as ingest excluded them (test split only).
    assert sets["handmade"]["excluded"]["outside_five"] == {"fea": 1}
    assert sets["iemocap.jsonl:iemocap"]["excluded"]["rejected_at_ingest"] == {"fru": 1}
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [a["set"] for a in answers] == ["ds:iemocap"] * 2 + ["iemocap.jsonl:iemocap"] * 2 + ["handmade"] * 2
    assert mine[0]["id"] not in {a["id"] for a in answers}
    for words in ("per test set", "paper", "0.760", "1 label outside the five (fea 1)",
                  "1 label excluded at ingest (fru 1)"):
        assert words in shown, words

    # The run report shows the per-set table.
    from blspdata.report import ser_section

    html = ser_section(out)
    assert "handmade" in html and "iemocap.jsonl:iemocap" in html and "76.0%" in html


def test_compare_puts_evaluations_side_by_side(tmp_path: Path):
    """A run folder (its evaluate/ser.json) beside an `evaluate ser -o` folder, as an ablation reads."""
    from blspdata.train.evaluate import score_answers, score_set

    def ser_json(folder: Path, predicted: list[int]) -> None:
        truth = [0, 1, 2, 3]
        answers = [{"id": f"iemocap/test/{i}", "set": "iemocap", "parsed": CANONICAL[p]} for i, p in enumerate(predicted)]
        result = score_answers(truth, predicted, predicted, answers)
        result.update(split="test", sets=[score_set("iemocap", "ds", answers, truth, predicted, predicted, {}, 0)])
        folder.mkdir(parents=True)
        (folder / "ser.json").write_text(json.dumps(result))

    ser_json(tmp_path / "full" / "evaluate", [0, 1, 2, 3])          # all right
    ser_json(tmp_path / "no-stage1", [0, 1, 0, 0])                  # half right
    shown = cli("evaluate", "compare", tmp_path / "full", tmp_path / "no-stage1", "-o", tmp_path / "compare.json").stdout
    line = next(l for l in shown.splitlines() if l.startswith("iemocap") and "SER prompt" in l)
    assert "1.000 / 1.000 / 1.000" in line and "0.500 / 0.500" in line and "0.760" in line  # the paper's 76.0
    assert shown.index("full") < shown.index("no-stage1")
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["runs"] == ["full", "no-stage1"]
    rows = {(r["set"], r["method"]): r for r in saved["table"]}
    assert rows[("iemocap", "emotion head")]["runs"]["no-stage1"]["wa"] == 0.5
    assert rows[("(all rows)", "SER prompt")]["runs"]["full"]["wa"] == 1.0

    # Something that is not an evaluation is said in one line.
    failed = subprocess.run([sys.executable, "-m", "blspdata", "evaluate", "compare", tmp_path / "full", tmp_path],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1 and "no ser.json there" in failed.stderr


EXAMPLE_JUDGE = '''id = "copy-the-example"
model_user = """{instruction}

Speech: {text}"""
system = "You are a judge."
user = """Answer to the request '{instruction}' from a {emotion} speaker: "{response}"

Quality: 7
Empathy: 5
Reason: clear but cold.

Repeat the three lines above exactly."""
'''


@pytest.mark.parametrize("answer, verdict", [
    ("Quality: 8\nEmpathy: 6\nReason: Helpful but ignores the sadness.", (8, 6, "Helpful but ignores the sadness.")),
    ('{"quality": 7, "empathy": 9, "reason": "warm"}', (7, 9, "warm")),
    ("**Quality**: 9/10\n**Empathy**: 4/10", (9, 4, "")),
    ("Quality: 8\nEmpathy: 11\nReason: x", None),     # outside 1-10: refused, not clipped
    ("Quality: 0\nEmpathy: 5", None),
    ("The answer is good and kind.", None),            # no scores at all
    ("Quality: 8", None),                              # one of the two
    ("", None),
])
def test_judge_verdicts_are_read_from_the_judges_text(answer: str, verdict):
    from blspdata.train.empathy import parse_judgement

    scores, why = parse_judgement(answer)
    if verdict is None:
        assert scores is None and why
    else:
        assert (scores["quality"], scores["empathy"], scores["reason"]) == verdict and not why


def test_empathy_answers_are_scored_by_an_openai_compatible_judge(checkpoint, tmp_path: Path):
    """The embedded SmolLM2 server as the judge, through --judge-base-url as any server would be;
    a judge prompt that shows the format, since a 135M model needs the example to copy."""
    from blspdata.generate.servers import embedded_llama, smollm2_path
    from blspdata.train.empathy import load_instructions, parse_judgement

    final, dataset = checkpoint
    judge = tmp_path / "judge.toml"
    judge.write_text(EXAMPLE_JUDGE)
    out, short = tmp_path / "empathy", tmp_path / "short"
    with embedded_llama(str(smollm2_path())) as server:
        shown = cli("evaluate", "empathy", final, dataset, "--judge-base-url", server.base_url, "--limit", "3",
                    "--max-new-tokens", "8", "--judge-prompt", judge, "-o", out, "--no-progress").stdout
        # A verdict of one token cannot hold two scores: every row is a reject, never a zero. The
        # answers are reused (a rerun resumes from answers.jsonl: the model is not asked again).
        short.mkdir()
        shutil.copy(out / "answers.jsonl", short / "answers.jsonl")
        cli("evaluate", "empathy", final, dataset, "--judge-base-url", server.base_url, "--limit", "3",
            "--judge-max-new-tokens", "1", "-o", short, "--no-progress")

    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 3 and all(a["instruction"] in load_instructions() for a in answers)
    judged = [json.loads(line) for line in (out / "judged.jsonl").read_text().splitlines()]
    rejects = [json.loads(line) for line in (out / "judged.rejects.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in judged + rejects) == sorted(a["id"] for a in answers)
    # A 135M judge may or may not copy the format: whichever it did, each row says so from its text.
    for row in judged:  # the scores are the judge's own words
        scores, _ = parse_judgement(row["judge_answer"])
        assert (row["quality"], row["empathy"], row["reason"]) == (scores["quality"], scores["empathy"], scores["reason"])
        assert 1 <= row["quality"] <= 10 and row["judge_prompt"] == "copy-the-example"
    for row in rejects:
        assert row["reason"] == "judge_unparsed" and parse_judgement(row["judge_answer"])[0] is None
    summary = json.loads((out / "empathy.json").read_text())
    assert summary["judged"] == len(judged) and summary["rejected"].get("judge_unparsed", 0) == len(rejects)
    assert summary["mean"]["quality"] == (pytest.approx(sum(r["quality"] for r in judged) / len(judged)) if judged
                                          else None)  # no verdict is no mean, not a zero
    for emotion, m in summary["per_emotion"].items():
        mine = [r["empathy"] for r in judged if r["emotion"] == emotion]
        assert m["rows"] == len(mine) and m["empathy"] == (pytest.approx(sum(mine) / len(mine)) if mine else None)
    assert summary["paper"]["quality"] == 8.8 and summary["paper"]["empathy"] == 7.7
    for words in ("quality", "empathy", "paper", "copy-the-example"):
        assert words in shown, words

    summary = json.loads((short / "empathy.json").read_text())
    assert summary["judged"] == 0 and summary["rejected"] == {"judge_unparsed": 3} and summary["mean"]["quality"] is None
    assert not (short / "judged.jsonl").read_text()
