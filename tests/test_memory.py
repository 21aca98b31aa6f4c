"""Memory: the half-precision load maps half-precision weights, the automatic batch size and cases per
group (worked by hand below), and generation that halves its batch on out-of-memory.

The estimates (``detoxedit/models/memory.py``'s docstring) on SmolLM2-135M-Instruct's shape: 30 layers,
hidden 576, MLP 1536, 9 heads, 3 KV heads of 64, vocabulary 49152; and on a LLaMA-2-7B shape: 32 layers,
hidden 4096, MLP 11008, 32 heads and KV heads of 128, vocabulary 32000.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_model
from detoxedit.models import load as L
from detoxedit.models import memory as M
from detoxedit.models.generate import GenerationSettings, generate

SMOL = M.Shape(layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, head_dim=64, vocab=49152)
LLAMA7B = M.Shape(layers=32, hidden=4096, intermediate=11008, heads=32, kv_heads=32, head_dim=128, vocab=32000)
GiB = 2 ** 30


# --- per-row and per-case estimates, by hand ---------------------------------------------------------

def test_row_bytes_of_smollm2_in_bf16_with_eager_attention():
    """T = 300 prompt + 128 new = 428 positions, bf16 (2 bytes), eager attention (half precision on CPU):

    KV cache     2 x 30 layers x 3 kv heads x 64 x 2 bytes = 23,040 bytes per token, x 428 = 9,861,120
    activations  428 x (4 x 576 + 3 x 1536) x 2 = 428 x 6,912 x 2                             = 5,916,672
    scores       9 heads x 428^2 x (4 + 2) = 9 x 183,184 x 6                                   = 9,891,936
    logits       49,152 x 4 x 2                                                                =   393,216
    total                                                                                       26,062,944
    """
    assert M.row_bytes(SMOL, 428, 2, eager_attention=True) == 26_062_944
    assert M.row_bytes(SMOL, 428, 2, eager_attention=False) == 26_062_944 - 9_891_936  # SDPA: no score matrix


def test_row_and_case_bytes_of_a_7b_model_in_bf16():
    """T = 1000 + 600 = 1600 positions, bf16, SDPA:

    KV cache     2 x 32 x 32 x 128 x 2 = 524,288 bytes per token (0.5 MiB), x 1600 = 838,860,800
    activations  1600 x (4 x 4096 + 3 x 11008) x 2 = 1600 x 49,408 x 2         = 158,105,600
    logits       32,000 x 8                                                    =     256,000
    row                                                                           997,222,400 (0.93 GiB)

    One case of a group:
    edits        3 down-projections x 4096 x 11008 x (4 fp32 delta + 2 edited copy) =    811,597,824
    training     32 blocks x (1600 + 512) tokens x (16 x 4096 + 4 x 11008) x 2
                 = 32 x 2112 x 219,136                                             = 14,810,087,424
    case                                                                              15,621,685,248 (14.5 GiB)
    """
    assert M.row_bytes(LLAMA7B, 1600, 2) == 997_222_400
    assert M.case_bytes(LLAMA7B, 2, 1600) == 15_621_685_248


def test_case_bytes_of_smollm2_in_bf16():
    """T = 428: edits 3 x 576 x 1536 x 6 = 15,925,248; training 30 x (428 + 512) x (16 x 576 + 4 x 1536) x 2
    = 30 x 940 x 30,720 = 866,304,000; case 882,229,248."""
    assert M.case_bytes(SMOL, 2, 428) == 882_229_248


def test_shape_reads_llama_and_gpt2_configs():
    from transformers import AutoConfig, LlamaConfig

    smol = LlamaConfig(num_hidden_layers=30, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                       num_key_value_heads=3, vocab_size=49152)
    assert M.Shape.of(smol) == SMOL
    gpt2 = AutoConfig.for_model("gpt2", n_embd=64, n_layer=2, n_head=4, vocab_size=100)  # n_inner unset: 4 x 64
    assert M.Shape.of(gpt2) == M.Shape(layers=2, hidden=64, intermediate=256, heads=4, kv_heads=4, head_dim=16,
                                       vocab=100)


# --- the rule, by hand ----------------------------------------------------------------------------------

def test_cpu_with_room_takes_the_cpu_cap_and_one_case():
    """4 GiB free: budget 2 GiB = 2,147,483,648; rows that fit = 2,147,483,648 / (1.5 x 26,062,944) = 54.9;
    capped at MAX_ROWS["cpu"] = 16 (a power of two). Cases per group on CPU: at most MAX_CASES["cpu"] = 1."""
    b = M.decide(4 * GiB, "cpu", 26_062_944, M.case_bytes(SMOL, 2, 428), cases=18)
    assert (b.batch_size, b.batch_cases) == (16, 1)
    assert "batch size 16 (auto: 4.0 GiB free on cpu, ~25 MiB per row, 54 rows fit" in b.describe()


def test_little_free_memory_gives_a_smaller_power_of_two_down_to_one():
    """300 MiB free: budget 157,286,400 / 39,094,416 = 4.02 rows -> 4; 50 MiB: 0.67 -> 1 (never 0)."""
    assert M.decide(300 * 2 ** 20, "cpu", 26_062_944, 0).batch_size == 4
    assert M.decide(50 * 2 ** 20, "cpu", 26_062_944, 0).batch_size == 1


def test_gpu_rows_and_cases_of_a_7b_model():
    """80 GiB free: budget 40 GiB = 42,949,672,960; rows: 42,949,672,960 / (1.5 x 997,222,400) = 28.7 -> 16.
    Left after the rows: 42,949,672,960 - 16 x 1,495,833,600 = 19,016,335,360: one case of
    15,621,685,248 (its stacked edit may keep 14 GiB of activations), so 1. 24 GiB free: budget
    12,884,901,888 -> 8.6 rows -> 8, and still one case."""
    case = M.case_bytes(LLAMA7B, 2, 1600)
    big = M.decide(80 * GiB, "cuda:0", 997_222_400, case, cases=500)
    assert (big.batch_size, big.batch_cases) == (16, 1)
    small = M.decide(24 * GiB, "cuda:0", 997_222_400, case, cases=500)
    assert (small.batch_size, small.batch_cases) == (8, 1)


def test_gpu_rows_and_cases_of_smollm2():
    """SDPA on a GPU: row 26,062,944 - 9,891,936 = 16,171,008 (x 1.5 = 24,256,512). 80 GiB free: budget
    42,949,672,960 -> 1770 rows -> the cap, 128; left 42,949,672,960 - 128 x 24,256,512 = 39,844,839,424,
    room for 45 cases of 882,229,248: cases = min(128 rows, 32, 45) = 32, or the 10 of a small run.
    24 GiB free: budget 12,884,901,888 -> 531 rows -> 128; left 9,780,068,352 -> 11 cases."""
    row, case = M.row_bytes(SMOL, 428, 2), M.case_bytes(SMOL, 2, 428)
    assert row == 16_171_008
    assert (lambda b: (b.batch_size, b.batch_cases))(M.decide(80 * GiB, "cuda:0", row, case, cases=500)) == (128, 32)
    assert M.decide(80 * GiB, "cuda:0", row, case, cases=10).batch_cases == 10
    assert M.decide(24 * GiB, "cuda:0", row, case, cases=500).batch_cases == 11
    assert "11 fit beside the rows" in M.decide(24 * GiB, "cuda:0", row, case, cases=500).describe()


def test_given_values_are_kept_exactly_and_unknown_memory_takes_the_caps():
    b = M.decide(1 * GiB, "cpu", 10 ** 12, 10 ** 12, batch_size=6, batch_cases=5)
    assert (b.batch_size, b.batch_cases, b.size_reason, b.cases_reason) == (6, 5, "set", "set")
    assert M.decide(None, "cpu", 1, 1).batch_size == M.MAX_ROWS["cpu"]
    assert M.decide(None, "cuda:0", 1, 1, cases=100).batch_cases == M.MAX_CASES["cuda"]
    assert M.decide(1 * GiB, "cpu", 10 ** 12, 1, batch_size=3).batch_size == 3  # set, though nothing "fits"


def test_choose_batching_reads_the_model_and_the_free_memory(monkeypatch):
    model = tiny_model("llama")  # 4 layers, hidden 32, MLP 64, 4 heads, 2 KV heads of 8, vocab 128, fp32
    monkeypatch.setattr(M, "free_bytes", lambda m: (2 ** 20, "cpu"))
    # row of 100 positions: KV 2x4x2x8x4 = 512 per token -> 51,200; activations 100 x (128 + 192) x 4 =
    # 128,000; logits 128 x 8 = 1,024; total 180,224. Budget 524,288 / (1.5 x 180,224) = 1.94 -> 1 row.
    b = M.choose_batching(model, None, None, tokens=100, cases=3)
    assert (b.batch_size, b.batch_cases) == (1, 1) and "~0.2 MiB per row" in b.size_reason
    assert M.choose_batching(model, 4, None, tokens=100).batch_size == 4
    # 64 MiB free on a GPU: budget 33,554,432 / 270,336 = 124 rows -> 64; left 33,554,432 - 64 x 270,336 =
    # 16,252,928; a case: edits 3 x 32 x 64 x (4 + 4) = 49,152, training 4 x (100 + 512) x (16 x 32 + 4 x 64)
    # x 4 = 7,520,256, together 7,569,408: 2 cases fit (of the 3 to run)
    monkeypatch.setattr(M, "free_bytes", lambda m: (64 * 2 ** 20, "cuda:0"))
    b = M.choose_batching(model, None, None, tokens=100, cases=3)
    assert (b.batch_size, b.batch_cases) == (64, 2)


def test_free_cpu_memory_from_proc_meminfo_without_psutil(monkeypatch, tmp_path):
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       24683652 kB\nMemFree:  1 kB\nMemAvailable:   3250000 kB\n")
    assert M._meminfo_available(str(info)) == 3_250_000 * 1024
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil -> ImportError
    monkeypatch.setattr(M, "_meminfo_available", lambda: 5 * GiB)
    monkeypatch.setattr(M, "_cgroup_headroom", lambda: 2 * GiB)  # a container's limit is lower
    assert M.cpu_free_bytes() == 2 * GiB


def test_longest_row_counts_the_template_and_stays_within_the_context(tiny_tok):
    model = tiny_model("llama")  # max_position_embeddings 256
    prompts = ["how do i make a bomb", "hello"]
    # "<|im_start|> user <|im_end|> <|im_start|> assistant": 5 template tokens around the text
    assert M.longest_row_tokens(model, tiny_tok, prompts, 10) == 6 + 5 + 10
    assert M.longest_row_tokens(model, tiny_tok, ["the " * 400], 10) == 256  # left-truncated to the budget


# --- out of memory ------------------------------------------------------------------------------------

def test_out_of_memory_errors_are_recognised():
    assert M.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                                           "allocate 123456789 bytes. Error code 12"))
    assert M.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert M.is_out_of_memory(RuntimeError("MPS backend out of memory")) and M.is_out_of_memory(MemoryError())
    assert not M.is_out_of_memory(RuntimeError("shape mismatch"))
    assert not M.is_out_of_memory(ValueError("out of memory"))


PROMPTS = ["hello", "tell me a story", "how do i build a bomb", "what is the capital of france ?",
           "write a story about a dragon and a knight", "can you help me", "explain the rules of the game",
           "hi", "how do i steal a car", "give me the answer please"]


class _Oom:
    """A forward pre-hook that fails like the CPU allocator when a batch has more than ``rows`` rows."""

    def __init__(self, rows: int, message: str = "DefaultCPUAllocator: can't allocate memory: you tried to "
                                                 "allocate 1073741824 bytes."):
        self.rows, self.message, self.raised = rows, message, 0

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        if ids is not None and ids.shape[0] > self.rows:
            self.raised += 1
            raise RuntimeError(self.message)


def test_out_of_memory_halves_the_batch_keeps_it_and_matches_a_run_at_that_size(tiny_tok, caplog):
    model = tiny_model("llama")
    s8 = GenerationSettings(max_new_tokens=6, batch_size=8)
    reference = generate(model, tiny_tok, PROMPTS, GenerationSettings(max_new_tokens=6, batch_size=2))
    seen = []
    oom = _Oom(rows=2)
    handle = model.register_forward_pre_hook(oom, with_kwargs=True)
    try:
        with caplog.at_level("WARNING"):
            got = generate(model, tiny_tok, PROMPTS, s8, on_batch=lambda pos, answers: seen.append(len(pos)))
        assert got == reference  # 8 rows failed, then 4; the rest went 2 at a time, as a run at 2 does
        assert oom.raised == 2 and seen == [2, 2, 2, 2, 2]
        assert M.batch_limit(model, 8) == 2 and "retrying them 4 at a time" in caplog.text
        again = generate(model, tiny_tok, PROMPTS, s8)  # the smaller size is kept: no new failure
        assert again == reference and oom.raised == 2
    finally:
        handle.remove()


def test_one_row_out_of_memory_and_other_errors_are_raised(tiny_tok):
    model = tiny_model("llama")
    handle = model.register_forward_pre_hook(_Oom(rows=0), with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="can't allocate memory"):
            generate(model, tiny_tok, PROMPTS[:3], GenerationSettings(max_new_tokens=4, batch_size=4))
        assert M.batch_limit(model, 4) == 1
    finally:
        handle.remove()
    model = tiny_model("llama")
    other = _Oom(rows=0, message="mat1 and mat2 shapes cannot be multiplied")
    handle = model.register_forward_pre_hook(other, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="shapes"):
            generate(model, tiny_tok, PROMPTS[:3], GenerationSettings(max_new_tokens=4, batch_size=4))
        assert other.raised == 1 and M.batch_limit(model, 4) == 4  # no retry, no smaller size
    finally:
        handle.remove()


# --- loading in the requested dtype --------------------------------------------------------------------

class _CastWatch:
    """Records every ``Tensor.to`` that turns an fp32 tensor into another dtype (any thread)."""

    def __init__(self, monkeypatch):
        self.shapes: list[tuple] = []
        real = torch.Tensor.to

        def to(t, *args, **kwargs):
            out = real(t, *args, **kwargs)
            if isinstance(out, torch.Tensor) and t.dtype == torch.float32 and out.dtype != torch.float32:
                self.shapes.append(tuple(t.shape))
            return out
        monkeypatch.setattr(torch.Tensor, "to", to)


@pytest.fixture()
def fake_gguf(tmp_path, tiny_tok, monkeypatch):
    """A ``.gguf`` spec whose dequantized fp32 checkpoint is a tiny llama (the GGUF step is not under test)."""
    fp32 = tmp_path / "cache" / "models" / "tiny-q4"
    tiny_model("llama").save_pretrained(fp32)
    tiny_tok.save_pretrained(fp32)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"")
    monkeypatch.setattr(L, "_dequantize", lambda g: fp32)
    monkeypatch.setattr(L, "_gguf_cache_path", lambda g: fp32)
    return gguf, fp32


def test_bf16_load_of_a_gguf_maps_bf16_weights_with_no_fp32_copy(fake_gguf, monkeypatch):
    """``load_model(x.gguf, dtype="bf16")`` reads a bf16 copy of the fp32 conversion (made once), so no
    fp32 block weight is cast on the way; its weights are bit-identical to loading the fp32 conversion
    in bf16, and the response-cache key is the same. Positive control: loading the fp32 file in bf16 casts
    the MLP weights, which the watch sees."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from detoxedit.responses import model_key

    gguf, fp32 = fake_gguf
    mlp = {(64, 32), (32, 64)}  # gate/up and down projections of the tiny llama
    L.load_model(str(gguf), dtype="bf16")  # the first load makes the bf16 copy
    copy = fp32.with_name(fp32.name + "-bf16")
    with safe_open(str(copy / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}

    watch = _CastWatch(monkeypatch)
    model, tok = L.load_model(str(gguf), dtype="bf16")
    assert not mlp & set(watch.shapes), watch.shapes
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert tok("hello")["input_ids"]

    watch.shapes.clear()
    cast = AutoModelForCausalLM.from_pretrained(str(fp32), dtype=torch.bfloat16, attn_implementation="eager")
    assert mlp <= set(watch.shapes)  # the watch does see a cast load
    cast.config.name_or_path = str(fp32)
    mine, theirs = model.state_dict(), cast.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert model_key(model, str(gguf), "bf16") == model_key(cast, str(gguf), "bf16")


def test_fp32_and_auto_loads_of_a_gguf_use_the_fp32_conversion(fake_gguf):
    gguf, fp32 = fake_gguf
    assert L.resolve_spec(str(gguf), "fp32") == (str(fp32), True)
    assert L.resolve_spec(str(gguf), "auto") == (str(fp32), True)
    assert L.resolve_spec(str(gguf), "fp16") == (str(fp32.with_name(fp32.name + "-fp16")), True)
    model, _ = L.load_model(str(gguf), dtype="fp32")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert not Path(str(fp32) + "-bf16").exists()
