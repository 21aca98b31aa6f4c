"""General ability on the embedded model: vanilla vs one DINM edit, a few items per task (integration)."""

import json

import pytest

from detoxedit.cli import main

pytestmark = pytest.mark.integration


def test_general_command_vanilla_vs_one_edit(tmp_path, capsys):
    out = tmp_path / "gen"
    args = ["general", "--model", "default", "--data", "builtin", "--limit", "1", "--general-limit", "3",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "KQA (contains, %)" in printed and "over-refusal" in printed
    summary = json.loads((out / "general.json").read_text())
    assert summary["k"] == 1 and summary["config"]["items"] == {"kqa": 3, "csum": 3, "overrefusal": 3}
    for task in ("kqa", "csum", "overrefusal"):
        assert task in summary["vanilla"] and task in summary["edited"]
    assert 0 <= summary["edited"]["locality"]["rougeL"]["mean"] <= 100
    # A rerun resumes: the edit's record is reused, not recomputed.
    lines = (out / "general.records.jsonl").read_text().splitlines()
    assert main(args) == 0
    assert (out / "general.records.jsonl").read_text().splitlines() == lines
