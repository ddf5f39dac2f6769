"""Benchmark: every stage's wall time and peak memory at 100 k and 1 M records (issue 14).

For each size, synthetic rows are made on the fly in a temporary folder (under `--workdir`,
removed at the end): a corpus JSONL whose rows point at 64 real one-second 16 kHz FLAC files
(ids, speakers and 8-30-word transcripts from a 3,000-word vocabulary, deterministic in the
seed), then the stages run one after the other on each other's outputs, each as its own
`blspdata ...` process:

    ingest    blspdata ingest jsonl CORPUS --id-col id --speaker-col speaker -j 1
    generate  blspdata generate MANIFEST --backend dry-run (the framework only, no model)
    resume    the same command again on the finished OUT: the resume scan, nothing to do
    merge     blspdata merge OUT --manifest MANIFEST (one part, in manifest order)
    curate    blspdata curate MERGED (defaults)
    publish   blspdata publish CURATED --audio path -j 1
    train     the trainer's start-up scan (blspdata.train.data.usable) on the published
              dataset, with the demo models (random tiny Whisper + SmolLM2 tokenizer) when
              bench-out/models holds them (`python -m blspdata.train.demo_models bench-out/models`);
              only up to `--train-max` rows (1 M by default: batched tokenizer calls, ~5 min at 1 M here)

Wall time is the process's, start-up included; peak RSS is the largest resident set of the
process and of any worker it waited for (os.wait4's ru_maxrss). The table gives, per stage,
both sizes, the memory each extra row costs ((peak at 1 M - peak at 100 k) / 900 k rows) and
the ratio of the two peaks: flat memory is a ratio near 1, memory that grows with the corpus
is near 10. One run each on a shared machine: numbers, not assertions.

Run:  .venv/bin/python bench/scale.py                   # 100 k and 1 M
      .venv/bin/python bench/scale.py --sizes 10000     # a quick look
      .venv/bin/python bench/scale.py --ten-million     # adds 10 M (needs ~40 GB of disk, hours)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "bench-out" / "models"
STAGES = ("ingest", "generate", "resume", "merge", "curate", "publish", "train")


def make_corpus(folder: Path, rows: int, seed: int) -> Path:
    """`folder/corpus.jsonl` (+ 64 FLACs in folder/audio) for `blspdata ingest jsonl`."""
    import numpy as np
    import orjson
    import soundfile as sf

    audio = folder / "audio"
    audio.mkdir(parents=True)
    t = np.arange(16000) / 16000
    for k in range(64):
        sf.write(audio / f"{k}.flac", (0.1 * np.sin(2 * np.pi * (200 + 10 * k) * t)).astype(np.float32), 16000)
    # Vectorised (numpy draws a chunk's lengths and words at once): 10 M rows in minutes, not the
    # half hour a Python draw per row took. Zipf-like weights over a 3,000-word vocabulary.
    rng = np.random.default_rng(seed)
    vocabulary = [f"w{i}" for i in range(3000)]
    weights = 1 / np.arange(1, 3001)
    weights /= weights.sum()
    path = folder / "corpus.jsonl"
    with open(path, "wb") as handle:
        for start in range(0, rows, 100_000):
            ids = range(start, min(rows, start + 100_000))
            lengths = rng.integers(8, 31, size=len(ids))
            words = [vocabulary[w] for w in rng.choice(3000, size=int(lengths.sum()), p=weights)]
            ends = np.cumsum(lengths).tolist()
            handle.write(b"".join(
                orjson.dumps({"id": f"u{i:08d}", "audio": f"audio/{i % 64}.flac",
                              "text": " ".join(words[end - n:end]), "speaker": f"s{i % 500}"}) + b"\n"
                for i, n, end in zip(ids, lengths.tolist(), ends)))
    return path


def make_manifest(folder: Path, corpus: Path) -> Path:
    """What `ingest jsonl` makes of `corpus` (for a run that leaves ingest out)."""
    import orjson

    from blspdata.records import Record

    path = folder / "manifest.jsonl"
    with open(corpus, "rb") as source, open(path, "wb") as target:
        for line in source:
            row = orjson.loads(line)
            record = Record(id=f"synthetic/train/{row['id']}", corpus="synthetic", split="train",
                            audio=str(folder / row["audio"]), duration=1.0, sample_rate=16000, text=row["text"],
                            raw_text=row["text"], speaker=row["speaker"])
            target.write(orjson.dumps(record.to_dict()) + b"\n")
    return path


def make_generated(folder: Path, manifest: Path, generate: list[str]) -> Path:
    """A finished `generate --backend dry-run` OUT for `manifest` (for a run that leaves generate
    out): the real command on the first row gives the generator and the shape of a row."""
    import orjson

    from blspdata.generate.backends import dry_run_text

    one = folder / "one.jsonl"
    with open(manifest, "rb") as source:
        one.write_bytes(source.readline())
    probe = folder / "probe.jsonl"
    command = [c if c != str(manifest) else str(one) for c in generate]
    subprocess.run([*command[:command.index("-o") + 1], str(probe), *command[command.index("-o") + 2:]], cwd=REPO,
                   check=True, capture_output=True)
    model = orjson.loads(probe.read_bytes().splitlines()[0])
    prefix = model["instruction"][: len(model["instruction"]) - len(model["text"])]
    max_new_tokens = model["generator"]["sampling"]["max_new_tokens"]
    path = folder / "gen.jsonl"
    with open(manifest, "rb") as source, open(path, "wb") as target:
        for line in source:
            row = orjson.loads(line)
            # What the dry-run backend writes. (The transcript's words reversed, as before, are all
            # echoes: curate rejected every row, and curate and publish measured almost nothing.)
            instruction = prefix + row["text"]
            continuation, n = dry_run_text(instruction, max_new_tokens)
            row.update(task=model["task"], instruction=instruction, continuation=continuation,
                       finished=n < max_new_tokens, generator=model["generator"])
            target.write(orjson.dumps(row) + b"\n")
    return path


TRAIN_SCAN = """
import sys, time
from blspdata.train.config import TrainConfig
from blspdata.train.data import load_rows, usable
from blspdata.train.model import BLSPModel, ModelConfig
model = BLSPModel(ModelConfig(encoder=sys.argv[2], llm=sys.argv[3], lora=True))
cfg = TrainConfig.for_stage("stage1", data=sys.argv[1], audio_root=sys.argv[4])
start = time.perf_counter()
keep, skipped = usable(load_rows(cfg.data), model, cfg)
print(f"usable {len(keep)} skipped {dict(skipped)} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
"""


def measure(command: list[str], log: Path) -> dict:
    """Run one stage; its wall seconds and peak RSS (bytes), or its failure."""
    env = dict(os.environ, TQDM_DISABLE="1")
    start = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        return {"error": f"exit {code}: " + " | ".join(tail)}
    return {"seconds": round(wall, 1), "peak": usage.ru_maxrss * 1024}


def run_size(rows: int, workdir: Path, seed: int, keep: bool, train_max: int, stages: list[str],
             partial: Path | None = None) -> dict[str, dict]:
    folder = Path(tempfile.mkdtemp(prefix=f"scale-{rows}-", dir=workdir))
    cli = [sys.executable, "-m", "blspdata"]
    results: dict[str, dict] = {}
    try:
        began = time.perf_counter()
        corpus = make_corpus(folder, rows, seed)
        print(f"{rows:,} rows: corpus made in {time.perf_counter() - began:.0f} s ({folder})", flush=True)
        manifest, out, merged = folder / "manifest.jsonl", folder / "gen.jsonl", folder / "merged.jsonl"
        curated, dataset = folder / "curated.jsonl", folder / "dataset"
        generate = [*cli, "generate", str(manifest), "-o", str(out), "--backend", "dry-run", "--no-progress"]
        commands = {
            "ingest": [*cli, "ingest", "jsonl", str(corpus), "-o", str(manifest), "--id-col", "id",
                       "--speaker-col", "speaker", "--corpus", "synthetic", "-j", "1", "--no-progress"],
            "generate": generate,
            "resume": generate,
            "merge": [*cli, "merge", str(out), "-o", str(merged), "--manifest", str(manifest)],
            "curate": [*cli, "curate", str(merged), "-o", str(curated), "--no-progress"],
            "publish": [*cli, "publish", str(curated), "-o", str(dataset), "--audio", "path", "--audio-root",
                        str(folder), "-j", "1", "--no-progress"],
        }
        if rows > train_max:
            results["train"] = {"error": f"skipped (over --train-max {train_max:,})"}
        elif all((MODELS / name / "config.json").exists() for name in ("tiny-whisper", "smollm2")):
            commands["train"] = [sys.executable, "-c", TRAIN_SCAN, str(dataset / "semantic"),
                                 str(MODELS / "tiny-whisper"), str(MODELS / "smollm2"), str(folder)]
        last = max(STAGES.index(stage) for stage in stages)
        for stage in STAGES[:last + 1]:  # nothing made for the stages after the last one asked for
            if stage not in stages:
                results.setdefault(stage, {"error": "not run (--stages)"})
                if stage == "ingest":
                    make_manifest(folder, corpus)
                elif stage == "generate":
                    make_generated(folder, manifest, generate)
                elif stage == "merge":
                    shutil.copy(out, merged)
                elif stage == "curate":
                    shutil.copy(merged, curated)
                continue
            if stage not in commands:
                results.setdefault(stage, {"error": "skipped (no demo models in bench-out/models)"})
                continue
            results[stage] = measure(commands[stage], folder / f"{stage}.log")
            shown = results[stage].get("error") or f"{results[stage]['seconds']} s, {mb(results[stage]['peak'])} peak"
            print(f"  {stage:9s} {shown}", flush=True)
            if partial is not None:
                partial.write_text(json.dumps(results, indent=2) + "\n")
            if "error" in results[stage] and stage != "train":
                break
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return results


def mb(value: float) -> str:
    return f"{value / 1e9:.2f} GB" if value >= 1e9 else f"{value / 1e6:.0f} MB"


def table(sizes: list[int], results: dict[int, dict[str, dict]]) -> str:
    small, large = sizes[0], sizes[-1]
    head = ["stage", *(f"{n:,} rows" for n in sizes)]
    if len(sizes) > 1:
        head += [f"per extra row", f"peak {large // small}x rows"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for stage in STAGES:
        cells = [f"`{stage}`"]
        for n in sizes:
            r = results[n].get(stage, {"error": "not run"})
            cells.append(r["error"][:40] if "error" in r else f"{r['seconds']} s, {mb(r['peak'])}")
        if len(sizes) > 1:
            a, b = results[small].get(stage, {}), results[large].get(stage, {})
            if "peak" in a and "peak" in b:
                cells += [f"{max(0.0, (b['peak'] - a['peak']) / (large - small)):.0f} B", f"{b['peak'] / a['peak']:.2f}"]
            else:
                cells += ["–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--ten-million", action="store_true", help="Add 10,000,000 rows.")
    parser.add_argument("--workdir", type=Path, default=REPO / "bench-out" / "scale",
                        help="Where the temporary folders go (they are removed at the end).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="Keep each size's folder (to look at the outputs).")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--train-max", type=int, default=1_000_000,
                        help="Run the train scan only up to this many rows (batched tokenizer calls: about "
                             "5 minutes at 1 M rows here).")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="Run only these; the inputs of a later one are then made directly (a manifest as "
                             "ingest makes it, an OUT as the dry-run makes it).")
    args = parser.parse_args()
    sizes = sorted(set(args.sizes + ([10_000_000] if args.ten_million else [])))
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = {n: run_size(n, args.workdir, args.seed, args.keep, args.train_max, args.stages,
                          args.json.with_name(f"{args.json.stem}.{n}.json") if args.json else None) for n in sizes}
    if args.json:
        args.json.write_text(json.dumps({str(n): r for n, r in results.items()}, indent=2) + "\n")
    print()
    print(table(sizes, results))


if __name__ == "__main__":
    main()
