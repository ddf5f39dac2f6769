"""The two alignment stages and the training loop (PAPER.md, "Training").

stage1_semantic_alignment: `response_kl`, KL between the LLM's distributions over the
    continuation given speech (student) and given the transcript (teacher, no gradient),
    temperature 2, at the continuation tokens' own positions (the reference's). Only the
    adapter trains. Data: the `semantic` config.
stage2_emotion_alignment: `response_ce` (continuation given speech, with the unlabelled
    instruction: the model must hear the emotion) + `input_er` (emotion head). Adapter and
    LoRA train. Data: the `emotion` config (optionally mixed with `semantic`).

Each row trains with the prompt its continuation was written with (`RowPrompts`: the template
named in its `generator`, or its recorded `instruction`); the prompt texts live in prompts/*.toml.
A sequence is system turn, user turn (instruction + transcript or speech), assistant turn
(continuation + the template's end of turn when the continuation finished); a row whose whole
sequence is over `max_length` tokens is skipped. The learning rate follows DeepSpeed's
WarmupDecayLR, as the reference's config/dp_config_zero1.json has it (`lr_factor`).

One loop runs both, on one CPU or under `torchrun` (DDP: gloo on CPU, NCCL on GPU); only
rank 0 writes. A checkpoint holds the trainable weights (safetensors), the model config
naming the base encoder and LLM, and the trainer state for an exact `--resume` (written and read by
`checkpoint.py`).
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from blspdata.audio import RATE, read_segment, resample
from blspdata.labels import CANONICAL
from blspdata.generate import prompts as templates
from blspdata.locks import exclusive
from blspdata.train.config import TrainConfig, TrainError, checkpoint_config
from blspdata.train.checkpoint import load_trainer_state, load_weights, rng_states, save_checkpoint
from blspdata.train.model import BLSPModel, ModelConfig, Prompt, autocast, base_dtype, build_batch, end_of_turn

# The built-in templates (prompts/semantic.toml, prompts/emotion.toml) are the one place for
# prompt text: rows without a template of their own train with these.
_SEMANTIC, _EMOTION = templates.load("semantic"), templates.load("emotion")
SYSTEM = _SEMANTIC.system
SYSTEM_EMPATHY = _EMOTION.system
# The instructions, up to where the input goes; stage 2's is the speech path's, with no label.
STAGE1_INSTRUCTION = _SEMANTIC.user.split("{text}")[0]
STAGE2_INSTRUCTION = _EMOTION.speech_user.split("{text}")[0]
SER_INSTRUCTION = _EMOTION.ser_user.split("{text}")[0]


# ---------------------------------------------------------------------------- data

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


def usable(dataset, model: BLSPModel, cfg: TrainConfig) -> tuple[list[int], Counter]:
    """Indices of rows fit to train on, and why the others are skipped: audio outside 1-30 s
    (or the encoder's window), a whole sequence over `max_length` tokens (the reference's
    rule: prompt, transcript and continuation together), no continuation."""
    limit = min(cfg.max_audio_s, model.feature_extractor.chunk_length)
    keep, skipped = [], Counter()
    tokenizer = model.tokenizer
    prompts, end = row_prompts(model, cfg.stage), end_of_turn(tokenizer)
    present = audio_present(dataset, cfg.audio_root)
    columns = [c for c in ("duration", "text", "continuation", "finished", "task", "instruction", "generator",
                           "emotion") if c in dataset.column_names]
    for index, row in enumerate(dataset.select_columns(columns)):
        if not present[index]:
            skipped["audio_missing"] += 1
        elif row["duration"] > limit:
            skipped["audio_too_long"] += 1
        elif row["duration"] < cfg.min_audio_s:
            skipped["audio_too_short"] += 1
        elif not (row["continuation"] or "").strip():
            skipped["continuation_empty"] += 1
        elif sequence_length(prompts(row)[0], row, continuation_ids(tokenizer, row, end)) > cfg.max_length:
            skipped["sequence_too_long"] += 1
        else:
            keep.append(index)
    return keep, skipped


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
    """Deterministic batches: a seeded permutation per epoch, this rank's share of it."""

    def __init__(self, sources: list[tuple[Any, list[int]]], batch_size: int, seed: int, rank: int, world: int):
        self.items = [(s, i) for s, (_, indices) in enumerate(sources) for i in indices]
        self.sources = [d for d, _ in sources]
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world

    def per_epoch(self) -> int:
        return len(self.items) // (self.batch_size * self.world)

    def epoch(self, number: int):
        order = np.random.default_rng(self.seed + number).permutation(len(self.items))
        mine = order[self.rank::self.world]
        for b in range(self.per_epoch()):
            chunk = mine[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(self.sources[self.items[i][0]], self.items[i][1]) for i in chunk]


def collate(model: BLSPModel, rows: list[dict], cfg: TrainConfig, device: Any = "cpu") -> dict[str, Any]:
    """Decoded audio -> log-mel features (computed on `device`: the STFT of 30-second windows
    is most of a batch's CPU time), token ids of transcripts and continuations, emotion ids."""
    tokenizer = model.tokenizer
    audios, readable = [], []
    for row in rows:  # bytes that fail to decode (or a file gone since publish): skipped, counted
        try:
            audios.append(decode_audio(row, cfg.audio_root))
            readable.append(row)
        except (OSError, RuntimeError, ValueError):
            pass
    unreadable, rows = len(rows) - len(readable), readable
    if not rows:
        return {"rows": 0, "unreadable": unreadable}
    features = model.feature_extractor(audios, sampling_rate=RATE, return_tensors="pt",
                                       device=str(device)).input_features
    end, prompts = end_of_turn(tokenizer), row_prompts(model, cfg.stage)
    text_prompts, speech_prompts = zip(*(prompts(row) for row in rows))
    labels = [emotion_name(row.get("emotion")) for row in rows]
    return {
        "rows": len(rows), "unreadable": unreadable,
        "features": features, "samples": torch.tensor([len(a) for a in audios]),
        "texts": [row["text"] for row in rows],
        "text_prompts": list(text_prompts), "speech_prompts": list(speech_prompts),
        "continuations": [continuation_ids(tokenizer, row, end) for row in rows],
        "emotions": torch.tensor([-100 if label is None else CANONICAL.index(label) for label in labels]),
    }


# ---------------------------------------------------------------------------- the losses

def _gather(logits: torch.Tensor, predict: list[torch.Tensor]) -> torch.Tensor:
    """The logits at the positions that predict continuation tokens, as one (tokens, vocab)
    tensor. One indexing op: per-row slices would each backpropagate a full-size zero tensor."""
    rows = torch.cat([torch.full_like(positions, i) for i, positions in enumerate(predict)])
    return logits[rows, torch.cat(predict)]


def response_kl(student: torch.Tensor, teacher: torch.Tensor, student_at: list[torch.Tensor],
                teacher_at: list[torch.Tensor], cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 1's loss from the two paths' logits (B, L, V) and, per row, the positions whose
    logits predict each continuation token (`build_batch`). Returns (loss, KL).

    The reference (src/modeling_blsp2.py) takes the logits at the continuation tokens' own
    positions, one further on (`kl_positions` "tokens"): they predict tokens 2..n and the one
    after the last, and the first token's prediction is left out. `predictions` takes the
    positions that predict tokens 1..n instead. KL(teacher || student) with both softened by T,
    summed over the vocabulary and averaged over tokens ("batchmean" on the (tokens, V)
    rows); `kl_scale_t2` multiplies it by T^2, as distillation does (the reference does not)."""
    shift = 1 if cfg.kl_positions == "tokens" else 0
    s = _gather(student, [p + shift for p in student_at])
    t = _gather(teacher, [p + shift for p in teacher_at])
    temperature = cfg.temperature
    kl = F.kl_div(F.log_softmax(s.float() / temperature, -1), F.softmax(t.float() / temperature, -1),
                  reduction="batchmean")
    return (kl * temperature ** 2 if cfg.kl_scale_t2 else kl), kl


def stage1_semantic_alignment(model: BLSPModel, prompt: Prompt | None, batch: dict,
                              cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    """response_kl: the speech path learns to continue as the text path does. Each row's own
    prompts (`RowPrompts`), or `prompt` for every row when given."""
    speech, lengths = model.speech_embeddings(batch["features"], batch["samples"])
    n = len(batch["texts"])
    teacher_prompts = [prompt] * n if prompt else batch["text_prompts"]
    student_prompts = [prompt] * n if prompt else batch["speech_prompts"]
    with torch.no_grad():
        transcripts = [p.transcript(text) for p, text in zip(teacher_prompts, batch["texts"])]
        embeds, attention, teacher_at, _ = build_batch(model, teacher_prompts, transcripts, batch["continuations"])
        teacher = model.lm_logits(embeds, attention, None)
    embeds, attention, student_at, _ = build_batch(model, student_prompts, list(speech), batch["continuations"], lengths)
    student = model.lm_logits(embeds, attention, None)
    loss, kl = response_kl(student, teacher, student_at, teacher_at, cfg)
    return loss, {"response_kl": kl.item()}


def stage2_emotion_alignment(model: BLSPModel, prompt: Prompt | None, batch: dict,
                             cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    """response_ce on the continuation given speech + input_er of the emotion head. Emotion
    rows' speech path has the unlabelled instruction, mixed-in semantic rows their own
    (`RowPrompts`); `prompt`, when given, is used for every row."""
    speech, lengths = model.speech_embeddings(batch["features"], batch["samples"])
    prompts = [prompt] * len(batch["texts"]) if prompt else batch["speech_prompts"]
    embeds, attention, predict, speech_mask = build_batch(model, prompts, list(speech), batch["continuations"], lengths)
    logits = _gather(model.lm_logits(embeds, attention, speech_mask), predict)
    targets = torch.cat([torch.tensor(c, device=logits.device) for c in batch["continuations"]])
    ce = F.cross_entropy(logits, targets)
    labels = batch["emotions"].to(logits.device)
    metrics = {"response_ce": ce.item()}
    loss = ce
    if (labels >= 0).any():
        emotion_logits = model.emotion_logits(speech, lengths)
        er = F.cross_entropy(emotion_logits, labels, ignore_index=-100)
        loss = loss + er
        known = labels >= 0
        metrics["input_er"] = er.item()
        metrics["er_accuracy"] = (emotion_logits.argmax(-1)[known] == labels[known]).float().mean().item()
    return loss, metrics


EVAL_METRICS = ("response_kl", "response_ce", "input_er", "er_accuracy")


@torch.no_grad()
def evaluate_losses(model: BLSPModel, prompt: Prompt | None, loss_fn, sources: list, cfg: TrainConfig, device,
                    autocast, rank: int, world: int) -> dict:
    """The stage's metrics on held-out rows (no gradient), averaged over rows and processes:
    the number to watch, where per-step training metrics move with each batch."""
    mine = [(d, i) for d, indices in sources for i in indices[: cfg.eval_limit]][rank::world]
    sums, counts = Counter(), Counter()  # per metric: stage 2's emotion metrics exist for labelled batches only
    modes = [(m, m.training) for m in model.modules()]
    model.eval()  # no dropout (LoRA's included)
    for start in range(0, len(mine), cfg.batch_size):
        rows = [d[int(i)] for d, i in mine[start:start + cfg.batch_size]]
        batch = collate(model, rows, cfg, device)
        if not batch["rows"]:
            continue
        batch["features"], batch["samples"] = batch["features"].to(device), batch["samples"].to(device)
        with autocast:
            _, metrics = loss_fn(model, prompt, batch, cfg)
        for key, value in metrics.items():
            sums[key] += value * batch["rows"]
            counts[key] += batch["rows"]
    for module, mode in modes:
        module.training = mode
    # One fixed-size tensor on every rank, whatever each one's batches held (a rank with no
    # readable rows has no metrics at all): different sizes would break the collective.
    keys = EVAL_METRICS
    totals = torch.tensor([sums[k] for k in keys] + [counts[k] for k in keys], dtype=torch.float64)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(totals)
    n = len(keys)
    return {k: float(totals[i]) / float(totals[n + i]) for i, k in enumerate(keys) if totals[n + i] > 0}


def average_gradients(params: list[torch.Tensor], world: int) -> None:
    """One all_reduce over every trainable gradient, flattened. Every rank sends the same
    tensor even where its batch left a gradient None (no emotion labels, say): per-parameter
    calls would then differ in number between ranks and the collective would fail."""
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
        offset += n


# ---------------------------------------------------------------------------- the loop

def lr_factor(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """The learning rate of optimizer step `step` (0-based), as a fraction of `cfg.lr`.

    warmup_decay is DeepSpeed's WarmupDecayLR (deepspeed/runtime/lr_schedules.py), which the
    reference's config/dp_config_zero1.json names, with the Trainer's warmup_min_lr 0 and
    warmup_max_lr = lr: over W = max(2, warmup_steps) steps it rises as log(step + 1) / log(W)
    (warmup_type log, DeepSpeed's default; linear: step / W), then falls linearly to 0 at
    total_steps: (total_steps - step) / (total_steps - W). We take the value at the step's own
    index, so the first step's rate is 0 (log 1). DeepSpeed steps its scheduler after the
    optimizer, so each value arrives one step later there, and in 0.10.3 (the reference's pin)
    the very first step runs at the full lr, before the scheduler has set any: a quirk we do
    not copy. cosine and linear: a linear warm-up to lr, then cosine or linear decay to 0 (our
    earlier choice)."""
    if cfg.schedule == "warmup_decay":
        warmup = max(2, cfg.warmup_steps)
        if step < warmup:
            return math.log(step + 1) / math.log(warmup) if cfg.warmup_type == "log" else step / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress


def train(cfg: TrainConfig, model_config: ModelConfig, resume: bool = False, progress: bool = True) -> dict:
    """Run one stage. Returns the final metrics. The run folder is locked (OUT/.lock, by rank 0):
    a second run writing the same checkpoints and metrics.jsonl is refused at once."""
    cfg.check()
    if int(os.environ.get("RANK", "0")) != 0:
        return _train(cfg, model_config, resume, progress)
    with exclusive(Path(cfg.out) / ".lock", what=f"run folder {cfg.out}"):
        return _train(cfg, model_config, resume, progress)


def _train(cfg: TrainConfig, model_config: ModelConfig, resume: bool, progress: bool) -> dict:
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        import torch.distributed as dist

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))  # before NCCL picks GPU 0 for all
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    # Read before anything is built: a state that cannot be loaded safely stops the run at once.
    state = load_trainer_state(out / "last") if resume and (out / "last" / "trainer_state.pt").exists() else None
    if cfg.init:
        checkpoint_config(cfg.init)  # likewise a wrong --init, before the models load

    if not progress:  # transformers' own bars (loading weights) too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    model_config.lora = cfg.stage == "stage2"
    dtype = base_dtype(cfg.base_dtype, device)
    model = BLSPModel(model_config, dtype=dtype).to(device)
    if cfg.init:
        load_weights(model, cfg.init)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if rank == 0:
        counts = model.trainable_counts()
        print(f"trainable parameters: {sum(counts.values()):,} ("
              + ", ".join(f"{part} {n:,}" for part, n in counts.items()) + ")", file=sys.stderr)

    dataset = load_rows(cfg.data)
    keep, skipped = usable(dataset, model, cfg)
    sources = [(dataset, keep)]
    if cfg.mix:
        mixed = load_rows(cfg.mix)
        mixed_keep, mixed_skipped = usable(mixed, model, cfg)
        sources.append((mixed, mixed_keep))
        skipped += mixed_skipped
    batches = Batches(sources, cfg.batch_size, cfg.seed, rank, world)
    held_out = []
    if cfg.eval_split:
        try:
            held = load_rows(cfg.data, cfg.eval_split)
        except TrainError:
            if cfg.eval_split != TrainConfig.eval_split:
                raise
            held = None  # a dataset without a validation split trains without evaluation
        if held is not None:
            held_out = [(held, usable(held, model, cfg)[0])]
    if batches.per_epoch() == 0:
        raise TrainError(f"{cfg.data}: {len(keep)} usable rows, fewer than one batch of {cfg.batch_size} x {world}")
    steps_per_epoch = max(1, batches.per_epoch() // cfg.grad_accum)
    total_steps = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))

    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))
    step, micro = 0, 0
    if state is not None:
        load_weights(model, out / "last")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, micro = state["step"], state["micro"]
        rngs = state["rng"]  # one per rank
        mine = rngs[rank] if rank < len(rngs) else rngs[0]
        torch.set_rng_state(mine["torch"])
        if mine.get("cuda") is not None and device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], device)
        random.setstate(state["python_rng"])
        metrics = out / "metrics.jsonl"
        if rank == 0 and metrics.exists():  # drop what was logged after the checkpoint we go back to
            kept = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= step]
            metrics.write_text("".join(line + "\n" for line in kept))

    prompt = None  # each row's own (RowPrompts, in collate)
    loss_fn = stage1_semantic_alignment if cfg.stage == "stage1" else stage2_emotion_alignment
    mixed = autocast(device, dtype)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        print(f"{cfg.stage}: {sum(len(k) for _, k in sources)} rows, skipped {dict(skipped) or 0}; "
              f"{total_steps} steps of {cfg.batch_size} x {cfg.grad_accum} x {world}", file=sys.stderr)
    # A resumed run appends to its log (cut back to the checkpoint above); a fresh one starts it anew.
    log = open(out / "metrics.jsonl", "a" if step else "w") if rank == 0 else None
    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=step, desc=cfg.stage, disable=not progress or rank != 0, file=sys.stderr)

    def evaluate_now() -> None:
        if not held_out or not held_out[0][1]:
            return
        result = evaluate_losses(model, prompt, loss_fn, held_out, cfg, device, mixed, rank, world)
        if rank == 0:
            log.write(json.dumps({"step": step, "eval": cfg.eval_split, **result}) + "\n")
            log.flush()

    if step == 0:
        evaluate_now()
    model.adapter.train()
    started, tokens, last = time.monotonic(), 0, {}
    epoch = micro // max(1, batches.per_epoch())
    done = step >= total_steps
    while not done:
        for position, rows_spec in enumerate(batches.epoch(epoch)):
            if epoch * batches.per_epoch() + position < micro:
                continue  # resume: this batch was seen before the interruption
            rows = [source[int(index)] for source, index in rows_spec]
            batch = collate(model, rows, cfg, device)
            if batch["unreadable"]:
                skipped["audio_unreadable"] += batch["unreadable"]
            if batch["rows"]:  # else every row was unreadable: a micro-step without gradient
                batch["features"] = batch["features"].to(device)
                batch["samples"] = batch["samples"].to(device)
                with mixed:
                    loss, metrics = loss_fn(model, prompt, batch, cfg)
                (loss / cfg.grad_accum).backward()
                tokens += sum(len(c) for c in batch["continuations"])
                for key, value in metrics.items():
                    last.setdefault(key, []).append(value)
            micro += 1
            if micro % cfg.grad_accum:
                continue
            if distributed:  # average the trainable gradients across processes (what DDP does)
                average_gradients(trainable, world)
            norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            lr = scheduler.get_last_lr()[0]  # the rate this step uses
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            record = {"step": step, "lr": lr, "grad_norm": float(norm),
                      **{k: float(np.mean(v)) for k, v in last.items()},
                      "tokens_per_s": tokens * world / max(1e-9, time.monotonic() - started)}
            last = {}
            if rank == 0:
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix({k: f"{v:.3g}" for k, v in record.items()
                                 if k in ("response_kl", "response_ce", "input_er", "er_accuracy", "tokens_per_s")},
                                refresh=False)
            bar.update(1)
            if step >= total_steps or (cfg.eval_every and step % cfg.eval_every == 0):
                evaluate_now()
            if step >= total_steps or (cfg.save_every and step % cfg.save_every == 0):
                rngs = rng_states(device, world)  # every rank takes part; rank 0 writes
                if rank == 0:
                    save_checkpoint(out / "last", model, cfg, {
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                        "micro": micro, "rng": rngs, "python_rng": random.getstate()})
            if step >= total_steps:
                done = True
                break
        epoch += 1
    bar.close()
    if rank == 0:
        save_checkpoint(out / "final", model, cfg, None)
        log.close()
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return {"steps": step, "skipped": dict(skipped)}
