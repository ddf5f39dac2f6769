"""The run report: a run folder built with the real CLI (dry-run LLM, no training: training
output is written by hand in the trainer's format), turned into one HTML page, which a real
headless Chromium then opens: every plot must decode, every audio player must load its FLAC."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html import escape
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, blspdata

from blspdata.labels import CANONICAL
from blspdata.records import iter_jsonl
from blspdata.report import write_report
from blspdata.train.evaluate import score_answers

SAMPLE = REPO / "manifests" / "sample"
CHROMIUM = "/usr/bin/chromium"
SECTIONS = ("What you got", "Pipeline stages", "1. Hours and utterances", "2. Emotion labels", "3. Transcript and continuation",
            "4. Rejects", "5. Generation throughput", "6. Training curves", "7. Speech emotion recognition",
            "8. Sample rows")
PLOTS = 8  # corpora, emotions, lengths, rejects, throughput, stage1, stage2, confusion
TASKS = {"librispeech": "semantic", "gigaspeech": "semantic", "iemocap": "emotion", "meld": "emotion"}

# Injected into a copy of the report: once the page has loaded (and the players their
# metadata), write what Chromium made of the images and the audio into the DOM.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images], players = [...document.querySelectorAll("audio")];
  let done = false;
  const report = () => {
    if (done) return;
    done = true;
    const pre = document.createElement("pre");
    pre.id = "result";
    pre.textContent = JSON.stringify({images: images.length,
      decoded: images.filter(i => i.complete && i.naturalWidth > 0).length,
      audio: players.length, audio_loaded: players.filter(a => a.duration > 0).length});
    document.body.appendChild(pre);
  };
  Promise.all(players.map(a => a.readyState >= 1 ? null : new Promise(resolve => {
    a.addEventListener("loadedmetadata", resolve);
    a.addEventListener("error", resolve);
  }))).then(report);
  setTimeout(report, 4000);
});
</script>"""


def ingest(run: Path) -> None:
    """The committed sample manifests; MELD ingested again, since its manifest points at extracted audio."""
    (run / "manifests").mkdir(parents=True)
    for corpus in ("librispeech", "gigaspeech", "iemocap"):
        for suffix in ("jsonl", "rejects.jsonl", "summary.json"):
            shutil.copy(SAMPLE / f"{corpus}.{suffix}", run / "manifests" / f"{corpus}.{suffix}")
    blspdata("ingest", "meld", "samples/corpora/MELD.Raw", "-o", run / "manifests" / "meld.jsonl.gz",
             "--no-progress", cwd=REPO)


def write_training(run: Path) -> None:
    """metrics.jsonl and evaluate/ as `blspdata train` and `blspdata evaluate ser` write them."""
    for stage, keys in (("stage1", ("response_kl",)), ("stage2", ("response_ce", "input_er", "er_accuracy"))):
        folder = run / "train" / stage
        folder.mkdir(parents=True)
        rows = [{"step": 0, "eval": "validation", **{k: 2.0 for k in keys}}]
        rows += [{"step": s, "lr": 1e-3, "grad_norm": 1.0, **{k: 2.0 / s for k in keys}, "tokens_per_s": 50.0}
                 for s in range(1, 9)]
        rows.append({"step": 8, "eval": "validation", **{k: 0.4 for k in keys}})
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluate = run / "evaluate"
    evaluate.mkdir()
    # 9 rows: the head gets all but one happy row (as angry); the prompt answers 7 right, 2 without a label.
    truth = [0, 0, 0, 1, 1, 2, 2, 3, 4]
    head = [0, 0, 0, 1, 2, 2, 2, 3, 4]
    prompt = [0, 0, None, 1, 1, 2, 2, 3, None]
    answers = [{"id": f"iemocap/test/{i}", "true": CANONICAL[t], "answer": UNPARSED[i] if p is None
                else f"The emotion tone of the speech provided is {CANONICAL[p]}.", "parsed": None if p is None
                else CANONICAL[p]} for i, (t, p) in enumerate(zip(truth, prompt))]
    result = score_answers(truth, head, prompt, answers)
    result.update(split="test", unreadable=0, max_new_tokens=128)
    (evaluate / "ser.json").write_text(json.dumps(result, indent=2) + "\n")
    (evaluate / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))


UNPARSED = {2: "<b>Hmm</b> & I can't tell", 8: "Hard to say: $x$"}  # shown escaped, as typed


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    ingest(run)
    outputs = []
    for corpus, task in TASKS.items():
        manifest = run / "manifests" / (f"{corpus}.jsonl.gz" if corpus == "meld" else f"{corpus}.jsonl")
        out = run / "continuations" / f"{corpus}.{task}.jsonl"
        blspdata("generate", manifest, "-o", out, "--task", task, "--backend", "dry-run", "--max-new-tokens", "16",
                 "--no-progress", cwd=REPO)
        outputs.append(out)
    curated = run / "curated" / "curated.jsonl.gz"
    blspdata("curate", *outputs, "-o", curated, "--disable", "language", "--no-progress", cwd=REPO)
    blspdata("publish", curated, "-o", run / "dataset", "--no-progress", cwd=REPO)
    write_training(run)
    stages = {name: {"status": "done", "seconds": 1.5} for name in
              ("ingest", "generate", "curate", "publish", "stage1", "stage2", "evaluate")}
    (run / "run.json").write_text(json.dumps({"stages": stages}))
    return run


def chromium(*args: str, cwd: Path) -> str:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail("chromium is not installed: run `make system-deps` (apt-get install chromium)")
    result = subprocess.run(
        [CHROMIUM if Path(CHROMIUM).exists() else "chromium", "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-dev-shm-usage", "--disable-background-networking", "--no-first-run",
         f"--user-data-dir={cwd / 'profile'}", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_report_has_every_section_and_is_self_contained(run_dir: Path):
    page_path = write_report(run_dir)
    assert page_path == run_dir / "report.html"
    page = page_path.read_text()
    for heading in SECTIONS:
        assert re.search(rf"<h2>{re.escape(heading)}", page), heading
    assert "not run yet" not in page
    assert page.count('src="data:image/png;base64,') >= PLOTS
    references = re.findall(r"""\b(?:src|href|url)\s*[=(]\s*["']?([^"'\s>)]{0,5})""", page)
    assert references and set(references) == {"data:"}, "a reference to another file or server"
    assert not list(run_dir.glob(".report.html.*")), "temporary file left behind"

    players = re.findall(r'<audio controls src="data:audio/flac;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(players) == 10  # 6 emotion rows + 4 semantic rows
    for data in players:
        audio, rate = sf.read(io.BytesIO(base64.b64decode(data)))
        assert rate == 16000 and len(audio) > 0.5 * rate
    # The transcripts in the sample table come from the published dataset, escaped.
    assert "iemocap/" in page and "meld/" in page and ("librispeech/" in page or "gigaspeech/" in page)
    assert "<script" not in page


def section(page: str, title: str) -> str:
    return page.split(f"<h2>{title}</h2>", 1)[1].split("</section>", 1)[0]


def test_the_page_opens_with_what_you_got(run_dir: Path):
    page = write_report(run_dir).read_text()
    assert page.index("<h2>What you got</h2>") == page.index("<h2>")  # the first section
    summary = section(page, "What you got")

    # Rows per task kept by curate, and the share of curate's input it dropped as echoes.
    curated = run_dir / "curated" / "curated.jsonl.gz"
    kept = [row for _, row, _ in iter_jsonl(curated)]
    rejects = [row for _, row, _ in iter_jsonl(run_dir / "curated" / "curated.rejects.jsonl")]
    for task in ("semantic", "emotion"):
        n = sum(r["task"] == task for r in kept)
        into = n + sum(r["record"]["task"] == task for r in rejects)
        echoes = sum(r["record"]["task"] == task and r["reason"] == "echo" for r in rejects)
        assert n and into > n
        assert (f"<tr><td>{task}</td><td class=n>{into:,}</td><td class=n>{n:,}</td><td>{n / into:.0%}</td>"
                f"<td class=n>{echoes:,}</td><td>{echoes / into:.0%}</td></tr>") in summary, task

    # Five curated continuations per task, escaped as any text on the page.
    shown = re.findall(r"<tr><td>(semantic|emotion)</td><td>([^<]+/[^<]+)</td><td>[^<]*</td><td>([^<]*)</td>"
                       r"<td>([^<]*)</td></tr>", summary)
    by_id = {r["id"]: r for r in kept}
    assert sorted(task for task, *_ in shown) == ["emotion"] * 5 + ["semantic"] * 5
    for task, row_id, text, continuation in shown:
        assert by_id[row_id]["task"] == task
        assert (text, continuation) == (escape(by_id[row_id]["text"]), escape(by_id[row_id]["continuation"]))
    assert len({row_id.split("/")[0] for _, row_id, *_ in shown}) == 4  # spread over the four corpora

    # The SER result on the test split: head 8/9 (UA: happy 1/2, the rest 1), prompt 7/9 (UA: neutral 2/3,
    # surprise 0, the rest 1).
    assert "<tr><td>emotion head</td><td>test</td><td class=n>9</td><td class=n>0.8889</td><td class=n>0.9</td>" in summary
    assert ("<tr><td>SER prompt</td><td>test</td><td class=n>9</td><td class=n>0.7778</td><td class=n>0.7333</td>"
            in summary)
    assert "Scored on the test split" in summary


def test_the_ser_section_shows_ua_f1_recall_and_unparsed_answers(run_dir: Path):
    ser = section(write_report(run_dir).read_text(), "7. Speech emotion recognition")
    for header in ("WA", "UA", "macro-F1", "answers without a label"):
        assert f"<th>{header}</th>" in ser
    assert "<tr><td>SER prompt</td><td class=n>0.7778</td><td class=n>0.7333</td>" in ser
    # recall per label: the prompt's surprise row was unparsed (0), the head's happy half right.
    assert "<tr><td>emotion head</td><td class=n>1</td><td class=n>0.5</td><td class=n>1</td>" in ser
    assert "<td class=n>0.6667</td><td class=n>1</td><td class=n>1</td><td class=n>1</td><td class=n>0</td></tr>" in ser
    for answer in UNPARSED.values():
        assert f"<td>{escape(answer)}</td>" in ser
    assert "<b>Hmm" not in ser and "128 new tokens" in ser and "test split" in ser


def test_labels_with_dollar_signs_are_drawn_as_text(tmp_path: Path):
    """A split named like mathtext (`$\\alpha$`, or one matplotlib cannot parse) is literal text."""
    run = tmp_path / "run"
    (run / "manifests").mkdir(parents=True)
    rows = [json.loads(line) for line in (SAMPLE / "librispeech.jsonl").read_text().splitlines()[:4]]
    for row, split in zip(rows, ("$\\notacommand$", "$x$", "a<b>&c", "$")):
        row["split"] = split
    (run / "manifests" / "odd.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = write_report(run).read_text()
    corpora = section(page, "1. Hours and utterances per corpus and split")
    for split in ("$\\notacommand$", "$x$", "a&lt;b&gt;&amp;c"):
        assert f"<td>{split}</td>" in corpora, split
    assert "<b>" not in corpora and 'src="data:image/png;base64,' in corpora


def test_chromium_renders_the_plots_and_loads_the_audio(run_dir: Path, tmp_path: Path):
    page = write_report(run_dir, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,4000", page.as_uri(), cwd=tmp_path)

    import matplotlib.image

    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).astype(int)
    assert pixels.shape[:2] == (4000, 1280)
    assert (pixels.sum(-1) < 3 * 245).mean() > 0.03, "the screenshot is (nearly) blank"
    blue = (np.abs(pixels - [0x1F, 0x77, 0xB4]).max(-1) < 12).sum()  # matplotlib's first colour, bars
    assert blue > 20000, blue

    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", probed.as_uri(), cwd=tmp_path)
    found = re.search(r'<pre id="result">(.*?)</pre>', dom)
    assert found, dom[-2000:]
    result = json.loads(found.group(1))
    assert result["images"] >= PLOTS and result["decoded"] == result["images"], result
    assert result["audio"] == 10 and result["audio_loaded"] == 10, result


def test_a_run_stopped_after_ingest_says_what_has_not_run(tmp_path: Path):
    run = tmp_path / "run"
    ingest(run)
    page = write_report(run, tmp_path / "out" / "page.html").read_text()
    for heading in SECTIONS:
        assert f"<h2>{heading}" in page
    assert page.count('src="data:image/png;base64,') == 3  # corpora, emotions, ingest rejects
    assert "label_excluded" in page and "meld" in page and "dev-clean" in page
    for missing in ("Curation not run yet", "Neither generate nor curate run yet", "generate: not run yet",
                    "Generate not run yet", "stage1: not run yet", "stage2: not run yet",
                    "SER evaluation not run yet", "Publish not run yet"):
        assert missing in page, missing
    assert "<audio" not in page


def test_an_empty_folder_still_gets_a_page(tmp_path: Path):
    page = write_report(tmp_path).read_text()
    assert page.count("not run yet") >= 7 and "<img" not in page


# ---------------------------------------------------------------------------- what curate counted; cut files

def generated_row(n: int, continuation: str) -> dict:
    text = f"she put the letters on the table by the door number {n}"
    return {"id": f"c/train/{n}", "corpus": "c", "split": "train", "audio": "a.flac", "duration": 2.0,
            "text": text, "raw_text": text, "task": "semantic", "instruction": "Continue", "finished": True,
            "continuation": continuation, "generator": {"model": "m"}}


def small_curated_run(tmp_path: Path) -> Path:
    """A run folder with one curate output: 4 rows in, 2 kept, an echo and a refusal dropped."""
    run = tmp_path / "run"
    (run / "continuations").mkdir(parents=True)
    rows = [generated_row(0, "then she walked down the long hill to the harbour where the boats came in"),
            generated_row(1, "the train was late again so she read her book on the cold platform for hours"),
            generated_row(2, "She put the letters on the table by the door number 2."),
            generated_row(3, "I'm sorry, but I cannot help with that.")]
    generated = run / "continuations" / "c.semantic.jsonl"
    generated.write_text("".join(json.dumps(row) + "\n" for row in rows))
    blspdata("curate", generated, "-o", run / "curated" / "curated.jsonl.gz", "--disable", "language",
             "--no-progress", cwd=REPO)
    return run


def test_what_you_got_counts_curates_output_and_rejects_as_the_rejects_section_does(tmp_path: Path):
    run = small_curated_run(tmp_path)
    page = write_report(run).read_text()
    counted = ("<tr><td>semantic</td><td class=n>4</td><td class=n>2</td><td>50%</td>"
               "<td class=n>1</td><td>25%</td></tr>")
    assert counted in section(page, "What you got")
    rejects = section(page, "4. Rejects per stage and reason")
    assert "<tr><td>curate</td><td>echo</td><td class=n>1</td></tr>" in rejects
    assert "<tr><td>curate</td><td>refusal</td><td class=n>1</td></tr>" in rejects
    assert "2 rows, from the curated rows." in section(page, "3. Transcript and continuation lengths")

    # The page counts the files themselves: curate's stats, edited or gone, change nothing on it.
    stats_path = run / "curated" / "curated.stats.json"
    stats = json.loads(stats_path.read_text())
    stats["kept"] = 1998
    stats_path.write_text(json.dumps(stats))
    assert write_report(run).read_text() == page
    stats_path.unlink()
    assert write_report(run).read_text() == page


def test_a_cut_jsonl_gz_is_read_up_to_the_cut_with_a_note(tmp_path: Path):
    run = tmp_path / "run"
    ingest(run)
    whole = (run / "manifests" / "meld.jsonl.gz").read_bytes()
    rows = sum(1 for _ in iter_jsonl(run / "manifests" / "meld.jsonl.gz"))
    (run / "manifests" / "meld.jsonl.gz").write_bytes(whole[: len(whole) * 2 // 3])  # a copy cut short
    page = write_report(run).read_text()  # no traceback: the page is written
    notes = re.findall(r"Read in part: (\S+) is cut short or corrupt after line (\d+)", page)
    assert [path for path, _ in notes] == [escape(str(run / "manifests" / "meld.jsonl.gz"))]
    assert 0 < int(notes[0][1]) < rows
    assert page.index("Read in part") < page.index("<h2>")  # at the top, before the sections
    assert "meld" in section(page, "1. Hours and utterances per corpus and split")  # its rows before the cut count
