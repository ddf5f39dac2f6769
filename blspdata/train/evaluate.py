"""Using a trained model: speech emotion recognition (SER) scores, and chat.

`evaluate_ser` scores a split (the `test` split by default) two ways: the emotion head
(argmax over the 5 classes), and the model prompted with the paper's SER instruction, its
label read from the free-text answer. The reference generates up to 128 new tokens and its
model answers in a sentence ("The emotion tone of the speech provided is neutral.", from
its examples/test/output_iemocap.jsonl), so we do too and parse the sentence (`parse_label`).
The reference ships no scorer; we report the field's usual figures for both ways: WA
(accuracy), UA (mean per-class recall), macro-F1, per-class recall and the confusion matrix,
in ser.json, a PNG, and on the terminal. An answer with no label counts as wrong, in its own
`unparsed` column, and examples of such answers go into ser.json.

This module imports torch and the model only inside the functions that need them, so the
label parser and the scores can be used (and tested) without them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from blspdata.labels import CANONICAL

MAX_NEW_TOKENS = 128     # the reference's generate.py default for SER inference
UNPARSED_EXAMPLES = 10   # answers without a label kept in ser.json

# The usual forms of each label in an answer (IEMOCAP merges excitement into happy, as
# labels.py does). Words, not substrings: "unhappy" is sad, not happy.
LABEL_FORMS = {
    "neutral": ("neutral", "neutrality", "calm", "calmness"),
    "happy": ("happy", "happiness", "happily", "joy", "joyful", "joyous", "glad", "cheerful", "excited",
              "excitement"),
    "angry": ("angry", "anger", "angrily", "mad", "furious", "rage"),
    "sad": ("sad", "sadness", "sadly", "unhappy", "sorrow", "sorrowful"),
    "surprise": ("surprise", "surprised", "surprising", "astonished", "astonishment", "amazed", "shocked"),
}
_LABEL_OF = {form: label for label, forms in LABEL_FORMS.items() for form in forms}
# Words after which an answer states its label: "... provided is neutral", "sounds happy".
CUES = frozenset({"is", "was", "be", "as", "sounds", "sound", "seems", "seem", "appears", "appear", "feels", "feel",
                  "conveys", "expresses", "shows", "indicates", "reflects"})
PARSE_RULE = ("first label word after the first cue word (is, sounds, seems, ...) when there is one; otherwise "
              "the label when every label word in the answer names the same one; otherwise unparsed. No negation "
              "handling.")


def parse_label(answer: str) -> str | None:
    """The emotion label a free-text answer gives, or None (unparsed).

        "The emotion tone of the speech provided is neutral."  -> neutral  (after the cue "is")
        "I think the speaker sounds happy"                     -> happy    (after the cue "sounds")
        "Sadness."                                             -> sad      (the only label word)
        "neutral, sad, angry, happy, or surprise"              -> None     (the options read back)
        "The answer is unclear."                               -> None     (no label word)

    The rule (PARSE_RULE) is deliberately simple and has no notion of negation: "is not
    happy" reads as happy. Words are matched whole, case-insensitively.
    """
    words = re.findall(r"[a-z]+", answer.lower())
    mentions = [(position, _LABEL_OF[word]) for position, word in enumerate(words) if word in _LABEL_OF]
    if not mentions:
        return None
    cue = next((position for position, word in enumerate(words) if word in CUES), None)
    if cue is not None:
        after = [label for position, label in mentions if position > cue]
        if after:
            return after[0]
    labels = {label for _, label in mentions}
    return labels.pop() if len(labels) == 1 else None


def confusion(truth: list[int], predicted: list[int | None]) -> np.ndarray:
    """Rows: true label; columns: predicted label, then 'unparsed' (None)."""
    matrix = np.zeros((len(CANONICAL), len(CANONICAL) + 1), dtype=int)
    for t, p in zip(truth, predicted):
        matrix[t, len(CANONICAL) if p is None else p] += 1
    return matrix


def scores(truth: list[int], predicted: list[int | None]) -> dict[str, Any]:
    """WA, UA, macro-F1, per-class recall and F1, and the confusion matrix.

    WA is the share of rows predicted right (an unparsed answer is wrong). UA is the mean
    recall over the labels that occur in `truth` (a label with no rows has no recall). Macro-F1
    is the mean F1 over the labels that occur in `truth` or among the predictions, as
    scikit-learn's f1_score(average="macro") counts them; 'unparsed' is not a label.
    """
    return scores_of(confusion(truth, predicted))


def scores_of(matrix: np.ndarray | list[list[int]]) -> dict[str, Any]:
    """`scores` from a confusion matrix as `confusion` makes it (ser.json's)."""
    matrix = np.asarray(matrix, dtype=int)
    labels = len(CANONICAL)
    hits = np.diag(matrix[:, :labels])
    support = matrix.sum(axis=1)
    predicted_as = matrix[:, :labels].sum(axis=0)
    recall = [float(h / s) if s else None for h, s in zip(hits, support)]
    precision = [float(h / p) if p else 0.0 for h, p in zip(hits, predicted_as)]
    f1 = [2 * p * r / (p + r) if r else 0.0 for p, r in zip(precision, recall)]  # r > 0 means p > 0
    present = [i for i in range(labels) if support[i]]
    scored = [i for i in range(labels) if support[i] or predicted_as[i]]
    rows = int(support.sum())
    return {
        "rows": rows,
        "wa": float(hits.sum() / rows) if rows else None,
        "ua": float(np.mean([recall[i] for i in present])) if present else None,
        "macro_f1": float(np.mean([f1[i] for i in scored])) if scored else None,
        "unparsed": int(matrix[:, labels:].sum()),
        "recall": dict(zip(CANONICAL, recall)),
        "f1": dict(zip(CANONICAL, f1)),
        "support": dict(zip(CANONICAL, map(int, support))),
        "confusion": matrix.tolist(),
    }


def render(result: dict[str, Any]) -> str:
    """The terminal summary: one line of figures per method, then recall per label and each
    confusion matrix."""
    methods = result["metrics"]
    lines = [f"{result['split']} split, {result['rows']} rows"
             + (f" ({result['unreadable']} with unreadable audio skipped)" if result.get("unreadable") else ""),
             f"{'':<14}{'WA':>7}{'UA':>7}{'F1':>7}{'unparsed':>10}   recall: " + " ".join(f"{c[:8]:>8}" for c in CANONICAL)]
    for name, m in methods.items():
        figures = "".join(f"{_fmt(m[k]):>7}" for k in ("wa", "ua", "macro_f1"))
        lines.append(f"{name:<14}{figures}{m['unparsed']:>10}           "
                     + " ".join(f"{_fmt(m['recall'][c]):>8}" for c in CANONICAL))
    columns = list(CANONICAL) + ["unparsed"]
    for name, m in methods.items():
        lines += ["", f"{name} (rows: true label, columns: predicted)", " " * 10 + "".join(f"{c[:8]:>9}" for c in columns)]
        lines += [f"{label:<10}" + "".join(f"{n:>9}" for n in row) for label, row in zip(CANONICAL, m["confusion"])]
    examples = result.get("unparsed_examples") or []
    if examples:
        lines += ["", f"answers without a label ({methods['SER prompt']['unparsed']}), for example:"]
        lines += [f"  {e['id']} ({e['true']}): {e['answer'][:120]!r}" for e in examples[:3]]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def plot(matrices: dict[str, np.ndarray], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5 * len(matrices), 4.8))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(matrices), squeeze=False)[0]
    for axis, (title, matrix) in zip(axes, matrices.items()):
        matrix = np.asarray(matrix)
        axis.imshow(matrix, cmap="Blues")
        axis.set_xticks(range(matrix.shape[1]), list(CANONICAL) + ["unparsed"], rotation=45, ha="right")
        axis.set_yticks(range(matrix.shape[0]), CANONICAL)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(title)
        for (i, j), n in np.ndenumerate(matrix):
            axis.text(j, i, str(n), ha="center", va="center", color="white" if n > matrix.max() / 2 else "black")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def evaluate_ser(checkpoint: str | Path, data: str | Path, split: str = "test", out: str | Path | None = None,
                 max_new_tokens: int | None = None, limit: int | None = None, prompt_too: bool = True,
                 audio_root: str | None = None, trust_remote_code: bool = False) -> dict[str, Any]:
    """Score `split` of a published emotion dataset; write ser.json, answers.jsonl and
    confusion.png to `out` [CHECKPOINT/ser-SPLIT]. `max_new_tokens` None: the reference's 128."""
    import torch

    from blspdata.audio import RATE
    from blspdata.train.data import SER_INSTRUCTION, SYSTEM, audio_present, decode_audio, load_rows
    from blspdata.train.config import TrainError
    from blspdata.train.model import BLSPModel, Prompt, autocast

    max_new_tokens = max_new_tokens or MAX_NEW_TOKENS
    rows = load_rows(str(data), split)
    labelled = [i for i, (emotion, present) in enumerate(zip(rows["emotion"], audio_present(rows, audio_root)))
                if emotion is not None and emotion >= 0 and present]  # the audio bytes are not read for this
    if not labelled:
        raise TrainError(f"{data}: the {split!r} split has no rows with an emotion label and audio to score "
                         f"(of {len(rows)} rows)")
    rows = rows.select(labelled)
    if limit:
        rows = rows.select(range(min(limit, len(rows))))
    model = BLSPModel.from_checkpoint(checkpoint, trust_remote_code=trust_remote_code)
    prompt = Prompt(model.tokenizer, SYSTEM, SER_INSTRUCTION)
    truth, by_head, by_prompt, answers = [], [], [], []
    device = next(model.adapter.parameters()).device
    unreadable = 0
    with torch.no_grad():
        for row in rows:
            try:
                audio = decode_audio(row, audio_root)
            except (OSError, RuntimeError, ValueError):
                unreadable += 1  # bytes that do not decode, or a path-mode file that is gone
                continue
            features = model.feature_extractor([audio], sampling_rate=RATE, return_tensors="pt",
                                               device=str(device)).input_features
            with autocast(device, model.base_dtype):
                speech, lengths = model.speech_embeddings(features.to(device),
                                                          torch.tensor([len(audio)], device=device))
                head = model.emotion_logits(speech, lengths)
            truth.append(row["emotion"])
            by_head.append(int(head.argmax(-1)))
            answer = model.respond(audio, prompt, max_new_tokens) if prompt_too else None
            label = parse_label(answer) if prompt_too else None
            by_prompt.append(None if label is None else CANONICAL.index(label))
            answers.append({"id": row["id"], "true": CANONICAL[row["emotion"]], "head": CANONICAL[by_head[-1]],
                            "answer": answer, "parsed": label})
    result = score_answers(truth, by_head, by_prompt if prompt_too else None, answers)
    result.update(split=split, unreadable=unreadable, max_new_tokens=max_new_tokens if prompt_too else None)
    out = Path(out) if out else Path(checkpoint) / f"ser-{split}"
    out.mkdir(parents=True, exist_ok=True)
    plot({name: np.array(m["confusion"]) for name, m in result["metrics"].items()}, out / "confusion.png")
    (out / "ser.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    result["text"] = render(result)
    result["out"] = str(out)
    return result


def score_answers(truth: list[int], by_head: list[int], by_prompt: list[int | None] | None,
                  answers: list[dict[str, Any]]) -> dict[str, Any]:
    """ser.json's figures: per method under "metrics", the headline ones also at the top."""
    metrics = {"emotion head": scores(truth, by_head)}
    if by_prompt is not None:
        metrics["SER prompt"] = scores(truth, by_prompt)
    prompt = metrics.get("SER prompt", {})
    return {
        "rows": len(truth),
        "labels": list(CANONICAL),
        "head_accuracy": metrics["emotion head"]["wa"], "head_ua": metrics["emotion head"]["ua"],
        "prompt_accuracy": prompt.get("wa"), "prompt_ua": prompt.get("ua"), "prompt_unparsed": prompt.get("unparsed"),
        "metrics": metrics,
        "confusion": {name: m["confusion"] for name, m in metrics.items()},  # columns: labels, then unparsed
        "parse_rule": PARSE_RULE if by_prompt is not None else None,
        "unparsed_examples": [{k: a[k] for k in ("id", "true", "answer")} for a in answers
                              if by_prompt is not None and a.get("parsed") is None][:UNPARSED_EXAMPLES],
    }


def chat(checkpoint: str | Path, audio_path: str | Path, instruction: str | None = None,
         max_new_tokens: int = 64, trust_remote_code: bool = False) -> str:
    import soundfile as sf

    from blspdata.audio import read_segment
    from blspdata.train.config import TrainError, checkpoint_config
    from blspdata.train.data import STAGE2_INSTRUCTION, SYSTEM_EMPATHY
    from blspdata.train.model import BLSPModel, Prompt

    checkpoint_config(checkpoint)  # a wrong folder is said before the audio is read or a model built
    try:  # read before the model loads: a file that is not audio is said at once
        audio = read_segment(str(audio_path), 0.0, 0.0)
    except sf.SoundFileError as exc:
        raise TrainError(f"{audio_path}: not an audio file soundfile can read ({str(exc)[:200]})") from None
    model = BLSPModel.from_checkpoint(checkpoint, trust_remote_code=trust_remote_code)
    prompt = Prompt(model.tokenizer, SYSTEM_EMPATHY, instruction if instruction is not None else STAGE2_INSTRUCTION)
    return model.respond(audio, prompt, max_new_tokens)
