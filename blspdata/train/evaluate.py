"""Using a trained model: speech emotion recognition accuracy, and chat.

`evaluate_ser` scores two ways: the emotion head (argmax over the 5 classes), and prompting
the model with the paper's SER instruction and reading the label from its answer. Both give
a confusion matrix, printed and saved as a PNG.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blspdata.corpora.labels import CANONICAL
from blspdata.train.loop import (SER_INSTRUCTION, SYSTEM, SYSTEM_EMPATHY, STAGE2_INSTRUCTION, audio_present,
                                 decode_audio, load_rows)
from blspdata.train.model import BLSPModel, Prompt, autocast

_LABEL_WORDS = {"neutral": "neutral", "calm": "neutral", "happy": "happy", "happiness": "happy", "joy": "happy",
                "joyful": "happy", "angry": "angry", "anger": "angry", "sad": "sad", "sadness": "sad",
                "surprise": "surprise", "surprised": "surprise"}


def parse_label(answer: str) -> str | None:
    """The first emotion word in the model's answer."""
    for word in re.findall(r"[a-z]+", answer.lower()):
        if word in _LABEL_WORDS:
            return _LABEL_WORDS[word]
    return None


def confusion(truth: list[int], predicted: list[int | None]) -> np.ndarray:
    """Rows: true label; columns: predicted label, then 'unparsed'."""
    matrix = np.zeros((len(CANONICAL), len(CANONICAL) + 1), dtype=int)
    for t, p in zip(truth, predicted):
        matrix[t, len(CANONICAL) if p is None else p] += 1
    return matrix


def render(matrix: np.ndarray, title: str) -> str:
    columns = list(CANONICAL) + ["unparsed"]
    width = max(len(c) for c in columns) + 1
    lines = [title, " " * width + "".join(f"{c[:8]:>9}" for c in columns)]
    for label, row in zip(CANONICAL, matrix):
        lines.append(f"{label:<{width}}" + "".join(f"{n:>9}" for n in row))
    return "\n".join(lines)


def plot(matrices: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(matrices), figsize=(5.5 * len(matrices), 4.8), squeeze=False)
    for axis, (title, matrix) in zip(axes[0], matrices.items()):
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
    plt.close(figure)


@torch.no_grad()
def evaluate_ser(checkpoint: str | Path, data: str | Path, split: str = "test", out: str | Path | None = None,
                 max_new_tokens: int = 8, limit: int | None = None, prompt_too: bool = True,
                 audio_root: str | None = None) -> dict[str, Any]:
    model = BLSPModel.from_checkpoint(checkpoint)
    rows = load_rows(str(data), split)
    labelled = [i for i, (emotion, present) in enumerate(zip(rows["emotion"], audio_present(rows, audio_root)))
                if emotion is not None and present]  # the audio bytes are not read for this
    rows = rows.select(labelled)
    if limit:
        rows = rows.select(range(min(limit, len(rows))))
    prompt = Prompt(model.tokenizer, SYSTEM, SER_INSTRUCTION)
    truth, by_head, by_prompt, answers = [], [], [], []
    device = next(model.adapter.parameters()).device
    unreadable = 0
    for row in rows:
        try:
            audio = decode_audio(row, audio_root)
        except (OSError, RuntimeError, ValueError):
            unreadable += 1  # bytes that do not decode, or a path-mode file that is gone
            continue
        features = model.feature_extractor([audio], sampling_rate=16000, return_tensors="pt",
                                           device=str(device)).input_features
        with autocast(device, model.base_dtype):
            speech, lengths = model.speech_embeddings(features.to(device), torch.tensor([len(audio)], device=device))
            head = model.emotion_logits(speech, lengths)
        truth.append(row["emotion"])
        by_head.append(int(head.argmax(-1)))
        answer = model.respond(audio, prompt, max_new_tokens) if prompt_too else ""
        label = parse_label(answer)
        by_prompt.append(None if label is None else CANONICAL.index(label))
        answers.append({"id": row["id"], "true": CANONICAL[row["emotion"]], "answer": answer, "parsed": label})
    matrices = {"emotion head": confusion(truth, by_head)}
    if prompt_too:
        matrices["SER prompt"] = confusion(truth, by_prompt)
    result = {
        "rows": len(truth),
        "unreadable": unreadable,
        "head_accuracy": float(np.mean([t == p for t, p in zip(truth, by_head)])) if truth else 0.0,
        "prompt_accuracy": float(np.mean([t == p for t, p in zip(truth, by_prompt)])) if truth and prompt_too else None,
        "prompt_unparsed": sum(p is None for p in by_prompt) if prompt_too else None,
        "confusion": {k: v.tolist() for k, v in matrices.items()},
    }
    out = Path(out) if out else Path(checkpoint) / f"ser-{split}"
    out.mkdir(parents=True, exist_ok=True)
    plot(matrices, out / "confusion.png")
    (out / "ser.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    result["text"] = "\n\n".join(render(m, t) for t, m in matrices.items())
    result["out"] = str(out)
    return result


def chat(checkpoint: str | Path, audio_path: str | Path, instruction: str | None = None,
         max_new_tokens: int = 64) -> str:
    from blspdata.publish import read_segment

    model = BLSPModel.from_checkpoint(checkpoint)
    audio = read_segment(str(audio_path), 0.0, 0.0)
    prompt = Prompt(model.tokenizer, SYSTEM_EMPATHY, instruction if instruction is not None else STAGE2_INSTRUCTION)
    return model.respond(audio, prompt, max_new_tokens)
