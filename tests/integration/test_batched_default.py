"""The batched engine on the embedded model (marked integration): three cases with ``--batch-cases 3``
(the vanilla phase, DINM's three edits trained together by ``edit_many``, and every edited answer from
one generation through per-row edits) give the same answers, token for token, labels and validation as
the case-by-case path in fp32 greedy, and the same losses to float rounding."""

import pytest

from detoxedit.bench.records import read_run_records
from detoxedit.cli import main

pytestmark = pytest.mark.integration

PATH_NOTES = ("timings", "batched", "batched_with", "vanilla_cached")


def _strip(value):
    """A record without what may differ between the two paths: times (any ``*_s`` field), the batching
    notes, and whether the vanilla answers came from the cache (the second run reads the first's)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in PATH_NOTES and not k.endswith("_s")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def test_batched_path_equals_case_by_case_on_the_default_model(tmp_path):
    runs = {}
    for k in (1, 3):
        run = tmp_path / f"k{k}"
        rc = main(["bench", "--model", "default", "--data", "builtin", "--split", "test", "--per-category", "1",
                   "--limit", "3", "--max-new-tokens", "32", "--overrefusal-items", "2", "--batch-size", "8",
                   "--batch-cases", str(k), "--out", str(run), "--no-progress"])
        assert rc == 0
        runs[k] = read_run_records(run)
    one, three = runs[1], runs[3]
    assert [r["case_id"] for r in one] == [r["case_id"] for r in three] and len(one) == 3
    layers = [r["edit"]["layer"] for r in three]
    for r in three:  # cases that share a layer were trained together (DINM.edit_many)
        assert r["edit"]["batched_with"] == layers.count(r["edit"]["layer"]), r["case_id"]
    for a, b in zip(one, three):
        assert a["edited"] == b["edited"], a["case_id"]  # token for token
        assert a["vanilla"] == b["vanilla"], a["case_id"]
        assert a["labels"] == b["labels"] and a["ended"] == b["ended"], a["case_id"]
        # the rest too; the edits' losses and checks to float rounding: a batch of another shape sums the
        # real model's products in another order (measured: ~1e-6 relative; on the tiny models, bit-equal)
        _close(_strip(a), _strip(b), a["case_id"])


def _close(u, v, where) -> None:
    if isinstance(u, dict):
        assert isinstance(v, dict) and set(u) == set(v), where
        for k in u:
            _close(u[k], v[k], f"{where}.{k}")
    elif isinstance(u, list):
        assert isinstance(v, list) and len(u) == len(v), where
        for i, (x, y) in enumerate(zip(u, v)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(u, float) and not isinstance(u, bool):
        assert v == pytest.approx(u, rel=1e-4, abs=1e-6), where
    else:
        assert u == v, where
