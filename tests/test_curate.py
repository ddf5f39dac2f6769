"""`blspdata curate`: each filter with a hit and a near miss, exact and near-duplicates
(known pairs, across two input files; other recordings of one line kept), statistics and the
kept share per label, and nothing lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blspdata.curate.filters import FilterSettings, first_reason, words
from blspdata.curate.dedup import NearDuplicates
from blspdata.curate.run import CurateError, curate
from blspdata.records import JsonlWriter, Record
from conftest import blspdata, read_jsonl

TRANSCRIPT = "she put the letters on the table by the door"


def record(continuation: str, *, text: str | None = None, finished: bool = True, task: str = "semantic",
           emotion: str | None = None, n: int = 0, speaker: str = "s1", language: str = "en") -> Record:
    # Each record says its own line unless a test gives one: rows of one line are other
    # recordings of it, never duplicates of each other.
    text = text if text is not None else (TRANSCRIPT if n == 0 else f"{TRANSCRIPT} number {n}")
    return Record(id=f"c/train/{n}", corpus="c", split="train", audio=f"a/{n}.flac", duration=2.0,
                  sample_rate=16000, text=text, raw_text=text, speaker=speaker, emotion=emotion, language=language,
                  task=task, instruction="Continue the following sentence in a coherent style: " + text,
                  continuation=continuation, finished=finished, generator={"model": "m"})


CASES = [  # (continuation, reason or None, extra record fields, enabled optional filters)
    ("I'm sorry, but I cannot continue this sentence for you.", "refusal", {}, ()),
    ("As an AI language model, I have no letters to put anywhere.", "refusal", {}, ()),
    ("I don't have personal experiences with letters or tables.", "refusal", {}, ()),
    ("Sorry, the rest of that sentence escapes me entirely today.", None, {}, ()),  # an apology, no refusal
    ("She said she was sorry, but I cannot stay angry at her.", None, {}, ()),  # near miss: a story's words
    ("I’m sorry, but I cannot continue this sentence for you.", "refusal", {}, ()),  # curly apostrophe
    ("Well, i'm not sure what you want me to write here.", "refusal", {}, ()),  # recipe pattern 5, any case
    ("Well, I'm not sure what the letters said anymore.", None, {}, ()),
    ("Unfortunately, I cannot complete this sentence as asked.", "refusal", {}, ()),
    ("Unfortunately, the train had already left the station.", None, {}, ()),
    ("My apologies, but that is not something I will continue.", "refusal", {}, ()),
    ("I can’t help with continuing this sentence.", "refusal", {}, ()),
    ("I can't wait to read them all again tomorrow morning.", None, {}, ()),  # not a refusal object
    ("As an AI, I have no letters to put anywhere.", "refusal", {}, ()),
    ("As an AI researcher, she read the letters twice before bed.", None, {}, ()),  # not the assistant itself
    # An apology is empathy, what stage 2 teaches; only an apology followed by a refusal is one.
    *[(text, None, {"task": "emotion", "emotion": emotion}, ()) for text, emotion in [
        ("I'm sorry to hear that you're feeling this way.", "sad"),
        ("I’m so sorry for your loss, she said and took his hand.", "sad"),
        ("Sorry, I didn't mean to shout at you like that.", "angry"),
        ("I am really sorry, I won't do that again, I promise.", "sad"),
        ("I apologize for the noise, we were celebrating the good news!", "happy"),
        ("I'm sorry, I can't stop thinking about what happened.", "sad"),
        ("I can't help but smile when I think of her letters.", "happy"),  # not a refusal object
        ("I can't do this anymore, she whispered to the empty room.", "sad"),
        ("I can't continue like this, he said quietly.", "sad"),
        ("I don't have feelings for him anymore, she said.", "neutral"),
    ]],
    ("I'm sorry, but I can't continue this sentence.", "refusal", {}, ()),
    ("I’m sorry, but I can’t help with that request.", "refusal", {}, ()),
    ("I'm sorry. I cannot provide a continuation for this.", "refusal", {}, ()),
    ("I apologize, but I'm unable to complete that sentence.", "refusal", {}, ()),
    ("Sorry, but I won't write about that.", "refusal", {}, ()),
    # the reference's `i'm sorry, but i` anywhere (the default; recipe_sorry_but_i = false narrows it)
    ("I'm sorry, but I think you're wrong about the letters.", "refusal", {}, ()),
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
    *[("Then she walked to the station in the rain and waited.", None, {"language": tag}, ())
      for tag in ("EN", "en-US", "en_GB", "eng")],  # the same language, written other ways
    ("Then she walked to the station in the rain and waited.", "language_en", {"language": "fra"}, ()),
    ("Puis elle est partie à la gare sous la pluie sans dire un mot.", None, {"language": "fre"}, ()),
    ("Puis elle est partie à la gare sous la pluie sans dire un mot.", "language_fr", {"language": "en-GB"}, ()),
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
        # row 1's line, another speaker, another continuation -> kept (audio differs; continuations compared)
        record("the cat watched from the window as the rain began to fall on the empty street", n=5, speaker="s2",
               text=f"{TRANSCRIPT} number 1"),
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


OTHER = "the train was late again so she read her book on the cold platform until the lights came on"


def line(n: int, said: str, continuation: str, emotion: str = "sad") -> Record:
    return record(continuation, text=said, task="emotion", emotion=emotion, n=n)


@pytest.mark.parametrize("batch_size", [4096, 2])  # one batch, and originals in earlier batches
def test_other_recordings_of_a_line_are_kept_and_its_continuation_for_other_lines_dropped(tmp_path: Path,
                                                                                          batch_size: int):
    """IEMOCAP and MELD repeat short lines ("Yeah.") hundreds of times and greedy decoding gives
    each recording the same continuation: the audio differs, so every one is kept. The same
    continuation for another line (or the line with another label) is still a duplicate;
    duplicates are looked for within a task (stage 1 and stage 2 train on different rows)."""
    inputs = write(tmp_path / "a.jsonl", [
        line(1, "Yeah.", BASE),                                              # the original
        line(2, "yeah", BASE),                                               # the same line, normalised -> kept
        line(3, "Okay.", BASE),                                              # another line -> exact duplicate
        line(4, "Yeah.", BASE, emotion="happy"),                             # the line said happily -> duplicate
        line(5, "Yeah!", BASE.replace("evening tide", "morning tide")),      # near, the same line -> kept
        line(6, "Okay.", BASE.replace("long hill", "steep hill")),           # near, another line -> dropped
        line(7, "Yeah.", BASE.upper() + "!"),      # after other lines' rows: still the original's line -> kept
        record(BASE.replace("fishing boats", "old boats"), text="Thank you.", n=8),  # near 1, other task -> kept
        record(OTHER, text="Thank you.", n=9),                               # semantic: another original
        record(OTHER + ".", text="thank you", n=10),                         # its line -> kept
        record(OTHER.upper(), text="No thanks.", n=11),                      # another line -> dropped
        record(BASE.replace("fishing boats", "old boats").replace("evening", "morning"), text="Good night.",
               n=12),                                                        # near 8, another line -> dropped
    ])
    out = tmp_path / "out.jsonl"
    curate([inputs], out, progress=False, batch_size=batch_size)
    assert [row["id"] for row in read_jsonl(out)] == [f"c/train/{n}" for n in (1, 2, 5, 7, 8, 9, 10)]
    assert [(row["id"], row["reason"]) for row in read_jsonl(tmp_path / "out.rejects.jsonl")] == [
        ("c/train/3", "exact_duplicate_of:c/train/1"), ("c/train/4", "exact_duplicate_of:c/train/1"),
        ("c/train/6", "near_duplicate_of:c/train/1"), ("c/train/11", "exact_duplicate_of:c/train/9"),
        ("c/train/12", "near_duplicate_of:c/train/8")]


def test_near_duplicates_of_their_own_group_are_kept_and_not_indexed():
    near = NearDuplicates(threshold=0.8)
    first, copy, other = near.signatures([BASE, BASE.replace("evening", "morning"), OTHER])
    assert near.check_and_add("a", first, group=1) is None
    assert near.check_and_add("b", copy, group=1) is None   # the same line: kept
    assert near.check_and_add("c", copy, group=2) == "a"    # another line: a duplicate of the original
    assert near.check_and_add("d", copy) == "a"             # no group: every near-duplicate counts
    assert near.check_and_add("e", other, group=2) is None


def test_apology_without_refusal_kept_unless_the_recipe_pattern_matches(tmp_path: Path):
    wrong = "I'm sorry, but I think you're wrong about the letters."
    refused = "I'm sorry, but I can't continue this sentence."
    inputs = write(tmp_path / "a.jsonl", [record(wrong, n=1), record(refused, n=2)])
    out = tmp_path / "out.jsonl"
    blspdata("curate", inputs, "-o", out)  # the reference's `i'm sorry, but i`: both dropped
    assert read_jsonl(out) == []
    config = tmp_path / "curate.toml"
    config.write_text("recipe_sorry_but_i = false\n")
    blspdata("curate", inputs, "-o", out, "--config", config)
    assert [row["id"] for row in read_jsonl(out)] == ["c/train/1"]
    assert [(row["id"], row["reason"]) for row in read_jsonl(tmp_path / "out.rejects.jsonl")] == [
        ("c/train/2", "refusal")]
    blspdata("curate", inputs, "-o", out, "--config", config, "--recipe-sorry-but-i")  # the flag wins
    assert read_jsonl(out) == []
    blspdata("curate", inputs, "-o", out, "--no-recipe-sorry-but-i")
    assert [row["id"] for row in read_jsonl(out)] == ["c/train/1"]


def story(n: int) -> str:
    """A continuation of its own: no word of it in another's, so never a duplicate."""
    return " ".join(f"{word}{n}" for word in ("harbour", "boats", "gulls", "nets", "tide", "lights", "rain"))


def test_kept_share_per_label_and_a_warning_when_one_label_loses_far_more(tmp_path: Path):
    refusal_text = "I'm sorry, but I cannot help with that."
    rows = ([line(n, f"neutral line {n}", story(n), "neutral") for n in range(9)]
            + [line(9, "neutral line 9", "Then left.", "neutral")]                           # too_short
            + [line(n, f"happy line {n}", story(n), "happy") for n in range(10, 13)]       # too few to judge
            + [line(n, f"sad line {n}", story(n)) for n in range(20, 24)]
            + [line(n, f"sad line {n}", refusal_text) for n in range(24, 30)]                # refusals
            + [record(story(40), n=40)])                                                     # semantic: no label
    inputs = write(tmp_path / "a.jsonl", rows)
    out = tmp_path / "out.jsonl"
    result = blspdata("curate", inputs, "-o", out, "--disable", "language")
    stats = json.loads((tmp_path / "out.stats.json").read_text())
    assert stats["kept_share_by_emotion"] == {
        "neutral": {"before": 10, "after": 9, "kept_share": 0.9, "rejects": {"too_short": 1}},
        "happy": {"before": 3, "after": 3, "kept_share": 1.0, "rejects": {}},
        "sad": {"before": 10, "after": 4, "kept_share": 0.4, "rejects": {"refusal": 6}},
    }
    assert "neutral 9/10 (90%), happy 3/3 (100%), sad 4/10 (40%)" in result.stdout
    assert len(stats["warnings"]) == 1 and stats["warnings"][0].startswith("sad rows kept 40% (4 of 10)")
    assert "warning: sad rows kept 40% (4 of 10), the other labels' 92%" in result.stderr
    assert "refusal 6" in result.stderr

    # near miss: 8 of 10 sad rows kept against 92% of the rest is no warning
    rows = rows[:13] + [line(n, f"sad line {n}", story(n)) for n in range(20, 28)] + rows[-3:]
    result = blspdata("curate", write(tmp_path / "b.jsonl", rows), "-o", out, "--disable", "language")
    assert json.loads((tmp_path / "out.stats.json").read_text())["warnings"] == []
    assert "warning" not in result.stderr and "sad 8/10 (80%)" in result.stdout


def test_dedup_can_be_turned_off_and_filters_configured(tmp_path: Path):
    inputs = write(tmp_path / "a.jsonl", [record(BASE, n=1), record(BASE, n=2), record("Then left.", n=3)])
    blspdata("curate", inputs, "-o", tmp_path / "on.jsonl")  # near miss: on by default (row 2 repeats row 1 for another line)
    assert len(read_jsonl(tmp_path / "on.jsonl")) == 1
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


FRENCH = "Puis elle est partie à la gare sous la pluie sans dire un mot."
CUT = "and then she went to the kitchen to make some tea for"


def test_flags_win_over_the_config_file(tmp_path: Path):
    inputs = write(tmp_path / "a.jsonl", [record(FRENCH, n=1), record(CUT, n=2, finished=False)])
    config = tmp_path / "curate.toml"
    config.write_text('disable = "language"\ndrop_unfinished = true\n')  # one name alone is a list of one
    out = tmp_path / "out.jsonl"
    blspdata("curate", inputs, "-o", out, "--config", config)
    assert [row["id"] for row in read_jsonl(out)] == ["c/train/1"]  # French kept, the cut one dropped
    blspdata("curate", inputs, "-o", out, "--config", config, "--enable", "language", "--disable", "unfinished")
    assert [row["id"] for row in read_jsonl(out)] == ["c/train/2"]
    rejects = read_jsonl(tmp_path / "out.rejects.jsonl")
    assert [(row["id"], row["reason"]) for row in rejects] == [("c/train/1", "language_fr")]


@pytest.mark.parametrize("setting, message", [
    ("near_dup_threshold = 0", "near_dup_threshold must be in (0, 1], got 0.0"),
    ("near_dup_threshold = 1.5", "near_dup_threshold must be in (0, 1]"),
    ('near_dup_threshold = "high"', "near_dup_threshold must be a number, got 'high'"),
    ("num_perm = 0", "num_perm must be >= 1"),
    ("num_perm = 64.5", "num_perm must be an integer"),
    ("ngram = 0", "ngram must be >= 1"),
    ('near_dedup = "no"', "near_dedup must be true or false, got 'no'"),
    ("exact_dedup = 0", "exact_dedup must be true or false"),
    ("min_words = true", "min_words must be an integer"),
    ("echo_overlap = 1.5", "echo_overlap must be between 0 and 1, got 1.5"),
    ("max_words = 0", "max_words must be >= 1"),
    ("min_words = -1", "min_words must be >= 0"),
    ("disable = 5", "disable must be a list of filter names"),
    ('enable = ["language"]\ndisable = ["language"]', "both enabled and disabled: language"),
])
def test_bad_settings_are_user_errors(tmp_path: Path, setting: str, message: str):
    inputs = write(tmp_path / "a.jsonl", [record(BASE, n=1)])
    config = tmp_path / "curate.toml"
    config.write_text(setting + "\n")
    result = blspdata("curate", inputs, "-o", tmp_path / "out.jsonl", "--config", config, check=False)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_bad_flags_are_user_errors_and_good_ones_run(tmp_path: Path):
    inputs = write(tmp_path / "a.jsonl", [record(BASE, n=1)])
    out = tmp_path / "out.jsonl"
    result = blspdata("curate", inputs, "-o", out, "--num-perm", "0", check=False)
    assert result.returncode == 1 and "num_perm must be >= 1" in result.stderr
    blspdata("curate", inputs, "-o", out, "--num-perm", "16", "--ngram", "1", "--near-dup-threshold", "1")
    assert len(read_jsonl(out)) == 1


@pytest.mark.parametrize("batch_size", [4096, 2])  # one batch, and originals in earlier batches
def test_no_reject_is_named_an_original_and_rejects_keep_input_order(tmp_path: Path, batch_size: int):
    inputs = write(tmp_path / "a.jsonl", [
        record(BASE, n=1),
        record(BASE.replace("long hill", "steep hill"), n=2),  # near-duplicate of 1
        record("I'm sorry, but I cannot help with that.", n=3),
        record(BASE.replace("long hill", "steep hill").upper(), n=4),  # exact copy of 2, which was dropped
        record(BASE + ".", n=5),  # exact copy of 1, which was kept
    ])
    out = tmp_path / "out.jsonl"
    curate([inputs], out, progress=False, batch_size=batch_size)
    assert [row["id"] for row in read_jsonl(out)] == ["c/train/1"]
    assert [(row["id"], row["reason"]) for row in read_jsonl(tmp_path / "out.rejects.jsonl")] == [
        ("c/train/2", "near_duplicate_of:c/train/1"), ("c/train/3", "refusal"),
        ("c/train/4", "near_duplicate_of:c/train/1"), ("c/train/5", "exact_duplicate_of:c/train/1")]


def test_exact_dedup_sees_one_spelling_of_apostrophes_and_accents(tmp_path: Path):
    import unicodedata

    text = "she said she didn't know the café by the harbour where they first met"
    decomposed = unicodedata.normalize("NFD", text)
    assert words(decomposed) == words(text) and "café" in words(decomposed)  # the accent stays
    inputs = write(tmp_path / "a.jsonl", [
        record(text, n=1), record(text.replace("'", "’"), n=2), record(decomposed, n=3),
        record(text.replace("café", "cafe"), n=4),  # near miss: another word without its accent
    ])
    out = tmp_path / "out.jsonl"
    blspdata("curate", inputs, "-o", out, "--no-near-dedup")
    assert [row["id"] for row in read_jsonl(out)] == ["c/train/1", "c/train/4"]
    rejects = {row["id"]: row["reason"] for row in read_jsonl(tmp_path / "out.rejects.jsonl")}
    assert rejects == {"c/train/2": "exact_duplicate_of:c/train/1", "c/train/3": "exact_duplicate_of:c/train/1"}


def test_rows_written_are_checked_against_rows_read(tmp_path: Path, monkeypatch):
    inputs = write(tmp_path / "a.jsonl", [record(BASE, n=1), record("Then left.", n=2)])
    out = tmp_path / "out.jsonl"
    curate([inputs], out, progress=False)  # near miss: every row written, three files
    assert all(path.exists() for path in (out, tmp_path / "out.rejects.jsonl", tmp_path / "out.stats.json"))
    for path in tmp_path.glob("out.*"):
        path.unlink()
    write_row = JsonlWriter.write

    def lossy(self, row):  # a writer that loses the reject: the counts tell
        if row.get("reason") != "too_short":
            write_row(self, row)
    monkeypatch.setattr(JsonlWriter, "write", lossy)
    with pytest.raises(CurateError, match="wrote 1 kept \\+ 0 rejected rows for 2 read"):
        curate([inputs], out, progress=False)
    assert not any(tmp_path.glob("out.*"))  # nothing committed, no stats for outputs that are not there


def test_missing_input_is_reported_before_anything_is_written(tmp_path: Path):
    inputs = write(tmp_path / "a.jsonl", [record(BASE, n=1)])
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    result = blspdata("curate", inputs, tmp_path / "missing.jsonl", "-o", out, check=False)
    assert result.returncode == 1 and "input not found" in result.stderr and "missing.jsonl" in result.stderr
    assert out.read_text() == "old\n" and not (tmp_path / "out.rejects.jsonl").exists()
