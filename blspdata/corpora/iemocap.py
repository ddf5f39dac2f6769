"""IEMOCAP (sail.usc.edu/iemocap), as released:

    IEMOCAP_full_release/Session1/dialog/EmoEvaluation/Ses01F_impro01.txt
    IEMOCAP_full_release/Session1/dialog/transcriptions/Ses01F_impro01.txt
    IEMOCAP_full_release/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav

An EmoEvaluation file gives each turn's consensus label and mean valence/activation/
dominance on a tab-separated line, followed by the individual evaluators' lines, which
we skip:

    [6.2901 - 8.2357]	Ses01F_impro01_F000	neu	[2.5000, 2.5000, 2.5000]
    C-E2:	Neutral;	()

A transcription line is the turn id, its time span and the text:

    Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.

The speaker is the actor of the session whose gender letter follows the dialog id in the
turn id (`..._F000` -> Ses01_F). Labels are mapped per PAPER.md (`exc` merged into `happy`).
"""

from __future__ import annotations

import os
import re
from typing import Iterator, Sequence

from blspdata import labels
from blspdata.corpora.base import AudioItem, IngestError, read_text_lines, resolve_label
from blspdata.records import Record, Reject

_EVAL = re.compile(
    r"^\[(?P<start>\d+(?:\.\d+)?) - (?P<end>\d+(?:\.\d+)?)\]\t(?P<utt>\S+)\t(?P<label>\S+)\t"
    r"\[(?P<v>\d+(?:\.\d+)?), (?P<a>\d+(?:\.\d+)?), (?P<d>\d+(?:\.\d+)?)\]\s*$"
)
_TRANSCRIPT = re.compile(r"^(?P<utt>Ses\d\d[FM]_\S+) \[[\d.]+-[\d.]+\]: ?(?P<text>.*)$")


# The usual leave-one-session-out split tests on the last session.
DEFAULT_TEST_SESSIONS = (5,)


def scan(root: str, test_sessions: Sequence[int] | None = None, dev_sessions: Sequence[int] = (),
         label_map: str | os.PathLike | None = None) -> Iterator[AudioItem | Reject]:
    """`test_sessions` defaults to DEFAULT_TEST_SESSIONS (if a session named explicitly is absent, that is an error)."""
    if not os.path.isdir(root):
        raise IngestError(f"IEMOCAP root not found: {root}")
    sessions = sorted(
        int(name[7:]) for name in os.listdir(root) if re.fullmatch(r"Session\d+", name)
        and os.path.isdir(os.path.join(root, name))
    )
    if not sessions:
        raise IngestError(f"no Session1..Session5 folders under {root} (expected IEMOCAP_full_release)")
    absent = sorted((set(test_sessions or ()) | set(dev_sessions)) - set(sessions))
    if absent:
        raise IngestError(f"session(s) {', '.join(map(str, absent))} named for the test/dev split not found under {root} "
                          f"(it has Session{', Session'.join(map(str, sessions))})")
    test_sessions = DEFAULT_TEST_SESSIONS if test_sessions is None else test_sessions
    overlap = set(test_sessions) & set(dev_sessions)
    if overlap:
        raise IngestError(f"session(s) {sorted(overlap)} are in both the test and the dev split")
    mapping = labels.corpus_map(labels.IEMOCAP, label_map)
    for session in sessions:
        split = "test" if session in test_sessions else "dev" if session in dev_sessions else "train"
        yield from _scan_session(os.path.join(root, f"Session{session}"), session, split, mapping)


def _scan_session(folder: str, session: int, split: str, mapping: dict) -> Iterator[AudioItem | Reject]:
    eval_dir = os.path.join(folder, "dialog", "EmoEvaluation")
    trans_dir = os.path.join(folder, "dialog", "transcriptions")
    wav_root = os.path.join(folder, "sentences", "wav")
    if not os.path.isdir(eval_dir):
        yield Reject("labels_missing", eval_dir, "no EmoEvaluation folder in this session")
        return
    dialogs = sorted(name[:-4] for name in os.listdir(eval_dir) if name.endswith(".txt") and name.startswith("Ses"))
    for dialog in dialogs:
        transcripts, bad = _read_transcripts(os.path.join(trans_dir, f"{dialog}.txt"))
        yield from bad
        wav_dir = os.path.join(wav_root, dialog)
        wavs = {n[:-4] for n in os.listdir(wav_dir) if n.endswith(".wav")} if os.path.isdir(wav_dir) else set()
        labelled: set[str] = set()
        eval_path = os.path.join(eval_dir, f"{dialog}.txt")
        for number, line, error in read_text_lines(eval_path):
            location = f"{eval_path}:{number}"
            if not line.startswith("["):
                continue  # header, evaluator lines, blank lines
            match = _EVAL.match(line)
            if not match:
                yield Reject("undecodable_text" if error else "malformed_row", location, error or f"expected '[start - end]\\tUTT\\tlabel\\t[V, A, D]', got {line!r}")
                continue
            utt = match["utt"]
            record_id = f"iemocap/{split}/{utt}"
            if utt in labelled:
                yield Reject("duplicate_id", location, f"{utt} has two evaluation lines", id=record_id)
                continue
            labelled.add(utt)
            if error:
                yield Reject("undecodable_text", location, error, id=record_id)
                continue
            raw_label = match["label"]
            emotion, rejected = resolve_label(raw_label, mapping, "an IEMOCAP", location, record_id)
            if rejected:
                yield rejected
                continue
            if utt not in transcripts:
                yield Reject("transcript_missing", location, f"no line for {utt} in {trans_dir}/{dialog}.txt", id=record_id)
                continue
            text, text_location = transcripts[utt]
            if text is None:
                yield Reject("undecodable_text", text_location, f"undecodable bytes in the transcript of {utt}", id=record_id)
                continue
            audio = os.path.join(wav_dir, f"{utt}.wav")
            if utt not in wavs:
                yield Reject("audio_missing", location, f"no such file: {audio}", id=record_id)
                continue
            record = Record(
                id=record_id, corpus="iemocap", split=split, audio=audio, text=text, raw_text=text,
                speaker=f"Ses{session:02d}_{utt.rsplit('_', 1)[1][0]}", emotion=emotion, raw_emotion=raw_label,
                extra={"valence": float(match["v"]), "arousal": float(match["a"]), "dominance": float(match["d"]),
                       "session": session, "dialog": dialog, "improvised": "_impro" in dialog,
                       "dialog_start": float(match["start"]), "dialog_end": float(match["end"])},
            )
            yield AudioItem(audio, [record], [location])
        for utt in sorted(wavs - labelled):
            yield Reject("label_missing", os.path.join(wav_dir, f"{utt}.wav"),
                         f"no EmoEvaluation line for {utt} in {eval_path}", id=f"iemocap/{split}/{utt}")


def _read_transcripts(path: str) -> tuple[dict[str, tuple[str | None, str]], list[Reject]]:
    """`{utt: (text or None if undecodable, location)}` and rejects for lines that name no turn."""
    transcripts: dict[str, tuple[str | None, str]] = {}
    bad: list[Reject] = []
    if not os.path.isfile(path):
        return transcripts, bad  # each labelled turn is then rejected as transcript_missing
    for number, line, error in read_text_lines(path):
        location = f"{path}:{number}"
        if not line.startswith("Ses"):
            continue  # lines of other speakers/annotations carry no turn id
        match = _TRANSCRIPT.match(line)
        if not match:
            bad.append(Reject("malformed_row", location, f"expected 'UTT [start-end]: text', got {line!r}"))
            continue
        transcripts[match["utt"]] = (None if error else match["text"].strip(), location)
    return transcripts, bad
