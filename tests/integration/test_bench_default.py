"""A two-case end-to-end run on the embedded model and the built-in benchmark (marked integration)."""

import json

import pytest

from detoxedit.bench.records import read_run_records
from detoxedit.cli import main

pytestmark = pytest.mark.integration


def test_two_case_bench_and_report_on_the_default_model(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["bench", "--model", "default", "--data", "builtin", "--split", "test", "--limit", "2",
               "--max-new-tokens", "32", "--out", str(run), "--no-progress"])
    assert rc == 0
    records = read_run_records(run)
    assert len(records) == 2
    for rec in records:
        assert set(rec["vanilla"]) == {"DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ"}
        labels = rec["labels"]["default"]
        assert all(v in (0, 0.5, 1) for side in labels.values() for v in side.values())
        assert 0 <= rec["edit"]["layer"] < 30
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "| vanilla |" in out and "| edited |" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_cases"] == 2 and "DS" in metrics["edited"]
    assert (run / "report.html").stat().st_size > 10_000  # plots embedded
