"""CSum: ROUGE-1 on hand-checked pairs, summary extraction, scoring and loaders."""

from __future__ import annotations

import json
import sys
import types

import pytest

pytest.importorskip("rouge_score")

from detoxedit.errors import DataError, DetoxEditError  # noqa: E402
from detoxedit.general import csum  # noqa: E402


def test_rouge1_same_length_pair():
    """reference "the council approved the plan", prediction "the council rejected the plan".

    Tokens (lower-cased, punctuation dropped; stemming changes nothing that matters here):
    reference {the: 2, council, approv, plan} = 5 tokens; prediction {the: 2, council, reject, plan}
    = 5 tokens. Clipped overlap: the 2 + council 1 + plan 1 = 4.
    P = 4/5, R = 4/5, F = 2PR/(P+R) = 0.8.
    """
    s = csum.rouge1("the council approved the plan", "the council rejected the plan")
    assert s == pytest.approx({"precision": 0.8, "recall": 0.8, "f1": 0.8})


def test_rouge1_uneven_lengths():
    """reference "Cats chase small mice." (4 tokens), prediction "cats chase mice" (3 tokens).

    Overlap 3 (cats, chase, mice): P = 3/3 = 1, R = 3/4, F = 2 * 1 * 0.75 / 1.75 = 6/7 = 0.857...
    """
    s = csum.rouge1("Cats chase small mice.", "cats chase mice")
    assert s["precision"] == pytest.approx(1.0)
    assert s["recall"] == pytest.approx(0.75)
    assert s["f1"] == pytest.approx(6 / 7)


def test_rouge1_stemming():
    """reference "Eastbrook council votes to build a cycle hub" (8 tokens), prediction
    "the council voted for a new cycle hub" (8 tokens).

    With the Porter stemmer votes/voted -> vote and cycle -> cycl on both sides, so the overlap is
    council, vote, a, cycl, hub = 5: P = R = F = 5/8 = 0.625. Without stemming "votes" and "voted"
    differ: overlap 4, F = 4/8 = 0.5.
    """
    ref, pred = "Eastbrook council votes to build a cycle hub", "the council voted for a new cycle hub"
    assert csum.rouge1(ref, pred)["f1"] == pytest.approx(0.625)
    assert csum.rouge1(ref, pred, use_stemmer=False)["f1"] == pytest.approx(0.5)


def test_rouge1_edge_cases():
    assert csum.rouge1("a b c", "a b c")["f1"] == pytest.approx(1.0)
    assert csum.rouge1("a b c", "x y z")["f1"] == 0.0
    assert csum.rouge1("a b c", "")["f1"] == 0.0


@pytest.mark.parametrize("response, expected", [
    ("The council voted to close the car park.", "The council voted to close the car park."),
    ("Here is a one-sentence summary of the article:\n\nThe council voted.", "The council voted."),
    ("Sure! Here's a summary: The council voted.", "The council voted."),
    ("Summary: The council voted.\n\nNote: this omits details.", "The council voted."),
    ("**The council voted.**", "The council voted."),
    ("   \n", ""),
])
def test_extract_summary(response, expected):
    assert csum.extract_summary(response) == expected


def test_score_means_and_interval():
    items = [csum.CSumItem("a", "doc", "the council approved the plan"),
             csum.CSumItem("b", "doc", "Cats chase small mice.")]
    out = csum.score(items, ["Summary: the council rejected the plan", "cats chase mice"])
    assert out["n"] == 2
    assert out["rouge1"] == pytest.approx(100 * (0.8 + 6 / 7) / 2)
    assert out["rouge1_precision"] == pytest.approx(100 * (0.8 + 1.0) / 2)
    assert out["rouge1_recall"] == pytest.approx(100 * (0.8 + 0.75) / 2)
    assert out["per_item"][0]["summary"] == "the council rejected the plan"
    lo, hi = out["ci"]["rouge1"]
    assert 80.0 - 1e-9 <= lo <= out["rouge1"] <= hi <= 100 * 6 / 7 + 1e-9
    with pytest.raises(DetoxEditError, match="2 items but 1 responses"):
        csum.score(items, ["x"])


def test_prompts_use_the_template():
    (p,) = csum.prompts([csum.CSumItem("a", "Body text.", "s")])
    assert p == "Summarize the following article in one sentence.\n\nBody text."


def test_load_jsonl_and_errors(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"id": 7, "document": "Doc.", "summary": "Sum."}) + "\n")
    assert csum.load(str(path)) == [csum.CSumItem("7", "Doc.", "Sum.")]
    path.write_text(json.dumps({"id": "a", "document": "Doc.", "summary": ""}) + "\n")
    with pytest.raises(DataError, match=r"x\.jsonl:1, record 0 \(id 'a'\), field 'summary'"):
        csum.load(str(path))
    path.write_text(json.dumps({"id": ["a"], "document": "Doc.", "summary": "s"}) + "\n")
    with pytest.raises(DataError, match=r"field 'id': id must be a string or an integer"):
        csum.load(str(path))


def test_hub_messages(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DetoxEditError, match=r"csum: loading EdinburghNLP/xsum, split test .*pip install datasets"):
        csum.load("hub")

    def offline(path, config, split):
        raise OSError("not cached")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DetoxEditError, match=r"offline mode is on"):
        csum.load("hub")


def test_hub_rows(monkeypatch):
    rows = [{"id": "3519", "document": "A long article.", "summary": "One line."}]
    monkeypatch.setitem(sys.modules, "datasets",
                        types.SimpleNamespace(load_dataset=lambda path, config, split: rows))
    assert csum.load("hub:someone/xsum-copy") == [csum.CSumItem("3519", "A long article.", "One line.")]
