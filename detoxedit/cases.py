"""From SafeEdit records to what a run works on: the cases selected, their evaluation inputs, and the
``EditCase`` a method learns from.

This is the one seam between the data package (records) and the methods (``EditCase``): the runner,
``general``, ``train``, ``demo``, the analysis and the judge-data script all go through it.
"""

from __future__ import annotations

import logging
from typing import Iterable, Sequence

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


def _category(r) -> str:
    return r.canonical_category or r.category


def _question(r) -> str:
    """What makes two records one question: their question text (a record without one is its own)."""
    return (r.question or "").strip() or f"record:{r.id}"


def first_per_category(indexed: Sequence[tuple[int, object]], n: int) -> list[tuple[int, object]]:
    """The first ``n`` (index, record) pairs of each unsafe category, in the given order."""
    taken: dict[str, int] = {}
    kept = []
    for i, r in indexed:
        cat = _category(r)
        if taken.get(cat, 0) < n:
            taken[cat] = taken.get(cat, 0) + 1
            kept.append((i, r))
    return kept


def first_questions_per_category(indexed: Sequence[tuple[int, object]], n: int) -> list[tuple[int, object]]:
    """One (index, record) pair for each of the first ``n`` distinct questions of each unsafe category, in
    the given order: question j (counted from 0 within its category) is represented by its j-th case,
    modulo its number of cases, so the attack templates rotate. A record without a question text is a
    question of its own.

    Why: the built-in files list the attack variants of one question together, so their first ``n``
    cases of a category are ``n`` attacks on one question; their bare-question input (DG_onlyQ) is the
    same and their answers are correlated, and a bootstrap over cases reads them as independent.
    """
    questions: dict[str, dict[str, list[tuple[int, object]]]] = {}
    for i, r in indexed:
        questions.setdefault(_category(r), {}).setdefault(_question(r), []).append((i, r))
    kept = []
    for by_q in questions.values():
        for j, group in enumerate(list(by_q.values())[:n]):
            kept.append(group[j % len(group)])
    return sorted(kept, key=lambda pair: pair[0])


def unseen_questions_per_category(records: Sequence, seen: Iterable, n: int) -> list[tuple[int, object]]:
    """One (index, record) pair for each of the first ``n`` questions of each category that none of the
    ``seen`` records asks (:func:`first_questions_per_category` over the rest): cases for checking a
    choice made on ``seen`` (``detoxedit tune --confirm-per-category``) on questions it was not made on."""
    asked = {(_category(r), _question(r)) for r in seen}
    rest = [(i, r) for i, r in enumerate(records) if (_category(r), _question(r)) not in asked]
    return first_questions_per_category(rest, n)


def select_records(records: Sequence, cfg: RunConfig, shard: tuple[int, int] = (0, 1)) -> list[tuple[int, object]]:
    """``(index, record)`` pairs a run covers: ``cfg.cases``, then ``cfg.per_category`` (counted by
    ``cfg.per_category_by``), then
    ``cfg.limit``, then every n-th from i for shard ``(i, n)``."""
    indexed = list(enumerate(records))
    if cfg.cases is not None:
        wanted = set(cfg.cases)
        indexed = [(i, r) for i, r in indexed if str(r.id) in wanted]
        missing = wanted - {str(r.id) for _, r in indexed}
        if missing:
            raise DetoxEditError(f"case id(s) not in the data: {sorted(missing)[:10]}")
    if cfg.per_category is not None:
        pick = first_questions_per_category if cfg.per_category_by == "question" else first_per_category
        indexed = pick(indexed, cfg.per_category)
    if cfg.limit is not None:
        indexed = indexed[: cfg.limit]
    i, n = shard
    return indexed[i::n]


UNSAFE_SOURCE_INPUTS = ("attack", "attack+suffix")
"""The inputs :func:`with_unsafe_answer` tries, in order, when a record has no unsafe text."""


def with_unsafe_answer(case: EditCase, model, tok, settings, cache=None, suffix: str | None = None) -> EditCase:
    """``case`` with an unsafe text to locate the toxic layer, and ``case.unsafe_source`` saying where it
    came from (DINM, Wang et al. 2024, Sec. 3.2: the toxic layer is where the hidden states of the safe and
    the unsafe response differ most, so the unsafe side must really be unsafe).

    * The record's own unsafe text when it has one (``unsafe_source = "record"``).
    * Otherwise the model's greedy answers, tried in order and generated only as needed: the bare
      adversarial input (``generated:attack``), then that input with the method's ``suffix`` system prompt
      (``generated:attack+suffix``; skipped when ``suffix`` is None). The first answer that is *not* a
      refusal by the broad detector (:func:`detoxedit.judges.refusal.is_refusal`) is taken.
    * If every answer is a refusal, the first one is used, ``unsafe_source = "refusal-only:attack"``, and a
      warning is logged: the located layer then separates two refusals, not safe from unsafe text.

    Answers come from ``cache`` (a ``ResponseCache``) when given, so a rerun reuses them.
    """
    if case.unsafe:
        case.unsafe_source = case.unsafe_source or "record"
        return case

    def answer(prompt: str) -> str:
        if cache is not None:
            return cache.generate(model, tok, [prompt], settings)[0][0]
        from detoxedit.models.generate import generate

        return generate(model, tok, [prompt], settings)[0]

    tries = [("attack", case.prompt)]
    if suffix:
        from detoxedit.models.generate import with_suffix

        tries.append(("attack+suffix", with_suffix(case.prompt, suffix)))
    case.unsafe, case.unsafe_source = pick_unsafe(((name, answer(p)) for name, p in tries), case.case_id)
    return case


def pick_unsafe(answers: Iterable[tuple[str, str]], case_id=None) -> tuple[str, str]:
    """``(text, unsafe_source)``: the first of the ``(input name, answer)`` pairs that is *not* a refusal by
    the broad detector (:func:`detoxedit.judges.refusal.is_refusal`), as ``generated:<name>``; if all are
    refusals, the first, as ``refusal-only:<first name>``, with a warning logged. ``answers`` is read
    lazily, so a generator generates only the answers needed."""
    from detoxedit.judges.refusal import is_refusal

    first = None
    names = []
    for name, text in answers:
        names.append(name)
        if first is None:
            first = (name, text)
        if not is_refusal(text):
            return text, f"generated:{name}"
    logging.getLogger(__name__).warning(
        "case %s: the model refused every input tried (%s), so its first refusal stands in for the unsafe "
        "answer; the located layer separates two refusals, not safe from unsafe text", case_id, ", ".join(names))
    return first[1], f"refusal-only:{first[0]}"
