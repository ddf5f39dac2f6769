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
import sys
from pathlib import Path
from typing import Any

import numpy as np

from blspdata.labels import CANONICAL
from blspdata.records import atomic_path

MAX_NEW_TOKENS = 128     # the reference's generate.py default for SER inference
UNPARSED_EXAMPLES = 10   # answers without a label kept in ser.json
PAPER_FILE = "evaluate_paper.toml"  # the paper's figures, shown beside ours (package data)

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
    if result.get("sets"):
        lines += ["", f"per test set ({result['split']} split)"] + render_sets(result["sets"])
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


def paper_figures() -> dict[str, Any]:
    """The paper's figures (blspdata/evaluate_paper.toml): {"source", "ser": {corpus: {...}}, ...}."""
    from importlib import resources

    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib

    return tomllib.loads(resources.files("blspdata").joinpath(PAPER_FILE).read_text("utf-8"))


def load_set(source: str | Path, split: str, audio_root: str | None = None):
    """(rows to score, what was not scored) for one DATASET argument of `evaluate ser`.

    `source` is a published dataset (its `emotion` config when it has one) or a manifest from
    ingest or curate (.jsonl[.gz]; its rows of `split`). Not scored, and counted apart, by
    reason: `outside_five` (a raw label with no canonical one, e.g. IEMOCAP's "fru"), per raw
    label; `unlabelled` (no label at all); `no_audio`; and for a manifest the rows its rejects
    file says ingest excluded for their label (`rejected_at_ingest`, per raw label)."""
    import datasets

    from blspdata.records import iter_jsonl, sidecar
    from blspdata.train.config import TrainError
    from blspdata.train.data import audio_present, load_rows

    source = Path(source)
    rejected: dict[str, int] = {}
    if source.is_dir():
        rows = load_rows(str(source / "emotion" if (source / "emotion").is_dir() else source), split)
    elif source.is_file():
        listed = []
        for number, row, error in iter_jsonl(source):
            if row is None:
                raise TrainError(f"{source}:{number}: not a JSON line ({error})")
            if row.get("split") != split:
                continue
            emotion = row.get("emotion")
            listed.append({"id": row.get("id"), "corpus": row.get("corpus"), "audio": row.get("audio"), "text": row.get("text"),
                           "offset": float(row.get("offset") or 0.0), "duration": float(row.get("duration") or 0.0),
                           "emotion": CANONICAL.index(emotion) if emotion in CANONICAL else None,
                           "raw_emotion": row.get("raw_emotion")})
        if not listed:
            raise TrainError(f"{source}: no rows of the {split!r} split in this manifest")
        rows = datasets.Dataset.from_list(listed)
        rejects = sidecar(source, "rejects.jsonl")
        if rejects.is_file():  # ids are CORPUS/SPLIT/UTTERANCE (corpora/base.py)
            for _, reject, _ in iter_jsonl(rejects):
                if reject and reject.get("reason") == "label_excluded" and f"/{split}/" in str(reject.get("id")):
                    label = re.search(r"label '([^']*)'", str(reject.get("detail", "")))
                    key = label.group(1) if label else "(not said)"
                    rejected[key] = rejected.get(key, 0) + 1
    else:
        raise TrainError(f"{source}: neither a published dataset (a folder) nor a manifest (.jsonl[.gz])")
    present = audio_present(rows, audio_root)  # the audio bytes are not read for this
    raw = rows["raw_emotion"] if "raw_emotion" in rows.column_names else [None] * len(rows)
    outside: dict[str, int] = {}
    unlabelled = no_audio = 0
    keep = []
    for i, (emotion, raw_label, has_audio) in enumerate(zip(rows["emotion"], raw, present)):
        if emotion is None or emotion < 0:
            if raw_label:
                outside[raw_label] = outside.get(raw_label, 0) + 1
            else:
                unlabelled += 1
        elif not has_audio:
            no_audio += 1
        else:
            keep.append(i)
    excluded = {"outside_five": dict(sorted(outside.items())), "unlabelled": unlabelled, "no_audio": no_audio}
    if rejected:
        excluded["rejected_at_ingest"] = dict(sorted(rejected.items()))
    if not keep:
        raise TrainError(f"{source}: the {split!r} split has no rows with an emotion label and audio to score "
                         f"(of {len(rows)} rows)")
    return rows.select(keep), excluded


def evaluate_ser(checkpoint: str | Path, data: str | Path | list[str | Path], split: str = "test",
                 out: str | Path | None = None, max_new_tokens: int | None = None, limit: int | None = None,
                 prompt_too: bool = True, audio_root: str | None = None, trust_remote_code: bool = False,
                 progress: bool = False) -> dict[str, Any]:
    """Score `split` of one or several published emotion datasets or manifests (`data`); write
    ser.json, answers.jsonl and confusion.png to `out` [CHECKPOINT/ser-SPLIT].

    Each corpus of each source is a test set (`sets` in ser.json: its figures, confusion
    matrices, the paper's figure where blspdata/evaluate_paper.toml has one, and the rows not
    scored by reason); the top-level figures pool every row scored. `limit`: the first N rows
    of each source. `max_new_tokens` None: the reference's 128."""
    import torch
    from tqdm import tqdm

    from blspdata.audio import RATE
    from blspdata.train.data import SER_INSTRUCTION, SYSTEM, decode_audio
    from blspdata.train.model import BLSPModel, Prompt, autocast

    max_new_tokens = max_new_tokens or MAX_NEW_TOKENS
    sources = [data] if isinstance(data, (str, Path)) else list(data)
    loaded = []
    for source in sources:  # every source is checked before the model loads
        rows, excluded = load_set(source, split, audio_root)
        loaded.append((Path(source), rows.select(range(min(limit, len(rows)))) if limit else rows, excluded))
    model = BLSPModel.from_checkpoint(checkpoint, trust_remote_code=trust_remote_code)
    prompt = Prompt(model.tokenizer, SYSTEM, SER_INSTRUCTION)
    truth, by_head, by_prompt, answers = [], [], [], []
    device = next(model.adapter.parameters()).device
    unreadable: dict[str, int] = {}
    names = _set_names([(source, rows) for source, rows, _ in loaded])
    bar = tqdm(total=sum(len(rows) for _, rows, _ in loaded), desc="evaluate ser", disable=not progress,
               file=sys.stderr)
    with torch.no_grad():
        for (source, rows, _), set_names in zip(loaded, names):
            for row, set_name in zip(rows, set_names):
                bar.update()
                try:
                    audio = decode_audio(row, audio_root)
                except (OSError, RuntimeError, ValueError):
                    unreadable[set_name] = unreadable.get(set_name, 0) + 1  # bytes that do not decode, a file gone
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
                answers.append({"id": row["id"], "set": set_name, "true": CANONICAL[row["emotion"]],
                                "head": CANONICAL[by_head[-1]], "answer": answer, "parsed": label})
    bar.close()
    result = score_answers(truth, by_head, by_prompt if prompt_too else None, answers)
    order = list(dict.fromkeys(n for set_names in names for n in set_names))
    sources_of = {n: str(source) for (source, _, _), set_names in zip(loaded, names) for n in set_names}
    excluded_of = {n: excluded for (_, _, excluded), set_names in zip(loaded, names) for n in set_names}
    result["sets"] = [score_set(name, sources_of[name], answers, truth, by_head, by_prompt if prompt_too else None,
                                excluded_of[name], unreadable.get(name, 0)) for name in order]
    result.update(split=split, unreadable=sum(unreadable.values()), max_new_tokens=max_new_tokens if prompt_too else None,
                  sources=[str(s) for s in sources])
    out = Path(out) if out else Path(checkpoint) / f"ser-{split}"
    out.mkdir(parents=True, exist_ok=True)
    plot({name: np.array(m["confusion"]) for name, m in result["metrics"].items()}, out / "confusion.png")
    if len(result["sets"]) > 1:
        for entry in result["sets"]:
            entry["confusion_png"] = f"confusion-{_file_name(entry['name'])}.png"
            plot({f"{entry['name']}: {name}": np.array(m["confusion"]) for name, m in entry["metrics"].items()},
                 out / entry["confusion_png"])
    with atomic_path(out / "ser.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    with atomic_path(out / "answers.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(a) + "\n" for a in answers))
    result["text"] = render(result)
    result["out"] = str(out)
    return result


def _set_names(loaded: list[tuple[Path, Any]]) -> list[list[str]]:
    """Per source, per row: its test set, the row's corpus ("iemocap"); prefixed by the source's
    name when two sources hold the same corpus, so two sets never merge."""
    corpora = [rows["corpus"] if "corpus" in rows.column_names else [source.name] * len(rows)
               for source, rows in loaded]
    seen: dict[str, set[int]] = {}
    for index, names in enumerate(corpora):
        for name in set(names):
            seen.setdefault(str(name), set()).add(index)
    return [[f"{source.name}:{name}" if len(seen[str(name)]) > 1 else str(name) for name in names]
            for (source, _), names in zip(loaded, corpora)]


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def score_set(name: str, source: str, answers: list[dict[str, Any]], truth: list[int], by_head: list[int],
              by_prompt: list[int | None] | None, excluded: dict[str, Any], unreadable: int) -> dict[str, Any]:
    """One test set's entry in ser.json's `sets`: figures per method and the paper's figure."""
    mine = [i for i, a in enumerate(answers) if a["set"] == name]
    metrics = {"emotion head": scores([truth[i] for i in mine], [by_head[i] for i in mine])}
    if by_prompt is not None:
        metrics["SER prompt"] = scores([truth[i] for i in mine], [by_prompt[i] for i in mine])
    corpus = name.rsplit(":", 1)[-1]
    paper = paper_figures()
    figure = (paper.get("ser") or {}).get(corpus)
    return {"name": name, "source": source, "rows": len(mine), "metrics": metrics,
            "paper": dict(figure, source=paper.get("source")) if figure else None,
            "excluded": dict(excluded, unreadable=unreadable)}


def render_sets(sets: list[dict[str, Any]]) -> list[str]:
    """The per-set table: one line per set and method, the paper's accuracy beside the SER prompt's WA."""
    w = max(18, *(len(e["name"]) + 2 for e in sets))
    lines = [f"{'test set':<{w}}{'rows':>6}  {'method':<14}{'WA':>7}{'UA':>7}{'F1':>7}{'unparsed':>10}{'paper':>8}"]
    for entry in sets:
        for number, (method, m) in enumerate(entry["metrics"].items()):
            paper = entry.get("paper") if method == "SER prompt" else None
            lines.append(f"{entry['name'] if not number else '':<{w}}{entry['rows'] if not number else '':>6}  "
                         f"{method:<14}" + "".join(f"{_fmt(m[k]):>7}" for k in ("wa", "ua", "macro_f1"))
                         + f"{m['unparsed']:>10}" + f"{_fmt(paper['accuracy'] / 100) if paper else '':>8}")
        note = excluded_note(entry.get("excluded") or {})
        if note:
            lines.append(f"{'':<{w}}not scored: {note}")
    if any(e.get("paper") for e in sets):
        lines.append("paper: the BLSP-Emo paper's SER accuracy (blspdata/evaluate_paper.toml), beside our SER prompt's WA")
    return lines


def excluded_note(excluded: dict[str, Any]) -> str:
    parts = []
    for key, what in (("outside_five", "label outside the five"), ("rejected_at_ingest", "label excluded at ingest")):
        counts = excluded.get(key) or {}
        if counts:
            parts.append(f"{sum(counts.values())} {what} (" + ", ".join(f"{k} {n}" for k, n in counts.items()) + ")")
    for key, what in (("unlabelled", "without a label"), ("no_audio", "without audio"), ("unreadable", "unreadable audio")):
        if excluded.get(key):
            parts.append(f"{excluded[key]} {what}")
    return "; ".join(parts)


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


def load_result(path: str | Path, name: str = "ser.json") -> dict[str, Any]:
    """An evaluate output: the file itself, a folder holding it (`evaluate ser -o`), or a run
    folder from `blspdata run` (its evaluate/ folder)."""
    from blspdata.train.config import TrainError

    path = Path(path)
    for candidate in (path, path / name, path / "evaluate" / name):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise TrainError(f"{candidate}: not the JSON `evaluate` writes ({str(exc)[:200]})") from None
    raise TrainError(f"{path}: no {name} there (give an `evaluate ser` output, its folder, or a run folder)")


def compare(paths: list[str | Path]) -> dict[str, Any]:
    """Several `evaluate ser` outputs side by side: per test set and method, each one's WA, UA
    and macro-F1, the paper's figure beside them. Runs are named by their folders."""
    from blspdata.train.config import TrainError

    if len(paths) < 2:
        raise TrainError("compare needs two or more evaluate outputs or run folders")
    results = [load_result(p) for p in paths]
    names = [Path(p).name or str(p) for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for run, result in zip(names, results):
        entries = [{"name": "(all rows)", "metrics": result.get("metrics") or {}, "paper": None}]
        entries += [e for e in result.get("sets") or [] if isinstance(e, dict)]
        for entry in entries:
            for method, m in (entry.get("metrics") or {}).items():
                line = table.setdefault((str(entry.get("name")), method), {
                    "set": entry.get("name"), "method": method, "runs": {},
                    "paper": (entry.get("paper") or {}).get("accuracy") if method == "SER prompt" else None})
                line["runs"][run] = {k: m.get(k) for k in ("rows", "wa", "ua", "macro_f1", "unparsed")}
    splits = {run: result.get("split") for run, result in zip(names, results)}
    return {"runs": names, "paths": [str(p) for p in paths], "splits": splits, "table": list(table.values())}


def render_compare(compared: dict[str, Any]) -> str:
    """One line per test set and method; per run WA / UA / F1; '-' where a run lacks the set."""
    runs = compared["runs"]
    width = max(22, *(len(r) + 2 for r in runs))
    lines = [f"{'test set':<26}{'method':<14}" + "".join(f"{r:>{width}}" for r in runs) + f"{'paper':>8}",
             f"{'':<26}{'':<14}" + "".join(f"{'WA / UA / F1':>{width}}" for _ in runs)]
    for line in compared["table"]:
        cells = []
        for run in runs:
            m = line["runs"].get(run)
            cells.append(f"{'-' if m is None else ' / '.join(_fmt(m[k]) for k in ('wa', 'ua', 'macro_f1')):>{width}}")
        paper = line.get("paper")
        lines.append(f"{str(line['set'])[:25]:<26}{line['method']:<14}" + "".join(cells)
                     + f"{_fmt(paper / 100) if paper else '':>8}")
    splits = set(compared["splits"].values())
    if len(splits) > 1:
        lines.append("note: the runs scored different splits: " + ", ".join(f"{r} {s}" for r, s in compared["splits"].items()))
    return "\n".join(lines)
