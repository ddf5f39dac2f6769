"""The trainer's options and the model's, without torch: `blspdata run` validates its train:
section against these fields and `blspdata train --help` shows them (both stay quick)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from blspdata.errors import BlspdataError
from blspdata.options import checked, option, options, shown  # a field with its help: the flags' help and the run config's schema


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
    batch, epochs). Where we had another choice, it is a named option (docs/DECISIONS.md).
    Each option is declared once, here: the `train` flags' help and the `run` config's train:
    section are built from these fields."""
    stage: str = "stage1"
    data: str = ""                  # a folder from `blspdata publish` (the config subfolder or its parent)
    out: str = ""
    mix: str | None = None          # stage 2: also train on this semantic dataset (response_ce only)
    init: str | None = None         # stage 2: the stage-1 checkpoint to start from
    lr: float = option(1e-4, "Learning rate (the peak, after warm-up)")
    weight_decay: float = option(0.05, "AdamW weight decay")
    warmup_steps: int = option(1000, "Optimizer steps of learning-rate warm-up")
    schedule: str = option("warmup_decay", "warmup_decay (DeepSpeed's WarmupDecayLR, the reference's: warm-up, then "
                           "linear decay to 0), or cosine / linear (linear warm-up, then that decay)")
    warmup_type: str = option("log", "warmup_decay's warm-up: log (DeepSpeed's default) or linear")
    batch_size: int = option(8, "Rows per device and micro-step")
    grad_accum: int = option(24, "Micro-steps per optimizer step: with --batch-size 8 on 4 GPUs, the paper's "
                             "effective batches (stage 1 768, stage 2 128)")
    epochs: float = option(1.0, "Passes over the data")
    max_steps: int | None = option(None, "Optimizer steps (overrides --epochs)")
    max_length: int = option(256, "Tokens of the whole sequence (prompt, transcript, continuation); longer rows "
                             "are skipped")
    min_audio_s: float = option(1.0, "Shorter audio is skipped")
    max_audio_s: float = option(30.0, "Longer audio is skipped (at most the encoder's window)")
    temperature: float = option(2.0, "Stage 1 KL temperature")
    kl_positions: str = option("tokens", "Stage 1 KL at the continuation tokens' own positions (tokens, the "
                               "reference's) or at the positions that predict them (predictions)")
    kl_scale_t2: bool = option(False, "Multiply the stage 1 KL by T^2, as distillation does (the reference does not)")
    grad_clip: float = option(1.0, "Gradient norm clipping")
    seed: int = option(42, "Seed of initialisation, data order and dropout")
    save_every: int = option(0, "Save a resumable checkpoint every N optimizer steps (0: at the end only)")
    eval_split: str | None = option("validation", "Log the stage's losses on this split before step 1 and at the "
                                    "end, as metrics.jsonl rows with \"eval\" (none: off)")
    eval_every: int = option(0, "Also evaluate every N optimizer steps (0: only before and after)")
    eval_limit: int = option(256, "Rows of the eval split used")
    audio_root: str | None = option(None, "Folder the audio paths of a dataset published with --audio path are "
                                    "relative to")
    group_by_length: bool = option(False, "Batch rows of similar length together (sorted within windows of 64 "
                                   "batches, the batches shuffled), so less of each batch is padding; changes the "
                                   "data order, so off, as in the reference")
    data_workers: int | None = option(None, "Processes that fetch rows and decode their audio ahead of the loop, so "
                                      "the accelerator does not wait on FLAC decoding (0: in the training process; "
                                      "the same results either way). Default: 2 on a GPU, 0 on a CPU, whose cores "
                                      "the training itself uses", ge=0)
    base_dtype: str = option("auto", "Frozen encoder and LLM weights: auto (bfloat16 on a GPU, float32 on a CPU), "
                             "float32 or bfloat16; the trained parts stay float32")

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
        f, kind = options(TrainConfig)["data_workers"]  # its type and bounds, as the option declares them
        checked("data_workers", self.data_workers, kind, f, TrainError)


CHOICES = {"schedule": ("warmup_decay", "cosine", "linear"), "warmup_type": ("log", "linear"),
           "kl_positions": ("tokens", "predictions"), "base_dtype": ("auto", "float32", "bfloat16")}


@dataclass
class ModelConfig:
    """The model: base encoder and LLM, adapter and LoRA (saved in every checkpoint's config.json)."""
    encoder: str                    # Whisper checkpoint (name or folder)
    llm: str                        # causal LM (name or folder, or a folder with a .gguf)
    llm_gguf: str | None = None     # GGUF file name inside `llm`, when the LLM ships as GGUF
    adapter_hidden: int = 512
    lora: bool = False
    lora_r: int = option(16, "Stage 2: LoRA rank")
    lora_alpha: int = option(16, "Stage 2: LoRA alpha")
    lora_dropout: float = option(0.05, "Stage 2: LoRA dropout")
    lora_scope: str = option("audio", "Stage 2: audio (LoRA only at speech positions, the paper) or global")
    # Attention and MLP projections, by the names Llama-style models and Qwen(-7B-Chat) give them;
    # only the names the LLM has are used.
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                             "gate_proj", "up_proj", "down_proj",
                                                             "c_attn", "c_proj", "w1", "w2"])
    num_emotions: int = 5
    trust_remote_code: bool = False  # run the LLM's own modelling code (Qwen-7B-Chat needs it)

    def __post_init__(self) -> None:
        if self.lora_scope not in ("audio", "global"):
            raise TrainError(f"lora_scope {self.lora_scope!r}: expected one of audio, global")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def described(name: str, stage: str) -> str:
    """A trainer flag's help with its default for `stage`, from the field that declares it:
    `Learning rate (the peak, after warm-up) [2e-05].` (no default shown where there is none)."""
    owner = TrainConfig if name in TrainConfig.__dataclass_fields__ else ModelConfig
    f = owner.__dataclass_fields__[name]
    value = getattr(TrainConfig.for_stage(stage), name) if owner is TrainConfig else f.default
    if value is None:
        return f"{f.metadata['help']}."
    return f"{f.metadata['help']} [{shown(value)}]."
