"""``detoxedit tune`` on the embedded model and the built-in val split: two short trials (marked integration)."""

import json

import pytest

from detoxedit.cli import main
from detoxedit.settings import method_hparams

pytestmark = pytest.mark.integration


def test_two_trials_on_the_default_model_write_settings_bench_takes(tmp_path, capsys):
    out = tmp_path / "tune"
    rc = main(["tune", "--model", "default", "--data", "builtin", "--split", "val", "--limit", "1",
               "--max-new-tokens", "16", "--overrefusal-items", "2", "--kqa-items", "2", "--trials", "2",
               "--hparam", "step_size=fixed", "--hparam", "num_steps=2", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "trial 0 (1/2): starting settings" in printed and "best: trial" in printed
    rows = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["state"] == "complete" for r in rows)
    for r in rows:
        m = r["metrics"]
        assert m["n_cases"] == 1 and m["DS"] in (0.0, 50.0, 100.0)
        assert m["overrefusal"] is not None and m["kqa_drop"] is not None and m["cut_increase"] is not None
        layers = r["overrides"].get("layers")
        assert layers == [] or 12 <= layers[0] <= 29  # fixed layers from 40% of the depth: ceil(0.4 x 29) = 12
    # --hparam values hold in every trial and stay out of the search
    assert all("num_steps" not in r["params"] for r in rows)
    hp, _ = method_hparams("dinm", "default", out / "best.yaml")
    assert hp.num_steps == 2 and hp.step_size == "fixed"
    assert "Search space" in (out / "tune.html").read_text()
