"""CSum: content summarisation, scored by ROUGE-1 F1 against an XSum-style one-sentence reference.

The paper (Wang et al., ACL 2024) reports XSum ROUGE-1 of the edited model, zero-shot, through
OpenCompass. Here:

* **Metric**: ROUGE-1 F1 from Google's ``rouge-score`` package
  (``RougeScorer(["rouge1"], use_stemmer=True)``), which runs offline (``evaluate.load("rouge")``
  wraps the same package but needs the network to fetch the metric script). Its tokenizer
  lower-cases, replaces every non-alphanumeric character with a space and keeps ``[a-z0-9]+`` tokens;
  with ``use_stemmer=True`` tokens longer than three characters are Porter-stemmed, so
  ``councils``/``council`` and ``voted``/``vote`` match. Stemming is the convention of the XSum
  literature (Narayan et al. 2018 and the summarisation papers that follow report stemmed ROUGE), so
  our numbers sit on the same scale as the paper's (LLaMA2-7B-Chat: 22.29). The per-article F1 is
  averaged over articles and reported as a percentage with a 95% bootstrap interval; mean precision
  and recall are reported beside it.
* **Summary extraction**: chat models often open with "Here is a one-sentence summary:". Before
  scoring, leading lines that end with a colon are dropped, a leading label of that kind on the same
  line (``Summary:``, ``Sure! Here's a summary: ...``) is cut, and the first remaining non-empty line is
  the summary. Everything after it (second paragraphs, notes) is ignored, as the prompt asks for one
  sentence.
* **Prompt**: :data:`PROMPT_TEMPLATE`, zero-shot, identical for the vanilla and the edited model.

**Data**: ``builtin`` (our own 55 short fictional news articles with one-sentence summaries,
:file:`builtin/csum.jsonl`), ``hub`` (XSum test, 11,334 BBC articles, via ``datasets``), or a local
JSONL file of ``{"id", "document", "summary"}``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from detoxedit.errors import DetoxEditError
from detoxedit.general import _io
from detoxedit.general import Task, register_task
from detoxedit.judges.base import check_lengths

HUB_ID = "EdinburghNLP/xsum"
HUB_SPLIT = "test"
PROMPT_TEMPLATE = "Summarize the following article in one sentence.\n\n{document}"
"""Zero-shot prompt; the same text goes to the vanilla and the edited model."""
MAX_NEW_TOKENS = 64
"""Generation budget: an XSum reference averages about 23 words; 64 tokens leave room for a preamble."""
USE_STEMMER = True
"""Porter stemming in ROUGE, as in the XSum literature."""

_LABEL = re.compile(r"^(?:(?:sure|okay|ok|certainly)[!,.]?\s*)?(?:here(?:'s| is)[^:\n]{0,80}|"
                    r"(?:one[- ]sentence )?summary[^:\n]{0,40}):\s*", re.IGNORECASE)


@dataclass(frozen=True)
class CSumItem:
    """One article and its reference summary."""

    id: str
    document: str
    summary: str


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------
def extract_summary(response: str) -> str:
    """The summary inside a response: preamble lines and labels removed, first content line kept."""
    lines = [ln.strip() for ln in response.replace("\u2019", "'").splitlines() if ln.strip()]
    while len(lines) > 1 and lines[0].endswith(":"):
        lines.pop(0)
    if not lines:
        return ""
    first = _LABEL.sub("", lines[0], count=1).strip()
    return first.strip("*\"' ") or (lines[1] if len(lines) > 1 else "")


def _scorer(rouge_type: str = "rouge1", use_stemmer: bool = USE_STEMMER):
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise DetoxEditError("csum needs the 'rouge-score' package, which is not installed. "
                             "Install it with:  pip install rouge-score") from None
    return rouge_scorer.RougeScorer([rouge_type], use_stemmer=use_stemmer)


def rouge1(reference: str, prediction: str, use_stemmer: bool = USE_STEMMER) -> dict[str, float]:
    """ROUGE-1 ``{"precision", "recall", "f1"}`` (fractions in [0, 1]) of one prediction."""
    s = _scorer("rouge1", use_stemmer).score(reference, prediction)["rouge1"]
    return {"precision": s.precision, "recall": s.recall, "f1": s.fmeasure}


def score(items: Sequence[CSumItem], responses: Sequence[str], n_resamples: int = 1000,
          seed: int = 0) -> dict:
    """ROUGE-1 of a model's responses (``responses[i]`` summarises ``items[i]``).

    Returns ``{"n", "rouge1", "rouge1_precision", "rouge1_recall", "ci": {"rouge1": [lo, hi]},
    "per_item": [{"id", "summary", "rouge1", "precision", "recall"}]}``; scores are percentages
    (mean per-article F1 x 100), the interval a 95% percentile bootstrap over articles.
    """
    check_lengths(items, responses, "csum")
    scorer = _scorer()
    per_item = []
    for it, resp in zip(items, responses):
        if not isinstance(resp, str):
            raise DetoxEditError(f"csum: response to {it.id!r} is {type(resp).__name__}, not a string")
        summary = extract_summary(resp)
        s = scorer.score(it.summary, summary)["rouge1"]
        per_item.append({"id": it.id, "summary": summary, "rouge1": 100.0 * s.fmeasure,
                         "precision": 100.0 * s.precision, "recall": 100.0 * s.recall})
    n = len(per_item)
    f1 = [r["rouge1"] for r in per_item]
    return {"n": n, "rouge1": sum(f1) / n,
            "rouge1_precision": sum(r["precision"] for r in per_item) / n,
            "rouge1_recall": sum(r["recall"] for r in per_item) / n,
            "ci": {"rouge1": _io.mean_ci(f1, n_resamples=n_resamples, seed=seed)},
            "per_item": per_item}


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def load(source: str = "builtin", limit: int | None = None) -> list[CSumItem]:
    """Articles from ``builtin``, ``hub`` (XSum test; ``hub:<id>`` for another copy with the same
    fields), or a local JSONL file; the first ``limit`` of them."""
    _io.check_limit(limit)
    if source == "builtin":
        items = parse_rows(_io.builtin_rows("csum.jsonl"))
    elif source == "hub" or source.startswith("hub:"):
        items = load_hub(source.partition(":")[2] or HUB_ID, limit)
    else:
        items = load_jsonl(source)
    return items[:limit] if limit is not None else items


def load_jsonl(path: str | Path) -> list[CSumItem]:
    """A local JSONL file of ``{"id", "document", "summary"}`` objects (XSum's own field names)."""
    return parse_rows(_io.read_jsonl(path))


def parse_rows(rows: list[_io.Row]) -> list[CSumItem]:
    """Items from located rows; DataError names the file:line, record and field of the first problem."""
    items = []
    for where, index, row in rows:
        rid = _io.record_id(where, index, row)
        items.append(CSumItem(rid, _io.text_field(where, index, rid, row, "document"),
                              _io.text_field(where, index, rid, row, "summary")))
    _io.check_unique(rows, [it.id for it in items])
    return items


def load_hub(hub_id: str = HUB_ID, limit: int | None = None) -> list[CSumItem]:
    """XSum test from the hub (needs ``datasets`` and the network or its cache)."""
    split = HUB_SPLIT if limit is None else f"{HUB_SPLIT}[:{limit}]"
    ds = _io.load_hub(hub_id, None, split, task="csum",
                      local_hint='{"id", "document", "summary"} per line')
    rows = [(f"{hub_id}:{i}", i, dict(row)) for i, row in enumerate(ds)]
    return parse_rows(rows) if rows else []


def prompts(items: Sequence[CSumItem]) -> list[str]:
    """The zero-shot prompt of each item (:data:`PROMPT_TEMPLATE`)."""
    return [PROMPT_TEMPLATE.format(document=it.document) for it in items]


TASK = register_task(Task(key="csum", label="CSum", headline="rouge1", max_new_tokens=MAX_NEW_TOKENS, load=load,
                          prompts=prompts, score=score, order=20))
