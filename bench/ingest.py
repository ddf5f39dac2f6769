"""Benchmark: LibriSpeech ingest, ours against Lhotse's recipe and a bare header-reading loop.

What is compared, on one synthetic LibriSpeech tree (`--files` FLACs, 20,000 by default):

    ours    blspdata.ingest.ingest_corpus("librispeech", ...) with `--jobs` worker processes,
            writing bench-out/ours.jsonl.gz (+ rejects and summary sidecars)
    lhotse  lhotse.recipes.prepare_librispeech(..., num_jobs=--jobs) (threads), writing its
            recordings/supervisions manifests to bench-out/lhotse/
    floor   one process walking the tree and calling soundfile.info() on every .flac: no
            transcripts, nothing written. What reading the headers alone costs.

Then `ours` again on a quarter of the corpus (the dev-clean and test-clean splits), and
Lhotse too, to show whether peak memory grows with the corpus.

How: the tree is built once under `--root` (default bench-out/librispeech, git-ignored) and
reused while its marker file says it was built with the same parameters. A warm-up pass
reads every file once, so every contender reads from a warm page cache (no cold-disk
numbers here). Each contender runs in its own subprocess (this script with `--only NAME`),
`--repeat` times (3 by default; the median is reported, with min and max), each run timed
with time.perf_counter around the call itself (imports not included; they are printed
apart), so its peak RSS is its own: the larger of the process's own peak and that
of its largest worker process (getrusage RUSAGE_SELF / RUSAGE_CHILDREN, after the workers
have exited). Numbers only; nothing asserts on time.

Run:  make bench    (= .venv/bin/python bench/ingest.py)
      .venv/bin/python bench/ingest.py --files 20000 --jobs 2 --root bench-out/librispeech
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import shutil
import sys
import time
from pathlib import Path

from common import run_isolated  # bench/common.py (scripts run as `python bench/NAME.py`)

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench-out"
DEFAULT_ROOT = OUT / "librispeech"

# Share of the files per split; the last two together are the quarter-size subset.
SPLITS = {"train-clean-100": 0.75, "dev-clean": 0.125, "test-clean": 0.125}
SUBSET = ("dev-clean", "test-clean")
UTTS_PER_CHAPTER = 50
CHAPTERS_PER_SPEAKER = 2
RATE = 16000
TREE_VERSION = 1  # bump when the layout or audio below changes, to rebuild old trees
MARKER = ".bench-tree.json"

WORDS = ("THE OF AND TO A IN THAT WAS HE IT HIS IS WITH AS I HAD FOR AT BY ON NOT BE FROM "
         "BUT SHE YOU WHICH HER ALL THEY WERE MY THIS HAVE SAID ONE SO WHO MISSUS RACHEL "
         "LYNDE SURPRISED CHAPTER ROAD HOLLOW BROOK WINDOW DOOR AFTERNOON GARDEN").split()


# ---------------------------------------------------------------------------- the tree

def _clips(count: int = 8, seed: int = 0) -> list[bytes]:
    """A few distinct short clips (1-3 s: a quiet tone under low-level noise), FLAC-encoded
    once in memory; the tree's files are copies of these bytes."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    clips = []
    for i in range(count):
        seconds = 1.0 + 2.0 * i / max(1, count - 1)
        t = np.arange(int(seconds * RATE)) / RATE
        samples = 0.02 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.001 * rng.standard_normal(t.size)
        buffer = io.BytesIO()
        sf.write(buffer, samples.astype(np.float32), RATE, format="FLAC", subtype="PCM_16")
        clips.append(buffer.getvalue())
    return clips


def _split_counts(files: int) -> dict[str, int]:
    counts = {name: int(files * share) for name, share in SPLITS.items()}
    counts[next(iter(SPLITS))] += files - sum(counts.values())
    return counts


def build_tree(root: Path, files: int) -> tuple[int, float]:
    """Build (or reuse) the tree under root/LibriSpeech. Returns (files, seconds spent)."""
    corpus = root / "LibriSpeech"
    params = {"version": TREE_VERSION, "files": files, "splits": _split_counts(files),
              "utts_per_chapter": UTTS_PER_CHAPTER, "chapters_per_speaker": CHAPTERS_PER_SPEAKER}
    marker = root / MARKER
    if marker.exists():
        try:
            if json.loads(marker.read_text()) == params and corpus.is_dir():
                return files, 0.0
        except ValueError:
            pass
    if corpus.exists() and not marker.exists():
        sys.exit(f"{corpus} exists but was not built by this benchmark ({marker} is missing); "
                 f"refusing to replace it. Pick another --root.")
    start = time.perf_counter()
    marker.unlink(missing_ok=True)
    shutil.rmtree(corpus, ignore_errors=True)
    clips = _clips()
    rng = random.Random(0)
    speaker = 100
    written = 0
    for split, count in params["splits"].items():
        left = count
        while left > 0:
            speaker += rng.randint(1, 37)
            for c in range(CHAPTERS_PER_SPEAKER):
                if left <= 0:
                    break
                chapter = 1000 + speaker * 10 + c
                folder = corpus / split / str(speaker) / str(chapter)
                folder.mkdir(parents=True)
                lines = []
                for n in range(min(UTTS_PER_CHAPTER, left)):
                    utt = f"{speaker}-{chapter}-{n:04d}"
                    (folder / f"{utt}.flac").write_bytes(clips[rng.randrange(len(clips))])
                    lines.append(f"{utt} {' '.join(rng.choices(WORDS, k=rng.randint(3, 20)))}\n")
                    left -= 1
                    written += 1
                (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))
    marker.write_text(json.dumps(params, indent=2) + "\n")  # last: a half-built tree is rebuilt
    return written, time.perf_counter() - start


def warm_up(corpus: Path) -> tuple[int, int]:
    """Read every file of the tree once, so the timed runs all see a warm page cache."""
    count = size = 0
    for folder, _, names in os.walk(corpus):
        for name in names:
            with open(os.path.join(folder, name), "rb") as handle:
                size += len(handle.read())
            count += 1
    return count, size


# ---------------------------------------------------------------------------- contenders
# Each runs in its own process (`--only NAME`) and returns how many audio files it handled.

def run_ours(corpus: Path, jobs: int, splits: list[str] | None) -> tuple[int, str]:
    from blspdata.ingest import ingest_corpus

    out = OUT / ("ours-subset.jsonl.gz" if splits else "ours.jsonl.gz")
    options = {"splits": splits} if splits else {}
    summary = ingest_corpus("librispeech", corpus, out, jobs=jobs, progress=False, **options)
    rejected = summary.rejects.total
    return summary.records + rejected, f"{summary.records} records, {rejected} rejects -> {out.relative_to(REPO)}"


def _import_lhotse():
    """Import Lhotse's recipe. Lhotse 1.33 imports urllib3 at import time (lhotse/ais, the
    AIStore client) without declaring it as a dependency; where urllib3 is absent, a stub
    module stands in. Nothing on the LibriSpeech path uses it."""
    try:
        import urllib3.exceptions  # noqa: F401
        stub = False
    except ModuleNotFoundError:
        import types

        urllib3 = types.ModuleType("urllib3")
        urllib3.exceptions = types.ModuleType("urllib3.exceptions")
        urllib3.exceptions.TimeoutError = TimeoutError
        sys.modules["urllib3"] = urllib3
        sys.modules["urllib3.exceptions"] = urllib3.exceptions
        stub = True
    from lhotse.recipes import prepare_librispeech

    return prepare_librispeech, stub


def run_lhotse(corpus: Path, jobs: int, splits: list[str] | None, prepare_librispeech, stub: bool) -> tuple[int, str]:
    out = OUT / ("lhotse-subset" if splits else "lhotse")
    shutil.rmtree(out, ignore_errors=True)  # it skips parts whose manifests already exist
    manifests = prepare_librispeech(corpus_dir=corpus, output_dir=out, num_jobs=jobs,
                                    dataset_parts=list(splits) if splits else "auto")
    files = sum(len(m["recordings"]) for m in manifests.values())
    note = f"{files} recordings in {len(manifests)} parts -> {out.relative_to(REPO)}/"
    return files, note + (" (urllib3 stubbed: see _import_lhotse)" if stub else "")


def run_floor(corpus: Path) -> tuple[int, str]:
    import soundfile as sf

    files = frames = 0
    for folder, _, names in os.walk(corpus):
        for name in names:
            if name.endswith(".flac"):
                frames += sf.info(os.path.join(folder, name)).frames
                files += 1
    return files, f"{frames / RATE / 3600:.2f} h of audio seen"


def _current_rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args: argparse.Namespace) -> None:
    """Run one contender in this process and print its result as one JSON line."""
    corpus = args.root / "LibriSpeech"
    splits = list(SUBSET) if args.subset else None
    start = time.perf_counter()
    if args.only == "ours":
        import blspdata.ingest  # noqa: F401
    elif args.only == "lhotse":
        prepare, stub = _import_lhotse()
    else:
        import soundfile  # noqa: F401
    imported = time.perf_counter() - start
    base_rss = _current_rss()  # after imports: what the call itself adds is peak - base

    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        if args.only == "ours":
            files, note = run_ours(corpus, args.jobs, splits)
        elif args.only == "lhotse":
            files, note = run_lhotse(corpus, args.jobs, splits, prepare, stub)
        else:
            files, note = run_floor(corpus)
        times.append(time.perf_counter() - start)
    times.sort()

    kib = 1024  # ru_maxrss is in KiB on Linux
    main_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib
    worker_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib  # the largest exited worker
    print(json.dumps({"files": files, "seconds": times[len(times) // 2], "min_s": times[0], "max_s": times[-1], "import_s": imported, "main_rss": main_rss,
                      "base_rss": base_rss, "worker_rss": worker_rss, "note": note}))


# ---------------------------------------------------------------------------- driver

def measure(name: str, args: argparse.Namespace, subset: bool = False) -> dict | None:
    command = [sys.executable, str(Path(__file__).resolve()), "--only", name,
               "--root", str(args.root), "--jobs", str(args.jobs), "--files", str(args.files),
               "--repeat", str(args.repeat)]
    if subset:
        command.append("--subset")
    row = run_isolated(command, f"{name}{' (subset)' if subset else ''}")
    if row is None:
        return None
    row["name"] = name + (" 1/4" if subset else "")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20000, help="FLAC files in the tree (default 20000)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes/threads for ours and Lhotse (default 2)")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help="where the synthetic tree lives (default bench-out/librispeech)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed runs per contender, in one process; the median is reported (default 3)")
    parser.add_argument("--only", choices=("ours", "lhotse", "floor"), help=argparse.SUPPRESS)
    parser.add_argument("--subset", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.root = args.root.resolve()
    if args.only:
        return child(args)

    print(f"machine: {os.cpu_count()} CPUs (os.cpu_count), Python {sys.version.split()[0]}; jobs={args.jobs}")
    files, built = build_tree(args.root, args.files)
    corpus = args.root / "LibriSpeech"
    shown = corpus.relative_to(REPO) if corpus.is_relative_to(REPO) else corpus
    print(f"tree: {shown}: {files} FLACs in {', '.join(f'{k} {v}' for k, v in _split_counts(files).items())}; "
          + (f"built in {built:.1f} s" if built else "reused (marker matches)"))
    start = time.perf_counter()
    count, size = warm_up(corpus)
    print(f"warm cache: a warm-up pass read all {count} files ({size / 2**20:.0f} MiB) in "
          f"{time.perf_counter() - start:.1f} s before the timed runs; every contender reads from the page cache")
    print("each contender runs in its own subprocess; time excludes imports; RSS = max(own peak, largest worker's)")
    print(f"seconds: the median of {args.repeat} runs (min-max beside it); peak RSS over all of them\n")

    rows = [measure("ours", args), measure("lhotse", args), measure("floor", args),
            measure("ours", args, subset=True), measure("lhotse", args, subset=True)]
    done = {row["name"]: row for row in rows if row}

    mb = 2**20
    header = f"{'contender':<11} {'files':>7} {'seconds':>8} {'min-max s':>11} {'files/s':>9} {'peak RSS MB':>12} {'main/worker MB':>15} {'import s':>9}"
    print(header)
    print("-" * len(header))
    for row in done.values():
        peak = max(row["main_rss"], row["worker_rss"])
        split = f"{row['main_rss'] / mb:.0f}/{row['worker_rss'] / mb:.0f}" if row["worker_rss"] else f"{row['main_rss'] / mb:.0f}/-"
        spread = f"{row['min_s']:.2f}-{row['max_s']:.2f}"
        print(f"{row['name']:<11} {row['files']:>7} {row['seconds']:>8.2f} {spread:>11} {row['files'] / row['seconds']:>9.0f} "
              f"{peak / mb:>12.0f} {split:>15} {row['import_s']:>9.2f}")
    print()
    for row in done.values():
        print(f"  {row['name']:<10} {row['note']}")
    print()

    ours, lhotse, floor = done.get("ours"), done.get("lhotse"), done.get("floor")
    rate = lambda row: row["files"] / row["seconds"]  # noqa: E731
    if ours and lhotse:
        print(f"ours vs lhotse: {rate(ours) / rate(lhotse):.2f}x the files/s (both with jobs={args.jobs})")
    if ours and floor:
        print(f"ours vs floor:  {rate(ours) / rate(floor):.2f}x the files/s of a bare single-process "
              f"soundfile.info loop (ours with jobs={args.jobs})")
    for name in ("ours", "lhotse"):
        full, part = done.get(name), done.get(f"{name} 1/4")
        if full and part:
            grow = lambda r: max(r["main_rss"], r["worker_rss"]) / mb  # noqa: E731
            print(f"{name} memory vs corpus size: {part['files']} files -> {grow(part):.0f} MB peak, "
                  f"{full['files']} files -> {grow(full):.0f} MB peak "
                  f"(main process above its RSS after imports: {(part['main_rss'] - part['base_rss']) / mb:.0f} -> "
                  f"{(full['main_rss'] - full['base_rss']) / mb:.0f} MB)")
    if len(done) != len(rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
