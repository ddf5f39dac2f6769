"""`write_report`: one self-contained HTML page about a pipeline run folder.

What it reads from RUN_DIR (any part may be missing: its section then says "not run yet"):

    run.json                              `blspdata run`'s state: {"stages": {"ingest": {"status", "seconds", "units"}}}
    manifests/<name>.jsonl.gz             ingest output; <name>.rejects.jsonl beside it
    continuations/<name>.<task>.jsonl     generate output; .rejects.jsonl and .summary.json beside it
    curated/curated.jsonl.gz              curate output; curated.rejects.jsonl beside it
    dataset/{semantic,emotion}/           publish output (arrow); dataset.rejects.jsonl beside dataset/
    train/stage{1,2}/metrics.jsonl        one row per optimizer step; rows with "eval" are held-out
    evaluate/ser.json, confusion.png      `blspdata evaluate ser`

The page opens with "What you got": rows per task kept by curate, the share of echoes
(continuations curate dropped as `echo`), five curated continuations per task, and the SER
figures (WA, UA) of the emotion head and the SER prompt, with the split they were scored on.

Each JSONL file is read once per page (`tally`), into counts the sections draw from: one pass
over the curated rows serves "What you got", the emotion and the length sections; one over each
rejects file serves the rejects section and, for curate's, the echo share.

Plots are matplotlib PNGs and audio is the published FLAC, both inlined as base64 data URIs:
the page references no other file, script or server, so it can be mailed or attached as is.
Every text is HTML-escaped, and matplotlib draws every label as literal text (no mathtext:
a split named `$x$` stays `$x$`).
"""

from __future__ import annotations

import base64
import io
import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from blspdata.labels import CANONICAL
from blspdata.layout import RunLayout
from blspdata.records import UnreadableFile, atomic_path, iter_jsonl, sidecar
from blspdata.rejects import family

TRAIN_KEYS = ("response_kl", "response_ce", "input_er", "er_accuracy")
SAMPLES = (("emotion", 6), ("semantic", 4))   # published config, rows shown from it
SUMMARY_SAMPLES = 5                            # curated continuations per task in "What you got"
CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;
vertical-align:top;max-width:24em;overflow-wrap:break-word}th{background:#f3f3f3}td.n{text-align:right}.note{color:#777;font-style:italic}
img{max-width:100%;display:block;margin:.5em 0}section{margin-bottom:2.5em}"""


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the report of the run in `run_dir` to `out` [run_dir/report.html], atomically."""
    run_dir = Path(run_dir)
    run = RunLayout(run_dir)
    out = Path(out) if out else run.report
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):  # labels are literal text
        page = _page(run)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out


def _page(run: RunLayout) -> str:
    counts = tally(run)
    sections = [
        ("What you got", summary_section(counts, run.evaluate)),
        ("Pipeline stages", stages_section(run.state)),
        ("1. Hours and utterances per corpus and split", corpus_section(counts)),
        ("2. Emotion labels before and after curation", emotion_section(counts)),
        ("3. Transcript and continuation lengths", length_section(counts)),
        ("4. Rejects per stage and reason", rejects_section(counts)),
        ("5. Generation throughput", throughput_section(counts.continuations)),
        ("6. Training curves", training_section(run, counts.cut)),
        ("7. Speech emotion recognition", ser_section(run.evaluate)),
        ("8. Sample rows", samples_section(run.dataset)),
    ]
    body = "\n".join(f"<section><h2>{escape(title)}</h2>\n{content}</section>" for title, content in sections)
    cut = "".join(_note(f"Read in part: {path} is cut short or corrupt after line {line:,}; the sections count "
                        "its rows up to there.") for path, line in sorted(counts.cut.items()))
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>blspdata run {escape(run.root.name)}"
            f"</title><style>{CSS}</style></head><body>\n<h1>blspdata run: {escape(str(run.root))}</h1>\n"
            f"{cut}{body}\n</body></html>\n")


# ---------------------------------------------------------------------------- reading the run folder

def _outputs(folder: Path) -> list[Path]:
    """A stage's outputs in `folder`: its .jsonl(.gz) files, not their rejects sidecars."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz"))
                  and not p.name.endswith(".rejects.jsonl") and not p.name.startswith("."))


def _rows(paths: Iterable[Path], cut: dict[str, int]) -> Iterable[dict[str, Any]]:
    """The rows of several JSONL(.gz) files, streamed; malformed lines are skipped, and so is
    the rest of a .gz file cut short (noted in `cut`, path -> the last line read whole, which
    the page names at its top): a report shows what is there."""
    for path in paths:
        line = 0
        try:
            for line, row, _ in iter_jsonl(path):
                if row is not None:
                    yield row
        except UnreadableFile:
            cut[str(path)] = line


@dataclass
class Tally:
    """What the sections show of the run's JSONL files, counted by `tally` in one pass over
    each: no section reads rows itself."""
    manifests: list[Path]       # the stages' outputs (none: that stage has not run)
    continuations: list[Path]
    curated: list[Path]
    cut: dict[str, int] = field(default_factory=dict)  # a .jsonl.gz read only in part -> the last line read whole
    # (corpus, split) -> [manifest rows, hours]
    hours: defaultdict = field(default_factory=lambda: defaultdict(lambda: [0, 0.0]))
    emotions_before: Counter = field(default_factory=Counter)  # label -> manifest rows
    emotions_after: Counter = field(default_factory=Counter)   # label -> curated rows
    kept: Counter = field(default_factory=Counter)     # task -> curated rows
    dropped: Counter = field(default_factory=Counter)  # task -> rows in curate's rejects
    echoes: Counter = field(default_factory=Counter)   # task -> of those, dropped as `echo`
    # task -> (corpus, emotion) -> at most SUMMARY_SAMPLES of the shown rows, in file order
    samples: defaultdict = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    transcript_words: Counter = field(default_factory=Counter)    # words -> shown rows
    continuation_words: Counter = field(default_factory=Counter)
    rejects: Counter = field(default_factory=Counter)  # (stage, reason family) -> rows
    rejects_files: dict[str, list[Path]] = field(default_factory=dict)  # stage -> its rejects files

    @property
    def shown(self) -> list[Path]:
        """The continuations the samples and the lengths are drawn from: curate's, or generate's
        before curate has run."""
        return self.curated or self.continuations


def tally(run: RunLayout) -> Tally:
    """Read the run's manifests, its curated rows (generated ones before curate has run) and
    every rejects file once each, into the counts the sections draw from."""
    counts = Tally(_outputs(run.manifests), _outputs(run.continuations), _outputs(run.curated_dir))
    for row in _rows(counts.manifests, counts.cut):
        entry = counts.hours[(str(row.get("corpus")), str(row.get("split")))]
        entry[0] += 1
        entry[1] += float(row.get("duration") or 0) / 3600
        if row.get("emotion"):
            counts.emotions_before[row["emotion"]] += 1
    for row in _rows(counts.shown, counts.cut):
        task = str(row.get("task") or "unknown")
        group = counts.samples[task][(row.get("corpus"), row.get("emotion"))]
        if len(group) < SUMMARY_SAMPLES:
            group.append(row)
        counts.transcript_words[_words(row.get("text"))] += 1
        counts.continuation_words[_words(row.get("continuation"))] += 1
        if counts.curated:
            counts.kept[task] += 1
            if row.get("emotion"):
                counts.emotions_after[row["emotion"]] += 1
    curates = {sidecar(path, "rejects.jsonl") for path in counts.curated}  # their rows carry the record, its task
    # Publish's rejects are named after its folder (dataset.rejects.jsonl), the others after each output.
    places = {"ingest": run.manifests, "generate": run.continuations, "curate": run.curated_dir,
              "publish": run.dataset_rejects}
    for stage, place in places.items():
        files = sorted(place.glob("*.rejects.jsonl")) if place.is_dir() else [place] if place.is_file() else []
        counts.rejects_files[stage] = files
        for path in files:
            for row in _rows([path], counts.cut):
                reason = str(row.get("reason", "unknown"))
                # near_duplicate_of:<id> counted as near_duplicate, as curate's stats do (rejects.family).
                counts.rejects[(stage, family(reason))] += 1
                if path in curates:
                    record = row.get("record")  # a malformed row's is its line, or none
                    task = str((record if isinstance(record, dict) else {}).get("task") or "unknown")
                    counts.dropped[task] += 1
                    counts.echoes[task] += reason == "echo"
    return counts


def _load_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`; None when it is absent, unreadable or not an object (a list, a
    number): that part of the report is left out with `_missing`'s note, not a crash."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _missing(path: Path, name: str, what: str) -> str:
    """The note for a JSON file `_load_json` returned None for: absent, or there but unusable."""
    if path.exists():
        return _note(f"{name} is not a readable JSON object (written by another tool, or damaged): {what}.")
    return _note(f"No {name}: {what}.")


def _words(text: Any) -> int:
    return len(str(text or "").split())


# ---------------------------------------------------------------------------- HTML and plots

def _note(text: str) -> str:
    return f"<p class=note>{escape(text)}</p>\n"


class _Html(str):
    """Markup that a table cell must not escape (an audio player)."""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"<td class=n>{value:,.4g}</td>" if abs(value) < 1000 else f"<td class=n>{value:,.0f}</td>"
    if isinstance(value, int):
        return f"<td class=n>{value:,}</td>"
    return f"<td>{value}</td>" if isinstance(value, _Html) else f"<td>{escape('' if value is None else str(value))}</td>"


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>\n" for row in rows)
    return f"<table><tr>{head}</tr>\n{body}</table>\n"


def _figure(columns: int = 1, width: float = 9.0, height: float = 3.4) -> tuple[Figure, list]:
    """A figure on the Agg canvas (no pyplot: nothing global changes, nothing to close)."""
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure, list(figure.subplots(1, columns, squeeze=False)[0])


def _img(figure: Figure, alt: str) -> str:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">\n'


def _bars(axis, labels: list[str], series: dict[str, list[float]], ylabel: str) -> None:
    """Grouped vertical bars: one group per label, one bar per series."""
    width = 0.8 / max(1, len(series))
    for index, (name, values) in enumerate(series.items()):
        axis.bar([i + (index - (len(series) - 1) / 2) * width for i in range(len(labels))], values, width, label=name)
    axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    axis.set_ylabel(ylabel)
    if len(series) > 1:
        axis.legend()


# ---------------------------------------------------------------------------- sections

def summary_section(counts: Tally, evaluate_dir: Path) -> str:
    """What a user came for: the data kept, what it reads like, and what the model learnt."""
    return _kept_summary(counts) + _continuation_summary(counts) + _ser_summary(evaluate_dir)


def _kept_summary(counts: Tally) -> str:
    if not counts.curated:
        return _note("Curate not run yet: no rows kept per task, no echo share.")
    kept, dropped, echoes = Counter(counts.kept), Counter(counts.dropped), Counter(counts.echoes)
    tasks = sorted(set(kept) | set(dropped), key=lambda t: ({"semantic": 0, "emotion": 1}.get(t, 2), t))
    if len(tasks) > 1:
        tasks.append("all")
        for counter in (kept, dropped, echoes):
            counter["all"] = sum(counter.values())
    rows = [(task, kept[task] + dropped[task], kept[task], _share(kept[task], kept[task] + dropped[task]),
             echoes[task], _share(echoes[task], kept[task] + dropped[task])) for task in tasks]
    return (_table(("task", "rows into curate", "kept", "kept share", "echoes", "echo share"), rows)
            + _note("Echoes: continuations curate dropped with reason echo (mostly the transcript repeated). "
                    "A run with the echo filter disabled has none."))


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def _continuation_summary(counts: Tally) -> str:
    if not counts.shown:
        return _note("Neither generate nor curate run yet: no continuations.")
    held = counts.samples
    table = []
    for task in sorted(held, key=lambda t: ({"semantic": 0, "emotion": 1}.get(t, 2), t)):
        candidates = [row for group in held[task].values() for row in group]
        picked = _spread([r.get("corpus") for r in candidates], [r.get("emotion") for r in candidates],
                         SUMMARY_SAMPLES)
        table += [(task, r.get("id"), r.get("emotion") or "", r.get("text"), r.get("continuation"))
                  for r in (candidates[i] for i in picked)]
    source = "curated rows" if counts.curated else "generated continuations (curation not run yet)"
    return (f"<h3>{SUMMARY_SAMPLES} continuations per task, from the {escape(source)}</h3>\n"
            + _table(("task", "id", "emotion", "transcript", "continuation"), table))


def _ser_summary(evaluate_dir: Path) -> str:
    result = _load_json(evaluate_dir / "ser.json")
    if result is None:
        return _missing(evaluate_dir / "ser.json", "evaluate/ser.json", "SER evaluation not run yet, or not shown")
    split = result.get("split")
    rows = [(name, split or "(not recorded)", m.get("rows"), m.get("wa"), m.get("ua"))
            for name, m in _ser_metrics(result).items()]
    if split == "test":
        where = "Scored on the test split (held out from training)."
    else:
        where = (f"Scored on the {split} split, not the test split: not a held-out result." if split
                 else "ser.json does not say which split was scored.")
    return ("<h3>Speech emotion recognition</h3>\n" + _table(("method", "split", "rows", "WA", "UA"), rows)
            + _note(f"{where} WA: accuracy; UA: mean recall per label (a constant answer scores 1 / labels, "
                    f"{1 / len(CANONICAL):.0%} with all {len(CANONICAL)} present). Details in section 7."))


def stages_section(run_json: Path) -> str:
    state = _load_json(run_json)
    if state is None:
        return _missing(run_json, "run.json", "stage status unknown")
    stages = state.get("stages") or {}
    if not isinstance(stages, dict) or not stages:
        return _note("run.json records no stages: stage status unknown.")
    from blspdata.pipeline import STAGES

    order = sorted(stages, key=lambda name: STAGES.index(name) if name in STAGES else len(STAGES))
    rows = [(name, stages[name].get("status", ""), stages[name].get("units", 1), stages[name].get("seconds"))
            for name in order if isinstance(stages[name], dict)]
    return _table(("stage", "status", "units", "seconds"), rows)


def corpus_section(counts: Tally) -> str:
    if not counts.manifests:
        return _note("Ingest not run yet (no manifests/).")
    hours = counts.hours
    keys = sorted(hours)
    table = _table(("corpus", "split", "utterances", "hours"), [(*k, hours[k][0], hours[k][1]) for k in keys])
    figure, (left, right) = _figure(2)
    labels = [f"{c}/{s}" for c, s in keys]
    _bars(left, labels, {"utterances": [hours[k][0] for k in keys]}, "utterances")
    _bars(right, labels, {"hours": [hours[k][1] for k in keys]}, "hours")
    return table + _img(figure, "utterances and hours per corpus and split")


def emotion_section(counts: Tally) -> str:
    if not counts.manifests:
        return _note("Ingest not run yet (no manifests/).")
    curated = bool(counts.curated)
    series = {"manifests (before)": counts.emotions_before}
    if curated:
        series["curated (after)"] = counts.emotions_after
    labels = list(CANONICAL) + sorted(set().union(*series.values()) - set(CANONICAL))
    table = _table(("emotion", *series), [(label, *(c[label] for c in series.values())) for label in labels])
    figure, (axis,) = _figure(height=3.2)
    _bars(axis, labels, {name: [c[label] for label in labels] for name, c in series.items()}, "utterances")
    note = "" if curated else _note("Curation not run yet: only the manifests are shown.")
    return note + table + _img(figure, "emotion labels before and after curation")


def length_section(counts: Tally) -> str:
    if not counts.shown:
        return _note("Neither generate nor curate run yet: no continuations.")
    rows = sum(counts.transcript_words.values())
    if not rows:
        return _note("No rows in the continuations.")
    figure, axes = _figure(2)
    for axis, words, name in zip(axes, (counts.transcript_words, counts.continuation_words),
                                 ("transcript", "continuation")):
        longest = max(words)
        step = max(1, -(-(longest + 1) // 40))  # whole words per bin, at most 40 bins
        axis.hist(list(words), weights=list(words.values()), bins=range(0, longest + step + 1, step),
                  align="left", rwidth=0.9)
        axis.set_xlabel(f"{name} words")
        axis.set_ylabel("rows")
    source = "curated rows" if counts.curated else "continuations (curation not run yet)"
    return (_note(f"{rows} rows, from the {source}.")
            + _img(figure, "transcript and continuation length histograms"))


def rejects_section(tallied: Tally) -> str:
    counts, stages = tallied.rejects, list(tallied.rejects_files)
    notes = [f"{stage}: " + ("no rejects." if files else "not run yet (no rejects file).")
             for stage, files in tallied.rejects_files.items()
             if not any(n for (s, _), n in counts.items() if s == stage)]
    if not counts:
        return "".join(_note(n) for n in notes) + _note("No rejects.")
    keys = sorted(counts, key=lambda k: (stages.index(k[0]), -counts[k]))
    figure, (axis,) = _figure(height=max(2.0, 0.3 * len(keys) + 1))
    axis.barh([f"{s}: {r}" for s, r in keys][::-1], [counts[k] for k in keys][::-1])
    axis.set_xlabel("rejected rows")
    return ("".join(_note(n) for n in notes) + _table(("stage", "reason", "rows"), [(*k, counts[k]) for k in keys])
            + _img(figure, "rejects per stage and reason"))


def throughput_section(continuations: list[Path]) -> str:
    summaries = [(p, s) for p in continuations if (s := _load_json(sidecar(p, "summary.json")))]
    unusable = [sidecar(p, "summary.json").name for p in continuations
                if sidecar(p, "summary.json").exists() and p not in dict(summaries)]
    skipped = _note("Left out, not a readable JSON object: " + ", ".join(unusable) + ".") if unusable else ""
    if not summaries:
        return skipped or _note("Generate not run yet (no continuations/*.summary.json).")
    rows = [(p.name, s.get("written"), s.get("already_done"), s.get("finished"), s.get("output_tokens"),
             s.get("seconds"), s.get("output_tokens_per_s"), s.get("rejected")) for p, s in summaries]
    table = _table(("file", "written", "already done", "finished", "output tokens", "seconds", "tokens/s",
                    "rejected"), rows)
    figure, (axis,) = _figure(height=3.0)
    _bars(axis, [p.name for p, _ in summaries], {"tokens/s": [s.get("output_tokens_per_s") or 0 for _, s in summaries]},
          "output tokens/s")
    return (table + _note("Written, seconds and tokens/s are those of the last invocation (a resumed run "
                          "counts the earlier rows as already done).") + skipped + _img(figure, "generation throughput"))


def training_section(run: RunLayout, cut: dict[str, int]) -> str:
    """`cut`: where `_rows` notes a metrics file it could read only in part, for the page's top."""
    parts = []
    for stage in ("stage1", "stage2"):
        metrics = run.metrics(stage)
        rows = list(_rows([metrics], cut)) if metrics.is_file() else []
        if not rows:
            parts.append(_note(f"{stage}: not run yet (no train/{stage}/metrics.jsonl)."))
            continue
        steps = [r for r in rows if "eval" not in r]
        evals = [r for r in rows if "eval" in r]
        keys = [k for k in TRAIN_KEYS if any(k in r for r in rows)]
        figure, axes = _figure(max(1, len(keys)), width=4.0 * max(1, len(keys)), height=3.0)
        for axis, key in zip(axes, keys):
            axis.plot([r["step"] for r in steps if key in r], [r[key] for r in steps if key in r], label="train")
            for split, group in itertools.groupby(sorted(evals, key=lambda r: r["eval"]), key=lambda r: r["eval"]):
                group = [r for r in group if key in r]
                axis.plot([r["step"] for r in group], [r[key] for r in group], "o", color="C3", label=f"eval: {split}")
            axis.set_title(key)
            axis.set_xlabel("step")
            axis.legend()
        parts.append(f"<h3>{stage}</h3>\n" + _note(f"{len(steps)} optimizer steps, {len(evals)} evaluations.")
                     + _img(figure, f"{stage} training curves"))
    return "".join(parts)


def ser_section(evaluate_dir: Path) -> str:
    result = _load_json(evaluate_dir / "ser.json")
    if result is None:
        return _missing(evaluate_dir / "ser.json", "evaluate/ser.json", "SER evaluation not run yet, or not shown")
    metrics = _ser_metrics(result)
    tokens = result.get("max_new_tokens")
    parts = [_note(f"{result.get('rows')} rows of the {result.get('split') or '(not recorded)'} split"
                   + (f"; the SER prompt's answers had up to {tokens} new tokens" if tokens else "")
                   + ". WA: accuracy; UA: mean recall over the labels present; unparsed answers count as wrong.")]
    if result.get("parse_rule"):
        parts.append(_note(f"The SER prompt's label is read from its answer by this rule: {result['parse_rule']}"))
    if metrics:
        parts.append(_table(("method", "WA", "UA", "macro-F1", "answers without a label"),
                            [(name, m["wa"], m["ua"], m["macro_f1"], m["unparsed"]) for name, m in metrics.items()]))
        parts.append(_table(("recall", *CANONICAL),
                            [(name, *("-" if m["recall"].get(c) is None else m["recall"][c] for c in CANONICAL))
                             for name, m in metrics.items()]))
    parts.append(_ser_sets(result.get("sets")))
    matrices = result.get("confusion") or {}
    png = evaluate_dir / "confusion.png"
    if matrices:
        parts.append(_img(_confusion_figure(matrices), "SER confusion matrices"))
    elif png.is_file():
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f'<img alt="SER confusion matrices" src="data:image/png;base64,{data}">\n')
    else:
        parts.append(_note("No confusion matrix in ser.json."))
    examples = result.get("unparsed_examples") or []
    if examples:
        parts.append("<h3>SER prompt answers without a label (examples)</h3>\n"
                     + _table(("id", "true label", "answer"),
                              [(e.get("id"), e.get("true"), e.get("answer")) for e in examples]))
    parts.append(_empathy(evaluate_dir / "empathy.json"))
    return "".join(parts)


def _empathy(path: Path) -> str:
    """`evaluate empathy -o RUN/evaluate`'s empathy.json, when there is one: the judge's means."""
    result = _load_json(path)
    if not isinstance(result, dict) or not isinstance(result.get("mean"), dict):
        return ""
    paper = result.get("paper") or {}
    rows = [("all", result["mean"].get("rows"), result["mean"].get("quality"), result["mean"].get("empathy"))]
    rows += [(e, m.get("rows"), m.get("quality"), m.get("empathy")) for e, m in (result.get("per_emotion") or {}).items()]
    if paper.get("quality"):
        rows.append(("paper (SpeechAlpaca, GPT-4)", "", paper["quality"], paper.get("empathy")))
    judge = result.get("judge") or {}
    rejected = result.get("rejected") or {}
    return ("<h3>Empathy (LLM judge, 1-10)</h3>\n" + _table(("emotion", "rows judged", "quality", "empathy"), rows)
            + _note(f"Judge {judge.get('model') or judge.get('base_url')}, prompt {judge.get('prompt')} (ours: the paper's "
                    "is not published). Not scored, in no mean: "
                    + (", ".join(f"{k} {n}" for k, n in rejected.items()) if rejected else "none") + "."))


def _ser_sets(sets: Any) -> str:
    """ser.json's `sets` (one per corpus of each dataset scored): the table, the paper's figure
    beside the SER prompt's WA, what was not scored, and each set's confusion matrices."""
    from blspdata.train.evaluate import excluded_note  # numpy only, no torch

    if not isinstance(sets, list) or not sets:
        return ""
    rows = []
    for entry in sets:
        paper = entry.get("paper") or {}
        for number, (method, m) in enumerate((entry.get("metrics") or {}).items()):
            rows.append((entry.get("name") if not number else "", entry.get("rows") if not number else "", method,
                         m.get("wa"), m.get("ua"), m.get("macro_f1"), m.get("unparsed"),
                         f"{paper['accuracy']:.1f}% ({paper.get('test', '')})" if paper and method == "SER prompt" else "",
                         excluded_note(entry.get("excluded") or {}) if not number else ""))
    parts = ["<h3>Per test set</h3>\n", _table(("test set", "rows", "method", "WA", "UA", "macro-F1", "unparsed",
                                                "paper (accuracy)", "not scored"), rows)]
    source = next((e["paper"].get("source") for e in sets if e.get("paper")), None)
    if source:
        parts.append(_note(f"The paper's figures: {source} (blspdata/evaluate_paper.toml); compare them with "
                           "the SER prompt's WA."))
    if len(sets) > 1:
        matrices = {f"{e.get('name')}: {method}": m["confusion"] for e in sets
                    for method, m in (e.get("metrics") or {}).items() if m.get("confusion")}
        if matrices:
            parts.append(_img(_confusion_figure(matrices), "SER confusion matrices per test set"))
    return "".join(parts)


def _ser_metrics(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per method: WA, UA, macro-F1, recall, unparsed; from the confusion matrices when ser.json
    predates its "metrics"."""
    from blspdata.train.evaluate import scores_of  # numpy only, no torch

    if isinstance(result.get("metrics"), dict):
        return {name: m for name, m in result["metrics"].items() if isinstance(m, dict)}
    return {name: scores_of(matrix) for name, matrix in (result.get("confusion") or {}).items()}


def _confusion_figure(matrices: dict[str, list[list[int]]]) -> Figure:
    """Rows: true label; columns: predicted label, then 'unparsed' (as evaluate.confusion)."""
    figure, axes = _figure(len(matrices), width=5.0 * len(matrices), height=4.4)
    for axis, (title, matrix) in zip(axes, matrices.items()):
        peak = max((n for row in matrix for n in row), default=0)
        axis.imshow(matrix, cmap="Blues", vmin=0)
        columns = list(CANONICAL) + ["unparsed"]
        axis.set_xticks(range(len(matrix[0])), columns[: len(matrix[0])], rotation=45, ha="right")
        axis.set_yticks(range(len(matrix)), list(CANONICAL)[: len(matrix)])
        axis.set(xlabel="predicted", ylabel="true", title=title)
        for (i, row), j in itertools.product(enumerate(matrix), range(len(matrix[0]))):
            axis.text(j, i, str(row[j]), ha="center", va="center", color="white" if row[j] > peak / 2 else "black")
    return figure


def samples_section(dataset_dir: Path) -> str:
    if not dataset_dir.is_dir():
        return _note("Publish not run yet (no dataset/).")
    if not any((dataset_dir / config).is_dir() for config, _ in SAMPLES):
        return _note("dataset/ is not in the arrow layout (published with --format parquet?): no samples shown.")
    rows = [(config, split, row["id"], row["text"], label, row["continuation"], _player(row["audio"]))
            for config, limit in SAMPLES for split, row, label in _sample_rows(dataset_dir / config, limit)]
    return _table(("config", "split", "id", "transcript", "emotion", "continuation", "audio"), rows)


def _sample_rows(folder: Path, limit: int) -> Iterable[tuple[str, dict, str]]:
    """Up to `limit` rows of the first non-empty split, spread over corpora and emotions."""
    import datasets

    if not folder.is_dir():
        return
    splits = datasets.load_from_disk(str(folder))
    split = next((s for s in ("train", "validation", "test") if s in splits and len(splits[s])), None)
    if split is None:
        return
    rows = splits[split]
    if isinstance(rows.features["audio"], datasets.Audio):  # raw FLAC bytes: decoding would need torchcodec
        rows = rows.cast_column("audio", datasets.Audio(decode=False))
    labels = rows.features["emotion"]
    for index in _spread(rows["corpus"], rows["emotion"], limit):
        row = rows[index]
        label = labels.int2str(row["emotion"]) if isinstance(row["emotion"], int) and row["emotion"] >= 0 else ""
        yield split, row, label


def _spread(corpora: list, emotions: list, limit: int) -> list[int]:
    """Indices of up to `limit` rows, taking turns between corpora and, within one, between emotions."""
    groups: dict[Any, dict[Any, list[int]]] = defaultdict(lambda: defaultdict(list))
    for index, (corpus, emotion) in enumerate(zip(corpora, emotions)):
        groups[corpus][emotion].append(index)
    per_corpus = [list(_turns(by_emotion.values())) for by_emotion in groups.values()]
    return sorted(itertools.islice(_turns(per_corpus), limit))


def _turns(lists: Iterable[list[int]]) -> Iterable[int]:
    """[[1, 2, 3], [7]] -> 1, 7, 2, 3."""
    return (i for group in itertools.zip_longest(*lists) for i in group if i is not None)


def _player(audio: Any) -> _Html | str:
    """An <audio> element carrying the embedded bytes, or why there is none."""
    data = audio.get("bytes") if isinstance(audio, dict) else None
    if not data:
        return "(not embedded: published with --audio path)"
    kind = "wav" if data[:4] == b"RIFF" else "ogg" if data[:4] == b"OggS" else "flac"
    encoded = base64.b64encode(data).decode("ascii")
    return _Html(f'<audio controls src="data:audio/{kind};base64,{encoded}"></audio>')
