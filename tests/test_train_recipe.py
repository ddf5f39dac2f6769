"""The trainer makes what the reference code (cwang621/blsp-emo) makes: issue 11.

Small local models only: the SmolLM2 GGUF's tokenizer (ChatML), a tiny Llama-3-style
tokenizer trained here, tiny random LLMs saved to a folder, and the demo's random Whisper
encoder. Each test checks what a user would see: shapes and sizes, loss values on a batch
built by hand, the tokens a row is trained on, which rows are skipped, the learning rate at a
step, what `respond` answers."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch


# ---------------------------------------------------------------------------- small models

@pytest.fixture(scope="module")
def chatml_tokenizer(tmp_path_factory):
    """SmolLM2's tokenizer (ChatML chat template, <|endoftext|> in its vocabulary)."""
    from transformers import AutoTokenizer

    from blspdata.generate.servers import smollm2_path

    gguf = smollm2_path()
    folder = tmp_path_factory.mktemp("chatml-tokenizer")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


LLAMA3_TEMPLATE = ("{{ '<|begin_of_text|>' }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
                   "'<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


def llama_style_tokenizer(folder: Path):
    """A byte-level BPE tokenizer with Llama 3's chat format (<|eot_id|> ends a turn and is
    the eos_token; no <|endoftext|>), trained in a blink on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = ["Continue the following sentence in a coherent style: hello there, how are you and so on"] * 20
    tokenizer.train_from_iterator(text, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                            chat_template=LLAMA3_TEMPLATE).save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


QWEN_CODE = '''"""A Qwen-7B-Chat stand-in: a model class that ships with the checkpoint (auto_map)."""
from transformers import Qwen2Config, Qwen2ForCausalLM


class TinyQwenConfig(Qwen2Config):
    model_type = "tiny-qwen"


class TinyQwenForCausalLM(Qwen2ForCausalLM):
    config_class = TinyQwenConfig
'''


@pytest.fixture(scope="module")
def qwen_like(chatml_tokenizer, tmp_path_factory) -> Path:
    """Like Qwen-7B-Chat: its own modelling code, a ChatML tokenizer with no chat template,
    no eos_token and no pad token (end of text is <|endoftext|>)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = tmp_path_factory.mktemp("qwen-like")
    torch.manual_seed(0)
    eod = chatml_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(vocab_size=len(chatml_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, eos_token_id=eod, bos_token_id=None)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    saved.update(model_type="tiny-qwen", architectures=["TinyQwenForCausalLM"],
                 auto_map={"AutoConfig": "modeling_tiny.TinyQwenConfig",
                           "AutoModelForCausalLM": "modeling_tiny.TinyQwenForCausalLM"})
    (folder / "config.json").write_text(json.dumps(saved))
    (folder / "modeling_tiny.py").write_text(QWEN_CODE)
    tokenizer = chatml_tokenizer.__class__.from_pretrained(chatml_tokenizer.name_or_path)
    tokenizer.chat_template, tokenizer.eos_token, tokenizer.pad_token = None, None, None
    tokenizer.save_pretrained(folder)
    for leftover in folder.glob("chat_template*"):
        leftover.unlink()
    return folder


@pytest.fixture(scope="module")
def llama_like(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("llama-like")
    tokenizer = llama_style_tokenizer(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def flac(seconds: float = 2.0) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, (0.1 * np.sin(np.arange(int(16000 * seconds)) / 7.0)).astype("float32"), 16000, format="FLAC")
    return buffer.getvalue()


def generator(template: str) -> str:
    return json.dumps({"backend": "dry-run", "model": "dry-run", "prompt": {"id": template, "sha256": "0"}})


# ---------------------------------------------------------------------------- the adapter

def test_adapter_has_the_reference_shapes_and_size():
    """conv E->2E, E->2E, E->2L (GLU each), kernel 5, stride 2, padding 2; fc1 L->512 and fc2
    512->L without biases, GELU, residual, LayerNorm eps 1e-5: about 89 M at 1280 -> 4096."""
    import torch.nn.functional as F

    from blspdata.train.model import Subsampler

    E, L, H = 1280, 4096, 512
    with torch.device("meta"):
        full = Subsampler(E, L, H)
    expected = (2 * (E * 2 * E * 5 + 2 * E)   # conv1, conv2
                + (E * 2 * L * 5 + 2 * L)     # conv3
                + 2 * L * H                   # fc1, fc2: no biases
                + 2 * L)                      # LayerNorm
    assert sum(p.numel() for p in full.parameters()) == expected == 89_412_608

    torch.manual_seed(0)
    adapter = Subsampler(16, 24, 8)
    x, lengths = torch.randn(2, 40, 16), torch.tensor([40, 17])
    y, out_lengths = adapter(x, lengths)
    assert y.shape == (2, 5, 24) and out_lengths.tolist() == [5, 3]  # 40 -> 20 -> 10 -> 5; 17 -> 9 -> 5 -> 3
    # The reference's forward, written out with the same weights.
    h = x.transpose(1, 2)
    for conv in adapter.convs:
        assert (conv.kernel_size, conv.stride, conv.padding) == ((5,), (2,), (2,))
        h = F.glu(conv(h), dim=1)
    h = h.transpose(1, 2)
    h = h + F.linear(F.gelu(F.linear(h, adapter.fc1.weight)), adapter.fc2.weight)
    assert torch.allclose(y, F.layer_norm(h, (24,), adapter.norm.weight, adapter.norm.bias, eps=1e-5), atol=1e-6)


# ---------------------------------------------------------------------------- the stage-1 loss

def test_response_kl_takes_the_tokens_own_positions_without_t_squared():
    """A batch built by hand: one row, continuation tokens at positions 3, 4, 5, so the
    positions that predict them are 2, 3, 4. Student and teacher differ only at position 2
    (the prediction of the first continuation token) and at 5 (the prediction after the
    last): the reference's loss sees 5 and not 2."""
    import torch.nn.functional as F

    from blspdata.train.loop import TrainConfig, response_kl

    torch.manual_seed(0)
    teacher = torch.randn(1, 6, 7)
    student = teacher.clone()
    student[0, 2] += torch.randn(7) * 3
    student[0, 5] += torch.randn(7) * 3
    predict = [torch.tensor([2, 3, 4])]

    def kl_at(positions, t=2.0):
        return F.kl_div(F.log_softmax(student[0, positions] / t, -1), F.softmax(teacher[0, positions] / t, -1),
                        reduction="batchmean")

    loss, kl = response_kl(student, teacher, predict, predict, TrainConfig())  # the defaults: the reference's
    assert float(loss) == pytest.approx(float(kl_at([3, 4, 5])), rel=1e-6)    # mean over 3 tokens, no T^2
    assert float(loss) == pytest.approx(float(kl_at([5])) / 3, rel=1e-5)     # position 2 is not in it
    loss, _ = response_kl(student, teacher, predict, predict, TrainConfig(kl_positions="predictions"))
    assert float(loss) == pytest.approx(float(kl_at([2, 3, 4])), rel=1e-6)
    loss, kl = response_kl(student, teacher, predict, predict, TrainConfig(kl_scale_t2=True))
    assert float(loss) == pytest.approx(4 * float(kl), rel=1e-6)
    loss, _ = response_kl(student, teacher, predict, predict, TrainConfig(temperature=1.0))
    assert float(loss) == pytest.approx(float(kl_at([3, 4, 5], t=1.0)), rel=1e-6)


# ---------------------------------------------------------------------------- the schedule

def test_the_default_schedule_is_deepspeeds_warmup_decay():
    """WarmupDecayLR with the reference's 1000 warm-up steps: log(step + 1) / log(1000) up to
    step 1000, then linear to 0 at the last step. Cosine and linear stay options."""
    from blspdata.train.loop import TrainConfig, lr_factor

    cfg = TrainConfig(warmup_steps=1000)
    assert cfg.schedule == "warmup_decay" and cfg.warmup_type == "log"
    total = 2500
    at = {step: lr_factor(step, total, cfg) for step in (0, 9, 99, 500, 999, 1000, 1750, 2499, 2500)}
    assert at[0] == 0.0
    assert at[9] == pytest.approx(1 / 3) and at[99] == pytest.approx(2 / 3)  # log 10 / log 1000, log 100 / log 1000
    assert at[500] == pytest.approx(math.log(501) / math.log(1000))
    assert at[999] == pytest.approx(1.0) and at[1000] == pytest.approx(1.0)
    assert at[1750] == pytest.approx(0.5) and at[2499] == pytest.approx(1 / 1500) and at[2500] == 0.0
    linear_warmup = TrainConfig(warmup_steps=1000, warmup_type="linear")
    assert lr_factor(500, total, linear_warmup) == pytest.approx(0.5)
    assert lr_factor(1750, total, linear_warmup) == pytest.approx(0.5)
    assert lr_factor(0, 10, TrainConfig(warmup_steps=0)) == 0.0  # DeepSpeed warms up over at least 2 steps
    assert lr_factor(1, 10, TrainConfig(warmup_steps=0)) == pytest.approx(1.0)
    cosine = TrainConfig(warmup_steps=1000, schedule="cosine")
    assert lr_factor(0, total, cosine) == pytest.approx(1 / 1000) and lr_factor(1750, total, cosine) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="constant").check()


# ---------------------------------------------------------------------------- end tokens, lengths, prompts

def model_stub(tokenizer):
    from transformers import WhisperFeatureExtractor

    return SimpleNamespace(tokenizer=tokenizer, feature_extractor=WhisperFeatureExtractor(), prompt_cache={})


def row(text: str, continuation: str, finished: bool = True, **extra) -> dict:
    return {"audio": {"bytes": flac(), "path": "a.flac"}, "duration": 2.0, "text": text, "continuation": continuation,
            "finished": finished, "emotion": None, "task": "semantic", "instruction": None,
            "generator": generator("semantic"), **extra}


def test_finished_continuations_end_with_the_templates_end_of_turn(chatml_tokenizer, tmp_path):
    """ChatML: <|im_end|>, a newline, <|endoftext|> (the reference's im_end + nl + eod); Llama
    3: <|eot_id|>. A truncated continuation gets nothing after it."""
    from blspdata.train.loop import TrainConfig, collate

    for tokenizer, end in ((chatml_tokenizer, ["<|im_end|>", "\n", "<|endoftext|>"]),
                           (llama_style_tokenizer(tmp_path / "llama"), ["<|eot_id|>"])):
        batch = collate(model_stub(tokenizer), [row("hello there", "and so on"),
                                                row("hello there", "and so on", finished=False)], TrainConfig())
        plain = tokenizer("and so on", add_special_tokens=False).input_ids
        finished, truncated = batch["continuations"]
        assert truncated == plain
        assert finished[:len(plain)] == plain
        assert tokenizer.convert_ids_to_tokens(finished[len(plain):]) == [tokenizer.convert_ids_to_tokens(
            tokenizer(t, add_special_tokens=False).input_ids)[0] for t in end]
        assert tokenizer.decode(finished[len(plain):]) == "".join(end)


def test_a_row_is_dropped_when_the_whole_sequence_is_over_the_limit(chatml_tokenizer):
    """The reference's rule: prompt + transcript + continuation (+ end of turn) over 256
    tokens, where each part alone may be well under it."""
    import datasets

    from blspdata.train.loop import SYSTEM, STAGE1_INSTRUCTION, TrainConfig, usable

    tokenizer = chatml_tokenizer
    words = lambda n: " ".join(["word"] * n)  # noqa: E731
    rows = [row(words(120), words(120)), row(words(20), words(20)), row(words(20), words(20), finished=False)]
    dataset = datasets.Dataset.from_list(rows)
    keep, skipped = usable(dataset, model_stub(tokenizer), TrainConfig(max_length=256))
    assert keep == [1, 2] and skipped == {"sequence_too_long": 1}

    # The limit counts the sequence as rendered: the chat template with the transcript in the
    # user turn, the continuation, and the end of turn of a finished one.
    rendered = tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM},
                                              {"role": "user", "content": STAGE1_INSTRUCTION + words(20)}],
                                             tokenize=False, add_generation_prompt=True)
    length = len(tokenizer(rendered + words(20) + "<|im_end|>\n<|endoftext|>", add_special_tokens=False).input_ids)
    assert usable(dataset, model_stub(tokenizer), TrainConfig(max_length=length))[0] == [1, 2]
    keep, skipped = usable(dataset, model_stub(tokenizer), TrainConfig(max_length=length - 1))
    assert keep == [2] and skipped == {"sequence_too_long": 2}  # the truncated row has no end tokens
    keep, _ = usable(dataset, model_stub(tokenizer), TrainConfig(max_length=length - 3))
    assert keep == [2]
    assert usable(dataset, model_stub(tokenizer), TrainConfig(max_length=length - 4))[0] == []


def test_each_row_trains_with_the_prompt_it_was_written_with(chatml_tokenizer):
    """Stage 1's teacher prompt is the template named in the row's generator (semantic-blsp
    data trains with BLSP's prompt), or the row's own instruction for a template that is not
    built in; stage 2's speech path names no label, its text path does."""
    from blspdata.generate import prompts
    from blspdata.train.loop import TrainConfig, collate

    blsp = prompts.load("semantic-blsp")
    mine = "Say more about this, briefly: hello there"
    rows = [row("hello there", "and so on", generator=generator("semantic-blsp"),
                instruction=blsp.user.format(text="hello there")),
            row("hello there", "and so on", generator=generator("my-own"), instruction=mine),
            row("hello there", "and so on", generator=None, instruction=None)]
    batch = collate(model_stub(chatml_tokenizer), rows, TrainConfig())
    first, second, third = (p.text for p in batch["text_prompts"])
    assert first.endswith("Continue the following text in a coherent and engaging style with less than 40 words. ")
    assert second.endswith("Say more about this, briefly: ")
    assert third.endswith("Continue the following sentence in a coherent style: ")
    assert [p.text for p in batch["speech_prompts"]] == [first, second, third]
    assert batch["text_prompts"][0].transcript("hello there") == chatml_tokenizer(
        first + "hello there", add_special_tokens=False).input_ids[len(batch["text_prompts"][0].text_before):]

    emotion = prompts.load("emotion")
    sad = row("I lost it", "Oh no.", task="emotion", emotion=3, generator=generator("emotion"),
              instruction=emotion.user.format(text="I lost it", emotion="sad"))
    batch = collate(model_stub(chatml_tokenizer), [sad], TrainConfig(stage="stage2"))
    text, speech = batch["text_prompts"][0].text, batch["speech_prompts"][0].text
    assert emotion.system in text and emotion.system in speech
    assert "reflects a 'sad' emotion tone" in text
    assert "sad" not in speech and speech.endswith("based on the conveyed emotion tone in a coherent style: ")
    assert batch["emotions"].tolist() == [3]


# ---------------------------------------------------------------------------- the paper's LLM, and a Llama

def test_a_qwen_like_llm_loads_with_trust_remote_code_and_stops_at_im_end(demo_encoder, qwen_like, chatml_tokenizer):
    """Qwen-7B-Chat's situation: model code in the folder, no chat template, no eos_token.
    Refused without --trust-remote-code; with it, ChatML prompts, <|im_end|> + newline +
    <|endoftext|> after a finished continuation, and generation stops at <|im_end|>."""
    from blspdata.train.model import BLSPModel, ModelConfig, Prompt, end_of_turn

    with pytest.raises(ValueError, match="trust_remote_code"):
        BLSPModel(ModelConfig(encoder=str(demo_encoder), llm=str(qwen_like)))
    model = BLSPModel(ModelConfig(encoder=str(demo_encoder), llm=str(qwen_like), trust_remote_code=True)).eval()
    assert type(model.llm).__name__ == "TinyQwenForCausalLM" and model.tokenizer.eos_token is None
    prompt = Prompt(model.tokenizer, "You are a helpful assistant.", "Continue: {text}")
    assert prompt.text == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nContinue: "
    assert model.tokenizer.decode(prompt.after) == "<|im_end|>\n<|im_start|>assistant\n"
    assert model.tokenizer.decode(end_of_turn(model.tokenizer)) == "<|im_end|>\n<|endoftext|>"
    assert model.emotion_head.bias is None

    ids = {w: chatml_tokenizer(w, add_special_tokens=False).input_ids[0] for w in (" hello", " world")}
    ids["end"] = chatml_tokenizer.convert_tokens_to_ids("<|im_end|>")
    calls = []

    def script(module, inputs, logits):  # the LLM says " hello", " hello", <|im_end|>, then " world" forever
        calls.append(1)
        wanted = ids[" hello"] if len(calls) <= 2 else ids["end"] if len(calls) == 3 else ids[" world"]
        forced = torch.full_like(logits, -1e4)
        forced[..., wanted] = 1e4
        return forced

    model.llm.lm_head.register_forward_hook(script)
    answer = model.respond(np.zeros(32000, dtype=np.float32), prompt, max_new_tokens=8)
    assert answer == "hello hello" and len(calls) == 3


def test_a_llama_style_llm_trains_with_lora_on_its_projections(demo_encoder, llama_like):
    from blspdata.train.model import BLSPModel, ModelConfig, end_of_turn

    model = BLSPModel(ModelConfig(encoder=str(demo_encoder), llm=str(llama_like), lora=True))
    counts = model.trainable_counts()
    E, L = 64, 32  # the tiny encoder's and LLM's widths
    assert counts["adapter"] == 2 * (E * 2 * E * 5 + 2 * E) + E * 2 * L * 5 + 2 * L + 2 * L * 512 + 2 * L
    assert counts["emotion_head"] == 5 * L  # no bias
    lora = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in model.llm.named_parameters() if "lora_" in n}
    assert lora == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert model.tokenizer.convert_ids_to_tokens(end_of_turn(model.tokenizer)) == ["<|eot_id|>"]


def test_lora_targets_cover_qwen_names():
    from blspdata.train.model import ModelConfig

    targets = ModelConfig(encoder="e", llm="l").lora_targets
    assert {"c_attn", "c_proj", "w1", "w2"} <= set(targets)  # Qwen-7B-Chat's (the reference's lora_target_modules)
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= set(targets)
