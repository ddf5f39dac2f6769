"""The trainer's data: published rows, their audio, the prompts each row trains with, which rows
are usable, the batches and their collation into model inputs (PAPER.md, "Training"): rows
are fetched and their audio decoded (`decode`; in DataLoader worker processes ahead of the
loop with `--data-workers`, `decoded_batches`), then made into features and token ids in the
training process (`featurize`).

Each row trains with the prompt its continuation was written with (`RowPrompts`: the template
named in its `generator`, or its recorded `instruction`); the prompt texts live in prompts/*.toml.
A sequence is system turn, user turn (instruction + transcript or speech), assistant turn
(continuation + the template's end of turn when the continuation finished); a row whose whole
sequence is over `max_length` tokens is skipped (`usable`, with the reason counted).
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import soundfile as sf
import torch

from blspdata.audio import RATE, read_segment, resample
from blspdata.labels import CANONICAL
from blspdata.generate import prompts as templates
from blspdata.train.config import TrainConfig, TrainError
from blspdata.train.model import BLSPModel, Prompt, end_of_turn

# The built-in templates (prompts/semantic.toml, prompts/emotion.toml) are the one place for
# prompt text: rows without a template of their own train with these.
_SEMANTIC, _EMOTION = templates.load("semantic"), templates.load("emotion")
SYSTEM = _SEMANTIC.system
SYSTEM_EMPATHY = _EMOTION.system
# The instructions, up to where the input goes; stage 2's is the speech path's, with no label.
STAGE1_INSTRUCTION = _SEMANTIC.user.split("{text}")[0]
STAGE2_INSTRUCTION = _EMOTION.speech_user.split("{text}")[0]
SER_INSTRUCTION = _EMOTION.ser_user.split("{text}")[0]


# ---------------------------------------------------------------------------- rows and audio

def load_rows(path: str, split: str = "train"):
    import datasets

    folder = Path(path)
    dataset = datasets.load_from_disk(str(folder))
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise TrainError(f"{folder} has no {split!r} split (it has: {', '.join(dataset)})")
        dataset = dataset[split]
    if isinstance(dataset.features.get("audio"), datasets.Audio):
        dataset = dataset.cast_column("audio", datasets.Audio(decode=False))  # we decode the FLAC ourselves
    return dataset


def decode_audio(row: dict, audio_root: str | None) -> np.ndarray:
    audio = row["audio"]
    if isinstance(audio, dict):  # embedded: 16 kHz mono FLAC from publish, but any file sf reads will do
        data, rate = sf.read(io.BytesIO(audio["bytes"]), dtype="float32")
        data = data if data.ndim == 1 else data.mean(axis=1)
        if rate != RATE:
            data = resample(data, rate)
        return data
    path = os.path.join(audio_root, audio) if audio_root and not os.path.isabs(audio) else audio
    return read_segment(path, row["offset"], row["duration"])


class RowPrompts:
    """The prompts a row trains with, read from the row (PAPER.md, "Training"):

    - text path (stage 1's teacher): the template that wrote the row's continuation, named in
      its `generator` (`{"prompt": {"id": "semantic-blsp", ...}}`), its `{emotion}` filled in. A
      row whose template is not a built-in one, or whose recorded `instruction` is not what
      that template renders, uses its `instruction` with the transcript cut out, under the
      system prompt of its template (or of its task's built-in template);
    - speech path: the same for semantic rows; for emotion rows the template's `speech_user`,
      which names no label, under the same system prompt.

    Rows with neither (hand-made datasets) use the built-in template of their task, or of the
    stage. Prompts are tokenized once per distinct text."""

    def __init__(self, tokenizer, stage: str):
        self.tokenizer = tokenizer
        self.default_task = "semantic" if stage == "stage1" else "emotion"
        self.builtin = set(templates.builtin_names())
        self.templates: dict[str, templates.Template] = {}
        self.prompts: dict[tuple[str, str], Prompt] = {}

    def __call__(self, row: dict) -> tuple[Prompt, Prompt]:
        task = row.get("task") or self.default_task
        template = self._template(row.get("generator"), task)
        label = emotion_name(row.get("emotion"))
        user = template.user.format(text="{text}", emotion=label)
        instruction, text = row.get("instruction"), row.get("text") or ""
        if instruction and instruction != user.replace("{text}", text):
            head, found, tail = instruction.rpartition(text) if text else ("", "", "")
            if found:
                user = head + "{text}" + tail
        if task != "emotion":
            speech = user
        else:
            speech = template.speech_user or _EMOTION.speech_user
            if "{text}" not in speech or "{emotion}" in speech:
                raise TrainError(f"prompt template {template.id!r}: speech_user must use {{text}} and no {{emotion}}")
        return self._prompt(template.system, user), self._prompt(template.system, speech)

    def _template(self, generator: Any, task: str) -> "templates.Template":
        name = None
        if isinstance(generator, str):  # published datasets keep `generator` as a JSON string
            try:
                generator = json.loads(generator)
            except ValueError:
                generator = None
        if isinstance(generator, dict) and isinstance(generator.get("prompt"), dict):
            name = generator["prompt"].get("id")
        if name not in self.builtin:  # never a file path a dataset names
            name = "semantic" if task == "semantic" else "emotion"
        if name not in self.templates:
            self.templates[name] = templates.load(name)
        return self.templates[name]

    def _prompt(self, system: str, user: str) -> Prompt:
        if (system, user) not in self.prompts:
            self.prompts[system, user] = Prompt(self.tokenizer, system, user)
        return self.prompts[system, user]


def emotion_name(value: Any) -> str | None:
    """A row's emotion as its label name: published datasets store the class index."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(CANONICAL):
        return CANONICAL[value]
    return value if value in CANONICAL else None


def row_prompts(model, stage: str) -> RowPrompts:
    """The model's RowPrompts for `stage`, kept on the model so each prompt is tokenized once."""
    cache = getattr(model, "prompt_cache", None)
    if cache is None:
        return RowPrompts(model.tokenizer, stage)
    if stage not in cache:
        cache[stage] = RowPrompts(model.tokenizer, stage)
    return cache[stage]


def sequence_length(prompt: Prompt, row: dict, continuation: list[int]) -> int:
    """Tokens of the row's whole text-path sequence: system and user turn with the transcript,
    assistant header, continuation (with its end tokens)."""
    return len(prompt.text_before) + len(prompt.transcript(row["text"] or "")) + len(prompt.after) + len(continuation)


def continuation_ids(tokenizer, row: dict, end: list[int]) -> list[int]:
    """The continuation's tokens, then the template's end of turn when the LLM finished it; a
    truncated continuation (`finished` false) gets nothing after it."""
    ids = tokenizer(row["continuation"] or "", add_special_tokens=False).input_ids
    return ids + end if row.get("finished") else ids


def usable(dataset, model: BLSPModel, cfg: TrainConfig, chunk: int = 1024,
           lengths: list[int] | None = None) -> tuple[list[int], Counter]:
    """Indices of rows fit to train on, and why the others are skipped: audio outside 1-30 s
    (or the encoder's window), a whole sequence over `max_length` tokens (the reference's
    rule: prompt, transcript and continuation together), no continuation. Rows are read and
    tokenized `chunk` at a time (one tokenizer call per chunk, not one per row: a million
    rows start in minutes, not hours); the lengths are those `sequence_length` gives. With
    `lengths`, each kept row's speech-path length (`speech_positions` + continuation tokens)
    is appended to it, for batches grouped by length."""
    limit = min(cfg.max_audio_s, model.feature_extractor.chunk_length)
    keep, skipped = [], Counter()
    present = audio_present(dataset, cfg.audio_root)
    columns = [c for c in ("duration", "text", "continuation", "finished", "task", "instruction", "generator",
                           "emotion") if c in dataset.column_names]
    index = 0
    for block in dataset.select_columns(columns).iter(batch_size=chunk):
        candidates = []  # (index, row) that pass the checks needing no tokenizer
        for values in zip(*(block[c] for c in columns)):
            row = dict(zip(columns, values))
            if not present[index]:
                skipped["audio_missing"] += 1
            elif row["duration"] > limit:
                skipped["audio_too_long"] += 1
            elif row["duration"] < cfg.min_audio_s:
                skipped["audio_too_short"] += 1
            elif not (row["continuation"] or "").strip():
                skipped["continuation_empty"] += 1
            else:
                candidates.append((index, row))
            index += 1
        measured = sequence_lengths(model, cfg.stage, [r for _, r in candidates])
        for (position, row), (length, continuation) in zip(candidates, measured):
            if length > cfg.max_length:
                skipped["sequence_too_long"] += 1
            else:
                keep.append(position)
                if lengths is not None:
                    lengths.append(speech_positions(row["duration"]) + continuation)
    return keep, skipped


def sequence_lengths(model: BLSPModel, stage: str, rows: list[dict]) -> list[tuple[int, int]]:
    """(`sequence_length`, continuation tokens) of each row, in two tokenizer calls for all
    of them (prompt + transcript as one string, as `Prompt.transcript` tokenizes it; the
    continuations) and one per row only where the tokenizer merges across the boundary."""
    if not rows:
        return []
    tokenizer = model.tokenizer
    prompts, end = row_prompts(model, stage), end_of_turn(tokenizer)
    text_prompts = [prompts(row)[0] for row in rows]
    joined = tokenizer([p.text + (row["text"] or "") for p, row in zip(text_prompts, rows)],
                       add_special_tokens=False).input_ids
    continuations = tokenizer([row["continuation"] or "" for row in rows], add_special_tokens=False).input_ids
    lengths = []
    for prompt, row, ids, continuation in zip(text_prompts, rows, joined, continuations):
        head = prompt.text_before
        if ids[: len(head)] == head and len(ids) > len(head):
            transcript = len(ids) - len(head)
        else:
            transcript = len(prompt.transcript(row["text"] or ""))
        tail = len(continuation) + (len(end) if row.get("finished") else 0)
        lengths.append((len(head) + transcript + len(prompt.after) + tail, tail))
    return lengths


def speech_positions(duration: float) -> int:
    """Adapter outputs for `duration` seconds of speech: the encoder's frames (10 ms hop,
    stride 2: one per 320 samples, at most the 30-s window's 1500), then the Subsampler's
    three stride-2 convolutions (`BLSPModel.speech_embeddings`)."""
    frames = min(max(math.ceil(duration * RATE / 320), 1), 1500)
    for _ in range(3):
        frames = (frames - 1) // 2 + 1
    return frames


def audio_present(dataset, audio_root: str | None) -> list[bool]:
    """Per row: is there audio to decode? Read from the Arrow column's validity and length
    buffers, so the (memory-mapped) audio bytes themselves are never copied: a million-row
    dataset is checked in seconds. Path-mode rows: does the file exist?"""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = dataset.with_format("arrow").select_columns(["audio"])[:]["audio"]
    if pa.types.is_struct(column.type):  # {"bytes", "path"}: embedded audio
        data = pc.struct_field(column, "bytes")
        ok = pc.and_(pc.is_valid(column), pc.fill_null(pc.greater(pc.binary_length(data), 0), False))
        return [bool(x) for x in pc.fill_null(ok, False).to_pylist()]
    root = audio_root or ""
    return [bool(p) and os.path.exists(os.path.join(root, p) if root and not os.path.isabs(p) else p)
            for p in column.to_pylist()]


class Batches:
    """Deterministic batches: a seeded permutation per epoch, this rank's share of it.

    With `lengths` (one per row of the sources, in their order), rows of similar length share
    a batch: the permutation is cut into windows of `window` global batches, each window's
    rows sorted by length (longest first) and cut into batches, whose order in the window is
    shuffled with the same seed, so less of each batch is padding (`--group-by-length`; the
    data order changes, so it is off by default, as in the reference)."""

    def __init__(self, sources: list[tuple[Any, list[int]]], batch_size: int, seed: int, rank: int, world: int,
                 lengths: list[int] | None = None, window: int = 64):
        self.items = [(s, i) for s, (_, indices) in enumerate(sources) for i in indices]
        self.sources = [d for d, _ in sources]
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        if lengths is not None and len(lengths) != len(self.items):
            raise ValueError(f"{len(lengths)} lengths for {len(self.items)} rows")
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.window = window

    def per_epoch(self) -> int:
        return len(self.items) // (self.batch_size * self.world)

    def epoch(self, number: int):
        rng = np.random.default_rng(self.seed + number)
        order = rng.permutation(len(self.items))
        if self.lengths is not None:
            order = self._grouped(order, rng)
        mine = order[self.rank::self.world]
        for b in range(self.per_epoch()):
            chunk = mine[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(self.sources[self.items[i][0]], self.items[i][1]) for i in chunk]

    def _grouped(self, order: np.ndarray, rng) -> np.ndarray:
        """`order` with each window's rows sorted by length and its batches shuffled. Each
        global batch (batch_size x world rows) holds similar lengths, so every rank's does."""
        step = self.batch_size * self.world
        grouped = []
        for start in range(0, len(order), step * self.window):
            window = order[start:start + step * self.window]
            window = window[np.argsort(-self.lengths[window], kind="stable")]
            batches = [window[b:b + step] for b in range(0, len(window), step)]
            full = [batches[i] for i in rng.permutation(len(batches)) if len(batches[i]) == step]
            grouped.extend(full + [b for b in batches if len(b) < step])  # a short last batch stays last
        return np.concatenate(grouped) if grouped else order

    def stream(self, start: int = 0):
        """Every batch from micro-step `start` on, epoch after epoch, without end: a resumed run
        starts at the batch after the last one it saw."""
        epoch = start // max(1, self.per_epoch())
        while True:
            for position, batch in enumerate(self.epoch(epoch)):
                if epoch * self.per_epoch() + position >= start:
                    yield batch
            epoch += 1


def training_rows(cfg: TrainConfig, model: BLSPModel,
                  lengths: list[int] | None = None) -> tuple[list[tuple[Any, list[int]]], Counter]:
    """The stage's training sources, (dataset, usable indices) each: `cfg.data`, and `cfg.mix`
    when given; and why rows of either are skipped. With `lengths`, every usable row's
    speech-path length is appended to it, in the sources' order (`usable`)."""
    dataset = load_rows(cfg.data)
    keep, skipped = usable(dataset, model, cfg, lengths=lengths)
    sources = [(dataset, keep)]
    if cfg.mix:
        mixed = load_rows(cfg.mix)
        mixed_keep, mixed_skipped = usable(mixed, model, cfg, lengths=lengths)
        sources.append((mixed, mixed_keep))
        skipped += mixed_skipped
    return sources, skipped


def held_out_rows(cfg: TrainConfig, model: BLSPModel) -> list[tuple[Any, list[int]]]:
    """The eval split's usable rows as one source, or none: evaluation off, or the default split
    (validation) absent from the dataset (it then trains without evaluation). A split the user
    named and the dataset lacks is a TrainError."""
    if not cfg.eval_split:
        return []
    try:
        held = load_rows(cfg.data, cfg.eval_split)
    except TrainError:
        if cfg.eval_split != TrainConfig.eval_split:
            raise
        return []
    keep = usable(held, model, cfg)[0]
    return [(held, keep)] if keep else []


class Decoded(NamedTuple):
    """A batch's rows with their audio decoded: what a data worker hands the loop (`decode`)."""
    audios: list[np.ndarray]   # 16 kHz mono float32, one per readable row
    rows: list[dict]           # the readable rows, without their audio bytes
    unreadable: int            # rows whose audio did not decode


def decode(rows: list[dict], audio_root: str | None) -> Decoded:
    """Each row's audio decoded (`decode_audio`) and the row kept without its audio column (the
    bytes are not needed after this, and need not cross a worker's pipe). Audio that fails to
    decode (bytes that are not audio, or a file gone since publish) is counted, not a crash."""
    audios, readable = [], []
    for row in rows:
        try:
            audios.append(decode_audio(row, audio_root))
        except (OSError, RuntimeError, ValueError):
            continue
        readable.append({key: value for key, value in row.items() if key != "audio"})
    return Decoded(audios, readable, len(rows) - len(readable))


def featurize(model: BLSPModel, decoded: Decoded, cfg: TrainConfig, device: Any = "cpu") -> dict[str, Any]:
    """Decoded audio -> log-mel features (computed on `device`: the STFT of 30-second windows
    is most of a batch's CPU time), token ids of transcripts and continuations, emotion ids."""
    tokenizer, audios, rows = model.tokenizer, decoded.audios, decoded.rows
    if not rows:
        return {"rows": 0, "unreadable": decoded.unreadable}
    features = model.feature_extractor(audios, sampling_rate=RATE, return_tensors="pt",
                                       device=str(device)).input_features
    end, prompts = end_of_turn(tokenizer), row_prompts(model, cfg.stage)
    text_prompts, speech_prompts = zip(*(prompts(row) for row in rows))
    labels = [emotion_name(row.get("emotion")) for row in rows]
    return {
        "rows": len(rows), "unreadable": decoded.unreadable,
        "features": features, "samples": torch.tensor([len(a) for a in audios]),
        "texts": [row["text"] for row in rows],
        "text_prompts": list(text_prompts), "speech_prompts": list(speech_prompts),
        "continuations": [continuation_ids(tokenizer, row, end) for row in rows],
        "emotions": torch.tensor([-100 if label is None else CANONICAL.index(label) for label in labels]),
    }


def collate(model: BLSPModel, rows: list[dict], cfg: TrainConfig, device: Any = "cpu") -> dict[str, Any]:
    """Rows -> model inputs in this process: `decode`, then `featurize`."""
    return featurize(model, decode(rows, cfg.audio_root), cfg, device)


# ---------------------------------------------------------------------------- data workers

WORKER_TIMEOUT_S = 600  # a batch's rows and audio: milliseconds from local disk; longer is a stalled read
PREFETCH = 4            # batches each worker decodes ahead


def data_workers(cfg: TrainConfig, device: Any) -> int:
    """Worker processes that fetch and decode batches: `cfg.data_workers`, or when not given, 2
    on a GPU (a batch decodes in milliseconds, so two stay well ahead of any step) and 0 on a
    CPU, whose cores the training itself uses."""
    if cfg.data_workers is not None:
        return cfg.data_workers
    return 2 if torch.device(device).type == "cuda" else 0


class DecodedBatches(torch.utils.data.IterableDataset):
    """`count` batches of `batches.stream(start)` (a `Batches`: a resumed run starts at its
    micro-step), their rows fetched and decoded (`decode`). Under a DataLoader, worker w of W
    takes the batches at positions p % W == w, and the DataLoader takes one from each worker
    in turn, so the batches arrive in the stream's order whatever W is."""

    def __init__(self, batches: Batches, start: int, count: int, audio_root: str | None):
        self.batches, self.start, self.count, self.audio_root = batches, start, count, audio_root

    def __iter__(self) -> Iterator[Decoded]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for position, spec in enumerate(itertools.islice(self.batches.stream(self.start), self.count)):
            if position % workers == worker:
                yield decode([source[int(index)] for source, index in spec], self.audio_root)


def _as_is(decoded: Decoded) -> Decoded:
    return decoded  # the DataLoader's default would turn the audio arrays into tensors


def decoded_batches(batches: Batches, start: int, count: int, cfg: TrainConfig, workers: int) -> Iterator[Decoded]:
    """The `count` batches from micro-step `start` on, decoded: in this process (`workers` 0),
    or by `workers` DataLoader worker processes ahead of the loop, in the same order (the
    same results: `featurize` runs in this process either way)."""
    dataset = DecodedBatches(batches, start, count, cfg.audio_root)
    if workers == 0:
        yield from dataset
        return
    # The workers tokenize nothing; saying so keeps tokenizers from warning at each fork.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # One pass over a stream that covers the whole run, so the workers live as long as the run
    # (persistent_workers would only matter for a second pass). Their seed comes from a
    # generator of their own, so starting them draws nothing from the training's random state.
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, prefetch_factor=PREFETCH,
                                         collate_fn=_as_is, timeout=WORKER_TIMEOUT_S,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    try:
        yield from loader
    except RuntimeError as exc:
        if "timed out" not in str(exc):
            raise
        raise TrainError(f"{cfg.data}: no batch from the {workers} data workers in {WORKER_TIMEOUT_S} s "
                         f"(a stalled read of the rows or their audio)") from None
