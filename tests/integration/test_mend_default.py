"""MEND on the embedded SmolLM2-135M-Instruct (marked ``integration``): a short training, then an edit
of a held-out case lowers the safe response's NLL and leaves the model as it was.

Uses the shipped test split only (the train split may need building): the editor trains on its first
8 cases and edits the last one. About 40 s on one free CPU core.
"""

import pytest
import torch

from detoxedit.cases import to_edit_case
from detoxedit.configs import builtin_config_path
from detoxedit.data.load import load_split
from detoxedit.methods.mend import MEND
from detoxedit.methods.mend_hparams import MENDHyperParams

pytestmark = pytest.mark.integration


def test_short_training_then_edit_lowers_the_safe_response_nll(tmp_path):
    from detoxedit.models.load import load_model

    model, tok = load_model("default", dtype="fp32")
    cases = [to_edit_case(r, "test", i) for i, r in enumerate(load_split("builtin", "test"))]
    train, held_out = cases[:8], cases[-1]
    hp = MENDHyperParams.from_yaml(builtin_config_path("mend", "smollm2-135m"))
    editor = MEND(hp)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    log = editor.fit(model, tok, train)
    assert log["steps"] == 8 and log["layers"] == [27, 28, 29]
    edit = editor.edit(model, tok, held_out)
    assert edit.meta["post_edit_loss"] < 0.8 * edit.meta["pre_edit_loss"]
    editor.save_artifact(tmp_path)
    again = MEND(hp)
    again.load_artifact(tmp_path)
    edit2 = again.edit(model, tok, held_out)
    assert all(torch.equal(edit.deltas[k], edit2.deltas[k]) for k in edit.deltas)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
