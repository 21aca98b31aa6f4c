"""`analyze` on the embedded model: one real DINM edit, a small probe, two localisation cases (integration)."""

import json

import pytest
import yaml

pytestmark = pytest.mark.integration


def test_analyze_one_dinm_case_on_the_default_model(tmp_path):
    from detoxedit.analysis import probe as P
    from detoxedit.analysis.analyze import AnalysisSettings, analyze_runs
    from detoxedit.cases import to_edit_case
    from detoxedit.data.load import load_split
    from detoxedit.methods.dinm import DINM
    from detoxedit.methods.dinm_hparams import DINMHyperParams
    from detoxedit.models.load import load_model

    model, tok = load_model("default")
    records = load_split("builtin", "test")
    hp = DINMHyperParams(num_steps=3, lr=1e-3)
    edit = DINM(hp).edit(model, tok, to_edit_case(records[0], "builtin", 0))
    run = tmp_path / "dinm"
    (run / "edits").mkdir(parents=True)
    edit.save(run / "edits" / f"case-{records[0].id}")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "default", "method": "dinm",
                                                     "hparams": hp.to_dict(), "judge": "default"}))
    (run / "records.jsonl").write_text(json.dumps({
        "case_id": str(records[0].id), "inputs": {"DS": records[0].adversarial_prompt},
        "edit": {"uses_instance": True, "layer": edit.meta["layer"]}}) + "\n")
    texts = P.dedupe(P.safeedit_texts(records[:40]))
    doc = analyze_runs(model, tok, [run], tmp_path / "out", AnalysisSettings(probe_max_tokens=32), texts=texts,
                       loc_cases=[(str(r.id), r.safe_generation, r.unsafe_generation) for r in records[:2]])
    assert doc["layer"] == edit.meta["layer"]
    r = doc["runs"][0]
    assert r["activation_shift"]["shift_norm"] == 0.0  # DINM cannot move its own layer's input
    assert r["parameter_toxicity"]["n_value_vectors"] == 1536 and r["parameter_toxicity"]["n_cases"] == 1
    assert doc["localisation"]["n_cases"] == 2
    assert (tmp_path / "out" / "analysis.html").stat().st_size > 10_000
