"""The training loop of both alignment stages (PAPER.md, "Training"), read top to bottom: the
processes, the model, the data (`data.py`; each batch's rows fetched and audio decoded by
`--data-workers` processes ahead of the steps), the optimizer and schedule, resume, then the
steps with the stage's loss (`losses.py`), evaluation, logging and checkpoints (`checkpoint.py`).

stage1_semantic_alignment trains only the adapter on the `semantic` config; stage2_emotion_alignment
trains adapter and LoRA on the `emotion` config (optionally mixed with `semantic`). The learning
rate follows DeepSpeed's WarmupDecayLR, as the reference's config/dp_config_zero1.json has it
(`lr_factor`).

One loop runs both, on one CPU or under `torchrun` (DDP: gloo on CPU, NCCL on GPU); only
rank 0 writes. A checkpoint holds the trainable weights (safetensors), the model config
naming the base encoder and LLM, and the trainer state for an exact `--resume`.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from blspdata.locks import exclusive
from blspdata.train.checkpoint import load_trainer_state, load_weights, rng_states, save_checkpoint
from blspdata.train.config import TrainConfig, TrainError, checkpoint_config
from blspdata.train.model import BLSPModel, ModelConfig, autocast, base_dtype
# The data and the losses by their old names here too (tests, bench and notebooks import them from loop).
from blspdata.train.data import (SER_INSTRUCTION, STAGE1_INSTRUCTION, STAGE2_INSTRUCTION, SYSTEM,  # noqa: F401
                                 SYSTEM_EMPATHY, Batches, RowPrompts, audio_present, collate, continuation_ids,
                                 data_workers, decode_audio, decoded_batches, emotion_name, featurize,
                                 held_out_rows, load_rows, row_prompts, sequence_length, training_rows, usable)
from blspdata.train.losses import (EVAL_METRICS, evaluate_losses, response_kl,  # noqa: F401
                                   stage1_semantic_alignment, stage2_emotion_alignment)

LOSSES = {"stage1": stage1_semantic_alignment, "stage2": stage2_emotion_alignment}
SHOWN = ("response_kl", "response_ce", "input_er", "er_accuracy", "tokens_per_s")  # on the progress bar


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


def start_processes() -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process; under torchrun, joins the process group."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))  # before NCCL picks GPU 0 for all
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    return rank, world, device


def restore(state: dict, model: BLSPModel, optimizer, scheduler, out: Path, rank: int,
            device: torch.device) -> tuple[int, int]:
    """Put weights, optimizer, schedule and random states back as OUT/last saved them, and cut
    metrics.jsonl back to its step (rank 0). Returns (optimizer step, micro-step)."""
    load_weights(model, out / "last")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rngs = state["rng"]  # one per rank
    mine = rngs[rank] if rank < len(rngs) else rngs[0]
    torch.set_rng_state(mine["torch"])
    if mine.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], device)
    random.setstate(state["python_rng"])
    metrics = out / "metrics.jsonl"
    if rank == 0 and metrics.exists():  # drop what was logged after the checkpoint we go back to
        kept = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= state["step"]]
        metrics.write_text("".join(line + "\n" for line in kept))
    return state["step"], state["micro"]


class MetricsLog:
    """OUT/metrics.jsonl, one JSON object per line, written by rank 0 only (other ranks' writes
    are no-ops). A resumed run appends (the log was cut back to its checkpoint); a fresh one
    starts it anew."""

    def __init__(self, path: Path, rank: int, append: bool):
        self.file = open(path, "a" if append else "w") if rank == 0 else None

    def write(self, record: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def train(cfg: TrainConfig, model_config: ModelConfig, resume: bool = False, progress: bool = True) -> dict:
    """Run one stage. Returns the final metrics. The run folder is locked (OUT/.lock, by rank 0):
    a second run writing the same checkpoints and metrics.jsonl is refused at once. (A user's
    call with the command's options is `blspdata.train.run.train`.)"""
    cfg.check()
    if int(os.environ.get("RANK", "0")) != 0:
        return _train(cfg, model_config, resume, progress)
    with exclusive(Path(cfg.out) / ".lock", what=f"run folder {cfg.out}"):
        return _train(cfg, model_config, resume, progress)


def _train(cfg: TrainConfig, model_config: ModelConfig, resume: bool, progress: bool) -> dict:
    rank, world, device = start_processes()
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

    # The model: frozen encoder and LLM, the adapter (and stage 2's LoRA) trained.
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

    # The data: usable rows (the others counted by reason), this rank's batches, held-out rows.
    lengths = [] if cfg.group_by_length else None  # filled by the scan: speech positions + continuation tokens
    sources, skipped = training_rows(cfg, model, lengths)
    batches = Batches(sources, cfg.batch_size, cfg.seed, rank, world, lengths)
    held_out = held_out_rows(cfg, model)
    if batches.per_epoch() == 0:
        raise TrainError(f"{cfg.data}: {len(sources[0][1])} usable rows, fewer than one batch of "
                         f"{cfg.batch_size} x {world}")
    steps_per_epoch = max(1, batches.per_epoch() // cfg.grad_accum)
    total_steps = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))

    # The optimizer and schedule; a resumed run takes them back, with its position in the data.
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))
    step, micro = restore(state, model, optimizer, scheduler, out, rank, device) if state is not None else (0, 0)

    prompt = None  # each row's own (RowPrompts, in featurize)
    loss_fn = LOSSES[cfg.stage]
    mixed = autocast(device, dtype)
    workers = data_workers(cfg, device)  # fetch rows and decode audio: in this process (0) or ahead of it
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        print(f"{cfg.stage}: {sum(len(k) for _, k in sources)} rows, skipped {dict(skipped) or 0}; "
              f"{total_steps} steps of {cfg.batch_size} x {cfg.grad_accum} x {world}; "
              f"{workers or 'no'} data worker{'s' * (workers != 1)}", file=sys.stderr)
    log = MetricsLog(out / "metrics.jsonl", rank, append=step > 0)
    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=step, desc=cfg.stage, disable=not progress or rank != 0, file=sys.stderr)
    if step == 0 and held_out:
        log.write({"step": step, "eval": cfg.eval_split,
                   **evaluate_losses(model, prompt, loss_fn, held_out, cfg, device, mixed, rank, world)})

    model.adapter.train()
    started, tokens, last, waited = time.monotonic(), 0, {}, 0.0
    # The batches this run still needs, decoded (by the workers, ahead of the steps).
    stream = decoded_batches(batches, micro, max(0, total_steps * cfg.grad_accum - micro), cfg, workers)
    while True:
        asked = time.monotonic()
        decoded = next(stream, None)
        waited += time.monotonic() - asked  # the step's wait for its data (fetch + decode, or the workers)
        if decoded is None or step >= total_steps:
            break
        # One micro-step: this batch's loss, its gradient added to the step's.
        batch = featurize(model, decoded, cfg, device)
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

        # One optimizer step, every grad_accum micro-steps.
        if world > 1:  # average the trainable gradients across processes (what DDP does)
            average_gradients(trainable, world)
        norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        lr = scheduler.get_last_lr()[0]  # the rate this step uses
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        record = {"step": step, "lr": lr, "grad_norm": float(norm),
                  **{k: float(np.mean(v)) for k, v in last.items()},
                  "tokens_per_s": tokens * world / max(1e-9, time.monotonic() - started), "data_wait_s": waited}
        last, waited = {}, 0.0
        log.write(record)
        bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k in SHOWN}, refresh=False)
        bar.update(1)
        if held_out and (step >= total_steps or (cfg.eval_every and step % cfg.eval_every == 0)):
            log.write({"step": step, "eval": cfg.eval_split,
                       **evaluate_losses(model, prompt, loss_fn, held_out, cfg, device, mixed, rank, world)})
        if step >= total_steps or (cfg.save_every and step % cfg.save_every == 0):
            rngs = rng_states(device, world)  # every rank takes part; rank 0 writes
            if rank == 0:
                save_checkpoint(out / "last", model, cfg, {
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                    "micro": micro, "rng": rngs, "python_rng": random.getstate()})
    stream.close()  # the workers, if any, stop
    bar.close()
    if rank == 0:
        save_checkpoint(out / "final", model, cfg, None)
    log.close()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return {"steps": step, "skipped": dict(skipped)}
