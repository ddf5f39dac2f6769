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
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, blspdata

from blspdata.report import write_report

SAMPLE = REPO / "manifests" / "sample"
CHROMIUM = "/usr/bin/chromium"
SECTIONS = ("Pipeline stages", "1. Hours and utterances", "2. Emotion labels", "3. Transcript and continuation",
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
    head = np.diag([3, 2, 2, 1, 1]).tolist()
    head = [row + [0] for row in head]
    prompt = [[0, 0, 0, 0, 0, n] for n in (3, 2, 2, 1, 1)]
    (evaluate / "ser.json").write_text(json.dumps({
        "rows": 9, "head_accuracy": 1.0, "prompt_accuracy": 0.0, "prompt_unparsed": 9,
        "confusion": {"emotion head": head, "SER prompt": prompt}}, indent=2) + "\n")
    (evaluate / "answers.jsonl").write_text(json.dumps({"id": "iemocap/test/x", "true": "sad", "answer": "hm",
                                                        "parsed": None}) + "\n")


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
