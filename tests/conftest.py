"""Shared fixtures: a tiny word-level tokenizer with a chat template, and tiny random models.

Tiny models are built from configs (no download) for every family in the architecture table, so the
default test run takes seconds; tests on the embedded model are marked ``integration``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

WORDS = ("the a an is are was be to of and in on for with how do i you me my it that this what "
         "can cannot can't won't sorry help not make build steal car bomb hack wifi story tell write "
         "capital france paris italy rome answer question please give right response if user's request "
         "reasonable correct safe unsafe illegal dangerous instead here step first then , . ! ? : "
         "hello hi dragon gold knight mountain game play evil bot rules always explain").split()
SPECIALS = ["<unk>", "<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def make_tokenizer(chat: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS + ["user", "assistant", "system"])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit()])
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>",
                                  bos_token="<s>", eos_token="</s>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="session")
def tiny_tok():
    return make_tokenizer(chat=True)


@pytest.fixture(scope="session")
def raw_tok():
    return make_tokenizer(chat=False)


VOCAB = 128
FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text", "gemma3",
            "gpt2", "gptj", "gpt_neox"]


def tiny_config(model_type: str, layers: int = 4):
    from transformers import AutoConfig

    common = dict(vocab_size=VOCAB, pad_token_id=1, bos_token_id=2, eos_token_id=3)
    llama_like = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, max_position_embeddings=256, **common)
    if model_type == "gpt2":
        return AutoConfig.for_model("gpt2", n_embd=32, n_layer=layers, n_head=4, n_positions=256, **common)
    if model_type == "gptj":
        return AutoConfig.for_model("gptj", n_embd=32, n_layer=layers, n_head=4, n_positions=256, rotary_dim=4,
                                    **common)
    if model_type == "gpt_neox":
        return AutoConfig.for_model("gpt_neox", hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                    num_attention_heads=4, max_position_embeddings=256, **common)
    if model_type == "gemma3":
        return AutoConfig.for_model("gemma3", text_config=dict(**llama_like), **common)
    if model_type == "phi3":
        return AutoConfig.for_model("phi3", **{**llama_like, "num_key_value_heads": 4})
    return AutoConfig.for_model(model_type, **llama_like)


def tiny_model(model_type: str = "llama", layers: int = 4, seed: int = 0, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, layers), dtype=dtype)
    # Random init is tiny; scale weights up so hidden states differ visibly between inputs.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    model.eval().requires_grad_(False)
    model.detoxedit_spec = f"tiny-{model_type}"
    return model
