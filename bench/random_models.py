"""Randomly initialised models in the shapes of real checkpoints, for measuring training speed
where weights cannot be downloaded (a GPU node without internet, CI).

Throughput and model FLOPs utilisation depend on the shapes, not on the weights, so a random
Whisper-large-v2 encoder and a random 1.7B Llama do the same arithmetic per step as the real
ones. The LLM borrows a real tokenizer and chat template (`--tokenizer`, e.g. the demo's
SmolLM2 folder), so prompts are laid out exactly as in training. Weights are saved in bf16
(half the disk); the trainer loads them in float32 as it would a real checkpoint.

    python bench/random_models.py OUT --tokenizer bench-out/train/models/smollm2 \
        [--encoder whisper-large-v2] [--llm smollm2-1.7b]

writes OUT/<encoder name> and OUT/<llm name>, then prints their parameter counts.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

# Encoder shapes: Whisper's published configs (the encoder half is what the trainer loads).
ENCODERS = {
    "whisper-small": dict(d_model=768, encoder_layers=12, encoder_attention_heads=12, encoder_ffn_dim=3072),
    "whisper-large-v2": dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120),
}
# LLM shapes (Llama architecture, the tokenizer's vocabulary): SmolLM2-1.7B's own config, and
# a 7B of the Llama-2 / Qwen-7B size the paper trains.
LLMS = {
    "smollm2-1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                         num_key_value_heads=32, tie_word_embeddings=True),
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, tie_word_embeddings=False),
}


def encoder(folder: Path, name: str) -> int:
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForAudioClassification

    config = WhisperConfig(**ENCODERS[name], decoder_layers=1, num_mel_bins=80, max_source_positions=1500)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = WhisperForAudioClassification(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    WhisperFeatureExtractor().save_pretrained(folder)  # 80 mel bins, 30-second windows
    return sum(p.numel() for p in model.encoder.parameters())


def llm(folder: Path, name: str, tokenizer: Path) -> int:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer)
    config = LlamaConfig(**LLMS[name], vocab_size=len(tok), max_position_embeddings=8192,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    for extra in ("chat_template.jinja", "generation_config.json"):
        if (tokenizer / extra).exists() and not (folder / extra).exists():
            shutil.copy(tokenizer / extra, folder / extra)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--tokenizer", type=Path, required=True, help="a model folder whose tokenizer the LLM uses")
    parser.add_argument("--encoder", choices=sorted(ENCODERS), default="whisper-large-v2")
    parser.add_argument("--llm", choices=sorted(LLMS), default="smollm2-1.7b")
    args = parser.parse_args()
    for name, make in ((args.encoder, lambda f: encoder(f, args.encoder)),
                       (args.llm, lambda f: llm(f, args.llm, args.tokenizer))):
        folder = args.out / name
        if (folder / "config.json").exists():
            print(f"{folder}: already there")
            continue
        start = time.perf_counter()
        params = make(folder)
        print(f"{folder}: {params / 1e6:.0f} M parameters, written in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
