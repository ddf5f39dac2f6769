"""The trainer's options, without torch: `blspdata run` validates its train: section against
these fields (and `--plan` stays quick)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blspdata.errors import BlspdataError


class TrainError(BlspdataError, ValueError):
    """Options, data or a model the trainer cannot use (the CLI prints it as one line)."""


class CheckpointError(TrainError):
    """A checkpoint that cannot be used (the CLI prints it as one line)."""


def checkpoint_config(folder: str | Path) -> dict:
    """A checkpoint folder's config.json ({"model": ..., "train": ...}), or CheckpointError
    naming the folder (missing, not a checkpoint, unreadable)."""
    path = Path(folder) / "config.json"
    if not Path(folder).is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: not a checkpoint folder (no config.json)") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint config ({str(exc)[:200]})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise CheckpointError(f"{path}: not a checkpoint config written by blspdata (no \"model\" section)")
    return saved


@dataclass
class TrainConfig:
    """Defaults are the paper's and the reference code's (stage 1; stage 2 overrides lr, warm-up,
    batch, epochs). Where we had another choice, it is a named option (docs/DECISIONS.md)."""
    stage: str = "stage1"
    data: str = ""                  # a folder from `blspdata publish` (the config subfolder or its parent)
    out: str = ""
    mix: str | None = None          # stage 2: also train on this semantic dataset (response_ce only)
    init: str | None = None         # stage 2: the stage-1 checkpoint to start from
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 1000
    schedule: str = "warmup_decay"  # DeepSpeed WarmupDecayLR, the reference's; or cosine, linear
    warmup_type: str = "log"        # warmup_decay's warm-up: log (DeepSpeed's default) or linear
    batch_size: int = 8             # per device
    grad_accum: int = 24
    epochs: float = 1.0
    max_steps: int | None = None    # optimizer steps; overrides epochs
    max_length: int = 256           # tokens of the whole rendered sequence (prompt, transcript, continuation)
    min_audio_s: float = 1.0
    max_audio_s: float = 30.0
    temperature: float = 2.0        # response_kl
    kl_positions: str = "tokens"    # response_kl logits at the continuation tokens' own positions (the
                                    # reference); or predictions: the positions that predict them
    kl_scale_t2: bool = False       # multiply response_kl by T^2 (distillation's scaling; not the reference)
    grad_clip: float = 1.0
    seed: int = 42
    save_every: int = 0             # optimizer steps; 0 = at the end only
    eval_split: str | None = "validation"  # losses on this split before step 1 and at the end; None = off
    eval_every: int = 0             # also every N optimizer steps
    eval_limit: int = 256           # rows of the eval split used
    audio_root: str | None = None   # datasets published with --audio path
    base_dtype: str = "auto"        # frozen encoder + LLM weights: auto = bfloat16 on a GPU, float32 on a CPU

    @classmethod
    def for_stage(cls, stage: str, **overrides: Any) -> "TrainConfig":
        base = cls(stage=stage)
        if stage == "stage2":
            base.lr, base.warmup_steps, base.grad_accum, base.epochs = 2e-5, 200, 4, 3.0  # 8 x 4 x 4 GPUs = 128
        for key, value in overrides.items():
            if value is not None:
                setattr(base, key, value)
        base.check()
        return base

    def check(self) -> None:
        """A TrainError for an option outside its choices (train() checks too, for configs
        built by hand)."""
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise TrainError(f"{key} {getattr(self, key)!r}: expected one of {', '.join(allowed)}")


CHOICES = {"schedule": ("warmup_decay", "cosine", "linear"), "warmup_type": ("log", "linear"),
           "kl_positions": ("tokens", "predictions"), "base_dtype": ("auto", "float32", "bfloat16")}
