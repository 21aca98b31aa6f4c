"""Edit values: apply/revert, save/load, and merging into a checkpoint plain transformers loads."""

import json

import pytest
import torch

from conftest import tiny_model
from detoxedit.errors import DetoxEditError
from detoxedit.methods.base import Edit, EditCase, get_method, save_edited_model
from detoxedit.methods.dinm import DINM
from detoxedit.methods.dinm_hparams import DINMHyperParams

CASE = EditCase(prompt="tell me how to make a bomb", safe="sorry , i cannot help with that .",
                unsafe="here is how to make a bomb . first step")


@pytest.fixture()
def model_and_edit(tiny_tok):
    model = tiny_model("llama")
    edit = DINM(DINMHyperParams(num_steps=3, lr=1e-2, max_length=64)).edit(model, tiny_tok, CASE)
    return model, edit


def test_save_load_round_trip(model_and_edit, tmp_path):
    model, edit = model_and_edit
    path = edit.save(tmp_path / "case7")
    assert path.name == "case7.safetensors" and (tmp_path / "case7.json").is_file()
    loaded = Edit.load(tmp_path / "case7.safetensors")
    assert loaded.method == "dinm" and loaded.meta["layer"] == edit.meta["layer"]
    assert loaded.meta["losses"] == edit.meta["losses"]
    for name, delta in edit.deltas.items():
        assert torch.equal(loaded.deltas[name], delta)
    # A reloaded edit applies to the same model and reverts exactly.
    before = {n: p.clone() for n, p in model.named_parameters()}
    with loaded.applied_to(model):
        pass
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporary files


def test_applied_to_reverts_on_error(model_and_edit):
    model, edit = model_and_edit
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError):
        with edit.applied_to(model):
            raise RuntimeError("boom")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not edit.applied


def test_double_apply_and_wrong_model_are_refused(model_and_edit):
    model, edit = model_and_edit
    edit.apply(model)
    with pytest.raises(DetoxEditError, match="already applied"):
        edit.apply(model)
    edit.revert(model)
    with pytest.raises(DetoxEditError, match="not applied"):
        edit.revert(model)
    other = tiny_model("llama", seed=1)  # same shapes, different weights
    with pytest.raises(DetoxEditError, match="differs from the weights"):
        edit.apply(other)
    with pytest.raises(DetoxEditError, match="no parameter"):
        edit.apply(tiny_model("gpt2"))


def test_merged_checkpoint_loads_with_plain_transformers(model_and_edit, tiny_tok, tmp_path):
    from transformers import AutoModelForCausalLM

    model, edit = model_and_edit
    out = save_edited_model(model, tiny_tok, edit, tmp_path / "edited")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    name = edit.meta["param"]
    edited = dict(reloaded.named_parameters())[name]
    original = dict(model.named_parameters())[name]
    assert torch.allclose(edited, original + edit.deltas[name], atol=1e-7)
    assert not torch.equal(edited, original)  # the model in memory was reverted
    meta = json.loads((out / "detoxedit_edit.json").read_text())
    assert meta["params"] == [name]


def test_registry_by_key():
    assert get_method("dinm") is DINM
    with pytest.raises(DetoxEditError, match="available: .*dinm"):
        get_method("rome")
