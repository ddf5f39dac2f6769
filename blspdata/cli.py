"""The `blspdata` command line: thin wrappers over the library functions."""

from __future__ import annotations

import contextlib
from enum import Enum
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from typer.core import TyperGroup

from blspdata import __version__
from blspdata.errors import BlspdataError
from blspdata.generate.options import Backend, Executor, GenerateSettings, Server  # light: no engine
from blspdata.publish_options import AudioMode, Format, PublishSettings  # light: no audio libraries


# The one place user errors become one line: `BlspdataError` (blspdata/errors.py) and OSError
# (a file the user named) print `error: MESSAGE` and exit 1; anything else is a bug and keeps
# its traceback. A command adds what to do next with `error_note`.
USER_ERRORS: tuple[type[BaseException], ...] = (BlspdataError, OSError)


def _say(exc: BaseException) -> None:
    typer.echo(f"error: {exc}", err=True)
    for note in getattr(exc, "__notes__", ()):
        typer.echo(note, err=True)


@contextlib.contextmanager
def error_note(note: str) -> Iterator[None]:
    """A user error raised within gets `note` printed under it (e.g. how to resume)."""
    try:
        yield
    except USER_ERRORS as exc:
        exc.add_note(note)
        raise


class _PipelineOrder(TyperGroup):
    """`blspdata --help` lists the commands in pipeline order, not registration order. Every
    command runs through `invoke`: user errors are one line there, and SIGTERM (scancel,
    `timeout`, `kill`) exits through the same path as Ctrl-C, so `finally` blocks remove
    temporary folders and stop workers and servers."""

    ORDER = ("run", "report", "ingest", "generate", "merge", "curate", "publish", "verify", "export", "train", "evaluate", "chat")

    def invoke(self, ctx):
        from blspdata.parallel import sigterm_exits

        try:
            with sigterm_exits():
                return super().invoke(ctx)
        except USER_ERRORS as exc:
            _say(exc)
            raise typer.Exit(1) from None

    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: self.ORDER.index(n) if n in self.ORDER else len(self.ORDER))


app = typer.Typer(
    cls=_PipelineOrder,
    help="Build BLSP-Emo style training data for speech-language models.\n\n"
    "`blspdata run CONFIG.yaml` runs the whole pipeline from one config (see examples/demo.yaml) and "
    "`blspdata report RUN_DIR` draws it. The stages, in pipeline order: ingest (corpora -> manifest), generate (manifest -> continuations "
    "through an LLM; merge joins sharded runs), curate (filters with reasons, exact and near-duplicate removal), publish (Hugging Face shards + card; "
    "verify checks them), export (a manifest as Lhotse recordings + supervisions), train (stage1 semantic / stage2 emotion alignment), evaluate, chat.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
ingest_app = typer.Typer(
    help="Import a corpus, as distributed, into a manifest (JSONL; gzipped if OUT ends in .gz).\n\n"
    "Writes OUT, OUT.rejects.jsonl (every dropped input with its reason and source location) "
    "and OUT.summary.json. Audio paths in the manifest are built from ROOT as you give it: "
    "pass an absolute ROOT if the manifest will be used from another directory.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(ingest_app, name="ingest")
train_app = typer.Typer(help="Train the reference BLSP-Emo model (Whisper encoder + adapter + causal LM) on "
                        "published shards. Runs under torchrun for several processes/GPUs.",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(train_app, name="train")
evaluate_app = typer.Typer(help="Evaluate a trained checkpoint.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(evaluate_app, name="evaluate")
export_app = typer.Typer(help="Write a manifest (from ingest, generate or curate) in another toolkit's format.",
                         no_args_is_help=True, rich_markup_mode=None)
app.add_typer(export_app, name="export")


class Normalizer(str, Enum):
    light = "light"
    whisper = "whisper"
    none = "none"


def _default_jobs() -> int:
    from blspdata.parallel import cores

    return cores()


OutOpt = typer.Option(..., "--out", "-o", help="Manifest to write (.jsonl or .jsonl.gz).")
JobsOpt = typer.Option(None, "--jobs", "-j", min=1, help="Worker processes for audio reading [default: CPU count].")
PublishJobsOpt = typer.Option(None, "--jobs", "-j", min=1, help="Worker processes that decode, resample and encode "
                              "audio; one process when no row needs it (only --audio path, or 16 kHz mono FLAC files "
                              "copied as they are) [default: CPU count].")
StrictOpt = typer.Option(False, "--strict", help="Stop with a non-zero exit at the first bad input instead of rejecting it.")
NormOpt = typer.Option(Normalizer.light, "--normalizer", help="Transcript normalisation for `text` (raw kept in `raw_text`): "
                       "light = drop [annotations], lower-case ALL-CAPS corpora, keep punctuation; "
                       "whisper = Whisper's English (WER) normaliser, as the BLSP-Emo paper did; none = as is.")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr.")
LabelMapOpt = typer.Option(None, "--label-map", help="Map raw labels to canonical ones (neutral, happy, angry, sad, surprise): "
                           "JSON {\"fru\": \"angry\", \"oth\": null} or lines 'RAW CANONICAL' ('-' excludes).", exists=True, dir_okay=False)


def _split_list(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _int_list(value: str, name: str) -> list[int]:
    try:
        return [int(v) for v in _split_list(value) or []]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated session numbers, got {value!r}", param_hint=name) from None


def _run(corpus: str, root: Path, out: Path, jobs: Optional[int], strict: bool, normalizer: Normalizer,
         progress: bool, **options) -> None:
    from blspdata.ingest import ingest_corpus

    summary = ingest_corpus(corpus, str(root), out, jobs=jobs or _default_jobs(), strict=strict,
                            normalizer=normalizer.value, progress=progress, **options)
    typer.echo(f"{corpus}: {summary.render()}")


@ingest_app.command("librispeech")
def ingest_librispeech(
    root: Path = typer.Argument(..., help="The LibriSpeech folder (holding train-clean-100/, dev-clean/, ...) or one split folder."),
    out: Path = OutOpt,
    splits: Optional[str] = typer.Option(None, "--splits", help="Comma-separated split folders to import [default: all found]."),
    jobs: Optional[int] = JobsOpt, strict: bool = StrictOpt, normalizer: Normalizer = NormOpt, progress: bool = ProgressOpt,
) -> None:
    """LibriSpeech: FLAC files and a .trans.txt per chapter (<split>/<speaker>/<chapter>/)."""
    _run("librispeech", root, out, jobs, strict, normalizer, progress, splits=_split_list(splits))


@ingest_app.command("gigaspeech")
def ingest_gigaspeech(
    root: Path = typer.Argument(..., help="The GigaSpeech folder holding GigaSpeech.json and audio/ (or a segmented mirror: *_metadata.csv + <sid>.wav)."),
    out: Path = OutOpt,
    subset: Optional[str] = typer.Option(None, "--subset", help="Training subset by its tag: XS, S, M, L or XL (each contains the "
                                         "smaller ones) [default: XS]. GigaSpeech.json only: a segmented mirror has no subset tags "
                                         "(its rows are all taken; --subset there only earns a warning)."),
    splits: Optional[str] = typer.Option(None, "--splits", help="Comma-separated from train, dev, test [default: all three]."),
    jobs: Optional[int] = JobsOpt, strict: bool = StrictOpt, normalizer: Normalizer = NormOpt, progress: bool = ProgressOpt,
) -> None:
    """GigaSpeech: segments of long Opus files listed in GigaSpeech.json; garbage-only segments rejected."""
    _run("gigaspeech", root, out, jobs, strict, normalizer, progress, subset=subset, splits=_split_list(splits))


@ingest_app.command("iemocap")
def ingest_iemocap(
    root: Path = typer.Argument(..., help="IEMOCAP_full_release (holding Session1..Session5)."),
    out: Path = OutOpt,
    test_sessions: Optional[str] = typer.Option(None, "--test-sessions", help="Sessions that form the test split [default: 5]."),
    dev_sessions: str = typer.Option("", "--dev-sessions", help="Sessions that form the dev split [default: none]."),
    label_map: Optional[Path] = LabelMapOpt,
    jobs: Optional[int] = JobsOpt, strict: bool = StrictOpt, normalizer: Normalizer = NormOpt, progress: bool = ProgressOpt,
) -> None:
    """IEMOCAP: EmoEvaluation labels, transcriptions and sentence wavs; exc merged into happy;
    fru, fea, dis, oth, xxx rejected unless --label-map maps them."""
    _run("iemocap", root, out, jobs, strict, normalizer, progress,
         test_sessions=None if test_sessions is None else _int_list(test_sessions, "--test-sessions"),
         dev_sessions=_int_list(dev_sessions, "--dev-sessions"), label_map=label_map)


@ingest_app.command("meld")
def ingest_meld(
    root: Path = typer.Argument(..., help="MELD.Raw (holding train_sent_emo.csv, ... and the train_splits/, dev_splits_complete/, output_repeated_splits_test/ videos)."),
    out: Path = OutOpt,
    audio_dir: Optional[Path] = typer.Option(None, "--audio-dir", help="Where extracted 16 kHz FLAC goes [default: OUT's folder/<OUT name>.audio]."),
    splits: Optional[str] = typer.Option(None, "--splits", help="Comma-separated from train, dev, test [default: all three]."),
    label_map: Optional[Path] = LabelMapOpt,
    jobs: Optional[int] = JobsOpt, strict: bool = StrictOpt, normalizer: Normalizer = NormOpt, progress: bool = ProgressOpt,
) -> None:
    """MELD: CSV rows + mp4 clips; audio extracted to 16 kHz mono FLAC (skipped when already
    extracted from the same file); fear and disgust rejected unless --label-map maps them."""
    _run("meld", root, out, jobs, strict, normalizer, progress, audio_dir=audio_dir,
         splits=_split_list(splits), label_map=label_map)


@ingest_app.command("esd")
def ingest_esd(
    root: Path = typer.Argument(..., help="'Emotion Speech Dataset' (holding the speaker folders 0001..0020), or the folder above it."),
    out: Path = OutOpt,
    splits: Optional[str] = typer.Option(None, "--splits", help="Comma-separated from train, dev (the release's evaluation), test [default: all three]."),
    label_map: Optional[Path] = LabelMapOpt,
    jobs: Optional[int] = JobsOpt, strict: bool = StrictOpt, normalizer: Normalizer = NormOpt, progress: bool = ProgressOpt,
) -> None:
    """ESD: <speaker>/<Emotion>/[train|evaluation|test/]<utt>.wav and <speaker>/<speaker>.txt;
    the emotion folder is the label, the release's split folders (or its numbering) the split,
    speakers 0001-0010 Mandarin (zh), 0011-0020 English (en)."""
    _run("esd", root, out, jobs, strict, normalizer, progress, splits=_split_list(splits), label_map=label_map)


@ingest_app.command("commonvoice")
def ingest_commonvoice(
    root: Path = typer.Argument(..., help="A locale folder of a Common Voice release (cv-corpus-*/<locale>, holding "
                                "train.tsv, dev.tsv, test.tsv and clips/), or the cv-corpus-* folder holding locales."),
    out: Path = OutOpt,
    splits: Optional[str] = typer.Option(None, "--splits", help="Comma-separated TSVs to import from train, dev, test, validated, "
                                         "other, invalidated [default: train,dev,test; validated repeats them]."),
    locales: Optional[str] = typer.Option(None, "--locales", help="Comma-separated locale folders (en, zh-CN, ...) when ROOT "
                                          "holds several [default: all]."),
    jobs: Optional[int] = JobsOpt, strict: bool = StrictOpt, normalizer: Normalizer = NormOpt, progress: bool = ProgressOpt,
) -> None:
    """Common Voice: tab-separated TSVs (no CSV quoting) + clips/*.mp3, read in place; speaker =
    client_id, language = the locale; unreadable clips rejected."""
    _run("commonvoice", root, out, jobs, strict, normalizer, progress, splits=_split_list(splits),
         locales=_split_list(locales))


def _speakers_opts(default: str):
    test = typer.Option(None, "--test-speakers", help=f"Comma-separated speakers that form the test split [default: {default}]. "
                        "The corpus has no official split; a speaker named that is not there is an error.")
    dev = typer.Option("", "--dev-speakers", help="Comma-separated speakers that form the dev split [default: none].")
    return test, dev


RavdessTest, RavdessDev = _speakers_opts("actors 21,22,23,24")


@ingest_app.command("ravdess")
def ingest_ravdess(
    root: Path = typer.Argument(..., help="The unzipped Audio_Speech_Actors_01-24 (holding Actor_01..Actor_24), or the folder above it."),
    out: Path = OutOpt,
    test_speakers: Optional[str] = RavdessTest, dev_speakers: str = RavdessDev,
    label_map: Optional[Path] = LabelMapOpt,
    jobs: Optional[int] = JobsOpt, strict: bool = StrictOpt, normalizer: Normalizer = NormOpt, progress: bool = ProgressOpt,
) -> None:
    """RAVDESS speech: Actor_NN/03-01-EE-II-SS-RR-AA.wav, everything coded in the name; text = the
    statement; surprised -> surprise; calm, fearful, disgust rejected unless --label-map maps them
    (calm is not neutral); song and video files rejected (modality_excluded). Actors as 21 or Actor_21."""
    _run("ravdess", root, out, jobs, strict, normalizer, progress, test_speakers=_split_list(test_speakers),
         dev_speakers=_split_list(dev_speakers) or [], label_map=label_map)


CremadTest, CremadDev = _speakers_opts("actors 1082..1091")


@ingest_app.command("cremad")
def ingest_cremad(
    root: Path = typer.Argument(..., help="The CREMA-D folder (holding AudioWAV/ and, optionally, VideoDemographics.csv), or AudioWAV/ itself."),
    out: Path = OutOpt,
    test_speakers: Optional[str] = CremadTest, dev_speakers: str = CremadDev,
    label_map: Optional[Path] = LabelMapOpt,
    jobs: Optional[int] = JobsOpt, strict: bool = StrictOpt, normalizer: Normalizer = NormOpt, progress: bool = ProgressOpt,
) -> None:
    """CREMA-D: AudioWAV/<actor>_<sentence>_<EMO>_<level>.wav; text = the sentence the code names;
    the portrayed emotion (NEU HAP ANG SAD; FEA and DIS rejected unless --label-map maps them);
    gender from VideoDemographics.csv where present."""
    _run("cremad", root, out, jobs, strict, normalizer, progress, test_speakers=_split_list(test_speakers),
         dev_speakers=_split_list(dev_speakers) or [], label_map=label_map)


SaveeTest, SaveeDev = _speakers_opts("KL")


@ingest_app.command("savee")
def ingest_savee(
    root: Path = typer.Argument(..., help="The SAVEE folder holding AudioData/ (DC/, JE/, JK/, KL/ with a01.wav ...), AudioData/ itself, or a flat folder of DC_a01.wav files."),
    out: Path = OutOpt,
    sentences: Optional[Path] = typer.Option(None, "--sentences", exists=True, dir_okay=False, help="The texts, which SAVEE's "
                                             "audio lacks: lines 'CODE text' (a01 ..., sa03 ...), or 'DC_a01 text' for one speaker. "
                                             "Without it every file is rejected as transcript_missing."),
    test_speakers: Optional[str] = SaveeTest, dev_speakers: str = SaveeDev,
    label_map: Optional[Path] = LabelMapOpt,
    jobs: Optional[int] = JobsOpt, strict: bool = StrictOpt, normalizer: Normalizer = NormOpt, progress: bool = ProgressOpt,
) -> None:
    """SAVEE: <speaker>/<code><NN>.wav, the emotion in the code (a h n sa su; d and f rejected unless
    --label-map maps them); texts from --sentences."""
    _run("savee", root, out, jobs, strict, normalizer, progress, sentences=sentences,
         test_speakers=_split_list(test_speakers), dev_speakers=_split_list(dev_speakers) or [], label_map=label_map)


TessTest, TessDev = _speakers_opts("none: two speakers only; YAF holds the younger one out")


@ingest_app.command("tess")
def ingest_tess(
    root: Path = typer.Argument(..., help="The TESS folder holding OAF_angry/, ..., YAF_sad/ (or the folder above it)."),
    out: Path = OutOpt,
    test_speakers: Optional[str] = TessTest, dev_speakers: str = TessDev,
    label_map: Optional[Path] = LabelMapOpt,
    jobs: Optional[int] = JobsOpt, strict: bool = StrictOpt, normalizer: Normalizer = NormOpt, progress: bool = ProgressOpt,
) -> None:
    """TESS: <OAF|YAF>_<emotion>/<OAF|YAF>_<word>_<emotion>.wav; text "Say the word <word>"; ps
    (pleasant surprise) -> surprise; fear and disgust rejected unless --label-map maps them."""
    _run("tess", root, out, jobs, strict, normalizer, progress, test_speakers=_split_list(test_speakers),
         dev_speakers=_split_list(dev_speakers) or [], label_map=label_map)


MeadTest, MeadDev = _speakers_opts("none: actors such as M003,W009")


@ingest_app.command("mead")
def ingest_mead(
    root: Path = typer.Argument(..., help="The folder holding the actor folders (M003/audio/<emotion>/level_<n>/<nnn>.m4a, ...)."),
    out: Path = OutOpt,
    sentences: Optional[Path] = typer.Option(None, "--sentences", exists=True, dir_okay=False, help="CSV emotion,number,text "
                                             "[,actor]: the text of each numbered sentence (the release has none; without "
                                             "it every clip is rejected as transcript_missing)."),
    test_speakers: Optional[str] = MeadTest, dev_speakers: str = MeadDev,
    audio_dir: Optional[Path] = typer.Option(None, "--audio-dir", help="Where extracted 16 kHz FLAC goes [default: OUT's folder/<OUT name>.audio]."),
    label_map: Optional[Path] = LabelMapOpt,
    jobs: Optional[int] = JobsOpt, strict: bool = StrictOpt, normalizer: Normalizer = NormOpt, progress: bool = ProgressOpt,
) -> None:
    """MEAD (audio): m4a clips extracted to 16 kHz mono FLAC, the emotion folder as label
    (surprised -> surprise; fear, disgusted, contempt rejected unless --label-map maps them),
    the level as intensity, texts from --sentences."""
    _run("mead", root, out, jobs, strict, normalizer, progress, audio_dir=audio_dir, sentences=sentences,
         test_speakers=_split_list(test_speakers), dev_speakers=_split_list(dev_speakers) or [], label_map=label_map)


@ingest_app.command("mosei")
def ingest_mosei(
    root: Path = typer.Argument(..., help="The CMU-MOSEI folder (holding Raw/Audio/Full/WAV_16000/<video>.wav and "
                                "Raw/Transcript/Segmented/Combined/<video>.txt)."),
    out: Path = OutOpt,
    labels_csv: Optional[Path] = typer.Option(None, "--labels", exists=True, dir_okay=False, help="The segment labels as CSV: "
                                              "video_id,start,end,happy,sad,anger,surprise,disgust,fear [,segment,sentiment,"
                                              "split,text] (the SDK's CMU_MOSEI_Labels.csd flattened, one row per segment) "
                                              "[default: CMU_MOSEI_Labels.csv under ROOT]."),
    min_intensity: float = typer.Option(1.0, "--min-intensity", min=0.0, help="The dominant (largest) emotion intensity "
                                        "(0-3) a segment needs; weaker ones are rejected as label_weak, ties as "
                                        "label_ambiguous, all-zero segments are neutral."),
    label_map: Optional[Path] = LabelMapOpt,
    jobs: Optional[int] = JobsOpt, strict: bool = StrictOpt, normalizer: Normalizer = NormOpt, progress: bool = ProgressOpt,
) -> None:
    """CMU-MOSEI: segments of each video's long audio (offset/duration), labelled with the dominant
    emotion intensity; anger -> angry, disgust and fear rejected unless --label-map maps them."""
    _run("mosei", root, out, jobs, strict, normalizer, progress, labels_csv=labels_csv, min_intensity=min_intensity,
         label_map=label_map)


def _generic(fmt: str, file: Path, out: Path, audio_col: str, text_col: str, emotion_col: Optional[str],
             id_col: Optional[str], speaker_col: Optional[str], split_col: Optional[str], split: str,
             offset_col: Optional[str], duration_col: Optional[str], corpus: Optional[str], language: str,
             label_map: Optional[Path], jobs, strict, normalizer, progress) -> None:
    _run(fmt, file, out, jobs, strict, normalizer, progress, audio_col=audio_col, text_col=text_col,
         emotion_col=emotion_col, id_col=id_col, speaker_col=speaker_col, split_col=split_col, split=split,
         offset_col=offset_col, duration_col=duration_col, corpus_name=corpus, language=language, label_map=label_map)


def _generic_command(fmt: str):
    def command(
        file: Path = typer.Argument(..., help=f"The {fmt.upper()} file; relative audio paths are relative to its folder."),
        out: Path = OutOpt,
        audio_col: str = typer.Option("audio", "--audio-col", help="Column with the audio path."),
        text_col: str = typer.Option("text", "--text-col", help="Column with the transcript."),
        emotion_col: Optional[str] = typer.Option(None, "--emotion-col", help="Column with an emotion label (canonical, or mapped by --label-map)."),
        id_col: Optional[str] = typer.Option(None, "--id-col", help="Column with a unique utterance id [default: the audio file name and offset]."),
        speaker_col: Optional[str] = typer.Option(None, "--speaker-col", help="Column with the speaker id."),
        split_col: Optional[str] = typer.Option(None, "--split-col", help="Column with the split name."),
        split: str = typer.Option("train", "--split", help="Split for every row when there is no --split-col."),
        offset_col: Optional[str] = typer.Option(None, "--offset-col", help="Column with the segment start in seconds."),
        duration_col: Optional[str] = typer.Option(None, "--duration-col", help="Column with the segment duration in seconds."),
        corpus: Optional[str] = typer.Option(None, "--corpus", help="Corpus name used in ids [default: the file's name]."),
        language: str = typer.Option("en", "--language", help="Language code of the transcripts."),
        label_map: Optional[Path] = LabelMapOpt,
        jobs: Optional[int] = JobsOpt, strict: bool = StrictOpt, normalizer: Normalizer = NormOpt, progress: bool = ProgressOpt,
    ) -> None:
        _generic(fmt, file, out, audio_col, text_col, emotion_col, id_col, speaker_col, split_col, split,
                 offset_col, duration_col, corpus, language, label_map, jobs, strict, normalizer, progress)

    command.__doc__ = f"Any corpus described by a {fmt.upper()} file, one utterance per row."
    return command


ingest_app.command("jsonl")(_generic_command("jsonl"))
ingest_app.command("csv")(_generic_command("csv"))


@ingest_app.command("hf")
def ingest_hf(
    dataset: str = typer.Argument(..., help="A `save_to_disk` folder, a parquet file or a folder of them (a Hub "
                                  "repository's data/<split>-*.parquet layout gives the splits), or a Hub id (streamed)."),
    out: Path = OutOpt,
    audio_dir: Optional[Path] = typer.Option(None, "--audio-dir", help="Where the embedded audio is written as FLAC "
                                             "[default: OUT's folder/<OUT name>.audio]."),
    audio_col: Optional[str] = typer.Option(None, "--audio-col", help="Column with the audio [default: the one Audio "
                                            "feature, else 'audio']."),
    text_col: Optional[str] = typer.Option(None, "--text-col", help="Column with the transcript [default: the first of "
                                           "text, sentence, transcription, transcript, normalized_text]."),
    emotion_col: Optional[str] = typer.Option(None, "--emotion-col", help="Column with the emotion (a ClassLabel is read "
                                              "by its names, strings as they are; mapped like the corpus importers', "
                                              "see --label-map) [default: 'emotion' if there is one; '-' for none]."),
    speaker_col: Optional[str] = typer.Option(None, "--speaker-col", help="Column with the speaker [default: 'speaker' "
                                              "or 'speaker_id' if there is one; '-' for none]."),
    id_col: Optional[str] = typer.Option(None, "--id-col", help="Column with a unique utterance id [default: the row's "
                                         "index in its split]."),
    split_col: Optional[str] = typer.Option(None, "--split-col", help="Column with the split [default: the DatasetDict's "
                                            "splits, or the parquet files' names]."),
    split: str = typer.Option("train", "--split", help="Split of a single Dataset (or of parquet files named by no split)."),
    splits: Optional[str] = typer.Option(None, "--splits", help="Comma-separated splits to import [default: all]."),
    config: Optional[str] = typer.Option(None, "--config", help="A Hub dataset's configuration (subset) name."),
    corpus: Optional[str] = typer.Option(None, "--corpus", help="Corpus name used in ids [default: the folder's or "
                                         "file's name, or the Hub id's last part]."),
    language: str = typer.Option("en", "--language", help="Language code of the transcripts."),
    label_map: Optional[Path] = LabelMapOpt,
    jobs: Optional[int] = JobsOpt, strict: bool = StrictOpt, normalizer: Normalizer = NormOpt, progress: bool = ProgressOpt,
) -> None:
    """A Hugging Face dataset with an audio column: the stored audio bytes (never decoded
    through `datasets`) written once to FLAC beside the manifest, in parallel; ClassLabels
    resolved by name; splits kept. Needs a `task:` in a `run` config."""
    _run("hf", dataset, out, jobs, strict, normalizer, progress, audio_dir=audio_dir, audio_col=audio_col,
         text_col=text_col, emotion_col=emotion_col, speaker_col=speaker_col, id_col=id_col, split_col=split_col,
         split=split, splits=_split_list(splits), config=config, corpus_name=corpus, language=language,
         label_map=label_map)


@ingest_app.command("lhotse")
def ingest_lhotse(
    manifests: List[Path] = typer.Argument(..., help="A CutSet (CUTS.jsonl.gz), or a recordings manifest and its "
                                           "supervisions manifest (.jsonl, .jsonl.gz or .json).", exists=True, dir_okay=False),
    out: Path = OutOpt,
    corpus: Optional[str] = typer.Option(None, "--corpus", help="Corpus name used in ids [default: from the Lhotse "
                                         "name <corpus>_cuts_<part>.jsonl.gz, else the file's name]."),
    split: Optional[str] = typer.Option(None, "--split", help="Split of every record [default: <part> of the Lhotse "
                                        "name, else train]."),
    audio_root: Optional[Path] = typer.Option(None, "--audio-root", help="Folder relative source paths are relative "
                                              "to [default: the current folder, as Lhotse reads them]."),
    language: str = typer.Option("en", "--language", help="Language of supervisions that do not say."),
    label_map: Optional[Path] = LabelMapOpt,
    jobs: Optional[int] = JobsOpt, strict: bool = StrictOpt, normalizer: Normalizer = NormOpt, progress: bool = ProgressOpt,
) -> None:
    """Lhotse manifests: one record per supervision, pointing into its recording's file
    (offset/duration); the emotion from the supervision's custom "emotion". Read without
    lhotse. Needs a `task:` in a `run` config."""
    if len(manifests) > 2:
        raise typer.BadParameter("give a CutSet, or a recordings and a supervisions manifest", param_hint="MANIFESTS")
    _run("lhotse", manifests[0], out, jobs, strict, normalizer, progress,
         supervisions=str(manifests[1]) if len(manifests) > 1 else None, corpus_name=corpus, split=split,
         audio_root=audio_root, language=language, label_map=label_map)


@export_app.command("lhotse")
def export_lhotse_command(
    manifest: Path = typer.Argument(..., help="A manifest (.jsonl or .jsonl.gz) from ingest, generate or curate.",
                                    exists=True, dir_okay=False),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for <prefix>_recordings_<split>.jsonl.gz and "
                                 "<prefix>_supervisions_<split>.jsonl.gz (plus rejects and a summary)."),
    prefix: Optional[str] = typer.Option(None, "--prefix", help="File name prefix [default: the manifest's name]."),
    jobs: Optional[int] = JobsOpt, strict: bool = StrictOpt, progress: bool = ProgressOpt,
) -> None:
    """Lhotse recordings and supervisions (emotion, continuation and the rest of the record in
    the supervision's custom), for Lhotse/icefall loaders: `lhotse.load_manifest(...)`,
    `CutSet.from_manifests(...)`. Written without lhotse."""
    from blspdata.export import export_lhotse

    summary = export_lhotse(manifest, out_dir, prefix=prefix, jobs=jobs or _default_jobs(), strict=strict,
                            progress=progress)
    typer.echo(f"lhotse: {summary.render()}")


class Task(str, Enum):
    semantic = "semantic"
    emotion = "emotion"


def _setting(settings: type, name: str, *flags: str, default=None):
    """The flag of an option declared once as a field of a settings dataclass (blspdata/options.py):
    its default, its help and its bounds (a value outside them is a usage error naming the flag)
    come from the field; its choices from the field's type, which the command's parameter names."""
    from blspdata.options import checked, condition, default_of, options

    f, kind = options(settings)[name]

    def within_bounds(value):
        try:
            return checked(name, value, kind, f, ValueError)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None

    bound = condition(f)
    return typer.Option(default_of(f) if default is None else default, *flags,
                        help=f"{f.metadata['help']}." + (f"  [{bound}]" if bound else ""),
                        callback=within_bounds if bound else None)


def _settings_given(ctx: typer.Context, settings: type) -> dict:
    """The values of the flags named as the fields of a settings dataclass (engine_args apart:
    its flag is a KEY=VALUE list)."""
    from dataclasses import fields

    return {f.name: ctx.params[f.name] for f in fields(settings) if f.name != "engine_args"}


TrustRemoteCodeOpt = typer.Option(False, "--trust-remote-code", help="Let vLLM run the model folder's own Python "
                                  "code (Qwen-7B-Chat needs it). Only this flag turns it on: engine_args in a config "
                                  "or -E asking for it are refused.")
LoadRemoteCodeOpt = typer.Option(False, "--trust-remote-code", help="Run the checkpoint's LLM's own modelling code "
                                 "(Qwen-7B-Chat needs it). A checkpoint's config cannot turn this on by itself.")


@app.command("generate")
def generate_command(
    ctx: typer.Context,
    manifest: Path = typer.Argument(..., help="Manifest from `blspdata ingest` (.jsonl or .jsonl.gz)."),
    out: Path = typer.Option(..., "--out", "-o", help="Continuations to write (.jsonl, appended as they come: "
                             "rerun with the same OUT to resume; put in manifest order when the run completes). "
                             "Rejects and a summary go beside it."),
    task: Task = typer.Option(Task.semantic, "--task", help="semantic: continue the transcript (stage 1 data); "
                              "emotion: continue it in its emotion label's tone (stage 2 data; records without a label are rejected)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Template name in prompts/ (semantic, emotion, "
                                         "semantic-blsp) or a .toml file [default: the task's own]."),
    # One flag per field of GenerateSettings, named as the field (tests/test_options.py).
    backend: Backend = _setting(GenerateSettings, "backend", "--backend"),
    base_url: Optional[str] = _setting(GenerateSettings, "base_url", "--base-url"),
    model: Optional[str] = _setting(GenerateSettings, "model", "--model"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY", show_envvar=True,
                                          help="Key for the server, if it wants one."),
    serve: Optional[Server] = _setting(GenerateSettings, "serve", "--serve"),
    concurrency: Optional[int] = _setting(GenerateSettings, "concurrency", "--concurrency"),
    max_new_tokens: Optional[int] = _setting(GenerateSettings, "max_new_tokens", "--max-new-tokens"),
    temperature: Optional[float] = _setting(GenerateSettings, "temperature", "--temperature"),
    repetition_penalty: Optional[float] = _setting(GenerateSettings, "repetition_penalty", "--repetition-penalty"),
    seed: int = _setting(GenerateSettings, "seed", "--seed"),
    shard: Optional[str] = typer.Option(None, "--shard", help="I/N: only the records whose id hashes to shard I of N "
                                        "(for Slurm-style arrays; join with `blspdata merge`)."),
    server_timeout: float = _setting(GenerateSettings, "server_timeout", "--server-timeout"),
    request_timeout: float = _setting(GenerateSettings, "request_timeout", "--request-timeout"),
    retry_rejects: bool = _setting(GenerateSettings, "retry_rejects", "--retry-rejects/--no-retry-rejects"),
    limit: Optional[int] = _setting(GenerateSettings, "limit", "--limit"),
    engine_args: List[str] = _setting(GenerateSettings, "engine_args", "--engine-arg", "-E", default=[]),
    executor: Executor = _setting(GenerateSettings, "executor", "--executor"),
    ray_actors: int = _setting(GenerateSettings, "ray_actors", "--ray-actors"),
    trust_remote_code: bool = TrustRemoteCodeOpt,
    strict: bool = StrictOpt, progress: bool = ProgressOpt,
) -> None:
    """Write semantic or emotion-aware continuations of a manifest's transcripts with an LLM."""
    from blspdata.generate.run import generate

    settings = GenerateSettings(**_settings_given(ctx, GenerateSettings), engine_args=_engine_args(engine_args))
    with error_note(f"(what was done is kept in {out}; rerun the same command to resume)"):
        summary = generate(manifest, out, task=task.value, prompt=prompt, settings=settings, api_key=api_key,
                           shard=shard, strict=strict, progress=progress, trust_remote_code=trust_remote_code)
    typer.echo(f"generate {task.value}: {summary.render()}")


def _engine_args(items: List[str]) -> dict:
    """["max_model_len=4096", "enforce_eager=true"] -> {"max_model_len": 4096, "enforce_eager": True}."""
    import json

    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--engine-arg")
        try:
            parsed[key.strip().replace("-", "_")] = json.loads(value)
        except ValueError:
            parsed[key.strip().replace("-", "_")] = value
    return parsed


@app.command("merge")
def merge_command(
    inputs: List[Path] = typer.Argument(..., help="Outputs of `blspdata generate --shard I/N` (their rejects are merged too)."),
    out: Path = typer.Option(..., "--out", "-o", help="Merged output (.jsonl or .jsonl.gz), written atomically."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="The manifest the shards came from: every id must "
                                            "be in some shard (no gaps), and rows come out in its order."),
    allow_gaps: bool = typer.Option(False, "--allow-gaps", help="Merge even if some manifest ids are in no shard."),
) -> None:
    """Join sharded generation outputs, checking for overlaps and gaps."""
    from blspdata.generate.resume import merge

    counts = merge(inputs, out, manifest=manifest, allow_gaps=allow_gaps)
    typer.echo(f"merged {counts['shards']} shards: {counts['rows']} rows, {counts['rejects']} rejects -> {out}"
               + (f" ({counts['missing']} manifest ids missing)" if counts["missing"] else ""))


def _curate_help(name: str) -> str:
    """A curate flag's help and default, from the settings field that declares the option."""
    from blspdata.curate.filters import FilterSettings
    from blspdata.curate.options import DedupSettings, described, options

    return described(options(FilterSettings, DedupSettings)[name][0])


@app.command("curate")
def curate_command(
    ctx: typer.Context,
    inputs: List[Path] = typer.Argument(..., help="Outputs of `blspdata generate` (all deduplicated together, in this order)."),
    out: Path = typer.Option(..., "--out", "-o", help="Kept rows (.jsonl or .jsonl.gz), written atomically; "
                             "OUT.rejects.jsonl and OUT.stats.json beside it."),
    config: Optional[Path] = typer.Option(None, "--config", exists=True, dir_okay=False, help="TOML file with any of "
                                          "the options below (keys with underscores, e.g. min_words = 5, disable = [\"language\"], "
                                          "drop_unfinished = true); flags given here win, --enable X over the file's disable "
                                          "and the other way round."),
    disable: List[str] = typer.Option([], "--disable", help="Turn a filter off (repeatable): empty, refusal, length, "
                                      "repetition, echo, language."),
    enable: List[str] = typer.Option([], "--enable", help="Turn an optional filter on (repeatable): unfinished, "
                                     "label_word (the emotion continuation names its label)."),
    drop_unfinished: bool = typer.Option(False, "--drop-unfinished", help="Drop continuations cut at the token limit "
                                         "(the recipe keeps them; same as --enable unfinished)."),
    # One flag per field of FilterSettings and DedupSettings, named as the field (tests/test_options.py).
    min_words: Optional[int] = typer.Option(None, "--min-words", help=_curate_help("min_words")),
    max_words: Optional[int] = typer.Option(None, "--max-words", help=_curate_help("max_words")),
    max_dup_ngram_fraction: Optional[float] = typer.Option(None, "--max-dup-ngram-fraction",
                                                           help=_curate_help("max_dup_ngram_fraction")),
    dup_ngram_size: Optional[int] = typer.Option(None, "--dup-ngram-size", help=_curate_help("dup_ngram_size")),
    max_repeated_line_fraction: Optional[float] = typer.Option(None, "--max-repeated-line-fraction",
                                                               help=_curate_help("max_repeated_line_fraction")),
    echo_overlap: Optional[float] = typer.Option(None, "--echo-overlap", help=_curate_help("echo_overlap")),
    min_language_confidence: Optional[float] = typer.Option(None, "--min-language-confidence",
                                                            help=_curate_help("min_language_confidence")),
    language_min_words: Optional[int] = typer.Option(None, "--language-min-words",
                                                     help=_curate_help("language_min_words")),
    recipe_sorry_but_i: Optional[bool] = typer.Option(None, "--recipe-sorry-but-i/--no-recipe-sorry-but-i",
                                                      help=_curate_help("recipe_sorry_but_i")),
    exact_dedup: Optional[bool] = typer.Option(None, "--exact-dedup/--no-exact-dedup", help=_curate_help("exact_dedup")),
    near_dedup: Optional[bool] = typer.Option(None, "--near-dedup/--no-near-dedup", help=_curate_help("near_dedup")),
    near_dup_threshold: Optional[float] = typer.Option(None, "--near-dup-threshold",
                                                       help=_curate_help("near_dup_threshold")),
    num_perm: Optional[int] = typer.Option(None, "--num-perm", help=_curate_help("num_perm")),
    ngram: Optional[int] = typer.Option(None, "--ngram", help=_curate_help("ngram")),
    executor: Optional[str] = typer.Option(None, "--executor", help=_curate_help("executor")),
    strict: bool = typer.Option(False, "--strict", help="Stop with a non-zero exit at the first input row that is "
                                "not a record (or repeats one's task and id), nothing written, instead of rejecting "
                                "it. The filters' and dedup's drops are curate's work, not bad input: they never stop it."),
    progress: bool = ProgressOpt,
) -> None:
    """Filter generated continuations (each drop with its reason) and remove exact and near duplicates.

    Rows that are not valid records (invalid_row:<field>: a wrong type, a negative duration, a
    label that is not canonical) and later rows of one (task, id) (duplicate_id) are rejected
    too. A .jsonl.gz cut short stops curate naming the file and line, before anything is written."""
    from blspdata.curate.run import curate, settings_from

    # The options by their names (None: not given, the file's or the default), so errors name them too.
    flags = {key: value for key, value in ctx.params.items()
             if key not in ("inputs", "out", "config", "strict", "progress")}
    flags["drop_unfinished"] = drop_unfinished or None
    filters, dedup = settings_from(config, flags)
    stats = curate(inputs, out, filters=filters, dedup=dedup, strict=strict, progress=progress)
    typer.echo(f"curate: {stats.render()}")


@app.command("publish")
def publish_command(
    ctx: typer.Context,
    inputs: List[Path] = typer.Argument(..., help="Curated records (outputs of `blspdata curate`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to create (built beside it, renamed at the end)."),
    # One flag per field of PublishSettings, named as the field (tests/test_options.py).
    format: Format = _setting(PublishSettings, "format", "--format"),
    audio: AudioMode = _setting(PublishSettings, "audio", "--audio"),
    audio_root: Optional[Path] = typer.Option(None, "--audio-root", help="With --audio path: write paths relative to this."),
    max_shard_size: str = _setting(PublishSettings, "max_shard_size", "--max-shard-size"),
    validation_fraction: float = _setting(PublishSettings, "validation_fraction", "--validation-fraction"),
    test_fraction: float = _setting(PublishSettings, "test_fraction", "--test-fraction"),
    license: str = _setting(PublishSettings, "license", "--license"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists (only once the new one is complete)."),
    push_to_hub: Optional[str] = _setting(PublishSettings, "push_to_hub", "--push-to-hub"),
    private: bool = _setting(PublishSettings, "private", "--private"),
    dry_run: bool = typer.Option(False, "--dry-run", help="With --push-to-hub: list what would go up, upload nothing."),
    jobs: Optional[int] = PublishJobsOpt, strict: bool = StrictOpt, progress: bool = ProgressOpt,
) -> None:
    """Publish curated records as Hugging Face Arrow/Parquet shards with a dataset card.

    Rows that are not valid records (invalid_row:<field>) and later rows of one (task, id)
    (duplicate_id) go to OUT.rejects.jsonl; the same input gives byte-identical files."""
    from blspdata.publish import publish, push_to_hub as push

    settings = PublishSettings(**_settings_given(ctx, PublishSettings))
    result = publish(inputs, out, **settings.publish_args(), audio_root=audio_root, jobs=jobs or _default_jobs(),
                     overwrite=overwrite, progress=progress, strict=strict)
    typer.echo(f"published {out}: " + "; ".join(
        f"{config} " + ", ".join(f"{split} {n}" for split, n in splits.items())
        for config, splits in result["rows"].items()))
    typer.echo(result["summary"])
    if push_to_hub:
        files = push(out, push_to_hub, private=private, dry_run=dry_run)
        typer.echo(("would upload" if dry_run else "uploaded") + f" {len(files)} files to {push_to_hub}"
                   + ("".join(f"\n  {f}" for f in files) if dry_run else ""))


@app.command("verify")
def verify_command(
    directory: Path = typer.Argument(..., help="A folder written by `blspdata publish`."),
    sample: int = typer.Option(8, "--sample", min=0, help="Audio rows to decode per split."),
) -> None:
    """Reopen a published dataset with `datasets` and check rows, checksums and audio."""
    from blspdata.publish import verify

    problems = verify(directory, sample=sample)
    for problem in problems:
        typer.echo(f"problem: {problem}", err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{directory}: rows, checksums and audio check out")


def _train_help(name: str, stage: str) -> str:
    """A train flag's help and its default for `stage`, from the field that declares the option
    (TrainConfig or ModelConfig in train/config.py, which imports no torch)."""
    from blspdata.train.config import described

    return described(name, stage)


def _train_options(stage: str):
    def h(name: str) -> str:
        return _train_help(name, stage)

    # One flag per option of TrainConfig and ModelConfig, named as the field (tests/test_train_options.py).
    def command(
        data: Path = typer.Argument(..., help="A dataset from `blspdata publish` (arrow); its "
                                    + ("semantic" if stage == "stage1" else "emotion") + " config is used."),
        out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoints and metrics.jsonl "
                                 "(locked while training: a second run on it stops at once)."),
        encoder: Optional[str] = typer.Option(None, "--encoder", help="Whisper checkpoint (name or folder) whose encoder is used."),
        llm: Optional[str] = typer.Option(None, "--llm", help="Causal LM with a chat template, or a ChatML tokenizer without one (Qwen-7B-Chat) (name or folder)."),
        llm_gguf: Optional[str] = typer.Option(None, "--llm-gguf", help="GGUF file inside the --llm folder, if the LLM ships as GGUF."),
        init: Optional[Path] = typer.Option(None, "--init", help="Checkpoint to start from (stage 2: the stage-1 result, whose encoder and LLM are then the default)."),
        mix: Optional[Path] = typer.Option(None, "--mix", help="Stage 2: also train on this semantic dataset (response_ce only)."),
        lr: Optional[float] = typer.Option(None, "--lr", help=h("lr")),
        weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help=h("weight_decay")),
        warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", help=h("warmup_steps")),
        schedule: Optional[str] = typer.Option(None, "--schedule", help=h("schedule")),
        warmup_type: Optional[str] = typer.Option(None, "--warmup-type", help=h("warmup_type")),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help=h("batch_size")),
        grad_accum: Optional[int] = typer.Option(None, "--grad-accum", min=1, help=h("grad_accum")),
        epochs: Optional[float] = typer.Option(None, "--epochs", help=h("epochs")),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help=h("max_steps")),
        max_length: Optional[int] = typer.Option(None, "--max-length", help=h("max_length")),
        min_audio_s: Optional[float] = typer.Option(None, "--min-audio-s", help=h("min_audio_s")),
        max_audio_s: Optional[float] = typer.Option(None, "--max-audio-s", help=h("max_audio_s")),
        temperature: Optional[float] = typer.Option(None, "--temperature", help=h("temperature")),
        kl_positions: Optional[str] = typer.Option(None, "--kl-positions", help=h("kl_positions")),
        kl_scale_t2: Optional[bool] = typer.Option(None, "--kl-scale-t2/--no-kl-scale-t2", help=h("kl_scale_t2")),
        grad_clip: Optional[float] = typer.Option(None, "--grad-clip", help=h("grad_clip")),
        seed: Optional[int] = typer.Option(None, "--seed", help=h("seed")),
        save_every: Optional[int] = typer.Option(None, "--save-every", help=h("save_every")),
        eval_split: Optional[str] = typer.Option(None, "--eval-split", help=h("eval_split")),
        eval_every: Optional[int] = typer.Option(None, "--eval-every", min=1, help=h("eval_every")),
        eval_limit: Optional[int] = typer.Option(None, "--eval-limit", min=1, help=h("eval_limit")),
        lora_scope: Optional[str] = typer.Option(None, "--lora-scope", help=h("lora_scope")),
        lora_r: Optional[int] = typer.Option(None, "--lora-r", help=h("lora_r")),
        lora_alpha: Optional[int] = typer.Option(None, "--lora-alpha", help=h("lora_alpha")),
        lora_dropout: Optional[float] = typer.Option(None, "--lora-dropout", help=h("lora_dropout")),
        audio_root: Optional[str] = typer.Option(None, "--audio-root", help=h("audio_root")),
        group_by_length: Optional[bool] = typer.Option(None, "--group-by-length/--no-group-by-length",
                                                       help=h("group_by_length")),
        data_workers: Optional[int] = typer.Option(None, "--data-workers", min=0, help=h("data_workers")),
        base_dtype: Optional[str] = typer.Option(None, "--base-dtype", help=h("base_dtype")),
        trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run the LLM's own modelling code (Qwen-7B-Chat needs it). Only for an LLM you trust: its Python runs here."),
        resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last exactly (weights, optimizer, schedule, data position)."),
        progress: bool = ProgressOpt,
    ) -> None:
        # The options by their field names (None: not given, the stage's default).
        given = dict(locals())
        import os

        from blspdata.train.run import MODEL_OPTIONS, TRAIN_OPTIONS, train

        options = {k: v for k, v in given.items() if k in TRAIN_OPTIONS + MODEL_OPTIONS}
        result = train(stage, data, out, encoder=encoder, llm=llm, llm_gguf=llm_gguf, init=init, mix=mix,
                       resume=resume, progress=progress, trust_remote_code=trust_remote_code, **options)
        if int(os.environ.get("RANK", "0")) == 0:
            typer.echo(f"{stage}: {result['steps']} steps -> {out}/final (trainable weights), {out}/last (resumable), "
                       f"{out}/metrics.jsonl" + (f"; skipped {result['skipped']}" if result["skipped"] else ""))

    command.__doc__ = ("Stage 1, semantic alignment: response_kl, only the adapter trains." if stage == "stage1" else
                       "Stage 2, emotion alignment: response_ce + input_er; adapter and (partial) LoRA train.")
    return command


train_app.command("stage1")(_train_options("stage1"))
train_app.command("stage2")(_train_options("stage2"))


@evaluate_app.command("ser")
def evaluate_ser_command(
    checkpoint: Path = typer.Argument(..., help="A checkpoint folder (OUT/final of a training run)."),
    data: List[Path] = typer.Argument(..., help="One or more published datasets (their emotion config is used) or "
                                      "manifests from ingest/curate (.jsonl[.gz]); each corpus in them is a test set."),
    split: str = typer.Option("test", "--split", help="Split to score."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where ser.json, answers.jsonl and the confusion PNGs go [CHECKPOINT/ser-SPLIT]."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score only the first N rows of each DATASET."),
    head_only: bool = typer.Option(False, "--head-only", help="Score the emotion head only (no generation: fast)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Tokens the SER prompt's answer may take [128, the reference's: it answers in a sentence]."),
    audio_root: Optional[str] = typer.Option(None, "--audio-root", help="For datasets published with --audio path."),
    trust_remote_code: bool = LoadRemoteCodeOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Speech emotion recognition: WA, UA, macro-F1, recall per label and the confusion matrix, for the emotion head
    and for the model prompted with the paper's SER instruction (its label read from the answer's text), pooled
    and per test set (each corpus of each DATASET), the paper's accuracy beside ours where it has one. Rows whose
    label is outside the five, or that have no audio, are counted apart per set."""
    from blspdata.train.evaluate import evaluate_ser

    result = evaluate_ser(checkpoint, data, split=split, out=out, limit=limit, prompt_too=not head_only,
                          audio_root=audio_root, max_new_tokens=max_new_tokens, trust_remote_code=trust_remote_code,
                          progress=progress)
    typer.echo(result["text"])
    typer.echo(f"-> {result['out']}")


@evaluate_app.command("compare")
def evaluate_compare_command(
    results: List[Path] = typer.Argument(..., help="Two or more `evaluate ser` outputs (ser.json or its folder) or "
                                         "run folders from `blspdata run` (their evaluate/ser.json)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the table as JSON here."),
) -> None:
    """Evaluations side by side: per test set and method, each one's WA / UA / macro-F1 and the paper's
    figure, so an ablation (stage 2 without stage 1, say) reads at a glance."""
    import json

    from blspdata.records import atomic_path
    from blspdata.train.evaluate import compare, render_compare

    compared = compare(results)
    typer.echo(render_compare(compared))
    if out:
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(compared, indent=2) + "\n")
        typer.echo(f"-> {out}")


@evaluate_app.command("empathy")
def evaluate_empathy_command(
    checkpoint: Path = typer.Argument(..., help="A checkpoint folder (OUT/final of a training run)."),
    data: Path = typer.Argument(..., help="A published dataset (its emotion config) or a manifest (.jsonl[.gz]): "
                                "its labelled rows are the speakers."),
    judge_base_url: Optional[str] = typer.Option(None, "--judge-base-url", help="The judge: an OpenAI-compatible "
                                                 "server (vLLM, llama.cpp, api.openai.com/v1, ...)."),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="The judge's model name [the server's first]."),
    judge_api_key: Optional[str] = typer.Option(None, "--judge-api-key", help="[$OPENAI_API_KEY]"),
    judge_backend: str = typer.Option("openai", "--judge-backend", help="openai (--judge-base-url) or embedded "
                                      "(the local CPU llama.cpp engine of `generate`; --judge-model names its GGUF)."),
    split: str = typer.Option("test", "--split", help="Split to answer and judge."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder [CHECKPOINT/empathy-SPLIT]; a rerun resumes it."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N rows."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Tokens the model's answer may take [128]."),
    judge_max_new_tokens: Optional[int] = typer.Option(None, "--judge-max-new-tokens", min=1, help="Tokens the judge's verdict may take [the judge prompt's, 128]."),
    instructions: Optional[Path] = typer.Option(None, "--instructions", exists=True, dir_okay=False, help="Requests, one a line [prompts/empathy/instructions.txt]."),
    judge_prompt: Optional[Path] = typer.Option(None, "--judge-prompt", exists=True, dir_okay=False, help="Judge template (TOML) [prompts/empathy/judge.toml]."),
    concurrency: Optional[int] = typer.Option(None, "--judge-concurrency", min=1, help="Judge requests in flight [64]."),
    audio_root: Optional[str] = typer.Option(None, "--audio-root", help="For datasets published with --audio path."),
    trust_remote_code: bool = LoadRemoteCodeOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Empathy: the model answers a written request (from an instruction set shipped as data) spoken by each
    row's speaker; an LLM judge scores each answer 1-10 for quality and for empathy toward the speaker's
    emotion (our judge prompt: the paper's is not published). Per-row scores and reasons, means per emotion;
    a verdict without both scores is a reject, never a zero."""
    from blspdata.train.empathy import evaluate_empathy

    result = evaluate_empathy(checkpoint, data, judge_base_url=judge_base_url, judge_model=judge_model,
                              judge_backend=judge_backend, judge_api_key=judge_api_key, split=split, out=out,
                              limit=limit, max_new_tokens=max_new_tokens, judge_max_new_tokens=judge_max_new_tokens,
                              instructions=instructions, judge_prompt=judge_prompt, audio_root=audio_root,
                              trust_remote_code=trust_remote_code, progress=progress, judge_concurrency=concurrency)
    typer.echo(result["text"])
    typer.echo(f"-> {result['out']}")


@app.command("chat")
def chat_command(
    checkpoint: Path = typer.Argument(..., help="A checkpoint folder (OUT/final of a training run)."),
    audio: Path = typer.Argument(..., exists=True, dir_okay=False, help="A speech file (any rate; read as 16 kHz mono)."),
    instruction: Optional[str] = typer.Option(None, "--instruction", help="Text before the speech [the stage-2 "
                                              "instruction: continue in the conveyed emotion tone]."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens"),
    trust_remote_code: bool = LoadRemoteCodeOpt,
) -> None:
    """Generate a response to a speech file."""
    from blspdata.train.evaluate import chat

    typer.echo(chat(checkpoint, audio, instruction, max_new_tokens, trust_remote_code=trust_remote_code))


@app.command("run")
def run_command(
    config: Path = typer.Argument(..., help="YAML config: run_dir, corpora, generate, curate, publish, train, evaluate "
                                  "(see examples/demo.yaml; relative paths are relative to the config's folder)."),
    start: Optional[str] = typer.Option(None, "--from", help="Rerun from this stage on, even if up to date: ingest, "
                                        "generate, curate, publish, stage1, stage2, evaluate."),
    until: Optional[str] = typer.Option(None, "--until", help="Stop after this stage."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Override the config's run_dir."),
    plan_only: bool = typer.Option(False, "--plan", help="Validate the config and say what would run, run nothing."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write RUN_DIR/report.html at the end."),
    strict: bool = typer.Option(False, "--strict", help="Stop with a non-zero exit at the first bad input of "
                                "ingest, generate, curate or publish instead of rejecting it, as each one's --strict "
                                "does (stages skipped as up to date are not read again; --from reruns them)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Run the models' own Python code: "
                                           "vLLM's for generation and the LLM's for training and evaluation (Qwen-7B-Chat "
                                           "needs it). Only this flag turns it on; a config asking for it is refused."),
    progress: bool = ProgressOpt,
) -> None:
    """The whole pipeline from one config: ingest -> generate -> curate -> publish -> stage1 -> stage2
    -> evaluate. A rerun skips what is up to date (recorded hashes of inputs and settings in
    RUN_DIR/run.json) and resumes what was interrupted. One run at a time: RUN_DIR is locked
    while it runs, and a second run on it stops at once, naming the PID that holds it."""
    from blspdata.pipeline import load_config, run

    cfg = load_config(config, run_dir)
    out = Path(cfg.run_dir)
    with error_note(f"(finished stages are kept in {out}; rerun the same command to resume)"):
        run(cfg, start=start, until=until, dry_run=plan_only, progress=progress, echo=typer.echo,
            trust_remote_code=trust_remote_code, strict=strict)
    if plan_only:
        return
    typer.echo(f"== done: {out}")
    from blspdata.layout import RunLayout

    layout = RunLayout(out)
    for label, path in (("dataset", layout.dataset), ("stage-1 checkpoint", layout.checkpoint("stage1")),
                        ("stage-2 checkpoint", layout.checkpoint("stage2")), ("SER evaluation", layout.evaluate)):
        if path.exists():
            typer.echo(f"   {label}: {path}")
    if report:
        from blspdata.report import write_report

        typer.echo(f"   report: {write_report(out)}")


@app.command("report")
def report_command(
    run_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="A folder written by `blspdata run`."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file to write [RUN_DIR/report.html]."),
) -> None:
    """One self-contained HTML page about a run: hours per corpus and split, emotion labels before
    and after curation, lengths, rejects per stage, throughput, loss curves, SER confusion matrix,
    sample rows with audio players."""
    from blspdata.report import write_report

    typer.echo(f"report: {write_report(run_dir, out)}")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"blspdata {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version.")) -> None:
    """Build BLSP-Emo style training data for speech-language models."""


if __name__ == "__main__":
    app()
