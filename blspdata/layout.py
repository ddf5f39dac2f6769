"""The folder `blspdata run` writes, every path in it named once: the pipeline writes there,
the report and the command's closing lines read from there.

    RUN_DIR/
      run.json, config.json, .lock      the run's record, its resolved config, its lock
      manifests/<corpus>.jsonl.gz       ingest (with .rejects.jsonl and .summary.json beside each)
      continuations/<corpus>.<task>.jsonl   generate (likewise)
      curated/curated.jsonl.gz          curate (likewise)
      dataset/, dataset.rejects.jsonl   publish: the Hugging Face dataset and its rejects
      train/stage1/, train/stage2/      training runs: final/, last/, metrics.jsonl
      evaluate/                         SER evaluation: ser.json, answers.jsonl, confusion.png
      models/<name>/                    demo models made on the spot
      report.html                       `blspdata report`
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    """`RunLayout(run_dir).dataset`, `.checkpoint("stage1")`, ...: the paths of one run folder."""
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # The run's own files.
    @property
    def state(self) -> Path:
        return self.root / "run.json"

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    # The stages' outputs, in pipeline order.
    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    def manifest(self, corpus: str) -> Path:
        return self.manifests / f"{corpus}.jsonl.gz"

    @property
    def continuations(self) -> Path:
        return self.root / "continuations"

    def generated(self, corpus: str, task: str) -> Path:
        return self.continuations / f"{corpus}.{task}.jsonl"

    @property
    def curated_dir(self) -> Path:
        return self.root / "curated"

    @property
    def curated(self) -> Path:
        return self.curated_dir / "curated.jsonl.gz"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def dataset_rejects(self) -> Path:
        return self.root / "dataset.rejects.jsonl"  # publish names its rejects after its folder

    @property
    def train(self) -> Path:
        return self.root / "train"

    def stage(self, stage: str) -> Path:
        """A training stage's run folder (stage1, stage2): final/, last/, metrics.jsonl."""
        return self.train / stage

    def checkpoint(self, stage: str) -> Path:
        """The checkpoint a finished stage leaves (what the next stage and evaluate start from)."""
        return self.stage(stage) / "final"

    def metrics(self, stage: str) -> Path:
        return self.stage(stage) / "metrics.jsonl"

    @property
    def evaluate(self) -> Path:
        return self.root / "evaluate"

    @property
    def ser(self) -> Path:
        return self.evaluate / "ser.json"

    def model(self, name: str) -> Path:
        """Where a demo model (demo:<name>) is made once."""
        return self.root / "models" / name
