"""`blspdata train stage1|stage2` as one Python call: the same folder choice, inheritance from
`--init` and option handling whether a user types the command or calls `train(...)` in a
notebook (the CLI only parses and calls this).

    from blspdata.train.run import train
    train("stage1", "run/dataset", "run/train/stage1", encoder="openai/whisper-small", llm="Qwen/Qwen2-7B-Instruct")
    train("stage2", "run/dataset", "run/train/stage2", init="run/train/stage1/final")  # bases from stage 1
"""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from blspdata.train.config import ModelConfig, TrainConfig, TrainError, checkpoint_config

# The options a call may set, by the config that holds them (the rest are given as arguments).
TRAIN_OPTIONS = tuple(f.name for f in fields(TrainConfig) if "help" in f.metadata)
MODEL_OPTIONS = tuple(f.name for f in fields(ModelConfig) if "help" in f.metadata)


def dataset_folder(data: str | Path, stage: str) -> Path:
    """The config a stage trains on: DATA/semantic for stage 1, DATA/emotion for stage 2, when
    DATA is a whole published dataset; else DATA itself (already that config)."""
    folder = Path(data) / ("semantic" if stage == "stage1" else "emotion")
    return folder if folder.is_dir() else Path(data)


def configs(stage: str, data: str | Path, out: str | Path, *, encoder: str | None = None, llm: str | None = None,
            llm_gguf: str | None = None, init: str | Path | None = None, mix: str | Path | None = None,
            trust_remote_code: bool = False, **options: Any) -> tuple[TrainConfig, ModelConfig]:
    """The TrainConfig and ModelConfig of one stage's run. `options` are TrainConfig's and
    ModelConfig's options by field name (None: the stage's default). Stage 2 inherits the
    encoder and LLM from `init` unless given; local model folders are recorded as absolute
    paths, so the checkpoint works from anywhere; eval_split "none" turns evaluation off.
    Raises TrainError (CheckpointError for a wrong `init`) before any model loads."""
    unknown = sorted(set(options) - set(TRAIN_OPTIONS) - set(MODEL_OPTIONS))
    if unknown:
        raise TrainError(f"unknown trainer option(s): {', '.join(unknown)}; "
                         f"known: {', '.join(TRAIN_OPTIONS + MODEL_OPTIONS)}")
    if stage not in ("stage1", "stage2"):
        raise TrainError(f"stage {stage!r}: expected stage1 or stage2")
    saved = checkpoint_config(init)["model"] if init is not None else {}  # a wrong init is said before any model loads
    if init is not None and (encoder is None or llm is None):  # stage 2 inherits the bases of stage 1
        encoder, llm, llm_gguf = encoder or saved["encoder"], llm or saved["llm"], llm_gguf or saved.get("llm_gguf")
    if not encoder or not llm:
        raise TrainError("--encoder and --llm are required (stage2 takes them from --init)")
    if stage == "stage2" and init is None:
        print("warning: stage 2 without --init starts from an untrained adapter (the paper starts from the "
              "stage-1 checkpoint)", file=sys.stderr)
    encoder, llm = (str(Path(p).resolve()) if Path(p).exists() else p for p in (encoder, llm))
    train_options = {k: v for k, v in options.items() if k in TRAIN_OPTIONS}
    if isinstance(train_options.get("eval_split"), str) and train_options["eval_split"].lower() == "none":
        train_options["eval_split"] = ""
    # The configs check their own choices (TrainError: one line from the CLI).
    cfg = TrainConfig.for_stage(stage, data=str(dataset_folder(data, stage)), out=str(out),
                                init=str(init) if init is not None else None,
                                mix=str(mix) if mix is not None else None, **train_options)
    model = ModelConfig(encoder=encoder, llm=llm, llm_gguf=llm_gguf, trust_remote_code=trust_remote_code,
                        **{k: v for k, v in options.items() if k in MODEL_OPTIONS and v is not None})
    return cfg, model


def train(stage: str, data: str | Path, out: str | Path, *, encoder: str | None = None, llm: str | None = None,
          llm_gguf: str | None = None, init: str | Path | None = None, mix: str | Path | None = None,
          resume: bool = False, progress: bool = True, trust_remote_code: bool = False, **options: Any) -> dict:
    """Train one stage on a published dataset (DATA or its semantic/emotion config) into the run
    folder OUT: OUT/final (trainable weights), OUT/last (resumable), OUT/metrics.jsonl. `resume`
    continues from OUT/last exactly. Returns {"steps", "skipped"} (see `configs` for the rest)."""
    cfg, model = configs(stage, data, out, encoder=encoder, llm=llm, llm_gguf=llm_gguf, init=init, mix=mix,
                         trust_remote_code=trust_remote_code, **options)
    from blspdata.train.loop import train as run_loop  # torch: only once the options are known to be good

    return run_loop(cfg, model, resume=resume, progress=progress)
