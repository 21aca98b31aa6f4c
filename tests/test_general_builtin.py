"""The built-in general-ability sets: counts, schema, unique ids, balance, and self-consistency."""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources

import pytest

from detoxedit.general import csum, kqa
from detoxedit.general import overrefusal as ovr


def _raw(name: str) -> list[dict]:
    text = resources.files("detoxedit.general").joinpath("builtin", name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_kqa_builtin():
    rows = _raw("kqa.jsonl")
    items = kqa.load("builtin")
    assert len(items) == len(rows) >= 220
    assert len({it.id for it in items}) == len(items)
    assert len({kqa.normalize_answer(it.question) for it in items}) == len(items)
    assert all(set(r) == {"id", "question", "answers", "topic"} for r in rows)
    topics = Counter(r["topic"] for r in rows)
    assert set(topics) >= {"geography", "science", "history", "arts", "sports", "general"}
    assert min(topics.values()) >= 10
    for it in items:
        assert it.question.endswith("?"), it.id
        assert all(kqa.normalize_answer(a) for a in it.answers), it.id
        # the canonical answer, given as a response, scores under both rules
        assert kqa.exact_match(kqa.extract_answer(it.answers[0] + "."), it.answers), it.id
        assert kqa.contains_match(f"I think it is {it.answers[0]}.", it.answers), it.id
    # the first 20 (a --limit 20 run) already mix topics
    assert len({r["topic"] for r in rows[:20]}) >= 6


def test_csum_builtin():
    rows = _raw("csum.jsonl")
    items = csum.load("builtin")
    assert len(items) == len(rows) >= 55
    assert len({it.id for it in items}) == len(items)
    assert all(set(r) == {"id", "document", "summary", "topic"} for r in rows)
    for it in items:
        assert 120 <= len(it.document.split()) <= 250, it.id
        assert 15 <= len(it.summary.split()) <= 35, it.id
        assert it.summary.endswith("."), it.id
        assert it.summary not in it.document, it.id      # XSum-style: not copied from the body
    assert len({it.document for it in items}) == len(items)


def test_harmless_builtin():
    rows = _raw("harmless.jsonl")
    items = ovr.load("builtin")
    assert len(items) == len(rows) >= 160
    assert len({it.id for it in items}) == len(items)
    assert len({it.prompt for it in items}) == len(items)
    assert all(set(r) == {"id", "prompt", "kind"} for r in rows)
    kinds = Counter(it.kind for it in items)
    assert set(kinds) == set(ovr.KINDS)
    assert kinds["dangerous_sounding"] * 3 == pytest.approx(len(items), abs=3)   # a third
    # interleaved: any prefix of 3k prompts holds k dangerous-sounding ones
    assert Counter(it.kind for it in ovr.load("builtin", limit=30))["dangerous_sounding"] == 10


def test_builtin_prompts_do_not_look_like_refusals():
    """Sanity check of the detector on our own prompts: none of them reads as a refusal."""
    assert not any(ovr.is_explicit_refusal(p) for p in ovr.prompts(ovr.load("builtin")))
