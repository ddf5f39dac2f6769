"""Build the bundled sample corpus: every corpus blspdata imports (LibriSpeech, GigaSpeech,
IEMOCAP, MELD, ESD, Common Voice, MEAD, CMU-MOSEI, RAVDESS, CREMA-D, SAVEE, TESS, a Hub dataset
copy, a Lhotse CutSet) in its real layout, about 10 MB in all, with speech synthesised by espeak-ng.

For the emotion corpora the label is carried by prosody only (pitch, rate, loudness), never
by the words: the same sentences are spoken with every emotion, so a model that learns the
label from this audio has learnt to hear it.

    python samples/make_samples.py [--out samples/corpora]

Deterministic for a given espeak-ng version. Needs the `espeak-ng` program (Debian package).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

RATE = 16000

SENTENCES = [
    "The train leaves the station at nine in the morning",
    "She put the letters on the table by the door",
    "We walked along the river until the sun went down",
    "He said the meeting would start after lunch",
    "The old house at the end of the road is empty now",
    "They painted the kitchen a pale shade of green",
    "My brother found the keys under the sofa",
    "The shop on the corner closes early on Sundays",
    "I read the whole book in one evening",
    "The children planted tomatoes in the garden",
    "Our neighbours moved to another city last spring",
    "You can see the mountains from the top floor",
    "The bus was late again this morning",
    "She wrote the numbers down on a small card",
    "The dog waited by the gate for an hour",
    "He keeps his bicycle in the shed behind the house",
    "We need more chairs for the dinner tonight",
    "The letter arrived three days after she left",
]

# The emotion corpora's sentences: short (1-3 s clips; the trainer drops audio under 1 s), and
# each one is spoken once with every emotion, so the words say nothing about the label and no
# two emotion rows share both a sentence and a label (greedy generation would give them the same
# continuation). EMOTION_PLAN below hands out disjoint runs of them to the splits.
EMOTION_SENTENCES = [
    "The kettle is on the stove",
    "He left his coat in the car",
    "We are having fish for dinner",
    "The window in the hall is open",
    "She called me after the film",
    "There is a letter on the mat",
    "The printer is out of paper",
    "They moved the piano upstairs",
    "My sister bought a new lamp",
    "The last train has already gone",
    "I found your glasses in the drawer",
    "The garden needs water again",
    "He is painting the fence blue",
    "We will meet at the station",
    "The meeting was moved to Friday",
    "Your parcel came this morning",
    "The cat is asleep on the bed",
    "She sold her bike last week",
    "The soup is still too hot",
    "They are building a new bridge",
    "I left the keys with our neighbour",
    "The lights went out at midnight",
    "He plays the drums every evening",
    "We ran out of milk today",
    "The doctor will see you now",
    "My phone is on the kitchen table",
    "The shop has closed for good",
    "She changed the colour of the door",
    "The boat leaves at half past four",
    "They found a puppy in the park",
    "I have read that book twice",
    "The road is closed until Monday",
    "He forgot to lock the back door",
    "We watched the whole match at home",
    "The bread is in the oven",
    "Your brother is waiting outside",
    "The concert starts in ten minutes",
    "She got the job at the bank",
    "The river rose during the night",
    "They cancelled the picnic again",
    "I moved my desk to the window",
    "The bus stops right by the school",
    "He lost his wallet on the train",
    "We painted the bedroom on Sunday",
    "The plates are in the top cupboard",
    "My uncle is coming for lunch",
    "The tickets were sold out by noon",
    "She keeps her plants on the balcony",
    "The clock in the hall has stopped",
    "They sent the wrong size again",
    "I saw your cousin at the market",
    "The heating is broken upstairs",
    "He wrote his name on the wall",
    "We are leaving first thing tomorrow",
    "The baby slept through the night",
    "Your car is parked in my spot",
    "The museum is free on Sundays",
    "She cut her hair really short",
    "The lift is out of order",
    "They bought the house next door",
]

# Emotion -> espeak-ng (pitch 0-99, words per minute, amplitude 0-200). Far apart on purpose:
# the demo's random tiny Whisper encoder has to carry them to the emotion head. Each clip
# varies them a little (emotional()).
PROSODY = {
    "neutral": (45, 160, 80),
    "happy": (78, 200, 120),
    "angry": (30, 235, 190),
    "sad": (15, 125, 40),
    "surprise": (96, 175, 150),
}
MIN_CLIP_S = 1.2  # the trainer drops audio under 1 s: pad short clips with trailing silence


def speak(text: str, voice: str, pitch: int, speed: int, amplitude: int) -> np.ndarray:
    """Synthesize `text` with espeak-ng, returned as float32 at 16 kHz."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-a", str(amplitude), "--stdout", text],
        check=True, capture_output=True,
    ).stdout
    data, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return resample(data, rate, RATE)


def resample(data: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return data
    resampler = av.AudioResampler(format="flt", layout="mono", rate=target)
    frame = av.AudioFrame.from_ndarray(data.reshape(1, -1).astype(np.float32), format="flt", layout="mono")
    frame.sample_rate = rate
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


def emotional(text: str, voice: str, emotion: str, rng: random.Random) -> np.ndarray:
    pitch, speed, amplitude = PROSODY[emotion]
    audio = speak(text, voice, pitch + rng.randint(-4, 4), speed + rng.randint(-10, 10), amplitude + rng.randint(-8, 8))
    return np.concatenate([audio, silence(max(0.0, MIN_CLIP_S - len(audio) / RATE))])


def emotion_rows(sentences: list[str], rng: random.Random) -> list[tuple[str, str]]:
    """(sentence, emotion) for every sentence spoken with every emotion, shuffled."""
    rows = [(text, emotion) for text in sentences for emotion in PROSODY]
    rng.shuffle(rows)
    return rows


def _plan() -> dict[str, list[str]]:
    """Disjoint runs of EMOTION_SENTENCES per split: n sentences give 5 n rows, n per label."""
    sizes = {"iemocap/1": 2, "iemocap/2": 2, "iemocap/3": 2, "iemocap/4": 2, "iemocap/5": 9,  # session 5: test
             "meld/train": 20, "meld/dev": 2, "meld/test": 10,  # MELD's clips are compressed: more of them
             "extra": 6}  # one-off rows with a label outside the five (exc, disgust): own sentences
    plan, start = {}, 0
    for name, n in sizes.items():
        plan[name] = EMOTION_SENTENCES[start:start + n]
        start += n
    assert start <= len(EMOTION_SENTENCES)
    return plan


EMOTION_PLAN = _plan()


# ---------------------------------------------------------------------------- LibriSpeech

def librispeech(out: Path, rng: random.Random) -> None:
    speakers = {  # split -> [(speaker, chapter, voice)]
        "train-clean-100": [("19", "198", "en-us+m3"), ("26", "495", "en-gb+f2"), ("32", "4137", "en-us+f4")],
        "dev-clean": [("84", "121123", "en-gb+m1")],
        "test-clean": [("121", "127105", "en-us+m5")],
    }
    sentences = iter(rng.sample(SENTENCES, len(SENTENCES)) * 3)
    for split, people in speakers.items():
        for speaker, chapter, voice in people:
            folder = out / "LibriSpeech" / split / speaker / chapter
            folder.mkdir(parents=True, exist_ok=True)
            lines = []
            for n in range(4):
                utt = f"{speaker}-{chapter}-{n:04d}"
                text = next(sentences)
                sf.write(folder / f"{utt}.flac", speak(text, voice, 50, 165, 100), RATE, subtype="PCM_16")
                lines.append(f"{utt} {text.upper()}")
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------- GigaSpeech

TRAIN_TAGS_XS = ["{XL}", "{L}", "{M}", "{S}", "{XS}"]
TRAIN_TAGS_L = ["{XL}", "{L}"]


def gigaspeech(out: Path, rng: random.Random) -> None:
    root = out / "GigaSpeech"
    plan = [  # (aid, path, voice, [segment tags or "garbage"])
        ("POD0000000001", "audio/podcast/P0001/POD0000000001.opus", "en-us+m2",
         [TRAIN_TAGS_XS, TRAIN_TAGS_XS, "garbage", TRAIN_TAGS_XS, TRAIN_TAGS_L, TRAIN_TAGS_XS]),
        ("YOU0000000002", "audio/youtube/P0000/YOU0000000002.opus", "en-gb+f3",
         [TRAIN_TAGS_XS, TRAIN_TAGS_L, TRAIN_TAGS_XS, "garbage", TRAIN_TAGS_XS]),
        ("AUD0000000003", "audio/audiobook/P0000/AUD0000000003.opus", "en-us+f1", [["{DEV}"]] * 3),
        ("POD0000000004", "audio/podcast/P0000/POD0000000004.opus", "en-us+m4", [["{TEST}"]] * 3),
    ]
    punct = ["<COMMA>", "<PERIOD>", "<QUESTIONMARK>", "<EXCLAMATIONPOINT>"]
    audios = []
    for aid, rel, voice, segs in plan:
        pieces, segments, t = [silence(0.4)], [], 0.4
        for n, tags in enumerate(segs):
            sid = f"{aid}_S{n:07d}"
            if tags == "garbage":  # music/noise with no speech: text is only a garbage tag
                noise = (np.random.default_rng(n).standard_normal(int(1.2 * RATE)) * 0.05).astype(np.float32)
                segments.append({"sid": sid, "speaker": "N/A", "begin_time": round(t, 3), "end_time": round(t + 1.2, 3),
                                 "subsets": TRAIN_TAGS_XS, "text_tn": rng.choice(["<MUSIC>", "<NOISE>", "<SIL> <MUSIC>"])})
                pieces += [noise, silence(0.3)]
                t += 1.5
                continue
            words = rng.choice(SENTENCES).upper().split()
            cut = rng.randint(3, len(words) - 2)
            text_tn = " ".join(words[:cut] + [punct[0]] + words[cut:] + [rng.choice(punct[1:])])
            audio = speak(" ".join(words[:cut]) + ", " + " ".join(words[cut:]), voice, 50, 170, 100)
            dur = len(audio) / RATE
            segments.append({"sid": sid, "speaker": "N/A", "begin_time": round(t, 3), "end_time": round(t + dur, 3),
                             "subsets": tags, "text_tn": text_tn})
            pieces += [audio, silence(0.3)]
            t += dur + 0.3
        data = np.concatenate(pieces)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, data, RATE, format="OGG", subtype="OPUS")
        audios.append({"title": f"sample {aid}", "url": "https://example.org/" + aid, "path": rel, "aid": aid,
                       "source": rel.split("/")[1], "category": "Education", "speaker": "N/A", "format": "opus",
                       "md5": "", "duration": round(len(data) / RATE, 3), "segments": segments})
    meta = {"dataset": "GigaSpeech", "language": "EN", "version": "v1.0.0 (blspdata sample)", "audios": audios}
    (root / "GigaSpeech.json").write_text(json.dumps(meta, indent=1) + "\n")


# ---------------------------------------------------------------------------- IEMOCAP

IEMOCAP_CODES = {"neutral": "neu", "happy": "hap", "angry": "ang", "sad": "sad", "surprise": "sur"}


def iemocap(out: Path, rng: random.Random) -> None:
    root = out / "IEMOCAP_full_release"
    voices = {1: ("en-us+f2", "en-us+m3"), 2: ("en-gb+f3", "en-gb+m2"), 3: ("en-us+f4", "en-us+m1"),
              4: ("en-gb+f1", "en-gb+m4"), 5: ("en-us+f3", "en-us+m6")}
    extra = iter(EMOTION_PLAN["extra"])
    for session, (female, male) in voices.items():
        mocap = "F" if session % 2 else "M"
        dialog = f"Ses{session:02d}{mocap}_impro0{session}"
        base = root / f"Session{session}"
        wav_dir = base / "sentences" / "wav" / dialog
        wav_dir.mkdir(parents=True, exist_ok=True)
        (base / "dialog" / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
        (base / "dialog" / "transcriptions").mkdir(parents=True, exist_ok=True)
        # Every sentence of the session with every emotion, plus one 'exc' (-> happy) and one
        # 'fru' (rejected by default) turn.
        turns = emotion_rows(EMOTION_PLAN[f"iemocap/{session}"], rng)
        turns += [(next(extra), "exc"), (turns[0][0], "fru")]
        evals, trans, t = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""], [], 2.0
        numbers = {"F": 0, "M": 0}
        for n, (text, label) in enumerate(turns):
            gender = "F" if n % 2 == 0 else "M"
            utt = f"{dialog}_{gender}{numbers[gender]:03d}"
            numbers[gender] += 1
            emotion = {"exc": "happy", "fru": "angry"}.get(label, label)
            audio = emotional(text, female if gender == "F" else male, emotion, rng)
            sf.write(wav_dir / f"{utt}.wav", audio, RATE, subtype="PCM_16")
            end = t + len(audio) / RATE
            code = IEMOCAP_CODES.get(label, label)
            vad = {"neu": (2.5, 2.5, 2.5), "hap": (4.0, 3.5, 3.0), "exc": (4.0, 4.0, 3.5), "ang": (1.5, 4.0, 4.0),
                   "sad": (1.5, 1.5, 2.0), "sur": (3.5, 4.0, 2.5), "fru": (2.0, 3.0, 3.0)}[code]
            evals += [f"[{t:.4f} - {end:.4f}]\t{utt}\t{code}\t[{vad[0]:.4f}, {vad[1]:.4f}, {vad[2]:.4f}]",
                      f"C-E1:\t{code.capitalize()};\t()", f"C-E2:\t{code.capitalize()};\t()",
                      f"A-E1:\tval {int(vad[0])}; act {int(vad[1])}; dom  {int(vad[2])};\t()", ""]
            trans.append(f"{utt} [{t:08.4f}-{end:08.4f}]: {text}.")
            t = end + 0.5
        (base / "dialog" / "EmoEvaluation" / f"{dialog}.txt").write_text("\n".join(evals) + "\n")
        (base / "dialog" / "transcriptions" / f"{dialog}.txt").write_text("\n".join(trans) + "\n")


# ---------------------------------------------------------------------------- MELD

MELD_CODES = {"neutral": "neutral", "happy": "joy", "angry": "anger", "sad": "sadness", "surprise": "surprise"}
FRIENDS = [("Chandler", "en-us+m3"), ("Monica", "en-us+f2"), ("Ross", "en-us+m1"), ("Rachel", "en-us+f4")]


def write_mp4(path: Path, audio: np.ndarray) -> None:
    """A clip like MELD's: a (tiny) video stream and a 48 kHz stereo AAC audio stream."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("mpeg4", rate=5)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        sound = container.add_stream("aac", rate=48000)
        sound.layout = "stereo"
        sound.bit_rate = 32000  # keeps the sample small; MELD's own clips are larger
        seconds = len(audio) / RATE
        for i in range(max(1, int(seconds * 5))):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * (i % 5), dtype=np.uint8), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, 5)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        stereo = np.repeat(resample(audio, RATE, 48000).reshape(1, -1), 2, axis=0).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(stereo, format="fltp", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = 0
        for packet in sound.encode(frame):
            container.mux(packet)
        for packet in sound.encode():
            container.mux(packet)


def meld(out: Path, rng: random.Random) -> None:
    root = out / "MELD.Raw"
    plan = {"train": ("train_sent_emo.csv", "train_splits"), "dev": ("dev_sent_emo.csv", "dev_splits_complete"),
            "test": ("test_sent_emo.csv", "output_repeated_splits_test")}
    header = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
              "Episode", "StartTime", "EndTime"]
    sentiment = {"neutral": "neutral", "joy": "positive", "surprise": "positive", "anger": "negative",
                 "sadness": "negative", "fear": "negative", "disgust": "negative"}
    turns_per_dialogue = 5
    for split, (csv_name, folder) in plan.items():
        utterances = [(text, MELD_CODES[emotion]) for text, emotion in emotion_rows(EMOTION_PLAN[f"meld/{split}"], rng)]
        if split == "train":  # labels outside the recipe's set, rejected by default (--label-map maps them)
            utterances.insert(9, (utterances[0][0], "fear"))
            utterances.insert(19, (EMOTION_PLAN["extra"][-1], "disgust"))
        rows = []
        for number, (text, code) in enumerate(utterances, start=1):
            dia, utt = divmod(number - 1, turns_per_dialogue)
            emotion = {"fear": "sad", "disgust": "angry"}.get(code) or next(e for e, c in MELD_CODES.items() if c == code)
            speaker, voice = FRIENDS[(dia + utt) % len(FRIENDS)]
            write_mp4(root / folder / f"dia{dia}_utt{utt}.mp4", emotional(text, voice, emotion, rng))
            shown = text.replace("I have read", "I\u2019ve read") if "I have read" in text else text
            # MELD's CSVs hold UTF-8 punctuation mis-decoded as Windows-1252 (mojibake).
            shown = shown.encode("utf-8").decode("cp1252", errors="replace") + "."
            start = 60 + 7 * (number - 1)
            rows.append([number, shown, speaker, code, sentiment[code], dia, utt, 3, 7,
                         f"00:{start // 60:02d}:{start % 60:02d},120", f"00:{(start + 3) // 60:02d}:{(start + 3) % 60:02d},480"])
        with open(root / csv_name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)


# ---------------------------------------------------------------------------- ESD

ESD_RUN = 350  # each speaker's utterances per emotion are numbered in one run of 350
ESD_EMOTIONS = ("Neutral", "Angry", "Happy", "Sad", "Surprise")  # the release's order of runs
ESD_CHINESE = {"Neutral": "中立", "Angry": "生气", "Happy": "快乐", "Sad": "伤心", "Surprise": "惊喜"}


def esd(out: Path, rng: random.Random) -> None:
    """Six 16 kHz wavs: an English speaker with the release's split folders (every emotion),
    a Mandarin one without them (the split then follows the numbering)."""
    root = out / "ESD" / "Emotion Speech Dataset"
    plan = {  # speaker -> (voice, [(emotion, place in its run (1-based), text)])
        "0011": ("en-gb+m3", [("Neutral", 3, "The kettle is on"), ("Angry", 30, "Close the door"),
                              ("Happy", 60, "We won the game"), ("Sad", 70, "Not again"),
                              ("Surprise", 80, "It is snowing")]),
        "0001": ("cmn", [("Happy", 5, "我们赢了。")]),
    }
    for speaker, (voice, utterances) in plan.items():
        lines = []
        for emotion, place, text in utterances:
            utt = f"{speaker}_{ESD_EMOTIONS.index(emotion) * ESD_RUN + place:06d}"
            folder = root / speaker / emotion
            if speaker == "0011":  # evaluation, test, train as the release cuts each run
                folder = folder / ("evaluation" if place <= 20 else "test" if place <= 50 else "train")
            folder.mkdir(parents=True, exist_ok=True)
            sf.write(folder / f"{utt}.wav", emotional(text, voice, emotion.lower(), rng), RATE, subtype="PCM_16")
            lines.append(f"{utt}\t{text}\t{ESD_CHINESE[emotion] if voice == 'cmn' else emotion}")
        (root / speaker / f"{speaker}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------- Common Voice

def write_encoded(path: Path, audio: np.ndarray, codec: str, container_format: str, rate: int = 48000) -> None:
    """16 kHz `audio` as a 48 kHz mono clip in `codec` inside `container_format` (PyAV)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        stream.bit_rate = 32000
        frame = av.AudioFrame.from_ndarray(resample(audio, RATE, rate).reshape(1, -1).astype(np.float32),
                                           format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_mp3(path: Path, audio: np.ndarray) -> None:
    """A clip like Common Voice's: 48 kHz mono MP3 (LAME, which tags its exact length)."""
    write_encoded(path, audio, "libmp3lame", "mp3")


def commonvoice(out: Path, rng: random.Random) -> None:
    """One locale of a release: train/dev/test TSVs (and validated.tsv, their union) + clips/."""
    root = out / "cv-corpus-sample" / "en"
    header = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accents", "locale", "segment"]
    voices = [("en-us+m3", "twenties", "male_masculine", "United States English"),
              ("en-gb+f2", "fourties", "female_feminine", "England English"), ("en-us+f4", "", "", "")]
    plan = {"train": SENTENCES[14:17], "dev": SENTENCES[17:18], "test": [SENTENCES[13]]}
    rows: dict[str, list[list[str]]] = {}
    clip = 21000000
    for split, sentences in plan.items():
        for text in sentences:
            clip += rng.randint(1, 999)
            voice, age, gender, accents = voices[clip % len(voices)]
            client = f"{rng.getrandbits(256):064x}{rng.getrandbits(256):064x}"
            name = f"common_voice_en_{clip}.mp3"
            write_mp3(root / "clips" / name, speak(text, voice, 50, 165, 100))
            rows.setdefault(split, []).append([client, name, text + ".", str(rng.randint(2, 4)), "0", age, gender, accents, "en", ""])
    rows["validated"] = [row for split in plan for row in rows[split]]
    for split, lines in rows.items():  # written as Common Voice does: tabs, no quoting
        (root / f"{split}.tsv").write_text("\n".join("\t".join(r) for r in [header, *lines]) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------- MEAD

MEAD_FOLDERS = {"neutral": "neutral", "happy": "happy", "angry": "angry", "sad": "sad", "surprise": "surprised"}


def write_m4a(path: Path, audio: np.ndarray) -> None:
    """A clip like MEAD's audio: AAC in an MP4 (.m4a) container, no video."""
    write_encoded(path, audio, "aac", "ipod")


def mead(out: Path, rng: random.Random) -> None:
    """Two actors, sentence 001 (MEAD's first sentences are common to every emotion) in each
    emotion folder, a contempt clip (rejected by default), and the --sentences table the
    release lacks, written by us beside the actor folders (the importer reads only those)."""
    root = out / "MEAD"
    common = "The kettle is on the stove"
    table = [["emotion", "number", "text"]]
    for actor, voice in (("M003", "en-us+m3"), ("W009", "en-gb+f2")):
        for emotion, folder in MEAD_FOLDERS.items():
            if actor == "W009" and emotion not in ("happy", "sad"):
                continue
            level = "level_1" if emotion == "neutral" else f"level_{rng.randint(1, 3)}"
            write_m4a(root / actor / "audio" / folder / level / "001.m4a", emotional(common, voice, emotion, rng))
    write_m4a(root / "M003" / "audio" / "contempt" / "level_2" / "001.m4a", emotional(common, "en-us+m3", "neutral", rng))
    table += [[folder, "1", common + "."] for folder in [*MEAD_FOLDERS.values(), "contempt"]]
    with open(root / "sentences.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(table)


# ---------------------------------------------------------------------------- CMU-MOSEI

MOSEI_COLUMNS = ("happy", "sad", "anger", "surprise", "disgust", "fear")
MOSEI_DOMINANT = {"happy": "happy", "sad": "sad", "angry": "anger", "surprise": "surprise"}


def mosei(out: Path, rng: random.Random) -> None:
    """One video's long 16 kHz wav, its segmented transcript and the label CSV (the SDK's
    sequence flattened): one segment per emotion, the dominant intensity carrying the label,
    and short pauses between the segments."""
    root = out / "CMU_MOSEI"
    video = "sAmPlE0mOsE"
    texts = {"neutral": "I bought it last week", "happy": "I loved every minute", "angry": "That was a waste",
             "sad": "I miss the old one", "surprise": "I did not expect that"}
    order = ["neutral", "happy", "angry", "sad", "surprise"]
    rng.shuffle(order)
    pieces, rows, lines, at = [silence(0.2)], [], [], 0.2
    for segment, emotion in enumerate(order):
        clip = emotional(texts[emotion], "en-us+m1", emotion, rng)
        start, end = at, at + len(clip) / RATE
        pieces += [clip, silence(0.1)]
        at = end + 0.1
        intensities = {c: 0.0 for c in MOSEI_COLUMNS}
        if emotion in MOSEI_DOMINANT:
            intensities[MOSEI_DOMINANT[emotion]] = rng.choice([1.333, 1.667, 2.0])
            intensities[rng.choice([c for c in MOSEI_COLUMNS if c != MOSEI_DOMINANT[emotion]])] = 0.333
        sentiment = {"happy": 2.0, "angry": -2.0, "sad": -1.333}.get(emotion, 0.0)
        split = "test" if segment == len(order) - 1 else "train"
        rows.append([video, str(segment), f"{start:.3f}", f"{end:.3f}", f"{sentiment:g}",
                     *(f"{intensities[c]:g}" for c in MOSEI_COLUMNS), split])
        lines.append(f"{video}___{segment}___{start:.3f}___{end:.3f}___{texts[emotion].lower()}")
    wav = root / "Raw" / "Audio" / "Full" / "WAV_16000" / f"{video}.wav"
    wav.parent.mkdir(parents=True, exist_ok=True)
    sf.write(wav, np.concatenate(pieces), RATE, subtype="PCM_16")
    transcript = root / "Raw" / "Transcript" / "Segmented" / "Combined" / f"{video}.txt"
    transcript.parent.mkdir(parents=True, exist_ok=True)
    transcript.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(root / "CMU_MOSEI_Labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "segment", "start", "end", "sentiment", *MOSEI_COLUMNS, "split"])
        writer.writerows(rows)


# ---------------------------------------------------------------------------- RAVDESS, CREMA-D, SAVEE, TESS
# Acted corpora whose file names code the label: a few 16 kHz clips each (the real ones are 48,
# 16, 44.1 and 24.4 kHz), in the folders and names of the release.

def ravdess(out: Path, rng: random.Random) -> None:
    """Actor_01 (train, male) and Actor_22 (test by default, female); one calm clip, which the
    importer rejects unless a label map says otherwise."""
    root = out / "RAVDESS"
    statements = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
    plan = [("01", "en-us+m3", "01", "01", "01", "neutral"), ("01", "en-us+m3", "02", "01", "02", None),
            ("22", "en-us+f2", "05", "02", "02", "angry")]  # (actor, voice, emotion, intensity, statement, prosody)
    for actor, voice, code, intensity, statement, prosody in plan:
        folder = root / f"Actor_{actor}"
        folder.mkdir(parents=True, exist_ok=True)
        text = statements[statement]
        audio = emotional(text, voice, prosody, rng) if prosody else speak(text, voice, 40, 140, 60)  # calm
        sf.write(folder / f"03-01-{code}-{intensity}-{statement}-01-{actor}.wav", audio, RATE, subtype="PCM_16")


def cremad(out: Path, rng: random.Random) -> None:
    """AudioWAV/ with two train clips of actor 1001 and a test one of 1091, and the demographics table."""
    root = out / "CREMA-D"
    (root / "AudioWAV").mkdir(parents=True, exist_ok=True)
    plan = [("1001", "en-us+m2", "DFA", "Don't forget a jacket", "HAP", "HI", "happy"),
            ("1001", "en-us+m2", "TSI", "The surface is slick", "NEU", "XX", "neutral"),
            ("1091", "en-us+f3", "IEO", "It's eleven o'clock", "SAD", "LO", "sad")]
    for actor, voice, code, text, emotion, level, prosody in plan:
        sf.write(root / "AudioWAV" / f"{actor}_{code}_{emotion}_{level}.wav", emotional(text, voice, prosody, rng),
                 RATE, subtype="PCM_16")
    (root / "VideoDemographics.csv").write_text(
        "ActorID,Age,Sex,Race,Ethnicity\n1001,51,Male,Caucasian,Not Hispanic\n1091,29,Female,Asian,Not Hispanic\n")


def savee(out: Path, rng: random.Random) -> None:
    """AudioData/DC (train) and KL (test by default), and a sentences table as a user writes one
    (SAVEE ships no transcripts)."""
    root = out / "SAVEE"
    plan = [("DC", "en-gb+m1", "a01", "angry"), ("DC", "en-gb+m1", "su01", "surprise"), ("KL", "en-gb+m4", "n01", "neutral")]
    texts = {"a01": "The kettle is on the stove", "su01": "He left his coat in the car", "n01": "We are having fish for dinner"}
    for speaker, voice, code, prosody in plan:
        folder = root / "AudioData" / speaker
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{code}.wav", emotional(texts[code], voice, prosody, rng), RATE, subtype="PCM_16")
    (root / "sentences.txt").write_text("".join(f"{code}\t{text}\n" for code, text in texts.items()))


def tess(out: Path, rng: random.Random) -> None:
    """Three clips in the release's folder spellings (OAF_Pleasant_surprise, OAF_Sad, YAF_happy)."""
    root = out / "TESS"
    plan = [("OAF", "en-us+f4", "Pleasant_surprise", "back", "ps", "surprise"),
            ("OAF", "en-us+f4", "Sad", "bath", "sad", "sad"), ("YAF", "en-us+f1", "happy", "back", "happy", "happy")]
    for speaker, voice, folder, word, emotion, prosody in plan:
        path = root / f"{speaker}_{folder}" / f"{speaker}_{word}_{emotion}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, emotional(f"Say the word {word}", voice, prosody, rng), RATE, subtype="PCM_16")


# ---------------------------------------------------------------------------- a Hub dataset, Lhotse

HUB_ORDER = ["ang", "hap", "neu", "sad"]  # an IEMOCAP copy's ClassLabel, in its own (not our) order
HUB_CODES = {"angry": "ang", "happy": "hap", "neutral": "neu", "sad": "sad"}


def hub(out: Path, rng: random.Random) -> None:
    """An IEMOCAP-like copy as the Hub serves it: data/{train,test}-00000-of-00001.parquet with
    the audio embedded (FLAC bytes in train, WAV in test) and the emotion a ClassLabel."""
    from datasets import Audio, ClassLabel, Dataset, Features, Value

    root = out / "hf_emotion" / "data"
    root.mkdir(parents=True, exist_ok=True)
    features = Features({"audio": Audio(), "text": Value("string"), "emotion": ClassLabel(names=HUB_ORDER),
                         "speaker": Value("string")})
    plan = {"train": ("FLAC", "en-us+f2", ["The kettle is on", "Close the door"]),
            "test": ("WAV", "en-gb+m2", ["We won the game"])}
    for split, (fmt, voice, sentences) in plan.items():
        rows = [(text, emotion) for text in sentences for emotion in HUB_CODES]
        columns: dict[str, list] = {"audio": [], "text": [], "emotion": [], "speaker": []}
        for n, (text, emotion) in enumerate(rows):
            buffer = io.BytesIO()
            sf.write(buffer, emotional(text, voice, emotion, rng), RATE, format=fmt, subtype="PCM_16")
            columns["audio"].append({"bytes": buffer.getvalue(), "path": f"{split}_{n:03d}.{fmt.lower()}"})
            columns["text"].append(f"{text}.")
            columns["emotion"].append(HUB_ORDER.index(HUB_CODES[emotion]))
            columns["speaker"].append(voice)
        Dataset.from_dict(columns, features=features).to_parquet(str(root / f"{split}-00000-of-00001.parquet"))


def lhotse_cuts(out: Path, rng: random.Random) -> None:
    """A CutSet as Lhotse recipes write it: two FLAC recordings of three utterances each, one
    MonoCut per recording, supervisions with the emotion in `custom`; sources relative to the
    repository root (where a recipe ran)."""
    import gzip

    root = out / "Lhotse"
    (root / "audio").mkdir(parents=True, exist_ok=True)
    plan = {"rec1": ("en-us+m3", [("I found my keys", "happy"), ("The bus is late again", "angry"),
                                  ("It is half past four", "neutral")]),
            "rec2": ("en-us+f4", [("I lost the letter", "sad"), ("You came back", "surprise"),
                                  ("We can talk later", "neutral")])}
    lines = []
    for recording, (voice, utterances) in plan.items():
        audio, supervisions = [silence(0.3)], []
        for n, (text, emotion) in enumerate(utterances):
            start = sum(len(a) for a in audio) / RATE
            clip = emotional(text, voice, emotion, rng)
            audio += [clip, silence(0.4)]
            supervisions.append({"id": f"{recording}-{n}", "recording_id": recording, "start": round(start, 4),
                                 "duration": round(len(clip) / RATE, 4), "channel": 0, "text": f"{text}.",
                                 "language": "English", "speaker": voice, "custom": {"emotion": emotion}})
        samples = np.concatenate(audio)
        path = root / "audio" / f"{recording}.flac"
        sf.write(path, samples, RATE, subtype="PCM_16")
        source = path.relative_to(Path(__file__).resolve().parent.parent) if path.is_relative_to(
            Path(__file__).resolve().parent.parent) else path
        record = {"id": recording, "sources": [{"type": "file", "channels": [0], "source": str(source)}],
                  "sampling_rate": RATE, "num_samples": len(samples), "duration": len(samples) / RATE,
                  "channel_ids": [0]}
        lines.append({"id": f"{recording}-cut", "start": 0, "duration": len(samples) / RATE, "channel": 0,
                      "supervisions": supervisions, "recording": record, "type": "MonoCut"})
    with gzip.GzipFile(root / "lhotse-demo_cuts_train.jsonl.gz", "wb", mtime=0) as handle:
        handle.write("".join(json.dumps(line) + "\n" for line in lines).encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "corpora")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found: apt-get install espeak-ng (or `make samples`, which installs it)")
    if args.out.exists():
        shutil.rmtree(args.out)
    for build in (librispeech, gigaspeech, iemocap, meld, esd, commonvoice, mead, mosei, ravdess, cremad, savee, tess,
                  hub, lhotse_cuts):
        build(args.out, random.Random(build.__name__))
        print(f"built {build.__name__}")
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"sample corpus: {size / 1e6:.1f} MB in {args.out}")


if __name__ == "__main__":
    main()
