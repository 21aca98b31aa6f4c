"""The one settings path: a method's YAML loads the same in every command, unknown keys fail the same
way everywhere, and run flags are generated from RunConfig's fields."""

import argparse
import dataclasses

import pytest

from detoxedit.config import RunConfig
from detoxedit.errors import DetoxEditError
from detoxedit.settings import add_run_arguments, method_hparams, parse_assignments, prepare_method, run_config


def test_assignments_are_read_as_yaml():
    assert parse_assignments(["lr=1.0e-4", "layers=[3]", "norm_constraint=", "prompt_format=raw"]) == {
        "lr": 1e-4, "layers": [3], "norm_constraint": None, "prompt_format": "raw"}
    with pytest.raises(DetoxEditError, match="KEY=VALUE"):
        parse_assignments(["lr"])


def test_defaults_then_file_then_overrides(tmp_path):
    f = tmp_path / "dinm.yaml"
    f.write_text("dinm:\n  lr: 2.0e-4\n  num_steps: 7\n")  # a section-nested file loads too
    hp, path = method_hparams("dinm", model="some/other-model", config=f, overrides={"num_steps": 3})
    assert (hp.lr, hp.num_steps, hp.kl_factor) == (2e-4, 3, 0.1) and path == f
    hp, path = method_hparams("dinm", model="some/other-model")
    assert path is None and hp.lr == 5e-4  # the paper's default; no built-in file for other models
    hp, path = method_hparams("dinm", model="default")
    assert path.name == "smollm2-135m.yaml" and (hp.lr, hp.max_steps) == (0.0007935705655498204, 32)  # tuned


def test_unknown_keys_fail_naming_their_source(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("learning_rate: 0.1\n")
    with pytest.raises(DetoxEditError, match=r"bad\.yaml.*unknown DINM setting.*learning_rate"):
        method_hparams("dinm", config=f)
    with pytest.raises(DetoxEditError, match=r"--hparam: unknown DINM setting.*learning_rate"):
        method_hparams("dinm", overrides={"learning_rate": 0.1})


def test_bench_and_edit_resolve_a_method_file_identically(tmp_path):
    from detoxedit.cli import build_parser

    f = tmp_path / "m.yaml"
    f.write_text("hparams:\n  lr: 3.0e-4\n  num_steps: 4\n")
    parser = build_parser()
    bench = parser.parse_args(["bench", "--out", str(tmp_path / "r"), "--method-config", str(f),
                               "--hparam", "num_steps=2"])
    edit = parser.parse_args(["edit", "--prompt", "p", "--safe", "s", "--method-config", str(f),
                              "--hparam", "num_steps=2"])
    got = [prepare_method(run_config(a)).hparams for a in (bench, edit)]
    assert got[0] == got[1] and (got[0].lr, got[0].num_steps) == (3e-4, 2)


def test_every_run_setting_is_a_flag_with_its_help():
    p = argparse.ArgumentParser()
    add_run_arguments(p)
    flags = {a.dest: a for a in p._actions}
    for f in dataclasses.fields(RunConfig):
        if f.metadata.get("flag", True):
            assert f.name in flags, f.name
            assert f.metadata["help"] and flags[f.name].help.startswith(f.metadata["help"])
    assert flags["dtype"].choices == ("fp32", "bf16", "fp16", "auto")
    args = p.parse_args(["--limit", "3", "--cases", "a, b", "--save-edits", "--hparam", "lr=1"])
    cfg = run_config(args)
    assert (cfg.limit, cfg.cases, cfg.save_edits, cfg.hparams) == (3, ["a", "b"], True, {"lr": 1})
    assert cfg.model == "default" and cfg.per_category is None  # flags not given keep the defaults


def test_flags_override_a_run_config_file(tmp_path):
    f = tmp_path / "config.yaml"
    f.write_text("model: some/model\nlimit: 9\nsplit: val\nversions: {torch: x}\n")
    p = argparse.ArgumentParser()
    add_run_arguments(p)
    cfg = run_config(p.parse_args(["--config", str(f), "--limit", "2"]))
    assert (cfg.model, cfg.limit, cfg.split) == ("some/model", 2, "val")
    with pytest.raises(DetoxEditError, match="limit must be >= 1"):
        run_config(p.parse_args(["--limit", "0"]))


def test_one_meaning_per_flag_across_commands():
    """No command defines its own flag under a run setting's name (as `general --limit` once meant
    items per task while `bench --limit` meant cases): wherever a run flag appears, it is the generated
    one, with the field's help text."""
    from detoxedit.cli import build_parser

    helps = {"--" + f.name.replace("_", "-"): f.metadata["help"] for f in dataclasses.fields(RunConfig)
             if f.metadata.get("flag", True)}
    def parsers(parser, path=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from parsers(child, path + (name,))
        yield path, parser

    checked = 0
    for path, parser in parsers(build_parser()):
        for action in parser._actions:
            for flag in action.option_strings:
                if flag in helps:
                    assert (action.help or "").startswith(helps[flag]), (path, flag, action.help)
                    checked += 1
    assert checked > 40  # bench, train, demo, edit and general all take generated run flags
