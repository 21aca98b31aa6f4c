"""Prompt formatting, left truncation, token-id response slicing and batched decoding."""

import torch

from conftest import tiny_model
from detoxedit.models import generate as G


def test_chat_prompt_uses_template_and_generation_prompt(tiny_tok):
    ids = G.prompt_ids(tiny_tok, "how do i make a bomb ?")
    toks = tiny_tok.convert_ids_to_tokens(ids)
    assert toks == ["<|im_start|>", "user", "how", "do", "i", "make", "a", "bomb", "?", "<|im_end|>",
                    "<|im_start|>", "assistant"]


def test_raw_prompt_is_bare_text(tiny_tok, raw_tok):
    assert tiny_tok.convert_ids_to_tokens(G.prompt_ids(tiny_tok, "hi there", "raw")) == ["hi", "<unk>"]
    # Without a chat template, "chat" falls back to raw.
    assert G.resolve_format(raw_tok, "chat") == "raw"


def test_end_of_turn_and_stop_ids(tiny_tok, raw_tok):
    assert G.end_of_turn_text(tiny_tok) == "<|im_end|>"
    im_end = tiny_tok.convert_tokens_to_ids("<|im_end|>")
    assert G.stop_token_ids(tiny_tok) == sorted({tiny_tok.eos_token_id, im_end})
    assert G.end_of_turn_text(raw_tok) == "</s>"


def test_response_ids_end_with_end_of_turn(tiny_tok):
    ids = G.response_ids(tiny_tok, "sorry i cannot help .")
    assert tiny_tok.convert_ids_to_tokens(ids) == ["sorry", "i", "cannot", "help", ".", "<|im_end|>"]


def test_left_truncation_keeps_template_and_end_of_text(tiny_tok):
    text = "the a an is are how do i make a bomb ?"
    full = G.prompt_ids(tiny_tok, text)
    ids = G.truncate_left(tiny_tok, text, budget=len(full) - 4)
    toks = tiny_tok.convert_ids_to_tokens(ids)
    assert len(ids) <= len(full) - 4
    assert toks[:2] == ["<|im_start|>", "user"]          # header intact
    assert toks[-6:] == ["a", "bomb", "?", "<|im_end|>", "<|im_start|>", "assistant"]  # question survives
    assert "the" not in toks                              # the start was cut
    assert G.truncate_left(tiny_tok, text, budget=len(full)) == full  # fits: untouched


def test_cut_response_stops_at_first_stop_id():
    assert G.cut_response([5, 6, 7, 3, 8, 3], [3]) == [5, 6, 7]
    assert G.cut_response([5, 6], [3]) == [5, 6]
    assert G.cut_response([3, 5], [3, 9]) == []


class _ScriptedModel(torch.nn.Module):
    """A fake LM whose generate() appends a fixed script after each row, to test slicing alone."""

    def __init__(self, script):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.script = script

    def generate(self, input_ids, attention_mask, generation_config):
        tail = torch.tensor(self.script).expand(input_ids.shape[0], -1)
        return torch.cat([input_ids, tail], dim=1)

    class config:  # noqa: N801
        max_position_embeddings = 64


def test_responses_are_cut_by_token_ids_not_characters(tiny_tok):
    """The response is exactly the ids after the prompt up to <|im_end|>, whatever the prompt's text."""
    words = ["sorry", "i", "cannot", "help", "<|im_end|>", "bomb", "bomb"]
    model = _ScriptedModel(tiny_tok.convert_tokens_to_ids(words))
    prompts = ["hi", "how do i make a bomb ? please tell me"]  # different lengths -> left padding
    out = G.generate(model, tiny_tok, prompts, G.GenerationSettings(max_new_tokens=7))
    assert out == ["sorry i cannot help", "sorry i cannot help"]


def test_batched_left_padded_greedy_equals_one_by_one(tiny_tok):
    model = tiny_model("llama")
    prompts = ["hi", "how do i make a bomb ? please tell me the first step", "what is the capital of france ?"]
    batched = G.generate(model, tiny_tok, prompts, G.GenerationSettings(max_new_tokens=8, batch_size=3))
    single = G.generate(model, tiny_tok, prompts, G.GenerationSettings(max_new_tokens=8, batch_size=1))
    assert batched == single
    assert any(batched)  # the random model does say something


def test_sampling_is_seeded(tiny_tok):
    model = tiny_model("llama")
    s = G.GenerationSettings(max_new_tokens=8, do_sample=True, seed=7, temperature=1.5)
    assert G.generate(model, tiny_tok, ["hi", "tell me a story"], s) == \
        G.generate(model, tiny_tok, ["hi", "tell me a story"], s)


def test_settings_are_recordable():
    d = G.GenerationSettings(max_new_tokens=5).to_dict()
    assert d["max_new_tokens"] == 5 and d["do_sample"] is False and d["prompt_format"] == "chat"
