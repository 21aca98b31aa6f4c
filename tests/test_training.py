"""Trained artefacts (detoxedit.bench.training) and methods that use no instance, through the runner.

A toy method stands in for SFT/DPO/MEND here so the artefact rules are tested on their own: it "trains"
by averaging one number over the train cases, saves it, and returns an Edit that adds it to one bias-free
weight (the final norm), the same Edit for every case.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import tiny_model
from detoxedit.bench.records import read_run_records
from detoxedit.bench.runner import run_bench
from detoxedit.bench.training import MANIFEST
from detoxedit.config import RunConfig
from detoxedit.errors import DataError, DetoxEditError
from detoxedit.methods import base
from detoxedit.methods._hparams import HyperParamsIO
from detoxedit.models.arch import final_norm
from test_runner import record


@dataclass
class ToyHParams(HyperParamsIO):
    """Every method's settings go through HyperParamsIO (the one settings path reads them)."""

    scale: float = 1.0

    def validate(self, source="toy settings"):
        pass


class ToyTrained:
    hparams_class = ToyHParams
    uses_instance = False
    needs_training = True
    calls = {"fit": 0, "edit": 0, "load": 0}

    def __init__(self, hparams):
        self.hp, self.value = hparams, None

    def fit(self, model, tok, cases, progress=False):
        ToyTrained.calls["fit"] += 1
        self.value = self.hp.scale * len(cases)
        return {"n": len(cases)}

    def save_artifact(self, out_dir: Path):
        (out_dir / "value.json").write_text(json.dumps(self.value))

    def load_artifact(self, out_dir: Path):
        ToyTrained.calls["load"] += 1
        self.value = json.loads((out_dir / "value.json").read_text())

    def edit(self, model, tok, case):
        ToyTrained.calls["edit"] += 1
        assert case is None  # a method that uses no instance is never given one
        name = next(n for n, p in model.named_parameters() if p is final_norm(model).weight)
        return base.Edit("toy", {name: torch.full_like(final_norm(model).weight, 1e-3 * self.value).float()})


@pytest.fixture()
def toy(tmp_path, tiny_tok, monkeypatch):
    monkeypatch.setitem(base.METHODS, "toy-trained", ToyTrained)
    ToyTrained.name = "toy-trained"
    for k in ToyTrained.calls:
        ToyTrained.calls[k] = 0
    model_dir = tmp_path / "tiny-model"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tok.save_pretrained(model_dir)
    data = tmp_path / "data"
    data.mkdir()
    (data / "SafeEdit_train.json").write_text(json.dumps([record(i) for i in range(5)]))
    test = [record(i) for i in range(3)]
    for r in test:  # test_ALL-like: no responses at all; a method without instance must not need them
        r["safe generation"] = r["unsafe generation"] = ""
    (data / "SafeEdit_test.json").write_text(json.dumps(test))
    monkeypatch.setenv("DETOXEDIT_CACHE", str(tmp_path / "cache"))
    cfg = RunConfig(model=str(model_dir), data=str(data), split="test", judge="refusal",
                    method="toy-trained", max_new_tokens=4, hparams={"scale": 2.0})
    return cfg, tmp_path


def test_trains_once_then_reuses_the_artifact(toy):
    cfg, tmp = toy
    run_bench(cfg, tmp / "run1", progress=False)
    art = tmp / "run1" / "artifact"
    manifest = json.loads((art / MANIFEST).read_text())
    assert manifest["n_cases"] == 5 and manifest["log"] == {"n": 5}
    assert manifest["trained_on"]["hparams"] == {"scale": 2.0}
    assert json.loads((art / "value.json").read_text()) == 10.0
    assert ToyTrained.calls == {"fit": 1, "edit": 1, "load": 0}  # one shared edit for 3 cases
    recs = read_run_records(tmp / "run1")
    assert len(recs) == 3 and all(r["edit"]["uses_instance"] is False for r in recs)

    cfg.artifact = str(art)
    run_bench(cfg, tmp / "run2", progress=False)
    assert ToyTrained.calls["fit"] == 1 and ToyTrained.calls["load"] == 1


def test_an_artifact_trained_otherwise_is_refused(toy):
    cfg, tmp = toy
    run_bench(cfg, tmp / "run1", progress=False)
    cfg.artifact = str(tmp / "run1" / "artifact")
    cfg.hparams = {"scale": 3.0}
    with pytest.raises(DetoxEditError, match="hparams"):
        run_bench(cfg, tmp / "run2", progress=False)
    cfg.hparams, cfg.train_limit = {"scale": 2.0}, 2
    with pytest.raises(DetoxEditError, match="train_limit"):
        run_bench(cfg, tmp / "run3", progress=False)


def test_a_half_written_artifact_is_not_trusted(toy):
    cfg, tmp = toy
    stale = tmp / "art"
    stale.mkdir()
    (stale / "value.json").write_text("99")  # no manifest: a training that died while saving
    cfg.artifact = str(stale)
    with pytest.raises(DetoxEditError, match="no artifact.json"):
        run_bench(cfg, tmp / "run", progress=False)
    cfg.artifact = str(tmp / "fresh")
    (tmp / "fresh.partial").mkdir()  # leftover of a killed training: replaced, not reused
    (tmp / "fresh.partial" / "junk").write_text("x")
    run_bench(cfg, tmp / "run2", progress=False)
    assert not (tmp / "fresh.partial").exists() and not (tmp / "fresh" / "junk").exists()
    assert ToyTrained.calls["fit"] == 1


def test_train_limit_and_a_training_split_without_safe_responses(toy):
    cfg, tmp = toy
    cfg.train_limit = 2
    run_bench(cfg, tmp / "run", progress=False)
    assert json.loads((tmp / "run" / "artifact" / MANIFEST).read_text())["n_cases"] == 2
    cfg2 = RunConfig(**{**cfg.to_dict(), "train_split": "test", "train_limit": None})
    with pytest.raises(DataError, match="safe"):
        run_bench(cfg2, tmp / "run-bad", progress=False)


def test_instance_methods_still_need_a_safe_response(toy):
    cfg, tmp = toy
    cfg2 = RunConfig(**{**cfg.to_dict(), "method": "dinm", "hparams": {"num_steps": 1}})
    with pytest.raises(DataError, match="safe response"):
        run_bench(cfg2, tmp / "run-dinm", progress=False)


def test_train_command_writes_an_artifact_bench_reuses(toy, capsys):
    from detoxedit.cli import main

    cfg, tmp = toy
    art = tmp / "trained"
    args = ["train", "--model", cfg.model, "--data", cfg.data, "--method", "toy-trained",
            "--hparam", "scale=2.0", "--out", str(art), "--no-progress"]
    assert main(args) == 0
    assert json.loads((art / "value.json").read_text()) == 10.0
    assert "detoxedit bench --method toy-trained --artifact" in capsys.readouterr().out
    cfg.artifact = str(art)
    run_bench(cfg, tmp / "run", progress=False)
    assert ToyTrained.calls["fit"] == 1 and ToyTrained.calls["load"] == 1
    assert main(["train", "--model", cfg.model, "--data", cfg.data, "--method", "dinm",
                 "--out", str(tmp / "x")]) != 0
    assert "method 'dinm' has nothing to train" in capsys.readouterr().err


def test_general_ability_of_a_run_uses_its_method_and_artifact(toy):
    from detoxedit.cli import main

    cfg, tmp = toy
    run = tmp / "run"
    run_bench(cfg, run, progress=False)
    assert main(["general", "--run", str(run), "--tasks", "kqa", "--general-limit", "2", "--no-progress"]) == 0
    summary = json.loads((run / "general.json").read_text())
    assert summary["k"] == 1 and summary["config"]["items"] == {"kqa": 2}
    recs = [json.loads(line) for line in (run / "general.records.jsonl").read_text().splitlines()]
    assert [r["case_id"] for r in recs] == ["shared"]
    assert ToyTrained.calls["fit"] == 1 and ToyTrained.calls["load"] == 1  # the run's artefact, not retrained
