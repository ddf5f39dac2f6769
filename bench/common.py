"""What the benchmarks share: each contender runs in a subprocess of its own (so its peak
memory is its own) and prints one JSON line of results last."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]


def run_isolated(command: list[str], label: str) -> dict | None:
    """Run one contender; its last stdout line is its result row (None if it failed)."""
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    if result.returncode != 0:
        print(f"  {label} FAILED (exit {result.returncode}):\n"
              + "\n".join("    " + line for line in result.stderr.strip().splitlines()[-15:]))
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def median_round(rounds: list[Any], key: Callable[[Any], float]) -> Any:
    """The median of a contender's interleaved rounds (this shared VM has slow spells that a
    single round would land on one contender only)."""
    return sorted(rounds, key=key)[len(rounds) // 2]
