"""SFT, DPO and Ext-Sub on the embedded SmolLM2-135M-Instruct with their built-in configs, shrunk to a
few steps on four built-in test cases (marked ``integration``; about a minute on a laptop CPU)."""

import pytest
import torch

from detoxedit.methods.base import get_method

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def setup():
    from detoxedit.cases import to_edit_case
    from detoxedit.data.load import load_split
    from detoxedit.models.load import load_model

    model, tok = load_model("default", dtype="fp32")
    cases = [to_edit_case(r, "builtin", i) for i, r in enumerate(load_split("builtin", "test")[:2])]
    return model, tok, cases


@pytest.mark.parametrize("key", ["sft", "dpo", "ext-sub"])
def test_builtin_config_trains_and_the_edit_reverts_bit_exactly(key, setup):
    from detoxedit.configs import builtin_config_path, read_yaml_mapping

    model, tok, cases = setup
    cls = get_method(key)
    raw = read_yaml_mapping(builtin_config_path(key, "smollm2-135m"))
    raw.update(layers=[28, 29], batch_size=2, epochs=3, max_steps=None, lr=2e-3)
    editor = cls(cls.hparams_class.from_dict(raw, "test"))
    snap = {n: p.clone() for n, p in model.named_parameters()}
    log = editor.fit(model, tok, cases)
    for part, entry in log.items():
        if isinstance(entry, dict):
            assert entry["steps"][-1]["loss"] < entry["steps"][0]["loss"], part
    edit = editor.edit(model, tok, None)
    assert all(n.startswith(("model.layers.28.", "model.layers.29.")) for n in edit.deltas)
    with edit.applied_to(model):
        assert not all(torch.equal(snap[n], p) for n, p in model.named_parameters())
    assert all(torch.equal(snap[n], p) for n, p in model.named_parameters())
