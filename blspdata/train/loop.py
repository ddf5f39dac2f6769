"""The two alignment stages and the training loop (PAPER.md, "Training").

stage1_semantic_alignment: `response_kl`, KL between the LLM's next-token distributions over
    the continuation given speech (student) and given the transcript (teacher, no gradient),
    temperature 2. Only the adapter trains. Data: the `semantic` config.
stage2_emotion_alignment: `response_ce` (continuation given speech, with the unlabelled
    instruction: the model must hear the emotion) + `input_er` (emotion head). Adapter and
    LoRA train. Data: the `emotion` config (optionally mixed with `semantic`).

One loop runs both, on one CPU or under `torchrun` (DDP: gloo on CPU, NCCL on GPU); only
rank 0 writes. A checkpoint holds the trainable weights (safetensors), the model config
naming the base encoder and LLM, and the trainer state for an exact `--resume`.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import random
import re
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from blspdata.train.config import TrainConfig
from blspdata.train.model import BLSPModel, ModelConfig, Prompt, autocast, base_dtype, build_batch

SYSTEM = "You are a helpful assistant."
SYSTEM_EMPATHY = ("You are a helpful assistant. Your response should fulfill requests with empathy toward "
                  "user's emotion tone.")
STAGE1_INSTRUCTION = "Continue the following sentence in a coherent style: "
STAGE2_INSTRUCTION = "Continue the following sentence based on the conveyed emotion tone in a coherent style: "
SER_INSTRUCTION = ("Please identify the emotion tone of the speech provided below. Select from the following "
                   "options: neutral, sad, angry, happy, or surprise.\n\nSpeech: ")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (the CLI prints it as one line)."""


# ---------------------------------------------------------------------------- data

def load_rows(path: str, split: str = "train"):
    import datasets

    folder = Path(path)
    dataset = datasets.load_from_disk(str(folder))
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"{folder} has no {split!r} split (it has: {', '.join(dataset)})")
        dataset = dataset[split]
    if isinstance(dataset.features.get("audio"), datasets.Audio):
        dataset = dataset.cast_column("audio", datasets.Audio(decode=False))  # we decode the FLAC ourselves
    return dataset


def decode_audio(row: dict, audio_root: str | None) -> np.ndarray:
    audio = row["audio"]
    if isinstance(audio, dict):  # embedded: 16 kHz mono FLAC from publish, but any file sf reads will do
        data, rate = sf.read(io.BytesIO(audio["bytes"]), dtype="float32")
        data = data if data.ndim == 1 else data.mean(axis=1)
        if rate != 16000:
            from blspdata.publish import resample

            data = resample(data, rate)
        return data
    from blspdata.publish import read_segment

    path = os.path.join(audio_root, audio) if audio_root and not os.path.isabs(audio) else audio
    return read_segment(path, row["offset"], row["duration"])


def usable(dataset, model: BLSPModel, cfg: TrainConfig) -> tuple[list[int], Counter]:
    """Indices of rows fit to train on, and why the others are skipped (the paper drops
    audio outside 1-30 s and text over 256 tokens)."""
    limit = min(cfg.max_audio_s, model.feature_extractor.chunk_length)
    keep, skipped = [], Counter()
    tokenizer = model.tokenizer
    present = audio_present(dataset, cfg.audio_root)
    for index, row in enumerate(dataset.select_columns(["duration", "text", "continuation"])):
        if not present[index]:
            skipped["audio_missing"] += 1
        elif row["duration"] > limit:
            skipped["audio_too_long"] += 1
        elif row["duration"] < cfg.min_audio_s:
            skipped["audio_too_short"] += 1
        elif max(len(tokenizer(row["text"]).input_ids), len(tokenizer(row["continuation"] or "").input_ids)) > cfg.max_length:
            skipped["text_too_long"] += 1
        elif not (row["continuation"] or "").strip():
            skipped["continuation_empty"] += 1
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
    features = model.feature_extractor(audios, sampling_rate=16000, return_tensors="pt",
                                       device=str(device)).input_features
    continuations = []
    for row in rows:
        ids = tokenizer(row["continuation"], add_special_tokens=False).input_ids[: cfg.max_length]
        if row["finished"]:  # a truncated continuation is trained without an end-of-turn token
            ids = ids + [tokenizer.eos_token_id]
        continuations.append(ids)
    return {
        "rows": len(rows), "unreadable": unreadable,
        "features": features, "samples": torch.tensor([len(a) for a in audios]),
        "texts": [row["text"] for row in rows],
        "tasks": [row.get("task") for row in rows],
        "continuations": continuations,
        "emotions": torch.tensor([-100 if row["emotion"] is None else row["emotion"] for row in rows]),
    }


# ---------------------------------------------------------------------------- the losses

def _gather(logits: torch.Tensor, predict: list[torch.Tensor]) -> torch.Tensor:
    """The logits at the positions that predict continuation tokens, as one (tokens, vocab)
    tensor. One indexing op: per-row slices would each backpropagate a full-size zero tensor."""
    rows = torch.cat([torch.full_like(positions, i) for i, positions in enumerate(predict)])
    return logits[rows, torch.cat(predict)]


def stage1_semantic_alignment(model: BLSPModel, prompt: Prompt, batch: dict, cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    """response_kl: the speech path learns to continue as the text path does."""
    speech, lengths = model.speech_embeddings(batch["features"], batch["samples"])
    with torch.no_grad():
        transcripts = [prompt.transcript(text)[: cfg.max_length] for text in batch["texts"]]
        embeds, attention, predict, _ = build_batch(model, prompt, transcripts, batch["continuations"])
        teacher = _gather(model.lm_logits(embeds, attention, None), predict)
    embeds, attention, predict, _ = build_batch(model, prompt, list(speech), batch["continuations"], lengths)
    student = _gather(model.lm_logits(embeds, attention, None), predict)
    t = cfg.temperature
    kl = F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                  reduction="batchmean")
    return kl * t * t, {"response_kl": kl.item()}


def stage2_emotion_alignment(model: BLSPModel, prompt: Prompt, batch: dict, cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    """response_ce on the continuation given speech + input_er of the emotion head."""
    speech, lengths = model.speech_embeddings(batch["features"], batch["samples"])
    if isinstance(prompt, dict):  # {task: Prompt}: mixed-in semantic rows keep the stage-1 prompt
        prompt = [prompt.get(task) or prompt["emotion"] for task in batch["tasks"]]
    embeds, attention, predict, speech_mask = build_batch(model, prompt, list(speech), batch["continuations"], lengths)
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
def evaluate_losses(model: BLSPModel, prompt: Prompt, loss_fn, sources: list, cfg: TrainConfig, device,
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


# ---------------------------------------------------------------------------- checkpoints

def rng_states(device: torch.device, world: int) -> list[dict]:
    """Every rank's torch (and CUDA) generator state, in rank order: each rank draws its own
    LoRA-dropout masks, so an exact resume restores each its own."""
    mine = {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    if world == 1:
        return [mine]
    import torch.distributed as dist

    states: list = [None] * world
    dist.all_gather_object(states, mine)
    return states


def load_trainer_state(folder: Path) -> dict:
    """The optimizer, schedule, data position and RNG state of a `last/` checkpoint, loaded
    with `weights_only=True`: tensors and plain values only. A pickle that would build other
    objects (and so could run code: a planted file in a shared run folder) is refused."""
    path = Path(folder) / "trainer_state.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names what it would have had to build: "Unsupported global: GLOBAL posix.system ..."
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise CheckpointError(f"{path}: not a readable trainer state") from None
        raise CheckpointError(f"{path}: refused to load: it holds {found.group(1)}, more than tensors and plain "
                              "values, and unpickling it could run code. A trainer state written by blspdata "
                              "holds none: delete the file, or train without --resume") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable trainer state ({str(exc)[:200]})") from None
    missing = [k for k in ("optimizer", "scheduler", "step", "micro", "rng", "python_rng")
               if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a trainer state written by blspdata (lacks {', '.join(missing)})")
    return state


def save_checkpoint(folder: Path, model: BLSPModel, cfg: TrainConfig, state: dict | None) -> None:
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.trainable_state().items()}, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps({"model": model.config.to_dict(), "train": asdict(cfg)}, indent=2))
    if state is not None:  # tensors and plain values only: load_trainer_state reads it without pickle's objects
        torch.save(state, tmp / "trainer_state.pt")
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    os.replace(tmp, folder)


def load_weights(model: BLSPModel, checkpoint: str | Path, strict_bases: bool = True) -> dict:
    """Load a checkpoint's trainable weights; refuse one made for another encoder or LLM."""
    from safetensors.torch import load_file

    checkpoint = Path(checkpoint)
    saved = json.loads((checkpoint / "config.json").read_text())["model"]
    for key in ("encoder", "llm", "llm_gguf"):
        if strict_bases and saved.get(key) != getattr(model.config, key):
            raise ValueError(f"{checkpoint} was trained with {key} {saved.get(key)!r}, this model uses "
                             f"{getattr(model.config, key)!r}")
    weights = load_file(str(checkpoint / "model.safetensors"))
    own = dict(model.named_parameters())
    unknown = [k for k in weights if k not in own]
    if unknown:
        raise ValueError(f"{checkpoint} holds weights this model lacks, e.g. {unknown[:3]}")
    with torch.no_grad():
        for name, value in weights.items():
            own[name].copy_(value)
    return saved


# ---------------------------------------------------------------------------- the loop

def train(cfg: TrainConfig, model_config: ModelConfig, resume: bool = False, progress: bool = True) -> dict:
    """Run one stage. Returns the final metrics."""
    cfg.check()
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

    if not progress:  # transformers' own bars (loading weights) too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    model_config.lora = cfg.stage == "stage2"
    dtype = base_dtype(cfg.base_dtype, device)
    model = BLSPModel(model_config, dtype=dtype).to(device)
    if cfg.init:
        load_weights(model, cfg.init)
    trainable = [p for p in model.parameters() if p.requires_grad]

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
        except ValueError:
            if cfg.eval_split != TrainConfig.eval_split:
                raise
            held = None  # a dataset without a validation split trains without evaluation
        if held is not None:
            held_out = [(held, usable(held, model, cfg)[0])]
    if batches.per_epoch() == 0:
        raise ValueError(f"{cfg.data}: {len(keep)} usable rows, fewer than one batch of {cfg.batch_size} x {world}")
    steps_per_epoch = max(1, batches.per_epoch() // cfg.grad_accum)
    total_steps = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))

    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def schedule(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress_ = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress_))) if cfg.schedule == "cosine" else max(0.0, 1 - progress_)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
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

    prompt = (Prompt(model.tokenizer, SYSTEM, STAGE1_INSTRUCTION) if cfg.stage == "stage1"
              else {"emotion": Prompt(model.tokenizer, SYSTEM_EMPATHY, STAGE2_INSTRUCTION),
                    "semantic": Prompt(model.tokenizer, SYSTEM, STAGE1_INSTRUCTION)})
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
