"""Benchmark: near-duplicate detection in `curate`, ours against datasketch's MinHashLSH.

What is compared, on one synthetic set of generate outputs (`--records` continuations,
200,000 by default; 20-45 words each, drawn from a Zipf-like vocabulary of 3,000 words,
common English words at the head and made-up ones in the tail), of which a known share
(`--dup-share`, 0.1 by default) are planted near-duplicates: a copy of an earlier original
with exactly one word replaced by another (word-bigram Jaccard (n-3)/(n+1) for an inner
word, 0.81-0.91 at these lengths), and another share (`--near-miss-share`, 0.05 by default)
planted near-misses, which are NOT duplicates: a copy of an earlier original with 2 inner,
non-adjacent words replaced (3 from 34 words on), word-bigram Jaccard 0.6-0.78, redrawn
until it is, just under the 0.8 threshold. Flagging one costs precision:

    ours-dedup       blspdata.curate.dedup.NearDuplicates(threshold=0.8, num_perm=128, ngram=2)
                     driven the way curate drives it: batches of 4096 texts -> .signatures(),
                     then .check_batch(ids, signatures): each record in order against the index
    datasketch       datasketch.MinHashLSH(threshold=0.8, num_perm=128), record by record: a
                     fresh MinHash(num_perm=128) per text, update_batch() with the same
                     word-bigram shingles (same tokenizer, blspdata.curate.filters.words; word
                     unigrams below 2 words) as UTF-8 bytes, lsh.query(); any result = a
                     duplicate (of the first result), else lsh.insert(id, minhash). No
                     verification of candidates: that is how MinHashLSH is used
    datasketch-bulk  the same, but the MinHashes come from MinHash.generator() (datasketch's
                     documented fast path: the permutations are made once and copied, not
                     drawn again per text). Everything else as `datasketch`
    ours-curate      the whole stage: blspdata.curate.run.curate() on the JSONL file with
                     default settings (reading, filters incl. language id, exact and near
                     dedup, writing kept rows, rejects and stats to bench-out/curate/)

Quality, against the planted ground truth: recall = planted duplicates flagged / planted;
precision = flagged records that are planted duplicates / flagged (whatever record a flag
points to; a flagged near-miss is a false positive, and so is any other flagged record);
"near-miss flagged" = planted near-misses flagged; "right orig" = flags that point at the
planted original. For ours-curate a flag
is a reject with reason near_duplicate_of:* or exact_duplicate_of:*; rows the filters
reject for other reasons (repetition, language, ...) are counted apart.

How: the data is generated once (deterministic in `--seed`) into bench-out/curate/
(git-ignored) and reused while its marker file says it was made with the same parameters.
Each contender runs in its own subprocess (this script with `--only NAME`), so its peak RSS
(getrusage RUSAGE_SELF ru_maxrss) is its own; "base" is its RSS before the timed part
(after imports and, for the dedup-only contenders, after loading ids and texts, which is
not timed). Time is time.perf_counter around the work itself, one run each; imports (and
the language-id model load for ours-curate) are excluded and printed apart. Numbers only;
nothing asserts on time.

Run:  make bench    (runs this with defaults, among the other benchmarks)
      .venv/bin/python bench/curate.py [--records 200000] [--dup-share 0.1] [--near-miss-share 0.05] [--seed 0]
      .venv/bin/python bench/curate.py --records 800000 --contenders ours-curate   (the stage alone, at scale)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

from common import run_isolated  # bench/common.py (scripts run as `python bench/NAME.py`)

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench-out" / "curate"
DATA = OUT / "continuations.jsonl"
TRUTH = OUT / "truth.json"
MISSES = OUT / "near_misses.json"
MARKER = OUT / ".bench-data.json"
DATA_VERSION = 2  # bump when the generator below changes, to regenerate old data

THRESHOLD, NUM_PERM, NGRAM, BATCH = 0.8, 128, 2, 4096
VOCABULARY = 3000
ZIPF_S = 1.0
MIN_WORDS, MAX_WORDS = 20, 45
CONTENDERS = ("ours-dedup", "datasketch", "datasketch-bulk", "ours-curate")

# The head of the vocabulary (most frequent first); made-up words fill the tail.
COMMON = """the of and to a in that was he it his is with as i had for at by on not be from but she
you which her all they were my this have said one so who we an there their been would me if no
when what him could them out into more then some up about time like only now very little over
did see down after can man two back way must before well know just should old great these any
our long went much day first never good made where thought how through people own other come
again still came upon house eyes away even life room might while hand too night face here
without door nothing once same looked made head under last thing always young tell told each
place found going asked mind father mother world light whole think heard left something far
those every voice moment water many against side round yet better morning half between heart
felt another saw most nor street garden window road river morning evening table letter word
name open small white black red green blue cold warm quiet soft hard slow quick early late
three four five hundred year years days hours minutes town city village field hill tree trees
stone bridge boat ship train station school church market friend friends brother sister son
daughter child children king queen doctor teacher woman women girl boy men soon almost often
together already perhaps because though until since across behind toward among along around
began turned seemed stood walked looked answered cried laughed smiled called kept brought
wanted waited watched opened closed carried followed reached remembered understood believed
happy quietly slowly suddenly gently softly bright dark deep high low full empty new rain snow
wind sun moon sky sea summer winter spring autumn sunday monday bread tea coffee milk apples
dinner supper breakfast chair chairs book books paper story song music dog cat horse bird""".split()
ONSETS = "b bl br c ch cl cr d dr f fl fr g gl gr h j k l m n p pl pr r s sh sl st t th tr v w wh".split()
NUCLEI = "a e i o u ea ee oo ai ou ow".split()
CODAS = "n r l m t s st nd ng rt ck ll ss th".split()
SUFFIXES = ["", "", "", "er", "ing", "ed", "ly", "en", "ish", "ton", "ward", "ness"]

CURATE_REASONS = ("near_duplicate_of:", "exact_duplicate_of:")


# ---------------------------------------------------------------------------- the data

def _vocabulary(rng) -> list[str]:
    words = list(dict.fromkeys(COMMON))
    seen = set(words)
    while len(words) < VOCABULARY:
        syllables = 1 + int(rng.integers(0, 2))
        word = "".join(str(rng.choice(ONSETS)) + str(rng.choice(NUCLEI)) + str(rng.choice(CODAS))
                       for _ in range(syllables)) + str(rng.choice(SUFFIXES))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def _params(records: int, dup_share: float, miss_share: float, seed: int) -> dict:
    return {"version": DATA_VERSION, "records": records, "dup_share": dup_share, "near_miss_share": miss_share,
            "seed": seed,
            "vocabulary": VOCABULARY, "zipf_s": ZIPF_S, "words": [MIN_WORDS, MAX_WORDS]}


def record_id(index: int) -> str:
    return f"synthetic/train/{index:07d}"


def _bigram_jaccard_ints(a: list[int], b: list[int]) -> float:
    x, y = set(zip(a, a[1:])), set(zip(b, b[1:]))
    return len(x & y) / len(x | y)


def _near_miss(words: list[int], weights, rng) -> list[int]:
    """`words` with k inner, non-adjacent words replaced: 2k of its m = n-1 bigrams change,
    Jaccard (m-2k)/(m+2k): k = 2 gives 0.65-0.78 up to 33 words, k = 3 0.69-0.76 above.
    Redrawn until the measured Jaccard (a replacement can repeat a bigram) is in [0.6, 0.78]."""
    k = 2 if len(words) <= 33 else 3
    while True:
        positions = sorted(int(i) for i in rng.choice(len(words) - 2, size=k, replace=False) + 1)
        if any(b - a < 2 for a, b in zip(positions, positions[1:])):
            continue
        changed = list(words)
        for position in positions:
            while changed[position] == words[position]:
                changed[position] = int(rng.choice(len(weights), p=weights))
        if 0.6 <= _bigram_jaccard_ints(words, changed) <= 0.78:
            return changed


def build_data(records: int, dup_share: float, miss_share: float, seed: int) -> tuple[dict[int, int], dict[int, int],
                                                                                      float]:
    """Write (or reuse) DATA, TRUTH and MISSES. Returns (duplicate index -> original index,
    near-miss index -> original index, seconds spent)."""
    import numpy as np
    import orjson

    params = _params(records, dup_share, miss_share, seed)
    if MARKER.exists() and DATA.exists() and TRUTH.exists() and MISSES.exists():
        try:
            if json.loads(MARKER.read_text()) == params:
                return ({int(k): v for k, v in json.loads(TRUTH.read_text()).items()},
                        {int(k): v for k, v in json.loads(MISSES.read_text()).items()}, 0.0)
        except ValueError:
            pass
    start = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    MARKER.unlink(missing_ok=True)
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng)
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** ZIPF_S
    weights /= weights.sum()

    planted, missed = round(records * dup_share), round(records * miss_share)
    dup_at = np.zeros(records, dtype=bool)
    miss_at = np.zeros(records, dtype=bool)
    if planted + missed:
        chosen = 1 + rng.choice(records - 1, size=planted + missed, replace=False)
        dup_at[chosen[:planted]] = True
        miss_at[chosen[planted:]] = True
    lengths = rng.integers(MIN_WORDS, MAX_WORDS + 1, size=records)
    tokens = rng.choice(len(vocab), size=int(lengths.sum()), p=weights)  # originals use their slice
    transcript_lengths = rng.integers(6, 13, size=records)
    transcript_tokens = rng.choice(len(vocab), size=int(transcript_lengths.sum()), p=weights)
    ends = np.cumsum(lengths)
    t_ends = np.cumsum(transcript_lengths)

    texts: list[list[int]] = []
    originals: list[int] = []
    truth: dict[int, int] = {}
    misses: dict[int, int] = {}
    generator = {"backend": "synthetic", "model": "bench/curate.py",
                 "prompt": {"id": "semantic", "sha256": "89c2c33158083560"},
                 "sampling": {"max_new_tokens": 48, "min_new_tokens": 1, "temperature": 0.0, "seed": seed}}
    with open(DATA, "wb") as handle:
        for i in range(records):
            if dup_at[i]:
                source = originals[int(rng.integers(0, len(originals)))]
                words = list(texts[source])
                position = int(rng.integers(0, len(words)))
                replacement = words[position]
                while replacement == words[position]:  # one word, and really another one
                    replacement = int(rng.choice(len(vocab), p=weights))
                words[position] = replacement
                truth[i] = source
            elif miss_at[i]:  # not a duplicate, and not an original later rows copy
                source = originals[int(rng.integers(0, len(originals)))]
                words = _near_miss(texts[source], weights, rng)
                misses[i] = source
            else:
                words = tokens[ends[i] - lengths[i]:ends[i]].tolist()
                originals.append(i)
            texts.append(words)
            continuation = " ".join(vocab[w] for w in words)
            continuation = continuation[0].upper() + continuation[1:] + ("." if i % 3 else "")
            transcript = " ".join(vocab[w] for w in transcript_tokens[t_ends[i] - transcript_lengths[i]:t_ends[i]])
            row = {"id": record_id(i), "corpus": "synthetic", "split": "train",
                   "audio": f"synthetic/train/{i // 1000:04d}/{i:07d}.flac", "offset": 0.0,
                   "duration": round(1.0 + len(transcript) / 15, 3), "sample_rate": 16000,
                   "text": transcript, "raw_text": transcript.upper(), "speaker": str(100 + i % 997),
                   "language": "en", "emotion": None, "raw_emotion": None, "extra": {},
                   "task": "semantic",
                   "instruction": f"Continue the following sentence in a coherent style: {transcript}",
                   "continuation": continuation, "finished": True, "generator": generator}
            handle.write(orjson.dumps(row) + b"\n")
    TRUTH.write_text(json.dumps({str(k): v for k, v in truth.items()}))
    MISSES.write_text(json.dumps({str(k): v for k, v in misses.items()}))
    MARKER.write_text(json.dumps(params, indent=2) + "\n")  # last: half-written data is rebuilt
    return truth, misses, time.perf_counter() - start


def load_texts() -> tuple[list[str], list[str]]:
    import orjson

    ids, texts = [], []
    with open(DATA, "rb") as handle:
        for line in handle:
            row = orjson.loads(line)
            ids.append(row["id"])
            texts.append(row["continuation"])
    return ids, texts


def bigram_jaccard(a: str, b: str) -> float:
    from blspdata.curate.filters import words

    def grams(text: str) -> set:
        t = words(text)
        n = NGRAM if len(t) >= NGRAM else 1
        return {tuple(t[i:i + n]) for i in range(len(t) - n + 1)}

    x, y = grams(a), grams(b)
    return len(x & y) / len(x | y) if x | y else 1.0


# ---------------------------------------------------------------------------- contenders
# Each returns {record id: id it duplicates} (its flags) and a note.

def run_ours_dedup(ids: list[str], texts: list[str]) -> tuple[dict[str, str], str]:
    from blspdata.curate.dedup import NearDuplicates

    near = NearDuplicates(THRESHOLD, NUM_PERM, NGRAM)
    flags: dict[str, str] = {}
    for start in range(0, len(texts), BATCH):
        batch_ids = ids[start:start + BATCH]
        signatures = near.signatures(texts[start:start + BATCH])
        for record_id, original in zip(batch_ids, near.check_batch(batch_ids, signatures)):
            if original is not None:
                flags[record_id] = original
    return flags, f"{near.bands} bands x {near.rows} rows, candidates verified (estimated Jaccard >= {THRESHOLD})"


def _shingles(text: str, words) -> list[bytes]:
    tokens = words(text)
    n = NGRAM if len(tokens) >= NGRAM else 1
    return [s.encode() for s in {" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}]


def run_datasketch(ids: list[str], texts: list[str], bulk: bool) -> tuple[dict[str, str], str]:
    from datasketch import MinHash, MinHashLSH

    from blspdata.curate.filters import words

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    flags: dict[str, str] = {}
    if bulk:
        minhashes = MinHash.generator((_shingles(t, words) for t in texts), num_perm=NUM_PERM)
    else:
        def fresh():
            for text in texts:
                m = MinHash(num_perm=NUM_PERM)
                m.update_batch(_shingles(text, words))
                yield m
        minhashes = fresh()
    for record_id, m in zip(ids, minhashes):
        found = lsh.query(m)
        if found:
            flags[record_id] = found[0]
        else:
            lsh.insert(record_id, m)
    return flags, f"{lsh.b} bands x {lsh.r} rows, no verification" + (", MinHash.generator" if bulk else "")


CURATE_OUT = OUT / "ours-curate.jsonl"


def run_ours_curate() -> str:
    from blspdata.curate.run import curate

    stats = curate([DATA], CURATE_OUT, progress=False)
    return f"{stats.kept} kept of {stats.inputs} -> {CURATE_OUT.relative_to(REPO)} (+ rejects, stats)"


def curate_flags() -> tuple[dict[str, str], dict[str, str]]:
    """ours-curate's rejects: (duplicate flags, other reasons), read after the clock stops."""
    from blspdata.records import sidecar

    flags: dict[str, str] = {}
    others: dict[str, str] = {}
    with open(sidecar(CURATE_OUT, "rejects.jsonl"), "rb") as handle:
        for line in handle:
            row = json.loads(line)
            if row["reason"].startswith(CURATE_REASONS):
                flags[row["id"]] = row["reason"].split(":", 1)[1]
            else:
                others[row["id"]] = row["reason"]
    return flags, others


def _current_rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args: argparse.Namespace) -> None:
    """Run one contender in this process; write its flags to a file and print one JSON line."""
    start = time.perf_counter()
    if args.only == "ours-curate":
        import blspdata.curate.run  # noqa: F401
        from blspdata.curate.filters import _identifier

        _identifier()  # the language-id model, loaded lazily on first use: not timed
    elif args.only == "ours-dedup":
        import numpy  # noqa: F401

        import blspdata.curate.dedup  # noqa: F401
    else:
        import datasketch  # noqa: F401

        import blspdata.curate.filters  # noqa: F401
    imported = time.perf_counter() - start
    ids = texts = None
    if args.only != "ours-curate":
        ids, texts = load_texts()  # not timed: curate reads its input itself
    base_rss = _current_rss()

    others: dict[str, str] = {}
    start = time.perf_counter()
    if args.only == "ours-dedup":
        flags, note = run_ours_dedup(ids, texts)
    elif args.only in ("datasketch", "datasketch-bulk"):
        flags, note = run_datasketch(ids, texts, bulk=args.only == "datasketch-bulk")
    else:
        note = run_ours_curate()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    if args.only == "ours-curate":
        flags, others = curate_flags()
    (OUT / f"{args.only}.flags.json").write_text(json.dumps({"flags": flags, "others": others}))
    print(json.dumps({"records": args.records, "seconds": seconds, "import_s": imported, "peak_rss": peak,
                      "base_rss": base_rss, "note": note}))


# ---------------------------------------------------------------------------- driver

def measure(name: str, args: argparse.Namespace) -> dict | None:
    command = [sys.executable, str(Path(__file__).resolve()), "--only", name, "--records", str(args.records),
               "--dup-share", str(args.dup_share), "--near-miss-share", str(args.near_miss_share),
               "--seed", str(args.seed)]
    row = run_isolated(command, name)
    if row is None:
        return None
    row["name"] = name
    saved = json.loads((OUT / f"{name}.flags.json").read_text())
    row["flags"], row["others"] = saved["flags"], saved["others"]
    return row


def quality(row: dict, truth: dict[int, int], misses: dict[int, int]) -> None:
    """Recall, precision, near-miss and right-original counts of one contender's flags, into row."""
    index = lambda record: int(record.rsplit("/", 1)[1])  # noqa: E731
    flagged = {index(k): index(v) for k, v in row["flags"].items()}
    hits = [i for i in flagged if i in truth]
    row["flagged"] = len(flagged)
    row["true"] = len(hits)
    row["right"] = sum(flagged[i] == truth[i] for i in hits)
    row["miss_flagged"] = sum(i in misses for i in flagged)
    row["recall"] = len(hits) / len(truth) if truth else float("nan")
    row["precision"] = len(hits) / len(flagged) if flagged else float("nan")
    others = {index(k): v for k, v in row["others"].items()}
    row["other_rejects"] = len(others)
    if others:
        from collections import Counter

        originals = set(truth.values())
        row["other_reasons"] = Counter(r.split(":", 1)[0] for r in others.values()).most_common()
        row["other_dups"] = sum(i in truth for i in others)
        row["other_originals"] = sum(i in originals for i in others)
        # the planted pairs curate could still see as pairs: both rows passed the filters
        seen = [i for i, j in truth.items() if i not in others and j not in others]
        row["recall_seen"] = sum(i in flagged for i in seen) / len(seen) if seen else float("nan")
        row["seen"] = len(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200000, help="synthetic continuations (default 200000)")
    parser.add_argument("--dup-share", type=float, default=0.1,
                        help="share of them that are planted near-duplicates (default 0.1)")
    parser.add_argument("--near-miss-share", type=float, default=0.05,
                        help="share of them that are planted near-misses, Jaccard 0.6-0.78 (default 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default 0)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help=f"comma-separated contenders to run (default: all, {','.join(CONTENDERS)}); "
                             "e.g. ours-curate alone for the stage's time and memory at scale")
    parser.add_argument("--only", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 0 <= args.dup_share < 1 or not 0 <= args.near_miss_share or args.dup_share + args.near_miss_share >= 1 \
            or args.records < 2:
        parser.error("need --records >= 2, --dup-share and --near-miss-share >= 0 and together < 1")
    if args.only:
        return child(args)
    chosen = [name for name in args.contenders.split(",") if name]
    if not chosen or set(chosen) - set(CONTENDERS):
        parser.error(f"--contenders: a comma-separated list of {', '.join(CONTENDERS)}")

    started = time.perf_counter()
    sys.path.insert(0, str(REPO))
    import numpy as np

    print(f"machine: {os.cpu_count()} CPUs (os.cpu_count), Python {sys.version.split()[0]}; "
          "every contender is single-process")
    truth, misses, built = build_data(args.records, args.dup_share, args.near_miss_share, args.seed)
    ids, texts = load_texts()
    print(f"data: {DATA.relative_to(REPO)}: {args.records} continuations, {len(truth)} planted near-duplicates "
          f"(one word replaced), {len(misses)} planted near-misses (2-3 words replaced; seed {args.seed}); "
          + (f"built in {built:.1f} s" if built else "reused (marker matches)"))
    for label, pairs in (("near-duplicate", truth), ("near-miss", misses)):
        jaccard = np.array([bigram_jaccard(texts[j], texts[i]) for i, j in pairs.items()])
        if len(jaccard):
            print(f"planted {label} pairs' true word-bigram Jaccard: min {jaccard.min():.3f}, "
                  f"p10 {np.percentile(jaccard, 10):.3f}, median {np.median(jaccard):.3f}, max {jaccard.max():.3f}; "
                  f"{(jaccard < THRESHOLD).sum()} below the {THRESHOLD} threshold")
    del ids, texts
    print("each contender runs in its own subprocess, once; time excludes imports; "
          "base = RSS before the timed part (after loading ids + texts for the dedup-only ones)\n")

    rows = [measure(name, args) for name in chosen]
    done = {row["name"]: row for row in rows if row}
    for row in done.values():
        quality(row, truth, misses)

    mb = 2**20
    header = (f"{'contender':<16} {'records':>8} {'seconds':>8} {'records/s':>10} {'peak RSS MB':>12} {'base MB':>8} "
              f"{'recall':>7} {'precision':>9} {'flagged':>8} {'near-miss flagged':>17} {'right orig':>10} "
              f"{'import s':>9}")
    print(header)
    print("-" * len(header))
    for row in done.values():
        print(f"{row['name']:<16} {row['records']:>8} {row['seconds']:>8.2f} {row['records'] / row['seconds']:>10.0f} "
              f"{row['peak_rss'] / mb:>12.0f} {row['base_rss'] / mb:>8.0f} {row['recall']:>7.4f} "
              f"{row['precision']:>9.4f} {row['flagged']:>8} {row['miss_flagged']:>17} {row['right']:>10} "
              f"{row['import_s']:>9.2f}")
    print()
    for row in done.values():
        print(f"  {row['name']:<15} {row['note']}")
    curated = done.get("ours-curate")
    if curated and curated["other_rejects"]:
        reasons = ", ".join(f"{r} {n}" for r, n in curated["other_reasons"])
        print(f"  ours-curate: {curated['other_rejects']} rows rejected by the filters before dedup ({reasons}): "
              f"{curated['other_dups']} planted duplicates, {curated['other_originals']} originals; "
              f"recall over the {curated['seen']} pairs that both passed: {curated['recall_seen']:.4f}")
    print()

    rate = lambda row: row["records"] / row["seconds"]  # noqa: E731
    ours = done.get("ours-dedup")
    for name in ("datasketch", "datasketch-bulk"):
        other = done.get(name)
        if ours and other:
            print(f"ours-dedup vs {name}: {rate(ours) / rate(other):.2f}x the records/s; "
                  f"recall {ours['recall'] - other['recall']:+.4f}, precision {ours['precision'] - other['precision']:+.4f} "
                  f"(ours minus theirs); peak RSS {ours['peak_rss'] / mb:.0f} vs {other['peak_rss'] / mb:.0f} MB")
    if ours and curated:
        print(f"ours-curate end to end: {rate(curated):.0f} records/s, {rate(curated) / rate(ours):.2f}x the rate of "
              "near-dedup alone")
    print(f"whole run: {time.perf_counter() - started:.0f} s")
    if len(done) < len(chosen):
        sys.exit(1)


if __name__ == "__main__":
    main()
