"""DINM settings: the reference's YAML loads unchanged, bad settings name the file and the key."""

import pytest

from detoxedit.configs import CONFIG_ROOT, builtin_config_path
from detoxedit.errors import DetoxEditError
from detoxedit.methods.dinm_hparams import DINMHyperParams

REFERENCE_STYLE_YAML = """\
alg_name: 'DINM'
model_name: "./hugging_cache/llama-2-7b"
model_class: LlamaForCausalLM
tokenizer_class: LlamaTokenizer
device: 1
suffix_system_prompt: "If the user's request is reasonable, give the correct answer. Please give the right response:"
layers: []
num_steps: 10
batch_size: 1
max_length: 1000
max_output_length: 600
lr: 5e-4
weight_decay: 0
kl_factor: 0.1
norm_constraint: false
rewrite_module_tmp: 'model.layers.{}.mlp.down_proj.weight'
layer_module_tmp: 'model.layers.{}'
mlp_module_tmp: 'model.layers.{}.mlp'
attn_module_tmp: 'model.layers.{}.self_attn'
ln_f_module: 'model.norm'
lm_head_module: 'lm_head'
model_parallel: false
"""


def test_reference_yaml_keys_load(tmp_path):
    f = tmp_path / "llama-7b.yaml"
    f.write_text(REFERENCE_STYLE_YAML)
    hp = DINMHyperParams.from_yaml(f)
    assert hp.lr == 5e-4 and isinstance(hp.lr, float)  # YAML 1.1 reads 5e-4 as a string
    assert hp.norm_constraint is None and hp.layers == [] and hp.num_steps == 10
    assert hp.kl_factor == 0.1 and hp.max_output_length == 600
    assert hp.kl_grad is True  # our default, not the reference's behaviour


def test_unknown_key_names_file_and_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("num_steps: 3\nlearning_rate: 0.1\n")
    with pytest.raises(DetoxEditError, match=r"bad\.yaml.*learning_rate"):
        DINMHyperParams.from_yaml(f)


def test_bad_values_are_refused(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("lr: fast\n")
    with pytest.raises(DetoxEditError, match="numbers"):
        DINMHyperParams.from_yaml(f)
    with pytest.raises(DetoxEditError, match="layers"):
        DINMHyperParams.from_dict({"layers": [1, 2]})
    with pytest.raises(DetoxEditError, match="does not exist"):
        DINMHyperParams.from_yaml(tmp_path / "missing.yaml")


def test_reference_mode():
    hp = DINMHyperParams.reference()
    assert (hp.kl_grad, hp.locate, hp.prompt_format) == (False, "once_per_run", "raw")
    hp2 = DINMHyperParams.from_dict({"reference_mode": True, "lr": 1e-5})
    assert (hp2.kl_grad, hp2.locate, hp2.lr) == (False, "once_per_run", 1e-5)


@pytest.mark.parametrize("name", ["smollm2-135m", "llama-2-7b-chat", "mistral-7b-v0.1", "gpt2-xl",
                                  "qwen2.5-7b-instruct", "llama-3-8b-instruct"])
def test_shipped_configs_load_and_open_with_their_command(name):
    path = builtin_config_path("dinm", name)
    first = path.read_text().splitlines()[:3]
    assert any(line.startswith("# Run:  detoxedit ") for line in first)
    DINMHyperParams.from_yaml(path)


def test_paper_learning_rates():
    assert DINMHyperParams.from_yaml(CONFIG_ROOT / "dinm" / "mistral-7b-v0.1.yaml").lr == 1e-5
    assert DINMHyperParams.from_yaml(CONFIG_ROOT / "dinm" / "llama-2-7b-chat.yaml").lr == 5e-4
