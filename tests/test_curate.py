"""`blspdata curate`: each filter with a hit and a near miss, exact and near-duplicates
(known pairs, across two input files), statistics, and nothing lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blspdata.curate.filters import FilterSettings, first_reason
from blspdata.curate.dedup import NearDuplicates
from blspdata.records import Record
from conftest import blspdata, read_jsonl

TRANSCRIPT = "she put the letters on the table by the door"


def record(continuation: str, *, text: str = TRANSCRIPT, finished: bool = True, task: str = "semantic",
           emotion: str | None = None, n: int = 0, speaker: str = "s1", language: str = "en") -> Record:
    return Record(id=f"c/train/{n}", corpus="c", split="train", audio=f"a/{n}.flac", duration=2.0,
                  sample_rate=16000, text=text, raw_text=text, speaker=speaker, emotion=emotion, language=language,
                  task=task, instruction="Continue the following sentence in a coherent style: " + text,
                  continuation=continuation, finished=finished, generator={"model": "m"})


CASES = [  # (continuation, reason or None, extra record fields, enabled optional filters)
    ("I'm sorry, but I cannot continue this sentence for you.", "refusal", {}, ()),
    ("As an AI language model, I have no letters to put anywhere.", "refusal", {}, ()),
    ("I don't have personal experiences with letters or tables.", "refusal", {}, ()),
    ("Sorry, the rest of that sentence escapes me entirely today.", "refusal", {}, ()),
    ("She said she was sorry, but I cannot stay angry at her.", None, {}, ()),  # near miss: a story's words
    ("", "empty", {}, ()),
    ("Then left.", "too_short", {}, ()),
    ("Then she left the house quietly.", None, {}, ()),
    (" ".join(["word"] * 10 + [f"w{i}" for i in range(200)]), "too_long", {}, ()),
    ("and then she went to the kitchen to make some tea for", "unfinished", {"finished": False}, ("unfinished",)),
    ("and then she went to the kitchen to make some tea for", None, {"finished": False}, ()),  # kept by default
    ("and then she went out and then she went out and then she went out again", "repetition", {}, ()),
    ("and then she went out, came back in, and then went to bed early.", None, {}, ()),
    ("She put the letters on the table by the door.", "echo", {}, ()),
    ("She put the letters on the table near the door.", "echo", {}, ()),  # reworded a little
    ("Then she locked the door and walked to the station in the rain.", None, {}, ()),  # shares some words
    ("Continue the following sentence in a coherent style: she put the letters", "instruction_leak", {}, ()),
    ("Puis elle est partie à la gare sous la pluie sans dire un mot.", "language_fr", {}, ()),
    ("Then she left for the café and ordered a croissant au beurre.", None, {}, ()),
    ("She felt so sad that nobody had written back in weeks.", "names_label",
     {"task": "emotion", "emotion": "sad"}, ("label_word",)),
    ("She felt so low that nobody had written back in weeks.", None,
     {"task": "emotion", "emotion": "sad"}, ("label_word",)),
]


@pytest.mark.parametrize("continuation, reason, fields, enable", CASES)
def test_each_filter_hits_and_near_misses_pass(continuation, reason, fields, enable):
    settings = FilterSettings()
    settings.enabled |= set(enable)
    assert first_reason(record(continuation, **fields), settings) == reason


def write(path: Path, records: list[Record]) -> Path:
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    return path


BASE = ("then she walked down the long hill to the harbour where the fishing boats were coming in "
        "with the evening tide and the gulls were crying over the nets")


def test_near_duplicates_across_two_files_and_nothing_lost(tmp_path: Path):
    first = write(tmp_path / "a.jsonl", [
        record(BASE, n=1),
        record("the train was late again so she read her book on the cold platform until the lights came on", n=2),
        record("I'm sorry, but I cannot help with that.", n=3),
    ])
    second = write(tmp_path / "b.jsonl", [
        # a paraphrase-level edit of BASE (one word swapped: bigram Jaccard 0.87) -> near-duplicate
        record(BASE.replace("long hill", "steep hill"), n=4),
        # more edits (Jaccard ~0.6): a different continuation, kept
        record(BASE.replace("long hill", "steep hill").replace("fishing boats", "old ferries")
               .replace("evening tide", "morning mist"), n=7),
        # same transcript, another speaker, another continuation -> kept (audio differs; continuations compared)
        record("the cat watched from the window as the rain began to fall on the empty street", n=5, speaker="s2"),
        record(BASE.upper() + "!", n=6),  # same words, other case and punctuation -> exact duplicate
    ])
    (tmp_path / "b.jsonl").open("a").write("{not json\n")
    out = tmp_path / "curated.jsonl.gz"
    result = blspdata("curate", first, second, "-o", out)
    assert [row["id"] for row in read_jsonl(out)] == ["c/train/1", "c/train/2", "c/train/7", "c/train/5"]
    rejects = {row["id"]: row["reason"] for row in read_jsonl(tmp_path / "curated.rejects.jsonl") if row.get("id")}
    assert rejects == {"c/train/3": "refusal", "c/train/4": "near_duplicate_of:c/train/1",
                       "c/train/6": "exact_duplicate_of:c/train/1"}
    stats = json.loads((tmp_path / "curated.stats.json").read_text())
    assert stats["input"] == 8 and stats["kept"] == 4 and stats["rejected"] == 4
    assert stats["rejects"] == {"refusal": 1, "near_duplicate": 1, "exact_duplicate": 1, "malformed_row": 1}
    assert stats["by_corpus"] == {"before": {"c": 7}, "after": {"c": 4}}
    assert sum(b["count"] for b in stats["continuation_words"]["after"]["histogram"]) == 4
    assert "4 of 8 kept" in result.stdout


def test_dedup_can_be_turned_off_and_filters_configured(tmp_path: Path):
    inputs = write(tmp_path / "a.jsonl", [record(BASE, n=1), record(BASE, n=2), record("Then left.", n=3)])
    config = tmp_path / "curate.toml"
    config.write_text('min_words = 1\ndisable = ["echo"]\nexact_dedup = false\n')
    out = tmp_path / "out.jsonl"
    blspdata("curate", inputs, "-o", out, "--config", config, "--no-near-dedup")
    assert len(read_jsonl(out)) == 3
    result = blspdata("curate", inputs, "-o", out, "--disable", "spelling", check=False)
    assert result.returncode == 1 and "unknown filter" in result.stderr and "repetition" in result.stderr


def test_minhash_similarity_tracks_jaccard():
    near = NearDuplicates(threshold=0.8)
    texts = [BASE, BASE.replace("evening", "morning"), "a different text about trains and stations at night"]
    signatures = near.signatures(texts)
    assert (signatures[0] == signatures[1]).mean() > 0.8
    assert (signatures[0] == signatures[2]).mean() < 0.1
    assert near.check_and_add("a", signatures[0]) is None
    assert near.check_and_add("b", signatures[1]) == "a"
    assert near.check_and_add("c", signatures[2]) is None
