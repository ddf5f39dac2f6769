"""Checkpoint I/O, beside the model: a checkpoint folder holds the trainable weights
(model.safetensors), the model and train config (config.json) and, for `last/`, the trainer's
state (trainer_state.pt). The model loads itself through `load_weights`
(`BLSPModel.from_checkpoint`) and the loop saves and resumes through the rest, so neither
imports the other for it. `model` is a `train.model.BLSPModel` throughout.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from blspdata.train.config import CheckpointError, TrainConfig, checkpoint_config


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


def save_checkpoint(folder: Path, model: nn.Module, cfg: TrainConfig, state: dict | None) -> None:
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


def load_weights(model: nn.Module, checkpoint: str | Path, strict_bases: bool = True) -> dict:
    """Load a checkpoint's trainable weights; refuse one made for another encoder or LLM."""
    from safetensors.torch import load_file

    checkpoint = Path(checkpoint)
    saved = checkpoint_config(checkpoint)["model"]
    for key in ("encoder", "llm", "llm_gguf"):
        if strict_bases and saved.get(key) != getattr(model.config, key):
            raise CheckpointError(f"{checkpoint} was trained with {key} {saved.get(key)!r}, this model uses "
                             f"{getattr(model.config, key)!r}")
    weights = load_file(str(checkpoint / "model.safetensors"))
    own = dict(model.named_parameters())
    unknown = [k for k in weights if k not in own]
    if unknown:
        raise CheckpointError(f"{checkpoint} holds weights this model lacks, e.g. {unknown[:3]}")
    with torch.no_grad():
        for name, value in weights.items():
            own[name].copy_(value)
    return saved
