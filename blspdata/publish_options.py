"""Publish's options, each declared once (blspdata/options.py): a `PublishSettings` field whose
default is the option's default and whose metadata holds its help text and bounds.

Built from them: `blspdata publish`'s flags (their defaults, help, bounds and choices) and the
`publish:` section of a `run` config (pipeline.py). The command line's own (--audio-root,
--overwrite, --dry-run, --jobs) are not fields: a run publishes into its own folder, with every
core, embedding the audio or keeping its absolute paths.

Beside publish.py rather than in it, so that `blspdata --help` need not import soundfile.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, Optional

from blspdata.options import check, option

FORMATS: dict[str, str] = {
    "arrow": "save_to_disk layout, open with datasets.load_from_disk('OUT/<config>')",
    "parquet": "the Hub layout (data/<config>/<split>-NNNNN-of-NNNNN.parquet), open with load_dataset('OUT', '<config>')",
}
AUDIO: dict[str, str] = {
    "embed": "the segment as 16 kHz mono FLAC in an Audio column (self-contained)",
    "path": "keep paths (relative to --audio-root)",
}

Format = Literal[tuple(FORMATS)]  # type: ignore[valid-type]
AudioMode = Literal[tuple(AUDIO)]  # type: ignore[valid-type]


@dataclass
class PublishSettings:
    format: Format = option("arrow", "; ".join(f"{name}: {what}" for name, what in FORMATS.items()))
    audio: AudioMode = option("embed", "; ".join(f"{name}: {what}" for name, what in AUDIO.items()))
    max_shard_size: str = option("500MB", "Largest shard, e.g. 500MB, 2GB")
    validation_fraction: float = option(0.05, "For corpora without their own splits: share of speakers in validation",
                                        ge=0, le=1)
    test_fraction: float = option(0.05, "Likewise for test", ge=0, le=1)
    license: str = option("other", "License field of the dataset card (check your corpora's)")
    push_to_hub: Optional[str] = option(None, "OWNER/NAME: upload the dataset to the Hub (token from HF_TOKEN or "
                                        "`huggingface-cli login`; never printed)")
    private: bool = option(False, "With --push-to-hub: create the repository private")

    def publish_args(self) -> dict[str, Any]:
        """The options as publish.publish() takes them (the push ones go to push_to_hub())."""
        from blspdata.publish import PublishError

        s = check(PublishSettings(**asdict(self)), PublishError)
        return {"fmt": s.format, "audio": s.audio, "max_shard_size": s.max_shard_size,
                "validation": s.validation_fraction, "test": s.test_fraction, "license": s.license}
