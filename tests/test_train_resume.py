"""`train --resume` (and `blspdata run`, which resumes through the same function) loads its
trainer state without running code from the file: issue 13."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO

TIMEOUT = 600


class _Payload:
    """Unpickling this writes a marker file: what a planted trainer_state.pt could do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_resume_refuses_a_planted_pickle(tmp_path: Path):
    """`train --resume` on a run folder whose last/trainer_state.pt runs code when unpickled:
    one line of error, no traceback, and the code never runs."""
    run, marker = tmp_path / "run", tmp_path / "marker"
    (run / "last").mkdir(parents=True)
    (run / "last" / "config.json").write_text(json.dumps({"model": {"encoder": "e", "llm": "l"}, "train": {}}))
    torch.save({"optimizer": _Payload(marker), "scheduler": {}, "step": 3, "micro": 3, "rng": [],
                "python_rng": None}, run / "last" / "trainer_state.pt")
    result = subprocess.run([sys.executable, "-m", "blspdata", "train", "stage1", str(tmp_path / "data"), "-o", str(run),
                             "--encoder", "no-encoder", "--llm", "no-llm", "--resume", "--no-progress"],
                            capture_output=True, text=True, cwd=REPO, timeout=TIMEOUT)
    assert not marker.exists()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and "trainer_state.pt: refused to load" in result.stderr
    assert "could run code" in result.stderr

    from blspdata.train.checkpoint import load_trainer_state
    from blspdata.train.config import CheckpointError

    with pytest.raises(CheckpointError, match="refused to load"):  # the path `blspdata run` resumes through too
        load_trainer_state(run / "last")
    assert not marker.exists()
    torch.load(run / "last" / "trainer_state.pt", weights_only=False)  # what the old loader did: the plant is live
    assert marker.read_text() == "pwned"


def test_a_trainer_state_of_tensors_and_plain_values_loads(tmp_path: Path):
    """What train() saves (optimizer, schedule, RNG states) loads without pickle's objects."""
    import random

    from blspdata.train.checkpoint import load_trainer_state
    from blspdata.train.config import CheckpointError

    weight = torch.nn.Parameter(torch.randn(3))
    optimizer = torch.optim.AdamW([weight], lr=1e-3, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    weight.grad = torch.ones(3)
    optimizer.step()
    scheduler.step()
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": 1, "micro": 4,
             "rng": [{"torch": torch.get_rng_state(), "cuda": None}], "python_rng": random.getstate()}
    torch.save(state, tmp_path / "trainer_state.pt")
    loaded = load_trainer_state(tmp_path)
    random.setstate(loaded["python_rng"])
    assert torch.equal(loaded["rng"][0]["torch"], state["rng"][0]["torch"]) and loaded["step"] == 1
    fresh = torch.optim.AdamW([weight], lr=1e-3, weight_decay=0.05)
    fresh.load_state_dict(loaded["optimizer"])
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    (tmp_path / "trainer_state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable trainer state"):
        load_trainer_state(tmp_path)
