"""Benchmark: embedded-audio publishing (MB/s written), against the disk's sequential write speed.

What is compared, on one synthetic set of curated generate outputs (`--records` rows, 3,000 by
default: id, corpus, split, audio, offset, duration, sample_rate, text, raw_text, speaker,
language, emotion, raw_emotion, extra, task, instruction, continuation, finished, generator),
each row pointing at an audio file of its own, 2-6 s long: 90% 16 kHz mono FLAC, 10% 44.1 kHz
stereo WAV (so the downmix and the resampler are exercised). The audio is a voice-like signal
(a few harmonics of a wandering pitch under a syllable-rate envelope) plus low-level noise, so
FLAC compresses it roughly as it does speech. Splits train / dev-clean / test-clean (80/10/10),
tasks semantic (60%) and emotion (40%; labels neutral/happy/angry/sad/surprise):

    publish j1   blspdata.publish.publish([input], out, fmt="arrow", audio="embed", jobs=1)
    publish j2   the same with jobs=--jobs (2 by default)
    parquet j2   the same with fmt="parquet", jobs=--jobs
    floor j2     the least any embedded-FLAC publisher must do, in --jobs processes: copy the
                 16 kHz mono FLAC files, decode/downmix/resample/FLAC-encode the others, and
                 write every output byte once into one file (no columns, card or checksums)
    disk         the limit: a file as large as the `publish j2` dataset, written into the same
                 folder in 8 MiB blocks with os.write. Two figures: "fsync" = the writes, then
                 os.fsync, then close, timed together (the data is on the disk: the disk's
                 sequential write speed); "page cache" = the writes and close only (what the
                 kernel absorbs before any of it reaches the disk; fsynced after the timer).
                 Each block is one 8 MiB random buffer with its index stamped in front, so no
                 two blocks are equal (nothing a compressing or deduplicating layer can skip).
                 Three runs of each; the median is reported.

For each publish run: seconds (time.perf_counter around the publish() call only), the output
MB (the total size of the files in the dataset folder: Arrow or Parquet shards, card,
manifest), MB/s of output = output MB / seconds, records/s, and the same MB/s once an os.sync()
after the call has put the dataset on the disk ("MB/s synced": publish itself does not fsync
its shards), and peak RSS: the larger of the process's own peak and its largest worker's
(getrusage RUSAGE_SELF / RUSAGE_CHILDREN). MB = 10^6 bytes; RSS in MiB.

Then the ratios: publish j2 MB/s against the disk's fsync MB/s (the target: 0.5 or better)
and against the page-cache MB/s, and j2 against j1.

How: the input (records JSONL + audio files) is made once under bench-out/publish/data
(git-ignored) and reused while its marker file says it was made with the same parameters. A
warm-up pass reads every audio file before the timed runs, so every contender reads from a
warm page cache (no cold-disk reads here). Each contender runs in its own subprocess (this
script with `--only NAME`), writes under bench-out/publish/runs/, and calls os.sync() before
its timer starts, so no one inherits another's dirty pages. Imports (blspdata.publish,
datasets, huggingface_hub, av; publish writes its Arrow/Parquet shards with pyarrow and never
imports torch) are done before the timer and printed apart ("import s"). Every contender runs in --repeats interleaved rounds (3) and the
median round is shown: this shared VM has slow spells. Numbers only; nothing asserts on time.

`--input flac` makes every file a whole 16 kHz mono FLAC utterance (LibriSpeech-like), which
publish copies as it is: no audio work, so the disk is the limit there (target: half of its
sequential write); on the mixed input the audio work is, and the floor is what to compare with
(target: 0.9 of it). Each input has its own data folder.

Run:  .venv/bin/python bench/publish.py [--records 3000] [--jobs 2] [--input mixed|flac]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

from common import median_round, run_isolated  # bench/common.py (scripts run as `python bench/NAME.py`)

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "bench-out" / "publish"
DATA_VERSION = 1  # bump when the records or audio below change, to rebuild old data
INPUTS = {"mixed": 0.1, "flac": 0.0}  # --input: the share of 44.1 kHz stereo WAV files (the rest 16 kHz mono FLAC)
DATA = RUNS = INPUT = MARKER = Path()  # set by use_input(): each input has its own data and runs folders

SPLITS = {"train-clean-100": 0.8, "dev-clean": 0.1, "test-clean": 0.1}
EMOTION_SHARE = 0.4
WAV_SHARE = INPUTS["mixed"]
EMOTIONS = ("neutral", "happy", "angry", "sad", "surprise")
BLOCK = 8 * 2**20
MB = 10**6
MIB = 2**20

WORDS = ("the of and to a in that was he it his is with as i had for at by on not be from but she you "
         "which her all they were my this have said one so who missus rachel lynde surprised chapter road "
         "hollow brook window door afternoon garden morning river quiet letter").split()

CONTENDERS = {  # name: (format, jobs or None for --jobs)
    "publish j1": ("arrow", 1),
    "publish j2": ("arrow", None),
    "parquet j2": ("parquet", None),
    "floor j2": ("floor", None),
}


# ---------------------------------------------------------------------------- the data

def use_input(name: str) -> None:
    """Point the data and runs folders at input `name` (bench-out/publish/<name>/, the mixed
    input at bench-out/publish/ as before) and set its WAV share."""
    global DATA, RUNS, INPUT, MARKER, WAV_SHARE
    base = BASE if name == "mixed" else BASE / name
    DATA, RUNS = base / "data", base / "runs"
    INPUT, MARKER = DATA / "continuations.jsonl", DATA / ".bench-data.json"
    WAV_SHARE = INPUTS[name]


def _params(records: int) -> dict:
    return {"version": DATA_VERSION, "records": records, "splits": SPLITS, "emotion_share": EMOTION_SHARE,
            "wav_share": WAV_SHARE, "seconds": [2.0, 6.0]}


def _voice(rng, seconds: float, rate: int, channels: int):
    """A voice-like signal: harmonics of a wandering pitch under a syllable-rate envelope, plus
    noise at a level that makes FLAC spend roughly what it spends on speech."""
    import numpy as np

    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = rng.uniform(90, 240) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.3, 1.5) * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum((0.5 / k) * np.sin(k * phase + rng.uniform(0, 6.3)) for k in range(1, 6))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6.3)), 0, None) ** 2
    signal = rng.uniform(0.05, 0.2) * envelope * voiced + rng.uniform(0.002, 0.01) * rng.standard_normal(n)
    if channels == 2:
        signal = np.stack([signal, 0.9 * signal + 0.002 * rng.standard_normal(n)], axis=1)
    return signal.astype(np.float32)


def _split_counts(records: int) -> dict[str, int]:
    counts = {name: int(records * share) for name, share in SPLITS.items()}
    counts[next(iter(SPLITS))] += records - sum(counts.values())
    return counts


def build_data(records: int) -> tuple[dict, float]:
    """Make (or reuse) the input under bench-out/publish/data. Returns (facts, seconds spent)."""
    params = _params(records)
    if MARKER.exists() and INPUT.exists():
        try:
            stored = json.loads(MARKER.read_text())
            if stored["params"] == params:
                return stored["facts"], 0.0
        except (ValueError, KeyError):
            pass
    import numpy as np
    import soundfile as sf

    sys.path.insert(0, str(REPO))
    from blspdata.generate import prompts

    start = time.perf_counter()
    MARKER.unlink(missing_ok=True)
    shutil.rmtree(DATA, ignore_errors=True)
    templates = {task: prompts.load(task) for task in ("semantic", "emotion")}
    generators = {task: {"backend": "openai", "model": "bench-model", "prompt": t.describe(),
                         "sampling": {"temperature": 0.0, "max_tokens": 128}} for task, t in templates.items()}
    rng = np.random.default_rng(0)
    pick = random.Random(0)
    facts = {"records": 0, "flac": 0, "wav": 0, "audio_seconds": 0.0, "audio_bytes": 0,
             "tasks": {"semantic": 0, "emotion": 0}, "splits": _split_counts(records)}
    lines = []
    for split, count in facts["splits"].items():
        folder = DATA / "audio" / split
        folder.mkdir(parents=True)
        for n in range(count):
            speaker = str(100 + pick.randrange(60))
            native = f"{speaker}-{n:05d}"
            wav = pick.random() < WAV_SHARE
            rate, channels = (44100, 2) if wav else (16000, 1)
            seconds = pick.uniform(2.0, 6.0)
            samples = _voice(rng, seconds, rate, channels)
            path = folder / f"{native}.{'wav' if wav else 'flac'}"
            sf.write(path, samples, rate, format="WAV" if wav else "FLAC", subtype="PCM_16")
            task = "emotion" if pick.random() < EMOTION_SHARE else "semantic"
            text = " ".join(pick.choices(WORDS, k=pick.randint(5, 25)))
            emotion = pick.choice(EMOTIONS) if task == "emotion" else None
            row = {"id": f"bench/{split}/{native}", "corpus": "bench-emotion" if task == "emotion" else "bench",
                   "split": split, "audio": str(path), "offset": 0.0, "duration": len(samples) / rate,
                   "sample_rate": rate, "text": text, "raw_text": text.upper(), "speaker": speaker,
                   "language": "en", "emotion": emotion, "raw_emotion": emotion[:3] if emotion else None,
                   "extra": {"chapter": int(speaker) * 10, "synthetic": True}, "task": task}
            row["instruction"] = templates[task].instruction(_record(row))
            row.update(continuation=" ".join(pick.choices(WORDS, k=pick.randint(20, 60))).capitalize() + ".",
                       finished=True, generator=generators[task])
            lines.append(json.dumps(row) + "\n")
            facts["records"] += 1
            facts["wav" if wav else "flac"] += 1
            facts["audio_seconds"] += len(samples) / rate
            facts["audio_bytes"] += path.stat().st_size
            facts["tasks"][task] += 1
    INPUT.write_text("".join(lines))
    MARKER.write_text(json.dumps({"params": params, "facts": facts}, indent=2) + "\n")  # last
    return facts, time.perf_counter() - start


def _record(row: dict):
    from blspdata.records import Record

    return Record.from_dict(row)


def warm_up() -> tuple[int, int]:
    """Read every input file once, so the timed runs all read from a warm page cache."""
    count = size = 0
    for folder, _, names in os.walk(DATA):
        for name in names:
            with open(os.path.join(folder, name), "rb") as handle:
                size += len(handle.read())
            count += 1
    return count, size


# ---------------------------------------------------------------------------- contenders

def _folder_bytes(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _floor_audio(row: dict) -> bytes | None:
    """The audio work no embedded-FLAC publisher can skip: None for a file to copy as it is,
    else the segment decoded, downmixed, resampled and FLAC-encoded."""
    import io

    import soundfile as sf

    from blspdata.audio import RATE, read_segment
    from blspdata.publish import Record, _as_is

    record = Record.from_dict(row)
    if _as_is(record):
        return None
    buffer = io.BytesIO()
    sf.write(buffer, read_segment(record.audio, record.offset, record.duration), RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def run_floor(out: Path, jobs: int) -> dict:
    """The floor: the same audio work in `jobs` processes, every output byte written once into
    one file; no columns, no dataset library, no card, no checksums."""
    from blspdata.parallel import ordered_map
    from blspdata.records import iter_jsonl

    out.mkdir(parents=True)
    rows = [row for _, row, _ in iter_jsonl(INPUT)]
    with open(out / "audio.bin", "wb") as sink:
        for row, payload in zip(rows, ordered_map(_floor_audio, iter(rows), jobs, chunk_size=16)):
            if payload is None:
                with open(row["audio"], "rb") as handle:
                    payload = handle.read()
            sink.write(payload)
            sink.write(json.dumps({k: v for k, v in row.items() if k != "audio"}).encode())
    return {"rows": {"all": {"all": len(rows)}}, "rejected": {}}


def run_publish(name: str, jobs: int) -> dict:
    fmt, fixed_jobs = CONTENDERS[name]
    jobs = fixed_jobs or jobs
    start = time.perf_counter()
    import av  # noqa: F401  (publish imports these lazily: keep them out of the timed part)
    import datasets  # noqa: F401
    import huggingface_hub  # noqa: F401

    from blspdata.publish import publish
    imported = time.perf_counter() - start

    out = RUNS / name.replace(" ", "-")
    shutil.rmtree(out, ignore_errors=True)
    out.with_name(out.name + ".rejects.jsonl").unlink(missing_ok=True)
    RUNS.mkdir(parents=True, exist_ok=True)
    os.sync()  # nobody's dirty pages but ours while the timer runs
    start = time.perf_counter()
    result = (run_floor(out, jobs) if fmt == "floor" else
              publish([INPUT], out, fmt=fmt, audio="embed", jobs=jobs, overwrite=True, progress=False))
    seconds = time.perf_counter() - start
    os.sync()
    synced = time.perf_counter() - start
    rows = sum(n for splits in result["rows"].values() for n in splits.values())
    files, size = _folder_bytes(out)
    kib = 1024  # ru_maxrss is in KiB on Linux
    return {"records": rows, "rejected": sum(result["rejected"].values()), "seconds": seconds,
            "synced_s": synced, "bytes": size, "files": files, "import_s": imported,
            "main_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib,
            "worker_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib,
            "note": f"{fmt}, jobs={jobs}, {files} files -> {out.relative_to(REPO)}/"}


def run_disk(size: int, repeat: int = 3) -> dict:
    """Sequential writes of `size` bytes in 8 MiB blocks into the runs folder."""
    RUNS.mkdir(parents=True, exist_ok=True)
    path = RUNS / "disk-write.bin"
    block = bytearray(os.urandom(BLOCK))
    view = memoryview(block)
    blocks = -(-size // BLOCK)

    def write(fsync: bool) -> float:
        path.unlink(missing_ok=True)
        os.sync()
        start = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        left = size
        for index in range(blocks):
            block[:8] = index.to_bytes(8, "little")  # no two blocks alike
            chunk = view[:min(BLOCK, left)]
            while chunk:
                chunk = chunk[os.write(fd, chunk):]
            left -= min(BLOCK, left)
        if fsync:
            os.fsync(fd)
        os.close(fd)
        seconds = time.perf_counter() - start
        if not fsync:
            os.sync()  # after the timer: the next run starts clean
        path.unlink()
        return seconds

    fsynced = sorted(write(True) for _ in range(repeat))
    cached = sorted(write(False) for _ in range(repeat))
    return {"bytes": size, "fsync_s": fsynced, "cache_s": cached,
            "note": f"{blocks} blocks of 8 MiB -> {path.relative_to(REPO)} (removed)"}


def child(args: argparse.Namespace) -> None:
    row = run_disk(args.bytes) if args.only == "disk" else run_publish(args.only, args.jobs)
    print(json.dumps(row))


# ---------------------------------------------------------------------------- driver

def measure(name: str, args: argparse.Namespace, size: int = 0) -> dict | None:
    command = [sys.executable, str(Path(__file__).resolve()), "--only", name, "--jobs", str(args.jobs),
               "--records", str(args.records), "--bytes", str(size), "--input", args.input]
    row = run_isolated(command, name)
    if row is not None:
        row["name"] = name
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=3000, help="utterances to publish (default 3000)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes of the j2 runs (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every contender; the median is shown (3)")
    parser.add_argument("--input", choices=INPUTS, default="mixed",
                        help="mixed: 10%% 44.1 kHz stereo WAV that needs audio work (default); flac: only whole "
                             "16 kHz mono FLAC utterances, copied as they are (LibriSpeech-like)")
    parser.add_argument("--only", choices=(*CONTENDERS, "disk"), help=argparse.SUPPRESS)
    parser.add_argument("--bytes", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    use_input(args.input)
    if args.only:
        return child(args)

    print(f"machine: {os.cpu_count()} CPUs (os.cpu_count), Python {sys.version.split()[0]}; jobs={args.jobs}; "
          f"input {args.input}")
    facts, built = build_data(args.records)
    print(f"input: {INPUT.relative_to(REPO)}: {facts['records']} records "
          f"({', '.join(f'{k} {v}' for k, v in facts['splits'].items())}; "
          f"{', '.join(f'{k} {v}' for k, v in facts['tasks'].items())}), "
          f"{facts['audio_seconds'] / 3600:.2f} h of audio in {facts['flac']} FLAC (16 kHz mono) + "
          f"{facts['wav']} WAV (44.1 kHz stereo) files, {facts['audio_bytes'] / MB:.0f} MB; "
          + (f"made in {built:.1f} s" if built else "reused (marker matches)"))
    start = time.perf_counter()
    count, size = warm_up()
    print(f"warm cache: read all {count} input files ({size / MB:.0f} MB) in {time.perf_counter() - start:.1f} s "
          "before the timed runs")
    print(f"each contender runs in its own subprocess, after an os.sync(); time excludes imports; median of "
          f"{args.repeats} interleaved rounds;\n"
          "RSS = max(own peak, largest worker's); MB = 10^6 bytes\n")

    runs: dict[str, list] = {name: [] for name in CONTENDERS}
    for _ in range(args.repeats):  # interleaved rounds: a slow spell of the VM hits every contender
        for name in CONTENDERS:
            runs[name].append(measure(name, args))
    rows = {name: None if None in r else median_round(r, key=lambda row: row["seconds"]) for name, r in runs.items()}
    reference = rows.get("publish j2") or rows.get("publish j1") or rows.get("parquet j2")
    disk = measure("disk", args, reference["bytes"]) if reference else None

    header = (f"{'contender':<11} {'records':>7} {'seconds':>8} {'out MB':>7} {'MB/s':>7} {'records/s':>9} "
              f"{'s synced':>9} {'MB/s synced':>11} {'peak RSS MB':>12} {'main/worker':>11} {'import s':>8}")
    print(header)
    print("-" * len(header))
    for row in rows.values():
        if row is None:
            continue
        peak = max(row["main_rss"], row["worker_rss"])
        split = f"{row['main_rss'] / MIB:.0f}/" + (f"{row['worker_rss'] / MIB:.0f}" if row["worker_rss"] else "-")
        print(f"{row['name']:<11} {row['records']:>7} {row['seconds']:>8.2f} {row['bytes'] / MB:>7.1f} "
              f"{row['bytes'] / MB / row['seconds']:>7.1f} {row['records'] / row['seconds']:>9.1f} "
              f"{row['synced_s']:>9.2f} {row['bytes'] / MB / row['synced_s']:>11.1f} {peak / MIB:>12.0f} "
              f"{split:>11} {row['import_s']:>8.2f}")
    rate = {}
    if disk:
        for key, label in (("fsync_s", "disk fsync"), ("cache_s", "disk cache")):
            times = disk[key]
            median = statistics.median(times)
            rate[key] = disk["bytes"] / MB / median
            print(f"{label:<11} {'-':>7} {median:>8.2f} {disk['bytes'] / MB:>7.1f} {rate[key]:>7.1f} {'-':>9} "
                  f"{'':>9} {'':>11} {'':>12} {'':>11} {'':>8}   (median of {len(times)}: "
                  f"{times[0]:.2f}-{times[-1]:.2f} s)")
    print()
    for row in rows.values():
        if row is not None:
            print(f"  {row['name']:<11} {row['note']}" + (f"; {row['rejected']} rejected" if row["rejected"] else ""))
    if disk:
        print(f"  {'disk':<11} {disk['note']}; 'disk fsync' = write + fsync (the disk's sequential speed), "
              "'disk cache' = write only (page cache)")
    print()

    mbps = lambda row: row["bytes"] / MB / row["seconds"]  # noqa: E731
    j1, j2 = rows.get("publish j1"), rows.get("publish j2")
    if j2 and disk:
        ratio = mbps(j2) / rate["fsync_s"]
        print(f"publish j2 vs disk fsync:  {ratio:.3f} of the disk's sequential write speed "
              f"({mbps(j2):.1f} vs {rate['fsync_s']:.1f} MB/s; target on the flac input >= 0.5: "
              f"{'met' if ratio >= 0.5 else 'not met'})")
        print(f"publish j2 vs disk cache:  {mbps(j2) / rate['cache_s']:.3f} of the page-cache write speed "
              f"({rate['cache_s']:.1f} MB/s)")
        print(f"publish j2 synced vs disk fsync: {j2['bytes'] / MB / j2['synced_s'] / rate['fsync_s']:.3f} "
              "(publish until its dataset is on the disk)")
    floor = rows.get("floor j2")
    if floor and j2:
        ratio = mbps(j2) / mbps(floor)
        print(f"publish j2 vs floor j2:    {ratio:.2f} of the floor's MB/s (the audio work and one write of every "
              f"byte; target on the mixed input >= 0.9: {'met' if ratio >= 0.9 else 'not met'})")
    if j1 and j2:
        print(f"publish j2 vs j1:          {mbps(j2) / mbps(j1):.2f}x the MB/s (jobs={args.jobs} vs 1)")
    parquet = rows.get("parquet j2")
    if parquet and j2:
        print(f"parquet j2 vs arrow j2:    {mbps(parquet) / mbps(j2):.2f}x the MB/s")
    if None in rows.values() or disk is None:
        sys.exit(1)


if __name__ == "__main__":
    main()
