"""`evaluate empathy`: the model answers spoken requests, an LLM judge scores each answer.

Each scored row of a published emotion dataset (or manifest) is a user speaking in a labelled
tone; it gets one written request from the instruction set (prompts/empathy/instructions.txt,
a few hundred general requests, Alpaca-style, picked by a stable hash of the row's id). The
model answers the request with the speech where the input goes, under the stage-2 system
prompt (respond with empathy to the tone). Then any OpenAI-compatible judge (the client,
retries and engines of `generate`) scores each answer 1-10 for quality and for empathy toward
the speaker's emotion, with the judge prompt of prompts/empathy/judge.toml. The paper (GPT-4,
8.8 and 7.7 on SpeechAlpaca) does not publish its prompt: ours is our own.

Out folder: answers.jsonl (the model's answers), judged.jsonl (per row: the scores, the judge's
reason and its raw answer), judged.rejects.jsonl (a judge answer without both scores, or a
request the judge could not serve: never a zero), empathy.rejects.jsonl (rows whose audio did
not decode), empathy.json (means overall and per emotion). All three JSONL files are appended
line by line: a rerun skips what is done, as `generate` resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

from blspdata.labels import CANONICAL
from blspdata.records import atomic_path, iter_jsonl

INSTRUCTIONS = "empathy/instructions.txt"
JUDGE_PROMPT = "empathy/judge.toml"
MAX_NEW_TOKENS = 128  # the model's answer; as evaluate ser's, the reference's generate.py default
_SCORE = r"{name}\W{{0,6}}(\d{{1,2}}(?:\.\d+)?)"  # "Quality: 8", "**Quality**: 8/10", '"quality": 8'


def load_instructions(path: str | Path | None = None) -> list[str]:
    """The instruction set: one request a line; blank lines and # comments are skipped."""
    from importlib import resources

    from blspdata.train.config import TrainError

    text = (Path(path).read_text("utf-8") if path else
            resources.files("blspdata.prompts").joinpath(INSTRUCTIONS).read_text("utf-8"))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise TrainError(f"{path or INSTRUCTIONS}: no instructions in it (one a line)")
    return lines


def load_judge_prompt(path: str | Path | None = None) -> dict[str, Any]:
    """The judge template: `system`, `user` ({instruction} {transcript} {emotion} {response}),
    `model_user` ({instruction} {text}), optional `id` and `max_new_tokens`."""
    from importlib import resources

    from blspdata.train.config import TrainError

    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib

    where = str(path or JUDGE_PROMPT)
    text = Path(path).read_text("utf-8") if path else resources.files("blspdata.prompts").joinpath(JUDGE_PROMPT).read_text("utf-8")
    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TrainError(f"{where}: not TOML ({exc})") from None
    for key, fields in (("system", ()), ("user", ("{response}",)), ("model_user", ("{instruction}",))):
        if not isinstance(spec.get(key), str):
            raise TrainError(f"{where}: needs a string `{key}`")
        missing = [f for f in fields if f not in spec[key]]
        if missing:
            raise TrainError(f"{where}: `{key}` must contain {', '.join(missing)}")
    spec.setdefault("id", Path(where).stem)
    return spec


def instruction_for(row_id: str, instructions: list[str]) -> str:
    """A stable pick: the same row gets the same request on every run and machine."""
    return instructions[int.from_bytes(hashlib.sha256(row_id.encode()).digest()[:8], "big") % len(instructions)]


def parse_judgement(answer: str | None) -> tuple[dict[str, Any] | None, str]:
    """({"quality", "empathy", "reason"}, "") from the judge's text, or (None, why not).

        "Quality: 8\\nEmpathy: 6\\nReason: Helpful but ignores the sadness."  -> 8, 6, the reason
        '{"quality": 7, "empathy": 9, "reason": "..."}'                      -> 7, 9
        "The answer is good."                                                -> None, no quality score

    The first number after each name counts; a score outside 1-10 is refused, not clipped."""
    text = answer or ""
    scores: dict[str, Any] = {}
    for name in ("quality", "empathy"):
        found = re.search(_SCORE.format(name=name), text, re.IGNORECASE)
        if found is None:
            return None, f"no {name} score in the judge's answer"
        value = float(found.group(1))
        if not 1 <= value <= 10:
            return None, f"{name} score {found.group(1)} is outside 1-10"
        scores[name] = int(value) if value.is_integer() else value
    reason = re.search(r"reason\W{0,6}(.+)", text, re.IGNORECASE | re.DOTALL)
    scores["reason"] = reason.group(1).strip().strip('"}').strip() if reason else ""
    return scores, ""


def _done_ids(path: Path) -> set[str]:
    from blspdata.generate.resume import recover

    done = recover(path)  # cuts a torn last line (a killed run)
    try:
        return set(done)
    finally:
        done.close()


def _rows_of(path: Path) -> list[dict[str, Any]]:
    return [row for _, row, _ in iter_jsonl(path) if row] if path.exists() else []


def evaluate_empathy(checkpoint: str | Path, data: str | Path, judge_base_url: str | None = None,
                     judge_model: str | None = None, judge_backend: str = "openai", judge_api_key: str | None = None,
                     split: str = "test", out: str | Path | None = None, limit: int | None = None,
                     max_new_tokens: int | None = None, judge_max_new_tokens: int | None = None,
                     instructions: str | Path | None = None, judge_prompt: str | Path | None = None,
                     audio_root: str | None = None, trust_remote_code: bool = False, progress: bool = False,
                     judge_concurrency: int | None = None, request_timeout: float = 300.0,
                     server_timeout: float = 120.0) -> dict[str, Any]:
    """Answer, judge, summarise; write to `out` [CHECKPOINT/empathy-SPLIT]. Resumable."""
    from blspdata.train.config import TrainError
    from blspdata.train.evaluate import load_set, paper_figures

    if judge_backend == "openai" and not judge_base_url:
        raise TrainError("the judge needs --judge-base-url (an OpenAI-compatible server, e.g. http://host:8000/v1), "
                         "or --judge-backend embedded for the local CPU engine")
    requests_of = load_instructions(instructions)
    judge = load_judge_prompt(judge_prompt)
    rows, excluded = load_set(data, split, audio_root)
    if limit:
        rows = rows.select(range(min(limit, len(rows))))
    out = Path(out) if out else Path(checkpoint) / f"empathy-{split}"
    out.mkdir(parents=True, exist_ok=True)
    answers_path, unreadable_path = out / "answers.jsonl", out / "empathy.rejects.jsonl"
    judged_path, rejects_path = out / "judged.jsonl", out / "judged.rejects.jsonl"
    _answer(checkpoint, rows, requests_of, judge, answers_path, unreadable_path,
            max_new_tokens or MAX_NEW_TOKENS, audio_root, trust_remote_code, progress)
    wanted = set(rows["id"])
    answers = [a for a in _rows_of(answers_path) if a["id"] in wanted]
    _judge(answers, judge, judged_path, rejects_path, judge_backend, judge_base_url, judge_model, judge_api_key,
           judge_max_new_tokens or int(judge.get("max_new_tokens", 128)), judge_concurrency, request_timeout,
           server_timeout, progress)
    judged = [r for r in _rows_of(judged_path) if r["id"] in wanted]
    rejected = [r for r in _rows_of(rejects_path) if r["id"] in wanted]
    unreadable = [r for r in _rows_of(unreadable_path) if r["id"] in wanted]
    result = summarise(judged, rejected, unreadable)
    paper = paper_figures()
    result.update(split=split, source=str(data), judge={"backend": judge_backend, "base_url": judge_base_url,
                                                          "model": judge_model or _judge_model_of(judged, rejected),
                                                          "prompt": judge["id"]},
                  max_new_tokens=max_new_tokens or MAX_NEW_TOKENS, excluded=excluded,
                  paper=dict((paper.get("empathy") or {}).get("speechalpaca") or {}, source=paper.get("source")))
    with atomic_path(out / "empathy.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    result["text"] = render(result)
    result["out"] = str(out)
    return result


def _judge_model_of(judged: list[dict], rejected: list[dict]) -> str | None:
    return next((r.get("judge_model") for r in judged + rejected if r.get("judge_model")), None)


def _answer(checkpoint, rows, requests_of: list[str], judge: dict, answers_path: Path, unreadable_path: Path,
            max_new_tokens: int, audio_root: str | None, trust_remote_code: bool, progress: bool) -> None:
    """The model's answers to the rows not yet in answers.jsonl (the model loads only if any)."""
    from blspdata.generate.resume import AppendWriter

    done = _done_ids(answers_path) | _done_ids(unreadable_path)
    todo = [i for i, row_id in enumerate(rows["id"]) if row_id not in done]
    if not todo:
        return
    import torch
    from tqdm import tqdm

    from blspdata.train.data import SYSTEM_EMPATHY, decode_audio
    from blspdata.train.model import BLSPModel, Prompt

    model = BLSPModel.from_checkpoint(checkpoint, trust_remote_code=trust_remote_code)
    prompts: dict[str, Any] = {}
    answers, unreadable = AppendWriter(answers_path), AppendWriter(unreadable_path)
    try:
        with torch.no_grad():
            for row in tqdm(rows.select(todo), desc="empathy: answers", disable=not progress, file=sys.stderr):
                instruction = instruction_for(row["id"], requests_of)
                emotion = CANONICAL[row["emotion"]]
                try:
                    audio = decode_audio(row, audio_root)
                except (OSError, RuntimeError, ValueError) as exc:
                    unreadable.write({"id": row["id"], "reason": "audio_unreadable", "detail": str(exc)[:300]})
                    continue
                if instruction not in prompts:
                    prompts[instruction] = Prompt(model.tokenizer, SYSTEM_EMPATHY,
                                                  judge["model_user"].replace("{instruction}", instruction))
                answers.write({"id": row["id"], "set": row.get("corpus"), "emotion": emotion,
                               "transcript": row.get("text"), "instruction": instruction,
                               "answer": model.respond(audio, prompts[instruction], max_new_tokens)})
    finally:
        answers.close()
        unreadable.close()


def _judge(answers: list[dict], judge: dict, judged_path: Path, rejects_path: Path, backend: str,
           base_url: str | None, model: str | None, api_key: str | None, max_new_tokens: int,
           concurrency: int | None, request_timeout: float, server_timeout: float, progress: bool) -> None:
    """Send the answers not yet judged (nor rejected) to the judge; append each verdict."""
    from tqdm import tqdm

    from blspdata.generate.backends import Request
    from blspdata.generate.engine import make_engine, run_requests
    from blspdata.generate.resume import AppendWriter

    done = _done_ids(judged_path) | _done_ids(rejects_path)
    todo = [a for a in answers if a["id"] not in done]
    if not todo:
        return

    def request(answer: dict) -> Request:
        fields = {"instruction": answer["instruction"], "transcript": answer.get("transcript") or "",
                  "emotion": answer["emotion"], "response": answer["answer"]}
        user = judge["user"]
        for key, value in fields.items():  # not str.format: an answer may hold braces
            user = user.replace("{" + key + "}", value)
        return Request(id=answer["id"], messages=[{"role": "system", "content": judge["system"]},
                                                  {"role": "user", "content": user}],
                       max_new_tokens=max_new_tokens, temperature=0.0)

    judged, rejects = AppendWriter(judged_path), AppendWriter(rejects_path)
    bar = tqdm(total=len(todo), desc="empathy: judge", disable=not progress, file=sys.stderr)
    try:
        with contextlib.ExitStack() as stack:
            engine = make_engine(stack, backend, base_url=base_url, model=model, api_key=api_key,
                                 concurrency=concurrency, server_timeout=server_timeout,
                                 request_timeout=request_timeout)

            def on_result(result, answer: dict) -> None:
                bar.update()
                row = {"id": answer["id"], "set": answer.get("set"), "emotion": answer["emotion"],
                       "instruction": answer["instruction"], "answer": answer["answer"],
                       "judge_model": getattr(engine, "model", None), "judge_prompt": judge["id"]}
                if result.reject:
                    rejects.write(dict(row, reason=f"judge_failed:{result.reject}", detail=result.detail[:300]))
                    return
                scores, why = parse_judgement(result.continuation)
                if scores is None:
                    rejects.write(dict(row, reason="judge_unparsed", detail=why, judge_answer=result.continuation))
                else:
                    judged.write(dict(row, **scores, judge_answer=result.continuation))

            async def drive() -> None:
                async with engine:
                    await run_requests(engine, ((request(a), a) for a in todo), on_result)

            asyncio.run(drive())
    finally:
        bar.close()
        judged.close()
        rejects.close()


def summarise(judged: list[dict], rejected: list[dict], unreadable: list[dict]) -> dict[str, Any]:
    """Means of the scores the judge gave, overall and per emotion; rejects counted by reason
    (they are in no mean: an answer the judge could not score is not a zero)."""
    def means(rows: list[dict]) -> dict[str, Any]:
        return {"rows": len(rows), "quality": sum(r["quality"] for r in rows) / len(rows) if rows else None,
                "empathy": sum(r["empathy"] for r in rows) / len(rows) if rows else None}

    reasons: dict[str, int] = {}
    for row in rejected + unreadable:
        reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
    return {"rows": len(judged) + len(rejected) + len(unreadable), "judged": len(judged),
            "rejected": dict(sorted(reasons.items())), "mean": means(judged),
            "per_emotion": {e: means([r for r in judged if r["emotion"] == e]) for e in CANONICAL
                            if any(r["emotion"] == e for r in judged + rejected)}}


def render(result: dict[str, Any]) -> str:
    def f(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    judge = result["judge"]
    lines = [f"{result['split']} split of {result['source']}: {result['rows']} rows, {result['judged']} judged by "
             f"{judge.get('model') or judge.get('base_url') or judge.get('backend')} (prompt {judge['prompt']})",
             f"{'':<12}{'rows':>6}{'quality':>9}{'empathy':>9}"]
    lines.append(f"{'all':<12}{result['mean']['rows']:>6}{f(result['mean']['quality']):>9}{f(result['mean']['empathy']):>9}")
    for emotion, m in result["per_emotion"].items():
        lines.append(f"{emotion:<12}{m['rows']:>6}{f(m['quality']):>9}{f(m['empathy']):>9}")
    paper = result.get("paper") or {}
    if paper.get("quality"):
        lines.append(f"{'paper':<12}{'':>6}{paper['quality']:>9.2f}{paper['empathy']:>9.2f}   "
                     f"({paper.get('judge')}, SpeechAlpaca: another judge prompt and test set)")
    if result["rejected"]:
        lines.append("not scored (in no mean): " + ", ".join(f"{k} {n}" for k, n in result["rejected"].items()))
    return "\n".join(lines)
