"""The two stages' losses (PAPER.md, "Training"), each `(model, prompt, batch, cfg) -> (loss,
metrics)` on a collated batch (`data.collate`), and the same metrics on held-out rows.

stage1_semantic_alignment: `response_kl`, KL between the LLM's distributions over the
    continuation given speech (student) and given the transcript (teacher, no gradient),
    temperature 2, at the continuation tokens' own positions (the reference's).
stage2_emotion_alignment: `response_ce` (continuation given speech, with the unlabelled
    instruction: the model must hear the emotion) + `input_er` (emotion head).
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F

from blspdata.train.config import TrainConfig
from blspdata.train.data import collate
from blspdata.train.model import BLSPModel, Prompt, build_batch

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
