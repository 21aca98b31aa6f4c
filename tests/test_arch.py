"""The architecture table resolves on a tiny random model of every family it lists."""

import pytest
import torch

from conftest import FAMILIES, tiny_model
from detoxedit.errors import DetoxEditError
from detoxedit.models import arch


def test_every_table_row_has_a_tiny_model_test():
    assert sorted(FAMILIES) == sorted(arch.ARCHITECTURES)


@pytest.mark.parametrize("family", FAMILIES)
def test_table_paths_resolve(family):
    model = tiny_model(family, layers=3)
    assert arch.num_layers(model) == 3
    params = dict(model.named_parameters())
    for layer in range(3):
        name = arch.down_proj_param_name(model, layer)
        assert params[name] is arch.down_proj(model, layer).weight
    # The table's LM head is the model's output embedding, and the final norm is a module.
    assert arch.lm_head(model) is model.get_output_embeddings()
    assert isinstance(arch.final_norm(model), torch.nn.Module)
    assert (arch.mlp_out_norm(model, 0) is not None) == family.startswith("gemma")


def test_conv1d_layout_only_for_gpt2():
    assert {k for k, v in arch.ARCHITECTURES.items() if v.down_proj_layout == "conv1d"} == {"gpt2"}


def test_unknown_family_error_names_supported_ones_and_how_to_add():
    class Cfg:
        model_type = "mamba"

    with pytest.raises(DetoxEditError) as err:
        arch.spec_for(Cfg())
    msg = str(err.value)
    assert "'mamba'" in msg and "llama" in msg and "gpt_neox" in msg and "ArchSpec" in msg


def test_layer_out_of_range_is_a_clear_error():
    model = tiny_model("llama", layers=2)
    with pytest.raises(DetoxEditError, match="out of range"):
        arch.down_proj(model, 2)


def test_no_lookup_by_model_name():
    """A llama-type config with a misleading name still resolves by model_type."""
    model = tiny_model("llama", layers=2)
    model.config.name_or_path = "gpt2-xl-mistral"
    assert arch.spec_for(model) is arch.ARCHITECTURES["llama"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_projection_has_the_table_layout(family):
    """``projection_layout`` reads the table's layout and checks it against each module's class."""
    model = tiny_model(family, layers=2)
    layout = arch.spec_for(model).down_proj_layout
    assert {arch.projection_layout(model, p) for p in arch.projection_paths(model)} == {layout}


def test_projection_layout_refuses_a_module_the_table_misdescribes():
    model = tiny_model("llama", layers=1)
    with pytest.raises(DetoxEditError, match="not a linear projection"):
        arch.projection_layout(model, "model.norm")
    gpt2 = tiny_model("gpt2", layers=1)
    gpt2.transformer.h[0].mlp.c_fc = torch.nn.Linear(32, 128)
    with pytest.raises(DetoxEditError, match="table"):
        arch.projection_layout(gpt2, "transformer.h.0.mlp.c_fc")
