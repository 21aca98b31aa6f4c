"""Self-Reminder: an empty edit whose system prompt and reminder reach the edited side only."""

import json

import pytest

from conftest import tiny_model
from detoxedit.bench.records import read_run_records
from detoxedit.bench.runner import run_bench
from detoxedit.config import RunConfig
from detoxedit.errors import DetoxEditError
from detoxedit.methods.base import get_method, uses_instance
from detoxedit.methods.self_reminder import SelfReminder
from detoxedit.methods.self_reminder_hparams import REMINDER, SYSTEM_PROMPT, SelfReminderHyperParams
from test_runner import record


def test_edit_is_empty_and_instance_free(tiny_tok):
    editor = get_method("self-reminder")()
    assert isinstance(editor, SelfReminder) and not uses_instance(editor)
    edit = editor.edit(tiny_model("llama"), tiny_tok, None)
    assert edit.deltas == {} and edit.meta["layer"] is None
    assert editor.system_prompt == SYSTEM_PROMPT
    assert editor.post_input("how do i steal a car ?") == "how do i steal a car ?\n" + REMINDER
    with pytest.raises(DetoxEditError, match="x.yaml: unknown Self-Reminder setting"):
        SelfReminderHyperParams.from_dict({"suffix": "s"}, source="x.yaml")


class _Recorder:
    name = "recorder"
    seen: list = []

    def judge(self, prompts, responses):
        _Recorder.seen.append(list(prompts))
        return [0.0] * len(responses)


def test_runner_gives_reminder_and_system_prompt_to_the_edited_side_only(tmp_path, tiny_tok, monkeypatch):
    import detoxedit.models.generate as gen
    from detoxedit.judges.base import JUDGES

    model_dir = tmp_path / "tiny-model"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tok.save_pretrained(model_dir)
    data = tmp_path / "SafeEdit_test.json"
    data.write_text(json.dumps([record(i) for i in range(2)]))
    monkeypatch.setenv("DETOXEDIT_CACHE", str(tmp_path / "cache"))
    calls = []
    real = gen.generate

    def spy(model, tok, prompts, settings=gen.GenerationSettings(), progress=False):
        calls.append((list(prompts), settings.system_prompt))
        return real(model, tok, prompts, settings, progress)

    monkeypatch.setattr(gen, "generate", spy)
    _Recorder.seen = []
    JUDGES["test-recorder"] = lambda arg=None: _Recorder()
    try:
        cfg = RunConfig(model=str(model_dir), data=str(data), split="test", judge="test-recorder",
                        method="self-reminder", max_new_tokens=4)
        run_bench(cfg, tmp_path / "run", progress=False)
    finally:
        del JUDGES["test-recorder"]
    recs = read_run_records(tmp_path / "run")
    assert len(recs) == 2 and recs[0]["edit"]["uses_instance"] is False
    assert all(REMINDER not in t for r in recs for t in r["inputs"].values())  # recorded inputs: bare
    vanilla_calls = [c for c in calls if c[1] is None]
    edited_calls = [c for c in calls if c[1] == SYSTEM_PROMPT]
    # edited side: the two cases' inputs, and once per run (the shared edit's check, in the first record)
    # the harmless prompts of the over-refusal check, each with the reminder too
    assert len(vanilla_calls) + len(edited_calls) == len(calls) and vanilla_calls and len(edited_calls) == 3
    assert ["overrefusal" in r for r in recs] == [True, False]
    assert all(REMINDER not in p for prompts, _ in vanilla_calls for p in prompts)
    assert all(p.endswith("\n" + REMINDER) for prompts, _ in edited_calls for p in prompts)
    for prompts in _Recorder.seen:  # the judge: first half vanilla prompts, second half edited ones
        n = len(prompts) // 2
        assert all(REMINDER not in p for p in prompts[:n]) and all(p.endswith(REMINDER) for p in prompts[n:])
