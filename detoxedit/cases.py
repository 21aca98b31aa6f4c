"""From SafeEdit records to what a run works on: the cases selected, their evaluation inputs, and the
``EditCase`` a method learns from.

This is the one seam between the data package (records) and the methods (``EditCase``): the runner,
``general``, ``train``, ``demo``, the analysis and the judge-data script all go through it.
"""

from __future__ import annotations

from typing import Sequence

from detoxedit.config import RunConfig
from detoxedit.data.records import is_test_all_record, iter_inputs
from detoxedit.errors import DataError, DetoxEditError
from detoxedit.methods.base import EditCase


def case_inputs(record) -> dict[str, str]:
    """The non-empty evaluation inputs of a record, by metric key (``DS``, ``DG_onlyQ``, ...)."""
    return {k: t for k, t in iter_inputs(record) if t and t.strip()}


def to_edit_case(record, source: str, index: int) -> EditCase:
    """The instance a method edits on: the adversarial input, its safe (and unsafe) response and the
    general-knowledge pair. A record without a safe response fails naming file, record and field."""
    safe = record.safe_generation or ""
    if not safe.strip():
        why = "a safe response is needed to edit or train on, and this record has none"
        if is_test_all_record(record):
            why += (" (a SafeEdit_test_ALL-style record: one evaluation input, no responses; only "
                    "methods that use no instance, such as sft, dpo or ext-sub, can be evaluated on it; "
                    "edit on the train/val/test files, and train with --train-split train)")
        raise DataError(why, file=source, index=index, record_id=record.id, field="safe generation")
    kc = record.knowledge_constrain
    return EditCase(prompt=record.adversarial_prompt or record.question or "", safe=safe,
                    unsafe=record.unsafe_generation or None,
                    knowledge_prompt=getattr(kc, "prompt", None) or None,
                    knowledge_answer=getattr(kc, "answer", None) or None, case_id=record.id)


def first_per_category(indexed: Sequence[tuple[int, object]], n: int) -> list[tuple[int, object]]:
    """The first ``n`` (index, record) pairs of each unsafe category, in the given order."""
    taken: dict[str, int] = {}
    kept = []
    for i, r in indexed:
        cat = r.canonical_category or r.category
        if taken.get(cat, 0) < n:
            taken[cat] = taken.get(cat, 0) + 1
            kept.append((i, r))
    return kept


def select_records(records: Sequence, cfg: RunConfig, shard: tuple[int, int] = (0, 1)) -> list[tuple[int, object]]:
    """``(index, record)`` pairs a run covers: ``cfg.cases``, then ``cfg.per_category``, then
    ``cfg.limit``, then every n-th from i for shard ``(i, n)``."""
    indexed = list(enumerate(records))
    if cfg.cases is not None:
        wanted = set(cfg.cases)
        indexed = [(i, r) for i, r in indexed if str(r.id) in wanted]
        missing = wanted - {str(r.id) for _, r in indexed}
        if missing:
            raise DetoxEditError(f"case id(s) not in the data: {sorted(missing)[:10]}")
    if cfg.per_category is not None:
        indexed = first_per_category(indexed, cfg.per_category)
    if cfg.limit is not None:
        indexed = indexed[: cfg.limit]
    i, n = shard
    return indexed[i::n]


def with_unsafe_answer(case: EditCase, model, tok, settings, cache=None) -> EditCase:
    """``case`` with an unsafe text to locate the toxic layer: its own when it has one, else the model's
    answer to the bare adversarial input (from ``cache``, a ``ResponseCache``, when given)."""
    if not case.unsafe:
        if cache is not None:
            case.unsafe = cache.generate(model, tok, [case.prompt], settings)[0][0]
        else:
            from detoxedit.models.generate import generate

            case.unsafe = generate(model, tok, [case.prompt], settings)[0]
    return case
